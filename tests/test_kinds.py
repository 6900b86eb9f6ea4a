"""The label-kind codecs: known round trips (a grid-aligned mask, points on cell centres), the keyframe rules a
session relies on, and the one place a kind's name becomes a codec."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from propagate.config import load_config
from propagate.errors import PropagateError
from propagate.keypoints import PointSet
from propagate.kinds import KINDS, MaskKind, PointKind, kind_named


def blocky_mask(grid_hw=(4, 6), cell=8) -> np.ndarray:
    """A mask made of whole ``cell x cell`` blocks: objects 1 and 3 (none 2), so every resize to the grid is exact."""
    small = np.zeros(grid_hw, np.uint8)
    small[1:3, 1:3] = 1
    small[0, 4:6] = 3
    return np.kron(small, np.ones((cell, cell), np.uint8))


def test_a_mask_on_whole_grid_cells_encodes_one_hot_and_decodes_back():
    mask = blocky_mask()
    config = load_config("davis_baseline", {"resize.size": [48, 32]})
    kind = MaskKind.of(config, (48, 32))
    labels = kind.encode({0: mask}, (4, 6))[0]
    assert labels.shape == (4, 4, 6)  # background, 1, 2 (in no keyframe), 3
    assert torch.equal(labels.argmax(0), torch.from_numpy(mask[::8, ::8].astype(np.int64)))
    result = kind.decode(7, "00007", labels)
    np.testing.assert_array_equal(result.mask[4::8, 4::8], mask[4::8, 4::8])  # every block's centre (edges blur)
    assert (result.index, result.name, result.keyframe) == (7, "00007", False)
    assert 0.5 < result.confidence[1] <= 1 and 0.5 < result.confidence[3] <= 1 and result.confidence[2] == 0.0
    assert kind.tracks({0: mask, 5: np.zeros_like(mask)}) == [1, 3]
    key = kind.keyframe_result(0, "00000", mask, labels)
    assert key.keyframe and key.mask is mask and key.confidence == {1: 1.0, 2: 1.0, 3: 1.0}


def test_points_on_cell_centres_encode_and_decode_back():
    kind = PointKind.of(load_config("davis_baseline"), (60, 40), PointSet(["a", "b"], np.zeros((2, 2))))
    xy = np.array([[14.5, 14.5], [44.5, 24.5]])  # centres of cells (1, 1) and (4, 2) of a 6x4 grid of 10 px cells
    labels = kind.encode({3: xy}, (4, 6))[3]
    assert labels.shape == (3, 4, 6) and labels[1, 1, 1] == 1.0 and labels[2, 2, 4] == 1.0
    result = kind.decode(4, "00004", labels)
    np.testing.assert_allclose(result.xy, xy, atol=1e-9)  # a symmetric bump decodes to its centre
    assert result.confidence == {"a": 1.0, "b": 1.0}
    np.testing.assert_array_equal(kind.confidences(result), [1.0, 1.0])


def test_the_first_streamed_frame_drops_points_off_the_grid_but_a_keyframe_keeps_them():
    kind = PointKind.of(load_config("davis_baseline"), (60, 40))
    xy = np.array([[14.5, 4.5], [np.nan, np.nan]])
    labels = kind.heatmaps(xy, (4, 6))
    first = kind.first_result(0, "00000", xy, labels)
    assert first.confidence == {"p1": 1.0, "p2": 0.0} and np.isnan(first.xy[1]).all()
    assert kind.tracked.tolist() == [True, False]
    assert kind.keyframe_result(0, "00000", xy, labels).confidence == {"p1": 1.0, "p2": 1.0}


def test_a_codec_refuses_keyframes_that_do_not_fit():
    config = load_config("davis_baseline")
    masks = MaskKind.of(config, (48, 32))
    with pytest.raises(PropagateError, match="keyframe 2: the mask is uint8 \\[32, 40\\], the frames are 48x32"):
        masks.check(2, np.zeros((32, 40), np.uint8))
    points = PointKind.of(config, (48, 32), PointSet(["a", "b"], np.zeros((2, 2))))
    with pytest.raises(PropagateError, match="keyframe 1: 3 points but 2 names"):
        points.check(1, np.zeros((3, 2)))
    with pytest.raises(PropagateError, match="holds masks keyframes: a session labels masks or points, not both"):
        masks.joins(points, 4)
    other = PointKind.of(config, (48, 32), PointSet(["b", "a"], np.zeros((2, 2))))
    with pytest.raises(PropagateError, match="keyframe 4 gives points b, a but the session tracks a, b"):
        points.joins(other, 4)


def test_a_kind_name_maps_to_its_codec_in_one_place():
    assert kind_named("masks") is MaskKind and kind_named("points") is PointKind
    assert {name: kind.name for name, kind in KINDS.items()} == {"masks": "masks", "points": "points"}
    with pytest.raises(PropagateError, match="label kind 'boxes': choose one of masks, points"):
        kind_named("boxes")
