"""The demo end to end (on a shortened clip): offline it says so in one line and runs the labelled baseline."""
from __future__ import annotations

import json

from propagate.cli import main


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_demo_offline_falls_back_to_labelled_baseline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine without the DIFT weights
    code, stdout, err = run_cli(["demo", "--out", tmp_path / "demo", "--frames", "8"], capsys)
    assert code == 0, err
    assert "DIFT weights unavailable" in stdout and "BASELINE" in stdout
    result = tmp_path / "demo" / "result"
    assert len(list(result.glob("*.png"))) == 8
    assert (result / "overlay.mp4").is_file() and (result / ".complete").is_file()
    info = json.loads((result / "run_info.json").read_text())
    assert info["config"]["features"] == "baseline"
