#!/usr/bin/env python
"""Write a randomly initialised tiny ADM checkpoint (and its <path>.json of architecture options) for tests and demos.

It keeps the 256x256 model's layout (so output block 7 is again at 1/8) with 32 channels per level, and loads with
`--features adm --model PATH` alone: the extractor reads the side-car JSON.

Example: python scripts/make_tiny_adm.py /tmp/tiny_adm.pt --seed 0
         python scripts/make_tiny_adm.py /tmp/small.pt --set image_size=32 --set channel_mult=1,2,2 \\
             --set num_res_blocks=1
"""
from __future__ import annotations

import argparse
import sys

import yaml

from propagate.errors import PropagateError
from propagate.features.adm_net import TINY_ARCH, ADMArch, save_tiny_checkpoint, sidecar_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="checkpoint file to write (e.g. tiny_adm.pt)")
    parser.add_argument("--seed", type=int, default=0, help="weight-init seed (default 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="OPTION=VALUE",
                        help="an ADM architecture option, e.g. num_channels=64 (repeatable)")
    args = parser.parse_args(argv)
    arch = {}
    for item in args.overrides:
        if "=" not in item:
            parser.error(f"--set {item!r} is not OPTION=VALUE")
        key, raw = item.split("=", 1)
        arch[key.strip()] = raw if key.strip() in ("channel_mult", "attention_resolutions") else yaml.safe_load(raw)
    try:
        path = save_tiny_checkpoint(args.path, seed=args.seed, **arch)
    except PropagateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    options = ADMArch.from_dict({**TINY_ARCH, **arch}).to_dict()
    defaults = ADMArch().to_dict()
    flags = " ".join(f"--set extractor.{k}={v}" for k, v in options.items() if v != defaults[k])
    print(f"wrote {path} and {sidecar_path(path)}")
    print(f"use it with: --features adm --model {path}")
    print(f"(without the side-car JSON, add: {flags})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
