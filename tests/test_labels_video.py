"""Label files, frame sources and the resize policy."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from propagate.config import ResizeConfig
from propagate.errors import PropagateError
from propagate.labels import DAVIS_PALETTE, read_mask, write_mask
from propagate.render import OverlayWriter
from propagate.video import natural_key, open_video, processing_size


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


def test_resize_policy():
    cfg = ResizeConfig()
    assert processing_size((854, 480), cfg) == (832, 480)
    assert processing_size((480, 854), cfg) == (480, 832)
    assert processing_size((1920, 1080), cfg) == (832, 480)
    assert processing_size((320, 240), ResizeConfig(size=[320, 320])) == (320, 320)
    assert processing_size((160, 96), ResizeConfig(short_side=64, multiple=8)) == (104, 64)


def test_folder_source_natural_order_and_streaming(tmp_path):
    for i in [10, 2, 1]:
        Image.fromarray(np.full((8, 12, 3), i, np.uint8)).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_video(tmp_path)
    assert source.names == ["f1", "f2", "f10"]
    assert source.native_size == (12, 8)
    assert [int(f.image[0, 0, 0]) for f in source] == [1, 2, 10]
    assert sorted(["a10", "a9", "a100"], key=natural_key) == ["a9", "a10", "a100"]


def test_video_file_source(tmp_path):
    frames = [np.full((64, 96, 3), 40 * i, np.uint8) for i in range(5)]
    with OverlayWriter(tmp_path / "v.mp4", 10, (96, 64)) as writer:
        for f in frames:
            writer.write(f)
    source = open_video(tmp_path / "v.mp4")
    assert len(source) == 5 and source.native_size == (96, 64) and source.names[0] == "00000"
    decoded = [f.image for f in source]
    assert all(abs(int(d.mean()) - int(f.mean())) <= 3 for d, f in zip(decoded, frames))


def test_bad_video_inputs(tmp_path):
    with pytest.raises(PropagateError, match="does not exist"):
        open_video(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PropagateError, match="holds no frames"):
        open_video(tmp_path / "empty")
    (tmp_path / "clip.txt").write_text("x")
    with pytest.raises(PropagateError, match="neither a folder of frames nor a video file"):
        open_video(tmp_path / "clip.txt")
    (tmp_path / "broken").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "broken" / "0.png")
    (tmp_path / "broken" / "1.png").write_bytes(b"garbage")
    with pytest.raises(PropagateError, match="1.png is not a readable image"):
        list(open_video(tmp_path / "broken"))
