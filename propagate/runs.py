"""Results folders: the one owner of everything propagate writes as results, and the two run jobs.

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
- **Delete only what we wrote.** ``overwrite`` replaces exactly the files listed in the earlier manifest; a folder
  holding anything else is refused, naming the first foreign file.

:class:`ResultsFolder` writes one folder; :class:`ResumableRun` is the top folder of a dataset protocol (its
``run_info.json``, then one unit folder per video, each written by a :class:`ResultsFolder` and skipped when
complete). :func:`run_video` and :func:`run_points` are the ``propagate run`` jobs.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore, check_processing_size
from propagate.io import atomic_write_json
from propagate.keypoints import PointSet
from propagate.kinds import FrameResult, Given, LabelKind, MaskKind, PointKind, kind_named
from propagate.pipeline import check_length, iter_results, resolve_direction
from propagate.session import Session
from propagate.video import Frame, open_video
from propagate.writers import OVERLAY_MP4, Run, check_formats, chosen

COMPLETE = ".complete"  # the manifest of a finished results folder, written last
RUN_INFO = "run_info.json"  # what produced the results
STAGING_MARK = ".in-progress"  # in a staging folder while a run writes it
STAGING_TAG = ".propagate-"  # staging folders are named .<target name>.propagate-<id> (inside: .propagate-<id>)
INSTALLING = ".installing"  # the journal of results being moved into their folder file by file
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}  # failures that can only come from writing

JSON = dict[str, object]

# Options that change speed but not results: left out when checking that a resumed run uses the same settings.
SPEED_ONLY = {("batch_frames",), ("extractor",), ("propagation", "device"), ("propagation", "screen")}


# ---------------------------------------------------------------------------------------------- records


def result_settings(config: Config) -> JSON:
    """The config without the options that only change speed (what resumed results must agree on), as JSON."""
    kept = {k: v for k, v in config.to_dict().items() if (k,) not in SPEED_ONLY}
    for section, value in list(kept.items()):
        if isinstance(value, dict):
            kept[section] = {k: v for k, v in value.items() if (section, k) not in SPEED_ONLY}
    return json.loads(json.dumps(kept, default=str))


def run_record(config: Config, extractor: FeatureExtractor, **extra: object) -> JSON:
    """What produced a set of results: config, extractor settings, package versions, date, command line (as JSON
    reads it back: tuples become lists)."""
    import importlib.metadata as md

    versions: dict[str, str | None] = {}
    for package in ("propagate", "torch", "diffusers", "transformers", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    record = {
        "config": config.to_dict(),
        "extractor": extractor.settings(),
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        **extra,
    }
    return json.loads(json.dumps(record, default=str))


def read_json(path: Path, what: str) -> JSON:
    """A JSON object the tool wrote; a PropagateError naming ``path`` if it is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PropagateError(f"{what} {path} is unreadable: delete it (and the results beside it) or choose another --out") from None
    if not isinstance(data, dict):
        raise PropagateError(f"{what} {path} is not a propagate record: choose another --out")
    return data


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


