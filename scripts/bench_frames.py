#!/usr/bin/env python
"""Random access to frames: ``Session.image`` of the last frame of a long mp4 against frame 0's.

Writes a 1,000-frame H.264 mp4 of the demo scene (our own writer: libx264's default keyframe interval, 250) in a
temporary folder, opens a :class:`propagate.session.Session` over it (baseline features) and, with each installed
video reader, prints the CPU and wall seconds (the median of ``--repeats``) of three ways to get a frame:

- **kept** (the acceptance line, target within 3x): ``Session.image(0)`` against ``Session.image(n - 1)`` once the
  session has read the video (its first pass, ``Session.extract``, keeps the decoded frames: in memory up to
  ``frame_bytes``, then in its scratch folder, also measured with ``frame_bytes=0`` for the first reader);
- **seek** (a frame the session has not read yet): the source seeks to the keyframe at or before the frame and
  decodes on, so the cost is bounded by the keyframe interval, not by the frame's position (``--frames 3000``
  prints the same), but the last frame of a group of pictures still costs up to 250 decodes;
- **before** (for contrast): decoding from frame 0 until the frame is reached, as ``Session.image`` once did.

    python scripts/bench_frames.py                  # 1,000 frames of 320x192
    python scripts/bench_frames.py --frames 3000 --size 640x360
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from propagate.config import load_config  # noqa: E402
from propagate.demo import demo_frames  # noqa: E402
from propagate.render import OverlayWriter  # noqa: E402
from propagate.session import FRAME_BYTES, Session  # noqa: E402
from propagate.video import VIDEO_READERS, VideoSource, open_video, reader_installed  # noqa: E402


def write_clip(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """The demo scene, one pass of its 36 frames shifted a little each loop so that no two frames are alike."""
    scene = [image for image, _ in demo_frames(36, size)]
    with OverlayWriter(path, 24, size) as writer:
        for i in range(frames):
            writer.write(np.roll(scene[i % len(scene)], i // len(scene), axis=1))
    return path


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median CPU seconds (every thread of this process) and median wall seconds of ``call``."""
    cpu, wall = [], []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        call()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return statistics.median(cpu), statistics.median(wall)


def old_image(source: VideoSource, index: int) -> np.ndarray:
    """What ``Session.image`` did before random access: decode from frame 0 until frame ``index``."""
    for frame in source:
        if frame.index == index:
            return frame.image
    raise AssertionError(index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", default="320x192", help="W x H of the clip")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    config = load_config("davis_baseline")
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as folder:
        clip = write_clip(Path(folder) / "long.mp4", args.frames, size)  # type: ignore[arg-type]
        print(f"clip: {args.frames} frames of {size[0]}x{size[1]} (H.264, keyframe every 250 frames); "
              f"median of {args.repeats}; CPU time (wall time)")
        readers = [r for r in VIDEO_READERS if reader_installed(r)]
        for reader in readers:
            kept = [(FRAME_BYTES, "memory")] + ([(0, "scratch folder")] if reader == readers[0] else [])
            for frame_bytes, where in kept:
                with Session(open_video(clip, reader=reader), config, frame_bytes=frame_bytes) as session:
                    last = session.num_frames - 1
                    source = session.source
                    seek_first, _ = timed(lambda source=source: source.frame(0), args.repeats)
                    seek_last, _ = timed(lambda last=last, source=source: source.frame(last), args.repeats)
                    session.extract()  # the first pass: reads (and keeps) every frame
                    assert np.array_equal(session.image(last), old_image(source, last))
                    first_cpu, first_wall = timed(lambda: session.image(0), args.repeats)
                    last_cpu, last_wall = timed(lambda last=last: session.image(last), args.repeats)
                    old_cpu = 0.0
                    if where == "memory":
                        old_cpu, _ = timed(lambda last=last, source=source: old_image(source, last), 1)
                print(f"{reader:>6}, kept in {where}: image(0) {first_cpu * 1e3:.2f} ms ({first_wall * 1e3:.2f}); "
                      f"image({last}) {last_cpu * 1e3:.2f} ms ({last_wall * 1e3:.2f}): ratio "
                      f"{last_cpu / first_cpu:.1f}x CPU ({last_wall / first_wall:.1f}x wall)")
                if where == "memory":
                    print(f"{reader:>6}, seek (not read yet): frame(0) {seek_first:.3f} s; frame({last}) "
                          f"{seek_last:.3f} s: {seek_last / seek_first:.1f}x; before (decode from frame 0) "
                          f"{old_cpu:.3f} s: {old_cpu / seek_first:.0f}x")

if __name__ == "__main__":
    main()
