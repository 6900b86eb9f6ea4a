"""JHMDB keypoint propagation: read the dataset, run the CRW protocol, score PCK (DESIGN section 5).

Layout of a JHMDB root (the official one)::

    Rename_Images/<class>/<video>/00001.png ...             frames, 1-based names
    joint_positions/<class>/<video>/joint_positions.mat      pos_img: [2, 15, T] (x, y), 1-based (MATLAB) pixels

Split lists (``--split-file``), one video per line, blank lines and ``#`` comments ignored; three forms:

- plain: ``<class>/<video>`` (relative to the root);
- CRW's ``<frames folder> <mat path>``: two paths, absolute or relative to the root. If a path does not exist,
  its last components (``<class>/<video>``) are looked up in the root, so lists written on another machine work;
- JHMDB's own ``splits/<class>_test_split<N>.txt``: ``<video>.avi <1|2>`` lines, the class taken from the file
  name; the test videos (``2``) are used.

Results folder (``--out``)::

    <out>/run_info.json                        what produced the numbers; resuming with other settings is refused
    <out>/videos/<class>/<video>/points.json   predictions per frame (the format of ``propagate run --points``)
    <out>/videos/<class>/<video>/.complete     a video with this mark is not redone
    <out>/pck.csv                              PCK@0.1 and PCK@0.2: the mean over joints, then each joint

Protocol: frames are read at native size and resized per ``config.resize`` (the presets use 320x320); the first
frame's joints become Gaussian heatmaps and are propagated (:class:`propagate.keypoints.KeypointTracker`); every
frame's joints are decoded and scored against ``pos_img - 1`` with :mod:`propagate.pck`. A joint whose first-frame
heatmap is empty (far outside the frame) cannot be propagated and is left out of the score, as in CRW; a joint lost
later (its map fades to zero) counts as wrong (``pck.lost_joints: wrong``) or, as CRW scores it, is left out of the
score and of that frame's box (``drop``, the ``jhmdb_*`` presets).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import scipy.io

from propagate import pck as pck_lib
from propagate.config import Config, sequence_config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.features.stream import FeatureStore
from propagate.io import atomic_write_text, loads_json
from propagate.keypoints import PointSet
from propagate.records import RUN_INFO, result_settings
from propagate.results import ResumableRun
from propagate.runs import Runner, Unit, run_units
from propagate.video import open_video

IMAGES = "Rename_Images"
JOINTS = "joint_positions"
MAT_NAME = "joint_positions.mat"

# JHMDB's joint order (its README, 1-based there): the names used in points.json and pck.csv.
JOINT_NAMES = (
    "neck", "belly", "face", "right_shoulder", "left_shoulder", "right_hip", "left_hip", "right_elbow",
    "left_elbow", "right_knee", "left_knee", "right_wrist", "left_wrist", "right_ankle", "left_ankle",
)
# Skeleton edges (0-based joint indices), the puppet's limbs.
SKELETON = (
    (2, 0), (0, 1), (0, 3), (0, 4), (3, 7), (7, 11), (4, 8), (8, 12),
    (1, 5), (1, 6), (5, 9), (9, 13), (6, 10), (10, 14),
)
ALPHAS = (0.1, 0.2)
PCK_CSV = "pck.csv"


@dataclass
class JhmdbVideo:
    """One video of a split: ``name`` is ``<class>/<video>``."""

    name: str
    frames_dir: Path
    mat_path: Path


# ---------------------------------------------------------------------------------------------- reading


def read_split(split_file: str | Path, root: str | Path) -> list[JhmdbVideo]:
    """The videos a split list names (see the module docstring for the three forms), checked to exist."""
    split_file, root = Path(split_file), Path(root)
    if not split_file.is_file():
        raise PropagateError(f"split list {split_file} does not exist: give a file of <class>/<video> lines")
    if not root.is_dir():
        raise PropagateError(f"JHMDB root {root} does not exist: pass the folder that holds {IMAGES} and {JOINTS}")
    official = re.fullmatch(r"(.+)_test_split\d+\.txt", split_file.name)
    videos: list[JhmdbVideo] = []
    try:
        text = split_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PropagateError(f"split list {split_file} is not UTF-8 text (byte {exc.start}): give a text file of "
                             "<class>/<video> lines") from None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"split list {split_file}, line {lineno}"
        if len(parts) == 2 and parts[1] in ("1", "2") and official:
            if parts[1] == "2":
                name = f"{official.group(1)}/{Path(parts[0]).stem}"
                videos.append(_video(root, name, root / IMAGES / name, root / JOINTS / name / MAT_NAME, where))
        elif len(parts) == 1:
            name = parts[0].strip("/")
            videos.append(_video(root, name, root / IMAGES / name, root / JOINTS / name / MAT_NAME, where))
        elif len(parts) == 2:
            frames = _locate(Path(parts[0]), root, IMAGES, 2)
            mat = _locate(Path(parts[1]), root, JOINTS, 3)
            name = "/".join(Path(parts[0]).parts[-2:])
            videos.append(_video(root, name, frames, mat, where))
        else:
            raise PropagateError(f"{where}: {line!r} is not '<class>/<video>' nor '<frames folder> <mat path>'")
    if not videos:
        raise PropagateError(f"split list {split_file} names no videos")
    return videos


def _locate(path: Path, root: Path, top: str, keep: int) -> Path:
    """A CRW list path: as given, relative to ``root``, or its last ``keep`` components under ``root/top``."""
    for candidate in (path, root / path):
        if candidate.exists():
            return candidate
    return root / top / Path(*path.parts[-keep:]) if len(path.parts) >= keep else root / path


def _video(root: Path, name: str, frames: Path, mat: Path, where: str) -> JhmdbVideo:
    parts = name.split("/")
    if not all(part and part not in (".", "..") and "\\" not in part for part in parts):
        raise PropagateError(f"{where}: {name!r} is not a video name like <class>/<video> (a . or .. part would "
                             "read and write outside --root and --out): fix the list")
    if not frames.is_dir():
        raise PropagateError(f"{where}: video {name} has no frames folder {frames}; check the list and --root {root}")
    if not mat.is_file():
        raise PropagateError(f"{where}: video {name} has no joint file {mat}; check the list and --root {root}")
    return JhmdbVideo(name, frames, mat)


def read_joints(mat_path: str | Path) -> np.ndarray:
    """Ground-truth joints of a video from its ``joint_positions.mat``: ``[T, 15, 2]`` (x, y), 0-based pixels."""
    mat_path = Path(mat_path)
    try:
        data = scipy.io.loadmat(str(mat_path))
    except FileNotFoundError:
        raise PropagateError(f"joint file {mat_path} does not exist") from None
    except Exception as exc:  # scipy raises ValueError, MatReadError, TypeError... on a bad file
        raise PropagateError(f"joint file {mat_path} is not a readable .mat file ({exc.__class__.__name__}): "
                             "replace it with JHMDB's joint_positions.mat") from None
    if "pos_img" not in data:
        keys = ", ".join(sorted(k for k in data if not k.startswith("__"))) or "none"
        raise PropagateError(f"joint file {mat_path} has no pos_img (it holds: {keys}); give JHMDB's "
                             "joint_positions.mat")
    pos = np.asarray(data["pos_img"], dtype=np.float64)
    if pos.ndim == 2 and pos.shape == (2, len(JOINT_NAMES)):
        pos = pos[..., None]  # a single-frame video saved without its last axis
    if pos.ndim != 3 or pos.shape[0] != 2 or pos.shape[1] != len(JOINT_NAMES):
        raise PropagateError(f"joint file {mat_path}: pos_img has shape {list(pos.shape)}, expected "
                             f"[2, {len(JOINT_NAMES)}, T] (x/y, joints, frames)")
    return pos.transpose(2, 1, 0) - 1.0  # MATLAB 1-based -> 0-based


# ---------------------------------------------------------------------------------------------- scoring


def read_predictions(path: str | Path, names: Sequence[str] = JOINT_NAMES) -> tuple[np.ndarray, np.ndarray]:
    """``points.json`` -> ``(xy [T, J, 2] with NaN for lost points, tracked [J] bool)``."""
    path = Path(path)
    try:
        data = loads_json(path.read_text(encoding="utf-8"))  # nesting bounded: a hostile file is one line too
        xy = np.array([[[np.nan if f["points"][n]["x"] is None else f["points"][n]["x"],
                         np.nan if f["points"][n]["y"] is None else f["points"][n]["y"]] for n in names]
                       for f in data["frames"]], dtype=np.float64)
        tracked = np.array(data.get("tracked", [True] * len(names)), dtype=bool)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PropagateError(f"predictions {path} are unreadable ({exc.__class__.__name__}): delete that video's "
                             "folder to redo it") from None
    return xy.reshape(-1, len(names), 2), tracked


def score_jhmdb(
    videos: Sequence[JhmdbVideo], pred_root: str | Path, alphas: Sequence[float] = ALPHAS, lost_joints: str = "wrong"
) -> dict[str, Any]:
    """PCK of saved predictions (``<pred_root>/<class>/<video>/points.json``) against the ground truth.

    ``lost_joints``: ``wrong`` (a lost joint is a miss) or ``drop`` (left out of score and box, CRW).

    Returns ``{"videos": n, "frames_scored": n, "alphas": [...], "lost_joints": rule, "pck": {"0.1": {"mean": ..,
    "per_joint": {name: ..}}, ...}}`` (percentages; per-joint accuracy pools every scored frame of every video).
    """
    entries = []
    frames = 0
    for video in videos:
        gt = read_joints(video.mat_path)
        pred, tracked = read_predictions(Path(pred_root) / video.name / "points.json")
        if pred.shape != gt.shape:
            raise PropagateError(f"predictions of {video.name} cover {pred.shape[0]} frames but {video.mat_path} "
                                 f"annotates {gt.shape[0]}: delete that video's results to redo it")
        visible = np.broadcast_to(tracked[None, :], gt.shape[:2])
        entries.append((pred, gt, visible))
        frames += gt.shape[0] - 1
    table = pck_lib.pck_table(entries, alphas, lost_joints)
    result: dict[str, Any] = {"videos": len(videos), "frames_scored": frames, "alphas": [float(a) for a in alphas],
                              "lost_joints": lost_joints, "pck": {}}
    for alpha, (per_joint, overall) in table.items():
        result["pck"][f"{alpha:g}"] = {
            "mean": overall,
            "per_joint": {name: float(v) for name, v in zip(JOINT_NAMES, per_joint)},
        }
    return result


def _fmt(value: float) -> str:
    return "nan" if value != value else f"{value:.2f}"


def pck_rows(scores: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the PCK table: ``joint, PCK@a...``; the mean first, then each joint."""
    keys = list(scores["pck"])
    columns = ["joint"] + [f"PCK@{k}" for k in keys]
    rows = [["mean"] + [_fmt(scores["pck"][k]["mean"]) for k in keys]]
    for name in JOINT_NAMES:
        rows.append([name] + [_fmt(scores["pck"][k]["per_joint"][name]) for k in keys])
    return columns, rows


