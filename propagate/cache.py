"""A feature cache: features stored once (fp16) with the settings that made them, reused by ``run`` and ``eval``.

Layout of a cache folder::

    CACHE/settings.json            extractor settings + resize config (what determines the features)
    CACHE/<video>/video.json       the video's frame names and native size (to refuse a different video)
    CACHE/<video>/<frame>.pt       features [C, h, w] float16, one file per frame (atomic writes)

``<video>`` is the video's folder name or file stem (for a DAVIS root, the sequence name), so a cache made from a
dataset serves runs on any of its sequences. Extraction is resumable: frames already stored are not recomputed.
Propagation settings are not part of the key, so a sweep over them costs no extraction.

>>> cache = FeatureCache("cache/")
>>> for frame, mask in run_masks(video, first_mask, config, cache=cache): ...   # checks the settings first
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from propagate.config import Config, ResizeConfig
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import iter_features
from propagate.io import atomic_path, atomic_write_json
from propagate.video import Frame, VideoSource, open_video

JSON = dict[str, object]

SETTINGS_FILE = "settings.json"
VIDEO_FILE = "video.json"
CACHE_VERSION = 1


def cache_settings(extractor: FeatureExtractor, resize: ResizeConfig) -> JSON:
    """What determines the cached features: the extractor's settings and the resize policy (JSON-normalised)."""
    settings = {
        "version": CACHE_VERSION,
        "features": extractor.name,
        "extractor": extractor.settings(),
        "resize": dataclasses.asdict(resize),
    }
    return json.loads(json.dumps(settings))  # tuples -> lists, so a fresh dict equals one read back from disk


def _differences(stored: object, wanted: object, prefix: str = "") -> list[str]:
    """Human-readable list of the keys whose values differ between two nested dicts."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(wanted), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                out.append(f"{name} (cache: missing, now: {wanted[key]!r})")
            elif key not in wanted:
                out.append(f"{name} (cache: {stored[key]!r}, now: missing)")
            else:
                out.extend(_differences(stored[key], wanted[key], name))
        return out
    return [] if stored == wanted else [f"{prefix} (cache: {stored!r}, now: {wanted!r})"]


def video_key(source: VideoSource) -> str:
    """Folder name under the cache for one video: its folder name or its file's stem."""
    path = Path(source.path)
    return path.name if path.is_dir() else path.stem