def written_files(folder: Path) -> list[str] | None:
    """The files listed in ``folder``'s manifest (relative paths), or None if it has no manifest of ours."""
    mark = folder / COMPLETE
    if not mark.is_file():
        return None
    try:
        data = json.loads(mark.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


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
    foreign = sorted(set(present) - set(ours) - {COMPLETE})
    if foreign:
        raise PropagateError(f"output folder {path} holds {foreign[0]}, which propagate did not write: "
                             "--overwrite replaces only earlier results; move that file or choose another --out")


# ---------------------------------------------------------------------------------------------- removal of our own


def _remove_listed(folder: Path, files: Sequence[str], keep_folder: bool = False) -> None:
    """Delete ``files`` (relative to ``folder``), then the folders they leave empty, then ``folder`` if empty
    (unless ``keep_folder``)."""
    for name in files:
        (folder / name).unlink(missing_ok=True)
    dirs = sorted({p for name in files for p in (folder / name).parents if p.is_relative_to(folder) and p != folder},
                  key=lambda p: len(p.parts), reverse=True)
    for d in dirs if keep_folder else [*dirs, folder]:
        with contextlib.suppress(OSError):
            d.rmdir()  # only if empty: a file we did not list keeps its folder


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


Owner = tuple[int, str]  # (pid, host) of the process writing a staging folder, as its mark records them


def _owner(staging: Path) -> Owner | None:
    """The (pid, host) a staging folder's in-progress mark names; None without a readable mark."""
    try:
        info = json.loads((staging / STAGING_MARK).read_text(encoding="utf-8"))
        return int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _inner_staging(target: Path) -> dict[str, Owner]:
    """The marked staging folders inside ``target`` (``.propagate-*``, used where ``target`` is a mount point), name
    -> owner: ours, never counted as the folder's contents."""
    if not target.is_dir():
        return {}
    found = {p.name: _owner(p) for p in target.glob(f"{STAGING_TAG}*") if p.is_dir()}
    return {name: owner for name, owner in found.items() if owner is not None}


def staging_folders(target: Path) -> Iterator[tuple[Path, Owner | None]]:
    """Each staging folder of ``target`` with the owner its in-progress mark names: beside it
    (``.<name>.propagate-*``; owner None: no readable mark, e.g. earlier results set aside during a replacement)
    and, marked, inside it (``.propagate-*``)."""
    if not target.parent.is_dir():
        return
    for staging in target.parent.glob(f".{target.name}{STAGING_TAG}*"):
        if staging.is_dir():
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
            if owner[1] == socket.gethostname() and not _pid_alive(owner[0]):
                shutil.rmtree(staging, ignore_errors=True)  # a staging folder is ours from top to bottom
        elif staging.name.endswith("-old") and (files := written_files(staging)) is not None:
            _remove_listed(staging, [*files, COMPLETE])


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
    names_ok = all(isinstance(f, list) and all(isinstance(n, str) and n and not Path(n).is_absolute()
                                               and ".." not in Path(n).parts for n in f) for f in (replaces, files))
    inside = isinstance(name, str) and "/" not in name and name.startswith(STAGING_TAG)
    beside = isinstance(name, str) and "/" not in name and name.startswith(f".{target.name}{STAGING_TAG}")
    if not names_ok or not (inside or beside):
        raise PropagateError(f"install journal {journal} is not one propagate wrote: delete {target} and run again")
    assert isinstance(name, str) and isinstance(replaces, list) and isinstance(files, list)
    staging = target / name if inside else target.parent / name
    try:
        (target / COMPLETE).unlink(missing_ok=True)
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
        shutil.rmtree(staging, ignore_errors=True)  # what is left of our staging folder: its marks
        journal.unlink()
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
                                                            "target": str(self.target)})
        except OSError as exc:
            self._discard()
            raise self._write_error(exc) from exc
        return self.staging

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
        if self.staging is not None and self.staging.exists() and not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)
        for folder in self._created:
            with contextlib.suppress(OSError):
                folder.rmdir()

    def _install(self) -> None:
        staging, target = self.staging, self.target
        assert staging is not None
        manifest: JSON = {"files": [f for f in _all_files(staging) if f != STAGING_MARK], **self.summary}
        earlier = written_files(target) if target.exists() else None
        if not self.inside and (not target.exists() or earlier is not None):
            (staging / STAGING_MARK).unlink()
            atomic_write_json(staging / COMPLETE, manifest)
            if not target.exists():
                os.rename(staging, target)
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
                _remove_listed(aside, [*(earlier or []), COMPLETE])
                return
        # an existing empty folder, a mount point or a folder that cannot be swapped: commit, then move in
        atomic_write_json(target / INSTALLING, {"staging": staging.name, "replaces": earlier or [], "manifest": manifest})
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
                if old.get(key) != info.get(key):
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
        folder = self.out / unit
        if ResultsFolder.is_complete(folder):
            return True
        check_output(folder, self.inputs, overwrite=False)  # absent or empty, or an error naming a foreign file
        return False

    def run(self, units: Sequence["Unit"], config: Config, extractor: FeatureExtractor | None,
            cache: FeatureStore | None, progress: bool, runner: "Runner | None" = None, **record: object) -> None:
        """Record what produces the results in ``run_info.json`` (``record`` adds to :func:`run_record`), then run
        the pending ``units`` with ``runner`` (default :func:`run_units`).

        The extractor is built only when a unit needs it or nothing is recorded yet; its settings must agree with an
        earlier record. When every unit is done, the earlier record is kept as it was.
        """
        if extractor is None and (units or not (self.out / RUN_INFO).is_file()):
            extractor = build_extractor(config.features, config.extractor)
        if extractor is not None:
            info = run_record(config, extractor, features=extractor.name, extractor_description=extractor.describe(),
                              settings=self.info.get("settings"), **record)
            self._check(info, ["settings", "extractor", "features"])
            self.record(info)
        else:
            self.info = read_json(self.out / RUN_INFO, "run record")
        (runner or run_units)(units, config, extractor, cache, progress)


