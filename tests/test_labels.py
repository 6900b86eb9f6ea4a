"""Masks: the DAVIS palette, mask files, and masks <-> soft labels on the feature grid."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from propagate.errors import PropagateError
from propagate.labels import DAVIS_PALETTE, labels_to_mask, mask_to_labels, read_mask, resize_nearest, write_mask


def test_palette_is_davis():
    assert DAVIS_PALETTE[0].tolist() == [0, 0, 0]
    assert DAVIS_PALETTE[1].tolist() == [128, 0, 0]
    assert DAVIS_PALETTE[2].tolist() == [0, 128, 0]
    assert DAVIS_PALETTE[3].tolist() == [128, 128, 0]
    assert DAVIS_PALETTE[4].tolist() == [0, 0, 128]
    assert DAVIS_PALETTE[255].tolist() == [224, 224, 192]


def test_mask_round_trip_indexed_png(tmp_path):
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 3:9], mask[10:15, 20:28], mask[0, :] = 1, 3, 255
    write_mask(tmp_path / "m.png", mask)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P"
        assert img.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_rgb_palette_mask_is_mapped_and_other_colours_refused(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[2:5, 2:5], mask[6:9, 6:9] = 1, 2
    Image.fromarray(DAVIS_PALETTE[mask]).save(tmp_path / "rgb.png")
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), mask)
    rgb = DAVIS_PALETTE[mask].copy()
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(PropagateError, match=r"bad.png.*\(1, 2, 3\)"):
        read_mask(tmp_path / "bad.png")


def test_greyscale_mask_and_size_check(tmp_path):
    mask = np.zeros((12, 16), np.uint8)
    mask[3:6, 3:6] = 2
    Image.fromarray(mask, mode="L").save(tmp_path / "l.png")
    assert np.array_equal(read_mask(tmp_path / "l.png", (16, 12)), mask)
    with pytest.raises(PropagateError, match="16x12 but the frames are 20x12"):
        read_mask(tmp_path / "l.png", (20, 12))


def test_unreadable_or_missing_mask(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(PropagateError, match="x.png is not a readable image"):
        read_mask(tmp_path / "x.png")
    with pytest.raises(PropagateError, match="nope.png does not exist"):
        read_mask(tmp_path / "nope.png")


# ------------------------------------------------------------------ masks <-> soft labels on the feature grid


def test_resize_nearest_matches_pil():
    from PIL import Image

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 5, size=(48, 85), dtype=np.uint8)
    for size in [(13, 6), (104, 60), (200, 97)]:
        ours = resize_nearest(mask, size)
        pil = np.array(Image.fromarray(mask).resize(size, Image.NEAREST))
        assert np.array_equal(ours, pil)


def test_mask_labels_round_trip_and_void():
    mask = np.zeros((32, 48), dtype=np.uint8)
    mask[8:24, 8:24] = 1
    mask[0:8, 40:48] = 2
    mask[30:32, :] = 255  # void counts as background
    labels = mask_to_labels(mask, 2, (4, 6), "nearest")
    assert labels.shape == (3, 4, 6)
    assert torch.equal(labels.sum(0), torch.ones(4, 6))
    back = labels_to_mask(labels * 10, (32, 48), (32, 48), minmax=False)
    assert back[12, 12] == 1 and back[2, 44] == 2 and back[31, 0] == 0
    soft = mask_to_labels(mask, 2, (4, 6), "area")
    assert torch.allclose(soft.sum(0), torch.ones(4, 6))
    assert soft[1, 1, 1] == 1.0  # cell (8..16, 8..16) lies inside object 1


def test_mask_arrays_from_python_are_checked_like_mask_files():
    """A mask array wider than uint8 passes only if its ids fit 0..255: an id of 300 would wrap to 44 in the uint8
    results (run_masks checks the first mask with require_objects, the Session with check_mask)."""
    from propagate.labels import check_mask, require_objects

    wide = np.zeros((4, 6), np.uint16)
    wide[1, 1] = 300
    with pytest.raises(PropagateError, match=r"^mask first: the mask holds id 300, outside 0\.\.255"):
        require_objects(wide, "first")
    assert require_objects(np.where(wide > 0, 2, 0).astype(np.int32), "first") == [2]
    with pytest.raises(PropagateError, match=r"^frame 3: the mask is float32: give integer ids"):
        check_mask(wide.astype(np.float32), (6, 4), "frame 3")
    with pytest.raises(PropagateError, match=r"^frame 3: the mask is uint8 \[4, 5\], the frames are 6x4"):
        check_mask(np.zeros((4, 5), np.uint8), (6, 4), "frame 3")
    ok = check_mask((wide > 0).astype(np.int64) * 7, (6, 4), "frame 3")
    assert ok.dtype == np.uint8 and ok[1, 1] == 7 and int(ok.sum()) == 7


def test_a_file_that_is_not_a_png_in_a_keyframe_folder_is_an_error(tmp_path):
    """It used to be skipped without a word, so a keyframe saved as JPEG silently did not count."""
    from propagate.labels import read_keyframes

    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    write_mask(tmp_path / "00000.png", mask)
    (tmp_path / ".DS_Store").write_bytes(b"hidden files are ignored")
    assert list(read_keyframes(tmp_path, ["00000", "00001"], (8, 8))) == [0]
    Image.fromarray(mask * 100).save(tmp_path / "00001.jpg")
    with pytest.raises(PropagateError, match=r"holds '00001\.jpg', which is not a PNG mask"):
        read_keyframes(tmp_path, ["00000", "00001"], (8, 8))


def test_rgb_mask_in_flat_paint_colours_maps_each_colour_to_an_object_with_a_note(tmp_path, capsys):
    """Issue 18: flat colours outside the DAVIS palette become objects (lowest free ids, in order of first
    appearance row by row; DAVIS colours keep their index, black is background), said in one note line."""
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[2:8, 2:8] = (255, 0, 255)  # magenta: first from the top
    rgb[10:16, 3:9] = DAVIS_PALETTE[1]  # a DAVIS colour keeps its index
    rgb[12:18, 20:28] = (255, 255, 255)  # white
    Image.fromarray(rgb).save(tmp_path / "paint.png")
    mask = read_mask(tmp_path / "paint.png")
    expected = np.zeros((20, 30), np.uint8)
    expected[2:8, 2:8], expected[10:16, 3:9], expected[12:18, 20:28] = 2, 1, 3
    assert np.array_equal(mask, expected)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: mask {tmp_path / 'paint.png'} is RGB with flat colours outside the DAVIS palette, read as "
                   "objects: (255, 0, 255) -> 2, (255, 255, 255) -> 3"]


def test_rgb_mask_with_anti_aliased_edges_is_refused_not_turned_into_objects(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[4:14, 4:14] = (200, 30, 30)
    rgb[3, 4:14] = rgb[14, 4:14] = (100, 15, 15)  # a soft brush's half-tone rows above and below
    Image.fromarray(rgb).save(tmp_path / "soft.png")
    with pytest.raises(PropagateError, match=r"soft.png is RGB with 2 colour\(s\) outside the DAVIS palette, e\.g\. "
                                             r"\(100, 15, 15\), that look anti-aliased .*anti-aliasing off"):
        read_mask(tmp_path / "soft.png")
    bands = np.array([[(i * 6, 100, 50)] for i in range(40)], np.uint8)  # 40 colours, more than a hand-made mask
    Image.fromarray(np.repeat(np.repeat(bands, 4, axis=0), 40, axis=1)).save(tmp_path / "many.png")  # flat bands
    with pytest.raises(PropagateError, match="40 colour"):
        read_mask(tmp_path / "many.png")


def test_remove_small_regions_equals_a_whole_frame_component_count():
    import cv2

    from propagate.labels import object_ids, remove_small_regions

    g = np.random.default_rng(5)
    mask = (g.random((60, 80)) < 0.08).astype(np.uint8) * g.integers(1, 4, (60, 80)).astype(np.uint8)
    mask[10:30, 20:50] = 2  # one large region among specks of every object
    mask[0, 0] = 255
    expected = mask.copy()
    for obj in (1, 2, 3):
        count, regions, stats, _ = cv2.connectedComponentsWithStats((mask == obj).astype(np.uint8), connectivity=8)
        for i in range(1, count):
            if stats[i, cv2.CC_STAT_AREA] < 4:
                expected[regions == i] = 0
    np.testing.assert_array_equal(remove_small_regions(mask, 4), expected)
    assert object_ids(mask) == [1, 2, 3] and object_ids(mask.astype(np.int32)) == [1, 2, 3]
    assert object_ids(np.zeros((0, 5), np.uint8)) == []
