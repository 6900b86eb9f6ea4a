"""Image-to-image correspondence with known answers: `match`, `edit` (images and video) and `eval hpatches` on
pairs made from the shipped demo clip by known homographies and affine maps (the truth by construction), with the
weight-free baseline features; the matching helpers on hand-made tensors."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from propagate.cli import main
from propagate.config import load_config
from propagate.correspond import (
    corner_error,
    detect_keypoints,
    fit_homography,
    match_points,
    mutual_nearest,
    project,
    sample_features,
    upsample,
)
from propagate.demo import WALK_CLIP
from propagate.edit import smooth_corners
from propagate.video import open_video

HOMOGRAPHY = np.array([[0.95, 0.06, 14.0], [-0.04, 1.03, 4.0], [0.00008, 0.00004, 1.0]])
AFFINE = np.array([[1.05, 0.03, -10.0], [-0.02, 0.97, 8.0], [0.0, 0.0, 1.0]])
CELLS = 96  # the baseline presets extract at 768x768 with stride 8: a 96x96 grid over any image
FAST = ["--set", "match.size=[512, 288]", "--set", "match.edit_samples=300"]  # the clip's own size, fewer samples


@pytest.fixture(scope="module")
def walk() -> np.ndarray:
    """Frame 0 of the shipped demo clip (512x288, a real room)."""
    for frame in open_video(WALK_CLIP):
        return frame.image
    raise AssertionError("no frames")


def warp(image: np.ndarray, homography: np.ndarray) -> np.ndarray:
    return cv2.warpPerspective(image, homography, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------- helpers, by hand


def test_sample_features_reads_the_upsampled_map():
    feats = torch.randn(5, 6, 9, generator=torch.Generator().manual_seed(0))
    dense = upsample(feats, (40, 30))  # W 40, H 30
    xy = np.array([[0, 0], [39, 29], [13, 7], [20, 15], [5, 28]], dtype=np.float64)
    sparse = sample_features(feats, xy, (40, 30))
    assert torch.allclose(sparse, dense[:, xy[:, 1].astype(int), xy[:, 0].astype(int)].T, atol=1e-5)


def test_match_points_finds_a_planted_vector_by_hand():
    feats_src = torch.zeros(3, 4, 4)
    feats_src[2] = 0.1  # everything points along channel 2 but the planted cells
    feats_src[:, 1, 2] = torch.tensor([1.0, 0.0, 0.0])
    feats_tgt = torch.zeros(3, 4, 4)
    feats_tgt[2] = 0.1
    feats_tgt[:, 3, 0] = torch.tensor([1.0, 0.0, 0.0])
    # images the size of the grid: cell (row 1, col 2) is pixel (2, 1); the planted target cell is pixel (0, 3)
    xy, sim = match_points(feats_src, feats_tgt, np.array([[2.0, 1.0]]), (4, 4), (4, 4), "none")
    assert xy.tolist() == [[0.0, 3.0]] and sim[0] == pytest.approx(1.0)
    xy, sim = match_points(feats_src, feats_tgt, np.array([[2.0, 1.0]]), (4, 4), (4, 4), "bilinear")
    assert xy.tolist() == [[0.0, 3.0]] and sim[0] == pytest.approx(1.0)


def test_mutual_nearest_recovers_a_permutation_and_drops_one_sided_matches():
    a = torch.eye(4)
    order = [2, 0, 3, 1]
    b = torch.cat([a[order], torch.tensor([[0.9, 0.1, 0.0, 0.0]])])  # a 5th vector nearest to a[0] but not mutual
    for metric in ("cosine", "l2"):
        pairs = mutual_nearest(a, b, metric)
        assert pairs.tolist() == [[0, 1], [1, 3], [2, 0], [3, 2]]


def test_corner_error_and_fit_by_hand():
    truth = np.array([[1.0, 0, 10], [0, 1.0, 20], [0, 0, 1]])
    assert corner_error(truth, truth, (100, 50)) == 0.0
    shifted = truth.copy()
    shifted[:2, 2] += (3, 4)
    assert corner_error(shifted, truth, (100, 50)) == pytest.approx(5.0)
    assert corner_error(None, truth, (100, 50)) == float("inf")
    src = np.array([[0, 0], [100, 0], [100, 80], [0, 80], [60, 30], [20, 70], [75, 55]], dtype=np.float64)
    for method in ("ransac", "lmeds"):
        fitted, inliers = fit_homography(src, project(HOMOGRAPHY, src), method)
        assert inliers.all() and corner_error(fitted, HOMOGRAPHY, (512, 288)) < 1e-3
    assert fit_homography(src[:3], src[:3])[0] is None


def test_smooth_corners_averages_fitted_neighbours_and_keeps_the_anchor():
    corners = np.zeros((5, 4, 2))
    for t in range(5):
        corners[t] += t * 10
    fitted = np.array([True, True, False, True, True])
    out = smooth_corners(corners, fitted, radius=1, anchor=0)
    assert out[0, 0, 0] == 0  # the anchor keeps its own
    assert out[1, 0, 0] == pytest.approx(5.0)  # frames 0 and 1 (2 failed)
    assert out[2, 0, 0] == pytest.approx(20.0)  # frames 1 and 3
    assert out[4, 0, 0] == pytest.approx(40.0)  # the last frame: a centred window holds it alone


# ---------------------------------------------------------------------------------------------- match


@pytest.mark.parametrize("name, transform", [("homography", HOMOGRAPHY), ("affine", AFFINE)])
def test_match_lands_within_one_feature_cell(walk, tmp_path, capsys, name, transform):
    """The 30 strongest corners of a real frame carried to the frame warped by a known map: nearly all land within
    one feature cell (both axes) of where the map sends them, with the baseline features."""
    height, width = walk.shape[:2]
    Image.fromarray(walk).save(tmp_path / "src.png")
    Image.fromarray(warp(walk, transform)).save(tmp_path / "tgt.png")
    candidates = detect_keypoints(walk, 80).astype(np.float64)
    truth = project(transform, candidates)
    inside = ((truth > 16) & (truth < [width - 16, height - 16])).all(axis=1)
    points = candidates[inside][:30]
    (tmp_path / "pts.json").write_text(json.dumps(
        {"points": [{"name": f"p{i}", "x": float(x), "y": float(y)} for i, (x, y) in enumerate(points)]}))
    code, out, _ = run_cli(["match", tmp_path / "src.png", tmp_path / "tgt.png", "--points", tmp_path / "pts.json",
                            "--out", tmp_path / "out", "--features", "baseline"], capsys)
    assert code == 0 and "BASELINE" in out
    result = json.loads((tmp_path / "out" / "tgt.json").read_text())
    assert result["features"] == "BASELINE features (not DIFT)" and result["size"] == [width, height]
    got = np.array([[p["x"], p["y"]] for p in result["points"]])
    assert [p["name"] for p in result["points"]] == [f"p{i}" for i in range(len(points))]
    assert all(-1 <= p["similarity"] <= 1 for p in result["points"])
    cell = np.array([width / CELLS, height / CELLS])
    within = (np.abs(got - project(transform, points)) <= cell).all(axis=1)
    assert within.mean() >= 0.9, within
    picture = np.asarray(Image.open(tmp_path / "out" / "tgt.jpg"))
    assert picture.shape[0] == 384 and picture.shape[1] > 2 * 384 * width / height  # two panels side by side
    # the output is a points file `match` reads again (a chain of images)
    code, _, _ = run_cli(["match", tmp_path / "tgt.png", tmp_path / "src.png", "--points",
                          tmp_path / "out" / "tgt.json", "--out", tmp_path / "back", "--features", "baseline"], capsys)
    assert code == 0


def test_match_many_targets_from_a_folder_and_errors(walk, tmp_path, capsys):
    folder = tmp_path / "targets"
    folder.mkdir()
    Image.fromarray(walk).save(tmp_path / "src.png")
    for i, transform in enumerate([HOMOGRAPHY, AFFINE]):
        Image.fromarray(warp(walk, transform)).save(folder / f"t{i}.png")
    (tmp_path / "pts.json").write_text(json.dumps({"points": {"table": [302, 76]}}))
    code, _, _ = run_cli(["match", tmp_path / "src.png", folder, "--points", tmp_path / "pts.json",
                          "--out", tmp_path / "out", "--features", "baseline"], capsys)
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").glob("t*")) == [
        "t0.jpg", "t0.json", "t1.jpg", "t1.json"]
    (tmp_path / "far.json").write_text(json.dumps({"points": {"off": [900, 10]}}))
    code, _, err = run_cli(["match", tmp_path / "src.png", folder, "--points", tmp_path / "far.json",
                            "--out", tmp_path / "o2", "--features", "baseline"], capsys)
    assert code == 2 and err.startswith("error:") and "outside" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o2").exists()


# ---------------------------------------------------------------------------------------------- edit


def _sticker(size_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """An RGBA edit over the table, floor and person (a textured area), and its box's corners."""
    width, height = size_wh
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[120:230, 150:360, :3] = (255, 0, 0)
    rgba[120:230, 150:360, 3] = 200
    return rgba, np.array([[150, 120], [359, 120], [359, 229], [150, 229]], dtype=np.float64)


