"""``propagate edit``: an edit (an RGBA sticker drawn over a source image) carried to other images, or through a video
(DIFT's edit propagation, Tang et al. 2023, section 6, taken past the paper to video).

The recipe on images (DIFT's notebook): sample ``match.edit_samples`` pixels where the edit's alpha is non-zero,
find each one's most similar pixel in the target (cosine on upsampled features), fit a homography to those matches
with RANSAC (``match.edit_threshold`` px), warp the edit with it and alpha-blend it over the target.

On a video, the edit is placed on frame ``--at``; every other frame gets its own fit from that frame (never chained,
so errors do not add up), the edit's four corners are then averaged over ``match.smooth_frames`` frames either side
(a frame whose fit failed borrows its neighbours'), and where per-frame masks are given (as ``propagate run``
writes) the edit shows only on the label it was placed on: where something covers that surface, the edit is hidden.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from propagate.config import Config, MatchConfig
from propagate.correspond import (  # the edit's sampling, fit and blend live there, shared with the app
    composite,
    edit_samples,
    fit_edit,
    image_features,
    project,
    sample_features,
    with_prompt,
)
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.io import atomic_write_json
from propagate.labels import VOID, read_mask
from propagate.matching import features_label, read_image, target_images
from propagate.records import RUN_INFO, run_record
from propagate.render import OverlayWriter, caption
from propagate.results import ResultsFolder
from propagate.video import IMAGE_SUFFIXES, natural_key, open_video

MIN_INLIERS = 0.2  # video: a frame's fit must keep this fraction of the samples as inliers to count


def read_edit(path: str | Path, size_wh: tuple[int, int]) -> np.ndarray:
    """The edit: an RGBA image ``[H, W, 4]`` uint8 the size of the source, non-zero alpha where it is drawn."""
    path = Path(path)
    if not path.is_file():
        raise PropagateError(f"edit {path} does not exist: give an RGBA PNG the size of the source, transparent "
                             "where nothing is drawn")
    try:
        with Image.open(path) as image:
            if "A" not in image.getbands() and image.mode != "P":
                raise PropagateError(f"edit {path} has no alpha channel ({image.mode}): save it as an RGBA PNG, "
                                     "transparent where nothing is drawn")
            rgba = np.asarray(image.convert("RGBA")).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise PropagateError(f"edit {path} cannot be read as an image ({exc.__class__.__name__})") from None
    if (rgba.shape[1], rgba.shape[0]) != tuple(size_wh):
        raise PropagateError(f"edit {path} is {rgba.shape[1]}x{rgba.shape[0]} but the source is {size_wh[0]}x"
                             f"{size_wh[1]}: draw the edit on a canvas the size of the source")
    if not (rgba[..., 3] > 0).any():
        raise PropagateError(f"edit {path} is transparent everywhere: draw the edit with non-zero alpha")
    return rgba


def edit_corners(alpha: np.ndarray) -> np.ndarray:
    """The corners ``[4, 2]`` of the box around the edit's drawn pixels: top-left, top-right, bottom-right,
    bottom-left (pixel centres)."""
    ys, xs = np.nonzero(alpha > 0)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def homography_json(homography: np.ndarray | None, corners: np.ndarray, inliers: int, samples: int,
                    target: str, size_wh: tuple[int, int], features: str) -> dict[str, object]:
    """One target's fit as ``<stem>.json`` holds it (``features``: the label, which says so for the baseline)."""
    return {
        "image": target, "size": list(size_wh), "features": features, "samples": samples, "inliers": inliers,
        "homography": None if homography is None else [[float(v) for v in row] for row in homography],
        "corners": None if homography is None else [[round(float(x), 3), round(float(y), 3)]
                                                    for x, y in project(homography, corners)],
    }


def _prepare(config: Config, extractor: FeatureExtractor | None,
             category: str | None) -> tuple[FeatureExtractor, FeatureExtractor, MatchConfig]:
    extractor = extractor or build_extractor(config.features, config.extractor)
    return extractor, with_prompt(extractor, config.match.prompt, category), config.match


