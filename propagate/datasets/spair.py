"""SPair-71k semantic correspondence: read the dataset, run DIFT's protocol (``eval_spair.py``) resumably, score PCK.

Layout of a SPair-71k root::

    JPEGImages/<category>/<image>.jpg
    PairAnnotation/<split>/<pair>.json     src_imname, trg_imname, category, src_kps, trg_kps, trg_bndbox, ...

The protocol, per pair: each source keypoint carried to the target (:func:`propagate.correspond.match_points`:
features upsampled bilinearly to each image's size, cosine, argmax); a keypoint is correct when its distance to the
target keypoint is at most 0.1 x max(h, w) of the target's box (``trg_bndbox`` = x0, y0, x1, y1). Scores, as DIFT
prints them: per point (correct keypoints / keypoints) and per image (the mean over pairs of each pair's fraction),
per category and overall (per image overall: the mean over all pairs).

Layout of a results folder::

    <out>/run_info.json                     what produced the results (settings are checked on resume)
    <out>/<category>/predictions.json       per pair: predicted and true keypoints, threshold, similarity, correct
    <out>/scores.csv                        per category and overall: pairs, points, PCK per point and per image

Each category is one unit of work, written whole or not at all, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from propagate.config import Config
from propagate.correspond import image_features, match_points, with_prompt
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore
from propagate.io import atomic_write_json, atomic_write_text
from propagate.matching import label_of, read_image
from propagate.records import RUN_INFO, read_json, result_settings
from propagate.results import ResultsFolder, ResumableRun
from propagate.runs import Unit

ALPHA = 0.1
PREDICTIONS = "predictions.json"
SCORES_CSV = "scores.csv"


@dataclass(frozen=True)
class SpairPair:
    """One annotated pair: image names, category and keypoints ``[J, 2]`` (x, y) in each image's pixels."""

    name: str
    category: str
    source: str
    target: str
    src_kps: np.ndarray
    trg_kps: np.ndarray
    trg_bndbox: tuple[float, float, float, float]

    @property
    def threshold(self) -> float:
        """max(h, w) of the target box (DIFT's PCK denominator)."""
        x0, y0, x1, y1 = self.trg_bndbox
        return float(max(y1 - y0, x1 - x0))


def _keypoints(value: object, key: str, path: Path) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = np.zeros((0, 3))
    if array.ndim != 2 or array.shape[1] != 2:
        raise PropagateError(f"pair annotation {path}: {key} must be a list of [x, y] pairs")
    return array


