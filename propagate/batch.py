"""``propagate batch``: label every video of a manifest (a CSV, one row per video) into ``--out/<name>/``, on any
runner of units (no Ray here: :class:`propagate.cluster.RayRunner` is one runner, :class:`SerialRunner` another).

A runner takes ``(unit, config)`` jobs and gives one :class:`Outcome` per job (:class:`BatchRunner`); a video that
fails on bad input is reported (the returned :class:`BatchReport` and ``failures.csv``) and the others go on.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

from tqdm import tqdm

from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore
from propagate.io import atomic_write_json, atomic_write_text
from propagate.records import JSON
from propagate.results import ResultsFolder, check_not_input, check_output, confined
from propagate.runs import Unit, run_unit

FAILURES_CSV = "failures.csv"
FAILURES_HEADER = ["name", "video", "error"]
BATCH_RECORD = ".batch.json"  # in --out: the files batch itself wrote there (failures.csv), written first


# ---------------------------------------------------------------------------------------------- runners


@dataclass
class Outcome:
    """What became of one unit: ``status`` is ``done`` or ``failed``; ``summary`` is run_unit's (when done)."""

    name: str
    status: str
    summary: JSON | None = None
    error: str | None = None
    attempts: int = 0  # workers that started it (more than one after a worker died)



class BatchRunner(Protocol):
    """Runs ``(unit, config)`` jobs; one :class:`Outcome` per job, in order. ``bar``: a progress bar to advance one
    step per finished unit (instead of a new one)."""

    def run(self, jobs: Sequence[tuple[Unit, Config]], cache: FeatureStore | None = None, progress: bool = True,
            bar: tqdm | None = None) -> list[Outcome]: ...


