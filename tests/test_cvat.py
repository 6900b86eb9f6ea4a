"""CVAT for video 1.1: our export read back by a reader written here from CVAT's published XML 1.1 description (not by
our own parser), keyframes exported and imported back giving byte-identical runs, a hand-written file importing as
documented, and every ambiguous file refused with one error line."""
from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_session import entering_clip

from propagate.cli import main
from propagate.config import load_config
from propagate.cvat import decode_rle, encode_rle
from propagate.errors import PropagateError
from propagate.labels import read_keyframes, read_mask, write_mask
from propagate.runs import run_points

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--features", "baseline", "--set", "resize.short_side=128", "--no-video"]


# ---------------------------------------------------------------------------------------------- a reader from the spec


def spec_rle(counts: list[int], width: int, height: int) -> np.ndarray:
    """CVAT's mask RLE as its XML description puts it: run lengths over the ``width x height`` box, row by row,
    alternating background and foreground, the first run background."""
    flat, value = [], 0
    for count in counts:
        flat += [value] * count
        value = 1 - value
    assert len(flat) == width * height
    return np.array(flat, dtype=bool).reshape(height, width)


def spec_read(path: Path) -> dict:
    """Everything a CVAT for video 1.1 file says, read with the standard library (the file is ours: no DTD)."""
    root = ET.parse(path).getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    task = root.find("meta/task")
    tracks = {}
    for track in root.findall("track"):
        shapes = {}
        for shape in track:
            frame = int(shape.get("frame"))
            assert frame not in shapes, "one shape per frame in a track"
            shapes[frame] = shape
        tracks[track.get("label")] = shapes
    return {
        "size": int(task.findtext("size")), "mode": task.findtext("mode"),
        "original_size": (int(task.findtext("original_size/width")), int(task.findtext("original_size/height"))),
        "labels": [label.findtext("name") for label in task.findall("labels/label")],
        "tracks": tracks,
    }


def spec_mask(shape: ET.Element, size_wh: tuple[int, int]) -> np.ndarray:
    left, top, width, height = (int(shape.get(k)) for k in ("left", "top", "width", "height"))
    out = np.zeros((size_wh[1], size_wh[0]), dtype=bool)
    counts = [int(c) for c in shape.get("rle").split(",")]
    out[top:top + height, left:left + width] = spec_rle(counts, width, height)
    return out


def test_rle_of_the_published_example_and_a_first_pixel_inside():
    counts = [3, 5, 7, 7, 5, 9, 3, 11, 2, 11, 2, 12, 1, 12, 1, 26, 1, 12, 1, 12, 2, 11, 3, 9, 5, 7, 7, 5, 3]
    box = decode_rle(counts, 13, 15)
    assert np.array_equal(box, spec_rle(counts, 13, 15))
    frame = np.zeros((40, 30), bool)
    frame[10:25, 5:18] = box
    assert encode_rle(frame) == (counts, 5, 10, 13, 15)
    full = np.zeros((4, 4), bool)
    full[1:3, 1:3] = True
    assert encode_rle(full) == ([0, 4], 1, 1, 2, 2)  # the box starts inside the object: a background run of 0
    with pytest.raises(ValueError):
        decode_rle([3, 2], 2, 2)


# ---------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def keyed_run(tmp_path_factory):
    """A run from PNG keyframes on frames 0 and 4 of a clip where object 2 enters on frame 3, with the CVAT export."""
    root = tmp_path_factory.mktemp("cvat")
    frames, truth = entering_clip(root / "clip", frames=8, enter=3)
    keys = root / "keys"
    keys.mkdir()
    write_mask(keys / "00000.png", truth[0])
    write_mask(keys / "00004.png", truth[4])
    assert main(["run", str(frames), "--mask", str(keys), "--out", str(root / "png"), "--format", "png,cvat",
                 *SMALL]) == 0
    return root, frames, truth


