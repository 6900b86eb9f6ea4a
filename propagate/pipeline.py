"""The main job, frame by frame: read -> extract -> propagate -> decode -> write.

One frame flows through the whole chain before the next is read (features are extracted in small batches), so
memory is bounded by the context queue, not by the video's length.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.io import atomic_write_json, mark_complete, results_folder
from propagate.labels import object_ids, read_mask, write_mask
from propagate.propagation import LabelPropagator, labels_to_mask, mask_to_labels
from propagate.render import OverlayWriter, caption, overlay_mask
from propagate.video import Frame, VideoSource, open_video, processing_size, to_tensor


def as_source(video: str | Path | VideoSource) -> VideoSource:
    return video if isinstance(video, VideoSource) else open_video(video)


def iter_features(
    source: VideoSource, extractor: FeatureExtractor, config: Config, cache: Any = None
) -> Iterator[tuple[Frame, torch.Tensor]]:
    """Yield ``(frame, features [C, h, w])`` for every frame, extracting ``config.batch_frames`` frames at a time.

    Frames are resized to :func:`propagate.video.processing_size`; ``cache`` (a :class:`propagate.cache.FeatureCache`
    or None) supplies stored features instead of extracting them.
    """
    if cache is not None:
        cache.check(extractor, config)  # refuses a cache made with other extractor or resize settings
    size = processing_size(source.native_size, config.resize)
    multiple = getattr(extractor, "size_multiple", extractor.stride)  # ADM needs 32 even where its stride is 8
    if size[0] % multiple or size[1] % multiple:
        raise PropagateError(
            f"processing size {size[0]}x{size[1]} is not a multiple of {multiple}, as {extractor.name} features need: "
            "change resize.multiple or resize.size"
        )
    batch: list[Frame] = []
    step = max(1, int(config.batch_frames))

    def flush() -> Iterator[tuple[Frame, torch.Tensor]]:
        if cache is not None:
            feats = [cache.get(source, f) for f in batch]
            missing = [i for i, f in enumerate(feats) if f is None]
        else:
            feats, missing = [None] * len(batch), list(range(len(batch)))
        if missing:
            images = torch.stack([to_tensor(batch[i].image, size) for i in missing])
            new = extractor.extract(images, [batch[i].index for i in missing])
            for j, i in enumerate(missing):
                # with a cache, use what later runs will read back (fp16-rounded), so every run sees the same
                feats[i] = cache.put(source, batch[i], new[j]) if cache is not None else new[j]
        for frame, feat in zip(batch, feats):
            yield frame, feat
        batch.clear()

    for frame in source:
        batch.append(frame)
        if len(batch) >= step:
            yield from flush()
    if batch:
        yield from flush()


def check_length(source: VideoSource) -> None:
    """Propagation needs a first frame and at least one more."""
    if len(source) < 2:
        raise PropagateError(f"video {source.path} has {len(source)} frame: at least 2 are needed to propagate")


def check_first_mask(mask: np.ndarray, path: str | Path) -> list[int]:
    """Object ids of a first-frame mask; an error if it holds none."""
    ids = object_ids(mask)
    if not ids:
        raise PropagateError(f"mask {path} holds no object (only background 0 / void 255): label at least one object 1..N")
    return ids


def run_masks(
    video: str | Path | VideoSource,
    first_mask: np.ndarray,
    config: Config,
    extractor: FeatureExtractor | None = None,
    cache: Any = None,
    progress: bool = True,
) -> Iterator[tuple[Frame, np.ndarray]]:
    """Propagate ``first_mask [H, W]`` (uint8 indices) through ``video``; yield ``(frame, mask [H, W] uint8)``.

    Frame 0 yields the given mask. The generator holds only the context queue between frames.

    >>> for frame, mask in run_masks("frames/", read_mask("00000.png"), load_config("davis_sd")):
    ...     write_mask(f"out/{frame.name}.png", mask)
    """
    source = as_source(video)
    check_length(source)
    native_w, native_h = source.native_size
    if first_mask.shape != (native_h, native_w):
        raise PropagateError(
            f"first mask is {first_mask.shape[1]}x{first_mask.shape[0]} but the frames of {source.path} are "
            f"{native_w}x{native_h}: give the mask of the first frame"
        )
    num_objects = max(check_first_mask(first_mask, "first mask"))
    extractor = extractor or build_extractor(config.features, config.extractor)
    proc_w, proc_h = processing_size(source.native_size, config.resize)
    propagator = LabelPropagator(config.propagation)
    bar = tqdm(total=len(source), desc=f"propagate {Path(source.path).name}", unit="frame", disable=not progress,
               leave=False, file=sys.stderr)
    try:
        for frame, feats in iter_features(source, extractor, config, cache):
            if frame.index == 0:
                labels = mask_to_labels(first_mask, num_objects, tuple(feats.shape[1:]), config.propagation.label_downsample)
                propagator.start(feats, labels)
                mask = first_mask
            else:
                soft = propagator.step(feats)
                mask = labels_to_mask(soft, (proc_h, proc_w), (native_h, native_w), config.propagation.minmax_norm)
            bar.update(1)
            yield frame, mask
    finally:
        bar.close()


RUN_INFO = "run_info.json"

# Options that change speed but not results: left out when checking that a resumed run uses the same settings.
SPEED_ONLY = {("batch_frames",), ("extractor",), ("propagation", "device"), ("propagation", "screen")}


def result_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
    """The config without the options that only change speed (what resumed results must agree on)."""
    kept = {k: v for k, v in config_dict.items() if (k,) not in SPEED_ONLY}
    for section, value in list(kept.items()):
        if isinstance(value, dict):
            kept[section] = {k: v for k, v in value.items() if (section, k) not in SPEED_ONLY}
    return kept


def check_resume(out: Path, info: dict[str, Any], keys: Sequence[str]) -> None:
    """Refuse to mix results made with other settings into ``out`` (compares ``keys`` of run_info.json)."""
    path = out / RUN_INFO
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        raise PropagateError(f"{path} is unreadable: delete it (and the results beside it) or choose another --out") from None
    for key in keys:
        if old.get(key) != info.get(key):
            what = {"extractor": "extractor settings", "settings": "settings", "features": "features"}.get(key, key)
            raise PropagateError(f"{out} holds results made with other {what} (see {path}): "
                                 "choose another --out, or delete that folder to start over")


def run_record(config: Config, extractor: FeatureExtractor, **extra: Any) -> dict[str, Any]:
    """What produced a set of results: config, extractor settings, package versions, date, command line."""
    import importlib.metadata as md

    versions = {}
    for package in ("propagate", "torch", "diffusers", "transformers", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {
        "config": config.to_dict(),
        "extractor": extractor.settings(),
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        **extra,
    }


def run_video(
    video: str | Path,
    mask_path: str | Path,
    out_dir: str | Path,
    config: Config,
    *,
    extractor: FeatureExtractor | None = None,
    cache: Any = None,
    overwrite: bool = False,
    render: bool = True,
    progress: bool = True,
    label: str | None = None,
) -> dict[str, Any]:
    """The ``propagate run`` job: one indexed PNG per frame (named like the input frames) and ``overlay.mp4``.

    Inputs are checked before anything is written. If the run fails midway, what it wrote is removed, so a folder
    with results is always complete (it also holds a ``.complete`` mark, written last).

    Returns a summary: frames written, output folder, overlay path, extractor description.
    """
    source = open_video(video)
    mask = read_mask(mask_path, source.native_size)
    check_first_mask(mask, mask_path)
    check_length(source)
    extractor = extractor or build_extractor(config.features, config.extractor)
    text = label or extractor.describe()
    written = 0
    with results_folder(out_dir, overwrite) as out:
        overlay = out / "overlay.mp4"
        with (OverlayWriter(overlay, source.fps, source.native_size) if render else contextlib.nullcontext()) as writer:
            for frame, frame_mask in run_masks(source, mask, config, extractor, cache=cache, progress=progress):
                write_mask(out / f"{frame.name}.png", frame_mask)
                written += 1
                if writer is not None:
                    writer.write(caption(overlay_mask(frame.image, frame_mask), f"{text} | frame {frame.index}"))
        atomic_write_json(out / RUN_INFO, run_record(config, extractor, video=str(video), mask=str(mask_path)))
        mark_complete(out, {"frames": written})
    return {"frames": written, "out": str(out), "overlay": str(overlay) if render else None, "features": text}
