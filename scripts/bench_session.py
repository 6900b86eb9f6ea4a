#!/usr/bin/env python
"""First pass vs correction pass of a labelling session, split into extraction and propagation.

A :class:`propagate.session.Session` extracts every frame's features once; a correction (a keyframe added on a
later frame) then costs propagation only. This script times both passes on a synthetic clip (the demo scene) with
two extractors side by side in one run:

* ``sd``: DIFT with SD-2.1's real architecture (random weights, the real UNet/VAE sizes; reduced frame size and
  ensemble on a CPU), where extraction dominates;
* ``baseline``: the weight-free features, where propagation dominates.

It prints, per extractor, CPU seconds (and wall seconds) of the first pass's extraction and propagation, of the
correction pass, and the ratio correction / first pass. Target (issue 11): <= 0.25 for SD.

    python scripts/bench_session.py                      # 8 frames of 224x128, SD ensemble 2
    python scripts/bench_session.py --size 416x240 --frames 12 --ensemble 8
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_extract import build_random_sd  # noqa: E402

from propagate.config import load_config  # noqa: E402
from propagate.demo import demo_frames  # noqa: E402
from propagate.features import FeatureExtractor, build_extractor  # noqa: E402
from propagate.features.dift_sd import DiftSDExtractor, DiftSDOptions  # noqa: E402
from propagate.session import Session  # noqa: E402
from propagate.video import Frame, VideoSource  # noqa: E402


class MemorySource(VideoSource):
    """Frames held in memory (the benchmark's synthetic clip)."""

    def __init__(self, images: list[np.ndarray]):
        self.path = Path("synthetic")
        self.images = images
        self.names = [f"{i:05d}" for i in range(len(images))]
        self.native_size = (images[0].shape[1], images[0].shape[0])
        self.fps = 24.0

    def __iter__(self):
        for i, image in enumerate(self.images):
            yield Frame(i, self.names[i], image)


class Clock:
    def __enter__(self) -> "Clock":
        self.cpu, self.wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall


def measure(name: str, extractor: FeatureExtractor, features: str, frames: int, size: tuple[int, int]) -> dict:
    images, masks = zip(*demo_frames(frames, size, seed=3))
    config = load_config(f"davis_{features}", {"resize.short_side": size[1], "batch_frames": 2})
    session = Session(MemorySource(list(images)), config, extractor=extractor)
    session.add_mask(0, masks[0])
    with Clock() as extract:
        session.extract()
    with Clock() as first:
        list(session.propagate())
    calls = session.stats["extractor_frames"]
    session.add_mask(frames // 2, masks[frames // 2])  # the correction
    with Clock() as correction:
        list(session.propagate())
    assert session.stats["extractor_frames"] == calls, "a correction must not extract"
    total = extract.cpu + first.cpu
    return {"name": name, "extract": extract, "propagate": first, "correction": correction,
            "ratio_cpu": correction.cpu / total, "ratio_wall": correction.wall / (extract.wall + first.wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", default="224x128", help="frame size WxH (multiples of 32)")
    parser.add_argument("--ensemble", type=int, default=2, help="SD ensemble size (DIFT uses 8)")
    parser.add_argument("--only", choices=["sd", "baseline"], help="run one extractor only")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    rows = []
    if args.only in (None, "sd"):
        unet, vae, scheduler, prompt = build_random_sd(torch.device("cpu"), seed=0)
        sd = DiftSDExtractor.from_modules(unet, vae, scheduler, prompt,
                                          DiftSDOptions(model="random SD-2.1", ensemble_size=args.ensemble,
                                                        dtype="fp32", device="cpu"))
        rows.append(measure(f"SD-2.1 arch (random), ensemble {args.ensemble}", sd, "sd", args.frames, size))
    if args.only in (None, "baseline"):
        rows.append(measure("baseline", build_extractor("baseline"), "baseline", args.frames, size))
    print(f"{args.frames} frames of {size[0]}x{size[1]}, correction = a second keyframe on frame {args.frames // 2}; "
          f"CPU seconds (wall in brackets)")
    print(f"{'features':<36} {'1st: extract':>14} {'1st: propagate':>15} {'correction':>14} {'ratio (cpu)':>12} "
          f"{'ratio (wall)':>13}")
    for r in rows:
        e, p, c = r["extract"], r["propagate"], r["correction"]
        print(f"{r['name']:<36} {e.cpu:>6.2f} [{e.wall:>5.2f}] {p.cpu:>7.2f} [{p.wall:>5.2f}] "
              f"{c.cpu:>6.2f} [{c.wall:>5.2f}] {r['ratio_cpu']:>12.3f} {r['ratio_wall']:>13.3f}")


if __name__ == "__main__":
    main()
