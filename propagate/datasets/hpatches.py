"""HPatches homography estimation: DIFT's geometric-correspondence protocol (``eval_hpatches.py`` then
``eval_homography.py``), resumable, with keypoints from a detector that needs no weights.

Layout of an HPatches sequences root (``hpatches-sequences-release``)::

    <seq>/1.ppm .. 6.ppm      image 1 is the reference
    <seq>/H_1_2 .. H_1_6      3x3 homographies (text) mapping image 1's pixels to image i's

Per sequence and image i in 2..6: keypoints of both images (OpenCV SIFT detector, ``match.keypoints`` strongest;
DIFT used 1k SuperPoint keypoints, whose weights cannot be had here), their descriptors read from each image's
features (bilinear, as the upsampled map), mutual nearest neighbours (``match.metric``: cosine, or l2 as DIFT's
ADM), a homography by ``cv2.findHomography`` (``match.homography``: LMEDS for SD, RANSAC for ADM, threshold
``match.reproj_threshold``), and the mean distance of the four image corners mapped by it and by the truth. A pair
is correct at 1, 3 and 5 px; sequences ``i_*`` (illumination) and ``v_*`` (viewpoint) are scored apart.

Results: ``<out>/<seq>/homographies.json`` (per image: matches, inliers, the estimate, the corner error),
``<out>/scores.csv`` and ``run_info.json``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from propagate.config import Config
from propagate.correspond import (
    corner_error,
    detect_keypoints,
    fit_homography,
    image_features,
    mutual_nearest,
    sample_features,
)
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore
from propagate.io import atomic_write_json, atomic_write_text
from propagate.matching import label_of, read_image
from propagate.records import RUN_INFO, read_json, result_settings
from propagate.results import ResultsFolder, ResumableRun
from propagate.runs import Unit

THRESHOLDS = (1, 3, 5)
RESULT = "homographies.json"
SCORES_CSV = "scores.csv"


def read_homography(path: Path) -> np.ndarray:
    """A ``H_1_i`` file: a 3x3 matrix as text."""
    if not path.is_file():
        raise PropagateError(f"HPatches homography {path} does not exist: each sequence needs H_1_2 .. H_1_6")
    try:
        matrix = np.loadtxt(path, dtype=np.float64)
    except ValueError:
        raise PropagateError(f"HPatches homography {path} is not a 3x3 matrix of numbers") from None
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all():
        raise PropagateError(f"HPatches homography {path} is not a finite 3x3 matrix (shape {matrix.shape})")
    return matrix


def sequences_of(root: Path) -> list[str]:
    """The sequence folders (those holding 1.ppm), sorted."""
    if not root.is_dir():
        raise PropagateError(f"HPatches root {root} does not exist: give hpatches-sequences-release")
    names = sorted(p.name for p in root.iterdir() if (p / "1.ppm").is_file())
    if not names:
        raise PropagateError(f"{root} holds no HPatches sequences (<seq>/1.ppm .. 6.ppm, H_1_2 .. H_1_6)")
    return names


def sequence_images(root: Path, seq: str) -> list[Path]:
    paths = [root / seq / f"{i}.ppm" for i in range(1, 7)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise PropagateError(f"HPatches sequence {root / seq} lacks {', '.join(missing)}")
    return paths


def match_pair(image_a: np.ndarray, feats_a: object, image_b: np.ndarray, feats_b: object,
               config: Config) -> tuple[np.ndarray | None, int, int]:
    """Keypoints, descriptors, mutual nearest neighbours and the robust homography from ``image_a`` to ``image_b``
    (each ``[H, W, 3]`` with features ``[C, h, w]``): the estimate (or None), matches and inliers."""
    match = config.match
    wh_a, wh_b = (image_a.shape[1], image_a.shape[0]), (image_b.shape[1], image_b.shape[0])
    kp_a, kp_b = detect_keypoints(image_a, match.keypoints), detect_keypoints(image_b, match.keypoints)
    desc_a = sample_features(feats_a, kp_a, wh_a)  # type: ignore[arg-type]
    desc_b = sample_features(feats_b, kp_b, wh_b)  # type: ignore[arg-type]
    pairs = mutual_nearest(desc_a, desc_b, match.metric)
    homography, inliers = fit_homography(kp_a[pairs[:, 0]], kp_b[pairs[:, 1]], match.homography,
                                         match.reproj_threshold)
    return homography, len(pairs), int(inliers.sum())


def _sequence_runner(root: Path):
    def run(units: Sequence[Unit], config: Config, extractor: FeatureExtractor | None, cache: FeatureStore | None,
            progress: bool) -> list[dict[str, object]]:
        if units and extractor is None:
            extractor = build_extractor(config.features, config.extractor)
        summaries = []
        for unit in tqdm(units, desc="sequences", disable=not progress):
            folder = ResultsFolder(unit.out, inputs=unit.inputs)
            paths = sequence_images(root, unit.name)
            truths = [read_homography(root / unit.name / f"H_1_{i}") for i in range(2, 7)]
            reference = read_image(paths[0], "HPatches image")
            ref_feats = image_features(extractor, reference, config.match.size)  # type: ignore[arg-type]
            records = []
            for index, (path, truth) in enumerate(zip(paths[1:], truths), start=2):
                image = read_image(path, "HPatches image")
                feats = image_features(extractor, image, config.match.size)  # type: ignore[arg-type]
                estimate, matches, inliers = match_pair(reference, ref_feats, image, feats, config)
                error = corner_error(estimate, truth, (reference.shape[1], reference.shape[0]))
                records.append({"image": index, "matches": matches, "inliers": inliers,
                                "homography": None if estimate is None else estimate.tolist(),
                                "corner_error": None if not np.isfinite(error) else round(error, 4)})
            with folder as staging:
                atomic_write_json(staging / RESULT, {"sequence": unit.name, "pairs": records})
            summaries.append({"sequence": unit.name})
        return summaries

    return run


def score_hpatches(out: str | Path, sequences: Sequence[str]) -> dict[str, object]:
    """Homography accuracy (percent of pairs with mean corner error <= 1, 3, 5 px) for illumination (``i_*``),
    viewpoint (``v_*``) and all sequences, and the mean corner error of fitted pairs."""
    errors: dict[str, list[float]] = {"illumination": [], "viewpoint": [], "all": []}
    for seq in sequences:
        data = read_json(Path(out) / seq / RESULT, "HPatches results")
        values = [float("inf") if p["corner_error"] is None else float(p["corner_error"]) for p in data["pairs"]]
        kind = {"i": "illumination", "v": "viewpoint"}.get(seq[:1])
        if kind:
            errors[kind] += values
        errors["all"] += values
    scores: dict[str, object] = {}
    for kind, values in errors.items():
        array = np.asarray(values, dtype=np.float64)
        scores[kind] = {"pairs": len(array), **{f"acc@{t}px": 100.0 * float(np.mean(array <= t)) if len(array)
                                                 else float("nan") for t in THRESHOLDS}}
    return scores


def format_hpatches_table(scores: dict[str, object]) -> str:
    header = f"{'sequences':<14} {'pairs':>6} " + " ".join(f"{f'acc@{t}px':>9}" for t in THRESHOLDS)
    lines = [header]
    for kind in ("illumination", "viewpoint", "all"):
        row = scores[kind]  # type: ignore[index]
        lines.append(f"{kind:<14} {row['pairs']:>6} " + " ".join(f"{row[f'acc@{t}px']:>9.2f}" for t in THRESHOLDS))
    if scores.get("features"):
        lines.append(f"features: {scores['features']}")
    return "\n".join(lines)


def evaluate_hpatches(root: str | Path, out: str | Path, config: Config, sequences: Sequence[str] | None = None,
                      extractor: FeatureExtractor | None = None, progress: bool = True, preset: str | None = None,
                      command: str | None = None) -> dict[str, object]:
    """Run the HPatches protocol over every sequence of ``root`` (resumable), then score it (see the module
    docstring). Returns :func:`score_hpatches`'s dict plus ``features`` (the label) and ``run_info``."""
    root = Path(root).expanduser()
    names = sequences_of(root)
    chosen = list(sequences) if sequences else names
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise PropagateError(f"sequences {', '.join(unknown)} are not in {root}")
    out = Path(out)
    run = ResumableRun(out, inputs=[root], info={"settings": result_settings(config)}, keys=["settings"])
    units = [Unit(s, root / s, root / s, out / s, kind="hpatches", render=False, inputs=(root,))
             for s in chosen if not run.done(s)]
    model = config.extractor.get("model")
    run.run(units, config, extractor, None, progress, _sequence_runner(root), build_extractor,
            task="HPatches homography accuracy",
            preset=preset, detector="OpenCV SIFT (DIFT: SuperPoint)", **({"model": model} if model is not None else {}),
            dataset={"root": str(root.resolve()), "sequences": chosen},
            **({"command": command} if command is not None else {}))
    scores = score_hpatches(out, chosen)
    scores["features"] = label_of(str(run.info.get("features", config.features)))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sequences", "pairs", *(f"acc@{t}px" for t in THRESHOLDS)])
    for kind in ("illumination", "viewpoint", "all"):
        row = scores[kind]  # type: ignore[index]
        writer.writerow([kind, row["pairs"], *(f"{row[f'acc@{t}px']:.2f}" for t in THRESHOLDS)])
    atomic_write_text(out / SCORES_CSV, buffer.getvalue())
    run.info["scores"] = {k: scores[k] for k in ("illumination", "viewpoint", "all")}
    run.record()
    scores["run_info"] = str(out / RUN_INFO)
    return scores
