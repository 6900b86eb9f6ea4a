#!/usr/bin/env python
"""Write a synthetic SPair-71k-layout dataset whose PCK is counted by hand (see propagate/datasets/synthetic_spair.py).

Example: python scripts/make_synthetic_spair.py /tmp/spair
         propagate eval spair --root /tmp/spair --out /tmp/o --features baseline
"""
from __future__ import annotations

import argparse
import sys

from propagate.datasets.synthetic_spair import make_synthetic_spair


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="output dataset folder")
    args = parser.parse_args(argv)
    expected = make_synthetic_spair(args.root)
    overall = expected["overall"]
    print(f"wrote a SPair-71k-layout set to {args.root}; expected PCK@0.1 per point {overall['pck_point']:.2f}, "
          f"per image {overall['pck_image']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
