"""propagate batch over any runner (propagate/batch.py), here the in-process :class:`SerialRunner` (no Ray): rows
checked up front, keyframe folders accepted, results folders confined to --out, failures.csv owned by its record."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_clip

from propagate.batch import BATCH_RECORD, FAILURES_CSV, SerialRunner, run_batch
from propagate.config import load_config
from propagate.errors import PropagateError
from propagate.labels import read_mask, write_mask
from propagate.results import written_files

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = ["resize.short_side=64", "resize.multiple=8"]


def configure(preset: str | None, task: str):
    return load_config("davis_baseline", SETTINGS)


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray]]:
    return write_clip(tmp_path / "clip", num_frames=4, size=(96, 64))


def manifest_and_out(tmp_path: Path, *rows: tuple[object, object, str]) -> tuple[Path, Path]:
    """``videos.csv`` in ``tmp_path`` with one ``video,mask,name`` row per ``rows`` item, and an empty ``out``."""
    manifest = tmp_path / "videos.csv"
    manifest.write_text("video,mask,name\n" + "".join(f"{video},{mask},{name}\n" for video, mask, name in rows))
    out = tmp_path / "out"
    out.mkdir()
    return manifest, out


def test_a_keyframe_folder_row_runs_and_its_keyframes_come_back(clip, tmp_path):
    frames, _, truth = clip
    keys = tmp_path / "keys"
    keys.mkdir()
    write_mask(keys / "00000.png", truth[0])
    write_mask(keys / "00002.png", truth[2])
    manifest = tmp_path / "videos.csv"
    manifest.write_text(f"video,mask,name\n{frames},{keys},walk\n")
    report = run_batch(manifest, tmp_path / "out", configure, SerialRunner(), render=False, progress=False)
    assert report.done == ["walk"] and not report.failed
    assert np.array_equal(read_mask(tmp_path / "out" / "walk" / "00002.png"), truth[2])
    assert len([f for f in written_files(tmp_path / "out" / "walk") if f.endswith(".png")]) == 4


def test_failures_csv_is_ours_only_when_our_record_lists_it_whatever_it_holds(clip, tmp_path):
    frames, mask, _ = clip
    manifest, out = manifest_and_out(tmp_path, (frames, mask, "walk"), (tmp_path / "nowhere", mask, "gone"))
    (out / FAILURES_CSV).write_text("name,video,error\nmy,own,notes\n")  # a user's file with our header
    with pytest.raises(PropagateError, match="failures.csv exists and was not written by propagate batch"):
        run_batch(manifest, out, configure, SerialRunner(), render=False, progress=False)
    assert (out / FAILURES_CSV).read_text() == "name,video,error\nmy,own,notes\n"
    (out / FAILURES_CSV).unlink()
    report = run_batch(manifest, out, configure, SerialRunner(), render=False, progress=False)
    assert report.done == ["walk"] and [row.name for row, _ in report.failed] == ["gone"]
    assert json.loads((out / BATCH_RECORD).read_text()) == {"files": [FAILURES_CSV]}
    (out / FAILURES_CSV).write_text("anything at all\n")  # ours by the record, not by what it holds
    report = run_batch(manifest, out, configure, SerialRunner(), render=False, progress=False)
    assert report.skipped == ["walk"] and (out / FAILURES_CSV).read_text().startswith("name,video,error\ngone,")
    (out / FAILURES_CSV).unlink()
    (out / FAILURES_CSV).symlink_to(tmp_path / "videos.csv")  # a link is never ours
    with pytest.raises(PropagateError, match="was not written by propagate batch"):
        run_batch(manifest, out, configure, SerialRunner(), render=False, progress=False)
    assert manifest.read_text().startswith("video,mask,name")


def test_a_row_whose_results_folder_is_a_symlink_out_of_out_fails_and_touches_nothing(clip, tmp_path):
    frames, mask, _ = clip
    manifest, out = manifest_and_out(tmp_path, (frames, mask, "walk"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "walk").symlink_to(elsewhere)
    report = run_batch(manifest, out, configure, SerialRunner(), render=False, progress=False)
    assert not report.done and "is a symlink" in report.failed[0][1]
    assert list(elsewhere.iterdir()) == []
