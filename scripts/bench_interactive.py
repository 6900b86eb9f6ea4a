#!/usr/bin/env python
"""Interactive speed: the first pass and a one-object correction, paper preset vs interactive preset.

On two clips -- the demo clip (``propagate/demo.py`` ``make_walk_clip``: 60 real frames, 512x288, its hand-drawn
keyframe on frame 0) and a synthetic clip (the demo scene, 60 frames of 512x288, true mask on frame 0; 60 as the
demo clip: on a much shorter clip the paper preset's 28 recent frames are not yet full for most of it, so its
cost per frame is lower than on any real video) -- a :class:`propagate.session.Session` with the baseline
features runs

1. the first pass: extraction, then propagation from the keyframe on frame 0;
2. a one-object correction at mid-clip (object 1 of the first pass's mask there, moved by 6 pixels and grown, as
   an annotator fixing a drift would draw it), propagated forward from the corrected frame;
3. the same correction propagated both ways (from the state after the first pass).

It prints CPU seconds (the process's, every thread; wall in brackets) of extraction and propagation, each
correction's cost as a share of the first pass (extraction + propagation), and the (frame, context frame)
affinities each pass computed and took from the kept candidates. For presets that keep candidates
(``propagation.reuse``), it checks that each correction's masks equal those of a session from scratch with the
same keyframes. Targets (issue 19): interactive first pass >= 4x faster than the paper preset's; a forward
correction <= 0.1 of the first pass, both ways <= 0.6.

    python scripts/bench_interactive.py                       # both clips, davis_baseline vs its interactive preset
    python scripts/bench_interactive.py --clips synthetic --frames 36 --threads 2
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_session import Clock, MemorySource  # noqa: E402  (the same in-memory clip and timer)

from propagate.config import load_config  # noqa: E402
from propagate.demo import demo_frames, make_walk_clip  # noqa: E402
from propagate.features import FeatureExtractor, build_extractor  # noqa: E402
from propagate.labels import read_mask  # noqa: E402
from propagate.session import Session  # noqa: E402
from propagate.video import VideoSource, open_video  # noqa: E402


def correction_of(mask: np.ndarray, obj: int = 1) -> np.ndarray:
    """``mask`` with object ``obj`` moved 6 pixels right and grown by 4 (a one-object correction)."""
    region = (mask == obj).astype(np.uint8)
    region = np.roll(cv2.dilate(region, np.ones((9, 9), np.uint8)), 6, axis=1).astype(bool)
    fixed = mask.copy()
    fixed[mask == obj] = 0
    fixed[region] = obj
    return fixed


def measure(source: VideoSource, first_mask: np.ndarray, preset: str, extractor: FeatureExtractor) -> dict:
    config = load_config(preset)
    session = Session(source, config, extractor=extractor)
    session.add_mask(0, first_mask)
    with Clock() as extract:
        session.extract()
    with Clock() as first:
        results = {i: r.mask for i, r in session.propagate()}
    counts = {"first": dict(session.stats)}
    mid = session.num_frames // 2
    fixed = correction_of(results[mid])
    # the state a correction starts from: sweeps, kept candidates and decoded results copied together (one deepcopy
    # keeps the identity between a sweep's soft labels and the decoded results of them, as in the session itself)
    after_first = copy.deepcopy((session._sweeps, session._candidates, session._decoded))
    passes = {}
    for direction in ("forward", "both"):
        session._sweeps, session._candidates, session._decoded = copy.deepcopy(after_first)
        before = dict(session.stats)
        session.add_mask(mid, fixed)
        with Clock() as clock:
            masks = {i: r.mask for i, r in session.propagate(direction)}
        session.remove(mid)
        same = None
        if config.propagation.reuse:
            fresh = Session(source, config, extractor=extractor)
            fresh._features = session._features  # the same features, not extracted again (closed with session)
            fresh.add_mask(0, first_mask)
            fresh.add_mask(mid, fixed)
            same = all(np.array_equal(r.mask, masks[i]) for i, r in fresh.propagate(direction))
            if fresh._candidates is not None:
                fresh._candidates.close()
        passes[direction] = (clock, {k: session.stats[k] - before[k] for k in before}, same)
    session.close()
    return {"preset": preset, "extract": extract, "first": first, "counts": counts, "passes": passes, "mid": mid}


def clips(names: list[str], frames: int, folder: Path) -> list[tuple[str, VideoSource, np.ndarray]]:
    found = []
    if "demo" in names:
        video, keyframes = make_walk_clip(folder / "walk", frames)
        found.append((f"demo clip (walk.mp4, {frames} frames, 512x288)", open_video(video),
                      read_mask(keyframes / "00000.png")))
    if "synthetic" in names:
        images, masks = zip(*demo_frames(frames, (512, 288), seed=3))
        found.append((f"synthetic (demo scene, {frames} frames, 512x288)", MemorySource(list(images)), masks[0]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", default="demo,synthetic", help="demo, synthetic or both (comma separated)")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip")
    parser.add_argument("--presets", default="davis_baseline,davis_baseline_interactive")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared machine, waiting threads spin and count as CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extractor = build_extractor("baseline")
    presets = args.presets.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-interactive-") as tmp:
        for name in args.clips.split(","):
            for title, source, first_mask in clips([name], args.frames, Path(tmp)):
                rows = [measure(source, first_mask, preset, extractor) for preset in presets]
                report(title, rows)


def report(title: str, rows: list[dict]) -> None:
    print(f"\n{title}; correction: object 1 at frame {rows[0]['mid']}. CPU seconds [wall]; affinities = (frame, "
          "context frame) pairs computed (reused)")
    print(f"{'preset':<28} {'extract':>14} {'propagate':>16} {'1st pass':>16} {'affinities':>16} | "
          f"{'forward':>15} {'share':>6} {'affinities':>15} {'same':>5} | {'both ways':>15} {'share':>6} "
          f"{'affinities':>15} {'same':>5}")
    base = None
    for r in rows:
        e, p = r["extract"], r["first"]
        total_cpu, total_wall = e.cpu + p.cpu, e.wall + p.wall
        base = base or total_cpu
        c = r["counts"]["first"]
        line = (f"{r['preset']:<28} {e.cpu:>6.1f} [{e.wall:>5.1f}] {p.cpu:>7.1f} [{p.wall:>6.1f}] "
                f"{total_cpu:>7.1f} [{total_wall:>6.1f}] {c['affinities']:>7} ({c['affinities_reused']:>6}) |")
        for direction in ("forward", "both"):
            clock, counts, same = r["passes"][direction]
            line += (f" {clock.cpu:>6.1f} [{clock.wall:>6.1f}] {clock.cpu / total_cpu:>6.3f} "
                     f"{counts['affinities']:>6} ({counts['affinities_reused']:>6}) {str(same):>5} |")
        print(line.rstrip(" |"))
    for r in rows[1:]:
        total = r["extract"].cpu + r["first"].cpu
        print(f"first pass, {rows[0]['preset']} / {r['preset']}: {base / total:.2f}x CPU time")


if __name__ == "__main__":
    main()
