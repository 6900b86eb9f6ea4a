"""The run jobs: ``run_video`` and ``run_points`` on synthetic clips, written whole with their manifest (the
results folders themselves: tests/test_results.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from propagate.config import load_config
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.results import ResultsFolder, written_files
from propagate.runs import run_points, run_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_run_video_writes_masks_overlay_record_and_manifest(clip, tmp_path):
    frames, mask_path, truth = clip
    config = load_config("davis_baseline", {"resize.short_side": 128})
    summary = run_video(frames, mask_path, tmp_path / "out", config, progress=False)
    out = tmp_path / "out"
    assert summary["frames"] == len(truth)
    files = written_files(out)
    assert files == sorted([f"{i:05d}.png" for i in range(len(truth))]
                           + ["confidence.csv", "overlay.mp4", "run_info.json"])
    assert json.loads((out / "run_info.json").read_text())["config"]["features"] == "baseline"


def test_run_video_checks_inputs_before_writing(clip, tmp_path):
    frames, mask_path, _ = clip
    config = load_config("davis_baseline")
    blank = tmp_path / "blank.png"
    Image.fromarray(np.zeros((128, 192), np.uint8)).save(blank)
    with pytest.raises(PropagateError, match="holds no object"):
        run_video(frames, blank, tmp_path / "out", config, progress=False)
    with pytest.raises(PropagateError, match="is the input"):
        run_video(frames, mask_path, frames, config, overwrite=True, progress=False)
    assert not (tmp_path / "out").exists()


def _moving_clip(folder, frames=6, size=(96, 64), step=(2, 1)):
    """A textured square translating by ``step`` pixels per frame over a static textured background."""
    rng = np.random.default_rng(0)
    background = (np.full((size[1], size[0], 3), 90, np.uint8)
                  + rng.integers(0, 20, (size[1], size[0], 3), dtype=np.uint8))
    blocks = rng.integers(0, 255, (3, 3, 3), dtype=np.uint8)  # 3x3 blocks of 8 px, each its own colour
    patch = np.kron(blocks, np.ones((8, 8, 1), np.uint8))
    folder.mkdir()
    for t in range(frames):
        image = background.copy()
        x0, y0 = 20 + step[0] * t, 16 + step[1] * t
        image[y0:y0 + 24, x0:x0 + 24] = patch
        Image.fromarray(image).save(folder / f"{t:05d}.png")
    return folder


def test_run_points_writes_json_overlay_and_mark(tmp_path):
    clip = _moving_clip(tmp_path / "clip")
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"name": "tl", "x": 24, "y": 20}, {"name": "c", "x": 32, "y": 28}],
                                  "edges": [["tl", "c"]]}))
    config = load_config("jhmdb_baseline", ["resize.size=[96,64]"])
    summary = run_points(clip, points, tmp_path / "out", config, progress=False)
    assert summary["frames"] == 6 and summary["points"] == 2
    out = tmp_path / "out"
    assert ResultsFolder.is_complete(out) and (out / "overlay.mp4").stat().st_size > 0
    data = json.loads((out / "points.json").read_text())
    assert data["names"] == ["tl", "c"] and data["edges"] == [["tl", "c"]]
    assert [f["name"] for f in data["frames"]] == [f"{t:05d}" for t in range(6)]
    assert data["frames"][0]["points"]["tl"] == {"x": 24.0, "y": 20.0, "confidence": 1.0}
    last = data["frames"][-1]["points"]["c"]
    assert set(last) == {"x", "y", "confidence"} and 0 < last["confidence"] <= 1
    # the square moved by (10, 5): the centre point follows it to within a cell
    assert abs(last["x"] - 42) <= 8 and abs(last["y"] - 33) <= 8

    with pytest.raises(PropagateError, match="already holds results"):
        run_points(clip, points, out, config, progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"points": [{"name": "x", "x": 500, "y": 1}]}))
    with pytest.raises(PropagateError, match="outside the first frame"):
        run_points(clip, bad, tmp_path / "out2", config, progress=False)
    assert not (tmp_path / "out2").exists()  # nothing written for bad input


def test_run_points_on_a_video_file_without_render(tmp_path):
    import imageio.v2 as imageio

    clip = _moving_clip(tmp_path / "clip", frames=4)
    video = tmp_path / "clip.mp4"
    with imageio.get_writer(str(video), fps=10, codec="libx264", macro_block_size=1,
                            ffmpeg_log_level="error") as writer:
        for file in sorted(clip.iterdir()):
            writer.append_data(np.array(Image.open(file)))
    points = tmp_path / "points.csv"
    points.write_text("name,x,y\ncentre,32,28\n")
    config = load_config("jhmdb_baseline", ["resize.size=[96,64]"])
    summary = run_points(video, points, tmp_path / "out", config, extractor=build_extractor("baseline"),
                         render=False, progress=False)
    assert summary["frames"] == 4 and not (tmp_path / "out" / "overlay.mp4").exists()


def test_run_video_with_a_folder_of_keyframes_and_confidence_csv(tmp_path):
    from test_session import entering_clip

    frames, truth = entering_clip(tmp_path / "clip", frames=8, enter=3)
    keys = tmp_path / "keys"
    keys.mkdir()
    from propagate.labels import write_mask

    write_mask(keys / "00000.png", truth[0])
    write_mask(keys / "00004.png", truth[4])
    config = load_config("davis_baseline", {"resize.short_side": 128})
    summary = run_video(frames, keys, tmp_path / "out", config, render=False, progress=False)
    out = tmp_path / "out"
    assert summary["keyframes"] == [0, 4] and summary["frames"] == 8
    from propagate.labels import read_mask

    assert np.array_equal(read_mask(out / "00004.png"), truth[4])
    rows = (out / "confidence.csv").read_text().splitlines()
    assert rows[0] == "frame,name,keyframe,object_1,object_2" and len(rows) == 9
    assert rows[5].startswith("4,00004,1,1.0000,1.0000")
    assert len(summary["check_first"]) == 3
    assert all(name not in ("00000", "00004") for name, _ in summary["check_first"])
    bad = tmp_path / "badkeys"
    bad.mkdir()
    write_mask(bad / "frame_x.png", truth[0])
    with pytest.raises(PropagateError, match="named like no frame"):
        run_video(frames, bad, tmp_path / "out2", config, progress=False)
    late = tmp_path / "late"
    late.mkdir()
    write_mask(late / "00004.png", truth[4])
    with pytest.raises(PropagateError, match="direction forward needs a keyframe on the first frame"):
        run_video(frames, late, tmp_path / "out3", config, progress=False, direction="forward")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_run_points_with_keyframes_gives_them_back_and_fills_both_ways(tmp_path):
    clip = _moving_clip(tmp_path / "clip", frames=6)
    points = tmp_path / "points.json"
    # the square moves by (2, 1) per frame: its centre is at (32 + 2t, 28 + t)
    points.write_text(json.dumps({"edges": [],
                                  "keyframes": {"00002": [{"name": "c", "x": 36, "y": 30}],
                                                "00004": {"c": [40, 32]}}}))
    config = load_config("jhmdb_baseline", ["resize.size=[96,64]"])
    summary = run_points(clip, points, tmp_path / "out", config, progress=False, render=False)
    assert summary["keyframes"] == [2, 4]
    data = json.loads((tmp_path / "out" / "points.json").read_text())
    assert data["keyframes"] == ["00002", "00004"]
    frames = {f["index"]: f["points"]["c"] for f in data["frames"]}
    assert frames[2] == {"x": 36.0, "y": 30.0, "confidence": 1.0} and frames[4]["x"] == 40.0
    for t in (0, 1, 3, 5):  # before, between and after the keyframes: near the true centre
        assert abs(frames[t]["x"] - (32 + 2 * t)) <= 8 and abs(frames[t]["y"] - (28 + t)) <= 8, (t, frames[t])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"keyframes": {"00002": [{"name": "c", "x": 36, "y": 30}], "00003": {"d": [1, 1]}}}))
    with pytest.raises(PropagateError, match="every keyframe gives the same points"):
        run_points(clip, bad, tmp_path / "out2", config, progress=False)
