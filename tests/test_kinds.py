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


# ---------------------------------------------------------------------------------------------- per object (issue 18)


def test_a_partial_keyframe_merge_and_an_absence_by_hand():
    """On whole grid cells every step is exact: the decoded labels lose the given object's old cells and the absent
    object's, the given object is painted from the annotation (its other pixels ignored), and clearing moves an
    absent object's share to the background."""
    mask = blocky_mask()  # objects 1 (a 2x2 block) and 3 (top right)
    config = load_config("davis_baseline", {"resize.size": [48, 32]})
    kind = MaskKind.of(config, (48, 32))
    soft = kind.encode({0: mask}, (4, 6))[0]
    annotation = np.zeros_like(mask)
    annotation[24:32, 0:16] = 1  # object 1 moved to the bottom left
    annotation[0:8, 0:8] = 3  # object 3 drawn too, but only object 1 is given
    merged = kind.merge_masks(5, annotation, frozenset({1}), soft, frozenset())
    decoded = kind.decode(5, "00005", soft).mask  # the mask again, bar the blocks' blurred edges
    assert (decoded == mask).mean() > 0.9
    expected = np.where(decoded == 1, 0, decoded)
    expected[24:32, 0:16] = 1
    np.testing.assert_array_equal(merged, expected)
    gone = kind.merge_masks(5, annotation, frozenset({1}), soft, frozenset({3}))
    np.testing.assert_array_equal(gone, np.where(expected == 3, 0, expected))
    alone = kind.merge_masks(5, annotation, frozenset({1}), None, frozenset())
    np.testing.assert_array_equal(alone, np.where(annotation == 1, 1, 0))
    rules = kind.rules({0: mask, 6: np.where(annotation == 1, 1, 0).astype(np.uint8)}, {6: frozenset({1})},
                       {2: frozenset({1, 3})}, (4, 6), num_frames=9)
    # object 1 is absent on 2..5 (frame 6 gives it again), object 3 to the last frame (no keyframe gives it later)
    assert rules.absent == {2: {1, 3}, 3: {1, 3}, 4: {1, 3}, 5: {1, 3}, 6: {3}, 7: {3}, 8: {3}}
    cleared = rules.clear(4, soft)
    assert torch.equal(cleared[1], torch.zeros(4, 6)) and torch.equal(cleared[3], torch.zeros(4, 6))
    assert torch.equal(cleared.sum(0), soft.sum(0)) and rules.clear(0, soft) is soft
    centres = merged[4::8, 4::8]
    assert torch.equal(rules.merge(6, soft).argmax(0), torch.from_numpy(centres * (centres != 3)).long())
    result = kind.merged_result(6, "00006", annotation * (annotation == 1), frozenset({1}), soft, frozenset({3}))
    assert result.keyframe and result.absent == {3} and 3 not in result.confidence and result.confidence[1] == 1.0
    assert result.least_confidence() == min(result.confidence.values())


def test_min_area_removes_small_propagated_regions_per_object():
    mask = blocky_mask()
    speck = mask.copy()
    speck[30:32, 44:46] = 1  # a 4-pixel speck of object 1 far from it
    config = load_config("davis_baseline", {"resize.size": [48, 32], "postprocess.min_area": 30})
    kind = MaskKind.of(config, (48, 32))
    from propagate.labels import remove_small_regions

    np.testing.assert_array_equal(remove_small_regions(speck, 30), mask)
    np.testing.assert_array_equal(remove_small_regions(speck, 5, keep=[1]), speck)
    assert remove_small_regions(speck, 0) is speck
    soft = kind.encode({0: mask}, (4, 6))[0]
    assert kind.min_area == 30 and MaskKind.of(load_config("davis_baseline"), (48, 32)).min_area == 0
    assert kind.decode(1, "00001", soft).confidence[1] > 0
    tiny = MaskKind.of(load_config("davis_baseline", {"resize.size": [48, 32], "postprocess.min_area": 100}),
                       (48, 32))
    result = tiny.decode(1, "00001", soft)  # object 3 (two 8x8 blocks = 128 px) stays, object 1's 256 px too
    assert set(np.unique(result.mask)) == {0, 1, 3}
    huge = MaskKind.of(load_config("davis_baseline", {"resize.size": [48, 32], "postprocess.min_area": 200}),
                       (48, 32)).decode(1, "00001", soft)
    assert not (huge.mask == 3).any() and huge.confidence[3] == 0.0 and (huge.mask == 1).any()


@pytest.mark.parametrize("preset, area", [("davis_sd", 0), ("davis_baseline", 0), ("davis_adm", 0), ("jhmdb_sd", 0),
                                          ("davis_sd_interactive", 30), ("davis_baseline_interactive", 30),
                                          ("davis_adm_interactive", 30)])
def test_min_area_is_off_in_the_paper_presets_and_on_in_the_interactive_ones(preset, area):
    assert load_config(preset).postprocess.min_area == area