def test_edit_images_lands_corners_within_a_few_pixels(walk, tmp_path, capsys):
    height, width = walk.shape[:2]
    rgba, corners = _sticker((width, height))
    Image.fromarray(walk).save(tmp_path / "src.png")
    Image.fromarray(rgba).save(tmp_path / "edit.png")
    small = cv2.resize(warp(walk, AFFINE), (384, 216), interpolation=cv2.INTER_AREA)  # a target of another size
    scale = np.diag([384 / width, 216 / height, 1.0])
    Image.fromarray(warp(walk, HOMOGRAPHY)).save(tmp_path / "h.png")
    Image.fromarray(small).save(tmp_path / "a.png")
    code, out, _ = run_cli(["edit", tmp_path / "src.png", "--edit", tmp_path / "edit.png", "--to", tmp_path / "h.png",
                            tmp_path / "a.png", "--out", tmp_path / "out", "--features", "baseline", *FAST], capsys)
    assert code == 0 and "BASELINE" in out
    for stem, truth, size in (("h", HOMOGRAPHY, (width, height)), ("a", scale @ AFFINE, (384, 216))):
        record = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
        assert record["features"] == "BASELINE features (not DIFT)"
        got = np.array(record["corners"])
        assert np.abs(got - project(truth, corners)).max() < 6, (stem, got, project(truth, corners))
        assert np.abs(project(np.array(record["homography"]), corners) - got).max() < 1e-2
        result = np.asarray(Image.open(tmp_path / "out" / f"{stem}.png"))
        assert result.shape == (size[1], size[0], 3)
        centre = project(truth, corners).mean(axis=0).round().astype(int)
        assert result[centre[1], centre[0], 0] > 180 and result[centre[1], centre[0], 1] < 90  # the red edit is there
    source = np.asarray(Image.open(tmp_path / "out" / "source.png"))
    assert (source[0, 0] == walk[0, 0]).all() and source[175, 250, 0] > 180


