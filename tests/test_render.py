"""Rendering: mask overlays, points with names and skeleton, captions, and the mp4 writer (atomic, every frame)."""
from __future__ import annotations

import numpy as np
import pytest

from propagate.labels import DAVIS_PALETTE
from propagate.render import OverlayWriter, caption, draw_points, overlay_mask
from propagate.video import open_video


def test_overlay_mask_blends_object_colours_and_leaves_background():
    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 10:30] = 1
    mask[0:5, 50:60] = 255  # void is not drawn
    out = overlay_mask(image, mask)
    assert out.shape == image.shape and out.dtype == np.uint8
    expected = (0.5 * 100 + 0.5 * DAVIS_PALETTE[1].astype(float)).astype(np.uint8)
    assert np.array_equal(out[20, 20], expected)  # inside, away from the contour
    assert np.array_equal(out[35, 50], image[35, 50]) and np.array_equal(out[2, 55], image[2, 55])


def test_caption_writes_text_on_a_dark_band():
    image = np.full((40, 200, 3), 255, np.uint8)
    caption(image, "frame 3")
    assert image[1:10, 1:30].min() == 0 and image[-1, -1].tolist() == [255, 255, 255]


def test_draw_points_marks_points_and_skips_lost_ones():
    image = np.zeros((60, 80, 3), np.uint8)
    xy = np.array([[20.0, 30.0], [60.0, 30.0], [np.nan, np.nan]])
    out = draw_points(image, xy, ["a", "b", "c"], [(0, 1), (1, 2)], np.array([1.0, 0.05, 0.0]))
    assert out.shape == image.shape and image.sum() == 0  # input untouched
    assert out[30, 20].any() and out[30, 40].any()  # point a, and the edge a-b through the middle


def test_overlay_writer_writes_every_frame_and_pads_odd_sizes(tmp_path):
    path = tmp_path / "v.mp4"
    with OverlayWriter(path, 10, (33, 21)) as video:
        for i in range(5):
            video.write(np.full((21, 33, 3), 40 * i, np.uint8))
    assert video.frames == 5
    video = open_video(path)
    assert len(video) == 5 and video.native_size == (34, 22)


def test_overlay_writer_leaves_nothing_when_the_run_fails(tmp_path):
    path = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError):
        with OverlayWriter(path, 10, (32, 32)) as video:
            video.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
