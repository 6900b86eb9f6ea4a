"""The results-folder owner (propagate/results.py): written whole or not at all, only our own files ever replaced,
inputs never outputs, nothing read from disk trusted as a path, one writer at a time; no torch imported."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from propagate import results
from propagate.errors import PropagateError
from propagate.results import (
    COMPLETE,
    INSTALLING,
    STAGING_MARK,
    ResultsFolder,
    ResumableRun,
    check_output,
    delete,
    finish_install,
    remove_stale_staging,
    written_files,
)

REPO = Path(__file__).resolve().parents[1]


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
        (staging / "a.png").write_text("old")
        (staging / "confidence.csv").write_text("old")
    assert sorted(snapshot(target)) == [COMPLETE, "a.png", "confidence.csv"]
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
    assert (target / "a.png").read_text() == "new" and (target / "confidence.csv").exists() is False
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

def test_results_recorded_before_an_option_existed_resume_while_it_keeps_its_default(tmp_path):
    from propagate.config import load_config
    from propagate.records import result_settings

    settings = result_settings(load_config("davis_baseline"))
    older = {k: v for k, v in settings.items() if k != "match"}  # recorded before the `match` section existed
    out = tmp_path / "eval"
    ResumableRun(out, inputs=[], info={"settings": older}, keys=["settings"]).record()
    ResumableRun(out, inputs=[], info={"settings": settings}, keys=["settings"])  # defaults: agrees
    changed = load_config("davis_baseline", overrides={"match.seed": 3})
    with pytest.raises(PropagateError, match="other settings"):  # a new option away from its default does not
        ResumableRun(out, inputs=[], info={"settings": result_settings(changed)}, keys=["settings"])


# ---------------------------------------------------------------------------------------------- no torch


def test_the_results_folder_owner_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, propagate.results; print('torch' in sys.modules)"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr


# ---------------------------------------------------------------------------------------------- deletion


def victim(tmp_path: Path) -> Path:
    """A user's file outside every results folder of these tests."""
    path = tmp_path / "victim.txt"
    path.write_text("mine")
    return path


def test_delete_refuses_any_path_outside_its_folder_whatever_the_caller_passes(tmp_path):
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    target = victim(tmp_path)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "x.png").write_text("theirs")
    (out / "link").symlink_to(tmp_path / "theirs")
    for outside in (target, out / ".." / "victim.txt", out / "sub" / ".." / ".." / "victim.txt",
                    out / "link" / "x.png", tmp_path, out.parent):
        with pytest.raises(PropagateError, match="refusing to delete .* outside the results folder"):
            delete(out, outside, tree=True)
    assert target.read_text() == "mine" and (tmp_path / "theirs" / "x.png").read_text() == "theirs"
    delete(out, out / "link")  # the link itself is inside: removed, never followed
    assert not (out / "link").is_symlink() and (tmp_path / "theirs" / "x.png").exists()


def test_delete_removes_a_tree_without_following_links_in_it(tmp_path):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "f.png").write_text("1")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "x.png").write_text("theirs")
    (out / "a" / "link").symlink_to(tmp_path / "theirs")
    delete(out, out / "a")  # not empty: kept
    assert (out / "a" / "f.png").exists()
    delete(out, out, tree=True)
    assert not out.exists() and (tmp_path / "theirs" / "x.png").read_text() == "theirs"
    delete(out, out, tree=True)  # repeatable
    linked = tmp_path / "linked"
    linked.symlink_to(tmp_path / "theirs")
    with pytest.raises(PropagateError, match="refusing to delete"):  # a folder given as a link: not the folder
        delete(linked, linked, tree=True)
    assert (tmp_path / "theirs" / "x.png").exists()


# ---------------------------------------------------------------------------------------------- names read from disk


def hostile_manifest(folder: Path, names: list[str]) -> None:
    (folder / COMPLETE).write_text(json.dumps({"files": names}))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_a_manifest_naming_a_file_outside_its_folder_is_one_error_and_nothing_is_deleted(tmp_path, how):
    target = victim(tmp_path)
    out = tmp_path / "out"
    write_results(out, {"a.png": "old"})
    name = {"dotdot": "../victim.txt", "absolute": str(target), "symlink": "up/victim.txt"}[how]
    if how == "symlink":
        (out / "up").symlink_to(tmp_path)
    hostile_manifest(out, ["a.png", name])
    with pytest.raises(PropagateError, match=f"names '{name}', which lies outside {out}"):
        write_results(out, {"a.png": "new"}, overwrite=True)
    with pytest.raises(PropagateError, match="lies outside"):
        ResultsFolder.is_complete(out)
    assert target.read_text() == "mine" and (out / "a.png").read_text() == "old"


