"""Keypoints: points files, heatmap labels and decoding (the stage module ``propagate.keypoints``)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from propagate.errors import PropagateError
from propagate.keypoints import (
    check_points_inside,
    decode_keypoints,
    grid_to_pixels,
    keypoint_heatmaps,
    pixels_to_grid,
    read_points,
)

# ------------------------------------------------------------------------------------------------ points files


def test_read_points_json_and_csv(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"points": [{"name": "head", "x": 120.5, "y": 40}, {"name": "neck", "x": 118, "y": 62}],
                                "edges": [["head", "neck"]]}))
    points = read_points(path)
    assert points.names == ["head", "neck"]
    np.testing.assert_array_equal(points.xy, [[120.5, 40], [118, 62]])
    assert points.edges == [(0, 1)] and points.edge_names() == [["head", "neck"]]

    mapping = tmp_path / "m.json"
    mapping.write_text(json.dumps({"points": {"a": [1, 2], "b": [3.5, 4]}}))
    assert read_points(mapping).names == ["a", "b"]

    unnamed = tmp_path / "u.json"
    unnamed.write_text(json.dumps([{"x": 1, "y": 2}, {"x": 3, "y": 4}]))
    assert read_points(unnamed).names == ["p1", "p2"]

    table = tmp_path / "p.csv"
    table.write_text("# first frame\nname,x,y\nhead,120.5,40\nneck, 118 , 62\n\n")
    points = read_points(table)
    assert points.names == ["head", "neck"] and points.edges == []
    np.testing.assert_array_equal(points.xy, [[120.5, 40], [118, 62]])


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("empty.json", '{"points": []}', "no points"),
        ("nokey.json", '{"pts": []}', '"points"'),
        ("dup.json", '{"points": [{"name": "a", "x": 1, "y": 1}, {"name": "a", "x": 2, "y": 2}]}', "used twice"),
        ("edge.json", '{"points": [{"name": "a", "x": 1, "y": 1}], "edges": [["a", "b"]]}', "'b'"),
        ("nan.json", '{"points": [{"name": "a", "x": "left", "y": 1}]}', "not a number"),
        ("short.csv", "a,1\n", "not name,x,y"),
        ("empty.csv", "name,x,y\n", "no points"),
        ("points.txt", "a,1,2\n", "unknown format"),
    ],
)
def test_read_points_errors_name_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PropagateError, match=message) as info:
        read_points(path)
    assert str(path) in str(info.value)


def test_points_outside_the_first_frame_are_an_error(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"points": [{"name": "ok", "x": 0, "y": 0}, {"name": "far", "x": 320, "y": 5}]}))
    with pytest.raises(PropagateError, match="'far'.*outside the first frame"):
        check_points_inside(read_points(path), (320, 240), path)
    with pytest.raises(PropagateError, match="does not exist"):
        read_points(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------ labels, decoding


def test_grid_mapping_round_trip_and_conventions():
    xy = np.array([[0.0, 0.0], [3.5, 3.5], [319.0, 239.0], [100.25, 7.0]])
    for convention in ("centre", "crw"):
        uv = pixels_to_grid(xy, (320, 240), (40, 40), convention)
        np.testing.assert_allclose(grid_to_pixels(uv, (320, 240), (40, 40), convention), xy, atol=1e-12)
    # centre: cell 0 of an 8-pixel stride is the centre of pixels 0..7; crw: its corner
    np.testing.assert_allclose(pixels_to_grid([[3.5, 3.5]], (320, 320), (40, 40), "centre"), [[0.0, 0.0]])
    np.testing.assert_allclose(pixels_to_grid([[8.0, 16.0]], (320, 320), (40, 40), "crw"), [[1.0, 2.0]])


def test_heatmaps_peak_spread_and_background():
    maps = keypoint_heatmaps(np.array([[5.4, 2.6], [0.0, 0.0], [np.nan, 1.0], [-9.0, 3.0]]), (8, 10), sigma=0.5)
    assert maps.shape == (5, 8, 10)
    first = maps[1]
    assert first[3, 5] == 1.0  # rounded (5.4, 2.6) -> column 5, row 3
    assert first[3, 4] == pytest.approx(math.exp(-2)) and first[2, 5] == pytest.approx(math.exp(-2))
    assert first[2, 4] == pytest.approx(math.exp(-4))
    assert (first > 0).sum() == 9  # floor(3 sigma) = 1 cell around the peak
    assert maps[2][0, 0] == 1.0 and (maps[2] > 0).sum() == 4  # corner: clipped to the grid
    assert maps[3].sum() == 0 and maps[4].sum() == 0  # NaN point, point far off the grid: empty
    joints = maps[1:].sum(0)
    assert torch.equal(maps[0], (joints == 0).float())


def test_decode_heatmaps_gives_the_peak_cell():
    h, w = 40, 40
    uv = np.array([[10.0, 20.0], [17.0, 5.0], [0.0, 39.0], [39.0, 0.0]])
    xy, confidence = decode_keypoints(keypoint_heatmaps(uv, (h, w)), (320, 240), topk=3)
    expected = grid_to_pixels(uv, (320, 240), (h, w))
    # inside: the 4 neighbours tie for 3rd place and are all kept, so the mean is the peak exactly
    np.testing.assert_allclose(xy[:2], expected[:2], atol=1e-9)
    # in a corner the clipped map pulls the mean inwards, by less than a cell
    assert (np.abs(xy[2:] - expected[2:]) < [8, 6]).all()
    np.testing.assert_allclose(confidence, 1.0)


def test_decode_top3_weighted_mean_and_lost_points():
    soft = torch.zeros(3, 4, 5, dtype=torch.float64)
    soft[1, 1, 1], soft[1, 1, 2], soft[1, 3, 4], soft[1, 0, 0] = 0.5, 0.3, 0.2, 0.1  # 4th is dropped
    xy, confidence = decode_keypoints(soft, (5, 4), topk=3, convention="crw")  # grid = pixels here
    expected_u = (0.5 * 1 + 0.3 * 2 + 0.2 * 4) / 1.0
    expected_v = (0.5 * 1 + 0.3 * 1 + 0.2 * 3) / 1.0
    np.testing.assert_allclose(xy[0], [expected_u, expected_v])
    assert confidence[0] == pytest.approx(0.5)
    assert np.isnan(xy[1]).all() and confidence[1] == 0.0  # an all-zero map is a lost point
