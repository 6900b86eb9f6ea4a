"""The interface every feature extractor implements.

An extractor turns RGB frames into dense feature maps on a regular grid. Adding a backbone means one new module
that subclasses :class:`FeatureExtractor` (with a frozen dataclass of its options) and one entry in the registry
(``propagate/features/__init__.py``).
"""
from __future__ import annotations

import abc
from typing import ClassVar, Sequence

import torch

from propagate.errors import PropagateError


class FeatureExtractor(abc.ABC):
    """Frames in, feature maps out.

    Attributes:
        name: the registry key (``dift_sd``, ``adm``, ``baseline``).
        options_type: the frozen dataclass of the extractor's options; :func:`propagate.features.build_extractor`
            checks a preset's ``extractor:`` section against its fields and calls ``cls(options_type(**section))``.
        stride: input pixels per feature cell.
        device: where :meth:`extract` returns its features.
        stands_in: the baseline standing in for DIFT whose weights could not be had
            (:func:`propagate.features.fallback.dift_or_baseline`); captions say so.

    Subclasses implement :meth:`extract` and :meth:`settings`; those whose input must be a multiple of more than
    ``stride`` override :attr:`size_multiple`.
    """

    name: ClassVar[str]
    options_type: ClassVar[type]
    stride: int
    device: torch.device = torch.device("cpu")
    stands_in: bool = False

    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this (the stride, unless the network needs more)."""
        return self.stride

    @abc.abstractmethod
    def extract(self, images: torch.Tensor, frame_ids: Sequence[int]) -> torch.Tensor:
        """Features of a batch of frames.

        Args:
            images: ``[B, 3, H, W]`` float RGB in ``[0, 1]`` (any device); H and W are multiples of
                :attr:`size_multiple`.
            frame_ids: ``B`` integers, one per image (the frame's index in its video). Stochastic extractors
                derive each frame's noise from ``(seed, frame_id)`` so that results never depend on how frames
                were batched.

        Returns:
            ``[B, C, H // stride, W // stride]`` float32 features (not normalised), on the extractor's device.
        """

    @abc.abstractmethod
    def settings(self) -> dict[str, object]:
        """Every option that determines the features (JSON-serialisable): recorded beside results and used to
        refuse a feature cache made with other settings. Excludes options that only affect speed (batch size,
        device)."""

    def describe(self) -> str:
        """A one-line human description for logs and overlays."""
        return f"{self.name} ({', '.join(f'{k}={v}' for k, v in self.settings().items())})"

    def check_batch(self, images: torch.Tensor, frame_ids: Sequence[int]) -> list[int]:
        """The frame ids as ints, after checking that ``images`` is ``[B, 3, H, W]`` with ``B`` ids and H, W
        multiples of :attr:`size_multiple`; a one-line PropagateError otherwise."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise PropagateError(f"{self.name} expects images [B, 3, H, W], got {list(images.shape)}")
        num_frames, _, height, width = images.shape
        ids = [int(f) for f in frame_ids]
        if len(ids) != num_frames:
            raise PropagateError(f"{self.name} got {num_frames} images but {len(ids)} frame ids")
        multiple = self.size_multiple
        if height % multiple or width % multiple:
            raise PropagateError(f"{self.name} needs a frame size that is a multiple of {multiple}, got {width}x"
                                 f"{height}; resize the frames to multiples of {multiple} (resize.multiple: "
                                 f"{multiple} or a multiple of it)")
        return ids