def test_edit_video_follows_a_known_motion_and_hides_where_masked(walk, tmp_path, capsys):
    """Frames are the real frame moved by known homographies; the edit placed on frame 1 must follow each; with
    masks labelling x < 300 as object 1 (most of the edit lies there), the edit's part beyond x = 300 is hidden."""
    height, width = walk.shape[:2]
    frames = tmp_path / "clip"
    masks = tmp_path / "masks"
    frames.mkdir()
    masks.mkdir()
    truths = []
    for t in range(5):
        a = 0.01 * (t - 1)
        motion = np.array([[1 + a, a, 4.0 * (t - 1)], [-a, 1 - a, 2.0 * (t - 1)], [0, 0, 1]])
        truths.append(motion)
        Image.fromarray(warp(walk, motion)).save(frames / f"{t:05d}.png")
        mask = np.zeros((height, width), np.uint8)
        mask[:, :300] = 1
        Image.fromarray(mask).save(masks / f"{t:05d}.png")
    rgba, _ = _sticker((width, height))
    first = truths[1]  # the identity: the edit is drawn over frame 1, which frame t shows moved by truths[t]
    assert (first == np.eye(3)).all()
    Image.fromarray(rgba).save(tmp_path / "edit.png")
    code, out, _ = run_cli(["edit", frames, "--edit", tmp_path / "edit.png", "--at", 1, "--mask", masks,
                            "--out", tmp_path / "out", "--features", "baseline", *FAST], capsys)
    assert code == 0 and "5 frames" in out
    record = json.loads((tmp_path / "out" / "homographies.json").read_text())
    assert record["at"] == 1 and len(record["frames"]) == 5
    drawn_corners = np.array(record["corners"])
    for t, frame in enumerate(record["frames"]):
        truth = truths[t]
        got = project(np.array(frame["homography"]), drawn_corners)
        assert np.abs(got - project(truth, drawn_corners)).max() < 6, (t, got)
    original = np.asarray(Image.open(frames / "00003.png"))
    edited = np.asarray(Image.open(tmp_path / "out" / "frames" / "00003.png"))
    assert (edited[:, 300:] == original[:, 300:]).all()  # another surface: untouched
    assert (edited[:, :300] != original[:, :300]).any()
    assert (tmp_path / "out" / "edit.mp4").stat().st_size > 0


