"""Masks: label files (indexed PNGs with the DAVIS palette) and their encoding as soft labels on the feature grid.

Indices: 0 = background, 1..N = objects, 255 = void (not scored; treated as background when propagating).
A first mask becomes one-hot labels ``[N+1, h, w]`` on the grid (:func:`mask_to_labels`); propagated soft labels
become a mask at native size again (:func:`labels_to_mask`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

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


MAX_FLAT_COLOURS = 32  # colours outside the DAVIS palette read as objects (a paint tool's flat fills)


def _rgb_to_indices(rgb: np.ndarray, path: Path) -> np.ndarray:
    """Map the colours of ``[H, W, 3]`` to indices: DAVIS palette colours to their index; flat colours outside the
    palette (a paint tool's fills) each to the lowest free object id, black staying background, with one ``note:``
    line giving the mapping. Colours that look anti-aliased (too many, or a colour on no 3x3 patch of its own: an
    edge shade) are an error: turned into objects they would be stray objects along every edge."""
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2].astype(np.int32)
    pal = DAVIS_PALETTE.astype(np.int32)
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lookup = {int(c): i for i, c in reversed(list(enumerate(pal_code)))}  # first index wins for duplicate colours
    values, first, inverse = np.unique(code.ravel(), return_index=True, return_inverse=True)
    unknown = [(int(at), int(v)) for v, at in zip(values, first) if int(v) not in lookup]
    if unknown:
        unknown.sort()  # in order of first appearance (row by row)
        edges = [v for _, v in unknown if not _has_patch(code == v)]
        if len(unknown) > MAX_FLAT_COLOURS or edges:
            v = edges[0] if edges else unknown[0][1]
            raise PropagateError(
                f"mask {path} is RGB with {len(unknown)} colour(s) outside the DAVIS palette, e.g. "
                f"({v >> 16}, {(v >> 8) & 255}, {v & 255}), that look anti-aliased (shades along edges): paint with "
                "anti-aliasing off (a hard pencil, flat colours, black background) or save the mask as an indexed "
                "PNG (0 = background, 1..N = objects)"
            )
        used = {lookup[int(v)] for v in values if int(v) in lookup}
        free = iter(i for i in range(1, VOID) if i not in used)
        for _, v in unknown:
            lookup[v] = next(free, VOID)
        if VOID in (lookup[v] for _, v in unknown):
            raise PropagateError(f"mask {path} has {len(unknown) + len(used)} colours: at most 254 objects fit")
        mapping = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255}) -> {lookup[v]}" for _, v in unknown)
        print(f"note: mask {path} is RGB with flat colours outside the DAVIS palette, read as objects: {mapping}",
              file=sys.stderr)
    table = np.array([lookup[int(v)] for v in values], dtype=np.uint8)
    return table[inverse].reshape(code.shape)


def _has_patch(where: np.ndarray) -> bool:
    """Whether ``where [H, W]`` bool holds a full 3x3 patch somewhere (a fill, not an edge shade)."""
    if where.shape[0] < 3 or where.shape[1] < 3:
        return bool(where.any())
    inner = where[1:-1, 1:-1].copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            inner &= where[dy:dy + where.shape[0] - 2, dx:dx + where.shape[1] - 2]
    return bool(inner.any())


@dataclass(frozen=True)
class ObjectInfo:
    """An object's name and category (COCO ``categories``); default ``object N`` and ``object``."""

    name: str
    category: str = "object"


def default_object(obj: int) -> ObjectInfo:
    """The info of an object nobody named: ``object N``, category ``object``."""
    return ObjectInfo(f"object {obj}", "object")


def remove_small_regions(mask: np.ndarray, min_area: int, keep: Sequence[int] = ()) -> np.ndarray:
    """``mask [H, W]`` uint8 with every connected region (8-connected) of an object smaller than ``min_area`` pixels
    made background, per object; objects in ``keep`` are left whole. Returns ``mask`` itself when nothing changes."""
    import cv2

    if min_area <= 0:
        return mask
    out = mask
    for obj in object_ids(mask):
        if obj in keep:
            continue
        inside = mask == obj
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # its regions lie in its bounding box
        count, regions, stats, _ = cv2.connectedComponentsWithStats(inside[box].astype(np.uint8), connectivity=8)
        small = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] < min_area]
        if small:
            out = out.copy() if out is mask else out
            out[box][np.isin(regions, small)] = 0
    return out


def object_ids(mask: np.ndarray) -> list[int]:
    """Object indices present in ``mask`` (excluding background 0 and void 255), sorted."""
    if mask.dtype == np.uint8 and mask.ndim == 2 and mask.size:
        import cv2

        present = np.flatnonzero(cv2.calcHist([np.ascontiguousarray(mask)], [0], None, [256], [0, 256])[:, 0])
    else:
        present = np.unique(mask)
    return [int(v) for v in present if v not in (0, VOID)]


