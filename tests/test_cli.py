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
