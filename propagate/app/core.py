"""What the web app does, without the web: what the server shares, guards on paths and uploads, masks to and from
the brush layer, the confidence strip, and click-to-correspond.

Nothing here imports gradio, so all of it is tested without a browser; the page (:mod:`propagate.app.ui`: its
layout and its handlers) calls it. Propagation itself is the session's (:mod:`propagate.session`); the app never
re-implements it.
"""
from __future__ import annotations

import hashlib
import html
import shutil
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from propagate.config import Config, MatchConfig, ResizeConfig
from propagate.correspond import composite, edit_samples, fit_edit, match_points, sample_features
from propagate.errors import PropagateError
from propagate.features.base import FeatureExtractor
from propagate.labels import DAVIS_PALETTE
from propagate.render import caption, draw_points
from propagate.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoSource, open_video, processing_size, to_tensor

MAX_OBJECTS = 20  # brush colours offered (DAVIS palette indices 1..MAX_OBJECTS)
LAYER_ALPHA = 0.6  # opacity of the mask layer in the editor, so the frame shows through
PAINT_ALPHA = round(255 * LAYER_ALPHA) // 2  # a layer pixel at least this opaque is painted; under it, erased
STRIP_MARKED = 3  # how many of the least confident frames the strip marks
BASELINE_CAPTION = "BASELINE features (not DIFT)"  # written on correspond results with the baseline


@dataclass
class Server:
    """What every browser session shares: settings, the extractor (built once), the root and a temp folder."""

    config: Config
    extractor: FeatureExtractor
    root: Path
    work: Path  # the server's temporary folder; each workspace gets a subfolder
    features_label: str
    max_upload_bytes: int
    video: Path | None = None  # opened in every new browser session


# ------------------------------------------------------------------------------------------------ paths


def resolve_under_root(root: Path, text: str) -> Path:
    """The existing path ``text`` (relative to ``root`` or absolute) if it lies under ``root``; refused otherwise.

    Symbolic links are resolved first, so a link inside ``root`` that points outside it is refused too.
    """
    root = Path(root).resolve()
    text = (text or "").strip()
    if not text:
        raise PropagateError("no path given: type a video file or frame folder under the server's --root")
    path = (root / text).resolve()
    if not path.is_relative_to(root):
        raise PropagateError(f"{text} is outside the server's --root {root}: only files under it can be opened")
    if not path.exists():
        raise PropagateError(f"{text} does not exist under {root}: give a video file or a folder of frames")
    return path


# ------------------------------------------------------------------------------------------------ uploads


def open_upload(upload: str | Path, work: Path, max_bytes: int) -> VideoSource:
    """Open an uploaded video file (mp4, ...) or a zip of frames; a zip is unpacked into ``work`` (a new folder).

    Refused with one line naming the file: an upload over ``max_bytes`` (a zip's unpacked frames too), a file that
    is neither, a zip without frames, anything that does not decode, and a clip of fewer than 2 frames.
    """
    upload = Path(upload)
    name = upload.name
    size = upload.stat().st_size
    if size > max_bytes:
        raise PropagateError(f"upload {name} is {size / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit "
                             "(--max-upload-mb): open it by path under --root instead")
    suffix = upload.suffix.lower()
    if suffix not in VIDEO_SUFFIXES | {".zip"}:
        raise PropagateError(f"upload {name} is neither a video file ({', '.join(sorted(VIDEO_SUFFIXES))}) nor a "
                             "zip of frames")
    try:
        source = open_video(_unzip_frames(upload, work, max_bytes) if suffix == ".zip" else upload)
        if len(source) < 2:
            raise PropagateError(f"upload {name} has {len(source)} frame: a video needs at least 2")
        next(iter(source))  # decode the first frame now, so a broken file is reported here and not mid-propagation
    except PropagateError as exc:  # name the upload as the user knows it, not by the server's folders
        text = str(exc).replace(str(upload), f"upload {name}").replace(str(work / "frames"), f"upload {name}")
        raise PropagateError(text.replace("video upload ", "upload ")) from None
    return source