def without_objects(mask: np.ndarray, objects: Iterable[int]) -> np.ndarray:
    """A copy of ``mask [H, W]`` uint8 with ``objects`` made background (0)."""
    return np.where(np.isin(mask, sorted(objects)), 0, mask).astype(np.uint8)


def paint_objects(base: np.ndarray, annotation: np.ndarray, objects: Iterable[int],
                  clear: Iterable[int] = ()) -> np.ndarray:
    """A copy of ``base [H, W]`` uint8 in which ``objects`` (and ``clear``) are made background, then ``objects`` are
    painted where ``annotation [H, W]`` holds them: a partial keyframe merged over a frame's other labels."""
    objects = sorted(objects)
    out = without_objects(base, [*objects, *clear])
    given = np.isin(annotation, objects)
    out[given] = annotation[given]
    return out


def read_keyframes(path: str | Path, names: Sequence[str], size_wh: tuple[int, int]) -> dict[int, np.ndarray]:
    """Keyframe masks ``{frame index: [H, W] uint8}`` from a mask file (frame 0) or a folder of PNGs named like frames.

    In a folder, ``00040.png`` is the mask of the frame named ``00040`` (the frame folder's file stems, or ``00000``,
    ``00001``, ... for a video file); any frames, sparse. Any other file (a JPEG, a note; hidden files aside) is an
    error: silently skipping a keyframe the user meant to give would change the results without a word. A ``.xml``
    or ``.zip`` file is a CVAT for video 1.1 export (:func:`propagate.cvat.read_cvat_keyframes`). Every mask must
    have the frames' size; together they must label at least one object. A keyframe file beside the PNGs
    (``keyframes.yaml``: partial keyframes, absences, object names) is read by :func:`read_keyframe_file`.
    """
    path = Path(path)
    if path.is_dir():
        visible = [p for p in path.iterdir() if not p.name.startswith(".") and p.name not in KEYFRAME_FILES]
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


KEYFRAME_FILES = ("keyframes.yaml", "keyframes.yml", "keyframes.json")  # the keyframe folder's file form


@dataclass
class KeyframeFile:
    """What a keyframe folder's ``keyframes.yaml`` says (:func:`read_keyframe_file`): the partial keyframes
    (``{frame: objects its PNG gives}``), the absence marks (``{frame: objects absent from it on}``) and the objects'
    names and categories."""

    partial: dict[int, frozenset[int]]
    absent: dict[int, frozenset[int]]
    objects: dict[int, ObjectInfo]


def read_keyframe_file(folder: str | Path, names: Sequence[str],
                       masks: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], KeyframeFile] | None:
    """The keyframe file of a ``--mask`` folder, if it holds one, checked against the video's frame ``names`` and
    the folder's masks ``{frame: [H, W] uint8}``; returns the masks (a partial keyframe's holding its objects only)
    and what the file says. None if there is no keyframe file. The form (YAML or JSON)::

        frames:                    # by frame name, quoted
          "00040": {objects: [2]}  # 00040.png annotates object 2 only (the others go on being propagated)
          "00075": {absent: [1]}   # object 1 is not in the frame from 00075 until a keyframe gives it again
        objects:                   # optional: names and categories (COCO categories)
          1: {name: left bottle, category: bottle}
          2: cup                   # a name alone: category "object"

    Anything ambiguous is an error naming the file: an object both given and absent on a frame, a frame name the
    video does not have, ``objects`` on a frame with no PNG or naming an object its PNG does not hold, an object
    marked absent that no keyframe gives, unknown keys.
    """
    from propagate.config import read_yaml

    folder = Path(folder)
    found = [folder / n for n in KEYFRAME_FILES if (folder / n).is_file()]
    if not found:
        return None
    if len(found) > 1:
        raise PropagateError(f"mask folder {folder} holds {found[0].name} and {found[1].name}: keep one keyframe file")
    path = found[0]
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))  # JSON is YAML
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise PropagateError(f"keyframe file {path} is not readable YAML/JSON ({exc.__class__.__name__}): fix its "
                             "syntax (see the README, Keyframes)") from None
    example = '(e.g. frames: {"00040": {objects: [2]}, "00075": {absent: [1]}})'
    if data is None:
        data = {}
    if not isinstance(data, dict) or set(data) - {"frames", "objects"}:
        extra = sorted(map(str, set(data) - {"frames", "objects"})) if isinstance(data, dict) else []
        raise PropagateError(f"keyframe file {path}: {'unknown key ' + repr(extra[0]) if extra else 'not a mapping'}:"
                             f" give 'frames' and optionally 'objects' {example}")
    index = {name: i for i, name in enumerate(names)}
    frames = data.get("frames") or {}
    if not isinstance(frames, dict):
        raise PropagateError(f"keyframe file {path}: 'frames' must map frame names to entries {example}")
    partial: dict[int, frozenset[int]] = {}
    absent: dict[int, frozenset[int]] = {}
    out = dict(masks)
    for name, entry in frames.items():
        if not isinstance(name, str):
            raise PropagateError(f"keyframe file {path}: frame {name!r} is not a quoted frame name: quote it "
                                 f"(\"{names[0]}\": ...; YAML reads 00040 unquoted as a number)")
        if name not in index:
            raise PropagateError(f"keyframe file {path}: frame {name!r} is no frame of the video (frames are "
                                 f"{names[0]} .. {names[-1]})")
        t = index[name]
        if not isinstance(entry, dict) or not entry or set(entry) - {"objects", "absent"}:
            raise PropagateError(f"keyframe file {path}: frame {name!r}: give objects: [ids] and/or absent: [ids] "
                                 f"{example}")
        given = _ids(entry.get("objects"), path, name, "objects") if "objects" in entry else None
        gone = _ids(entry.get("absent"), path, name, "absent") if "absent" in entry else []
        if given is not None:
            if t not in masks:
                raise PropagateError(f"keyframe file {path}: frame {name!r} lists objects {given} but the folder has "
                                     f"no {name}.png: add the PNG, or list the frame's absences only")
            missing = [o for o in given if not (masks[t] == o).any()]
            if missing:
                raise PropagateError(f"keyframe file {path}: frame {name!r} lists object {missing[0]}, which "
                                     f"{name}.png does not hold (it holds {object_ids(masks[t]) or 'none'})")
            both = sorted(set(given) & set(gone))
            if both:
                raise PropagateError(f"keyframe file {path}: frame {name!r} gives object {both[0]} and marks it "
                                     "absent: keep one")
            partial[t] = frozenset(given)
            out[t] = np.where(np.isin(masks[t], given), masks[t], 0).astype(np.uint8)
        elif t in masks and gone:
            both = [o for o in gone if (masks[t] == o).any()]
            if both:
                raise PropagateError(f"keyframe file {path}: frame {name!r} marks object {both[0]} absent but "
                                     f"{name}.png holds it: erase it from the PNG, or drop the absence")
        if gone:
            absent[t] = frozenset(gone)
    known = {o for t, m in out.items() for o in object_ids(m)}
    for t, gone in sorted(absent.items()):
        stray = sorted(gone - known)
        if stray:
            raise PropagateError(f"keyframe file {path}: frame {names[t]!r} marks object {stray[0]} absent, but no "
                                 "keyframe PNG gives it")
    return dict(sorted(out.items())), KeyframeFile(partial, absent, _object_infos(data.get("objects"), path))