class OneExtractor:
    """The extractor of the config at hand, built once and kept while the configs agree on it (one at a time: a
    second model would double the memory)."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._extractor: FeatureExtractor | None = None

    def __call__(self, config: Config) -> FeatureExtractor:
        key = json.dumps([config.features, config.extractor], sort_keys=True, default=str)
        if key != self._key:
            self._key, self._extractor = None, None
            self._extractor = build_extractor(config.features, config.extractor)
            self._key = key
        assert self._extractor is not None
        return self._extractor


def attempt(run: Callable[[], JSON]) -> tuple[str, JSON | str]:
    """``("done", run())``, or ``("failed", message)`` for an error in the input, the settings or the file system
    (not worth retrying elsewhere)."""
    try:
        return "done", run()
    except PropagateError as exc:
        return "failed", str(exc)
    except OSError as exc:
        return "failed", f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")


class SerialRunner:
    """Runs batch jobs one after the other in this process (no Ray), an extractor kept while the configs agree."""

    def __init__(self, overwrite: bool = False):
        self.overwrite = overwrite
        self._extractor = OneExtractor()

    def run(self, jobs: Sequence[tuple[Unit, Config]], cache: FeatureStore | None = None, progress: bool = True,
            bar: tqdm | None = None) -> list[Outcome]:
        outcomes = []
        for unit, config in jobs:
            status, value = attempt(lambda unit=unit, config=config: run_unit(
                unit, config, self._extractor(config), cache, progress=False, overwrite=self.overwrite))
            outcomes.append(Outcome(unit.name, status, value if isinstance(value, dict) else None,
                                    value if isinstance(value, str) else None, attempts=1))
            if bar is not None:
                bar.update(1)
        return outcomes


# ---------------------------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class Row:
    """One row of a batch manifest (paths resolved against the manifest's folder)."""

    line: int  # line number in the manifest (the header is line 1)
    name: str
    video: Path
    annotation: Path
    kind: str  # masks or points
    config: str | None  # preset name or YAML file for this row, or None for the command line's


MANIFEST_COLUMNS = {"video", "mask", "points", "name", "config"}


def _default_name(video: Path) -> str:
    return video.name if video.suffix == "" or video.is_dir() else video.stem


def read_manifest(path: str | Path) -> list[Row]:
    """The rows of a batch manifest: a CSV with a header ``video,mask`` or ``video,points``, optional ``name`` (the
    results folder under ``--out``; default the video's folder name or file stem) and ``config`` (a preset name or
    YAML file; the command-line flags apply on top). Relative paths are relative to the manifest's folder.

    A missing column, an unknown one, an empty video or annotation cell, or two rows with one name is a
    PropagateError naming the line(s); missing files are checked per row later (:func:`check_row`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise PropagateError(f"manifest {path} does not exist: give a CSV with columns video,mask or "
                             "video,points") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PropagateError(f"manifest {path} cannot be read ({exc}): give a UTF-8 CSV file") from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if unknown or "video" not in columns or ("mask" in columns) == ("points" in columns):
        what = f"unknown column {unknown[0]!r}" if unknown else "its header"
        raise PropagateError(f"manifest {path}: {what}; the header must be video,mask or video,points, with optional "
                             "name and config columns")
    kind_column = "mask" if "mask" in columns else "points"
    base = path.resolve().parent
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for number, record in enumerate(reader, start=2):
        record = {(k or "").strip(): (v or "").strip() for k, v in record.items() if k is not None}
        if not any(record.values()):
            continue  # a blank line
        if not record.get("video") or not record.get(kind_column):
            raise PropagateError(f"manifest {path} line {number}: give both a video and a {kind_column}")
        video = base / Path(record["video"]).expanduser()
        name = record.get("name") or _default_name(video)
        if name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or name == FAILURES_CSV:
            raise PropagateError(f"manifest {path} line {number}: name {name!r} is not a plain folder name: give "
                                 "another in the name column")
        if name in seen:
            raise PropagateError(f"manifest {path}: lines {seen[name]} and {number} both write {name!r}: give them "
                                 "different names in a name column")
        seen[name] = number
        rows.append(Row(number, name, video, base / Path(record[kind_column]).expanduser(),
                        "masks" if kind_column == "mask" else "points", record.get("config") or None))
    if not rows:
        raise PropagateError(f"manifest {path} has no rows: add one line per video")
    return rows


def row_folder(row: Row, out: Path) -> Path:
    """``out/<name>``, the row's results folder: refused if it is a symlink (results are never written through one
    out of ``out``)."""
    folder = out / row.name
    if folder.is_symlink():
        raise PropagateError(f"{folder} is a symlink (to {os.path.realpath(folder)}): results are written only inside "
                             "--out; remove the link or give the row another name")
    return confined(out, row.name, f"manifest line {row.line}", "give a plain folder name in the name column")


def check_row(row: Row, out: Path) -> None:
    """What can be checked of a row before anything runs: its files exist (a mask may be a keyframe folder) and its
    results folder can be written."""
    if not row.video.exists():
        raise PropagateError(f"video {row.video} does not exist")
    if row.kind == "masks" and not row.annotation.exists():
        raise PropagateError(f"mask file or keyframe folder {row.annotation} does not exist")
    if row.kind == "points" and not row.annotation.is_file():
        raise PropagateError(f"points file {row.annotation} does not exist")
    check_output(row_folder(row, out), [row.video, row.annotation])


# ---------------------------------------------------------------------------------------------- propagate batch


@dataclass
class BatchReport:
    """What ``propagate batch`` did: names of done and skipped videos, and ``(row, error)`` of failed ones."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[Row, str]] = field(default_factory=list)
    retried: int = 0  # videos started again after their worker died

    def table(self) -> str:
        lines = [f"done     {len(self.done)}", f"skipped  {len(self.skipped)} (results already complete)",
                 f"failed   {len(self.failed)}"]
        width = max((len(row.name) for row, _ in self.failed), default=0)
        lines += [f"  {row.name:<{width}}  line {row.line}: {error}" for row, error in self.failed]
        if self.retried:
            lines.append(f"retried  {self.retried} (their worker died; run again from scratch)")
        return "\n".join(lines)


