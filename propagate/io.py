"""Atomic file writes shared by every writer, and bounded reads of what users give.

Every output file is written to a temporary name in the same folder and renamed into place, so an interrupted
run never leaves a truncated file that looks complete. Whole results folders are owned by :mod:`propagate.runs`.

Reads are bounded before any work: an image's size is read from its header and refused beyond
:func:`max_pixels` (a decompression bomb is never decoded), and JSON nested deeper than :data:`MAX_JSON_DEPTH` is
refused before it is parsed.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

from propagate.errors import PropagateError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}  # a folder of frames holds these (natural order)
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}  # video files (decord or PyAV)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    The temporary name keeps ``path``'s suffix so that writers that pick a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes files private; results are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------------- bounded reads

MAX_PIXELS_ENV = "PROPAGATE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000  # 100 megapixels: three times an 8K frame
MAX_JSON_DEPTH = 100  # nesting of lists and objects (a points file needs 4)


def max_pixels() -> int:
    """The largest image (width x height) read: ``$PROPAGATE_MAX_PIXELS``, default :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw)) if re.fullmatch(r"\d+(\.\d*)?([eE]\d+)?", raw) else 0
    except OverflowError:
        value = 0
    if value < 1:
        raise PropagateError(f"{MAX_PIXELS_ENV}={raw!r} is not valid: give a number of pixels >= 1 (e.g. 200000000)")
    return value


def image_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """``(W, H)`` of an image file, read from its header without decoding it; an image larger than
    :func:`max_pixels` is a PropagateError naming ``what`` and the file. A file PIL cannot identify raises PIL's
    ``UnidentifiedImageError`` (an ``OSError``), as ``Image.open`` does.

    PIL's own decompression-bomb limit is set to the same number, so the decoding that follows neither warns nor
    refuses an image this check let through.
    """
    from PIL import Image  # here: writers that import this module need no PIL

    limit = max_pixels()
    Image.MAX_IMAGE_PIXELS = None  # opening reads the header only; the size is judged here, against our limit
    try:
        with Image.open(path) as img:
            width, height = img.size
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    if width * height > limit:
        raise PropagateError(f"{what} {path} is {width}x{height}, more than {limit} pixels (a decompression bomb, or "
                             f"an image too large to decode): shrink it, or set {MAX_PIXELS_ENV} higher if you mean it")
    return width, height


def _nesting(text: str) -> int:
    """The deepest nesting of JSON lists and objects in ``text`` (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", re.sub(r'"(?:\\.|[^"\\])*"', "", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def loads_json(text: str) -> object:
    """``json.loads(text)``, refusing (``ValueError``) a document nested deeper than :data:`MAX_JSON_DEPTH`
    before parsing it, so no file can exhaust the parser's recursion."""
    if _nesting(text) > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(text)
