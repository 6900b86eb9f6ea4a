"""`propagate run` end to end, and every bad input it must refuse with a one-line error."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from propagate.cli import main
from propagate.labels import read_mask, write_mask
from propagate.video import open_video

SMALL = ["--set", "resize.short_side=128", "--set", "resize.multiple=8"]


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 1.0


def test_run_baseline_end_to_end(clip, tmp_path, capsys):
    frames, mask, truth = clip
    out = tmp_path / "out"
    code, stdout, _ = run_cli(["run", frames, "--mask", mask, "--out", out, "--features", "baseline", *SMALL], capsys)
    assert code == 0, stdout
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == [f"{i:05d}" for i in range(6)]
    for p, _ in zip(pngs, truth):
        with Image.open(p) as img:
            assert img.mode == "P" and img.size == (192, 128)
    assert np.array_equal(read_mask(pngs[0]), truth[0])  # frame 0 is the given mask
    # the objects are followed: IoU of each object on the last frame
    last = read_mask(pngs[-1])
    for obj in (1, 2):
        assert iou(last == obj, truth[-1] == obj) > 0.5
    assert (out / "overlay.mp4").stat().st_size > 0 and (out / ".complete").is_file()
    assert len(open_video(out / "overlay.mp4")) == 6
    info = json.loads((out / "run_info.json").read_text())
    assert info["config"]["features"] == "baseline" and info["processing_size"] == [192, 128]


def test_run_reads_the_keyframe_file_beside_the_pngs(clip, tmp_path, capsys):
    """keyframes.yaml says that 00004.png gives object 1 only and that object 2 is gone from 00002 on, and names
    the objects: object 2 has no pixel on frames 2..5 and is ``absent`` in confidence.csv (not 0), its COCO track
    ends there, frame 4's object 1 is the PNG's, and COCO categories carry the objects' categories."""
    frames, _, truth = clip
    keys = tmp_path / "keys"
    keys.mkdir()
    write_mask(keys / "00000.png", truth[0])
    write_mask(keys / "00004.png", truth[4])  # its object 2 is not given: ignored
    (keys / "keyframes.yaml").write_text('frames:\n  "00004": {objects: [1]}\n  "00002": {absent: [2]}\n'
                                         "objects:\n  1: {name: disk, category: ball}\n  2: square\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli(["run", frames, "--mask", keys, "--out", out, "--features", "baseline", *SMALL,
                                 "--format", "png,coco", "--no-video"], capsys)
    assert code == 0, err
    masks = [read_mask(out / f"{t:05d}.png") for t in range(6)]
    assert [bool((m == 2).any()) for m in masks] == [True, True, False, False, False, False]
    assert np.array_equal(masks[4] == 1, truth[4] == 1)
    rows = [line.split(",") for line in (out / "confidence.csv").read_text().splitlines()]
    assert rows[0] == ["frame", "name", "keyframe", "object_1", "object_2"]
    assert [r[4] for r in rows[1:]] == ["1.0000", rows[2][4], "absent", "absent", "absent", "absent"]
    assert rows[2][4] != "absent" and [r[2] for r in rows[1:]] == ["1", "0", "0", "0", "1", "0"]
    coco = json.loads((out / "coco.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "ball", "supercategory": "ball"},
                                  {"id": 2, "name": "object", "supercategory": "object"}]
    tracks = {a["id"]: a for a in coco["annotations"]}
    assert tracks[1]["category_id"] == 1 and tracks[2]["category_id"] == 2
    assert [s is None for s in tracks[2]["segmentations"]] == [False, False, True, True, True, True]
    info = json.loads((out / "run_info.json").read_text())
    assert info["partial"] == {"00004": [1]} and info["absent"] == {"00002": [2]}


def test_an_rgb_mask_with_flat_colours_maps_each_colour_to_an_object(clip, tmp_path, capsys):
    frames, _, truth = clip
    rgb = np.zeros((*truth[0].shape, 3), np.uint8)
    rgb[truth[0] == 1], rgb[truth[0] == 2] = (250, 200, 10), (20, 90, 250)  # paint-tool colours, not DAVIS ones
    Image.fromarray(rgb).save(tmp_path / "painted.png")
    code, _, err = run_cli(["run", frames, "--mask", tmp_path / "painted.png", "--out", tmp_path / "out",
                            "--features", "baseline", *SMALL, "--no-video"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    # ids in order of first appearance, row by row: the square (higher in the frame) comes first
    assert len(notes) == 1 and notes[0].endswith("read as objects: (20, 90, 250) -> 1, (250, 200, 10) -> 2")
    first = read_mask(tmp_path / "out" / "00000.png")
    assert np.array_equal(first, np.choose(truth[0], [0, 2, 1]))
    assert set(np.unique(read_mask(tmp_path / "out" / "00005.png"))) <= {0, 1, 2}  # no stray objects


def test_run_tiny_dift_model_and_no_video(clip, tmp_path, capsys, tiny_sd_dir):
    frames, mask, _ = clip
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["run", frames, "--mask", mask, "--out", out, "--model", tiny_sd_dir, "--ensemble-size", "2", "--no-video",
         *SMALL],
        capsys,
    )
    assert code == 0, err
    assert len(list(out.glob("*.png"))) == 6 and not (out / "overlay.mp4").exists()
    info = json.loads((out / "run_info.json").read_text())
    assert info["extractor"]["model"] == str(tiny_sd_dir) and info["config"]["features"] == "dift_sd"
    assert "precision: dift_sd runs in fp32 (as set)" in err and info["extractor"]["dtype"] == "fp32"


def test_the_resolved_precision_is_said_when_the_extractor_is_built(monkeypatch, caplog, tiny_sd_dir):
    import propagate.device as device
    from propagate.features import build_extractor

    monkeypatch.setattr(device, "cpu_has_bf16_units", lambda: True)  # a CPU with AMX or AVX512-BF16
    with caplog.at_level("INFO", logger="propagate"):
        ext = build_extractor("dift_sd", {"model": str(tiny_sd_dir), "device": "cpu"})
        build_extractor("baseline")  # no precision: nothing said
    assert ext.settings()["dtype"] == "bf16"  # what run_info.json records
    assert [r.getMessage() for r in caplog.records] == ["precision: dift_sd runs in bf16 (dtype auto on cpu)"]


def test_output_folder_with_results_needs_overwrite(clip, tmp_path, capsys):
    frames, mask, _ = clip
    out = tmp_path / "out"
    args = ["run", frames, "--mask", mask, "--out", out, "--features", "baseline", "--no-video", *SMALL]
    assert run_cli(args, capsys)[0] == 0
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "already holds results" in err and "--overwrite" in err
    assert run_cli(args + ["--overwrite"], capsys)[0] == 0


def one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "frame/s" not in line]
    assert len(lines) == 1 and lines[0].strip().startswith("error: "), err  # (progress-bar residue aside)
    for needle in needles:
        assert str(needle) in lines[0]


@pytest.mark.parametrize("case", ["missing", "empty", "unreadable", "size", "no_object", "one_frame"])
def test_bad_inputs_one_line_error_and_no_output(case, clip, tmp_path, capsys):
    frames, mask, truth = clip
    out = tmp_path / "out"
    video, needle = frames, None
    if case == "missing":
        video, needle = tmp_path / "nowhere", "nowhere"
    elif case == "empty":
        video = tmp_path / "empty"
        video.mkdir()
        needle = "holds no frames"
    elif case == "unreadable":
        (frames / "00003.jpg").write_bytes(b"\xff\xd8 truncated")
        needle = "00003.jpg"
    elif case == "size":
        write_mask(tmp_path / "small.png", truth[0][:64, :96])
        mask, needle = tmp_path / "small.png", "96x64 but the frames are 192x128"
    elif case == "no_object":
        write_mask(tmp_path / "blank.png", np.zeros_like(truth[0]))
        mask, needle = tmp_path / "blank.png", "holds no object"
    elif case == "one_frame":
        video = tmp_path / "single"
        video.mkdir()
        (frames / "00000.jpg").rename(video / "00000.jpg")
        needle = "1 frame"
    code, _, err = run_cli(["run", video, "--mask", mask, "--out", out, "--features", "baseline", *SMALL], capsys)
    one_line_error(code, err, needle)
    assert not out.exists() or not any(out.iterdir())


def test_bad_options_are_one_line_errors(clip, tmp_path, capsys):
    frames, mask, _ = clip
    base = ["run", frames, "--mask", mask, "--out", tmp_path / "o"]
    one_line_error(*run_cli(base + ["--features", "nope"], capsys)[::2], "nope")
    one_line_error(*run_cli(base + ["--features", "baseline", "--set", "propagation.topk=0"], capsys)[::2], "topk")
    one_line_error(*run_cli(base + ["--config", "no_such_preset"], capsys)[::2], "no_such_preset")
    one_line_error(*run_cli(base + ["--model", tmp_path / "no_model_here"], capsys)[::2], "no_model_here")


def test_console_script_prints_no_traceback(tmp_path):
    exe = Path(sys.executable).with_name("propagate")
    result = subprocess.run([str(exe), "run", str(tmp_path / "missing"), "--mask", "m.png",
                             "--out", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "missing" in result.stderr


@pytest.mark.parametrize("flags, preset", [([], "davis_sd_interactive"),
                                           (["--features", "baseline"], "davis_baseline_interactive"),
                                           (["--config", "davis_baseline"], "davis_baseline")])
def test_serve_defaults_to_the_interactive_preset(flags, preset, monkeypatch):
    import propagate.app
    from propagate.config import load_config

    seen = {}
    monkeypatch.setattr(propagate.app, "serve", lambda config, **kwargs: seen.update(config=config, **kwargs))
    assert main(["serve", *flags]) == 0
    assert seen["config"].to_dict() == load_config(preset).to_dict()
    assert seen["fallback"] is (not flags)


@pytest.mark.parametrize("preset, fallback", [("davis_sd_interactive", "davis_baseline_interactive"),
                                              ("davis_sd", "davis_baseline")])
def test_without_weights_an_interactive_config_falls_back_to_the_interactive_baseline(preset, fallback, tmp_path,
                                                                                     capsys):
    from propagate.config import load_config
    from propagate.features.fallback import dift_or_baseline

    config = load_config(preset, {"extractor.model": str(tmp_path / "no-model"), "resize.short_side": 288})
    used, extractor, label = dift_or_baseline(config)
    assert extractor.name == "baseline" and label is not None and "unavailable" in capsys.readouterr().out
    assert used.to_dict() == load_config(fallback, {"resize.short_side": 288}).to_dict()
