"""DAVIS-2017 (semi-supervised): read the dataset, score a results folder, and run the whole protocol.

Layout of a DAVIS root::

    JPEGImages/480p/<seq>/00000.jpg ...
    Annotations/480p/<seq>/00000.png ...      indexed PNGs: 0 background, 1..K objects, 255 void
    ImageSets/2017/<split>.txt                one sequence name per line

Layout of a results folder (the same as the official tool reads)::

    <results>/<seq>/<frame>.png               indexed or greyscale PNG of object indices, named like the annotation
    <results>/global_results-<split>.csv      written by :func:`score_davis`
    <results>/per-sequence_results-<split>.csv

Scoring follows ``davis2017-evaluation`` (see :mod:`propagate.metrics`); unlike it, a results folder is always
scored afresh (existing CSVs are never read, and are replaced only once the new numbers are whole) and bad results
are a clear error naming the sequence
and frame instead of a crash or a silent exit.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from propagate import metrics
from propagate.config import Config, sequence_config
from propagate.errors import PropagateError
from propagate.io import atomic_write_text
from propagate.labels import VOID, read_mask
from propagate.records import RUN_INFO, result_settings
from propagate.results import ResumableRun, check_not_input
from propagate.video import IMAGE_SUFFIXES, natural_key

if TYPE_CHECKING:  # scoring imports no torch: the extractors and the run jobs are imported by evaluate_davis
    from propagate.features import FeatureExtractor
    from propagate.features.stream import FeatureStore
    from propagate.runs import Runner

RESOLUTION = "480p"


def global_csv_name(split: str) -> str:
    return f"global_results-{split}.csv"


def sequence_csv_name(split: str) -> str:
    return f"per-sequence_results-{split}.csv"


class DavisDataset:
    """A DAVIS-2017 root and one split of it; checks the layout up front.

    Attributes:
        root: the dataset folder.
        split: split name (``ImageSets/2017/<split>.txt``).
        sequences: sequence names in the split file's order.
    """

    def __init__(self, root: str | Path, split: str = "val", resolution: str = RESOLUTION):
        self.root = Path(root)
        if not _plain_name(split):
            raise PropagateError(f"split {split!r} is not a split name: give the name of a file in ImageSets/2017 "
                                 "without .txt, e.g. val (a name with / or .. would read and write outside the root "
                                 "and the results folder)")
        self.split = split
        self.resolution = resolution
        if not self.root.is_dir():
            raise PropagateError(f"DAVIS root {self.root} does not exist: pass the folder that holds JPEGImages, "
                                 "Annotations and ImageSets")
        split_file = self.root / "ImageSets" / "2017" / f"{split}.txt"
        if not split_file.is_file():
            known = sorted(p.stem for p in split_file.parent.glob("*.txt")) if split_file.parent.is_dir() else []
            raise PropagateError(f"split file {split_file} not found: choose a split that exists "
                                 f"({', '.join(known) or 'none in ImageSets/2017'})")
        try:
            text = split_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise PropagateError(f"split file {split_file} is not UTF-8 text (byte {exc.start}): give one sequence "
                                 "name per line") from None
        self.sequences = [line.strip() for line in text.splitlines() if line.strip()]
        for name in self.sequences:
            if not _plain_name(name):
                raise PropagateError(f"split file {split_file} lists {name!r}, which is not a sequence name (a folder "
                                     "of JPEGImages/480p: no / or .., which would write results outside --out): fix "
                                     "the list")
        if not self.sequences:
            raise PropagateError(f"split file {split_file} lists no sequences")
        self.annotation_root = self.root / "Annotations" / resolution
        if not self.annotation_root.is_dir():
            raise PropagateError(f"annotations folder {self.annotation_root} not found: the DAVIS root must hold "
                                 f"Annotations/{resolution}")

    def select(self, sequences: Sequence[str] | str | None = None) -> list[str]:
        """Sequences to use: all of the split (``None``), or the given names (a list or ``"a,b"``), each in it."""
        if sequences is None:
            return list(self.sequences)
        if isinstance(sequences, str):
            sequences = [s for s in sequences.split(",")]
        names = [s.strip() for s in sequences if s.strip()]
        if not names:
            raise PropagateError("no sequences given: pass names from the split, "
                                 "e.g. --sequences bike-packing,dogs-jump")
        unknown = [s for s in names if s not in self.sequences]
        if unknown:
            raise PropagateError(f"sequence(s) {', '.join(unknown)} not in split {self.split} "
                                 f"({self.root / 'ImageSets' / '2017' / (self.split + '.txt')}): check the names")
        return list(dict.fromkeys(names))

    def image_dir(self, sequence: str) -> Path:
        """Folder of the sequence's JPEG frames."""
        folder = self.root / "JPEGImages" / self.resolution / sequence
        if not folder.is_dir() or not any(folder.glob("*.jpg")):
            raise PropagateError(f"no frames for sequence {sequence}: {folder} is missing or holds no .jpg files")
        return folder

    def annotation_files(self, sequence: str) -> list[Path]:
        """The sequence's annotation PNGs in frame order (names sorted, as the official tool does)."""
        folder = self.annotation_root / sequence
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if not files:
            raise PropagateError(f"no annotations for sequence {sequence}: {folder} is missing or holds no .png files")
        return files

    def read_annotations(self, sequence: str) -> tuple[np.ndarray, list[str]]:
        """All annotations of a sequence: ``[T, H, W]`` uint8 indices and the ``T`` frame names (file stems)."""
        files = self.annotation_files(sequence)
        masks = [read_mask(f) for f in files]
        height, width = masks[0].shape
        for f, m in zip(files, masks):
            if m.shape != (height, width):
                raise PropagateError(f"annotation {f} is {m.shape[1]}x{m.shape[0]} but {files[0].name} is "
                                     f"{width}x{height}: all annotations of sequence {sequence} must have one size")
        return np.stack(masks), [f.stem for f in files]