# ---------------------------------------------------------------------------------------------- the run jobs


@contextlib.contextmanager
def _closing(stream: Iterable[object]) -> Iterator[None]:
    """Close a generator of results when the writing stops, even on an error, so that its progress bar is cleared
    before the error line is printed."""
    try:
        yield
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def write_results(run: Run, results: Iterable[tuple[Frame, FrameResult]], formats: Sequence[str] = ("png",),
                  render: bool = True) -> tuple[int, FrameResult | None, list[tuple[str, float]]]:
    """Write every frame's result into ``run.out`` (a staging folder) with the writers of ``run.kind`` that are
    always written or asked for in ``formats`` (:func:`propagate.writers.chosen`; the overlay only if ``render``).

    Returns the number of frames written, the last frame's result, and the three least confident propagated frames
    (not keyframes): ``[(frame name, confidence)]``, lowest first, the confidences as ``confidence.csv`` rounds them.
    """
    count, last, scored = 0, None, []
    with contextlib.ExitStack() as stack:
        write = [stack.enter_context(w.open(run)) for w in chosen(run.kind.name, formats, render)]
        with _closing(results):
            for frame, result in results:
                for each in write:
                    each(frame, result)
                count, last = count + 1, result
                if not result.keyframe:
                    value = min((float(f"{result.confidence.get(t, 0.0):.4f}") for t in run.tracks), default=1.0)
                    scored.append((value, frame.index, frame.name))
    return count, last, [(name, value) for value, _, name in sorted(scored)[:3]]


def run_labels(
    video: str | Path,
    kind: type[LabelKind],
    annotation: Given,
    out_dir: str | Path,
    config: Config,
    *,
    extractor: FeatureExtractor | None = None,
    cache: FeatureStore | None = None,
    overwrite: bool = False,
    render: bool = True,
    progress: bool = True,
    label: str | None = None,
    inputs: Sequence[str | Path] = (),
    formats: Sequence[str] = ("png",),
    direction: str | None = None,
    extra: Mapping[str, object] | None = None,
) -> JSON:
    """The ``propagate run`` job for label kind ``kind`` (:mod:`propagate.kinds`): its files (the writers of
    :mod:`propagate.writers` that serve it: always written, asked for in ``formats``, the overlay if ``render``),
    ``run_info.json`` and the ``.complete`` manifest, written whole into ``out_dir`` (see :class:`ResultsFolder`).

    ``annotation`` is read by ``kind.read`` (a file or folder, or arrays: :meth:`LabelKind.read`). One keyframe on
    frame 0 streams frame by frame (:func:`propagate.pipeline.iter_results`); other keyframes go through a
    :class:`propagate.session.Session` (``direction`` default ``config.keyframes.direction``). ``inputs`` are more
    paths the output must stay clear of (a dataset root, a cache); ``label`` captions the overlay (default: the
    extractor's description); ``extra`` adds keys to the kind's record (``points.json``). Everything is checked
    before anything is written.

    Returns a summary: frames written, the kind's facts (:meth:`LabelKind.summary`), output folder, overlay path,
    extractor description, keyframes, and the least confident frames (``check_first``: ``[(frame name, confidence)]``).
    """
    source = open_video(video)
    given = kind.read(annotation, source, config)
    codec, keyframes = given.kind, given.frames
    check_length(source)
    direction = direction or config.keyframes.direction
    _, backward = resolve_direction(direction, list(keyframes), len(source))
    formats = check_formats(formats)
    paths = [video, *([given.path] if given.path is not None else []), *inputs]
    folder = ResultsFolder(out_dir, inputs=paths, overwrite=overwrite)
    extractor = extractor or build_extractor(config.features, config.extractor)
    check_processing_size(source, extractor, config.resize)
    text = label or extractor.describe()
    if list(keyframes) == [0] and not backward:
        results: Iterable[tuple[Frame, FrameResult]] = iter_results(source, codec, keyframes[0], config,
                                                                   extractor=extractor, cache=cache, progress=progress)
    else:
        session = Session(source, config, extractor=extractor, cache=cache, progress=progress)
        for index, keyframe in keyframes.items():
            session.add(index, keyframe, codec)
        results = ((frame, r) for frame, (_, r) in zip(source, session.propagate(direction)))
    run = Run(Path(), source, codec, codec.tracks(keyframes), text,
              {"keyframes": [source.names[i] for i in keyframes], **(extra or {})})
    count, last, check_first = _write_folder(folder, run, results, formats, render, config, extractor,
                                             **{codec.noun: str(given.path) if given.path is not None else None},
                                             keyframes=list(keyframes), direction=direction)
    assert last is not None
    out = Path(out_dir)
    return {"frames": count, **codec.summary(last), "out": str(out),
            "overlay": str(out / OVERLAY_MP4) if render else None, "features": text, "keyframes": list(keyframes),
            "check_first": check_first}


