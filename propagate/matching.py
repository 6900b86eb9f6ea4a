"""``propagate match``: named points carried from one image to others (DIFT's semantic correspondence).

Per target image ``<out>/<stem>.json`` (the points, in the format ``--points`` reads, each with the cosine
similarity of its match) and ``<out>/<stem>.jpg`` (the paper's picture: source points on the left, predicted points
on the right, one colour per point), and ``<out>/run_info.json``. Also the image helpers the edit and dataset jobs
share: reading images, listing targets, the side-by-side picture and the label that marks baseline results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from propagate.config import Config
from propagate.correspond import image_features, match_points, with_prompt
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.io import atomic_write_json
from propagate.keypoints import PointSet, check_points_inside, read_points
from propagate.records import RUN_INFO, run_record
from propagate.render import caption, draw_points
from propagate.results import ResultsFolder
from propagate.video import IMAGE_SUFFIXES, natural_key

READ_SUFFIXES = IMAGE_SUFFIXES | {".ppm", ".pgm", ".webp", ".tif", ".tiff"}
BASELINE_LABEL = "BASELINE features (not DIFT)"


def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """An image file as ``[H, W, 3]`` uint8 RGB; a one-line error naming the file if it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise PropagateError(f"{what} {path} does not exist: give an image file "
                             f"({', '.join(sorted(s.lstrip('.') for s in READ_SUFFIXES))})")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise PropagateError(f"{what} {path} cannot be read as an image ({exc.__class__.__name__}): give a JPEG, PNG "
                             "or PPM file") from None


def target_images(targets: Sequence[str | Path]) -> list[Path]:
    """Image files named by ``targets``: files as given, folders by their images in natural order; stems must be
    unique (each names its results)."""
    found: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            inside = sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in READ_SUFFIXES),
                            key=lambda p: natural_key(p.name))
            if not inside:
                raise PropagateError(f"target folder {path} holds no images ({', '.join(sorted(READ_SUFFIXES))})")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise PropagateError(f"target {path} does not exist: give image files or folders of images")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems:
            raise PropagateError(f"targets {stems[path.stem]} and {path} have the same name {path.stem!r}, and each "
                                 "names its results: rename one or run them apart")
        stems[path.stem] = path
    return found


def label_of(features: str) -> str:
    """How results name the features of registry name ``features``: the baseline says it is not DIFT."""
    return BASELINE_LABEL if features == "baseline" else {"dift_sd": "DIFT-SD", "adm": "DIFT-ADM"}.get(features,
                                                                                                     features)


def features_label(extractor: FeatureExtractor) -> str:
    """:func:`label_of` the extractor's features."""
    return label_of(extractor.name)


def side_by_side(left: np.ndarray, left_xy: np.ndarray, right: np.ndarray, right_xy: np.ndarray,
                 label: str | None = None, height: int = 384) -> np.ndarray:
    """The paper's picture: ``left [H1, W1, 3]`` with its points ``[J, 2]`` beside ``right`` with the matched points,
    both scaled to ``height`` rows, point ``j`` in the same colour on both sides; ``label`` written on top."""
    panels = []
    for image, xy in ((left, left_xy), (right, right_xy)):
        scale = height / image.shape[0]
        width = max(1, round(image.shape[1] * scale))
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        panels.append(draw_points(resized, (xy + 0.5) * [width / image.shape[1], scale] - 0.5))
    gap = np.full((height, 6, 3), 255, dtype=np.uint8)
    picture = np.concatenate([panels[0], gap, panels[1]], axis=1)
    if label:
        caption(picture, label)
    return picture


def write_jpeg(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, quality=90)


def points_json(source: Path, target: Path, names: Sequence[str], xy: np.ndarray, similarity: np.ndarray,
                size_wh: tuple[int, int], features: str) -> dict[str, object]:
    """One target's results: the points in the format ``--points`` reads, each with its cosine similarity."""
    return {
        "source": str(source), "image": str(target), "size": list(size_wh), "features": features,
        "points": [{"name": n, "x": round(float(x), 3), "y": round(float(y), 3), "similarity": round(float(s), 5)}
                   for n, (x, y), s in zip(names, xy, similarity)],
    }


def run_match(source: str | Path, targets: Sequence[str | Path], points: str | Path | PointSet, out: str | Path,
              config: Config, *, extractor: FeatureExtractor | None = None, category: str | None = None,
              overwrite: bool = False) -> dict[str, object]:
    """Carry ``points`` (a points file or a :class:`PointSet`, pixels of ``source``) to every target image.

    Writes ``<out>/<stem>.json`` and ``<out>/<stem>.jpg`` per target and ``<out>/run_info.json``, whole or not at
    all. ``category`` fills ``{category}`` of ``config.match.prompt`` (DIFT-SD's SPair prompt); without it DIFT-SD
    uses its ``extractor.prompt``. Returns a summary (targets, out, features label).
    """
    source = Path(source)
    files = target_images(targets)
    point_set = points if isinstance(points, PointSet) else read_points(points)
    inputs = [source, *files] + ([] if isinstance(points, PointSet) else [Path(points)])
    src_image = read_image(source, "source image")
    src_wh = (src_image.shape[1], src_image.shape[0])
    check_points_inside(point_set, src_wh, points if not isinstance(points, PointSet) else source)
    folder = ResultsFolder(out, inputs=inputs, overwrite=overwrite)
    extractor = extractor or build_extractor(config.features, config.extractor)
    described = with_prompt(extractor, config.match.prompt, category)
    label = features_label(extractor)
    src_feats = image_features(described, src_image, config.match.size)
    results = []
    with folder as staging:
        for target in files:
            tgt_image = read_image(target, "target image")
            tgt_wh = (tgt_image.shape[1], tgt_image.shape[0])
            tgt_feats = image_features(described, tgt_image, config.match.size)
            xy, similarity = match_points(src_feats, tgt_feats, point_set.xy, src_wh, tgt_wh, config.match.upsample)
            atomic_write_json(staging / f"{target.stem}.json",
                              points_json(source, target, point_set.names, xy, similarity, tgt_wh, label))
            write_jpeg(staging / f"{target.stem}.jpg", side_by_side(src_image, point_set.xy, tgt_image, xy, label))
            results.append({"target": str(target), "mean_similarity": round(float(np.mean(similarity)), 5)})
        atomic_write_json(staging / RUN_INFO, run_record(config, described, task="match", source=str(source),
                                                         targets=[str(f) for f in files], category=category,
                                                         features_label=label))
    return {"targets": len(files), "out": str(out), "features": label, "results": results}
