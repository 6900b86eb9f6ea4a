"""What every extractor shares: its per-frame noise (device and dtype: :mod:`propagate.device`; option checks:
:mod:`propagate.options`).

The noise rule is the one thing that makes features reproducible: a frame's noise depends only on
``(seed, frame_id)``, never on which frames were batched with it, and DIFT-SD and DIFT-ADM draw it the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from propagate.errors import PropagateError

# ----------------------------------------------------------------------------------------------------------------
# Noise: a pure function of (seed, frame_id)


def frame_generator(seed: int, frame_id: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, frame_id)`` (well mixed, so nearby seeds and frames
    give unrelated streams)."""
    if seed < 0 or frame_id < 0:
        raise PropagateError(f"seed ({seed}) and frame ids ({frame_id}) must be >= 0; use non-negative integers")
    state = np.random.SeedSequence([int(seed), int(frame_id)]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device="cpu").manual_seed(int(state[0]) << 31 ^ int(state[1]))


def frame_normals(seed: int, frame_id: int, *shapes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """One frame's noise: a standard normal float32 CPU tensor per shape, drawn in order from
    :func:`frame_generator` ``(seed, frame_id)``."""
    gen = frame_generator(seed, frame_id)
    return tuple(torch.randn(tuple(shape), generator=gen, dtype=torch.float32) for shape in shapes)


__all__ = ["frame_generator", "frame_normals"]
