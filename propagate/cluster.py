"""Many videos across workers and machines, on Ray: the runner of ``propagate batch`` (:mod:`propagate.batch`) and
``propagate eval --workers``.

The unit of work is a whole video (:class:`propagate.runs.Unit`), run by :func:`propagate.runs.run_unit` exactly as
``propagate run`` runs it, so the results are the same bytes. What this module adds is the scheduling:

- **Workers** are Ray actors, one per ``--workers``, each holding one CPU (and ``--gpus-per-worker`` GPUs). A
  worker builds its extractor once and reuses it for every video it is given; frames stream through it as in
  ``run``, so a worker's memory is bounded as today. The driver only hands out videos and collects summaries.
- **Faults.** A video that fails on bad input (a :class:`PropagateError`) is reported and not retried; the others go
  on. A worker that dies (process killed, out of memory, node lost) has its video run again from scratch on another
  worker, after its partial output (a staging folder marked with the dead worker's pid and host) is removed; a
  video whose workers die ``retries + 1`` times is reported as failed.
- **Resume.** Results are written by :class:`propagate.results.ResultsFolder` (staging folder, moved into place when
  whole), so a finished video is never half-written; ``propagate batch`` skips videos whose results are complete.
  Ctrl-C stops the workers, removes the staging folders of the videos they were running, and leaves the finished
  ones: the same command resumes.

Ray is an optional dependency (``pip install -e ".[cluster]"``); it is imported only when a runner starts. Results
must go to a folder that every worker sees (a shared file system on a multi-node cluster).

>>> runner = RayRunner(workers=4)                                      # a local cluster, or address="auto"
>>> evaluate_davis(root, out, config, runner=runner)                   # any Runner-taking protocol
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Sequence

from tqdm import tqdm

from propagate.batch import OneExtractor, Outcome, attempt
from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor
from propagate.features.stream import FeatureStore
from propagate.records import JSON
from propagate.results import Owner, delete, staging_folders
from propagate.runs import Unit, run_unit


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
        delete(staging, staging, tree=True)  # a staging folder is ours from top to bottom
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
        self._extractor = OneExtractor()

    def owner(self) -> Owner:
        """This worker's process id and host name (what its staging folders are marked with)."""
        return os.getpid(), socket.gethostname()

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

        def run() -> JSON:
            extractor = self._extractor(config)
            check_same_settings(extractor.settings(), expected, self.owner()[1])
            return run_unit(unit, config, extractor, cache, progress=False, overwrite=overwrite)

        return attempt(run)


# ---------------------------------------------------------------------------------------------- the scheduler


@dataclass
class _Slot:
    actor: object
    owner_ref: object
    owner: Owner | None = None


class RayRunner:
    """Runs units on Ray workers; a :data:`propagate.runs.Runner` (``runner(units, config, extractor, cache,
    progress)``), and a :class:`propagate.batch.BatchRunner` (:meth:`run`, for units with their own configs).

    Args:
        workers: number of worker actors (default: the cluster's CPUs, or its GPUs / ``gpus_per_worker``).
        address: a running cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``); ``None`` starts a local one sized
            to this machine and stops it at the end. If Ray is already initialised in this process, that is used.
        gpus_per_worker: GPUs each worker holds (fractions share a GPU); 0 for CPU workers.
        retries: how many times a video is started again after its worker died.
        setup: run once in each worker before it builds an extractor (must be picklable).
        overwrite: replace earlier results (as ``propagate run --overwrite``).
        connect_timeout: seconds to wait for the cluster at ``address`` to answer before giving up (Ray itself
            retries a dead address without end).

    The extractor given to ``__call__`` is not used: each worker builds its own from ``config``. Used as a context
    manager (``with RayRunner(...) as runner:``), the workers and their extractors stay up between runs (a
    parameter sweep); otherwise each run starts its workers and stops them at the end.
    """

    def __init__(self, workers: int | None = None, address: str | None = None, gpus_per_worker: float = 0.0,
                 retries: int = 2, setup: Callable[[], None] | None = None, overwrite: bool = False,
                 connect_timeout: float = 30.0):
        if workers is not None and workers < 1:
            raise PropagateError(f"--workers {workers}: give at least 1")
        if not connect_timeout > 0:
            raise PropagateError(f"--connect-timeout {connect_timeout}: give a number of seconds > 0")
        if gpus_per_worker < 0:
            raise PropagateError(f"--gpus-per-worker {gpus_per_worker}: give 0 (CPU workers) or more")
        self.workers = workers
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.retries = retries
        self.setup = setup
        self.overwrite = overwrite
        self.connect_timeout = connect_timeout
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
        main_thread = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main_thread else None
        try:
            if self.address:
                self._reachable(self.address)
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local cluster"
            self._ray = None
            raise PropagateError(f"cannot start Ray workers on {where}: {str(exc).splitlines()[0]}; for a running "
                                 "cluster give --address auto (on one of its nodes) or ray://HEAD:10001") from None
        finally:
            if sigterm is not None:  # ray.init makes SIGTERM exit at once; the caller's handling (the CLI's) stays
                signal.signal(signal.SIGTERM, sigterm)
        self._started = True
        return ray

    def _reachable(self, address: str) -> None:
        """Refuse a ``HOST:PORT`` (or ``ray://HOST:PORT``) that does not accept a connection within
        :attr:`connect_timeout` (``auto`` is looked up by Ray itself)."""
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if not host or not port.isdigit():
            return  # auto, or a form Ray reads on its own
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=self.connect_timeout).close()
        except TimeoutError:
            raise ConnectionError(f"{address} does not answer within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectionError(f"{address} does not answer ({exc.strerror or exc})") from None

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