def test_a_hidden_staging_folder_with_a_hostile_manifest_never_leads_to_deleting_outside(tmp_path):
    target = victim(tmp_path)
    for suffix in ("-old", ""):  # earlier results set aside; a whole staging folder whose swap was cut short
        hidden = tmp_path / f".new.propagate-1234abcd{suffix}"
        hidden.mkdir()
        hostile_manifest(hidden, ["../victim.txt"])
        with pytest.raises(PropagateError, match="victim.txt"):
            write_results(tmp_path / "new", {"a.png": "1"})
        assert target.read_text() == "mine" and not (tmp_path / "new").exists()
        (hidden / COMPLETE).unlink()
        hidden.rmdir()


def test_a_linked_staging_folder_is_never_emptied(tmp_path):
    """A symlink named like our staging folder, its mark naming a dead process: not ours, never touched."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.png").write_text("mine")
    (tmp_path / "data" / STAGING_MARK).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    (tmp_path / ".out.propagate-dead").symlink_to(tmp_path / "data")
    (tmp_path / ".out.propagate-dead-old").symlink_to(tmp_path / "data")
    hostile_manifest(tmp_path / "data", ["x.png"])
    write_results(tmp_path / "out", {"a.png": "1"})
    assert (tmp_path / "data" / "x.png").read_text() == "mine"


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.parametrize("field", ["replaces", "files", "staging"])
def test_an_install_journal_naming_paths_outside_is_refused(tmp_path, field):
    target = victim(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    staging = tmp_path / ".out.propagate-1234abcd"
    staging.mkdir()
    journal = {"staging": staging.name, "replaces": [], "manifest": {"files": []}}
    if field == "staging":
        staging.rmdir()
        staging.symlink_to(tmp_path)
        journal["manifest"] = {"files": ["victim.txt"]}
    elif field == "replaces":
        journal["replaces"] = ["../victim.txt"]
    else:
        journal["manifest"] = {"files": ["../victim.txt"]}
    (out / INSTALLING).write_text(json.dumps(journal))
    with pytest.raises(PropagateError, match="install journal|lies outside"):
        finish_install(out)
    assert target.read_text() == "mine"


def test_a_unit_name_leading_outside_the_run_is_refused(tmp_path):
    run = ResumableRun(tmp_path / "eval", inputs=[], info={}, keys=[])
    for name in ("../escape", "/abs", "a/../../escape"):
        with pytest.raises(PropagateError, match="outside"):
            run.done(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- foreign entries


@pytest.mark.parametrize("entry, words", [
    ("empty", "holds empty (an empty folder)"), ("link", "holds link (a symlink)"), (".notes", "holds .notes"),
    ("deep/empty", "holds deep/empty (an empty folder)"),
])
def test_overwrite_keeps_and_names_a_foreign_folder_symlink_or_dotfile(tmp_path, entry, words):
    out = tmp_path / "out"
    write_results(out, {"a.png": "old"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.png").write_text("mine")
    if entry == "link":
        (out / "link").symlink_to(tmp_path / "data")
    elif entry == ".notes":
        (out / ".notes").write_text("mine")
    else:
        (out / entry).mkdir(parents=True)
    with pytest.raises(PropagateError, match=f"{words.replace('(', '[(]').replace(')', '[)]')}, which propagate"):
        write_results(out, {"a.png": "new"}, overwrite=True)
    assert (out / entry).exists() or (out / entry).is_symlink()
    assert (out / "a.png").read_text() == "old" and (tmp_path / "data" / "x.png").read_text() == "mine"


def test_a_listed_file_that_a_run_never_writes_is_foreign(tmp_path):
    """The manifest lists notes.txt (it was edited): the tool cannot show it wrote that name, so it is kept."""
    out = tmp_path / "out"
    write_results(out, {"a.png": "old"})
    (out / "notes.txt").write_text("mine")
    hostile_manifest(out, ["a.png", "notes.txt"])
    with pytest.raises(PropagateError, match="holds notes.txt, which propagate did not write"):
        write_results(out, {"a.png": "new"}, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------- one writer


def test_a_second_writer_of_the_same_folder_stops_while_the_first_is_live(tmp_path):
    out = tmp_path / "out"
    first = tmp_path / ".out.propagate-first"
    first.mkdir()
    (first / STAGING_MARK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "started": time.time_ns() - 10**9}))
    with pytest.raises(PropagateError, match=f"another propagate run \\(pid {os.getpid()} on .*\\) is writing {out}"):
        write_results(out, {"a.png": "1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # its staging folder is kept, ours removed


def test_results_that_appear_while_a_run_writes_are_not_replaced_without_overwrite(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(PropagateError, match="another run wrote results to .* while this one was writing"):
        with ResultsFolder(out) as staging:
            (staging / "a.png").write_text("second")
            out.mkdir()  # another run's results, moved into place meanwhile
            (out / "a.png").write_text("first")
            hostile_manifest(out, ["a.png"])
    assert (out / "a.png").read_text() == "first" and written_files(out) == ["a.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