def _plain_name(name: str) -> bool:
    """Whether ``name`` names one entry of a folder: not empty, not . or .., no path separator."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _without_void(mask: np.ndarray) -> np.ndarray:
    """An annotation as a keyframe result: void (255) becomes background, as results hold no void."""
    return np.where(mask == VOID, 0, mask).astype(np.uint8)


def is_davis_root(path: str | Path) -> bool:
    """Whether ``path`` looks like a DAVIS root (it holds ``JPEGImages/480p``)."""
    return (Path(path) / "JPEGImages" / RESOLUTION).is_dir()


def sequence_folders(root: str | Path) -> list[Path]:
    """The frame folders of every sequence of a DAVIS root (``JPEGImages/480p/<seq>``), sorted by name."""
    folder = Path(root) / "JPEGImages" / RESOLUTION
    sequences = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not sequences:
        raise PropagateError(f"DAVIS root {root} has no sequence folders under JPEGImages/{RESOLUTION}")
    return sequences


def read_result_mask(path: Path, sequence: str, frame: str, size_hw: tuple[int, int], num_objects: int) -> np.ndarray:
    """One result PNG as ``[H, W]`` uint8 indices, checked against the ground truth of that frame."""
    if not path.is_file():
        raise PropagateError(f"sequence {sequence}, frame {frame}: result {path} is missing; write one PNG per "
                             "annotated frame, named like the annotation (frames 1..T-2 are scored)")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode not in ("P", "L", "1"):
                raise PropagateError(
                    f"sequence {sequence}, frame {frame}: result {path} is a {mode} image; save results as indexed "
                    "(palette) or greyscale PNGs whose values are object indices (0 background, 1..K objects)")
            mask = np.array(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise PropagateError(f"sequence {sequence}, frame {frame}: result {path} is not a readable PNG "
                             f"({exc.__class__.__name__}); rewrite it") from None
    if mask.shape != tuple(size_hw):
        raise PropagateError(f"sequence {sequence}, frame {frame}: result {path} is {mask.shape[1]}x{mask.shape[0]} "
                             f"but the annotation is {size_hw[1]}x{size_hw[0]}; write results at the annotation's size")
    top = int(mask.max()) if mask.size else 0
    if top > num_objects:
        raise PropagateError(f"sequence {sequence}, frame {frame}: result {path} holds object index {top} but the "
                             f"first annotation has {num_objects} object(s) (1..{num_objects}); use the annotation's "
                             "indices (no void 255 in results)")
    return mask


def score_davis(root: str | Path, results: str | Path, split: str = "val",
                sequences: Sequence[str] | str | None = None, progress: bool = True) -> dict[str, Any]:
    """Score a results folder against DAVIS ground truth and write the two official CSVs into it.

    Existing ``global_results-<split>.csv`` / ``per-sequence_results-<split>.csv`` are never read; they are replaced
    (atomically) once the new numbers are whole, and left untouched when scoring fails.

    Args:
        root: DAVIS root. results: folder holding ``<seq>/<frame>.png``. split: split name.
        sequences: a subset of the split (list or ``"a,b"``), default all.
        progress: show a progress bar over sequences.

    Returns:
        ``{"split", "sequences": [names], "global": {J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall,
        F-Decay}, "per_object": [{"Sequence": "<seq>_<k>", "J-Mean", ..., "F-Decay"}], "files": {"global",
        "per_sequence"}}``.
    """
    dataset = DavisDataset(root, split)
    names = dataset.select(sequences)
    results = Path(results)
    check_not_input(results, [dataset.root])  # the CSVs are written into the results folder
    if not results.is_dir():
        raise PropagateError(f"results folder {results} does not exist: pass the folder that holds one "
                             "subfolder of PNGs per sequence")
    global_path = results / global_csv_name(split)
    sequence_path = results / sequence_csv_name(split)

    per_object: list[dict[str, Any]] = []
    for seq in tqdm(names, desc=f"scoring {split}", unit="seq", disable=not progress):
        gt, frame_names = dataset.read_annotations(seq)
        num_objects = metrics.count_objects(gt[0])
        gt, frame_names = gt[1:-1], frame_names[1:-1]  # the first and last frames are not scored
        if not (results / seq).is_dir():
            raise PropagateError(f"sequence {seq}: no results folder {results / seq}; run it first or leave it out "
                                 "with --sequences")
        pred = np.stack([
            read_result_mask(results / seq / f"{name}.png", seq, name, gt.shape[1:], num_objects)
            for name in frame_names
        ]) if frame_names else np.zeros_like(gt)
        scored = metrics.score_sequence(gt, pred, num_objects)
        for k, stats in enumerate(scored["objects"]):
            per_object.append({"Sequence": f"{seq}_{k + 1}", **stats})
    if not per_object:
        raise PropagateError(f"no objects to score in {', '.join(names)}: their first annotations are empty")

    table = metrics.global_scores(per_object)
    atomic_write_text(global_path, _csv_text(metrics.GLOBAL_COLUMNS, [[table[c] for c in metrics.GLOBAL_COLUMNS]]))
    atomic_write_text(sequence_path, _csv_text(metrics.SEQUENCE_COLUMNS,
                                               [[o["Sequence"], o["J-Mean"], o["F-Mean"]] for o in per_object]))
    return {"split": split, "sequences": names, "global": table, "per_object": per_object,
            "files": {"global": str(global_path), "per_sequence": str(sequence_path)}}


def _format_value(value: Any) -> str:
    """As the official writer (pandas, float_format "%.3f"): 3 decimals, NaN as an empty field."""
    if isinstance(value, str):
        return value
    value = float(value)
    return "" if np.isnan(value) else "%.3f" % value


def _csv_text(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_format_value(v) for v in row])
    return buffer.getvalue()


def _text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(columns)] + [[_format_value(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join(" ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def format_table(scores: dict[str, Any]) -> str:
    """The global and per-sequence tables of :func:`score_davis`'s result, as the official tool prints them."""
    split = scores["split"]
    g = scores["global"]
    lines = [
        f"--------------------------- Global results for {split} ---------------------------",
        _text_table(metrics.GLOBAL_COLUMNS, [[g[c] for c in metrics.GLOBAL_COLUMNS]]),
        "",
        f"---------- Per sequence results for {split} ----------",
        _text_table(metrics.SEQUENCE_COLUMNS,
                    [[o["Sequence"], o["J-Mean"], o["F-Mean"]] for o in scores["per_object"]]),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The whole protocol: propagate every sequence's first mask, write the results, score them.

def evaluate_davis(root: str | Path, out: str | Path, config: Config, split: str = "val",
                   sequences: Sequence[str] | str | None = None, extractor: FeatureExtractor | None = None,
                   progress: bool = True, preset: str | None = None, command: str | None = None,
                   cache: FeatureStore | None = None, runner: Runner | None = None,
                   keyframes: Sequence[int] = (0,)) -> dict[str, Any]:
    """Run the semi-supervised protocol over a DAVIS split, then score it.

    Each sequence is one :class:`propagate.runs.Unit`: its first annotation propagated through its frames and
    every frame's mask written to ``<out>/<seq>/<frame>.png`` (by :func:`propagate.runs.run_video`, whole or not at
    all). A finished sequence is skipped, so an interrupted run resumes; ``<out>/run_info.json`` records what
    produced the numbers, and resuming with other settings is refused. A sequence named in ``config.overrides``
    runs with its own config (:func:`propagate.config.sequence_config`; DIFT's script caps ``shooting``'s context at
    10 frames), recorded under ``sequence_configs`` in run_info.json.

    Args:
        root: DAVIS root. out: results folder (created). config: a :class:`propagate.config.Config`.
        split: split name. sequences: subset of the split (list or ``"a,b"``).
        extractor: a ready extractor (tests inject one); built from ``config`` if ``None`` and needed.
        progress: progress bars over sequences and frames. preset: preset name, recorded in run_info.json.
        command: the command line, recorded in run_info.json (default ``sys.argv``).
        cache: a feature store (:class:`propagate.cache.FeatureCache`), or ``None``.
        runner: runs the pending units (default :func:`propagate.runs.run_units`, in this process; the cluster
            passes one that spreads them over workers).
        keyframes: frame indices whose annotations are given (default: the first frame only, the DAVIS
            protocol). More keyframes measure corrections; their frames are their own ground truth when scored.

    Returns:
        :func:`score_davis`'s dict, plus ``"run_info"`` (path of run_info.json).
    """
    from propagate.features import build_extractor
    from propagate.runs import Unit, run_units

    if not config.resize.upscale:  # the DAVIS protocol's size: short side short_side, smaller frames enlarged
        config = dataclasses.replace(config, resize=dataclasses.replace(config.resize, upscale=True))
    dataset = DavisDataset(root, split)
    names = dataset.select(sequences)
    out = Path(out)
    inputs = [dataset.root] + ([cache.folder] if cache is not None else [])
    settings = result_settings(config)
    if tuple(keyframes) != (0,):
        settings["keyframes"] = sorted(int(k) for k in keyframes)
    run = ResumableRun(out, inputs=inputs, info={"settings": settings}, keys=["settings"])  # before a model load
    pending = [seq for seq in names if not run.done(seq)]
    units = []
    for seq in pending:
        annotation = dataset.annotation_files(seq)[0]
        frames = dataset.image_dir(seq)
        first_frame = min((p for p in frames.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
                          key=lambda p: natural_key(p.name))
        if first_frame.stem != annotation.stem:
            raise PropagateError(f"sequence {seq}: the first frame is {first_frame.stem} but the first annotation is "
                                 f"{annotation.name}; the first frame must be annotated")
        given: Path | dict[int, np.ndarray] = annotation
        if tuple(keyframes) != (0,):
            files = dataset.annotation_files(seq)
            missing = [k for k in keyframes if not 0 <= k < len(files)]
            if missing:
                raise PropagateError(f"sequence {seq} has {len(files)} annotated frames: keyframe(s) "
                                     f"{', '.join(map(str, missing))} do not exist; choose frames 0..{len(files) - 1}")
            given = {k: _without_void(read_mask(files[k])) for k in keyframes}
        units.append(Unit(seq, frames, given, out / seq, render=False, inputs=tuple(inputs),
                          config=sequence_config(config, seq) if seq in config.overrides else None))
    model = config.extractor.get("model")
    run.run(units, config, extractor, cache, progress, runner or run_units, build_extractor,
            task="DAVIS-2017 semi-supervised", preset=preset,
            **({"model": model} if model is not None else {}),
            dataset={"root": str(dataset.root.resolve()), "split": split, "sequences": names},
            sequence_configs={seq: result_settings(sequence_config(config, seq))
                              for seq in names if seq in config.overrides},
            keyframes=list(keyframes), **({"command": command} if command is not None else {}))

    scores = score_davis(root, out, split=split, sequences=names, progress=False)
    run.info["scores"] = scores["global"]
    run.record()
    scores["run_info"] = str(out / RUN_INFO)
    return scores
