"""Results folders: the one owner of everything propagate writes as results (no torch: the jobs are in
:mod:`propagate.runs`, the batch manifest in :mod:`propagate.batch`).

What it promises (README, "What propagate will and will not delete"):

- **Validate first.** The output is checked before anything is written: it must not be, contain or lie inside an
  input (frames, mask, points, dataset root, cache); ``.``, ``~`` and ``/`` only when empty; an existing folder only
  when it holds nothing, or holds exactly the files of an earlier run of ours and ``overwrite`` is given.
- **Write beside, move when whole.** A run writes into a staging folder next to the target
  (``.<name>.propagate-<id>``, marked in progress; inside the target, ``.propagate-<id>``, when the target is a mount
  point such as a container volume, since a folder beside it lies on another filesystem). When the run is whole it
  gets its manifest (``.complete``, the list of every file written, written last) and is moved into place; the
  previous results stay as they were until that moment. A failed or interrupted run removes its staging folder
  (after a kill, the next run of the same target removes it).
- **Moved in place, journalled.** Where the folder itself cannot be swapped (it exists and is empty, or it is a
  mount point), the whole results are first committed in a journal (``.installing``: the staging folder, the earlier
  files to drop, the new manifest), then moved in file by file. An interrupted move is finished by whatever next
  opens that folder, so it never stays half old, half new.
- **Delete only what we wrote.** ``overwrite`` replaces exactly the files listed in the earlier manifest that a run
  of ours writes (:data:`RESULT_NAMES`); a folder holding anything else (a file, an empty folder, a symlink, a
  dotfile) is refused, naming it. Every name read from a file (a manifest, the journal) is confined to its folder
  before anything is done with it, and every removal goes through :func:`delete`, which refuses a path outside the
  folder it is given and never follows a symlink.
- **One writer at a time.** A run that finds another live run writing the same folder (its marked staging folder,
  started earlier) stops with one line; results that appear while a run writes are never replaced without
  ``overwrite``.

:class:`ResultsFolder` writes one folder; :class:`ResumableRun` is the top folder of a dataset protocol (its
``run_info.json``, then one unit folder per video, each written by a :class:`ResultsFolder` and skipped when
complete); :func:`staging_folders` reads the staging marks (the owner of each staging folder) for the cluster. What
produced the results (``run_info.json``) is :mod:`propagate.records`.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import stat
import time
from fnmatch import fnmatchcase
from pathlib import Path
from types import TracebackType
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

from propagate.config import Config
from propagate.errors import PropagateError
from propagate.io import atomic_write_json
from propagate.records import JSON, RUN_INFO, E, default_settings, read_json, run_record, settings_agree

COMPLETE = ".complete"  # the manifest of a finished results folder, written last
STAGING_MARK = ".in-progress"  # in a staging folder while a run writes it
STAGING_TAG = ".propagate-"  # staging folders are named .<target name>.propagate-<id> (inside: .propagate-<id>)
INSTALLING = ".installing"  # the journal of results being moved into their folder file by file
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # failures that can only come from writing

# What a run of ours writes into a results folder (shell patterns, one per name; ``/`` only where a writer makes a
# subfolder): only names that match, listed in the manifest, are replaced by ``overwrite``. A new writer adds its own.
RESULT_NAMES = ["*.png", "run_info.json", "confidence.csv", "coco.json", "coco_keypoints.json", "points.json",
                "overlay.mp4",
                "*.json", "*.jpg", "frames/*.png", "edit.mp4",  # match and edit: per target, per frame
                "scores.csv",  # eval spair / hpatches
                "annotations.xml"]  # --format cvat

U = TypeVar("U")  # a unit of work (:class:`propagate.runs.Unit`)
C = TypeVar("C")  # a feature store, or None


# ---------------------------------------------------------------------------------------------- checks


def _resolved(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()


def check_not_input(target: str | Path, inputs: Sequence[str | Path]) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs``."""
    out = _resolved(target)
    for given in inputs:
        inp = _resolved(given)
        if out == inp:
            raise PropagateError(f"output {target} is the input {given}: choose an --out outside the inputs")
        if out.is_relative_to(inp):
            raise PropagateError(f"output {target} lies inside the input {given}: choose an --out outside the inputs")
        if inp.is_relative_to(out):
            raise PropagateError(f"output {target} contains the input {given}: choose an --out that holds no input")


