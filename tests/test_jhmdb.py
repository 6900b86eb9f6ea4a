"""JHMDB: PCK on hand-made cases, the reader, the oracle round trip and the whole protocol on a synthetic set."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io

from propagate.config import load_config
from propagate.datasets.jhmdb import (
    JOINT_NAMES,
    evaluate_jhmdb,
    format_pck_table,
    read_joints,
    read_split,
)
from propagate.datasets.synthetic_jhmdb import make_synthetic_jhmdb
from propagate.errors import PropagateError
from propagate.features.baseline import BaselineExtractor
from propagate.keypoints import decode_keypoints, keypoint_heatmaps, pixels_to_grid
from propagate.pck import normalized_distances, pck, pck_table

# ------------------------------------------------------------------------------------------------ PCK, by hand


def _square_gt(frames=3):
    """Two joints at (0, 0) and (30, 40) in every frame: box diagonal 50, so 0.6 x 50 = 30 px is 'size 1'."""
    return np.tile(np.array([[[0.0, 0.0], [30.0, 40.0]]]), (frames, 1, 1))


def test_pck_thresholds_by_hand():
    gt = _square_gt()
    pred = gt.copy()
    pred[1, 0] += [3.0, 0.0]  # 3 px = 0.1 x 30: correct at 0.1 (<=)
    pred[1, 1] += [0.0, 3.1]  # just over: wrong at 0.1, right at 0.2
    pred[2, 0] += [6.0, 0.0]  # 0.2 x 30 exactly: right at 0.2 only
    pred[2, 1] += [100.0, 0.0]  # wrong everywhere
    per_joint, overall = pck(pred, gt, 0.1)
    np.testing.assert_allclose(per_joint, [50.0, 0.0])
    assert overall == pytest.approx(25.0)
    per_joint, overall = pck(pred, gt, 0.2)
    np.testing.assert_allclose(per_joint, [100.0, 50.0])
    assert overall == pytest.approx(75.0)


def test_frame_zero_is_never_scored():
    gt = _square_gt()
    pred = gt.copy()
    pred[0] += 1000.0
    assert pck(pred, gt, 0.1)[1] == 100.0
    assert normalized_distances(pred, gt).shape == (2, 2)


def test_missing_prediction_counts_as_wrong():
    gt = _square_gt()
    pred = gt.copy()
    pred[2, 1] = np.nan
    per_joint, overall = pck(pred, gt, 0.5)
    np.testing.assert_allclose(per_joint, [100.0, 50.0])
    assert np.isinf(normalized_distances(pred, gt)[1, 1])


def test_gt_joint_outside_the_frame_still_counts():
    # joint 2 is at x = -20 (left of a frame that starts at 0): it is scored and stretches the box
    gt = np.tile(np.array([[[10.0, 10.0], [40.0, 50.0], [-20.0, 10.0]]]), (2, 1, 1))
    box = 0.6 * np.hypot(40 - (-20), 50 - 10)  # the box includes the outside joint
    pred = gt.copy()
    pred[1, 2] += [0.1 * box - 1e-9, 0.0]  # predicted inside the threshold of the outside joint
    pred[1, 0] += [0.1 * box + 1e-6, 0.0]  # just beyond it
    per_joint, overall = pck(pred, gt, 0.1)
    np.testing.assert_allclose(per_joint, [0.0, 100.0, 100.0])
    assert overall == pytest.approx(200 / 3)


def test_visible_mask_leaves_joints_out_of_box_and_score():
    gt = _square_gt()
    gt[:, 1] = [300.0, 400.0]  # a far joint that, if counted, would make the box huge
    pred = gt.copy()
    pred[:, 0] += [3.0, 0.0]
    pred[:, 1] = np.nan
    visible = np.array([[True, False]] * 3)
    per_joint, overall = pck(pred, gt, 0.1, visible)
    # box of the counted joint alone has zero size: a 3 px miss is wrong, and joint 1 is not scored
    assert per_joint[0] == 0.0 and np.isnan(per_joint[1]) and overall == 0.0
    pred[:, 0] = gt[:, 0]
    assert pck(pred, gt, 0.1, visible)[1] == 100.0  # an exact hit in a zero-size box is right


def test_lost_joint_rules_by_hand():
    """Three joints at (0, 0), (10, 0), (0, 10); joint 2 lost in frame 1, found exactly in frame 2.

    Frame 1, ``wrong``: box of all three, 0.6 x hypot(10, 10) = 8.485; joint 0 off by 0.7 <= 0.8485 (right at 0.1),
    joint 1 exact, joint 2 a miss. ``drop`` (CRW): joint 2 leaves the box, now 0.6 x 10 = 6, so 0.7 > 0.6 is wrong,
    and joint 2 is not scored. Frame 2: everything exact (right under both rules).
    wrong: joint 0 2/2, joint 1 2/2, joint 2 1/2 -> [100, 100, 50]; drop: [50, 100, 100] (joint 2: 1/1).
    """
    gt = np.tile(np.array([[[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]]), (3, 1, 1))
    pred = gt.copy()
    pred[1, 0] += [0.7, 0.0]
    pred[1, 2] = np.nan
    np.testing.assert_allclose(pck(pred, gt, 0.1)[0], [100.0, 100.0, 50.0])
    np.testing.assert_allclose(pck(pred, gt, 0.1, lost_joints="drop")[0], [50.0, 100.0, 100.0])
    dist = normalized_distances(pred, gt, lost_joints="drop")
    assert dist[0, 0] == pytest.approx(0.7 / 6.0) and np.isnan(dist[0, 2])
    table = pck_table([(pred, gt, None)], alphas=(0.1,), lost_joints="drop")
    assert table[0.1][1] == pytest.approx(250 / 3)


def test_dataset_pck_pools_frames_per_joint():
    gt_a, gt_b = _square_gt(3), _square_gt(2)  # 2 + 1 scored frames
    pred_a, pred_b = gt_a.copy(), gt_b.copy()
    pred_b[1, 0] += 50.0  # the one scored frame of b: joint 0 wrong
    table = pck_table([(pred_a, gt_a, None), (pred_b, gt_b, None)], alphas=(0.1,))
    per_joint, overall = table[0.1]
    np.testing.assert_allclose(per_joint, [200 / 3, 100.0])  # pooled over 3 frames, not averaged per video
    assert overall == pytest.approx((200 / 3 + 100) / 2)


# ------------------------------------------------------------------------------------------------ reading


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("jhmdb")
    info = make_synthetic_jhmdb(root, num_videos=2, num_frames=6, size=(320, 240), seed=3)
    return root, info


def test_read_joints_is_zero_based_and_matches_the_motion(synthetic):
    root, info = synthetic
    name, meta = next(iter(info["videos"].items()))
    mat = root / "joint_positions" / name / "joint_positions.mat"
    gt = read_joints(mat)
    assert gt.shape == (6, 15, 2)
    raw = scipy.io.loadmat(str(mat))["pos_img"]
    assert raw.shape == (2, 15, 6)
    np.testing.assert_allclose(gt[:, 3, 0], raw[0, 3, :] - 1)
    np.testing.assert_allclose(gt[5] - gt[0], np.tile(np.array(meta["velocity"]) * 5, (15, 1)), atol=1e-9)


def test_read_joints_errors(tmp_path):
    scipy.io.savemat(str(tmp_path / "nopos.mat"), {"pos_world": np.zeros((2, 15, 3))})
    with pytest.raises(PropagateError, match="no pos_img.*pos_world") as info:
        read_joints(tmp_path / "nopos.mat")
    assert "nopos.mat" in str(info.value)
    scipy.io.savemat(str(tmp_path / "shape.mat"), {"pos_img": np.zeros((3, 15, 4))})
    with pytest.raises(PropagateError, match=r"shape \[3, 15, 4\]"):
        read_joints(tmp_path / "shape.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(PropagateError, match="not a readable .mat"):
        read_joints(tmp_path / "junk.mat")


def test_split_lists_in_three_forms(synthetic):
    root, info = synthetic
    names = list(info["videos"])
    plain = read_split(root / "test_list.txt", root)
    crw = read_split(root / "test_list_crw.txt", root)
    assert [v.name for v in plain] == names == [v.name for v in crw]
    assert [v.mat_path for v in plain] == [v.mat_path for v in crw]
    official = read_split(root / "splits" / "walk_test_split1.txt", root)
    assert [v.name for v in official] == [n for n in names if n.startswith("walk/")]
    # CRW lists written on another machine: absolute paths that do not exist here resolve by their tail
    moved = root / "moved.txt"
    cls, video = names[0].split("/")
    moved.write_text(f"/elsewhere/Rename_Images/{cls}/{video} "
                     f"/elsewhere/joint_positions/{cls}/{video}/joint_positions.mat\n")
    assert read_split(moved, root)[0].mat_path == plain[0].mat_path


def test_split_list_naming_a_missing_video_is_an_error(synthetic, tmp_path):
    root, _ = synthetic
    bad = tmp_path / "list.txt"
    bad.write_text("walk/no_such_video\n")
    with pytest.raises(PropagateError, match="line 1: video walk/no_such_video has no frames folder"):
        read_split(bad, root)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(PropagateError, match="names no videos"):
        read_split(tmp_path / "empty.txt", root)


# ------------------------------------------------------------------------------------------------ oracle round trip


def test_oracle_round_trip_at_320x240(synthetic):
    """Ground truth encoded as 40x40 heatmaps and decoded: PCK@0.1 = 100, mean error <= 3 px at 320x240."""
    root, _ = synthetic
    entries, errors = [], []
    for video in read_split(root / "test_list.txt", root):
        gt = read_joints(video.mat_path)
        pred = np.stack([
            decode_keypoints(keypoint_heatmaps(pixels_to_grid(g, (320, 240), (40, 40)), (40, 40), 0.5),
                             (320, 240), 3)[0]
            for g in gt
        ])
        entries.append((pred, gt, None))
        errors.append(np.linalg.norm(pred - gt, axis=-1))
    assert pck_table(entries, alphas=(0.1,))[0.1][1] == 100.0
    assert np.concatenate(errors).mean() <= 3.0
    # the same on many random points (the bound is the grid's: half a cell is 4 x 3 px here)
    rng = np.random.default_rng(0)
    points = rng.uniform([0, 0], [319, 239], size=(2000, 2))
    decoded, _ = decode_keypoints(keypoint_heatmaps(pixels_to_grid(points, (320, 240), (40, 40)), (40, 40)), (320, 240))
    assert np.linalg.norm(decoded - points, axis=1).mean() <= 3.0


# ------------------------------------------------------------------------------------------------ the protocol


def test_evaluate_jhmdb_on_synthetic_set_and_resume(tmp_path):
    root = tmp_path / "set"
    info = make_synthetic_jhmdb(root, num_videos=2, num_frames=5, size=(192, 144), seed=3)
    out = tmp_path / "out"
    config = load_config("jhmdb_baseline", ["resize.size=[192,192]"])  # a 24x24 grid keeps the test fast
    scores = evaluate_jhmdb(root, root / "test_list.txt", out, config, progress=False)
    assert scores["videos"] == 2 and scores["frames_scored"] == 8
    assert set(scores["pck"]) == {"0.1", "0.2"}
    assert scores["pck"]["0.2"]["mean"] >= scores["pck"]["0.1"]["mean"] >= 50.0  # the baseline follows the figure
    rows = (out / "pck.csv").read_text().splitlines()
    assert rows[0] == "joint,PCK@0.1,PCK@0.2" and rows[1].startswith("mean,") and len(rows) == 17
    table = format_pck_table(scores)
    assert "left_ankle" in table and "PCK@0.1" in table
    for name in info["videos"]:
        data = json.loads((out / "videos" / name / "points.json").read_text())
        assert data["names"] == list(JOINT_NAMES) and len(data["frames"]) == 5

    class Refuse(BaselineExtractor):
        def extract(self, *args):
            raise AssertionError("a complete video was recomputed")

    again = evaluate_jhmdb(root, root / "test_list.txt", out, config, extractor=Refuse(), progress=False)
    assert again["pck"] == scores["pck"]
    assert evaluate_jhmdb(root, root / "test_list.txt", out, config, progress=False)["pck"] == scores["pck"]
    with pytest.raises(PropagateError, match="other settings"):
        evaluate_jhmdb(root, root / "test_list.txt", out, load_config("jhmdb_baseline", ["resize.size=[192,192]",
                       "propagation.topk=5"]), progress=False)


def test_frame_count_mismatch_is_an_error_naming_the_file(tmp_path):
    root = tmp_path / "set"
    info = make_synthetic_jhmdb(root, num_videos=1, num_frames=4, size=(160, 120), seed=1)
    name = next(iter(info["videos"]))
    mat = root / "joint_positions" / name / "joint_positions.mat"
    pos = scipy.io.loadmat(str(mat))["pos_img"]
    scipy.io.savemat(str(mat), {"pos_img": pos[:, :, :3]})  # annotations for 3 of 4 frames
    config = load_config("jhmdb_baseline", ["resize.size=[160,160]"])
    with pytest.raises(PropagateError, match="annotates 3 frames but .* holds 4") as err:
        evaluate_jhmdb(root, root / "test_list.txt", tmp_path / "out", config, progress=False)
    assert str(mat) in str(err.value)
    (root / "Rename_Images" / name / "00004.png").unlink()
    (root / "Rename_Images" / name / "00003.png").unlink()  # now 2 frames for 3 annotations
    with pytest.raises(PropagateError, match="holds 2 frames but .* annotates 3"):
        evaluate_jhmdb(root, root / "test_list.txt", tmp_path / "out", config, progress=False)