def _write_folder(folder: ResultsFolder, run: Run, results: Iterable[tuple[Frame, FrameResult]],
                  formats: Sequence[str], render: bool, config: Config, extractor: FeatureExtractor,
                  **record: object) -> tuple[int, FrameResult | None, list[tuple[str, float]]]:
    """Write a results set (:func:`write_results`) and its ``run_info.json`` into ``folder``, whole."""
    with folder as out:
        written = write_results(replace(run, out=out), results, formats, render)
        atomic_write_json(out / RUN_INFO, run_record(config, extractor, video=str(run.source.path),
                                                     formats=list(formats), **record))
        folder.summary = {"frames": written[0], **run.kind.counts()}
    return written


def run_video(video: str | Path, mask: str | Path | np.ndarray | Mapping[int, np.ndarray], out_dir: str | Path,
              config: Config, *, extractor: FeatureExtractor | None = None, cache: FeatureStore | None = None,
              overwrite: bool = False, render: bool = True, progress: bool = True, label: str | None = None,
              inputs: Sequence[str | Path] = (), formats: Sequence[str] = ("png",),
              direction: str | None = None) -> JSON:
    """The ``propagate run --mask`` job (:func:`run_labels` for masks): one indexed PNG per frame (named like the
    input frames), ``overlay.mp4``, ``confidence.csv``, ``coco.json`` (``formats`` with ``coco``), ``run_info.json``
    and the ``.complete`` manifest, written whole into ``out_dir``.

    ``mask`` is a mask file (frame 0), a folder of keyframe masks named like frames
    (:func:`propagate.labels.read_keyframes`), the first frame's ``[H, W]`` uint8 indices, or ``{frame: mask}``.

    Returns a summary: frames written, output folder, overlay path, extractor description, keyframes, and the least
    confident frames (``check_first``: ``[(frame name, confidence)]``).
    """
    return run_labels(video, MaskKind, mask, out_dir, config, extractor=extractor, cache=cache, overwrite=overwrite,
                      render=render, progress=progress, label=label, inputs=inputs, formats=formats,
                      direction=direction)