def _unzip_frames(upload: Path, work: Path, max_bytes: int) -> Path:
    """Unpack the image files of a zip (by base name, folders flattened: no member can land outside ``work``)."""
    try:
        archive = zipfile.ZipFile(upload)
    except (zipfile.BadZipFile, OSError):
        raise PropagateError(f"upload {upload.name} is not a readable zip file") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_SUFFIXES
                   and not Path(m.filename).name.startswith(".")]
        if not members:
            raise PropagateError(f"upload {upload.name} holds no frames (.jpg/.jpeg/.png/.bmp)")
        if sum(m.file_size for m in members) > 4 * max_bytes:
            raise PropagateError(f"upload {upload.name} unpacks to more than {4 * max_bytes / 2**20:.0f} MB of frames")
        names = [Path(m.filename).name for m in members]
        if len(set(names)) != len(names):
            raise PropagateError(f"upload {upload.name} holds two frames with the same name in different folders")
        folder = work / "frames"
        folder.mkdir(parents=True)
        for member, base in zip(members, names):
            try:
                with archive.open(member) as src, open(folder / base, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
                # a failed CRC, damaged or cut-off compressed data, an unknown compression, an encrypted member
                raise PropagateError(f"upload {upload.name} is a damaged zip: {member.filename} cannot be unpacked "
                                     f"({str(exc) or exc.__class__.__name__}); zip the frames again") from None
    return folder


# ------------------------------------------------------------------------------------------------ masks <-> layer


def colour_hex(index: int) -> str:
    """The DAVIS palette colour of object ``index`` as ``#rrggbb``."""
    r, g, b = (int(v) for v in DAVIS_PALETTE[index])
    return f"#{r:02x}{g:02x}{b:02x}"


def mask_to_layer(mask: np.ndarray) -> np.ndarray:
    """``mask [H, W]`` uint8 indices -> the editor's layer ``[H, W, 4]`` uint8: palette colours, see-through."""
    layer = np.zeros((*mask.shape, 4), np.uint8)
    objects = (mask > 0) & (mask <= MAX_OBJECTS)
    layer[..., :3] = DAVIS_PALETTE[mask]
    layer[..., 3] = np.where(objects, round(255 * LAYER_ALPHA), 0)
    layer[~objects, :3] = 0
    return layer


def layer_to_mask(layer: np.ndarray, objects: Sequence[int], base: np.ndarray | None = None,
                  shown: bool = True) -> np.ndarray:
    """The editor's layer ``[H, W, 4]`` uint8 back to a mask ``[H, W]`` uint8, as a change of ``base``.

    ``base`` is the mask the editor was given (``[H, W]``, None: empty) and ``shown`` whether its layer was shown
    (:func:`mask_to_layer`) or the editor got an empty layer. Only two things change a pixel of ``base``:

    - paint: opacity at least :data:`PAINT_ALPHA` and a colour exactly the brush colour of one of ``objects`` (the
      objects that exist): the pixel becomes that object;
    - erase: the pixel was shown painted and its opacity is now under :data:`PAINT_ALPHA`: background.

    Anything else (an anti-aliased edge, a colour the editor's transport changed, the colour of an object that does
    not exist) keeps ``base``: nothing but a brush creates an object, and an untouched layer gives ``base`` back
    byte for byte.
    """
    if layer.ndim != 3 or layer.shape[2] != 4:
        raise PropagateError(f"the editor sent a layer of shape {list(layer.shape)}, not [H, W, 4]: reload the page")
    if base is None:
        base = np.zeros(layer.shape[:2], np.uint8)
    if base.shape != layer.shape[:2]:
        raise PropagateError(f"the editor sent a {layer.shape[1]}x{layer.shape[0]} layer for a "
                             f"{base.shape[1]}x{base.shape[0]} frame: reload the page")
    mask = base.copy()
    opaque = layer[..., 3] >= PAINT_ALPHA
    if shown:
        was_shown = (base > 0) & (base <= MAX_OBJECTS)
        mask[was_shown & ~opaque] = 0
    rgb = layer[..., :3]
    for obj in sorted(set(int(o) for o in objects)):
        if not 1 <= obj <= MAX_OBJECTS:
            continue
        colour = DAVIS_PALETTE[obj].astype(np.uint8)
        mask[opaque & np.all(rgb == colour, axis=-1)] = obj
    return mask


def same_image(shown: np.ndarray, image: np.ndarray, tolerance: float = 2.0) -> bool:
    """Whether the editor's background ``shown [H, W, 3|4]`` is ``image [H, W, 3]`` (mean difference under
    ``tolerance`` grey levels: the editor has drawn that frame, not still the one before)."""
    if shown.ndim != 3 or shown.shape[:2] != image.shape[:2]:
        return False
    return float(np.abs(shown[..., :3].astype(np.int16) - image.astype(np.int16)).mean()) < tolerance


def edited_objects(base: np.ndarray, mask: np.ndarray) -> list[int]:
    """The objects whose pixels differ between ``base`` and ``mask`` (both ``[H, W]`` uint8): painted or erased."""
    changed = base != mask
    return sorted(int(o) for o in set(np.unique(base[changed])) | set(np.unique(mask[changed])) if o not in (0, 255))


# ------------------------------------------------------------------------------------------------ confidence strip


def frames_to_check(confidence: dict[int, float], keyframes: list[int], count: int = STRIP_MARKED) -> list[int]:
    """The ``count`` least confident propagated frames (keyframes excluded), least confident first."""
    ranked = sorted((c, i) for i, c in confidence.items() if i not in keyframes)
    return [i for _, i in ranked[:count]]


def confidence_strip(num_frames: int, confidence: dict[int, float], keyframes: list[int], current: int,
                     absent: dict[int, list[int]] | None = None) -> str:
    """HTML: one cell per frame under the scrubber, green (confident) to red, grey until propagated; keyframes
    dark with a K, the least confident frames marked with a triangle, frames where an object is absent (``absent``:
    frame -> objects) marked with a circle and named in the cell's tip (absent is not lost: the colour is the
    present objects' confidence), the current frame outlined."""
    absent = absent or {}
    check = frames_to_check(confidence, keyframes)
    cells = []
    for i in range(num_frames):
        gone = f"; absent: object {', '.join(map(str, absent[i]))}" if absent.get(i) else ""
        if i in keyframes:
            colour, mark, tip = "#333", "K", f"frame {i}: keyframe{gone}"
        elif i in confidence:
            c = float(min(max(confidence[i], 0.0), 1.0))
            colour = f"hsl({int(120 * c)}, 70%, 45%)"
            mark = "▲" if i in check else ("○" if gone else "")
            tip = f"frame {i}: confidence {confidence[i]:.2f}{gone}"
        else:
            colour, mark, tip = "#ccc", "", f"frame {i}: not propagated"
        outline = "outline:2px solid #1e40af;z-index:1;" if i == current else ""
        cells.append(f'<div title="{html.escape(tip)}" data-frame="{i}" style="flex:1;min-width:2px;height:18px;'
                     f'background:{colour};{outline}color:#fff;font-size:10px;text-align:center;line-height:18px;'
                     f'overflow:hidden">{mark}</div>')
    note = ("check first: " + ", ".join(f"frame {i}" for i in check)) if check else "propagate to see confidence"
    return (f'<div class="confidence-strip" style="display:flex;gap:1px">{"".join(cells)}</div>'
            f'<div class="check-first" style="font-size:12px">{html.escape(note)}</div>')


# ------------------------------------------------------------------------------------------------ correspond


@dataclass
class Match:
    """Where a clicked point of the left image lands on the right one."""

    xy: tuple[float, float]  # best match on the right image, native pixels (x, y)
    cell: tuple[int, int]  # the clicked feature cell on the left (column, row)
    score: float  # the highest cosine similarity of a right cell
    heatmap: np.ndarray  # [H, W] float32 cosine similarity over the right image, native size


def image_key(image: np.ndarray) -> str:
    """A content key for ``image`` (features are cached per distinct image)."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


@dataclass
class Correspondence:
    """Features of images, computed once per image and kept, and the best match of a clicked point.

    ``extractor`` and ``resize`` are the app's (so a video frame and an uploaded image are treated alike).
    """

    extractor: FeatureExtractor
    resize: ResizeConfig
    cache: dict[str, torch.Tensor] = field(default_factory=dict)
    max_cached: int = 8

    def features(self, image: np.ndarray) -> torch.Tensor:
        """Features ``[C, h, w]`` of ``image [H, W, 3]`` uint8 RGB, at the processing size of its native size."""
        key = image_key(image)
        if key not in self.cache:
            size = processing_size((image.shape[1], image.shape[0]), self.resize)
            multiple = self.extractor.size_multiple
            if size[0] % multiple or size[1] % multiple:
                raise PropagateError(f"processing size {size[0]}x{size[1]} is not a multiple of {multiple}, as "
                                     f"{self.extractor.name} features need: change resize.multiple or resize.size")
            with torch.no_grad():
                feats = self.extractor.extract(to_tensor(image, size)[None], [0])[0].float().cpu()
            while len(self.cache) >= self.max_cached:
                self.cache.pop(next(iter(self.cache)))
            self.cache[key] = feats
        return self.cache[key]


def best_match(left: torch.Tensor, right: torch.Tensor, xy: tuple[float, float], left_size: tuple[int, int],
               right_size: tuple[int, int]) -> Match:
    """The point of the right image whose features are most like those at ``xy`` on the left (DIFT's demo).

    Args:
        left: ``[C, h1, w1]`` features of the left image; ``right``: ``[C, h2, w2]`` of the right one.
        xy: the clicked point, native pixels of the left image (W1 x H1 = ``left_size``).
        right_size: (W2, H2) of the right image.

    The clicked point's cell (``u = x * w1 / W1``) gives the query; its cosine similarity with every cell of the
    right image is upsampled bilinearly to the right image's native size; the match is the maximum.
    """
    (w1_px, h1_px), (w2_px, h2_px) = left_size, right_size
    col = min(max(int(xy[0] * left.shape[2] / w1_px), 0), left.shape[2] - 1)
    row = min(max(int(xy[1] * left.shape[1] / h1_px), 0), left.shape[1] - 1)
    query = F.normalize(left[:, row, col].float(), dim=0)  # [C]
    keys = F.normalize(right.float(), dim=0)  # [C, h2, w2]
    similarity = torch.einsum("c,chw->hw", query, keys)
    heat = F.interpolate(similarity[None, None], size=(h2_px, w2_px), mode="bilinear", align_corners=False)[0, 0]
    flat = int(heat.argmax())
    y, x = divmod(flat, w2_px)
    return Match((float(x), float(y)), (col, row), float(similarity.max()), heat.numpy().astype(np.float32))


def draw_marker(image: np.ndarray, xy: tuple[float, float], colour: tuple[int, int, int] = (255, 255, 0)) -> np.ndarray:
    """A copy of ``image [H, W, 3]`` with a cross and circle at ``xy``."""
    out = np.ascontiguousarray(image.copy())
    size = max(8, min(out.shape[:2]) // 20)
    p = (int(round(xy[0])), int(round(xy[1])))
    cv2.circle(out, p, size, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.circle(out, p, size, colour, 2, cv2.LINE_AA)
    cv2.drawMarker(out, p, colour, cv2.MARKER_CROSS, size, 2, cv2.LINE_AA)
    return out


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image [H, W, 3]`` blended with ``heat [H, W]`` (cosine similarity, scaled to its range) in a jet colormap."""
    low, high = float(heat.min()), float(heat.max())
    scaled = ((heat - low) / max(high - low, 1e-6) * 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (image.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha).astype(np.uint8)


def match_named(left: np.ndarray, left_feats: torch.Tensor, right: np.ndarray, right_feats: torch.Tensor,
                points: list[tuple[str, tuple[float, float]]]) -> tuple[np.ndarray, np.ndarray]:
    """Every named point of the left image carried to the right at once (:func:`propagate.correspond.match_points`,
    bilinear): ``xy [J, 2]`` right-image pixels and ``similarity [J]``, in the order of ``points``."""
    if not points:
        return np.zeros((0, 2)), np.zeros(0)
    xy = np.array([p for _, p in points], dtype=np.float64)
    return match_points(left_feats, right_feats, xy, (left.shape[1], left.shape[0]),
                        (right.shape[1], right.shape[0]))


def draw_named(image: np.ndarray, points: list[tuple[str, tuple[float, float]]] | np.ndarray,
               names: list[str], label: str | None = None) -> np.ndarray:
    """A copy of ``image [H, W, 3]`` with points ``[J, 2]`` (or ``(name, xy)`` pairs) drawn one colour each (point
    ``j`` the same colour on both sides, as ``propagate match`` draws them), ``label`` written on top."""
    xy = np.array([p for _, p in points], dtype=np.float64) if isinstance(points, list) else points
    out = draw_points(image, xy.reshape(-1, 2), names) if len(names) else np.ascontiguousarray(image.copy())
    return caption(out, label) if label else out


def place_sticker(sticker: np.ndarray, xy: tuple[float, float], size_wh: tuple[int, int]) -> np.ndarray:
    """The edit ``[H, W, 4]`` uint8 of a ``size_wh`` image: ``sticker [h, w, 4]`` (RGBA; RGB counts as opaque) with
    its centre at ``xy``, cut where it leaves the image; transparent elsewhere."""
    if sticker.ndim != 3 or sticker.shape[2] not in (3, 4):
        raise PropagateError(f"the sticker is {sticker.shape}: give an RGBA (or RGB) image")
    if sticker.shape[2] == 3:
        sticker = np.concatenate([sticker, np.full(sticker.shape[:2] + (1,), 255, np.uint8)], axis=2)
    width, height = size_wh
    h, w = sticker.shape[:2]
    x0, y0 = int(round(xy[0])) - w // 2, int(round(xy[1])) - h // 2
    canvas = np.zeros((height, width, 4), np.uint8)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w, width), min(y0 + h, height)
    if cx1 <= cx0 or cy1 <= cy0:
        raise PropagateError("the sticker would lie outside the left image: click inside it")
    canvas[cy0:cy1, cx0:cx1] = sticker[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    if not (canvas[..., 3] > 0).any():
        raise PropagateError("the sticker is transparent everywhere: give one with non-zero alpha")
    return canvas


def carry_edit(left: np.ndarray, left_feats: torch.Tensor, right: np.ndarray, right_feats: torch.Tensor,
               edit: np.ndarray, match: MatchConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    """DIFT's edit propagation from the left image (``edit [H1, W1, 4]`` over it) to the right one: samples inside
    the edit's alpha (``match.edit_samples``, ``match.seed``), their best matches, a RANSAC homography
    (``match.edit_threshold`` px), the edit warped and blended. Returns the left with its edit, the right with the
    carried edit (unchanged if no fit), the homography ``[3, 3]`` (or ``None``), inliers and samples."""
    left_wh, right_wh = (left.shape[1], left.shape[0]), (right.shape[1], right.shape[0])
    src_xy = edit_samples(edit[..., 3], match.edit_samples, match.seed)
    vectors = sample_features(left_feats, src_xy, left_wh)
    homography, inliers = fit_edit(vectors, src_xy, right_feats, right_wh, match.edit_threshold)
    carried = right.copy() if homography is None else composite(right, edit, homography)
    return composite(left, edit, np.eye(3)), carried, homography, inliers, len(src_xy)
