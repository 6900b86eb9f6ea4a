"""The results-folder owner and the run jobs: written whole or not at all, only our own files ever replaced,
inputs never outputs; ``run_points`` on a synthetic clip."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from propagate.config import load_config
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate import results
from propagate.results import (
    COMPLETE, INSTALLING, STAGING_MARK, ResultsFolder, ResumableRun, check_output, remove_stale_staging, written_files,
)
from propagate.runs import run_points, run_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_results(target, files: dict[str, str], inside: bool = False, **kwargs) -> None:
    """Write ``files`` as results into ``target``, checking where the staging folder was: beside it, or inside it
    (``inside``: a mount point)."""
    with ResultsFolder(target, **kwargs) as staging:
        assert staging.parent == (target if inside else target.parent) and staging != target
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text)


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_is_written_whole_with_its_manifest_and_no_staging_left(tmp_path):
    target = tmp_path / "deep" / "out"
    write_results(target, {"a.png": "1", "sub/b.json": "2"})
    assert written_files(target) == ["a.png", "sub/b.json"]
    assert json.loads((target / COMPLETE).read_text())["files"] == ["a.png", "sub/b.json"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]  # no staging folder beside it


def test_a_failed_run_leaves_nothing_and_removes_the_folders_it_created(tmp_path):
    with pytest.raises(RuntimeError):
        with ResultsFolder(tmp_path / "new" / "out") as staging:
            (staging / "a.png").write_text("1")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_exactly_our_earlier_files_and_keeps_them_until_the_new_ones_are_whole(tmp_path):
    target = tmp_path / "out"
    write_results(target, {"a.png": "old", "b.png": "old"})
    with pytest.raises(PropagateError, match="already holds results: pass --overwrite"):
        ResultsFolder(target)
    with pytest.raises(RuntimeError):  # a failing replacement: the earlier results are untouched
        with ResultsFolder(target, overwrite=True) as staging:
            (staging / "a.png").write_text("half")
            raise RuntimeError("boom")
    assert snapshot(target)["a.png"] == b"old" and written_files(target) == ["a.png", "b.png"]
    write_results(target, {"a.png": "new"}, overwrite=True)
    assert sorted(snapshot(target)) == [COMPLETE, "a.png"] and (target / "a.png").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_overwrite_refuses_a_folder_with_a_foreign_file_and_changes_nothing(tmp_path):
    target = tmp_path / "out"
    write_results(target, {"a.png": "old"})
    (target / "notes.txt").write_text("mine")
    before = snapshot(target)
    with pytest.raises(PropagateError, match="holds notes.txt, which propagate did not write"):
        ResultsFolder(target, overwrite=True)
    assert snapshot(target) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_of_someone_else_is_refused(tmp_path, overwrite):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.jpg").write_text("theirs")
    with pytest.raises(PropagateError, match="holds files propagate did not write"):
        ResultsFolder(tmp_path / "out", overwrite=overwrite)


def test_an_empty_existing_folder_is_filled_in_place(tmp_path):
    (tmp_path / "out").mkdir()
    inode = (tmp_path / "out").stat().st_ino
    write_results(tmp_path / "out", {"a.png": "1"})
    assert (tmp_path / "out").stat().st_ino == inode and written_files(tmp_path / "out") == ["a.png"]


@pytest.mark.parametrize("where, words", [
    ("frames", "is the input"), ("frames/sub", "lies inside the input"), (".", "contains the input"),
])
def test_an_output_overlapping_an_input_is_refused_even_with_overwrite(tmp_path, where, words):
    (tmp_path / "frames").mkdir()
    with pytest.raises(PropagateError, match=words):
        check_output(tmp_path / where, [tmp_path / "frames"], overwrite=True)


def test_working_directory_home_and_root_are_refused_unless_empty(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").write_text("1")
    with pytest.raises(PropagateError, match="working directory"):
        check_output(".", [])
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    check_output(".", [])  # an empty working directory is fine


def test_staging_left_by_a_killed_run_is_removed_by_the_next_and_a_live_one_is_kept(tmp_path):
    target = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for name, pid in (("dead", int(dead.stdout)), ("live", os.getpid())):
        staging = tmp_path / f".out.propagate-{name}"
        staging.mkdir()
        (staging / "00000.png").write_text("partial")
        (staging / STAGING_MARK).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    (tmp_path / ".out.propagate-unmarked").mkdir()  # not ours: never touched
    remove_stale_staging(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.propagate-live", ".out.propagate-unmarked"]


def test_a_mount_point_stages_inside_it_and_a_move_cut_short_is_finished_by_the_next_open(tmp_path, monkeypatch):
    """A results folder that is a mount point (a container volume) cannot be swapped and a staging folder beside it
    lies on another filesystem: the run stages inside it, commits a journal, moves the files in. A move interrupted
    halfway is finished, old files dropped and new ones in, by whatever opens the folder next."""
    target = tmp_path / "volume"
    target.mkdir()
    monkeypatch.setattr(results.os.path, "ismount", lambda path: Path(path) == target)
    with ResultsFolder(target) as staging:
        assert staging.parent == target
        (staging / "sub").mkdir()
        (staging / "a.png").write_text("old")
        (staging / "sub" / "b.json").write_text("old")
    assert sorted(snapshot(target)) == [COMPLETE, "a.png", "sub/b.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["volume"]

    real_replace = os.replace

    def cut_short(src, dst):  # a.png is moved in, then Ctrl-C before c.png
        if Path(dst) == target / "c.png":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", cut_short)
    with pytest.raises(KeyboardInterrupt):
        write_results(target, {"a.png": "new", "c.png": "new"}, inside=True, overwrite=True)
    monkeypatch.setattr(results.os, "replace", real_replace)
    assert not (target / COMPLETE).exists() and (target / INSTALLING).exists()  # half moved: never complete
    assert (target / "a.png").read_text() == "new" and (target / "sub" / "b.json").exists() is False
    assert ResultsFolder.is_complete(target)
    assert snapshot(target) == {COMPLETE: (target / COMPLETE).read_bytes(), "a.png": b"new", "c.png": b"new"}
    assert sorted(p.name for p in target.iterdir()) == [COMPLETE, "a.png", "c.png"]  # no journal, no staging

    # a killed run's staging folder inside the target is ours: not counted as foreign, removed by the next run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = target / ".propagate-dead"
    killed.mkdir()
    (killed / "00000.png").write_text("partial")
    (killed / STAGING_MARK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    check_output(target, overwrite=True)
    write_results(target, {"a.png": "newer"}, inside=True, overwrite=True)
    assert sorted(snapshot(target)) == [COMPLETE, "a.png"] and (target / "a.png").read_text() == "newer"


def test_a_symlinked_folder_is_written_where_it_points_and_the_link_is_kept(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    for text in ("1", "2"):
        with ResultsFolder(tmp_path / "link", overwrite=True) as staging:
            (staging / "a.png").write_text(text)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "a.png").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    assert written_files(tmp_path / "real") == ["a.png"]


def test_a_swap_cut_short_puts_the_whole_new_results_in_place(tmp_path):
    """Killed between setting the earlier results aside and moving the new ones in: the next run puts the new ones
    (whole, with their manifest) in place and removes the earlier ones."""
    target = tmp_path / "out"
    write_results(target, {"a.png": "old"})
    write_results(tmp_path / "new", {"a.png": "new", "b.png": "new"})
    os.rename(target, tmp_path / ".out.propagate-1234abcd-old")
    os.rename(tmp_path / "new", tmp_path / ".out.propagate-5678abcd")
    remove_stale_staging(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert written_files(target) == ["a.png", "b.png"] and (target / "a.png").read_text() == "new"


def test_a_real_mount_point_is_written_and_replaced(tmp_path):
    """As root, a small tmpfs as the results folder: written, then replaced with ``overwrite``, nothing left beside
    it or inside it but the results (skipped, with the reason printed, where mounting is not allowed)."""
    volume = tmp_path / "volume"
    volume.mkdir()
    reason = "not root: cannot mount" if os.geteuid() != 0 else None
    if reason is None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(volume)], capture_output=True,
                              text=True)
        reason = None if done.returncode == 0 else f"mount failed: {done.stderr.strip()}"
    if reason:
        print(f"SKIPPED: real mount point not tested: {reason}")
        pytest.skip(f"real mount point not tested: {reason}")
    try:
        write_results(volume, {"a.png": "1", "b.png": "1"}, inside=True)
        write_results(volume, {"a.png": "2"}, inside=True, overwrite=True)
        assert sorted(p.name for p in volume.iterdir()) == [COMPLETE, "a.png"] and (volume / "a.png").read_text() == "2"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["volume"]
    finally:
        subprocess.run(["umount", str(volume)], check=False, capture_output=True)


def test_resumable_run_skips_done_units_refuses_foreign_ones_and_other_settings(tmp_path):
    out = tmp_path / "eval"
    run = ResumableRun(out, inputs=[], info={"settings": {"t": 1}}, keys=["settings"])
    run.record()
    write_results(out / "seqA", {"00000.png": "1"})
    assert run.done("seqA") and not run.done("seqB")
    (out / "seqC").mkdir()
    (out / "seqC" / "notes.txt").write_text("mine")
    with pytest.raises(PropagateError, match="seqC holds files propagate did not write"):
        run.done("seqC")
    with pytest.raises(PropagateError, match="other settings"):
        ResumableRun(out, inputs=[], info={"settings": {"t": 2}}, keys=["settings"])
    with pytest.raises(PropagateError, match="lies inside the input"):
        ResumableRun(tmp_path / "data" / "out", inputs=[tmp_path / "data"], info={}, keys=[])


def test_run_video_writes_masks_overlay_record_and_manifest(clip, tmp_path):
    frames, mask_path, truth = clip
    config = load_config("davis_baseline", {"resize.short_side": 128})
    summary = run_video(frames, mask_path, tmp_path / "out", config, progress=False)
    out = tmp_path / "out"
    assert summary["frames"] == len(truth)
    files = written_files(out)
    assert files == sorted([f"{i:05d}.png" for i in range(len(truth))] + ["confidence.csv", "overlay.mp4", "run_info.json"])
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
    background = np.full((size[1], size[0], 3), 90, np.uint8) + rng.integers(0, 20, (size[1], size[0], 3), dtype=np.uint8)
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
    with imageio.get_writer(str(video), fps=10, codec="libx264", macro_block_size=1, ffmpeg_log_level="error") as writer:
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
    assert len(summary["check_first"]) == 3 and all(name not in ("00000", "00004") for name, _ in summary["check_first"])
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
