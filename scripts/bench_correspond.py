"""Latency of the app's correspond tab (``propagate serve``): features once per image, then each click.

Two frames (default 480x270, the demo scene) are processed at the preset's size (DAVIS: short side 480); a click is
the match (cosine similarity of the clicked cell against every cell of the other image, upsampled to native size,
argmax) plus the two images the page shows (marker; heatmap blended over the right image).

    python scripts/bench_correspond.py [--features baseline] [--size 480x270] [--clicks 20]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from propagate.app.core import Correspondence, best_match, draw_marker, heatmap_overlay
from propagate.config import load_config
from propagate.demo import demo_frames
from propagate.features import build_extractor, preset_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="baseline")
    parser.add_argument("--size", default="480x270", help="WxH of the two frames")
    parser.add_argument("--clicks", type=int, default=20)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = [image for image, _ in demo_frames(8, (width, height))]
    left, right = frames[0], frames[4]
    config = load_config(preset_name("davis", args.features))
    extractor = build_extractor(config.features, config.extractor)
    corr = Correspondence(extractor, config.resize)
    times = []
    for image in (left, right):
        start = time.perf_counter()
        corr.features(image)
        times.append(time.perf_counter() - start)
    lf, rf = corr.features(left), corr.features(right)
    rng = np.random.default_rng(0)
    clicks = []
    for x, y in rng.integers([0, 0], [width, height], size=(args.clicks, 2)):
        start = time.perf_counter()
        m = best_match(lf, rf, (float(x), float(y)), (width, height), (width, height))
        draw_marker(left, (x, y))
        draw_marker(heatmap_overlay(right, m.heatmap), m.xy)
        clicks.append(time.perf_counter() - start)
    print(f"{extractor.name} features, frames {width}x{height}, processed at {tuple(lf.shape[1:])} cells of "
          f"{extractor.stride} px ({lf.shape[0]} channels)")
    print(f"features once per image: {times[0]:.2f} s, {times[1]:.2f} s")
    print(f"per click ({args.clicks} clicks): median {1000 * statistics.median(clicks):.1f} ms, "
          f"max {1000 * max(clicks):.1f} ms")


if __name__ == "__main__":
    main()
