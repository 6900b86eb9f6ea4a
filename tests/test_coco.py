"""COCO exports: the video layout's RLE tracks decode back to the masks (pycocotools), keypoints as COCO keypoints."""
from __future__ import annotations

import json

import numpy as np
from pycocotools import mask as mask_utils

from propagate.coco import CocoVideoWriter, decode_video, keypoints_json
from propagate.config import load_config
from propagate.labels import read_mask
from propagate.runs import run_video


def test_video_tracks_round_trip_with_areas_boxes_and_absent_frames():
    masks = [np.zeros((20, 30), np.uint8) for _ in range(3)]
    masks[0][2:6, 3:9] = 1
    masks[1][2:6, 3:9] = 1
    masks[1][10:20, 20:30] = 3  # object 3 appears at frame 1; object 2 never does
    writer = CocoVideoWriter("clip", (30, 20), [1, 2, 3])
    for t, m in enumerate(masks):
        writer.add(f"{t:05d}", m)
    data = json.loads(json.dumps(writer.to_json()))  # as read back from the file
    assert [a["id"] for a in data["annotations"]] == [1, 2, 3]
    one, two, three = data["annotations"]
    assert one["areas"] == [24, 24, 0] and one["bboxes"][0] == [3.0, 2.0, 6.0, 4.0] and one["segmentations"][2] is None
    assert two["segmentations"] == [None, None, None] and three["areas"] == [0, 100, 0]
    assert data["videos"][0]["file_names"] == ["00000.png", "00001.png", "00002.png"]
    decoded = decode_video(data)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, masks))
    rle = dict(one["segmentations"][0], counts=one["segmentations"][0]["counts"].encode())
    assert mask_utils.decode(rle).sum() == 24


def test_run_with_coco_format_decodes_back_to_the_pngs(clip, tmp_path):
    frames, mask_path, _ = clip
    config = load_config("davis_baseline", {"resize.short_side": 128})
    run_video(frames, mask_path, tmp_path / "out", config, render=False, progress=False, formats=["png", "coco"])
    data = json.loads((tmp_path / "out" / "coco.json").read_text())
    pngs = [read_mask(p) for p in sorted((tmp_path / "out").glob("*.png"))]
    decoded = decode_video(data)
    assert len(decoded) == len(pngs) == 6 and all(np.array_equal(a, b) for a, b in zip(decoded, pngs))


def test_keypoints_json_lists_visible_and_lost_points():
    data = keypoints_json("clip", (64, 48), ["head", "tail"], [(0, 1)],
                          [("00000", np.array([[1.0, 2.0], [3.5, 4.0]])),
                           ("00001", np.array([[5.0, 6.0], [np.nan, np.nan]]))])
    assert data["categories"][0]["keypoints"] == ["head", "tail"] and data["categories"][0]["skeleton"] == [[1, 2]]
    assert data["annotations"][0]["keypoints"] == [1.0, 2.0, 2, 3.5, 4.0, 2]
    assert data["annotations"][1]["keypoints"] == [5.0, 6.0, 2, 0, 0, 0]
    assert data["annotations"][1]["num_keypoints"] == 1
    assert [i["file_name"] for i in data["images"]] == ["00000.png", "00001.png"]


def test_run_points_with_coco_format_writes_coco_keypoints(tmp_path):
    from test_runs import _moving_clip

    from propagate.runs import run_points

    clip = _moving_clip(tmp_path / "clip", frames=4)
    points = tmp_path / "points.csv"
    points.write_text("name,x,y\ncentre,32,28\ncorner,24,20\n")
    config = load_config("jhmdb_baseline", ["resize.size=[96,64]"])
    run_points(clip, points, tmp_path / "out", config, render=False, progress=False, formats=["png", "coco"])
    data = json.loads((tmp_path / "out" / "coco_keypoints.json").read_text())
    track = json.loads((tmp_path / "out" / "points.json").read_text())
    assert data["categories"][0]["keypoints"] == ["centre", "corner"] and len(data["annotations"]) == 4
    for ann, frame in zip(data["annotations"], track["frames"]):
        centre = frame["points"]["centre"]
        assert ann["keypoints"][:2] == [centre["x"], centre["y"]]
