"""Mask label files: indexed PNGs with the DAVIS palette.

Indices: 0 = background, 1..N = objects, 255 = void (not scored; treated as background when propagating).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from propagate.errors import PropagateError
from propagate.io import atomic_path

VOID = 255


def _davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map: index bits spread over the high bits of R, G and B."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        r = g = b = 0
        value = index
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


DAVIS_PALETTE: np.ndarray = _davis_palette()  # [256, 3] uint8; 1 -> (128, 0, 0), 2 -> (0, 128, 0), ...


def read_mask(path: str | Path, size_wh: tuple[int, int] | None = None) -> np.ndarray:
    """Read a label mask as ``[H, W]`` uint8 indices.

    Accepts an indexed PNG (mode P), a greyscale PNG of indices (mode L), or an RGB(A) PNG drawn with DAVIS palette
    colours (mapped back to indices). ``size_wh`` (W, H), if given, must match the mask's size.
    """
    path = Path(path)
    if not path.is_file():
        raise PropagateError(f"mask {path} does not exist: give the first frame's label PNG with --mask")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L"):
                mask = np.array(img, dtype=np.uint8)
            elif mode == "1":
                mask = np.array(img, dtype=np.uint8)
            elif mode in ("RGB", "RGBA"):
                mask = _rgb_to_indices(np.array(img.convert("RGB")), path)
            else:
                raise PropagateError(
                    f"mask {path} has image mode {mode}: save it as an indexed (P), greyscale (L) or DAVIS-palette RGB PNG"
                )
    except (UnidentifiedImageError, OSError) as exc:
        raise PropagateError(f"mask {path} is not a readable image ({exc.__class__.__name__}): give a PNG") from None
    if size_wh is not None and (mask.shape[1], mask.shape[0]) != tuple(size_wh):
        raise PropagateError(
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but the frames are {size_wh[0]}x{size_wh[1]}: "
            "give the mask of the first frame at the frames' size"
        )
    return mask


def _rgb_to_indices(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Map DAVIS palette colours ``[H, W, 3]`` to indices; any other colour is an error."""
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    pal = DAVIS_PALETTE.astype(np.int32)
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lookup = {int(c): i for i, c in reversed(list(enumerate(pal_code)))}  # first index wins for duplicate colours
    values, inverse = np.unique(code, return_inverse=True)
    unknown = [int(v) for v in values if int(v) not in lookup]
    if unknown:
        v = unknown[0]
        raise PropagateError(
            f"mask {path} is RGB with colour ({v >> 16}, {(v >> 8) & 255}, {v & 255}) that is not in the DAVIS palette: "
            "save the mask as an indexed PNG (0 = background, 1..N = objects)"
        )
    table = np.array([lookup[int(v)] for v in values], dtype=np.uint8)
    return table[inverse].reshape(code.shape)


def object_ids(mask: np.ndarray) -> list[int]:
    """Object indices present in ``mask`` (excluding background 0 and void 255), sorted."""
    return [int(v) for v in np.unique(mask) if v not in (0, VOID)]


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write ``[H, W]`` uint8 indices as an indexed PNG with the DAVIS palette, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(DAVIS_PALETTE.flatten().tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