def test_our_xml_read_by_the_spec_reader_equals_the_pngs(keyed_run):
    root, frames, truth = keyed_run
    out = root / "png"
    doc = spec_read(out / "annotations.xml")
    rows = list(csv.DictReader((out / "confidence.csv").open()))
    assert doc["size"] == 8 and doc["mode"] == "interpolation" and doc["original_size"] == (192, 128)
    assert doc["labels"] == ["object-1", "object-2"] and sorted(doc["tracks"]) == ["object-1", "object-2"]
    absent = 0
    for obj in (1, 2):
        shapes = doc["tracks"][f"object-{obj}"]
        for t, row in enumerate(rows):
            png = read_mask(out / f"{row['name']}.png") == obj
            shape = shapes.get(t)
            if png.any():
                assert shape is not None and shape.get("outside") == "0"
                assert np.array_equal(spec_mask(shape, (192, 128)), png), (obj, t)
                assert float(shape.find("attribute[@name='confidence']").text) == float(row[f"object_{obj}"])
            else:  # absent: outside, or before the track's first shape
                absent += 1
                assert shape is None and t < min(shapes) or shape.get("outside") == "1"
            if shape is not None:
                assert shape.get("keyframe") == row["keyframe"]
    assert {t for t, s in doc["tracks"]["object-1"].items() if s.get("keyframe") == "1"} == {0, 4}
    assert absent >= 1  # object 2 is absent on frame 0 (it enters on frame 3)


def test_an_explicit_absence_is_outside_even_with_pixels():
    from propagate.cvat import CvatVideoWriter

    writer = CvatVideoWriter("v", (8, 6), [1, 2], names={2: "cup"})
    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 2:5] = 1
    mask[4:6, 0:2] = 2
    writer.add(mask, keyframe=True)
    writer.add(mask, absent={1})
    writer.add(np.zeros_like(mask))
    root = ET.fromstring(writer.to_xml())
    tracks = {t.get("label"): t for t in root.findall("track")}
    assert sorted(tracks) == ["cup", "object-1"]
    assert [(m.get("frame"), m.get("outside"), m.get("keyframe")) for m in tracks["object-1"]] == [
        ("0", "0", "1"), ("1", "1", "0"), ("2", "1", "0")]
    assert [(m.get("frame"), m.get("outside")) for m in tracks["cup"]] == [("0", "0"), ("1", "0"), ("2", "1")]


# ---------------------------------------------------------------------------------------------- round trip


def test_keyframes_through_cvat_give_byte_identical_results(keyed_run, tmp_path, capsys):
    root, frames, _ = keyed_run
    xml = root / "png" / "annotations.xml"
    archive = tmp_path / "task.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(xml, "annotations.xml")
        z.writestr("images/frame_000000.png", b"not read")
    for given, out in ((xml, tmp_path / "xml"), (archive, tmp_path / "zip")):
        capsys.readouterr()
        assert main(["run", str(frames), "--mask", str(given), "--out", str(out), "--format", "png,cvat",
                     *SMALL]) == 0
        err = capsys.readouterr().err
        notes = [line for line in err.splitlines() if line.startswith("note:")]
        assert len(notes) == 1 and "object-<n>" in notes[0] and "keyframes on frames 0, 4" in notes[0]
        for file in sorted((root / "png").iterdir()):
            if file.suffix in (".png", ".csv", ".xml"):
                assert (out / file.name).read_bytes() == file.read_bytes(), file.name
        info = json.loads((out / "run_info.json").read_text())
        assert info["keyframes"] == [0, 4]


def test_keyframes_alone_written_as_cvat_give_the_results_of_the_png_keyframes(keyed_run, tmp_path):
    from propagate.cvat import CvatVideoWriter

    root, frames, truth = keyed_run
    writer = CvatVideoWriter("clip", (192, 128), [1, 2], num_frames=8)
    writer.add(truth[0], keyframe=True, frame=0)  # object 2 is not there yet: its track starts on frame 4
    writer.add(truth[4], keyframe=True, frame=4)
    with pytest.raises(ValueError, match="add frames in order"):
        writer.add(truth[1], frame=1)
    xml = tmp_path / "keys.xml"
    xml.write_bytes(writer.to_xml())
    assert main(["run", str(frames), "--mask", str(xml), "--out", str(tmp_path / "out"), *SMALL]) == 0
    for file in sorted((root / "png").glob("*.png")) + [root / "png" / "confidence.csv"]:
        assert (tmp_path / "out" / file.name).read_bytes() == file.read_bytes(), file.name


