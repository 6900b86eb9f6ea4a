"""The writers' table: what the CLI and the app read from it, a new format as one function and one entry, and the
writers a run of each label kind uses."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest

from propagate.config import load_config
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.io import atomic_write_text
from propagate.runs import export_session, run_points, run_video
from propagate.session import Session
from propagate.writers import WRITERS, Writer, check_formats, chosen, format_help, format_names, names_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = {"resize.short_side": 128}


def test_the_format_values_and_the_writers_of_each_kind_come_from_the_table():
    assert format_names() == ("png", "coco", "cvat")
    assert names_for("masks") == ("png", "coco", "cvat") and names_for("points") == ("coco", "cvat")
    names = {id(w): name for name, w in WRITERS.items()}
    assert [names[id(w)] for w in chosen("masks", ("png",), render=True)] == ["png", "confidence", "overlay"]
    assert [names[id(w)] for w in chosen("masks", ("coco",), render=False)] == ["png", "confidence", "coco"]
    assert [names[id(w)] for w in chosen("points", ("png", "coco"), render=False)] == ["points", "coco_keypoints"]
    assert [names[id(w)] for w in chosen("points", ("cvat",), render=False)] == ["points", "cvat_points"]
    assert check_formats(["coco", "png", "coco"]) == ("coco", "png")
    with pytest.raises(PropagateError, match="format xml: choose from png, coco, cvat"):
        check_formats(["png", "xml"])
    assert "coco: coco.json (masks), coco_keypoints.json (points)" in format_help()


@contextlib.contextmanager
def write_names(run):
    """A format made up for the test: the frame names, one a line."""
    names = []
    yield lambda frame, result: names.append(f"{frame.name} {int(result.keyframe)}")
    atomic_write_text(run.out / "names.txt", "\n".join(names) + "\n")


def test_a_new_format_is_one_function_and_one_entry(clip, tmp_path, monkeypatch):
    frames, mask, _ = clip
    monkeypatch.setitem(WRITERS, "names", Writer(write_names, ("masks", "points"), "names.txt", format="names"))
    assert format_names() == ("png", "coco", "cvat", "names") and "names: names.txt (masks, points)" in format_help()
    config = load_config("davis_baseline", CONFIG)
    run_video(frames, mask, tmp_path / "masks", config, formats=["names"], render=False, progress=False)
    expected = "".join(f"{i:05d} {int(i == 0)}\n" for i in range(6))
    assert (tmp_path / "masks" / "names.txt").read_text() == expected
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png")) == [f"{i:05d}.png" for i in range(6)]
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"name": "a", "x": 60, "y": 50}]}))
    run_points(frames, points, tmp_path / "points", load_config("jhmdb_baseline", CONFIG), formats=["names"],
               render=False, progress=False)
    assert (tmp_path / "points" / "names.txt").read_text() == expected
    assert not (tmp_path / "points" / "coco_keypoints.json").exists()


def test_a_points_session_exports_what_run_writes_for_the_same_keyframes(clip, tmp_path):
    frames, _, _ = clip
    config = load_config("jhmdb_baseline", CONFIG)
    keyframes = {"00000": [{"name": "a", "x": 60, "y": 50}, {"name": "b", "x": 100, "y": 70}],
                 "00005": [{"name": "a", "x": 80, "y": 52}, {"name": "b", "x": 110, "y": 75}]}
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"keyframes": keyframes}))
    extractor = build_extractor("baseline")
    run_points(frames, points, tmp_path / "run", config, extractor=extractor, formats=["coco"], render=False,
               progress=False)
    session = Session(frames, config, extractor=extractor)
    for index, given in ((0, keyframes["00000"]), (5, keyframes["00005"])):
        session.add_points(index, np.array([[p["x"], p["y"]] for p in given]), [p["name"] for p in given])
    list(session.propagate())
    export_session(session, tmp_path / "export", formats=["coco"], render=False)
    for name in ("points.json", "coco_keypoints.json"):
        assert (tmp_path / "export" / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name
    ran = json.loads((tmp_path / "run" / "points.json").read_text())
    assert ran["keyframes"] == ["00000", "00005"] and [f["points"]["a"]["x"] for f in ran["frames"]][::5] == [60, 80]


def test_a_session_with_absences_and_names_exports_what_run_writes_for_the_same_keyframe_file(clip, tmp_path):
    """A session's per-object keyframes, absences and object names export exactly what ``run`` writes for a
    keyframe folder saying the same (PNGs, confidence.csv with ``absent`` cells, COCO with the categories)."""
    from propagate.labels import write_mask

    frames, _, truth = clip
    config = load_config("davis_baseline", CONFIG)
    keys = tmp_path / "keys"
    keys.mkdir()
    write_mask(keys / "00000.png", truth[0])
    write_mask(keys / "00003.png", truth[3])
    (keys / "keyframes.json").write_text(json.dumps({
        "frames": {"00003": {"objects": [2]}, "00004": {"absent": [1]}},
        "objects": {"1": {"name": "disk", "category": "ball"}, "2": {"name": "square", "category": "box"}}}))
    extractor = build_extractor("baseline")
    run_video(frames, keys, tmp_path / "run", config, extractor=extractor, formats=["coco"], render=False,
              progress=False)
    session = Session(frames, config, extractor=extractor)
    session.add_mask(0, truth[0])
    session.add_mask(3, truth[3], objects=[2])
    session.set_absent(4, 1)
    session.name_object(1, "disk", "ball")
    session.name_object(2, "square", "box")
    list(session.propagate())
    export_session(session, tmp_path / "export", formats=["coco"], render=False)
    written = sorted(p.name for p in (tmp_path / "run").iterdir() if p.name not in ("run_info.json", ".complete"))
    assert written == ["00000.png", "00001.png", "00002.png", "00003.png", "00004.png", "00005.png", "coco.json",
                       "confidence.csv"]
    for name in written:
        assert (tmp_path / "export" / name).read_bytes() == (tmp_path / "run" / name).read_bytes(), name
    rows = (tmp_path / "run" / "confidence.csv").read_text().splitlines()
    assert [r.split(",")[3] for r in rows[5:]] == ["absent", "absent"]
    coco = json.loads((tmp_path / "run" / "coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["ball", "box"]


def test_coco_categories_default_to_one_object_category():
    from propagate.coco import CocoVideoWriter

    plain = CocoVideoWriter("v", (4, 4), [1, 2]).to_json()
    assert plain["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert [a["category_id"] for a in plain["annotations"]] == [1, 1]
    named = CocoVideoWriter("v", (4, 4), [1, 2, 3], {3: "cup", 1: "bottle", 2: "cup"}).to_json()
    assert named["categories"] == [{"id": 1, "name": "bottle", "supercategory": "bottle"},
                                   {"id": 2, "name": "cup", "supercategory": "cup"}]
    assert [a["category_id"] for a in named["annotations"]] == [1, 2, 2]


def test_the_overlay_caption_is_one_helper_for_run_demo_and_the_app():
    from propagate.features.fallback import BASELINE_LABEL, overlay_label

    extractor = build_extractor("baseline")
    assert overlay_label(extractor) == extractor.describe()
    extractor.stands_in = True  # as dift_or_baseline marks the baseline it falls back to
    assert overlay_label(extractor) == f"{extractor.describe()}; {BASELINE_LABEL}"
