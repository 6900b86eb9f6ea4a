"""The interface every feature extractor implements.

An extractor turns RGB frames into dense feature maps on a regular grid. Adding a backbone means one new module
that subclasses :class:`FeatureExtractor` and one line in the registry (``propagate/features/__init__.py``).
"""
from __future__ import annotations

import abc
from typing import Any, Sequence

import torch


class FeatureExtractor(abc.ABC):
    """Frames in, feature maps out.

    Subclasses set ``name`` (the registry key) and ``stride`` (input pixels per feature cell), and implement
    :meth:`extract` and :meth:`settings`.
    """

    name: str = ""
    stride: int = 8

    @abc.abstractmethod
    def extract(self, images: torch.Tensor, frame_ids: Sequence[int]) -> torch.Tensor:
        """Features of a batch of frames.

        Args:
            images: ``[B, 3, H, W]`` float RGB in ``[0, 1]`` (any device); H and W are multiples of ``stride``.
            frame_ids: ``B`` integers, one per image (the frame's index in its video). Stochastic extractors
                derive each frame's noise from ``(seed, frame_id)`` so that results never depend on how frames
                were batched.

        Returns:
            ``[B, C, H // stride, W // stride]`` float32 features (not normalised), on the extractor's device.
        """

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """Every option that determines the features (JSON-serialisable): recorded beside results and used to
        refuse a feature cache made with other settings. Excludes options that only affect speed (batch size,
        device)."""

    def describe(self) -> str:
        """A one-line human description for logs and overlays."""
        return f"{self.name} ({', '.join(f'{k}={v}' for k, v in self.settings().items())})"