def run_edit(source: str | Path, edit: str | Path, targets: Sequence[str | Path], out: str | Path, config: Config, *,
             extractor: FeatureExtractor | None = None, category: str | None = None,
             overwrite: bool = False) -> dict[str, object]:
    """Carry the edit drawn over ``source`` to every target image.

    Writes ``<out>/source.png`` (the source with its edit), per target ``<out>/<stem>.png`` (the target with the
    edit, at its own size) and ``<out>/<stem>.json`` (the fitted homography, the edit box's corners in the target,
    samples and inliers), and ``<out>/run_info.json``; whole or not at all.
    """
    source, edit = Path(source), Path(edit)
    files = target_images(targets)
    src_image = read_image(source, "source image")
    src_wh = (src_image.shape[1], src_image.shape[0])
    rgba = read_edit(edit, src_wh)
    folder = ResultsFolder(out, inputs=[source, edit, *files], overwrite=overwrite)
    extractor, described, match = _prepare(config, extractor, category)
    label = features_label(extractor)
    src_xy = edit_samples(rgba[..., 3], match.edit_samples, match.seed)
    src_vectors = sample_features(image_features(described, src_image, match.size), src_xy, src_wh)
    corners = edit_corners(rgba[..., 3])
    fits = []
    with folder as staging:
        Image.fromarray(composite(src_image, rgba, np.eye(3))).save(staging / "source.png")
        for target in files:
            tgt_image = read_image(target, "target image")
            tgt_wh = (tgt_image.shape[1], tgt_image.shape[0])
            tgt_feats = image_features(described, tgt_image, match.size)
            homography, inliers = fit_edit(src_vectors, src_xy, tgt_feats, tgt_wh, match.edit_threshold)
            result = tgt_image if homography is None else composite(tgt_image, rgba, homography)
            Image.fromarray(result).save(staging / f"{target.stem}.png")
            record = homography_json(homography, corners, inliers, len(src_xy), str(target), tgt_wh, label)
            atomic_write_json(staging / f"{target.stem}.json", record)
            fits.append({"target": str(target), "fitted": homography is not None, "inliers": inliers})
        atomic_write_json(staging / RUN_INFO, run_record(config, described, task="edit", source=str(source),
                                                         edit=str(edit), targets=[str(f) for f in files],
                                                         category=category, features_label=label))
    return {"targets": len(files), "out": str(out), "features": label, "fits": fits}


# ---------------------------------------------------------------------------------------------- video


def smooth_corners(corners: np.ndarray, fitted: np.ndarray, radius: int, anchor: int) -> np.ndarray:
    """Per-frame corners ``[T, 4, 2]`` averaged over the fitted frames (``fitted [T]`` bool) of a window centred on
    each frame: ``radius`` frames either side, fewer near the ends so the window stays centred (a steady motion
    stays where it is). Frame ``anchor`` (where the edit was drawn) keeps its own; a frame with no fitted frame in
    its window takes the nearest fitted one's."""
    count = len(corners)
    good = np.flatnonzero(fitted)
    out = np.empty_like(corners)
    for t in range(count):
        reach = min(radius, t, count - 1 - t)
        near = good[np.abs(good - t) <= reach]
        if len(near) == 0:
            near = good[[np.argmin(np.abs(good - t))]]
        out[t] = corners[near].mean(axis=0)
    out[anchor] = corners[anchor]
    return out


def surface_label(mask: np.ndarray, alpha: np.ndarray) -> int:
    """The label the edit was placed on: the most common one under its drawn pixels (void aside; 0, the background,
    is a surface too)."""
    under = mask[(alpha > 0) & (mask != VOID)]
    if len(under) == 0:
        raise PropagateError("the edit lies on void pixels only in the mask of the frame it was drawn on: give a mask "
                             "that labels the surface under the edit")
    return int(np.bincount(under).argmax())


def _frame_masks(mask: Path, names: Sequence[str], size_wh: tuple[int, int]) -> list[Path]:
    """One mask file per frame from a folder (named like the frames, or the same count in natural order)."""
    if not mask.is_dir():
        raise PropagateError(f"--mask {mask} is not a folder: give a folder of per-frame masks (e.g. what "
                             "`propagate run` wrote for the surface's object)")
    files = sorted((p for p in mask.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))
    by_stem = {p.stem: p for p in files}
    if all(Path(n).stem in by_stem for n in names):
        return [by_stem[Path(n).stem] for n in names]
    if len(files) == len(names):
        return files
    raise PropagateError(f"--mask {mask} holds {len(files)} masks for {len(names)} frames: give one mask per frame, "
                         "named like the frames")