# ---------------------------------------------------------------------------------------------- eval hpatches


def write_hpatches(root: Path, image: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Two sequences from one real frame: ``i_walk`` (brightness changes, identity homographies) and ``v_walk``
    (five known homographies)."""
    height, width = image.shape[:2]
    truths: dict[str, list[np.ndarray]] = {}
    for seq in ("i_walk", "v_walk"):
        folder = root / seq
        folder.mkdir(parents=True)
        Image.fromarray(image).save(folder / "1.ppm")
        truths[seq] = []
        for i in range(2, 7):
            if seq.startswith("i"):
                truth = np.eye(3)
                other = np.clip(image.astype(np.float64) * (0.8 + 0.08 * (i - 2)), 0, 255).astype(np.uint8)
            else:
                a = 0.02 * (i - 1)
                truth = np.array([[1 - a, a, 5.0 * i], [-a / 2, 1 + a / 2, -3.0 * i], [a * 4e-4, -a * 2e-4, 1]])
                other = warp(image, truth)
            Image.fromarray(other).save(folder / f"{i}.ppm")
            np.savetxt(folder / f"H_1_{i}", truth)
            truths[seq].append(truth)
    return truths


def test_eval_hpatches_on_known_homographies_and_resume(walk, tmp_path, capsys):
    write_hpatches(tmp_path / "hp", walk)
    args = ["eval", "hpatches", "--root", tmp_path / "hp", "--out", tmp_path / "out", "--features", "baseline",
            "--set", "match.size=[512, 288]", "--set", "match.keypoints=400"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0 and "BASELINE" in out
    for seq in ("i_walk", "v_walk"):
        pairs = json.loads((tmp_path / "out" / seq / "homographies.json").read_text())["pairs"]
        assert [p["image"] for p in pairs] == [2, 3, 4, 5, 6]
        assert all(p["corner_error"] is not None and p["corner_error"] < 3 for p in pairs), pairs
    table = (tmp_path / "out" / "scores.csv").read_text().splitlines()
    assert table[0] == "sequences,pairs,acc@1px,acc@3px,acc@5px"
    assert table[1].startswith("illumination,5,") and table[1].endswith(",100.00,100.00")
    assert table[2].startswith("viewpoint,5,") and table[3] == "all,10," + table[3].split(",", 2)[2]
    assert table[3].endswith(",100.00,100.00")
    before = (tmp_path / "out" / "v_walk" / "homographies.json").stat().st_mtime_ns
    code, again, _ = run_cli(args, capsys)  # resumed: nothing left to run, the same table
    assert code == 0 and again == out
    assert (tmp_path / "out" / "v_walk" / "homographies.json").stat().st_mtime_ns == before
    code, _, err = run_cli(args + ["--set", "match.metric=l2"], capsys)
    assert code == 2 and "other settings" in err


def test_presets_carry_dift_numbers():
    """Each preset's numbers as DIFT's eval_spair.py / eval_hpatches.py / eval_homography.py and README run them."""
    expect = {
        "spair_sd": ({"t": 261, "up_ft_index": 1, "ensemble_size": 8}, [768, 768], "a photo of a {category}", None),
        "spair_adm": ({"t": 101, "up_ft_index": 4, "ensemble_size": 8}, [512, 512], "", None),
        "hpatches_sd": ({"t": 0, "up_ft_index": 2, "ensemble_size": 8}, [768, 768], "", ("cosine", "lmeds")),
        "hpatches_adm": ({"t": 41, "up_ft_index": 11, "ensemble_size": 4}, [768, 768], "", ("l2", "ransac")),
    }
    for name, (extractor, size, prompt, geometric) in expect.items():
        config = load_config(name)
        assert {k: config.extractor[k] for k in extractor} == extractor, name
        assert config.match.size == size and config.match.prompt == prompt and config.match.upsample == "bilinear"
        if geometric:
            assert (config.match.metric, config.match.homography, config.match.reproj_threshold) == (*geometric, 3.0)
    for name in ("spair_baseline", "hpatches_baseline"):
        assert load_config(name).features == "baseline"


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("preset", ["spair_sd", "spair_adm", "hpatches_adm"])
def test_match_edit_and_hpatches_run_with_every_extractor(walk, tmp_path, capsys, tiny_sd_dir, preset):
    """Every registered backbone runs the image commands from its presets (tiny random-weight models, 64x64); the
    label names the features (only the baseline's says BASELINE, see the tests above)."""
    from propagate.features.adm_net import save_tiny_checkpoint

    model = tiny_sd_dir if preset.endswith("_sd") else save_tiny_checkpoint(tmp_path / "tiny.pt")
    label = "DIFT-SD" if preset.endswith("_sd") else "DIFT-ADM"
    small = cv2.resize(walk, (128, 72), interpolation=cv2.INTER_AREA)
    Image.fromarray(small).save(tmp_path / "src.png")
    Image.fromarray(warp(small, AFFINE)).save(tmp_path / "tgt.png")
    rgba = np.zeros((72, 128, 4), np.uint8)
    rgba[20:50, 30:90] = (0, 255, 0, 255)
    Image.fromarray(rgba).save(tmp_path / "edit.png")
    (tmp_path / "pts.json").write_text(json.dumps({"points": {"a": [40, 30], "b": [90, 50]}}))
    flags = ["--config", preset, "--model", model, "--ensemble-size", "1", "--device", "cpu",
             "--set", "match.size=[64, 64]", "--set", "match.edit_samples=50"]
    code, out, err = run_cli(["match", tmp_path / "src.png", tmp_path / "tgt.png", "--points", tmp_path / "pts.json",
                              "--out", tmp_path / "m", "--category", "room", *flags], capsys)
    assert code == 0, err
    assert f"[{label}]" in out and json.loads((tmp_path / "m" / "tgt.json").read_text())["features"] == label
    code, out, err = run_cli(["edit", tmp_path / "src.png", "--edit", tmp_path / "edit.png", "--to",
                              tmp_path / "tgt.png", "--out", tmp_path / "e", *flags], capsys)
    assert code == 0 and f"[{label}]" in out, err
    if preset == "hpatches_adm":
        write_hpatches(tmp_path / "hp", small)
        code, out, err = run_cli(["eval", "hpatches", "--root", tmp_path / "hp", "--out", tmp_path / "h", *flags],
                                 capsys)
        assert code == 0 and f"features: {label}" in out, err
    if preset == "spair_sd":
        info = json.loads((tmp_path / "m" / "run_info.json").read_text())
        assert info["extractor"]["prompt"] == "a photo of a room"


def test_edit_errors_are_one_line(walk, tmp_path, capsys):
    Image.fromarray(walk).save(tmp_path / "src.png")
    Image.fromarray(walk).save(tmp_path / "rgb.png")  # no alpha
    Image.fromarray(np.zeros((10, 10, 4), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((288, 512, 4), np.uint8)).save(tmp_path / "empty.png")
    cases = [
        (["--edit", tmp_path / "rgb.png", "--to", tmp_path / "src.png"], "no alpha channel"),
        (["--edit", tmp_path / "small.png", "--to", tmp_path / "src.png"], "is 10x10 but the source is 512x288"),
        (["--edit", tmp_path / "empty.png", "--to", tmp_path / "src.png"], "transparent everywhere"),
        (["--edit", tmp_path / "empty.png"], "exactly one of --to"),
        (["--edit", tmp_path / "empty.png", "--to", tmp_path / "src.png", "--at", 0], "exactly one of --to"),
        (["--edit", tmp_path / "rgb.png", "--to", tmp_path / "nothere.png"], "does not exist"),
    ]
    for extra, words in cases:
        code, _, err = run_cli(["edit", tmp_path / "src.png", *extra, "--out", tmp_path / "o",
                                "--features", "baseline"], capsys)
        assert code == 2 and err.startswith("error:") and words in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o").exists()
