"""Many videos across workers and machines, on Ray: ``propagate batch`` and ``propagate eval --workers``.

The unit of work is a whole video (:class:`propagate.runs.Unit`), run by :func:`propagate.runs.run_unit` exactly as
``propagate run`` runs it, so the results are the same bytes. What this module adds is the scheduling:

- **Workers** are Ray actors, one per ``--workers``, each holding one CPU (and ``--gpus-per-worker`` GPUs). A
  worker builds its extractor once and reuses it for every video it is given; frames stream through it as in
  ``run``, so a worker's memory is bounded as today. The driver only hands out videos and collects summaries.
- **Faults.** A video that fails on bad input (a :class:`PropagateError`) is reported and not retried; the others go
  on. A worker that dies (process killed, out of memory, node lost) has its video run again from scratch on another
  worker, after its partial output (a staging folder marked with the dead worker's pid and host) is removed; a
  video whose workers die ``retries + 1`` times is reported as failed.
- **Resume.** Results are written by :class:`propagate.runs.ResultsFolder` (staging folder, moved into place when
  whole), so a finished video is never half-written; ``propagate batch`` skips videos whose results are complete.
  Ctrl-C stops the workers, removes the staging folders of the videos they were running, and leaves the finished
  ones: the same command resumes.

Ray is an optional dependency (``pip install -e ".[cluster]"``); it is imported only when a runner starts. Results
must go to a folder that every worker sees (a shared file system on a multi-node cluster).

>>> runner = RayRunner(workers=4)                                      # a local cluster, or address="auto"
>>> evaluate_davis(root, out, config, runner=runner)                   # any Runner-taking protocol
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

from tqdm import tqdm

from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore
from propagate.io import atomic_write_text
from propagate.runs import Owner, ResultsFolder, Unit, check_not_input, check_output, run_unit, staging_folders

JSON = dict[str, object]

FAILURES_CSV = "failures.csv"
FAILURES_HEADER = ["name", "video", "error"]


def import_ray() -> ModuleType:
    """The ``ray`` module; a PropagateError saying how to install it if it is missing."""
    try:
        import ray
    except ImportError:
        raise PropagateError('running on workers needs Ray: pip install -e ".[cluster]" (or pip install ray)') from None
    return ray


# ---------------------------------------------------------------------------------------------- partial output


def discard_staging(target: Path, owners: Sequence[Owner]) -> list[Path]:
    """Remove the staging folders of ``target`` written by the (dead) worker processes ``owners``; returns them.

    :class:`ResultsFolder` removes a staging folder left on this host by a process that is gone; this also covers a
    worker that died on another node (same shared folder, other host) or one not yet reaped by its parent.
    """
    wanted = {(int(pid), str(host)) for pid, host in owners}
    removed = [staging for staging, owner in staging_folders(target) if owner in wanted]
    for staging in removed:
        shutil.rmtree(staging, ignore_errors=True)  # a staging folder is ours from top to bottom
    return removed


# ---------------------------------------------------------------------------------------------- the worker


def check_same_settings(settings: JSON, expected: JSON | None, host: str) -> None:
    """Refuse a worker's extractor whose settings differ from the ones the run recorded, naming the first
    difference (e.g. ``dtype: auto`` resolved to fp16 on a GPU worker, bf16 on the driver's CPU)."""
    if expected is None or settings == expected:
        return
    key = next(k for k in sorted(set(settings) | set(expected)) if settings.get(k) != expected.get(k))
    raise PropagateError(f"the worker on {host} computes features with {key}={settings.get(key)!r}, but the run "
                         f"records {key}={expected.get(key)!r}: pin it (e.g. --set extractor.{key}=...) so that every "
                         "machine computes the same features")


class Worker:
    """A Ray actor (made remote by :class:`RayRunner`): holds one extractor and runs units with it.

    ``setup`` runs once when the worker starts, before any extractor is built (e.g. to register a custom extractor
    in :data:`propagate.features.EXTRACTORS`, which the driver's registration does not reach).
    """

    def __init__(self, setup: Callable[[], None] | None = None):
        if setup is not None:
            setup()
        self._key: str | None = None
        self._extractor: FeatureExtractor | None = None

    def owner(self) -> Owner:
        """This worker's process id and host name (what its staging folders are marked with)."""
        return os.getpid(), socket.gethostname()

    def _extractor_for(self, config: Config) -> FeatureExtractor:
        key = json.dumps([config.features, config.extractor], sort_keys=True, default=str)
        if key != self._key:  # one extractor at a time: a second model would double the memory
            self._key, self._extractor = None, None
            self._extractor = build_extractor(config.features, config.extractor)
            self._key = key
        assert self._extractor is not None
        return self._extractor

    def run(self, unit: Unit, config: Config, cache: FeatureStore | None, overwrite: bool,
            dead: Sequence[Owner], expected: JSON | None = None) -> tuple[str, JSON | str]:
        """Run ``unit`` after removing the partial output of the ``dead`` workers that ran it before.

        ``expected``: the extractor settings the driver recorded for the run (None: nothing recorded). A worker whose
        extractor resolves to other settings (``dtype: auto`` on other hardware) refuses, since its features, and
        so its results, would differ from the others'.

        Returns ``("done", summary)``, or ``("failed", message)`` for an error in the input or settings (not worth
        retrying elsewhere).
        """
        discard_staging(unit.out, dead)
        try:
            extractor = self._extractor_for(config)
            check_same_settings(extractor.settings(), expected, self.owner()[1])
            return "done", run_unit(unit, config, extractor, cache, progress=False, overwrite=overwrite)
        except PropagateError as exc:
            return "failed", str(exc)
        except OSError as exc:
            return "failed", f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")


# ---------------------------------------------------------------------------------------------- the scheduler


@dataclass
class Outcome:
    """What became of one unit: ``status`` is ``done`` or ``failed``; ``summary`` is run_unit's (when done)."""

    name: str
    status: str
    summary: JSON | None = None
    error: str | None = None
    attempts: int = 0  # workers that started it (more than one after a worker died)


@dataclass
class _Slot:
    actor: object
    owner_ref: object
    owner: Owner | None = None


class RayRunner:
    """Runs units on Ray workers; a :data:`propagate.runs.Runner` (``runner(units, config, extractor, cache,
    progress)``), and :meth:`run` for units with their own configs.

    Args:
        workers: number of worker actors (default: the cluster's CPUs, or its GPUs / ``gpus_per_worker``).
        address: a running cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``); ``None`` starts a local one sized
            to this machine and stops it at the end. If Ray is already initialised in this process, that is used.
        gpus_per_worker: GPUs each worker holds (fractions share a GPU); 0 for CPU workers.
        retries: how many times a video is started again after its worker died.
        setup: run once in each worker before it builds an extractor (must be picklable).
        overwrite: replace earlier results (as ``propagate run --overwrite``).

    The extractor given to ``__call__`` is not used: each worker builds its own from ``config``. Used as a context
    manager (``with RayRunner(...) as runner:``), the workers and their extractors stay up between runs (a
    parameter sweep); otherwise each run starts its workers and stops them at the end.
    """

    def __init__(self, workers: int | None = None, address: str | None = None, gpus_per_worker: float = 0.0,
                 retries: int = 2, setup: Callable[[], None] | None = None, overwrite: bool = False):
        if workers is not None and workers < 1:
            raise PropagateError(f"--workers {workers}: give at least 1")
        if gpus_per_worker < 0:
            raise PropagateError(f"--gpus-per-worker {gpus_per_worker}: give 0 (CPU workers) or more")
        self.workers = workers
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.retries = retries
        self.setup = setup
        self.overwrite = overwrite
        self._ray: ModuleType | None = None
        self._started = False  # this runner started a local cluster (and stops it in close)
        self._slots: list[_Slot] = []
        self._remote_worker: object = None
        self._kept = False  # inside a with block: workers kept between runs

    def __enter__(self) -> RayRunner:
        self._kept = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._kept = False
        self.close()

    def close(self) -> None:
        """Stop the workers, and the local cluster if this runner started it."""
        if self._ray is not None:
            for slot in self._slots:
                self._ray.kill(slot.actor)
            if self._started:
                self._ray.shutdown()
        self._ray, self._started, self._slots = None, False, []

    def __call__(self, units: Sequence[Unit], config: Config, extractor: FeatureExtractor | None = None,
                 cache: FeatureStore | None = None, progress: bool = True) -> list[JSON]:
        expected = extractor.settings() if extractor is not None else None  # what the driver recorded
        outcomes = self.run([(unit, config) for unit in units], cache, progress, expected=expected)
        failed = [o for o in outcomes if o.status != "done"]
        if failed:
            listed = "; ".join(f"{o.name}: {o.error}" for o in failed[:5]) + ("; ..." if len(failed) > 5 else "")
            raise PropagateError(f"{len(failed)} of {len(units)} videos failed ({listed}); the others are done: "
                                 "fix those and run the same command again")
        return [o.summary for o in outcomes if o.summary is not None]

    # -- connection

    def _connect(self) -> ModuleType:
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        self._remote_worker = ray.remote(num_cpus=1, num_gpus=self.gpus_per_worker, max_restarts=0)(Worker)
        self._ray = ray
        if ray.is_initialized():
            return ray
        try:
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local cluster"
            self._ray = None
            raise PropagateError(f"cannot start Ray workers on {where}: {str(exc).splitlines()[0]}; for a running "
                                 "cluster give --address auto (on one of its nodes) or ray://HEAD:10001") from None
        self._started = True
        return ray

    def _num_workers(self, ray: ModuleType) -> int:
        if self.workers is not None:
            return self.workers
        resources = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            gpus = resources.get("GPU", 0.0)
            if gpus < self.gpus_per_worker:
                raise PropagateError(f"--gpus-per-worker {self.gpus_per_worker}: the cluster has {gpus:g} GPUs")
            return max(1, int(gpus // self.gpus_per_worker))
        return max(1, int(resources.get("CPU", 1)))

    # -- the loop

    def run(self, jobs: Sequence[tuple[Unit, Config]], cache: FeatureStore | None = None, progress: bool = True,
            bar: tqdm | None = None, expected: JSON | None = None) -> list[Outcome]:
        """Run every ``(unit, config)`` on the workers; one :class:`Outcome` per job, in order.

        ``bar`` is a progress bar to advance (one step per finished unit) instead of a new one; ``expected`` the
        extractor settings every worker's extractor must have (see :meth:`Worker.run`).
        """
        if not jobs:
            return []
        ray = self._connect()
        try:
            return self._schedule(ray, jobs, cache, progress, bar, expected)
        finally:
            if not self._kept:
                self.close()

    def _new_slot(self) -> _Slot:
        actor = self._remote_worker.remote(self.setup)  # type: ignore[attr-defined]
        return _Slot(actor, actor.owner.remote())

    def _owner(self, ray: ModuleType, slot: _Slot) -> Owner | None:
        if slot.owner is None:
            try:
                slot.owner = tuple(ray.get(slot.owner_ref, timeout=30))  # type: ignore[assignment]
            except Exception:  # the worker died before it could answer: it wrote nothing
                return None
        return slot.owner

    def _schedule(self, ray: ModuleType, jobs: Sequence[tuple[Unit, Config]], cache: FeatureStore | None,
                  progress: bool, bar: tqdm | None, expected: JSON | None) -> list[Outcome]:
        from ray.exceptions import RayActorError, RayTaskError

        slots = self._slots
        slots += [self._new_slot() for _ in range(min(self._num_workers(ray), len(jobs)) - len(slots))]
        count = len(slots)
        outcomes = [Outcome(unit.name, "pending") for unit, _ in jobs]
        dead: list[list[Owner]] = [[] for _ in jobs]
        queue = deque(range(len(jobs)))
        idle = deque(range(count))
        running: dict[object, tuple[int, int]] = {}  # task ref -> (job, slot)
        own_bar = bar is None
        bar = bar or tqdm(total=len(jobs), desc="videos", unit="video", disable=not progress, file=sys.stderr)
        start, frames, failed = time.monotonic(), 0, 0
        try:
            while queue or running:
                while queue and idle:
                    job, slot = queue.popleft(), idle.popleft()
                    unit, config = jobs[job]
                    outcomes[job].attempts += 1
                    ref = slots[slot].actor.run.remote(unit, config, cache, self.overwrite, dead[job],  # type: ignore[attr-defined]
                                                       expected)
                    running[ref] = (job, slot)
                bar.set_postfix_str(f"running={len(running)} failed={failed} "
                                    f"frames/s={frames / max(time.monotonic() - start, 1e-9):.1f}")
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in ready:
                    job, slot = running.pop(ref)
                    outcome = outcomes[job]
                    try:
                        status, value = ray.get(ref)
                    except RayActorError:  # the worker died mid-video: run it again elsewhere, from scratch
                        owner = self._owner(ray, slots[slot])
                        if owner is not None:
                            dead[job].append(owner)
                        slots[slot] = self._new_slot()
                        idle.append(slot)
                        if outcome.attempts <= self.retries:
                            queue.appendleft(job)
                            continue
                        status, value = "failed", (f"its worker died {outcome.attempts} times (killed, out of "
                                                   "memory, or node lost); see the Ray logs")
                        self._cleanup(jobs[job][0], dead[job])
                    except RayTaskError as exc:  # a bug, not bad input: reported, the others go on
                        idle.append(slot)
                        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                        status, value = "failed", f"{type(cause).__name__}: {cause}"
                    else:
                        idle.append(slot)
                    if status == "done":
                        assert isinstance(value, dict)
                        outcome.status, outcome.summary = "done", value
                        frames += int(value.get("frames", 0))  # type: ignore[call-overload]
                    else:
                        outcome.status, outcome.error = "failed", str(value)
                        failed += 1
                    bar.update(1)
        except KeyboardInterrupt:
            self._stop(ray, running, jobs)
            raise
        finally:
            bar.set_postfix_str(f"running=0 failed={failed} "
                                f"frames/s={frames / max(time.monotonic() - start, 1e-9):.1f}")
            if own_bar:
                bar.close()
        return outcomes

    def _cleanup(self, unit: Unit, owners: Sequence[Owner]) -> None:
        """Remove what dead workers left of ``unit`` (when this process sees the results folder)."""
        discard_staging(unit.out, owners)

    def _stop(self, ray: ModuleType, running: dict[object, tuple[int, int]],
              jobs: Sequence[tuple[Unit, Config]]) -> None:
        """Ctrl-C: stop the workers, wait until they are gone, then remove the staging folders of their videos."""
        owners = {slot: self._owner(ray, self._slots[slot]) for _, slot in running.values()}
        for slot in self._slots:
            ray.kill(slot.actor)
        self._slots = []
        refs = list(running)
        deadline = time.monotonic() + 20
        while refs and time.monotonic() < deadline:  # a killed worker's task ends with an error once it is gone
            done, refs = ray.wait(refs, num_returns=len(refs), timeout=1.0)
        for job, slot in running.values():
            owner = owners.get(slot)
            if owner is not None:
                self._cleanup(jobs[job][0], [owner])


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
        raise PropagateError(f"manifest {path} does not exist: give a CSV with columns video,mask or video,points") from None
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


def check_row(row: Row, out: Path) -> None:
    """What can be checked of a row before anything runs: its files exist and its results folder can be written."""
    if not row.video.exists():
        raise PropagateError(f"video {row.video} does not exist")
    if not row.annotation.is_file():
        raise PropagateError(f"{'mask' if row.kind == 'masks' else 'points'} file {row.annotation} does not exist")
    check_output(out / row.name, [row.video, row.annotation])


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


def _write_failures(out: Path, failed: Sequence[tuple[Row, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(FAILURES_HEADER)
    writer.writerows([row.name, str(row.video), error] for row, error in failed)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / FAILURES_CSV, buffer.getvalue())


def run_batch(manifest: str | Path, out: str | Path, configure: Callable[[str | None, str], Config],
              runner: RayRunner, render: bool = True, cache: FeatureStore | None = None,
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
    failures = out / FAILURES_CSV
    if failures.exists() and (not failures.is_file() or
                              failures.read_text(encoding="utf-8").split("\n", 1)[0] != ",".join(FAILURES_HEADER)):
        raise PropagateError(f"{failures} exists and was not written by propagate batch: move it or choose another --out")
    for task in sorted({"davis" if row.kind == "masks" else "jhmdb" for row in rows}):
        configure(None, task)  # the command line's own settings: an error there is everyone's, so it stops here
    report = BatchReport()
    jobs: list[tuple[Unit, Config]] = []
    job_rows: list[Row] = []
    configs: dict[tuple[str | None, str], Config] = {}
    for row in rows:
        if ResultsFolder.is_complete(out / row.name):
            report.skipped.append(row.name)
            continue
        task = "davis" if row.kind == "masks" else "jhmdb"
        try:
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