def export_session(session: Session, out_dir: str | Path, *, formats: Sequence[str] = ("png",), render: bool = True,
                   overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> JSON:
    """Write a session's latest results as ``propagate run`` does, into ``out_dir`` (whole or not at all)."""
    codec = session.codec
    if codec is None or len(session.results) != session.num_frames:
        raise PropagateError("nothing to export: add a keyframe and propagate first")
    formats = check_formats(formats)
    folder = ResultsFolder(out_dir, inputs=[session.source.path, *inputs], overwrite=overwrite)
    run = Run(Path(), session.source, codec, session.tracks(), session.extractor.describe(),
              {"keyframes": [session.names[i] for i in session.keyframes]})
    results = ((frame, session.results[frame.index]) for frame in session.source)
    count, _, check_first = _write_folder(folder, run, results, formats, render, session.config, session.extractor,
                                          keyframes=session.keyframes)
    return {"frames": count, "out": str(out_dir), "check_first": check_first}


def run_points(video: str | Path, points: str | Path | PointSet, out_dir: str | Path, config: Config, *,
               extractor: FeatureExtractor | None = None, cache: FeatureStore | None = None, overwrite: bool = False,
               render: bool = True, progress: bool = True, inputs: Sequence[str | Path] = (),
               extra: Mapping[str, object] | None = None, direction: str | None = None,
               formats: Sequence[str] = ("png",)) -> JSON:
    """The ``propagate run --points`` job (:func:`run_labels` for points): ``points.json`` (format:
    :mod:`propagate.keypoints`), ``overlay.mp4``, ``coco_keypoints.json`` (``formats`` with ``coco``),
    ``run_info.json`` and the ``.complete`` manifest, written whole into ``out_dir``.

    ``points`` is a points file (frame 0's points, or points on several keyframes:
    :func:`propagate.keypoints.read_point_keyframes`) or a :class:`PointSet` of the first frame; ``extra`` adds keys
    to ``points.json``.

    Returns a summary: ``{"frames", "points", "lost_last_frame", "out", "overlay", "features", "keyframes",
    "check_first"}``.
    """
    return run_labels(video, PointKind, points, out_dir, config, extractor=extractor, cache=cache,
                      overwrite=overwrite, render=render, progress=progress, inputs=inputs, formats=formats,
                      direction=direction, extra=extra)


# ---------------------------------------------------------------------------------------------- units of work


@dataclass(frozen=True)
class Unit:
    """One video's run, as :func:`run_unit` does it: a ``run`` of label kind ``kind`` (``masks`` or ``points``: a
    key of :data:`propagate.kinds.KINDS`) into ``out``.

    Picklable, so that a scheduler (:mod:`propagate.cluster`) can hand units to workers. ``config``, when set, is
    the unit's own config (a sequence with per-sequence overrides, :func:`propagate.config.sequence_config`): every
    runner runs the unit with it instead of the run's config.
    """

    name: str
    video: Path
    annotation: Path | np.ndarray | Mapping[int, np.ndarray] | PointSet  # mask file/folder, masks; points
    out: Path
    kind: str = "masks"
    render: bool = True
    inputs: tuple[Path, ...] = ()
    extra: Mapping[str, object] | None = None
    config: Config | None = None


def run_unit(unit: Unit, config: Config, extractor: FeatureExtractor | None = None,
             cache: FeatureStore | None = None, progress: bool = True, overwrite: bool = False) -> JSON:
    """Run one :class:`Unit` with :func:`run_labels` (with ``unit.config`` if it has one, else ``config``); returns
    its summary."""
    return run_labels(unit.video, kind_named(unit.kind), unit.annotation, unit.out,
                      unit.config if unit.config is not None else config, extractor=extractor, cache=cache,
                      overwrite=overwrite, render=unit.render, progress=progress, inputs=unit.inputs, extra=unit.extra)


Runner = Callable[[Sequence[Unit], Config, FeatureExtractor | None, FeatureStore | None, bool], list[JSON]]


def run_units(units: Sequence[Unit], config: Config, extractor: FeatureExtractor | None = None,
              cache: FeatureStore | None = None, progress: bool = True, desc: str = "videos") -> list[JSON]:
    """Run units one after the other in this process, the extractor built once (the serial scheduler)."""
    if units and extractor is None:
        extractor = build_extractor(config.features, config.extractor)
    summaries = []
    with tqdm(units, desc=desc, unit="video", disable=not progress, file=sys.stderr) as bar:
        for unit in bar:
            bar.set_postfix_str(unit.name)
            summaries.append(run_unit(unit, config, extractor, cache, progress=progress))
    return summaries