def format_pck_table(scores: dict[str, Any]) -> str:
    """The PCK table as aligned text for the terminal (what ``propagate eval jhmdb`` prints)."""
    columns, rows = pck_rows(scores)
    widths = [max(len(r[i]) for r in [columns] + rows) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [columns] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = f"JHMDB PCK (%) over {scores['videos']} videos, {scores['frames_scored']} scored frames"
    return "\n".join([head] + lines)


def write_pck_csv(path: str | Path, scores: dict[str, Any]) -> None:
    columns, rows = pck_rows(scores)
    atomic_write_text(path, "\n".join(",".join(r) for r in [columns] + rows) + "\n")


# ---------------------------------------------------------------------------------------------- the protocol


def evaluate_jhmdb(
    root: str | Path,
    split_file: str | Path,
    out: str | Path,
    config: Config,
    *,
    extractor: FeatureExtractor | None = None,
    progress: bool = True,
    preset: str | None = None,
    command: str | None = None,
    cache: FeatureStore | None = None,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Run the CRW keypoint protocol over the videos of a split list, then score PCK@0.1 and @0.2.

    Each video is one :class:`propagate.runs.Unit`: its first-frame joints propagated through its frames and
    written to ``<out>/videos/<class>/<video>/points.json`` (by :func:`propagate.runs.run_points`, whole or not at
    all). A finished video is skipped, so an interrupted run resumes. The extractor is built from ``config`` only if
    some video still needs it. ``<out>/pck.csv`` and ``<out>/run_info.json`` are written at the end.

    Args:
        root: JHMDB root (holds ``Rename_Images`` and ``joint_positions``).
        split_file: list of videos (see the module docstring).
        out: results folder (created). config: a :class:`propagate.config.Config` (use ``jhmdb_sd``).
        extractor: a ready feature extractor (tests inject one); built from ``config`` if ``None``.
        progress: progress bars over videos and frames. preset, command: recorded in run_info.json.
        cache: a feature store (:class:`propagate.cache.FeatureCache`), or ``None``.
        runner: runs the pending units (default :func:`propagate.runs.run_units`).

    Returns:
        :func:`score_jhmdb`'s dict plus ``"csv"`` and ``"run_info"`` paths; print it with :func:`format_pck_table`.
    """
    videos = read_split(split_file, root)
    out = Path(out)
    pred_root = out / "videos"
    inputs = [Path(root), Path(split_file)] + ([cache.folder] if cache is not None else [])
    settings = result_settings(config)
    run = ResumableRun(out, inputs=inputs, info={"settings": settings}, keys=["settings"])  # before a model load
    units = [_unit(video, pred_root, inputs, config) for video in videos if not run.done(f"videos/{video.name}")]
    run.run(units, config, extractor, cache, progress, runner or run_units, build_extractor,
            task="JHMDB keypoint propagation (CRW protocol)",
            preset=preset, dataset={"root": str(Path(root).resolve()), "split_file": str(Path(split_file).resolve()),
                                    "videos": [v.name for v in videos]},
            sequence_configs={v.name: result_settings(sequence_config(config, v.name))
                              for v in videos if v.name in config.overrides},
            **({"command": command} if command is not None else {}))

    scores = score_jhmdb(videos, pred_root, lost_joints=config.pck.lost_joints)
    write_pck_csv(out / PCK_CSV, scores)
    run.info["scores"] = scores["pck"]
    run.record()
    scores["csv"] = str(out / PCK_CSV)
    scores["run_info"] = str(out / RUN_INFO)
    return scores


def _unit(video: JhmdbVideo, pred_root: Path, inputs: Sequence[Path], config: Config) -> Unit:
    """A video's points job: its ground-truth joints of frame 0, checked to cover every frame; its own config if
    ``config.overrides`` names it (``<class>/<video>``)."""
    gt = read_joints(video.mat_path)
    count = len(open_video(video.frames_dir))
    if gt.shape[0] < count:
        raise PropagateError(f"joint file {video.mat_path} annotates {gt.shape[0]} frames but {video.frames_dir} "
                             f"holds {count}: every frame needs its joints; fix or drop video {video.name}")
    if gt.shape[0] > count:
        raise PropagateError(f"video {video.frames_dir} holds {count} frames but {video.mat_path} annotates "
                             f"{gt.shape[0]}: frames are missing; fix or drop video {video.name}")
    points = PointSet(list(JOINT_NAMES), gt[0].copy(), [tuple(edge) for edge in SKELETON])
    return Unit(video.name, video.frames_dir, points, pred_root / video.name, kind="points", render=False,
                inputs=tuple(inputs), extra={"video": video.name, "frames_dir": str(video.frames_dir)},
                config=sequence_config(config, video.name) if video.name in config.overrides else None)
