#!/usr/bin/env python
"""Write a synthetic JHMDB-format dataset with known joint motion (see propagate/datasets/synthetic_jhmdb.py).

Example: python scripts/make_synthetic_jhmdb.py /tmp/synth_jhmdb --videos 2 --frames 10 --size 320x240
Then:    propagate eval jhmdb --root /tmp/synth_jhmdb --split-file /tmp/synth_jhmdb/test_list.txt --out /tmp/eval
"""
from __future__ import annotations

import argparse
import sys

from propagate.datasets.synthetic_jhmdb import make_synthetic_jhmdb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output dataset folder")
    parser.add_argument("--videos", type=int, default=2, help="number of videos (default 2)")
    parser.add_argument("--frames", type=int, default=10, help="frames per video (default 10, at least 2)")
    parser.add_argument("--size", default="320x240", help="frame size WxH (default 320x240, JHMDB's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WxH, e.g. 320x240, got {args.size!r}")
    try:
        summary = make_synthetic_jhmdb(args.root, num_videos=args.videos, num_frames=args.frames,
                                       size=(width, height), seed=args.seed)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"wrote {len(summary['videos'])} videos ({args.frames} frames, {width}x{height}) to {summary['root']}; "
          f"split list: {summary['split']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
