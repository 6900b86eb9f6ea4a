"""DAVIS metrics on hand-made arrays whose answers are worked out by hand, plus parity with plain references.

The definitions were checked against the official davis2017-evaluation tool (identical numbers); these tests pin
them without needing that tool.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from propagate import metrics


def rect(shape, top, left, height, width):
    m = np.zeros(shape, dtype=bool)
    m[top:top + height, left:left + width] = True
    return m


# ---------------------------------------------------------------- J


def test_j_square_shifted_by_two_columns():
    a = rect((20, 20), 5, 5, 10, 10)
    b = rect((20, 20), 5, 7, 10, 10)
    # intersection 10 x 8 = 80, union 10 x 12 = 120
    assert metrics.region_similarity(a, b) == pytest.approx(2 / 3, abs=1e-15)


def test_j_empty_cases_and_batches():
    empty = np.zeros((2, 8, 8), dtype=bool)
    full = np.ones((2, 8, 8), dtype=bool)
    np.testing.assert_array_equal(metrics.region_similarity(empty, empty), [1.0, 1.0])
    np.testing.assert_array_equal(metrics.region_similarity(empty, full), [0.0, 0.0])
    np.testing.assert_array_equal(metrics.region_similarity(full, empty), [0.0, 0.0])


def test_j_void_pixels_leave_both_sets():
    gt = rect((10, 10), 0, 0, 5, 4)  # 20 pixels
    pred = rect((10, 10), 0, 0, 5, 8)  # the same 20 plus 20 more
    void = rect((10, 10), 0, 4, 5, 2)  # 10 of the extra ones
    assert metrics.region_similarity(gt, pred) == pytest.approx(20 / 40)
    assert metrics.region_similarity(gt, pred, void) == pytest.approx(20 / 30)


# ---------------------------------------------------------------- boundaries and F


def test_boundary_map_of_a_small_block():
    seg = np.zeros((4, 4), dtype=bool)
    seg[1:3, 1:3] = True
    expected = np.array([
        [1, 1, 1, 0],
        [1, 0, 1, 0],
        [1, 1, 1, 0],
        [0, 0, 0, 0],
    ], dtype=bool)
    np.testing.assert_array_equal(metrics.boundary_map(seg), expected)


def test_boundary_of_a_square_is_a_ring_of_4n_pixels():
    seg = rect((30, 30), 10, 10, 10, 10)
    edge = metrics.boundary_map(seg)
    assert edge.sum() == 40
    ring = rect((30, 30), 9, 9, 11, 11) & ~rect((30, 30), 10, 10, 9, 9)  # 11x11 ring, half a pixel up-left
    np.testing.assert_array_equal(edge, ring)


def test_boundary_tolerance():
    assert metrics.boundary_tolerance(480, 854) == 8  # ceil(0.008 * 979.7)
    assert metrics.boundary_tolerance(96, 160) == 2  # ceil(0.008 * 186.6)
    assert metrics.boundary_tolerance(480, 854, bound_th=3) == 3  # >= 1 means pixels


def test_disk_is_euclidean():
    d = metrics.disk(2)
    assert d.shape == (5, 5) and d.dtype == np.uint8
    assert d.sum() == 13  # offsets with dx^2 + dy^2 <= 4
    assert d[0, 2] == 1 and d[0, 1] == 0 and d[1, 1] == 1


def test_disk_is_scikit_images():
    """The official tool dilates with ``skimage.morphology.disk``: ours is the same array at every radius used."""
    from skimage.morphology import disk

    for radius in range(0, 40):
        ours, theirs = metrics.disk(radius), disk(radius)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), radius


def test_f_shift_within_tolerance_is_perfect():
    # 200 x 300 rectangle at 854x480 (tolerance 8 px), shifted right by 8: every boundary pixel has a partner
    a = rect((480, 854), 100, 200, 200, 300)
    b = rect((480, 854), 100, 208, 200, 300)
    assert metrics.boundary_f_measure(a, b) == pytest.approx(1.0)


def test_f_shift_beyond_tolerance_by_hand():
    # Same rectangle shifted by 9 > 8. Boundaries: 2*300 + 2*200 = 1000 pixels each. Matched predicted pixels:
    # top and bottom rows up to 8 px past the gt corner (300 each) + left column within 8 rows of a
    # corner (2*8 = 16); the right column (9 px away) matches nothing: 616 / 1000, and the same for recall.
    a = rect((480, 854), 100, 200, 200, 300)
    b = rect((480, 854), 100, 209, 200, 300)
    assert metrics.boundary_f_measure(a, b) == pytest.approx(0.616, abs=1e-12)
    assert metrics.region_similarity(a, b) == pytest.approx(291 / 309, abs=1e-12)


def test_f_square_with_pixel_tolerance():
    # n = 10 square, tolerance 2 px, shift 3: matched = 2(n + r - s + 1) + 2r = 24 of 4n = 40
    a = rect((40, 40), 10, 10, 10, 10)
    b = rect((40, 40), 10, 13, 10, 10)
    assert metrics.boundary_f_measure(a, b, bound_th=2) == pytest.approx(0.6, abs=1e-12)


def test_f_empty_cases():
    empty = np.zeros((20, 20), dtype=bool)
    square = rect((20, 20), 5, 5, 5, 5)
    assert metrics.boundary_f_measure(empty, empty) == 1.0
    assert metrics.boundary_f_measure(square, empty) == 0.0  # precision 1, recall 0
    assert metrics.boundary_f_measure(empty, square) == 0.0  # precision 0, recall 1


def test_f_void_pixels_are_cleared_before_boundaries():
    gt = rect((40, 40), 10, 10, 10, 10)
    pred = rect((40, 40), 10, 10, 10, 20)  # sticks out to the right into a void region
    void = rect((40, 40), 0, 21, 40, 19)
    assert metrics.boundary_f_measure(gt, pred) < 1.0
    assert metrics.boundary_f_measure(gt, pred, void) == pytest.approx(
        metrics.boundary_f_measure(gt, pred & ~void))


def _plain_boundary(seg):
    """seg2bmap written pixel by pixel."""
    h, w = seg.shape
    out = np.zeros((h, w), dtype=bool)
    for y in range(h):
        for x in range(w):
            right = seg[y, x + 1] if x + 1 < w else False
            below = seg[y + 1, x] if y + 1 < h else False
            diag = seg[y + 1, x + 1] if (y + 1 < h and x + 1 < w) else False
            if y == h - 1 and x == w - 1:
                out[y, x] = False
            elif y == h - 1:
                out[y, x] = seg[y, x] != right
            elif x == w - 1:
                out[y, x] = seg[y, x] != below
            else:
                out[y, x] = seg[y, x] != right or seg[y, x] != below or seg[y, x] != diag
    return out


def _plain_f(gt, pred, radius):
    """F from exact Euclidean distances between boundary pixels."""
    g, p = _plain_boundary(gt), _plain_boundary(pred)
    if not g.any() and not p.any():
        return 1.0
    if not p.any():
        return 0.0
    if not g.any():
        return 0.0
    precision = np.mean(distance_transform_edt(~g)[p] <= radius)
    recall = np.mean(distance_transform_edt(~p)[g] <= radius)
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def test_parity_with_plain_references_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(25):
        h, w = rng.integers(6, 40, size=2)
        gt = rng.random((h, w)) < rng.uniform(0.05, 0.6)
        pred = rng.random((h, w)) < rng.uniform(0.05, 0.6)
        if rng.random() < 0.3:
            pred[:] = False
        np.testing.assert_array_equal(metrics.boundary_map(gt), _plain_boundary(gt))
        radius = metrics.boundary_tolerance(h, w)
        assert metrics.boundary_f_measure(gt, pred) == pytest.approx(_plain_f(gt, pred, radius), abs=1e-12)
        union = (gt | pred).sum()
        expected_j = 1.0 if union == 0 else (gt & pred).sum() / union
        assert metrics.region_similarity(gt, pred) == pytest.approx(expected_j, abs=1e-15)


# ---------------------------------------------------------------- statistics


def test_decay_bins_overlap_at_their_edges():
    assert metrics.decay_bins(10) == [(0, 2), (2, 5), (5, 7), (7, 9)]
    assert metrics.decay_bins(4) == [(0, 1), (1, 2), (2, 2), (2, 3)]
    assert metrics.decay_bins(1) == [(0, 0)] * 4


def test_statistics_by_hand():
    values = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    mean, recall, decay = metrics.statistics(values)
    assert mean == pytest.approx(0.4)
    assert recall == pytest.approx(0.4)
    assert decay == pytest.approx(1.0 - 1 / 3)  # mean(v[0:3]) - mean(v[7:10])


def test_recall_threshold_is_strict():
    assert metrics.statistics([0.5, 0.6])[1] == pytest.approx(0.5)


def test_statistics_of_a_falling_sequence():
    values = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
    mean, recall, decay = metrics.statistics(values)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)  # 1.0 .. 0.6
    assert decay == pytest.approx(0.9 - 0.2)  # mean(1.0, 0.9, 0.8) - mean(0.3, 0.2, 0.1)


# ---------------------------------------------------------------- sequences and global means


def test_count_objects_ignores_void_and_uses_the_max():
    assert metrics.count_objects(np.array([[255, 3], [1, 0]], dtype=np.uint8)) == 3
    assert metrics.count_objects(np.array([[255, 0]], dtype=np.uint8)) == 0


def test_score_sequence_by_hand():
    gt = np.zeros((4, 6, 6), dtype=np.uint8)
    gt[:, 0:2, 0:2] = 1
    gt[:, 3:5, 3:5] = 2
    pred = gt.copy()
    pred[1][pred[1] == 2] = 0  # object 2 missing in frame 1
    scored = metrics.score_sequence(gt, pred, num_objects=2)
    np.testing.assert_array_equal(scored["J"], [[1, 1, 1, 1], [1, 0, 1, 1]])
    np.testing.assert_array_equal(scored["F"], [[1, 1, 1, 1], [1, 0, 1, 1]])
    second = scored["objects"][1]
    # N = 4: bins (0, 1) and (2, 3): decay = mean(1, 0) - mean(1, 1)
    assert second["J-Mean"] == pytest.approx(0.75)
    assert second["J-Recall"] == pytest.approx(0.75)
    assert second["J-Decay"] == pytest.approx(-0.5)
    assert scored["objects"][0] == {"J-Mean": 1.0, "J-Recall": 1.0, "J-Decay": 0.0,
                                    "F-Mean": 1.0, "F-Recall": 1.0, "F-Decay": 0.0}
    table = metrics.global_scores(scored["objects"])
    assert table["J-Mean"] == pytest.approx(0.875)
    assert table["J&F-Mean"] == pytest.approx(0.875)
    assert table["J-Decay"] == pytest.approx(-0.25)
    assert list(table) == list(metrics.GLOBAL_COLUMNS)


def test_void_in_ground_truth_counts_as_background():
    gt = np.zeros((1, 4, 4), dtype=np.uint8)
    gt[0, 0, 0:3] = 1
    gt[0, 0, 3] = 255
    pred = np.zeros_like(gt)
    pred[0, 0, :] = 1  # also covers the void pixel: a false positive, as in the official semi-supervised task
    scored = metrics.score_sequence(gt, pred, num_objects=1)
    assert scored["J"][0, 0] == pytest.approx(3 / 4)


def test_object_absent_from_both_scores_one():
    gt = np.zeros((3, 5, 5), dtype=np.uint8)
    gt[:, 1:3, 1:3] = 1
    scored = metrics.score_sequence(gt, gt.copy(), num_objects=2)  # object 2 never appears anywhere
    np.testing.assert_array_equal(scored["J"][1], [1, 1, 1])
    np.testing.assert_array_equal(scored["F"][1], [1, 1, 1])


def test_prediction_index_beyond_the_objects_is_refused():
    gt = np.zeros((1, 3, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="index 2"):
        metrics.score_sequence(gt, gt + 2, num_objects=1)
