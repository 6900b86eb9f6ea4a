"""Where tensors live and in what precision: the ``device`` and ``dtype`` options resolved against this machine.

On the ground floor, so both the extractors (:mod:`propagate.features`) and the propagator
(:mod:`propagate.propagation`) resolve a device the same way without one importing the other.
"""
from __future__ import annotations

import torch

from propagate.errors import PropagateError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_ALIASES: dict[str, str] = {"float32": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}

_DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


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


__all__ = ["DTYPES", "DTYPE_ALIASES", "cpu_has_bf16_units", "resolve_device", "resolve_dtype"]
