"""Frame sources: a folder of images or a video file, streamed one frame at a time or read at any position.

A :class:`VideoSource` knows its frame count, names and native size up front (from file names or the container),
and decodes a frame only when iteration reaches it, so memory never grows with the video's length.
:meth:`VideoSource.frame` reads one frame anywhere: a video file seeks to the keyframe before it and decodes from
there (cost: one group of pictures, not the frames before it), giving the very pixels iteration gives. Video files
are read with decord where it is installed and with PyAV elsewhere (:func:`choose_reader`); both give the same
frames.
"""
from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from propagate.config import ResizeConfig
from propagate.errors import PropagateError
from propagate.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES, image_size

if TYPE_CHECKING:
    import torch

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
    """Base class: ``len()``, ``names``, ``native_size`` (W, H), ``fps``, iteration over :class:`Frame` and
    :meth:`frame` (one frame by position, identical to the one iteration yields)."""

    path: Path
    names: list[str]
    native_size: tuple[int, int]
    fps: float

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` as ``[H, W, 3]`` uint8 RGB at native size. Folders and video files read it without
        decoding the frames before it; this default (for other sources) iterates up to it."""
        index = self._check_position(index)
        for frame in self:
            if frame.index == index:
                return frame.image
        raise PropagateError(f"frame {index} of {self.path} could not be read: the source ended before it")

    def source_index(self, index: int) -> int:
        """The position in the whole video of this source's frame ``index`` (itself, except for a
        :class:`FrameSelection`): what seeds a frame's features and what results report as its index."""
        return index

    @property
    def whole(self) -> "VideoSource":
        """The whole video this source reads from (itself, except for a :class:`FrameSelection`)."""
        return self

    def _check_position(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < len(self.names):
            raise PropagateError(f"frame {index!r} is not a frame of {self.path} (0..{len(self.names) - 1})")
        return int(index)


class FolderSource(VideoSource):
    """A folder of jpg/png frames in natural order; output names are the files' stems."""

    def __init__(self, path: Path):
        self.path = path
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise PropagateError(f"{path} holds no frames (.jpg/.jpeg/.png/.bmp): point at a folder of frames or a "
                                 "video file")
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
            return image_size(file, "frame")  # from the header; a decompression bomb is refused undecoded
        except (UnidentifiedImageError, OSError):
            raise PropagateError(f"frame {file} is not a readable image: replace or remove it") from None

    def __iter__(self) -> Iterator[Frame]:
        for index in range(len(self.files)):
            yield Frame(index, self.names[index], self._read(index))

    def frame(self, index: int) -> np.ndarray:
        return self._read(self._check_position(index))

    def _read(self, index: int) -> np.ndarray:
        file = self.files[index]
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
        return image


# Video file readers. decord has wheels only for x86-64 Linux and Windows; PyAV (``av``) has them everywhere. Both
# decode with FFmpeg and convert to RGB with swscale: on 8-bit H.264 mp4 their frames are byte-identical.
VIDEO_READERS = ("decord", "pyav")
READER_ENV = "PROPAGATE_VIDEO_READER"  # decord or pyav: overrides reader="auto" (for tests and odd installs)
_READER_MODULES = {"decord": "decord", "pyav": "av"}


def reader_installed(reader: str) -> bool:
    """Whether the video reader ``reader`` (``decord`` or ``pyav``) can be imported here."""
    try:
        importlib.import_module(_READER_MODULES[reader])
    except ImportError:
        return False
    return True


def choose_reader(reader: str = "auto") -> str:
    """The reader to use: ``reader`` if named, else ``$PROPAGATE_VIDEO_READER``, else decord if installed, else pyav."""
    reader = reader.strip().lower()
    if reader == "auto":
        reader = os.environ.get(READER_ENV, "").strip().lower() or "auto"
    if reader == "auto":
        return "decord" if reader_installed("decord") else "pyav"
    if reader not in VIDEO_READERS:
        raise PropagateError(f"video reader {reader!r} is unknown: give auto, {' or '.join(VIDEO_READERS)} "
                             f"(reader= or ${READER_ENV})")
    if not reader_installed(reader):
        raise PropagateError(f"video reader {reader} is not installed: pip install {_READER_MODULES[reader]}, or "
                             "choose another")
    return reader


def _first_line(exc: BaseException) -> str:
    """A reader's error in a few words: FFmpeg's own text (PyAV), or decord's first line without its log prefix."""
    text = getattr(exc, "strerror", None) or str(exc).strip()
    line = text.splitlines()[0] if text else exc.__class__.__name__
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", line)[:120]


class _DecordFile:
    """decord's reader: count and fps from the container, frames read in order with ``next()``. Each pass opens its
    own reader, so two passes over one source (a session's features and a writer's frames) never share a position."""

    def __init__(self, path: Path):
        import decord  # imported here: only video files need it

        self.path = path
        try:
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
            self.count = len(reader)
            height, width = reader[0].shape[:2] if self.count else (0, 0)
            self.fps = float(reader.get_avg_fps() or 0)
            del reader
        except Exception as exc:  # decord raises its own DECORDError and RuntimeErrors
            raise PropagateError(f"video {path} cannot be decoded ({_first_line(exc)}): check the file") from None
        self.size = (int(width), int(height))

    def frames(self) -> Iterator[np.ndarray]:
        import decord

        reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
        for _ in range(self.count):
            yield reader.next().asnumpy()

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index``: decord seeks to the keyframe before it (from the container's index) and decodes on."""
        import decord

        reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
        return reader[index].asnumpy()


class _PyAVFile:
    """PyAV's reader: the count is the video stream's packets (one per frame; exact, found without decoding), and
    their presentation times, sorted, are the frames' (``pts[i]`` is frame i's), which is how :meth:`frame` finds a
    frame after a seek."""

    def __init__(self, path: Path):
        import av  # imported here: only video files need it

        self.path = path
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise PropagateError(f"video {path} cannot be decoded (it holds no video stream): check the file")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(rate) if rate else 0.0
                times = [packet.pts for packet in container.demux(stream) if packet.size and not packet.is_discard]
                self.count = len(times)
                # None where a packet has no time or two share one: then frame() decodes from the start instead
                self.pts = sorted(times) if None not in times and len(set(times)) == len(times) else None
            frames = self.frames()
            first = next(frames, None)  # decoded now, so a file that cannot be decoded fails here
            frames.close()
        except PropagateError:
            raise
        except Exception as exc:  # av.FFmpegError (InvalidDataError, ...) and OSError
            raise PropagateError(f"video {path} cannot be decoded ({_first_line(exc)}): check the file") from None
        if first is None and self.count:
            raise PropagateError(f"video {path} cannot be decoded (no frame in its {self.count} packets): check the "
                                 "file")
        self.size = (first.shape[1], first.shape[0]) if first is not None else (0, 0)

    def frames(self) -> Iterator[np.ndarray]:
        import av

        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: faster, same pixels; one frame in flight per thread
            for frame in container.decode(stream):
                yield frame.to_ndarray(format="rgb24")

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index``: seek to the keyframe at or before its time, decode on to the frame with that time. A
        stream whose times cannot place the frame (no times, a seek that lands after it) is decoded from the start."""
        import av

        if self.pts is not None:
            target = self.pts[index]
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                container.seek(target, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    if frame.pts is None or frame.pts > target:
                        break  # no time to match on, or the seek landed past the frame: decode from the start
                    if frame.pts == target:
                        return frame.to_ndarray(format="rgb24")
        frames = self.frames()
        try:
            for position, image in enumerate(frames):
                if position == index:
                    return image
        finally:
            frames.close()
        raise StopIteration(f"the stream ended before frame {index}")


_READER_CLASSES = {"decord": _DecordFile, "pyav": _PyAVFile}


class VideoFileSource(VideoSource):
    """A video file decoded one frame at a time (decord or PyAV, see :func:`choose_reader`); frames are named
    00000, 00001, ...; ``reader`` says which reader decodes it."""

    def __init__(self, path: Path, reader: str = "auto"):
        self.path = Path(path)
        self.reader = choose_reader(reader)
        self._file = _READER_CLASSES[self.reader](self.path)
        if self._file.count == 0 or self._file.size == (0, 0):
            raise PropagateError(f"video {path} has no frames")
        self.native_size = self._file.size
        self.names = [f"{i:05d}" for i in range(self._file.count)]
        self.fps = self._file.fps if self._file.fps > 0 else 25.0

    def __iter__(self) -> Iterator[Frame]:
        frames = self._file.frames()
        for index in range(len(self.names)):  # the count announced up front; a reader's extra frames are dropped
            try:
                image = next(frames)
            except StopIteration:
                raise PropagateError(
                    f"video {self.path}: frame {index} cannot be decoded (the stream ended after {index} of "
                    f"{len(self.names)} frames): check the file"
                ) from None
            except Exception as exc:
                raise PropagateError(f"video {self.path}: frame {index} cannot be decoded "
                                     f"({exc.__class__.__name__})") from None
            yield Frame(index, self.names[index], image)
        frames.close()

    def frame(self, index: int) -> np.ndarray:
        index = self._check_position(index)
        try:
            return self._file.frame(index)
        except PropagateError:
            raise
        except Exception as exc:  # FFmpeg/decord errors, or a stream that ends before the frame
            raise PropagateError(f"video {self.path}: frame {index} cannot be decoded ({_first_line(exc)}): "
                                 "check the file") from None


class FrameSelection(VideoSource):
    """Some frames of a video (``run --frames A:B --stride N``): positions ``A, A+N, ... < B`` of ``source``, read
    in order and renumbered 0, 1, ...; each keeps its name in the video (results are named after the source
    frames), and :meth:`source_index` gives its position there. ``fps`` is the video's divided by the stride, so an
    overlay lasts as long as the frames it shows."""

    def __init__(self, source: VideoSource, start: int, stop: int, stride: int):
        self.source = source
        self.start, self.stop, self.stride = start, stop, stride
        self.positions = list(range(start, stop, stride))
        self.path = source.path
        self.names = [source.names[p] for p in self.positions]
        self.native_size = source.native_size
        self.fps = source.fps / stride

    @property
    def whole(self) -> VideoSource:
        return self.source

    def source_index(self, index: int) -> int:
        return self.positions[index]

    def __iter__(self) -> Iterator[Frame]:
        if isinstance(self.source, FolderSource):  # files: read only the chosen ones
            for index, position in enumerate(self.positions):
                yield Frame(index, self.names[index], self.source.frame(position))
            return
        wanted = iter(enumerate(self.positions))
        index, position = next(wanted)
        frames = iter(self.source)
        try:
            for frame in frames:  # a video file decodes every frame up to the last chosen one, in order
                if frame.index == position:
                    yield Frame(index, self.names[index], frame.image)
                    step = next(wanted, None)
                    if step is None:
                        return
                    index, position = step
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()

    def frame(self, index: int) -> np.ndarray:
        return self.source.frame(self.positions[self._check_position(index)])


def parse_frame_range(text: str | None, count: int) -> tuple[int, int]:
    """``--frames A:B`` -> ``(A, B)``: frames A to B-1 (positions from 0, as in Python; ``A:`` to the end, ``:B``
    from the start) of a video of ``count`` frames; a PropagateError for anything that is not a non-empty range
    inside the video."""
    if text is None:
        return 0, count
    parts = text.split(":")
    if len(parts) != 2:
        raise PropagateError(f"--frames {text!r}: give a range A:B (frames A to B-1, counted from 0; A: to the end, "
                             ":B from the start)")
    try:
        start = int(parts[0]) if parts[0].strip() else 0
        stop = int(parts[1]) if parts[1].strip() else count
    except ValueError:
        raise PropagateError(f"--frames {text!r}: A and B must be whole numbers, e.g. --frames 10:50") from None
    if start < 0 or stop < 0:
        raise PropagateError(f"--frames {text!r}: frames are counted from 0; give A and B between 0 and {count}")
    if start >= count:
        raise PropagateError(f"--frames {text!r}: the video has {count} frames (0..{count - 1}), so A must be at most "
                             f"{count - 1}")
    if stop > count:
        raise PropagateError(f"--frames {text!r}: the video has {count} frames, so B must be at most {count} (B is "
                             "the first frame not read)")
    if stop <= start:
        raise PropagateError(f"--frames {text!r} is empty: B must be greater than A (frames A to B-1 are read)")
    return start, stop


def select_frames(source: VideoSource, frames: str | None = None, stride: int = 1) -> VideoSource:
    """The frames of ``source`` that ``run --frames A:B --stride N`` reads (:class:`FrameSelection`), or ``source``
    itself when they are all of them; a PropagateError for a bad range or stride."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise PropagateError(f"--stride {stride!r}: give a whole number of at least 1 (1 reads every frame)")
    start, stop = parse_frame_range(frames, len(source))
    if (start, stop, stride) == (0, len(source), 1):
        return source
    chosen = FrameSelection(source, start, stop, stride)
    if len(chosen) < 2:
        raise PropagateError(f"--frames {start}:{stop} --stride {stride} reads 1 frame ({chosen.names[0]}): "
                             "propagation needs at least 2; widen the range or lower the stride")
    return chosen


def open_video(path: str | Path, reader: str = "auto") -> VideoSource:
    """Open a frame folder or a video file; a clear error for anything else.

    ``reader`` picks the video file reader: ``auto`` (``$PROPAGATE_VIDEO_READER`` if set, else decord where it is
    installed, else PyAV), ``decord`` or ``pyav``. Folders ignore it.
    """
    path = Path(path)
    if not path.exists():
        raise PropagateError(f"video {path} does not exist: give a folder of frames or a video file")
    if path.is_dir():
        return FolderSource(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSource(path, reader)
    raise PropagateError(
        f"{path} is neither a folder of frames nor a video file ({', '.join(sorted(VIDEO_SUFFIXES))})"
    )


def processing_size(native_wh: tuple[int, int], resize: ResizeConfig) -> tuple[int, int]:
    """The (W, H) frames are resized to before feature extraction.

    ``resize.size`` forces a size; otherwise the short side becomes ``short_side`` and the long side is scaled with
    it and floored to a multiple of ``multiple`` (DIFT/DINO: 854x480 -> 832x480). Unless ``resize.upscale``, a
    short side below ``short_side`` is not enlarged: it is kept, floored to a multiple (640x360 -> 608x352; at
    least one multiple).
    """
    if resize.size:
        width, height = (int(v) for v in resize.size)
        return width, height
    width, height = native_wh
    short, m = int(resize.short_side), int(resize.multiple)
    if not resize.upscale and short > min(width, height):
        short = max(m, min(width, height) // m * m)  # a short side below one multiple still becomes one multiple
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
    import torch  # imported here: reading and scoring frames needs no torch

    if (image.shape[1], image.shape[0]) != tuple(size_wh):
        image = cv2.resize(image, tuple(size_wh), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