class FeatureCache:
    """Features of frames stored as fp16 tensors, one file per frame, under a folder keyed by extractor settings.

    A :class:`propagate.features.stream.FeatureStore`. Call :meth:`check` before :meth:`get` / :meth:`put` (the
    feature stream does): it writes ``settings.json`` into a new cache and refuses an existing one made with other
    settings.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise PropagateError(f"cache {self.folder} is not a folder: give a folder made by `propagate extract`")
        self.settings: JSON | None = None
        self._videos: dict[str, Path] = {}

    def stored_settings(self) -> JSON | None:
        """The settings the cache was made with, or None for an empty cache."""
        path = self.folder / SETTINGS_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise PropagateError(
                f"cache {path} is unreadable: delete the cache folder and run `propagate extract` again"
            ) from None

    def check(self, extractor: FeatureExtractor, resize: ResizeConfig) -> None:
        """Bind the cache to ``extractor`` and ``resize``; refuse it if it was made with other settings."""
        wanted = cache_settings(extractor, resize)
        stored = self.stored_settings()
        if stored is None:
            if self.folder.is_dir() and any(p.name != SETTINGS_FILE for p in self.folder.iterdir()):
                raise PropagateError(
                    f"cache {self.folder} holds files but no {SETTINGS_FILE}: it is not a feature cache; "
                    "choose an empty or new folder"
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.folder / SETTINGS_FILE, wanted)
        else:
            diff = _differences(stored, wanted)
            if diff:
                raise PropagateError(
                    f"cache {self.folder} was made with other feature settings: {'; '.join(diff)}; "
                    "use the same settings, or another --cache folder"
                )
        self.settings = wanted

    def _require_check(self) -> None:
        if self.settings is None:
            raise RuntimeError("FeatureCache.check(extractor, resize) must be called before get/put")

    def _video_dir(self, source: VideoSource) -> Path:
        """The video's folder in the cache; created (with video.json) on first use, checked against the video after."""
        source = source.whole  # a selection of frames (run --frames/--stride) shares its video's folder
        key = video_key(source)
        if key in self._videos:
            return self._videos[key]
        folder = self.folder / key
        info = {"path": str(source.path), "names": list(source.names), "native_size": list(source.native_size)}
        meta = folder / VIDEO_FILE
        if meta.is_file():
            stored = json.loads(meta.read_text())
            if stored.get("names") != info["names"] or stored.get("native_size") != info["native_size"]:
                raise PropagateError(
                    f"cache {folder} holds features of another video named {key!r} ({stored.get('path')}: "
                    f"{len(stored.get('names', []))} frames of {stored.get('native_size')}; now {source.path}: "
                    f"{len(source.names)} frames of {list(source.native_size)}): use another --cache folder"
                )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_json(meta, info)
        self._videos[key] = folder
        return folder

    def _frame_path(self, source: VideoSource, frame: Frame) -> Path:
        return self._video_dir(source) / f"{frame.name}.pt"

    def get(self, source: VideoSource, frame: Frame) -> torch.Tensor | None:
        """Stored features ``[C, h, w]`` (float32 values of the fp16 copy) of ``frame``, or None if absent."""
        self._require_check()
        path = self._frame_path(source, frame)
        if not path.is_file():
            return None
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file (atomic writes make this rare): recompute it
            return None
        return feats.float()

    def put(self, source: VideoSource, frame: Frame, feats: torch.Tensor) -> torch.Tensor:
        """Store ``feats [C, h, w]`` of ``frame`` as float16 (atomically).

        Returns what :meth:`get` will return for it later (float32 values of the fp16 copy, on ``feats``' device), so
        a caller can use the same values on the run that fills the cache as on the runs that reuse it.
        """
        self._require_check()
        if feats.dim() != 3:
            raise ValueError(f"features of one frame must be [C, h, w], got {tuple(feats.shape)}")
        half = feats.detach().to(torch.float16)
        path = self._frame_path(source, frame)
        with atomic_path(path) as tmp:
            torch.save(half.cpu().contiguous().clone(), tmp)
        return half.float()

    def has(self, source: VideoSource, frame_name: str) -> bool:
        return (self.folder / video_key(source) / f"{frame_name}.pt").is_file()


def extract_to_cache(
    videos: Sequence[str | Path], out: str | Path, config: Config, extractor: FeatureExtractor | None = None,
    progress: bool = True,
) -> JSON:
    """The ``propagate extract`` job: features of ``videos`` (frame folders or video files) into the cache ``out``.

    Resumable: frames already in the cache are skipped (a video whose frames are all stored is not even decoded).
    Returns ``{"frames": frames now stored, "extracted": frames computed by this call, "videos": n, "cache"}``.
    """
    sources = [open_video(path) for path in videos]  # every video checked before any work
    extractor = extractor or build_extractor(config.features, config.extractor)
    cache = FeatureCache(out)
    cache.check(extractor, config.resize)
    stored = extracted = 0
    with tqdm(total=sum(len(s) for s in sources), desc="extract", unit="frame", disable=not progress) as bar:
        for source in sources:
            bar.set_description(f"extract {video_key(source)}")
            before = sum(cache.has(source, name) for name in source.names)
            if before < len(source):
                for _frame, _feats in iter_features(source, extractor, config.resize, config.batch_frames, cache):
                    bar.update(1)
            else:
                bar.update(len(source))
            stored += len(source)
            extracted += len(source) - before
    return {"frames": stored, "extracted": extracted, "videos": len(sources), "cache": str(cache.folder)}