# ---------------------------------------------------------------------------------------------- a hand-written file


HAND = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta>
    <task>
      <id>7</id><name>hand</name><size>6</size><mode>interpolation</mode>
      <labels><label><name>person</name></label><label><name>car</name></label><label><name>dog</name></label></labels>
      <original_size><width>40</width><height>30</height></original_size>
    </task>
  </meta>
  <track id="5" label="person" source="manual">
    <polygon frame="0" outside="0" occluded="0" keyframe="1" points="2,2;12,2;12,10;2,10" z_order="0"/>
    <polygon frame="1" outside="0" occluded="0" keyframe="0" points="3,2;13,2;13,10;3,10" z_order="0"/>
    <polygon frame="2" outside="1" occluded="0" keyframe="1" points="3,2;13,2;13,10;3,10" z_order="0"/>
  </track>
  <track id="9" label="car" source="manual">
    <box frame="0" outside="0" occluded="0" keyframe="1" xtl="20" ytl="15" xbr="30" ybr="25" z_order="0"/>
    <box frame="3" outside="0" occluded="1" keyframe="1" xtl="22.4" ytl="15" xbr="32.6" ybr="25" z_order="0">
      <attribute name="colour">red</attribute>
    </box>
  </track>
  <track id="11" label="dog" source="manual">
    <mask frame="3" outside="0" occluded="0" keyframe="1" rle="1, 2, 2, 1" left="30" top="20" width="3" height="2"
          z_order="1"/>
  </track>
