"""Frame sources: a folder of images or a video file, streamed one frame at a time.

A :class:`VideoSource` knows its frame count, names and native size up front (from file names or the container),
and decodes a frame only when iteration reaches it, so memory never grows with the video's length.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from propagate.config import ResizeConfig
from propagate.errors import PropagateError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
FOLDER_FPS = 24.0  # DAVIS frame rate; used for the overlay video of a frame folder


@dataclass
class Frame:
    """One decoded frame: its position, output name and ``[H, W, 3]`` uint8 RGB pixels at native size."""

    index: int
    name: str
    image: np.ndarray


def natural_key(name: str) -> list:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class VideoSource:
    """Base class: ``len()``, ``names``, ``native_size`` (W, H), ``fps`` and iteration over :class:`Frame`."""

    path: Path
    names: list[str]
    native_size: tuple[int, int]
    fps: float

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError


class FolderSource(VideoSource):
    """A folder of jpg/png frames in natural order; output names are the files' stems."""

    def __init__(self, path: Path):
        self.path = path
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise PropagateError(f"{path} holds no frames (.jpg/.jpeg/.png/.bmp): point at a folder of frames or a video file")
        self.files = sorted(files, key=lambda p: natural_key(p.name))
        self.names = [p.stem for p in self.files]
        if len(set(self.names)) != len(self.names):
            raise PropagateError(f"{path} holds frames with the same name and different extensions: keep one of each")
        # Read every header now (cheap), so a broken or odd-sized frame is reported before any work is done.
        sizes = {file: self._size_of(file) for file in self.files}
        self.native_size = sizes[self.files[0]]
        for file, size in sizes.items():
            if size != self.native_size:
                raise PropagateError(
                    f"frame {file} is {size[0]}x{size[1]} but the first frame is "
                    f"{self.native_size[0]}x{self.native_size[1]}: all frames must have one size"
                )
        self.fps = FOLDER_FPS

    @staticmethod
    def _size_of(file: Path) -> tuple[int, int]:
        try:
            with Image.open(file) as img:
                return img.size
        except (UnidentifiedImageError, OSError):
            raise PropagateError(f"frame {file} is not a readable image: replace or remove it") from None

    def __iter__(self) -> Iterator[Frame]:
        for index, file in enumerate(self.files):
            try:
                with Image.open(file) as img:
                    image = np.array(img.convert("RGB"))
            except (UnidentifiedImageError, OSError):
                raise PropagateError(f"frame {file} is not a readable image: replace or remove it") from None
            if (image.shape[1], image.shape[0]) != self.native_size:
                raise PropagateError(
                    f"frame {file} is {image.shape[1]}x{image.shape[0]} but the first frame is "
                    f"{self.native_size[0]}x{self.native_size[1]}: all frames must have one size"
                )
            yield Frame(index, self.names[index], image)


class VideoFileSource(VideoSource):
    """A video file decoded with decord, one frame at a time; frames are named 00000, 00001, ..."""

    def __init__(self, path: Path):
        import decord  # imported here: only video files need it

        self.path = path
        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        except Exception as exc:  # decord raises its own DECORDError and RuntimeErrors
            raise PropagateError(f"video {path} cannot be decoded ({str(exc).splitlines()[0][:120]}): check the file") from None
        count = len(self._reader)
        if count == 0:
            raise PropagateError(f"video {path} has no frames")
        height, width = self._reader[0].shape[:2]
        self._reader.seek(0)
        self.native_size = (int(width), int(height))
        self.names = [f"{i:05d}" for i in range(count)]
        fps = float(self._reader.get_avg_fps() or 0)
        self.fps = fps if fps > 0 else 25.0

    def __iter__(self) -> Iterator[Frame]:
        self._reader.seek(0)
        for index in range(len(self.names)):
            try:
                image = self._reader.next().asnumpy()
            except Exception as exc:
                raise PropagateError(f"video {self.path}: frame {index} cannot be decoded ({exc.__class__.__name__})") from None
            yield Frame(index, self.names[index], image)


def open_video(path: str | Path) -> VideoSource:
    """Open a frame folder or a video file; a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise PropagateError(f"video {path} does not exist: give a folder of frames or a video file")
    if path.is_dir():
        return FolderSource(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSource(path)
    raise PropagateError(
        f"{path} is neither a folder of frames nor a video file ({', '.join(sorted(VIDEO_SUFFIXES))})"
    )


def processing_size(native_wh: tuple[int, int], resize: ResizeConfig) -> tuple[int, int]:
    """The (W, H) frames are resized to before feature extraction.

    ``resize.size`` forces a size; otherwise the short side becomes ``short_side`` and the long side is scaled with
    it and floored to a multiple of ``multiple`` (DIFT/DINO: 854x480 -> 832x480).
    """
    if resize.size:
        width, height = (int(v) for v in resize.size)
        return width, height
    width, height = native_wh
    short, m = int(resize.short_side), int(resize.multiple)
    if width >= height:
        long_side = int((width * short / height) // m) * m
        size = (long_side, short)
    else:
        long_side = int((height * short / width) // m) * m
        size = (short, long_side)
    if min(size) < m:
        raise PropagateError(f"frames of {width}x{height} are too small for resize {resize}")
    return size


def to_tensor(image: np.ndarray, size_wh: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[3, h, w]`` float32 in [0, 1] at ``size_wh`` (bilinear, as DINO's reader)."""
    if (image.shape[1], image.shape[0]) != tuple(size_wh):
        image = cv2.resize(image, tuple(size_wh), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
