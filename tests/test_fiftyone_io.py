"""FiftyOne, with its real database (the MongoDB its ``fiftyone-db`` package ships, started in a temporary folder):
a run loaded into a video dataset reads back every frame's masks equal to the PNGs, ``apply_model`` with keyframe
prompts gives the masks ``propagate run`` gives, and FiftyOne's own CVAT video reader reads our points tracks.
Skipped, with the reason, where FiftyOne or its database cannot start."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_session import entering_clip

from propagate.config import load_config
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.labels import read_mask, write_mask
from propagate.runs import run_points, run_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fo(tmp_path_factory):
    """FiftyOne, its database in a pytest temporary folder (removed with pytest's old ones), no usage tracking; a
    skip (with the reason) if it cannot start."""
    home = tmp_path_factory.mktemp("fiftyone")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_DIR": f"{home}/db",
                           "FIFTYONE_DEFAULT_DATASET_DIR": f"{home}/datasets", "FIFTYONE_CONFIG_PATH": f"{home}/c.json",
                           "FIFTYONE_DATABASE_VALIDATION": "false"}.items():
            patch.setenv(key, value)
        try:
            import fiftyone
        except ImportError as exc:
            pytest.skip(f"fiftyone is not installed ({exc}): pip install -e '.[fiftyone]'")
        try:
            fiftyone.Dataset().delete()
        except Exception as exc:  # noqa: BLE001 - any failure to start the database means: skip, saying why
            print(f"FiftyOne's database did not start: {exc!r}")
            pytest.skip(f"FiftyOne's database did not start: {exc}")
        yield fiftyone


def video_from(frames: Path, path: Path) -> Path:
    import imageio.v2 as imageio

    with imageio.get_writer(str(path), fps=10, codec="libx264", macro_block_size=1, ffmpeg_log_level="error",
                            output_params=["-crf", "10"]) as writer:
        for file in sorted(frames.iterdir()):
            writer.append_data(np.array(Image.open(file)))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A video file with two objects (one entering on frame 3), keyframes 0 and 4, and its ``propagate run``."""
    root = tmp_path_factory.mktemp("fo")
    frames, truth = entering_clip(root / "frames", frames=8, enter=3)
    video = video_from(frames, root / "clip.mp4")
    keys = root / "keys"
    keys.mkdir()
    write_mask(keys / "00000.png", truth[0])
    write_mask(keys / "00004.png", truth[4])
    config = load_config("davis_baseline", {"resize.short_side": 128})
    extractor = build_extractor("baseline")
    run_video(video, keys, root / "out", config, extractor=extractor, render=False, progress=False)
    return root, video, truth, config, extractor


def need_ffprobe() -> None:
    if shutil.which("ffprobe") is None:
        print("FiftyOne reads videos with ffprobe, which is not installed")
        pytest.skip("FiftyOne reads videos with ffprobe, which is not installed: apt-get install ffmpeg")


def full_mask(fo, detections, size_wh) -> np.ndarray:
    """FiftyOne's own rendering of instance masks into one index mask (object id = the detection's index)."""
    out = np.zeros((size_wh[1], size_wh[0]), np.uint8)
    for det in detections.detections:
        seg = fo.Detections(detections=[det]).to_segmentation(frame_size=size_wh, mask_targets={det.index: det.label})
        out[seg.get_mask() == det.index] = det.index
    return out


def test_a_run_loaded_into_a_dataset_reads_back_the_pngs(fo, run):
    from propagate.fiftyone_io import load_results

    root, video, _, _, _ = run
    dataset = load_results(root / "out", segmentation_field="propagate_segmentation")
    try:
        assert dataset.media_type == "video" and len(dataset) == 1
        sample = dataset.first()
        assert sample.filepath == str(video.resolve()) and len(sample.frames) == 8
        rows = (root / "out" / "confidence.csv").read_text().splitlines()[1:]
        dataset.reload()
        for number, frame in sample.frames.items():
            index, name, keyframe, *confidence = rows[number - 1].split(",")
            png = read_mask(root / "out" / f"{name}.png")
            assert np.array_equal(full_mask(fo, frame["propagate"], (192, 128)), png), number
            assert np.array_equal(frame["propagate_segmentation"].get_mask(), png)
            for det in frame["propagate"].detections:
                assert det.label == f"object-{det.index}" and det.keyframe == (keyframe == "1")
                assert det.confidence == pytest.approx(float(confidence[det.index - 1]))
    finally:
        dataset.delete()
    with pytest.raises(PropagateError, match="is not a file: FiftyOne video datasets hold video files"):
        load_results(root / "out", video=root / "frames")


@pytest.mark.parametrize("prompt", ["segmentation", "detections"])
def test_apply_model_with_keyframe_prompts_gives_the_masks_of_propagate_run(fo, run, prompt):
    from propagate.fiftyone_io import PropagateModel, mask_to_detections

    root, video, truth, config, extractor = run
    need_ffprobe()
    dataset = fo.Dataset()
    try:
        sample = fo.Sample(filepath=str(video))
        for index in (0, 4):
            label = fo.Segmentation(mask=truth[index]) if prompt == "segmentation" else mask_to_detections(truth[index])
            sample.frames[index + 1] = fo.Frame(keyframes=label)
        dataset.add_sample(sample)
        model = PropagateModel(config, extractor=extractor)
        dataset.apply_model(model, label_field="propagate", prompt_field="frames.keyframes", skip_failures=False)
        dataset.reload()
        frames = dataset.first().frames
        assert len(frames) == 8
        for number, frame in frames.items():
            png = read_mask(root / "out" / f"{number - 1:05d}.png")
            assert np.array_equal(full_mask(fo, frame["propagate"], (192, 128)), png), number
    finally:
        dataset.delete()


def test_points_load_as_keypoints_and_fiftyone_reads_our_cvat_points(fo, run, tmp_path):
    from fiftyone.utils.cvat import load_cvat_video_annotations

    from propagate.fiftyone_io import PropagateModel, load_results

    root, video, _, _, extractor = run
    need_ffprobe()
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"name": "disk", "x": 40, "y": 50}, {"name": "edge", "x": 62, "y": 50}],
                                  "edges": [["disk", "edge"]]}))
    config = load_config("jhmdb_baseline", {"resize.size": [192, 128]})
    run_points(video, points, tmp_path / "out", config, extractor=extractor, render=False, progress=False,
               formats=["png", "cvat"])
    data = json.loads((tmp_path / "out" / "points.json").read_text())
    dataset = load_results(tmp_path / "out", label_field="points")
    try:
        assert dataset.skeletons["frames.points"].labels == ["disk", "edge"]
        for number, frame in dataset.first().frames.items():
            (keypoint,) = frame["points"].keypoints
            for (x, y), name in zip(keypoint.points, ["disk", "edge"]):
                want = data["frames"][number - 1]["points"][name]
                assert (x * 192, y * 128) == pytest.approx((want["x"], want["y"]))
        model_set = fo.Dataset()
        sample = fo.Sample(filepath=str(video))
        sample.frames[1] = fo.Frame(keyframes=fo.Keypoints(keypoints=[fo.Keypoint(points=[(40 / 192, 50 / 128),
                                                                                          (62 / 192, 50 / 128)])]))
        model_set.add_sample(sample)
        model_set.apply_model(PropagateModel(points_config=config, extractor=extractor), label_field="points",
                              prompt_field="frames.keyframes", skip_failures=False)
        model_set.reload()
        for number, frame in model_set.first().frames.items():
            (keypoint,) = frame["points"].keypoints
            for (x, y), name in zip(keypoint.points, ["disk", "edge"]):
                want = data["frames"][number - 1]["points"][name]
                assert (x * 192, y * 128) == pytest.approx((want["x"], want["y"]), abs=1e-3)
        model_set.delete()
    finally:
        dataset.delete()
    _, _, tracks = load_cvat_video_annotations(str(tmp_path / "out" / "annotations.xml"))
    by_label = {t.label: t for t in tracks}
    assert sorted(by_label) == ["disk", "edge"]
    for name, track in by_label.items():
        for frame_number, shape in track.points.items():
            want = data["frames"][frame_number]["points"][name]
            if shape.outside:
                assert want["x"] is None
            else:
                # FiftyOne's reader rounds CVAT's coordinates to whole pixels
                assert shape.points[0] == pytest.approx((want["x"], want["y"]), abs=0.5 + 0.005)
