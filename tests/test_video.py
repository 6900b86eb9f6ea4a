"""Frame sources (folders and video files, with each video reader) and the resize policy."""
from __future__ import annotations

import itertools
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from propagate.config import ResizeConfig
from propagate.errors import PropagateError
from propagate.render import OverlayWriter
from propagate.video import (
    READER_ENV,
    VIDEO_READERS,
    VideoFileSource,
    choose_reader,
    natural_key,
    open_video,
    processing_size,
    reader_installed,
)

PIP_NAMES = {"decord": "decord", "pyav": "av"}


def _reader(name: str):
    """A pytest parameter for one video reader, skipped with the reason where it is not installed."""
    missing = pytest.mark.skip(reason=f"video reader {name} is not installed here (pip install {PIP_NAMES[name]})")
    return pytest.param(name, id=name, marks=() if reader_installed(name) else (missing,))


READERS = [_reader(name) for name in VIDEO_READERS]
BOTH_READERS = pytest.mark.skipif(
    not all(reader_installed(name) for name in VIDEO_READERS),
    reason="comparing readers needs both decord and PyAV installed",
)


def _noise_clip(path, n=12, size_wh=(97, 65), seed=0):
    """An H.264 clip written by our own writer: noise (so chroma subsampling and rounding show) over a ramp."""
    rng = np.random.default_rng(seed)
    width, height = size_wh
    with OverlayWriter(path, 10, size_wh) as writer:
        for i in range(n):
            frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            frame[: height // 2, :, 0] = np.linspace(0, 255, width, dtype=np.uint8)[None] + i
            writer.write(frame)
    return path


def _mkv_clip(path, n=9):
    """A Matroska clip: its stream holds no frame count, so a reader must count the frames itself."""
    rng = np.random.default_rng(1)
    writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=8, codec="libx264", pixelformat="yuv420p",
                                macro_block_size=1, ffmpeg_log_level="error")
    for _ in range(n):
        writer.append_data(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.close()
    return path


def test_resize_policy():
    cfg = ResizeConfig()
    assert processing_size((854, 480), cfg) == (832, 480)
    assert processing_size((480, 854), cfg) == (480, 832)
    assert processing_size((1920, 1080), cfg) == (832, 480)
    assert processing_size((320, 240), ResizeConfig(size=[320, 320])) == (320, 320)
    assert processing_size((160, 96), ResizeConfig(short_side=64, multiple=8)) == (104, 64)


def test_frames_are_never_enlarged_unless_upscale_says_so():
    cfg = ResizeConfig()  # short side 480
    assert processing_size((640, 360), cfg) == (608, 352)  # 360 floored to a multiple of 32, long side with it
    assert processing_size((360, 640), cfg) == (352, 608)
    assert processing_size((512, 288), cfg) == (512, 288)
    assert processing_size((640, 360), ResizeConfig(upscale=True)) == (832, 480)  # the DAVIS protocol's size
    assert processing_size((854, 480), cfg) == processing_size((854, 480), ResizeConfig(upscale=True)) == (832, 480)


def test_folder_source_natural_order_and_streaming(tmp_path):
    for i in [10, 2, 1]:
        Image.fromarray(np.full((8, 12, 3), i, np.uint8)).save(tmp_path / f"f{i}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    source = open_video(tmp_path)
    assert source.names == ["f1", "f2", "f10"]
    assert source.native_size == (12, 8)
    assert [int(f.image[0, 0, 0]) for f in source] == [1, 2, 10]
    assert sorted(["a10", "a9", "a100"], key=natural_key) == ["a9", "a10", "a100"]


@pytest.mark.parametrize("reader", READERS)
def test_video_file_source(tmp_path, reader):
    frames = [np.full((64, 96, 3), 40 * i, np.uint8) for i in range(5)]
    with OverlayWriter(tmp_path / "v.mp4", 10, (96, 64)) as writer:
        for f in frames:
            writer.write(f)
    source = open_video(tmp_path / "v.mp4", reader=reader)
    assert isinstance(source, VideoFileSource) and source.reader == reader
    assert len(source) == 5 and source.native_size == (96, 64) and source.names[0] == "00000"
    assert source.fps == 10.0
    decoded = [f.image for f in source]
    assert all(abs(int(d.mean()) - int(f.mean())) <= 3 for d, f in zip(decoded, frames))
    assert [f.image.shape for f in source] == [(64, 96, 3)] * 5  # a second pass decodes again from the start


@pytest.mark.parametrize("reader", READERS)
def test_video_frames_are_streamed_with_count_known_up_front(tmp_path, reader):
    source = open_video(_mkv_clip(tmp_path / "v.mkv"), reader=reader)
    assert len(source) == 9 and source.names == [f"{i:05d}" for i in range(9)] and source.native_size == (64, 48)
    frames = iter(source)  # a generator: one frame decoded per step, nothing read ahead into a list
    first = next(frames)
    assert first.index == 0 and first.image.dtype == np.uint8 and first.image.shape == (48, 64, 3)
    assert [f.index for f in frames] == list(range(1, 9))


@BOTH_READERS
def test_readers_give_identical_frames(tmp_path):
    """decord and PyAV: same count, names, size, fps and byte-identical RGB frames (H.264 mp4 and mkv)."""
    for clip in (_noise_clip(tmp_path / "noise.mp4"), _mkv_clip(tmp_path / "noise.mkv")):
        a, b = (open_video(clip, reader=name) for name in VIDEO_READERS)
        assert (len(a), a.names, a.native_size, a.fps) == (len(b), b.names, b.native_size, b.fps)
        pairs = list(itertools.zip_longest(a, b))
        assert len(pairs) == len(a)
        for fa, fb in pairs:
            assert (fa.index, fa.name) == (fb.index, fb.name)
            assert np.array_equal(fa.image, fb.image), f"{clip.name} frame {fa.index} differs between readers"


@pytest.mark.parametrize("reader", READERS)
def test_undecodable_video_is_one_line_error(tmp_path, reader):
    (tmp_path / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    (tmp_path / "empty.mp4").write_bytes(b"")
    good = _noise_clip(tmp_path / "good.mp4", n=4).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(good[: len(good) // 2])  # the index (moov) is written last: cut off
    for name in ("garbage.mp4", "empty.mp4", "cut.mp4"):
        with pytest.raises(PropagateError, match=rf"video .*{name} cannot be decoded .*: check the file") as err:
            open_video(tmp_path / name, reader=reader)
        assert "\n" not in str(err.value)


def test_reader_choice(monkeypatch):
    monkeypatch.delenv(READER_ENV, raising=False)
    installed = [name for name in VIDEO_READERS if reader_installed(name)]
    assert choose_reader() == ("decord" if "decord" in installed else "pyav")
    for name in installed:
        monkeypatch.setenv(READER_ENV, name)
        assert choose_reader() == name and choose_reader("auto") == name
    monkeypatch.setenv(READER_ENV, "opencv")
    with pytest.raises(PropagateError, match=r"video reader 'opencv' is unknown: give auto, decord or pyav"):
        choose_reader()
    monkeypatch.delenv(READER_ENV)
    monkeypatch.setattr("propagate.video.reader_installed", lambda name: name == "pyav")
    assert choose_reader() == "pyav"  # auto without decord (macOS arm64, Linux aarch64)
    with pytest.raises(PropagateError, match="video reader decord is not installed: pip install decord"):
        choose_reader("decord")


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


def test_two_passes_over_one_video_file_are_independent(tmp_path):
    """A session reads features in one pass while the writer reads frames in another: interleaved, both in order."""
    import numpy as np

    from propagate.render import OverlayWriter
    from propagate.video import open_video

    path = tmp_path / "v.mp4"
    with OverlayWriter(path, 10, (32, 32)) as video:
        for i in range(6):
            video.write(np.full((32, 32, 3), 40 * i, np.uint8))
    from propagate.video import reader_installed

    for reader in [r for r in ("decord", "pyav") if reader_installed(r)]:
        source = open_video(path, reader=reader)
        a, b = iter(source), iter(source)
        order = [(next(a).index, next(b).index) for _ in range(6)]
        assert order == [(i, i) for i in range(6)], reader


# ------------------------------------------------------------------------------------------ random access

SHARED_CLIPS = [folder / "shared" / "data" / "clips" for folder in Path(__file__).resolve().parents[1:4]]


def _gop_clip(path, n=23, gop=4):
    """An H.264 clip with B-frames and a keyframe every ``gop`` frames, so a seek lands mid-stream; each frame's
    red channel holds its index (noise elsewhere), so a wrong frame cannot pass for the right one."""
    rng = np.random.default_rng(2)
    writer = imageio.get_writer(str(path), format="FFMPEG", mode="I", fps=12, codec="libx264", pixelformat="yuv420p",
                                macro_block_size=1, ffmpeg_log_level="error",
                                output_params=["-g", str(gop), "-bf", "2", "-sc_threshold", "0"])
    for i in range(n):
        frame = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        frame[:, :, 0] = 10 * i
        writer.append_data(frame)
    writer.close()
    return path


def _clips_to_seek(tmp_path):
    shipped = Path(__file__).resolve().parents[1] / "propagate" / "demo_data" / "walk.mp4"
    written = [_gop_clip(tmp_path / "gop.mp4"), _noise_clip(tmp_path / "noise.mp4", n=9), _mkv_clip(tmp_path / "v.mkv")]
    return [shipped, *written]


@pytest.mark.parametrize("reader", READERS)
def test_frame_seeks_to_the_same_pixels_as_iteration(tmp_path, reader):
    for clip in _clips_to_seek(tmp_path):
        source = open_video(clip, reader=reader)
        sequential = [f.image for f in source]
        for index in [len(source) - 1, 0, *range(1, len(source) - 1), 5, 0]:  # backward and forward jumps
            assert np.array_equal(source.frame(index), sequential[index]), f"{clip.name} frame {index} ({reader})"
    gop = open_video(tmp_path / "gop.mp4", reader=reader)
    assert [int(round(gop.frame(i)[:, :, 0].mean() / 10)) for i in (22, 3, 4, 17)] == [22, 3, 4, 17]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("clip", ["bottle-detection.mp4", "car-detection.mp4", "one-by-one-person-detection.mp4"])
def test_frame_on_shared_clips(reader, clip):
    """Real footage (B-frames, keyframes 10 to 250 frames apart): frames around and across keyframes."""
    path = next((folder / clip for folder in SHARED_CLIPS if (folder / clip).is_file()), None)
    if path is None:
        pytest.skip(f"{clip} is not here (the shared data folder beside the repository)")
    source = open_video(path, reader=reader)
    n = len(source)
    wanted = {0, 1, 9, 10, 11, 59, 60, 61, 249, 250, 251, n // 2, n - 2, n - 1} & set(range(n))
    sequential = {}
    for frame in source:
        if frame.index in wanted:
            sequential[frame.index] = frame.image
        if frame.index >= max(wanted):
            break
    for index in sorted(wanted, reverse=True):
        assert np.array_equal(source.frame(index), sequential[index]), f"{clip} frame {index} ({reader})"


def test_frame_of_a_folder_and_out_of_range(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((8, 12, 3), 10 * i, np.uint8)).save(tmp_path / f"f{i}.png")
    source = open_video(tmp_path)
    assert [int(source.frame(i)[0, 0, 0]) for i in (2, 0, 1)] == [20, 0, 10]
    for bad in (3, -1, 1.0, True):
        with pytest.raises(PropagateError, match=r"is not a frame of .* \(0\.\.2\)"):
            source.frame(bad)


def test_pyav_frame_without_times_decodes_from_the_start(tmp_path):
    """A stream whose packets carry no usable times: frame() falls back to decoding from frame 0, same pixels."""
    if not reader_installed("pyav"):
        pytest.skip("PyAV is not installed")
    source = open_video(_gop_clip(tmp_path / "gop.mp4", n=9), reader="pyav")
    sequential = [f.image for f in source]
    source._file.pts = None
    assert all(np.array_equal(source.frame(i), sequential[i]) for i in (8, 0, 4))
    with pytest.raises(PropagateError, match=r"is not a frame of .*gop.mp4 \(0\.\.8\)"):
        source.frame(9)


def test_frame_of_another_source_iterates_up_to_it():
    """A source of one's own that only iterates (as the API allows) still answers frame(i), by iterating."""
    from propagate.video import Frame, VideoSource

    class Counting(VideoSource):
        path, names, native_size, fps = Path("counting"), ["a", "b", "c"], (2, 1), 10.0

        def __iter__(self):
            for i in range(3):
                yield Frame(i, self.names[i], np.full((1, 2, 3), i, np.uint8))

    assert [int(Counting().frame(i)[0, 0, 0]) for i in (2, 0, 1)] == [2, 0, 1]
    with pytest.raises(PropagateError, match=r"frame 3 is not a frame of counting \(0\.\.2\)"):
        Counting().frame(3)