def run_edit_video(video: str | Path, edit: str | Path, at: int, out: str | Path, config: Config, *,
                   mask: str | Path | None = None, extractor: FeatureExtractor | None = None,
                   category: str | None = None, overwrite: bool = False, fps: float | None = None) -> dict[str, object]:
    """Carry the edit drawn over frame ``at`` of ``video`` through every frame.

    Writes ``<out>/frames/<frame>.png`` (each frame with the edit), ``<out>/edit.mp4``, ``<out>/homographies.json``
    (per frame: the raw fit and the smoothed homography from frame ``at``, inliers) and ``<out>/run_info.json``.
    ``mask``: a folder of per-frame masks of the surface the edit lies on; the edit shows only where it is non-zero
    (and not void).
    """
    video, edit = Path(video), Path(edit)
    source = open_video(video)
    if not 0 <= at < len(source):
        raise PropagateError(f"--at {at}: {video} has frames 0..{len(source) - 1}")
    size_wh = tuple(source.native_size)
    rgba = read_edit(edit, size_wh)  # type: ignore[arg-type]
    mask_files = _frame_masks(Path(mask), source.names, size_wh) if mask is not None else None  # type: ignore[arg-type]
    folder = ResultsFolder(out, inputs=[video, edit] + ([Path(mask)] if mask is not None else []), overwrite=overwrite)
    extractor, described, match = _prepare(config, extractor, category)
    label = features_label(extractor)
    src_xy = edit_samples(rgba[..., 3], match.edit_samples, match.seed)
    corners = edit_corners(rgba[..., 3])

    src_vectors = None
    for frame in source:  # the drawn frame first: its vectors are matched in every frame
        if frame.index == at:
            feats = image_features(described, frame.image, match.size, frame_id=frame.index)
            src_vectors = sample_features(feats, src_xy, size_wh)  # type: ignore[arg-type]
            break
    assert src_vectors is not None
    raw: list[np.ndarray | None] = []
    inliers: list[int] = []
    for frame in source:  # one frame's features at a time: a long video never holds them all
        if frame.index == at:
            homography, kept = np.eye(3), len(src_xy)
        else:
            feats = image_features(described, frame.image, match.size, frame_id=frame.index)
            homography, kept = fit_edit(src_vectors, src_xy, feats, size_wh,  # type: ignore[arg-type]
                                        match.edit_threshold)
        raw.append(homography)
        inliers.append(kept)
    count = len(raw)
    fitted = np.array([h is not None and kept >= MIN_INLIERS * len(src_xy) for h, kept in zip(raw, inliers)])
    if not fitted.any():
        raise PropagateError(f"the edit could not be fitted in any frame of {video}: no frame kept "
                             f"{MIN_INLIERS:.0%} of the matches as inliers")
    projected = np.stack([project(h, corners) if h is not None else corners for h in raw])
    smoothed = smooth_corners(projected, fitted, match.smooth_frames, at)
    final = [cv2.getPerspectiveTransform(corners.astype(np.float32), c.astype(np.float32)) for c in smoothed]

    with folder as staging:
        (staging / "frames").mkdir()
        surface = surface_label(read_mask(mask_files[at]), rgba[..., 3]) if mask_files is not None else None
        with OverlayWriter(staging / "edit.mp4", fps or source.fps, size_wh) as writer:  # type: ignore[arg-type]
            for frame in source:
                visible = None
                if mask_files is not None:
                    labels = read_mask(mask_files[frame.index])
                    visible = labels == surface
                result = composite(frame.image, rgba, final[frame.index], visible)
                Image.fromarray(result).save(staging / "frames" / f"{Path(frame.name).stem}.png")
                writer.write(caption(result.copy(), label) if extractor.name == "baseline" else result)
        atomic_write_json(staging / "homographies.json", {
            "at": at, "features": label, "corners": [[float(x), float(y)] for x, y in corners], "frames": [
                {"frame": name, "fitted": bool(ok), "inliers": kept,
                 "raw": None if h is None else [[float(v) for v in row] for row in h],
                 "homography": [[float(v) for v in row] for row in f]}
                for name, ok, kept, h, f in zip(source.names, fitted, inliers, raw, final)]})
        atomic_write_json(staging / RUN_INFO, run_record(config, described, task="edit video", video=str(video),
                                                         edit=str(edit), at=at,
                                                         mask=None if mask is None else str(mask),
                                                         category=category, features_label=label))
    return {"frames": count, "out": str(out), "features": label, "fitted": int(fitted.sum())}
