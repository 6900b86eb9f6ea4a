"""Masks: label files (indexed PNGs with the DAVIS palette) and their encoding as soft labels on the feature grid.

Indices: 0 = background, 1..N = objects, 255 = void (not scored; treated as background when propagating).
A first mask becomes one-hot labels ``[N+1, h, w]`` on the grid (:func:`mask_to_labels`); propagated soft labels
become a mask at native size again (:func:`labels_to_mask`).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from propagate.cvat import is_cvat_file, read_cvat_keyframes
from propagate.errors import PropagateError
from propagate.io import atomic_path, image_size

if TYPE_CHECKING:  # torch is imported by the functions that need it: reading and writing mask files needs none
    import torch

VOID = 255
LOSSY_FORMATS = {"JPEG", "MPO", "WEBP", "JPEG2000"}  # PIL format names of masks refused as lossy


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

    Refused: a lossy file (JPEG, WebP, JPEG 2000: compression noise would become objects), with the advice to save it
    as PNG. A greyscale (mode L) mask holding only 0 and 255 is a binary mask saved as black and white: 255 is read
    as object 1 (read as void it would label nothing), with a one-line ``note:`` on stderr.
    """
    path = Path(path)
    if path.is_dir():
        raise PropagateError(f"mask {path} is a folder: give the first frame's label PNG (a file) with --mask")
    if not path.is_file():
        raise PropagateError(f"mask {path} does not exist: give the first frame's label PNG with --mask")
    try:
        image_size(path, "mask")  # from the header: a decompression bomb is refused before decoding
        with Image.open(path) as img:
            if img.format in LOSSY_FORMATS:
                raise PropagateError(f"mask {path} is a {img.format} file, whose lossy compression turns edges into "
                                     "stray labels: save it as PNG (indexed or greyscale, 0 = background, "
                                     "1..N = objects)")
            img.load()
            mode = img.mode
            if mode in ("P", "L"):
                mask = np.array(img, dtype=np.uint8)
                if mode == "L" and VOID in mask and set(np.unique(mask).tolist()) <= {0, VOID}:
                    print(f"note: mask {path} is black and white (0/255): reading 255 as object 1", file=sys.stderr)
                    mask = (mask == VOID).astype(np.uint8)
            elif mode == "1":
                mask = np.array(img, dtype=np.uint8)
            elif mode in ("RGB", "RGBA"):
                mask = _rgb_to_indices(np.array(img.convert("RGB")), path)
            else:
                raise PropagateError(
                    f"mask {path} has image mode {mode}: save it as an indexed (P), greyscale (L) "
                    "or DAVIS-palette RGB PNG"
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
            f"mask {path} is RGB with colour ({v >> 16}, {(v >> 8) & 255}, {v & 255}) "
            "that is not in the DAVIS palette: "
            "save the mask as an indexed PNG (0 = background, 1..N = objects)"
        )
    table = np.array([lookup[int(v)] for v in values], dtype=np.uint8)
    return table[inverse].reshape(code.shape)


def object_ids(mask: np.ndarray) -> list[int]:
    """Object indices present in ``mask`` (excluding background 0 and void 255), sorted."""
    return [int(v) for v in np.unique(mask) if v not in (0, VOID)]


def read_keyframes(path: str | Path, names: Sequence[str], size_wh: tuple[int, int]) -> dict[int, np.ndarray]:
    """Keyframe masks ``{frame index: [H, W] uint8}`` from a mask file (frame 0) or a folder of PNGs named like frames.

    In a folder, ``00040.png`` is the mask of the frame named ``00040`` (the frame folder's file stems, or ``00000``,
    ``00001``, ... for a video file); any frames, sparse. Any other file (a JPEG, a note; hidden files aside) is an
    error: silently skipping a keyframe the user meant to give would change the results without a word. A ``.xml``
    or ``.zip`` file is a CVAT for video 1.1 export (:func:`propagate.cvat.read_cvat_keyframes`). Every mask must
    have the frames' size; together they must label at least one object.
    """
    path = Path(path)
    if path.is_dir():
        visible = [p for p in path.iterdir() if not p.name.startswith(".")]
        files = sorted((p for p in visible if p.is_file() and p.suffix.lower() == ".png"), key=lambda p: p.name)
        if not files:
            raise PropagateError(f"mask {path} is a folder with no PNG in it: give a mask PNG, or a folder of keyframe "
                                 f"PNGs named like their frames (e.g. {names[0]}.png)")
        others = sorted(p.name for p in visible if p not in files)
        if others:
            raise PropagateError(f"mask folder {path} holds {others[0]!r}, which is not a PNG mask: keyframe masks "
                                 f"are PNGs named like their frames (e.g. {names[0]}.png; save a JPEG mask as PNG); "
                                 "move anything else out")
        index = {name: i for i, name in enumerate(names)}
        masks = {}
        for file in files:
            if file.stem not in index:
                raise PropagateError(f"mask {file} is named like no frame of the video (frames are {names[0]} .. "
                                     f"{names[-1]}): name each keyframe's PNG after its frame")
            masks[index[file.stem]] = read_mask(file, size_wh)
    elif path.is_file() and is_cvat_file(path):
        masks = read_cvat_keyframes(path, names, size_wh)
    else:
        masks = {0: read_mask(path, size_wh)}
    require_objects(np.concatenate([m.ravel() for m in masks.values()]), path)
    return dict(sorted(masks.items()))


