#!/usr/bin/env python
"""Write a synthetic DAVIS-2017-format dataset with known ground truth (see propagate/datasets/synthetic_davis.py).

Example: python scripts/make_synthetic_davis.py /tmp/synth --sequences 3 --frames 12 --size 160x96
"""
from __future__ import annotations

import argparse
import sys

from propagate.datasets.synthetic_davis import make_synthetic_davis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output dataset folder")
    parser.add_argument("--sequences", type=int, default=3, help="number of sequences (default 3)")
    parser.add_argument("--frames", type=int, default=12, help="frames per sequence (default 12, at least 4)")
    parser.add_argument("--size", default="160x96", help="frame size WxH (default 160x96)")
    parser.add_argument("--objects", default=None, help="objects per sequence, comma separated (default 2,3,4,...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="val", help="split list to write (default val)")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be WxH, e.g. 160x96, got {args.size!r}")
    objects = [int(v) for v in args.objects.split(",")] if args.objects else None
    try:
        summary = make_synthetic_davis(args.root, num_sequences=args.sequences, num_frames=args.frames,
                                       size=(width, height), seed=args.seed, split=args.split,
                                       objects_per_sequence=objects)
    except ValueError as exc:
        parser.error(str(exc))
    total = sum(summary["sequences"].values())
    print(f"wrote {len(summary['sequences'])} sequences ({total} objects, {args.frames} frames, {width}x{height}) "
          f"to {summary['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
