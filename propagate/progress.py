"""Progress of a job's phases: a callback ``fn(phase, done, total)`` called as each phase advances, and two ready
ones -- :class:`Bars` (one tqdm bar per phase on stderr, with tqdm's rate and ETA) and :class:`PhaseClock` (the
ETA of the current phase as text, for a page that shows one line).

Phases of a :class:`propagate.session.Session` pass (``Session.propagate(callback=...)``), in order:
``extract`` (features of the frames not held yet; the first pass only), ``backward`` (the backward sweep, run whole
before any result), ``forward`` (results in frame order: the forward sweep, blended with the backward one where
both run, decoded; ``decode`` instead when only the backward sweep runs). ``done`` counts frames, ``total`` is the
phase's frame count; a phase ends when ``done == total``.

>>> clock = PhaseClock()
>>> for index, result in session.propagate(callback=clock):
...     print(clock.text())        # e.g. "forward sweep: 12/60 frames, about 9 s left"
"""
from __future__ import annotations

import sys
import time
from typing import Callable

Progress = Callable[[str, int, int], None]  # fn(phase, done, total)

LABELS = {"extract": "extracting features", "backward": "backward sweep", "forward": "forward sweep",
          "decode": "decoding", "propagate": "propagating", "write": "writing"}


def label(phase: str) -> str:
    """The words shown for ``phase``."""
    return LABELS.get(phase, phase)


class Bars:
    """A progress callback that shows one tqdm bar per phase on stderr (the bar of a finished phase is cleared);
    ``suffix`` follows each phase's words (e.g. the video's name). ``enabled=False`` shows nothing."""

    def __init__(self, suffix: str = "", enabled: bool = True):
        self.suffix = suffix
        self.enabled = enabled
        self.phase: str | None = None
        self.bar = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm  # imported here: a callback made but never called costs nothing

        if phase != self.phase or self.bar is None:
            self.close()
            self.phase = phase
            desc = label(phase) + (f" {self.suffix}" if self.suffix else "")
            self.bar = tqdm(total=total, desc=desc, unit="frame", leave=False, file=sys.stderr)
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.phase = None, None


class PhaseClock:
    """A progress callback that remembers the current phase and when it started, to tell how long it has left
    (linear in frames done: the phases' frames cost about the same each). ``clock`` is a seconds counter (for
    tests). Also calls ``then(phase, done, total)`` if given."""

    def __init__(self, then: Progress | None = None, clock: Callable[[], float] = time.perf_counter):
        self.then = then
        self.clock = clock
        self.phase: str | None = None
        self.done = self.total = 0
        self.started = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        if phase != self.phase:
            self.phase, self.started = phase, self.clock()
        self.done, self.total = done, total
        if self.then is not None:
            self.then(phase, done, total)

    def eta(self) -> float | None:
        """Seconds the current phase has left, or None before its first frame is done."""
        if self.phase is None or self.done <= 0:
            return None
        spent = self.clock() - self.started
        return spent / self.done * max(0, self.total - self.done)

    def text(self) -> str:
        """``"<phase>: done/total frames, about N s left"`` (no ETA before the first frame; empty before any)."""
        if self.phase is None:
            return ""
        eta = self.eta()
        left = "" if eta is None else f", about {eta:.0f} s left" if eta < 120 else f", about {eta / 60:.0f} min left"
        return f"{label(self.phase)}: {self.done}/{self.total} frames{left}"