def _recorded(out: Path) -> bool:
    """Batch's record in ``out`` (``.batch.json``, a regular file) lists ``failures.csv``."""
    record = out / BATCH_RECORD
    try:
        listed = json.loads(record.read_text(encoding="utf-8")).get("files") if not record.is_symlink() else None
    except (OSError, ValueError, AttributeError, RecursionError):
        listed = None
    return isinstance(listed, list) and FAILURES_CSV in listed


def check_failures_file(out: Path) -> None:
    """``out/failures.csv`` may be replaced only if batch wrote it: its record (``.batch.json``) lists it, whatever
    the file holds; a symlink or a folder there is never ours."""
    failures = out / FAILURES_CSV
    if not (failures.exists() or failures.is_symlink()):
        return
    if failures.is_symlink() or not failures.is_file() or not _recorded(out):
        record = out / BATCH_RECORD
        raise PropagateError(f"{failures} exists and was not written by propagate batch (its record {record} does not "
                             "list it): move it or choose another --out")


def _write_failures(out: Path, failed: Sequence[tuple[Row, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FAILURES_HEADER)
    writer.writerows([row.name, str(row.video), error] for row, error in failed)
    out.mkdir(parents=True, exist_ok=True)
    check_failures_file(out)  # still ours (nothing put there while the batch ran)
    if not _recorded(out):
        atomic_write_json(out / BATCH_RECORD, {"files": [FAILURES_CSV]})  # first: failures.csv is ours from here on
    atomic_write_text(out / FAILURES_CSV, buffer.getvalue())


def run_batch(manifest: str | Path, out: str | Path, configure: Callable[[str | None, str], Config],
              runner: BatchRunner, render: bool = True, cache: FeatureStore | None = None,
              progress: bool = True) -> BatchReport:
    """Label every video of ``manifest`` (see :func:`read_manifest`) into ``out/<name>/``, as ``propagate run``.

    ``configure(preset, task)`` gives a row's config (``preset``: its config cell or None; ``task``: ``davis`` for
    masks, ``jhmdb`` for points). Every row is checked first; a video whose results are complete is skipped; a bad
    row is reported (in the returned report and ``out/failures.csv``: name, video, error) and the others run.
    """
    out = Path(out).expanduser().resolve()
    rows = read_manifest(manifest)
    check_not_input(out, [manifest])
    for row in rows:
        for given in (row.video, row.annotation):
            if out == given.resolve() or out.is_relative_to(given.resolve()):
                raise PropagateError(f"--out {out} lies inside {given} (manifest line {row.line}): choose an --out "
                                     "outside the inputs")
    check_failures_file(out)
    for task in sorted({"davis" if row.kind == "masks" else "jhmdb" for row in rows}):
        configure(None, task)  # the command line's own settings: an error there is everyone's, so it stops here
    report = BatchReport()
    jobs: list[tuple[Unit, Config]] = []
    job_rows: list[Row] = []
    configs: dict[tuple[str | None, str], Config] = {}
    for row in rows:
        task = "davis" if row.kind == "masks" else "jhmdb"
        try:
            if ResultsFolder.is_complete(row_folder(row, out)):
                report.skipped.append(row.name)
                continue
            check_row(row, out)
            if (row.config, task) not in configs:
                configs[row.config, task] = configure(row.config, task)
        except PropagateError as exc:
            report.failed.append((row, str(exc)))
            continue
        jobs.append((Unit(row.name, row.video, row.annotation, out / row.name, kind=row.kind, render=render),
                     configs[row.config, task]))
        job_rows.append(row)
    with tqdm(total=len(rows), initial=len(report.skipped) + len(report.failed), desc="videos", unit="video",
              disable=not progress, file=sys.stderr) as bar:
        try:
            outcomes = runner.run(jobs, cache, progress, bar=bar)
        finally:
            _write_failures(out, report.failed)  # the rows refused up front, even after Ctrl-C
    for row, outcome in zip(job_rows, outcomes):
        if outcome.status == "done":
            report.done.append(row.name)
        else:
            report.failed.append((row, outcome.error or "failed"))
        report.retried += outcome.attempts > 1
    report.failed.sort(key=lambda item: item[0].line)
    _write_failures(out, report.failed)
    return report
