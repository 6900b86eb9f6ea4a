#!/usr/bin/env python
"""Write the tiny random-weight SD-2.1-layout diffusers folder used by the tests (no downloads).

    python scripts/make_tiny_model.py DIR [--seed 0]
    propagate run ... --features dift_sd --model DIR     # exercise the whole pipeline without real weights
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from propagate.features.tiny_sd import make_tiny_sd  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the diffusers folder")
    parser.add_argument("--seed", type=int, default=0, help="weights depend only on this seed")
    args = parser.parse_args()
    folder = make_tiny_sd(args.folder, seed=args.seed)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(f"wrote a tiny SD-2.1-layout model to {folder} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