def read_pair(path: Path) -> SpairPair:
    """One ``PairAnnotation`` JSON; a one-line error naming the file and the key if it is not SPair's format."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PropagateError(f"pair annotation {path} is not valid JSON ({exc})") from None
    missing = [k for k in ("src_imname", "trg_imname", "category", "src_kps", "trg_kps", "trg_bndbox")
               if not isinstance(data, dict) or k not in data]
    if missing:
        raise PropagateError(f"pair annotation {path} lacks {', '.join(missing)}: is this a SPair-71k PairAnnotation "
                             "file?")
    src, trg = _keypoints(data["src_kps"], "src_kps", path), _keypoints(data["trg_kps"], "trg_kps", path)
    if len(src) != len(trg) or len(src) == 0:
        raise PropagateError(f"pair annotation {path}: {len(src)} source and {len(trg)} target keypoints; a pair "
                             "needs the same number, at least one")
    box = data["trg_bndbox"]
    if not (isinstance(box, list) and len(box) == 4):
        raise PropagateError(f"pair annotation {path}: trg_bndbox must be [x0, y0, x1, y1]")
    return SpairPair(path.stem, str(data["category"]), str(data["src_imname"]), str(data["trg_imname"]), src, trg,
                     tuple(float(v) for v in box))  # type: ignore[arg-type]


class SpairDataset:
    """A SPair-71k root: its pairs of one split, grouped by category."""

    def __init__(self, root: str | Path, split: str = "test"):
        self.root = Path(root).expanduser()
        folder = self.root / "PairAnnotation" / split
        if not (self.root / "JPEGImages").is_dir() or not folder.is_dir():
            raise PropagateError(f"{self.root} is not a SPair-71k root: expected JPEGImages/<category>/ and "
                                 f"PairAnnotation/{split}/*.json")
        files = sorted(folder.glob("*.json"))
        if not files:
            raise PropagateError(f"{folder} holds no pair annotations (*.json)")
        self.split = split
        self.pairs = [read_pair(f) for f in files]
        self.categories = sorted({p.category for p in self.pairs})

    def image(self, category: str, name: str) -> Path:
        path = self.root / "JPEGImages" / category / name
        if not path.is_file():
            raise PropagateError(f"SPair image {path} does not exist (named by a {category} pair)")
        return path

    def of(self, category: str) -> list[SpairPair]:
        return [p for p in self.pairs if p.category == category]


def predict_pair(pair: SpairPair, features: dict[str, object], sizes: dict[str, tuple[int, int]],
                 upsampling: str = "bilinear") -> dict[str, object]:
    """One pair's record: predicted target keypoints, the truth, the threshold, per-point similarity and
    correctness (distance / threshold <= 0.1)."""
    xy, similarity = match_points(features[pair.source], features[pair.target], pair.src_kps,  # type: ignore[arg-type]
                                  sizes[pair.source], sizes[pair.target], upsampling)
    distance = np.linalg.norm(xy - pair.trg_kps, axis=1)
    return {
        "pair": pair.name, "category": pair.category, "source": pair.source, "target": pair.target,
        "predicted": [[float(x), float(y)] for x, y in xy], "truth": pair.trg_kps.tolist(),
        "threshold": pair.threshold, "similarity": [round(float(s), 6) for s in similarity],
        "correct": [bool(d / pair.threshold <= ALPHA) for d in distance],
    }


def _category_runner(dataset: SpairDataset):
    """The runner of category units (the shape :meth:`propagate.runs.ResumableRun.run` calls)."""

    def run(units: Sequence[Unit], config: Config, extractor: FeatureExtractor | None, cache: FeatureStore | None,
            progress: bool) -> list[dict[str, object]]:
        if units and extractor is None:
            extractor = build_extractor(config.features, config.extractor)
        summaries = []
        for unit in tqdm(units, desc="categories", disable=not progress):
            category = unit.name
            pairs = dataset.of(category)
            described = with_prompt(extractor, config.match.prompt, category)  # type: ignore[arg-type]
            names = sorted({p.source for p in pairs} | {p.target for p in pairs})
            features: dict[str, object] = {}
            sizes: dict[str, tuple[int, int]] = {}
            folder = ResultsFolder(unit.out, inputs=unit.inputs)
            for name in tqdm(names, desc=category, leave=False, disable=not progress):
                image = read_image(dataset.image(category, name), "SPair image")
                sizes[name] = (image.shape[1], image.shape[0])
                features[name] = image_features(described, image, config.match.size)
            records = [predict_pair(p, features, sizes, config.match.upsample) for p in pairs]
            with folder as staging:
                atomic_write_json(staging / PREDICTIONS, {"category": category, "features": label_of(extractor.name),
                                                          "pairs": records})
            summaries.append({"category": category, "pairs": len(records)})
        return summaries

    return run


def score_spair(out: str | Path, categories: Sequence[str]) -> dict[str, object]:
    """PCK@0.1 from ``<out>/<category>/predictions.json``: per category and overall, per point and per image."""
    out = Path(out)
    rows: dict[str, dict[str, float]] = {}
    every_pair: list[float] = []
    total_correct = total_points = 0
    for category in categories:
        data = read_json(out / category / PREDICTIONS, "SPair predictions")
        fractions = [float(np.mean(p["correct"])) for p in data["pairs"]]
        correct = sum(sum(p["correct"]) for p in data["pairs"])
        points = sum(len(p["correct"]) for p in data["pairs"])
        rows[category] = {"pairs": len(fractions), "points": points, "pck_point": 100.0 * correct / points,
                          "pck_image": 100.0 * float(np.mean(fractions))}
        every_pair += fractions
        total_correct += correct
        total_points += points
    overall = {"pairs": len(every_pair), "points": total_points, "pck_point": 100.0 * total_correct / total_points,
               "pck_image": 100.0 * float(np.mean(every_pair))}
    return {"categories": rows, "overall": overall}


def write_scores(out: Path, scores: dict[str, object]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["category", "pairs", "points", "pck@0.1_per_point", "pck@0.1_per_image"])
    rows = {**scores["categories"], "all": scores["overall"]}  # type: ignore[dict-item]
    for name, row in rows.items():
        writer.writerow([name, row["pairs"], row["points"], f"{row['pck_point']:.2f}", f"{row['pck_image']:.2f}"])
    atomic_write_text(out / SCORES_CSV, buffer.getvalue())


def format_spair_table(scores: dict[str, object]) -> str:
    """The scores as a text table (PCK@0.1 in percent), with the features label if run_info names one."""
    lines = [f"{'category':<14} {'pairs':>6} {'points':>7} {'per point':>10} {'per image':>10}"]
    rows = {**scores["categories"], "all": scores["overall"]}  # type: ignore[dict-item]
    for name, row in rows.items():
        lines.append(f"{name:<14} {row['pairs']:>6} {row['points']:>7} {row['pck_point']:>10.2f} "
                     f"{row['pck_image']:>10.2f}")
    label = scores.get("features")
    if label:
        lines.append(f"features: {label}")
    return "\n".join(lines)


def evaluate_spair(root: str | Path, out: str | Path, config: Config, split: str = "test",
                   categories: Sequence[str] | None = None, extractor: FeatureExtractor | None = None,
                   progress: bool = True, preset: str | None = None, command: str | None = None) -> dict[str, object]:
    """Run DIFT's SPair-71k protocol over ``split`` (resumable: finished categories are kept), then score it.

    Returns :func:`score_spair`'s dict plus ``features`` (the label shown with results; the baseline says it is not
    DIFT) and ``run_info``. Scores are also written to ``<out>/scores.csv`` and ``run_info.json``.
    """
    dataset = SpairDataset(root, split)
    chosen = list(categories) if categories else dataset.categories
    unknown = sorted(set(chosen) - set(dataset.categories))
    if unknown:
        raise PropagateError(f"categories {', '.join(unknown)} have no {split} pairs in {dataset.root}; known: "
                             f"{', '.join(dataset.categories)}")
    out = Path(out)
    inputs = [dataset.root]
    run = ResumableRun(out, inputs=inputs, info={"settings": result_settings(config)}, keys=["settings"])
    units = [Unit(c, dataset.root / "JPEGImages" / c, dataset.root / "PairAnnotation" / split, out / c,
                  kind="spair", render=False, inputs=tuple(inputs)) for c in chosen if not run.done(c)]
    model = config.extractor.get("model")
    run.run(units, config, extractor, None, progress, _category_runner(dataset), build_extractor,
            task="SPair-71k PCK@0.1",
            preset=preset, **({"model": model} if model is not None else {}),
            dataset={"root": str(dataset.root.resolve()), "split": split, "categories": chosen},
            **({"command": command} if command is not None else {}))
    scores = score_spair(out, chosen)
    scores["features"] = label_of(str(run.info.get("features", config.features)))
    write_scores(out, scores)
    run.info["scores"] = scores["overall"]
    run.record()
    scores["run_info"] = str(out / RUN_INFO)
    return scores