def _ids(value: object, path: Path, name: str, key: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 < v < VOID for v in value):
        raise PropagateError(f"keyframe file {path}: frame {name!r}: {key} must be a list of object ids 1..254, "
                             f"got {value!r}")
    return sorted(set(value))


def _object_infos(value: object, path: Path) -> dict[int, ObjectInfo]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PropagateError(f"keyframe file {path}: 'objects' must map object ids to names "
                             "(e.g. objects: {1: {name: bottle, category: bottle}})")
    infos = {}
    for key, info in value.items():
        obj = int(key) if isinstance(key, str) and key.isdigit() else key
        if not isinstance(obj, int) or isinstance(obj, bool) or not 0 < obj < VOID:
            raise PropagateError(f"keyframe file {path}: objects: {key!r} is not an object id 1..254")
        if isinstance(info, str) and info.strip():
            infos[obj] = ObjectInfo(info.strip())
        elif (isinstance(info, dict) and not set(info) - {"name", "category"}
              and all(isinstance(v, str) and v.strip() for v in info.values())):
            base = default_object(obj)
            infos[obj] = ObjectInfo(str(info.get("name", base.name)).strip(),
                                    str(info.get("category", base.category)).strip())
        else:
            raise PropagateError(f"keyframe file {path}: objects: {obj}: give a name, or {{name: ..., category: ...}}"
                                 f" (non-empty strings), not {info!r}")
    return dict(sorted(infos.items()))


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
        top = flat.max(dim=1, keepdim=True).values
        span = top - lo
        scale = torch.where(span > 0, span, torch.ones_like(span))
        # channels whose max is 0 stay as they are (DINO leaves them untouched)
        flat = torch.where(top > 0, (flat - lo) / scale, flat)
        up = flat.reshape(up.shape)
    # finite soft labels upsample and normalise to finite scores: no NaN to look for at full size
    winner = first_argmax(up, finite=bool(torch.isfinite(soft).all()))
    confidence = _object_confidence(probs, winner)
    index = winner.to(torch.uint8).cpu().numpy()
    if index.shape != tuple(native_hw):
        index = resize_nearest(index, (native_hw[1], native_hw[0]))
    return index, confidence


def first_argmax(scores: torch.Tensor, finite: bool = False) -> torch.Tensor:
    """``scores [K, H, W]`` -> ``[H, W]`` int64 index of the largest channel, the first on ties: ``argmax(dim=0)``
    (which it equals), as K - 1 elementwise passes, far faster than torch's reduction across channels on a CPU.
    Falls back to ``argmax`` where a score is NaN (argmax takes NaN as the largest); ``finite``: the caller knows
    there is none."""
    import torch

    if scores.shape[0] == 1 or (not finite and bool(torch.isnan(scores).any())):
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