</annotations>
"""


def test_a_hand_written_file_imports_as_documented(tmp_path, capsys):
    path = tmp_path / "annotations.xml"
    path.write_text(HAND)
    names = [f"{t:05d}" for t in range(6)]
    masks = read_keyframes(path, names, (40, 30))
    note = capsys.readouterr().err.strip()
    assert note.startswith("note:") and "\n" not in note
    assert "track 5 (person) -> 1, track 9 (car) -> 2, track 11 (dog) -> 3" in note
    assert "keyframes on frames 0, 3" in note and "1 outside keyframes not used" in note
    assert sorted(masks) == [0, 3]
    want0 = np.zeros((30, 40), np.uint8)
    want0[2:10, 2:12] = 1  # pixel centres inside the polygon 2..12 x 2..10
    want0[15:25, 20:30] = 2  # the box 20..30 x 15..25
    assert np.array_equal(masks[0], want0)
    want3 = np.zeros((30, 40), np.uint8)
    want3[15:25, 22:33] = 2  # centres 22.5 .. 32.5 lie inside 22.4 .. 32.6; the person is outside since frame 2
    want3[20, 31:33] = 3  # the dog's mask (z_order 1) over the car: rows of 3, background run first
    want3[21, 32] = 3
    assert np.array_equal(masks[3], want3)


def test_rotation_turns_boxes_and_ellipses_clockwise_on_screen():
    from propagate.cvat import Shape, rasterise

    box = Shape("box", 0, False, True, 0, {"xtl": "30", "ytl": "48", "xbr": "70", "ybr": "52", "rotation": "90"})
    want = np.zeros((100, 100), bool)
    want[30:70, 48:52] = True  # a 40x4 box on its centre turned a quarter: 4x40
    assert np.array_equal(rasterise(box, (100, 100), "t"), want)
    ellipse = Shape("ellipse", 0, False, True, 0, {"cx": "50.5", "cy": "50.5", "rx": "20", "ry": "5", "rotation": "30"})
    pixels = rasterise(ellipse, (100, 100), "t")
    # 15 px along the long axis turned 30 degrees clockwise (y down): down and right of the centre, not up
    assert pixels[57, 63] and not pixels[43, 63] and pixels[50, 50]


BAD_CASES = {
    "frame": (HAND.replace('frame="3" outside="0" occluded="1"', 'frame="6" outside="0" occluded="1"'),
              "frame 6, outside the video's frames 0..5"),
    "size": (HAND.replace("<width>40</width>", "<width>64</width>"), "is for 64x30 frames but the video's are 40x30"),
    "length": (HAND.replace("<size>6</size>", "<size>60</size>"), "task of 60 frames but the video has 6"),
    "polyline": (HAND.replace("<box frame=\"0\"", "<polyline frame=\"0\"").replace(
        'xtl="20" ytl="15" xbr="30" ybr="25" z_order="0"/>', 'points="1,1;5,5" z_order="0"/>', 1),
        "made of polyline shapes"),
    "step": (HAND.replace("<mode>", "<frame_filter>step=2</frame_filter><mode>"), "frame filter 'step=2'"),
    "gap": (HAND.replace('<polygon frame="2" outside="1"', '<polygon frame="4" outside="1"'),
            "track 5 (person) is inside frame 3"),
    "images": (HAND.replace("<track id=\"5\"", "<image id=\"0\" name=\"a.png\"/><track id=\"5\""), "CVAT for images"),
    "doctype": ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
                "<annotations>&b;</annotations>", "declares a DOCTYPE"),
    "broken": (HAND[:-40], "not well-formed XML"),
    "no keyframe": (HAND.replace('keyframe="1"', 'keyframe="0"'), "no keyframe shape"),
    "rle": (HAND.replace('rle="1, 2, 2, 1"', 'rle="1, 2, 2"'), "add up to 5 pixels, not 3x2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_an_ambiguous_file_is_one_error(case, tmp_path):
    text, words = BAD_CASES[case]
    path = tmp_path / "annotations.xml"
    path.write_text(text)
    with pytest.raises(PropagateError, match=re.escape(words)):
        read_keyframes(path, [f"{t:05d}" for t in range(6)], (40, 30))


def test_the_cli_says_an_ambiguous_file_in_one_line_and_writes_nothing(keyed_run, tmp_path, capsys):
    _, frames, _ = keyed_run
    bad = tmp_path / "annotations.xml"
    bad.write_text(BAD_CASES["size"][0])
    code = main(["run", str(frames), "--mask", str(bad), "--out", str(tmp_path / "out"), *SMALL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: CVAT file") and "192x128" in err[0]
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "task.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("images/frame_000000.png", b"")
    with pytest.raises(PropagateError, match="holds 0 XML files"):
        read_keyframes(empty, ["a"], (40, 30))


# ---------------------------------------------------------------------------------------------- points


def test_points_are_points_tracks_with_lost_frames_outside(tmp_path):
    from test_runs import _moving_clip

    clip = _moving_clip(tmp_path / "clip")
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"name": "tl", "x": 24, "y": 20}, {"name": "c", "x": 32, "y": 28}]}))
    config = load_config("jhmdb_baseline", ["resize.size=[96,64]"])
    run_points(clip, points, tmp_path / "out", config, progress=False, render=False, formats=["png", "cvat"])
    data = json.loads((tmp_path / "out" / "points.json").read_text())
    doc = spec_read(tmp_path / "out" / "annotations.xml")
    assert doc["labels"] == ["tl", "c"] and doc["size"] == 6
    for name in ("tl", "c"):
        for t, frame in enumerate(data["frames"]):
            shape = doc["tracks"][name][t]
            assert shape.tag == "points" and shape.get("keyframe") == str(int(t == 0))
            point = frame["points"][name]
            if point["x"] is None:
                assert shape.get("outside") == "1"
            else:
                x, y = (float(v) for v in shape.get("points").split(","))
                assert shape.get("outside") == "0" and abs(x - point["x"]) <= 0.005 and abs(y - point["y"]) <= 0.005
