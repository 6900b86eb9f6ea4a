"""The feature stream: a video's frames in, ``(frame, features [C, h, w])`` out, in order, a few frames at a time.

Frames are resized to the processing size (:func:`propagate.video.processing_size`) and extracted in batches of
``batch_frames``. A :class:`FeatureStore` (the feature cache is one) may stand behind the stream: frames it holds
are read from it, the others are extracted and handed to it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import torch

from propagate.config import ResizeConfig
from propagate.errors import PropagateError
from propagate.features.base import FeatureExtractor
from propagate.video import Frame, VideoSource, processing_size, to_tensor


class FeatureStore(Protocol):
    """Where features of frames can be kept between runs (see :class:`propagate.cache.FeatureCache`)."""

    folder: Path  # where it lives (an input: never a results folder)

    def check(self, extractor: FeatureExtractor, resize: ResizeConfig) -> None:
        """Bind the store to these settings; refuse (PropagateError) a store made with other settings."""

    def get(self, source: VideoSource, frame: Frame) -> torch.Tensor | None:
        """Stored features ``[C, h, w]`` of ``frame``, or None."""

    def put(self, source: VideoSource, frame: Frame, feats: torch.Tensor) -> torch.Tensor:
        """Store ``feats [C, h, w]``; return what :meth:`get` will return for it later."""


def check_processing_size(source: VideoSource, extractor: FeatureExtractor, resize: ResizeConfig) -> tuple[int, int]:
    """The processing size (W, H) of ``source``'s frames, checked against what ``extractor`` needs: frames at least
    one feature cell (``stride`` pixels) on each side, so that there is an image to carry labels on (a 1x1 frame,
    stretched to the processing size, has none), and a processing size that is a multiple of its size multiple."""
    width, height = source.native_size
    if min(width, height) < extractor.stride:
        raise PropagateError(f"frames of {source.path} are {width}x{height}, smaller than one {extractor.name} feature "
                             f"cell ({extractor.stride}x{extractor.stride} pixels): there is no image to carry labels "
                             f"on; give frames at least {extractor.stride} pixels on each side")
    size = processing_size(source.native_size, resize)
    multiple = extractor.size_multiple
    if size[0] % multiple or size[1] % multiple:
        raise PropagateError(
            f"processing size {size[0]}x{size[1]} is not a multiple of {multiple}, as {extractor.name} features need: "
            "change resize.multiple or resize.size"
        )
    return size


def iter_features(
    source: VideoSource,
    extractor: FeatureExtractor,
    resize: ResizeConfig,
    batch_frames: int = 4,
    store: FeatureStore | None = None,
) -> Iterator[tuple[Frame, torch.Tensor]]:
    """Yield ``(frame, features [C, h, w])`` for every frame of ``source``, extracting ``batch_frames`` at a time.

    With a ``store``, stored features are used instead of extracting; new ones are put into it and the stream
    yields what the store will give back later (so the run that fills a cache sees the same values as the runs
    that reuse it).
    """
    if store is not None:
        store.check(extractor, resize)  # refuses a store made with other extractor or resize settings
    size = check_processing_size(source, extractor, resize)
    step = max(1, int(batch_frames))
    batch: list[Frame] = []

    def flush() -> Iterator[tuple[Frame, torch.Tensor]]:
        feats: list[torch.Tensor | None] = [store.get(source, f) for f in batch] if store else [None] * len(batch)
        missing = [i for i, f in enumerate(feats) if f is None]
        if missing:
            images = torch.stack([to_tensor(batch[i].image, size) for i in missing])
            new = extractor.extract(images, [source.source_index(batch[i].index) for i in missing])
            for j, i in enumerate(missing):
                feats[i] = store.put(source, batch[i], new[j]) if store else new[j]
        for frame, feat in zip(batch, feats):
            assert feat is not None
            yield frame, feat
        batch.clear()

    for frame in source:
        batch.append(frame)
        if len(batch) >= step:
            yield from flush()
    if batch:
        yield from flush()
