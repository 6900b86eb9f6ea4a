"""What every extractor shares: where it runs (device), in what precision (dtype), and its per-frame noise.

The noise rule is the one thing that makes features reproducible: a frame's noise depends only on
``(seed, frame_id)``, never on which frames were batched with it, and DIFT-SD and DIFT-ADM draw it the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from propagate.errors import PropagateError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_ALIASES: dict[str, str] = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}

_DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


# ----------------------------------------------------------------------------------------------------------------
# Device and dtype


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` option: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``. A device this machine lacks, or an unknown name, is a one-line PropagateError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise PropagateError(f"unknown device {name!r}; use {_DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PropagateError(f"device {name!r} was asked for but torch sees no CUDA GPU; use device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PropagateError(f"device {name!r} was asked for but torch sees {torch.cuda.device_count()} CUDA "
                                 f"GPU(s); use cuda:0..cuda:{torch.cuda.device_count() - 1}, cpu or auto")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise PropagateError(f"device {name!r} was asked for but torch sees no Apple MPS device; use device cpu "
                                 "or auto")
        return device
    raise PropagateError(f"unknown device {name!r}; use {_DEVICE_CHOICES}")


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16, from ``/proc/cpuinfo``'s flags ``amx_bf16``
    / ``avx512_bf16``), which is where bf16 UNet passes beat fp32. Where the flags cannot be read (not Linux),
    torch's own answer is used (``mkldnn`` bf16 support, which also accepts plain AVX512: slower than fp32 there)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = {word for line in f if line.startswith("flags") for word in line.split(":", 1)[1].split()}
        return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False


def resolve_dtype(name: str, device: torch.device) -> str:
    """The canonical dtype name (a key of :data:`DTYPES`) for a ``dtype`` option: ``auto`` is fp16 on CUDA, bf16 on
    a CPU with bf16 units (:func:`cpu_has_bf16_units`), fp32 elsewhere; ``float32``, ``float16``, ``half`` and
    ``bfloat16`` are accepted as aliases."""
    if name == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_bf16_units() else "fp32"
    canonical = DTYPE_ALIASES.get(name, name)
    if canonical not in DTYPES:
        raise PropagateError(f"unknown dtype {name!r}; use auto, fp32, fp16 or bf16")
    return canonical


def check_int(owner: str, name: str, value: int, low: int, high: int | None = None) -> None:
    """An integer option in ``low..high`` (``high`` None: no upper bound), else a one-line PropagateError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise PropagateError(f"{owner} option {name}={value!r} is out of range; use an integer {bound}")


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


__all__ = ["DTYPES", "DTYPE_ALIASES", "check_int", "cpu_has_bf16_units", "frame_generator", "frame_normals", "resolve_device",
           "resolve_dtype"]