def check_mask(mask: np.ndarray, size_wh: tuple[int, int], where: str) -> np.ndarray:
    """A mask given as an array (the Python API), checked as :func:`read_mask` checks a file: ``[H, W]`` of the
    frames' size ``size_wh`` (W, H), integer ids 0..255 (any integer dtype, or bool for one object). Returns it as
    uint8; anything else is a PropagateError starting with ``where``."""
    mask = np.asarray(mask)
    width, height = size_wh
    if mask.shape != (height, width):
        raise PropagateError(f"{where}: the mask is {mask.dtype} {list(mask.shape)}, the frames are {width}x{height}: "
                             "give a [H, W] uint8 mask of the frame's size")
    _check_ids(mask, where)
    return mask.astype(np.uint8)


def _check_ids(mask: np.ndarray, where: str | Path) -> None:
    """Ids must be integers 0..255: a wider id would wrap around in uint8 (300 becomes object 44)."""
    if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer):
        raise PropagateError(f"{where}: the mask is {mask.dtype}: give integer ids (uint8: 0 background, 1..N "
                             "objects, 255 void)")
    if mask.dtype != np.uint8 and mask.size and (int(mask.min()) < 0 or int(mask.max()) > VOID):
        bad = int(mask.max()) if int(mask.max()) > VOID else int(mask.min())
        raise PropagateError(f"{where}: the mask holds id {bad}, outside 0..255: give uint8 ids (0 background, "
                             "1..254 objects, 255 void)")


def require_objects(mask: np.ndarray, path: str | Path) -> list[int]:
    """Object ids of a mask that must label something; a PropagateError naming ``path`` if it holds none, or ids
    outside 0..255."""
    _check_ids(np.asarray(mask), f"mask {path}")
    ids = object_ids(mask)
    if not ids:
        raise PropagateError(
            f"mask {path} holds no object (only background 0 / void 255): label at least one object 1..N"
        )
    return ids


def write_mask(path: str | Path, mask: np.ndarray) -> None:
    """Write ``[H, W]`` uint8 indices as an indexed PNG with the DAVIS palette, atomically."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(DAVIS_PALETTE.flatten().tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


# ---------------------------------------------------------------------------------------------- encode / decode


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel, as PIL's NEAREST resize computes it (a running double sum of the scale
    starting at half a step, truncated), so masks resize bit-identically to the reference scripts' PIL calls."""
    scale = n_in / n_out
    steps = np.full(n_out, scale)
    steps[0] = 0.5 * scale
    return np.minimum(np.add.accumulate(steps).astype(np.int64), n_in - 1)


