#!/usr/bin/env python
"""Render hand-drawn shapes (polygons, ellipses) to indexed mask PNGs, one per keyframe.

    python scripts/draw_mask.py propagate/demo_data/walk.json OUT/     # OUT/00000.png, OUT/00012.png

The JSON holds ``"size": [W, H]`` and ``"keyframes": {"<frame name>": [shape, ...]}``; a shape is
``{"id": k, "polygon": [[x, y], ...]}`` or ``{"id": k, "ellipse": [cx, cy, rx, ry]}`` in pixels, filled in order
(later shapes on top) with object index k. Draw the points by reading coordinates off a frame (e.g. with a grid
drawn over it), then pass OUT/ to ``propagate run --mask OUT/``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from propagate.demo import write_keyframes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shapes", type=Path, help="JSON of shapes per keyframe")
    parser.add_argument("out", type=Path, help="folder for the PNGs")
    args = parser.parse_args()
    for path in write_keyframes(args.shapes, args.out):
        print(path)


if __name__ == "__main__":
    main()