def _inside(folder: Path, name: str | Path) -> bool:
    """``folder / name`` lies inside ``folder`` (not ``folder`` itself) once resolved: no absolute path, no ``..``
    and no symlink on the way out. The last part is not followed (a link inside ``folder`` is inside)."""
    path = folder / name
    root = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(path.parent)) / path.name
    return real != root and real.is_relative_to(root) and ".." not in Path(name).parts


def confined(folder: Path, name: str, source: str,
             fix: str = "that file was not written by propagate; remove it (or choose another --out)") -> Path:
    """``folder / name`` for a ``name`` read from a file (``source`` says which, e.g. ``manifest out/.complete``),
    checked to lie inside ``folder``; a PropagateError naming it otherwise (``../x``, an absolute path, a symlink
    out)."""
    if not name or not _inside(folder, name):
        raise PropagateError(f"{source} names {name!r}, which lies outside {folder}: {fix}")
    return folder / name


def written_name(name: str) -> bool:
    """``name`` (relative, ``/``-separated) is one a run of ours writes into a results folder (:data:`RESULT_NAMES`)."""
    return not any(part.startswith(".") for part in name.split("/")) and any(
        fnmatchcase(name, pattern) and name.count("/") == pattern.count("/") for pattern in RESULT_NAMES)


def written_files(folder: Path) -> list[str] | None:
    """The files listed in ``folder``'s manifest (relative paths), or None if it has no manifest of ours. A listed
    name that leads outside ``folder`` is a PropagateError naming it."""
    mark = folder / COMPLETE
    if not mark.is_file() or mark.is_symlink():
        return None
    try:
        data = json.loads(mark.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    for name in files:
        confined(folder, name, f"manifest {mark}")
    return files


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def _entries(folder: Path) -> dict[str, str]:
    """Everything under ``folder``, relative name -> ``file``, ``folder``, ``symlink`` or ``other``; symlinks are
    listed, never followed."""
    found = {}
    for top, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            path = Path(top) / name
            mode = os.lstat(path).st_mode
            kind = ("symlink" if stat.S_ISLNK(mode) else "folder" if stat.S_ISDIR(mode)
                    else "file" if stat.S_ISREG(mode) else "other")
            found[path.relative_to(folder).as_posix()] = kind
    return found


def _foreign(folder: Path, listed: Sequence[str], skip: Sequence[str]) -> list[str]:
    """The entries of ``folder`` that propagate cannot show it wrote, each as ``name`` (a file) or ``name (an empty
    folder)`` etc.: ours are the manifest, listed regular files with a name a run writes, and their folders;
    ``skip`` are top-level names left out (our staging folders)."""
    entries = {n: k for n, k in _entries(folder).items() if n.split("/")[0] not in skip}
    ours = {n for n in listed if entries.get(n) == "file" and written_name(n)} | {COMPLETE}
    ours |= {p.as_posix() for n in ours for p in Path(n).parents
             if p != Path(".") and entries.get(p.as_posix()) == "folder"}
    foreign = sorted(n for n in entries if n not in ours)
    shown = [n for n in foreign if not any(other.startswith(n + "/") for other in foreign)]  # a folder: its contents
    what = {"folder": " (an empty folder)", "symlink": " (a symlink)", "other": " (not a regular file)"}
    return [n + what.get(entries[n], "") for n in shown]


def _is_shared_place(path: Path) -> bool:
    """The working directory, home or root: never a results folder unless empty."""
    return _resolved(path) in (Path.cwd().resolve(), Path.home().resolve(), Path(_resolved(path).anchor))


def check_output(target: str | Path, inputs: Sequence[str | Path] = (), overwrite: bool = False) -> None:
    """Everything about an output folder that can be checked before writing (see the module docstring)."""
    path = Path(target).expanduser()
    check_not_input(path, inputs)
    if path.exists() and not path.is_dir():
        raise PropagateError(f"output {path} exists and is not a folder: choose another --out")
    if not path.is_dir():
        return
    finish_install(path)
    ours_in_progress = _inner_staging(path)
    present = [f for f in _all_files(path) if Path(f).parts[0] not in ours_in_progress]
    if not present and not any(p.name not in ours_in_progress for p in path.iterdir()):
        return
    if _is_shared_place(path):
        raise PropagateError(f"output {path} is {_resolved(path)} (the working directory, home or root) and is not "
                             "empty: give a new folder for the results, e.g. --out results/")
    ours = written_files(path)
    if ours is None:
        first = present[0] if present else sorted(p.name for p in path.iterdir() if p.name not in ours_in_progress)[0]
        raise PropagateError(f"output folder {path} holds files propagate did not write (e.g. {first}): "
                             "choose an empty or new --out")
    if not overwrite:
        raise PropagateError(f"output folder {path} already holds results: pass --overwrite to replace them, "
                             "or choose another --out")
    foreign = _foreign(path, ours, list(ours_in_progress))
    if foreign:
        raise PropagateError(f"output folder {path} holds {foreign[0]}, which propagate did not write: "
                             "--overwrite replaces only earlier results; move it or choose another --out")


# ---------------------------------------------------------------------------------------------- removal of our own


def delete(folder: Path, path: Path, tree: bool = False) -> None:
    """The one way propagate removes anything: ``path`` if it is ``folder`` or lies inside it once resolved (else a
    PropagateError, whatever the caller passes). A file or a symlink is unlinked (a symlink is never followed); a
    folder is removed only if empty, or with ``tree`` with everything in it (links inside are removed, not
    followed). A missing path is fine: every removal can be repeated."""
    root = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(path.parent)) / path.name  # the last part is not followed
    if real != root and not real.is_relative_to(root):
        raise PropagateError(f"refusing to delete {path}: it lies outside the results folder {folder}")
    try:
        mode = os.lstat(real).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(mode):
        real.unlink(missing_ok=True)
    elif tree:
        shutil.rmtree(real, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            real.rmdir()  # only if empty: a file we did not list keeps its folder


def _remove_listed(folder: Path, files: Sequence[str], keep_folder: bool = False) -> None:
    """Delete ``files`` (relative to ``folder``), then the folders they leave empty, then ``folder`` if empty
    (unless ``keep_folder``)."""
    for name in files:
        delete(folder, folder / name)
    dirs = sorted({p for name in files for p in (folder / name).parents if p.is_relative_to(folder) and p != folder},
                  key=lambda p: len(p.parts), reverse=True)
    for d in dirs if keep_folder else [*dirs, folder]:
        delete(folder, d)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


Owner = tuple[int, str]  # (pid, host) of the process writing a staging folder, as its mark records them


def _mark(staging: Path) -> JSON | None:
    """A staging folder's in-progress mark (``pid``, ``host``, ``started``); None without a readable one. Nothing in
    it is ever used as a path."""
    try:
        info = json.loads((staging / STAGING_MARK).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return info if isinstance(info, dict) else None


def _owner(staging: Path) -> Owner | None:
    """The (pid, host) a staging folder's in-progress mark names; None without a readable mark."""
    try:
        info = _mark(staging)
        return int(info["pid"]), str(info["host"])  # type: ignore[index, call-overload]
    except (ValueError, KeyError, TypeError):
        return None


def _is_folder(path: Path) -> bool:
    """A real folder (a symlink to one is not: we never make links, so a linked staging folder is not ours)."""
    return path.is_dir() and not path.is_symlink()


def _inner_staging(target: Path) -> dict[str, Owner]:
    """The marked staging folders inside ``target`` (``.propagate-*``, used where ``target`` is a mount point), name
    -> owner: ours, never counted as the folder's contents."""
    if not target.is_dir():
        return {}
    found = {p.name: _owner(p) for p in target.glob(f"{STAGING_TAG}*") if _is_folder(p)}
    return {name: owner for name, owner in found.items() if owner is not None}


def staging_folders(target: Path) -> Iterator[tuple[Path, Owner | None]]:
    """Each staging folder of ``target`` with the owner its in-progress mark names: beside it
    (``.<name>.propagate-*``; owner None: no readable mark, e.g. earlier results set aside during a replacement)
    and, marked, inside it (``.propagate-*``)."""
    if not target.parent.is_dir():
        return
    for staging in target.parent.glob(f".{target.name}{STAGING_TAG}*"):
        if _is_folder(staging):
            yield staging, _owner(staging)
    for name, owner in sorted(_inner_staging(target).items()):
        yield target / name, owner


def remove_stale_staging(target: Path) -> None:
    """Tidy ``target`` after killed runs of ours: finish an install that was committed, put back whole results
    whose swap into place was cut short, remove staging folders whose process is gone (marked, same host) and
    earlier results set aside during a replacement."""
    finish_install(target)
    found = list(staging_folders(target))
    if not target.exists():  # killed between setting the earlier results aside and moving the new ones in
        whole = [s for s, owner in found if owner is None and written_files(s) is not None]
        new = [s for s in whole if not s.name.endswith("-old")]
        for staging in sorted(new or whole, key=lambda s: s.stat().st_mtime)[-1:]:
            os.rename(staging, target)  # the newest whole results: they were committed
        found = list(staging_folders(target))
    for staging, owner in found:
        if owner is not None:
            if _gone(owner):
                delete(staging, staging, tree=True)  # a staging folder is ours from top to bottom
        elif staging.name.endswith("-old") and (files := written_files(staging)) is not None:
            _remove_listed(staging, [*files, COMPLETE])


def _started(staging: Path) -> int:
    """When the run that marked ``staging`` started (ns since the epoch; 0 when its mark does not say)."""
    value = (_mark(staging) or {}).get("started")
    return value if isinstance(value, int) else 0


def _gone(owner: Owner) -> bool:
    """The process that marked a staging folder is known to be gone (same host, no such process)."""
    return owner[1] == socket.gethostname() and not _pid_alive(owner[0])


def finish_install(target: Path) -> None:
    """Finish moving results into ``target`` file by file if a run committed them (its journal, ``.installing``)
    and was stopped before the end. Every step can be repeated: the earlier manifest out, the earlier files the new
    results do not have removed, the new files moved in, the new manifest written, the staging folder and the
    journal removed."""
    journal = target / INSTALLING
    if not journal.is_file():
        return
    data = read_json(journal, "install journal")
    name, replaces, manifest = data.get("staging"), data.get("replaces"), data.get("manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    names_ok = all(isinstance(f, list) and all(isinstance(n, str) and n for n in f) for f in (replaces, files))
    inside = isinstance(name, str) and "/" not in name and name.startswith(STAGING_TAG)
    beside = isinstance(name, str) and "/" not in name and name.startswith(f".{target.name}{STAGING_TAG}")
    if not names_ok or not (inside or beside):
        raise PropagateError(f"install journal {journal} is not one propagate wrote: delete {target} and run again")
    assert isinstance(name, str) and isinstance(replaces, list) and isinstance(files, list)
    staging = target / name if inside else target.parent / name
    for listed in (replaces, files):
        for file in listed:
            confined(target, file, f"install journal {journal}")
            confined(staging, file, f"install journal {journal}")
    if staging.is_symlink() or not all(written_name(file) for file in replaces):
        raise PropagateError(f"install journal {journal} is not one propagate wrote: delete {target} and run again")
    try:
        delete(target, target / COMPLETE)
        _remove_listed(target, sorted(set(replaces) - set(files)), keep_folder=True)
        for file in files:
            if (staging / file).exists():
                (target / file).parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / file, target / file)
        missing = [file for file in files if not (target / file).is_file()]
        if missing:
            raise PropagateError(f"results moving into {target} lost {missing[0]} (its staging folder {staging} was "
                                 f"changed): delete {target} and run again")
        atomic_write_json(target / COMPLETE, manifest)
        delete(staging, staging, tree=True)  # what is left of our staging folder: its marks
        delete(target, journal)
    except OSError as exc:
        raise PropagateError(f"cannot finish moving results into {target}: {exc.strerror or exc} (at "
                             f"{exc.filename}): fix this and run again") from exc


# ---------------------------------------------------------------------------------------------- one results folder


class ResultsFolder:
    """Write one results folder whole: ``with ResultsFolder(out, inputs=[...]) as staging: <write into staging>``.

    The checks of :func:`check_output` run in the constructor, before anything is written. Inside the block, files
    go into ``staging`` (a fresh folder beside ``out``); set :attr:`summary` to record extra facts in the manifest.
    When the block ends without an error, the manifest is written and the folder moved into place, replacing only
    the earlier results' files (``overwrite``). On an error or interrupt, the staging folder is removed and ``out``
    is left as it was.
    """

    def __init__(self, target: str | Path, *, inputs: Sequence[str | Path] = (), overwrite: bool = False):
        self.target = Path(target).expanduser()
        if self.target.is_symlink():  # results go where the link points; the link itself is the user's
            self.target = self.target.resolve()
        check_output(self.target, inputs, overwrite)
        self.overwrite = overwrite
        self.staging: Path | None = None
        self.inside = False  # staging inside the target (a mount point), not beside it
        self.committed = False  # the results are whole and journalled: finishing the move is the next open's job
        self.summary: JSON = {}
        self._created: list[Path] = []

    @staticmethod
    def is_complete(target: str | Path) -> bool:
        """True if ``target`` holds a finished results folder of ours (finishing a committed install first)."""
        finish_install(Path(target))
        return written_files(Path(target)) is not None

    def __enter__(self) -> Path:
        parent = self.target.parent
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._created = missing  # deepest first: removed again if the run fails
            remove_stale_staging(self.target)
            tag = f"{STAGING_TAG}{secrets.token_hex(4)}"
            self.inside = self.target.is_dir() and os.path.ismount(self.target)  # a sibling: another filesystem
            self.staging = self.target / tag if self.inside else parent / f".{self.target.name}{tag}"
            self.staging.mkdir()
            atomic_write_json(self.staging / STAGING_MARK, {"pid": os.getpid(), "host": socket.gethostname(),
                                                            "target": str(self.target), "started": time.time_ns()})
            self._check_alone()
        except OSError as exc:
            self._discard()
            raise self._write_error(exc) from exc
        except BaseException:
            self._discard()
            raise
        return self.staging

    def _check_alone(self) -> None:
        """One writer per folder: refuse if another live run of ours writes ``target`` and started first (its
        marked staging folder; two runs that start at once both see each other and the later one stops)."""
        assert self.staging is not None
        mine = _started(self.staging), self.staging.name
        for staging, owner in staging_folders(self.target):
            if staging == self.staging or owner is None or _gone(owner):
                continue
            if (_started(staging), staging.name) < mine:
                raise PropagateError(f"another propagate run (pid {owner[0]} on {owner[1]}) is writing {self.target}: "
                                     f"wait for it to finish or choose another --out (if that run is gone, delete "
                                     f"its staging folder {staging})")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self.staging is not None
        if exc_type is None:
            try:
                self._install()
                return
            except BaseException as error:
                self._discard()
                if isinstance(error, OSError):
                    raise self._write_error(error) from error
                raise
        self._discard()
        if isinstance(exc, OSError) and (exc.errno in WRITE_ERRNOS or str(exc.filename).startswith(str(self.staging))):
            raise self._write_error(exc) from exc

    def _write_error(self, exc: OSError) -> PropagateError:
        """A failed write (read-only, no space, permission...) as one line naming the results folder."""
        where = f" (at {exc.filename})" if exc.filename else ""
        return PropagateError(f"cannot write results to {self.target}: {exc.strerror or exc}{where}; nothing was "
                              "marked complete and earlier results there are untouched: fix this or choose another "
                              "--out")

    def _discard(self) -> None:
        if self.staging is not None and not self.committed:
            delete(self.staging, self.staging, tree=True)
        for folder in self._created:  # deepest first, each only if empty
            delete(self._created[-1], folder)

    def _install(self) -> None:
        staging, target = self.staging, self.target
        assert staging is not None
        manifest: JSON = {"files": [f for f in _all_files(staging) if f != STAGING_MARK], **self.summary}
        earlier = written_files(target) if target.exists() else None
        if earlier is not None and not self.overwrite:  # absent or empty when checked: another run wrote it since
            raise PropagateError(f"another run wrote results to {target} while this one was writing: nothing of "
                                 "this run was marked complete; choose another --out (or pass --overwrite)")
        check_output(target, overwrite=True)  # nothing foreign appeared in the meantime
        earlier = [f for f in earlier or [] if written_name(f)]  # what we can show we wrote: all that is replaced
        if not self.inside and (not target.exists() or written_files(target) is not None):
            delete(staging, staging / STAGING_MARK)
            atomic_write_json(staging / COMPLETE, manifest)
            if not target.exists():
                try:
                    os.rename(staging, target)
                except OSError as exc:
                    if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):  # another run moved its results in first
                        raise PropagateError(f"another run wrote results to {target} while this one was writing: "
                                             "nothing of this run was marked complete; choose another --out") from exc
                    raise
                return
            aside = target.parent / f".{target.name}{STAGING_TAG}{secrets.token_hex(4)}-old"
            try:
                os.rename(target, aside)
            except OSError:  # a busy folder or a bind mount: move the files in place
                pass
            else:
                try:
                    os.rename(staging, target)
                except OSError:
                    os.rename(aside, target)  # the earlier results go back where they were
                    raise
                _remove_listed(aside, [*earlier, COMPLETE])
                return
        # an existing empty folder, a mount point or a folder that cannot be swapped: commit, then move in
        atomic_write_json(target / INSTALLING, {"staging": staging.name, "replaces": earlier, "manifest": manifest})
        self.committed = True  # from here on the staging folder belongs to the journal: an interrupt leaves it
        finish_install(target)


# ---------------------------------------------------------------------------------------------- a dataset run


class ResumableRun:
    """The top folder of a dataset protocol: ``run_info.json`` plus one unit folder per video.

    The constructor checks the folder (not an input; an existing ``run_info.json`` must be ours and agree with
    ``info`` on ``keys``, so results made with other settings are never mixed). :meth:`done` says whether a unit is
    finished (a unit folder holding files we did not write is refused, never emptied); :meth:`run` records what
    produces the results and runs the pending units.
    """

    def __init__(self, out: str | Path, *, inputs: Sequence[str | Path], info: JSON, keys: Sequence[str]):
        self.out = Path(out).expanduser()
        self.inputs = list(inputs)
        check_not_input(self.out, self.inputs)
        if self.out.exists() and not self.out.is_dir():
            raise PropagateError(f"output {self.out} exists and is not a folder: choose another --out")
        if _is_shared_place(self.out) and any(self.out.iterdir()) and not (self.out / RUN_INFO).is_file():
            raise PropagateError(f"output {self.out} is {_resolved(self.out)} (the working directory, home or root) "
                                 "and is not empty: give a new folder for the results, e.g. --out results/")
        self.info = info
        self._check(info, keys)

    def _check(self, info: JSON, keys: Sequence[str]) -> None:
        record = self.out / RUN_INFO
        if record.is_file():
            old = read_json(record, "run record")
            for key in keys:
                if not settings_agree(old.get(key), info.get(key), default_settings() if key == "settings" else None):
                    what = {"extractor": "extractor settings", "settings": "settings"}.get(key, key)
                    raise PropagateError(f"{self.out} holds results made with other {what} (see {record}): "
                                         "choose another --out, or delete that folder to start over")

    def record(self, info: JSON | None = None) -> None:
        """Write ``run_info.json`` (``info``, default the constructor's)."""
        if info is not None:
            self.info = info
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out / RUN_INFO, self.info)

    def done(self, unit: str) -> bool:
        """Whether ``unit``'s folder (``out/<unit>``; a name from a split file, confined to ``out``) is complete."""
        if not unit or not _inside(self.out, unit):
            raise PropagateError(f"{unit!r} would be written outside {self.out}: give sequence or video names that are "
                                 "plain relative paths")
        folder = self.out / unit
        if ResultsFolder.is_complete(folder):
            return True
        check_output(folder, self.inputs, overwrite=False)  # absent or empty, or an error naming a foreign file
        return False

    def run(self, units: Sequence[U], config: Config, extractor: E | None, cache: C, progress: bool,
            runner: Callable[[Sequence[U], Config, E | None, C, bool], object],
            build: Callable[[str, Mapping[str, object]], E], **record: object) -> None:
        """Record what produces the results in ``run_info.json`` (``record`` adds to :func:`run_record`), then run
        the pending ``units`` with ``runner`` (``runner(units, config, extractor, cache, progress)``, e.g.
        :func:`propagate.runs.run_units`).

        The extractor is built (``build(config.features, config.extractor)``) only when a unit needs it or nothing
        is recorded yet; its settings must agree with an earlier record. When every unit is done, the earlier record
        is kept as it was.
        """
        if extractor is None and (units or not (self.out / RUN_INFO).is_file()):
            extractor = build(config.features, config.extractor)
        if extractor is not None:
            info = run_record(config, extractor, features=extractor.name, extractor_description=extractor.describe(),
                              settings=self.info.get("settings"), **record)
            self._check(info, ["settings", "extractor", "features"])
            self.record(info)
        else:
            self.info = read_json(self.out / RUN_INFO, "run record")
        runner(units, config, extractor, cache, progress)