def resize_nearest(mask: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an index image ``[H, W]`` to ``size_wh`` (W, H), identical to PIL's NEAREST."""
    rows = _nearest_index(mask.shape[0], size_wh[1])
    cols = _nearest_index(mask.shape[1], size_wh[0])
    return mask[rows][:, cols]


def mask_to_labels(mask: np.ndarray, num_objects: int, grid_hw: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """First-frame mask ``[H, W]`` (0 background, 1..N objects, 255 void -> background) -> labels ``[N+1, h, w]``.

    ``nearest``: the mask is resized to the grid with nearest sampling, then one-hot (DINO/DIFT). ``area``: the
    one-hot mask is area-averaged into each cell (soft fractions).
    """
    import torch
    import torch.nn.functional as F

    mask = np.where(mask == 255, 0, mask).astype(np.int64)
    if mask.max() > num_objects:
        raise ValueError(f"mask holds index {mask.max()} > num_objects {num_objects}")
    h, w = grid_hw
    if mode == "nearest":
        small = torch.from_numpy(resize_nearest(mask.astype(np.uint8), (w, h)).astype(np.int64))
        return F.one_hot(small, num_objects + 1).permute(2, 0, 1).float()
    if mode == "area":
        one_hot = F.one_hot(torch.from_numpy(mask), num_objects + 1).permute(2, 0, 1).float()
        return F.adaptive_avg_pool2d(one_hot[None], (h, w))[0]
    raise PropagateError(f"unknown label_downsample {mode!r}: choose nearest or area")


def labels_to_mask(
    soft: torch.Tensor, proc_hw: tuple[int, int], native_hw: tuple[int, int], minmax: bool = True
) -> np.ndarray:
    """Soft labels ``[K, h, w]`` -> index mask ``[H, W]`` uint8 at native size (see :func:`decode_mask`)."""
    return decode_mask(soft, proc_hw, native_hw, minmax)[0]


def decode_mask(
    soft: torch.Tensor, proc_hw: tuple[int, int], native_hw: tuple[int, int], minmax: bool = True
) -> tuple[np.ndarray, dict[int, float]]:
    """Soft labels ``[K, h, w]`` -> index mask ``[H, W]`` uint8 at native size, and a confidence per object.

    Bilinear upsampling to the processing size, optional per-channel min-max normalisation (DINO's ``norm_mask``),
    argmax, then a nearest resize to the native size.

    Confidence of object ``o`` (1..K-1): the mean, over the processing-size pixels the mask gives to ``o``, of its
    upsampled soft label's margin over the best other label, clipped to [0, 1]; 0 where the object is lost (no
    pixel). Soft labels sum to 1 per cell, so a confident object is near 1 and a contested one near 0.
    """
    import torch
    import torch.nn.functional as F

    up = F.interpolate(soft[None].float(), size=tuple(proc_hw), mode="bilinear", align_corners=False)[0]
    probs = up
    if minmax:
        flat = up.reshape(up.shape[0], -1)
        lo = flat.min(dim=1, keepdim=True).values
        span = flat.max(dim=1, keepdim=True).values - lo
        scale = torch.where(span > 0, span, torch.ones_like(span))
        top = flat.max(dim=1, keepdim=True).values
        # channels whose max is 0 stay as they are (DINO leaves them untouched)
        flat = torch.where(top > 0, (flat - lo) / scale, flat)
        up = flat.reshape(up.shape)
    winner = first_argmax(up)
    confidence = _object_confidence(probs, winner)
    index = winner.to(torch.uint8).cpu().numpy()
    if index.shape != tuple(native_hw):
        index = resize_nearest(index, (native_hw[1], native_hw[0]))
    return index, confidence


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores [K, H, W]`` -> ``[H, W]`` int64 index of the largest channel, the first on ties: ``argmax(dim=0)``
    (which it equals), as K - 1 elementwise passes, far faster than torch's reduction across channels on a CPU.
    Falls back to ``argmax`` where a score is NaN (argmax takes NaN as the largest)."""
    import torch

    if scores.shape[0] == 1 or bool(torch.isnan(scores).any()):
        return scores.argmax(dim=0)
    best = scores[0].clone()
    index = torch.zeros(best.shape, dtype=torch.int64, device=scores.device)
    for k in range(1, scores.shape[0]):
        index.masked_fill_(scores[k] > best, k)  # strictly greater: an earlier channel keeps a tie
        torch.maximum(best, scores[k], out=best)
    return index


def _object_confidence(probs: torch.Tensor, winner: torch.Tensor) -> dict[int, float]:
    """``{object: mean margin}`` of soft labels ``probs [K, H, W]`` over the pixels ``winner [H, W]`` gives it:
    per pixel, ``probs[obj]`` minus the largest of the other labels there."""
    if probs.shape[0] < 2:
        return {}
    confidence = {}
    for obj in range(1, probs.shape[0]):
        where = winner == obj
        if not bool(where.any()):
            confidence[obj] = 0.0
            continue
        there = probs[:, where]  # [K, n] the labels at the object's pixels, in row-major order
        other = there[[j for j in range(there.shape[0]) if j != obj]].max(dim=0).values
        margin = (there[obj] - other).double().mean()
        confidence[obj] = float(min(1.0, max(0.0, float(margin))))
    return confidence
