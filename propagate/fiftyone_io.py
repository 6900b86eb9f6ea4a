"""FiftyOne: a results folder into a video dataset, and a model for ``apply_model`` with keyframe prompts.

Needs the ``fiftyone`` extra (``pip install -e ".[fiftyone]"``). The module is named so that it does not shadow the
``fiftyone`` package.

- :func:`load_results` adds a video sample (the video file the run read) whose frames carry the results: masks as
  ``Detections`` (one per object present, an instance mask in its pixel box, ``label`` ``object-<id>`` or a given
  name, ``index`` the object id, ``confidence`` from ``confidence.csv``, ``keyframe`` True on the user's keyframes),
  optionally the whole index mask as a ``Segmentation``; points as one ``Keypoints`` per frame (one ``Keypoint``
  whose points are in the run's order, NaN where lost, with per-point ``confidence``) and the point names and edges
  as the dataset's skeleton for that field.
- :class:`PropagateModel` is a FiftyOne video model: ``dataset.apply_model(model, label_field="propagate",
  prompt_field="frames.keyframes")`` propagates, per video, the prompts found on its frames (a ``Segmentation`` of
  object indices, ``Detections`` with instance masks, or ``Keypoints``) exactly as ``propagate run`` does with the
  same keyframes, and stores the result frame by frame as :func:`load_results` does.

FiftyOne numbers frames from 1; propagate from 0 (frame ``n`` here is frame ``n - 1`` of ``propagate run``).
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import fiftyone as fo
import fiftyone.core.models as fom
import numpy as np

from propagate.config import Config, load_config
from propagate.errors import PropagateError
from propagate.features import FeatureExtractor, build_extractor
from propagate.labels import object_ids, read_mask, require_objects
from propagate.pipeline import KeypointTracker, iter_masks, resolve_direction, track_points
from propagate.session import Session
from propagate.video import VideoSource, open_video

OBJECT_LABEL = re.compile(r"object-(\d+)")


def _label(obj: int, names: Mapping[int, str] | None) -> str:
    return (names or {}).get(obj, f"object-{obj}")


def mask_to_detections(mask: np.ndarray, confidence: Mapping[int, float] | None = None,
                       names: Mapping[int, str] | None = None, keyframe: bool = False) -> fo.Detections:
    """One frame's index mask ``[H, W]`` uint8 -> ``Detections``: per object present, its pixel box (relative
    coordinates) and the instance mask inside it."""
    height, width = mask.shape
    detections = []
    for obj in object_ids(mask):
        binary = mask == obj
        rows, cols = np.flatnonzero(binary.any(axis=1)), np.flatnonzero(binary.any(axis=0))
        top, left, bottom, right = int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1
        attributes: dict[str, object] = {"keyframe": bool(keyframe)}
        if confidence is not None:
            attributes["confidence"] = float(confidence.get(obj, 0.0))
        detections.append(fo.Detection(
            label=_label(obj, names), index=obj, mask=binary[top:bottom, left:right].copy(),
            bounding_box=[left / width, top / height, (right - left) / width, (bottom - top) / height], **attributes))
    return fo.Detections(detections=detections)


def prompt_to_mask(label: fo.Label, size_wh: tuple[int, int], where: str) -> np.ndarray:
    """A mask prompt -> index mask ``[H, W]`` uint8: a ``Segmentation`` of object indices at the frames' size, or
    ``Detections`` with instance masks (object id: the detection's ``index``, else its ``object-<n>`` label, else
    its place in the list, from 1)."""
    width, height = size_wh
    if isinstance(label, fo.Segmentation):
        mask = np.asarray(label.get_mask())
        if mask.shape[:2] != (height, width) or mask.ndim != 2:
            raise PropagateError(f"{where}: the Segmentation is {mask.shape[1]}x{mask.shape[0]} but the frames are "
                                 f"{width}x{height}: give object indices at the frames' size")
        return mask.astype(np.uint8)
    if isinstance(label, fo.Detections):
        out = np.zeros((height, width), np.uint8)
        for number, det in enumerate(label.detections, start=1):
            match = OBJECT_LABEL.fullmatch(det.label or "")
            obj = det.index if det.index is not None else int(match.group(1)) if match else number
            if det.mask is None:
                raise PropagateError(f"{where}: detection {det.label!r} has no instance mask: give masks")
            x, y, _, _ = det.bounding_box
            left, top = int(round(x * width)), int(round(y * height))
            box = np.asarray(det.mask).astype(bool)
            h, w = box.shape
            if left + w > width or top + h > height:
                raise PropagateError(f"{where}: detection {det.label!r} reaches outside the frame")
            out[top:top + h, left:left + w][box] = obj
        return out
    raise PropagateError(f"{where} is a {type(label).__name__}: give a Segmentation, Detections with masks or "
                         "Keypoints")


# ---------------------------------------------------------------------------------------------- a results folder


def _video_file(results: Path, video: str | Path | None) -> Path:
    if video is None:
        info = results / "run_info.json"
        try:
            video = json.loads(info.read_text(encoding="utf-8"))["video"]
        except (OSError, ValueError, KeyError):
            raise PropagateError(f"{results} has no readable run_info.json naming its video: pass the video") from None
    path = Path(str(video))
    if not path.is_file():
        raise PropagateError(f"video {path} is not a file: FiftyOne video datasets hold video files; encode the "
                             "frames as one (e.g. ffmpeg -i frames/%05d.jpg clip.mp4), run on it, and load that")
    return path


def load_results(results: str | Path, video: str | Path | None = None, *, dataset: fo.Dataset | None = None,
                 label_field: str = "propagate", segmentation_field: str | None = None,
                 names: Mapping[int, str] | None = None) -> fo.Dataset:
    """Add a results folder of ``propagate run`` (masks or points) to a FiftyOne video dataset (a new one unless
    ``dataset`` is given) as one sample of ``video`` (default: the video ``run_info.json`` names, which must be a
    video file). Returns the dataset."""
    results = Path(results)
    path = _video_file(results, video)
    source = open_video(path)
    dataset = dataset if dataset is not None else fo.Dataset()
    sample = fo.Sample(filepath=str(path.resolve()))
    if (results / "points.json").is_file():
        data = json.loads((results / "points.json").read_text(encoding="utf-8"))
        point_names = list(data["names"])
        _check_length(len(data["frames"]), source, results)
        keyframes = set(data.get("keyframes", []))
        for number, frame in enumerate(data["frames"], start=1):
            sample.frames[number] = fo.Frame(**{label_field: _keypoints(
                [frame["points"][n] for n in point_names], source.native_size, frame["name"] in keyframes)})
        dataset.add_sample(sample)
        index = {n: i for i, n in enumerate(point_names)}
        skeletons = dict(dataset.skeletons)
        skeletons[f"frames.{label_field}"] = fo.KeypointSkeleton(
            labels=point_names, edges=[[index[a], index[b]] for a, b in data.get("edges", [])])
        dataset.skeletons = skeletons
        return dataset
    rows = _confidence_rows(results)
    _check_length(len(rows), source, results)
    for number, row in enumerate(rows, start=1):
        mask = read_mask(results / f"{row['name']}.png", source.native_size)
        confidence = {int(k.removeprefix("object_")): float(v) for k, v in row.items() if k.startswith("object_")}
        fields: dict[str, fo.Label] = {label_field: mask_to_detections(mask, confidence, names, row["keyframe"] == "1")}
        if segmentation_field is not None:
            fields[segmentation_field] = fo.Segmentation(mask=mask)
        sample.frames[number] = fo.Frame(**fields)
    dataset.add_sample(sample)
    return dataset


def _confidence_rows(results: Path) -> list[dict[str, str]]:
    path = results / "confidence.csv"
    if not path.is_file():
        raise PropagateError(f"{results} has no confidence.csv nor points.json: give a results folder of "
                             "propagate run")
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def _check_length(count: int, source: VideoSource, results: Path) -> None:
    if count != len(source):
        raise PropagateError(f"{results} holds {count} frames but {source.path} has {len(source)}: give the video "
                             "the run read")


def _keypoints(points: Sequence[Mapping[str, float | None]], size_wh: tuple[int, int], keyframe: bool) -> fo.Keypoints:
    width, height = size_wh
    xy = [(float(p["x"]) / width, float(p["y"]) / height) if p["x"] is not None and p["y"] is not None
          else (math.nan, math.nan) for p in points]
    confidence = [float(p["confidence"] or 0.0) for p in points]
    return fo.Keypoints(keypoints=[fo.Keypoint(label="points", points=xy, confidence=confidence, keyframe=keyframe)])


# ---------------------------------------------------------------------------------------------- apply_model


class PropagateModel(fom.Model, fom.SamplesMixin):
    """A FiftyOne video model: propagates the keyframe prompts of each video's frames (``prompt_field``, a frame
    field such as ``frames.keyframes``; pass it to ``apply_model``) through the video with ``config`` (default: the
    ``davis_sd`` preset for masks, ``jhmdb_sd`` for points) and returns ``{frame number: label}``."""

    def __init__(self, config: Config | None = None, points_config: Config | None = None,
                 extractor: FeatureExtractor | None = None, direction: str | None = None,
                 names: Mapping[int, str] | None = None, prompt_field: str = "frames.keyframes"):
        fom.SamplesMixin.__init__(self)
        self.config = config
        self.points_config = points_config
        self.extractor = extractor
        self.direction = direction
        self.names = names
        self.needs_fields = {"prompt_field": prompt_field}

    @property
    def media_type(self) -> str:
        return "video"

    @property
    def ragged_batches(self) -> bool:
        return False

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        pass

    def predict(self, arg: object, sample: fo.Sample | None = None) -> dict[int, fo.Label]:
        """Propagate ``sample``'s prompts; ``arg`` (FiftyOne's video reader) is not read: frames come from the
        video file as ``propagate run`` reads them, so results are the same bytes."""
        if sample is None:
            raise PropagateError("PropagateModel needs the sample: use it through apply_model")
        field = self.needs_fields.get("prompt_field")
        if not field:
            raise PropagateError("say where the prompts are: apply_model(model, prompt_field='frames.keyframes')")
        name = field.removeprefix("frames.")
        source = open_video(sample.filepath)
        prompts = {number - 1: frame[name] for number, frame in sample.frames.items()
                   if frame.has_field(name) and frame[name] is not None}
        if not prompts:
            raise PropagateError(f"video {sample.filepath} has no prompt in {field}: add a keyframe label")
        if all(isinstance(p, fo.Keypoints) for p in prompts.values()):
            return self._points(source, prompts)
        keyframes = {i: prompt_to_mask(p, source.native_size, f"{sample.filepath} frame {i + 1} {field}")
                     for i, p in sorted(prompts.items())}
        require_objects(np.concatenate([m.ravel() for m in keyframes.values()]), f"{field} of {sample.filepath}")
        config = self.config or load_config("davis_sd")
        direction = self.direction or config.keyframes.direction
        _, backward = resolve_direction(direction, list(keyframes), len(source))
        if self.extractor is None:
            self.extractor = build_extractor(config.features, config.extractor)
        out = {}
        for index, mask, confidence, keyframe in self._mask_stream(source, keyframes, config, direction, backward):
            out[index + 1] = mask_to_detections(mask, confidence, self.names, keyframe)
        return out

    def _mask_stream(self, source: VideoSource, keyframes: dict[int, np.ndarray], config: Config, direction: str,
                     backward: bool) -> Iterator[tuple[int, np.ndarray, Mapping[int, float], bool]]:
        """The same choice as ``propagate run``: one keyframe on frame 0 streams forward, others use a session."""
        assert self.extractor is not None
        if list(keyframes) == [0] and not backward:
            for frame, mask, confidence in iter_masks(source, keyframes[0], config, extractor=self.extractor,
                                                      progress=False):
                yield frame.index, mask, confidence, frame.index == 0
            return
        session = Session(source, config, extractor=self.extractor, progress=False)
        for index, mask in keyframes.items():
            session.add_mask(index, mask)
        for index, result in session.propagate(direction):
            assert result.mask is not None
            yield index, result.mask, result.confidence, result.keyframe

    def _points(self, source: VideoSource, prompts: Mapping[int, fo.Label]) -> dict[int, fo.Label]:
        width, height = source.native_size
        keyframes = {}
        for index, label in sorted(prompts.items()):
            assert isinstance(label, fo.Keypoints)
            points = [p for kp in label.keypoints for p in kp.points]
            keyframes[index] = np.array([[x * width, y * height] for x, y in points], dtype=np.float64)
        sizes = {len(xy) for xy in keyframes.values()}
        if len(sizes) != 1:
            raise PropagateError(f"video {source.path}: the keypoint prompts hold different numbers of points "
                                 f"({sorted(sizes)}): give the same points, in the same order, on every keyframe")
        names = [str(j) for j in range(sizes.pop())]
        config = self.points_config or load_config("jhmdb_sd")
        direction = self.direction or config.keyframes.direction
        _, backward = resolve_direction(direction, list(keyframes), len(source))
        extractor = build_extractor(config.features, config.extractor) if self.extractor is None else self.extractor
        if list(keyframes) == [0] and not backward:
            tracker = KeypointTracker(config.propagation, config.keypoints, source.native_size)
            stream = ((f.index, xy, c) for f, xy, c in track_points(source, keyframes[0], config, extractor, None,
                                                                   False, tracker))
        else:
            session = Session(source, config, extractor=extractor, progress=False)
            for index, xy in keyframes.items():
                session.add_points(index, xy, names)
            stream = ((i, r.xy, np.array([r.confidence[n] for n in names])) for i, r in session.propagate(direction))
        out: dict[int, fo.Label] = {}
        for index, xy, confidence in stream:
            points = [{"x": float(x), "y": float(y), "confidence": float(c)} if np.isfinite(x) and np.isfinite(y)
                      else {"x": None, "y": None, "confidence": 0.0} for (x, y), c in zip(xy, confidence)]
            out[index + 1] = _keypoints(points, source.native_size, index in keyframes)
        return out
