"""``run --frames A:B --stride N`` and the progress of a job's phases, with answers known by construction: a run on
chosen frames equals a run on a folder holding only those frames (same names), and a phase callback sees every
frame of every phase once, in order."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from conftest import write_clip

from propagate.cli import main
from propagate.config import load_config
from propagate.labels import write_mask
from propagate.progress import PhaseClock
from propagate.session import Session
from propagate.video import Frame, FrameSelection, VideoSource, open_video, select_frames

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--features", "baseline", "--set", "resize.short_side=48", "--set", "resize.multiple=8", "--no-video"]


def copy_frames(frames: Path, names: list[str], to: Path) -> Path:
    to.mkdir(parents=True)
    for name in names:
        shutil.copy(frames / f"{name}.jpg", to / f"{name}.jpg")
    return to


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_chosen_frames_give_the_results_of_a_folder_of_those_frames(tmp_path):
    frames, _, masks = write_clip(tmp_path / "clip", num_frames=8, size=(64, 48))
    write_mask(tmp_path / "first.png", masks[1])  # one mask file: the first chosen frame's (frame 1)
    out = tmp_path / "chosen"
    assert main(["run", str(frames), "--mask", str(tmp_path / "first.png"), "--out", str(out), "--frames", "1:8",
                 "--stride", "3", *SMALL]) == 0
    alone = copy_frames(frames, ["00001", "00004", "00007"], tmp_path / "alone")
    assert main(["run", str(alone), "--mask", str(tmp_path / "first.png"), "--out", str(tmp_path / "ref"),
                 *SMALL]) == 0
    got = pngs(out)
    assert list(got) == ["00001.png", "00004.png", "00007.png"]  # named after the video's frames
    assert got == pngs(tmp_path / "ref")
    info = json.loads((out / "run_info.json").read_text())
    assert (info["frame_range"], info["stride"], info["keyframes"]) == ([1, 8], 3, [1])
    rows = [line.split(",")[:2] for line in (out / "confidence.csv").read_text().splitlines()[1:]]
    assert rows == [["1", "00001"], ["4", "00004"], ["7", "00007"]]  # indices in the whole video
    whole = json.loads((tmp_path / "ref" / "run_info.json").read_text())
    assert (whole["frame_range"], whole["stride"]) == ([0, 3], 1)


def test_keyframes_named_after_frames_land_on_the_chosen_ones(tmp_path):
    frames, _, masks = write_clip(tmp_path / "clip", num_frames=6, size=(64, 48))
    keys = tmp_path / "keys"
    keys.mkdir()
    write_mask(keys / "00000.png", masks[0])
    write_mask(keys / "00004.png", masks[4])
    out = tmp_path / "chosen"
    assert main(["run", str(frames), "--mask", str(keys), "--out", str(out), "--stride", "2", *SMALL]) == 0
    alone = copy_frames(frames, ["00000", "00002", "00004"], tmp_path / "alone")
    assert main(["run", str(alone), "--mask", str(keys), "--out", str(tmp_path / "ref"), *SMALL]) == 0
    assert pngs(out) == pngs(tmp_path / "ref") and len(pngs(out)) == 3
    assert json.loads((out / "run_info.json").read_text())["keyframes"] == [0, 4]


def test_a_cache_filled_from_chosen_frames_serves_the_whole_video(tmp_path):
    frames, mask, _ = write_clip(tmp_path / "clip", num_frames=5, size=(64, 48))
    cache = tmp_path / "cache"
    assert main(["run", str(frames), "--mask", str(mask), "--out", str(tmp_path / "a"), "--frames", "0:3",
                 "--cache", str(cache), *SMALL]) == 0
    assert sorted(p.stem for p in (cache / "frames").glob("*.pt")) == ["00000", "00001", "00002"]
    assert json.loads((cache / "frames" / "video.json").read_text())["names"] == [f"{i:05d}" for i in range(5)]
    assert main(["run", str(frames), "--mask", str(mask), "--out", str(tmp_path / "b"), "--cache", str(cache),
                 *SMALL]) == 0
    assert len(list((cache / "frames").glob("*.pt"))) == 5


class Numbered(VideoSource):
    """Frames read in order only (as a video file is): frame i is filled with the value i."""

    def __init__(self, count: int):
        self.path = Path("numbered")
        self.names = [f"f{i}" for i in range(count)]
        self.native_size = (4, 2)
        self.fps = 30.0

    def __iter__(self) -> Iterator[Frame]:
        for i, name in enumerate(self.names):
            yield Frame(i, name, np.full((2, 4, 3), i, np.uint8))


@pytest.mark.parametrize("frames, stride, positions", [(None, 3, [0, 3, 6, 9]), ("2:7", 2, [2, 4, 6]),
                                                       (":4", 1, [0, 1, 2, 3]), ("8:", 1, [8, 9])])
def test_a_selection_reads_and_renumbers_the_chosen_frames(frames, stride, positions):
    chosen = select_frames(Numbered(10), frames, stride)
    assert isinstance(chosen, FrameSelection) and chosen.positions == positions
    read = list(chosen)
    assert [f.index for f in read] == list(range(len(positions)))
    assert [f.name for f in read] == [f"f{p}" for p in positions]
    assert [int(f.image[0, 0, 0]) for f in read] == positions
    assert [int(chosen.frame(i)[0, 0, 0]) for i in range(len(chosen))] == positions
    assert [chosen.source_index(i) for i in range(len(chosen))] == positions
    assert chosen.fps == 30.0 / stride and chosen.whole.names[0] == "f0"


def test_every_frame_is_no_selection(tmp_path):
    frames, _, _ = write_clip(tmp_path / "clip", num_frames=3, size=(64, 48))
    source = open_video(frames)
    assert select_frames(source, "0:3", 1) is source and select_frames(source) is source


def test_a_session_reports_every_phase_frame_by_frame(tmp_path):
    frames, _, masks = write_clip(tmp_path / "clip", num_frames=7, size=(64, 48))
    config = load_config("davis_baseline", {"resize.short_side": 48, "resize.multiple": 8})
    calls: list[tuple[str, int, int]] = []
    with Session(frames, config) as session:
        session.add_mask(1, masks[1])
        session.add_mask(4, masks[4])
        results = list(session.propagate(callback=lambda *call: calls.append(call)))
        assert len(results) == 7
        phases = [p for p, _, _ in calls]
        assert phases == ["extract"] * 7 + ["backward"] * 5 + ["forward"] * 7  # backward: frames 4..0
        for phase, total in (("extract", 7), ("backward", 5), ("forward", 7)):
            assert [(d, t) for p, d, t in calls if p == phase] == [(d, total) for d in range(1, total + 1)]
        calls.clear()
        session.add_mask(6, masks[6])
        list(session.propagate(callback=lambda *call: calls.append(call)))  # features are kept: no extract
        assert [p for p, _, _ in calls] == ["backward"] * 7 + ["forward"] * 7


def test_the_phase_clock_tells_the_time_left():
    now = [0.0]
    seen: list[tuple[str, int, int]] = []
    clock = PhaseClock(lambda *call: seen.append(call), clock=lambda: now[0])
    assert clock.text() == "" and clock.eta() is None
    clock("backward", 0, 10)
    now[0] = 4.0
    clock("backward", 2, 10)
    assert clock.eta() == pytest.approx(16.0)
    assert clock.text() == "backward sweep: 2/10 frames, about 16 s left"
    clock("forward", 1, 30)  # a new phase starts its own clock
    now[0] = 14.0
    assert clock.eta() == pytest.approx(10.0 / 1 * 29)
    assert clock.text().endswith("about 5 min left")
    assert seen == [("backward", 0, 10), ("backward", 2, 10), ("forward", 1, 30)]


def test_a_keyframe_file_on_chosen_frames_holds_its_marks_from_the_next_chosen_frame(tmp_path):
    """00004.png gives object 1 only; object 2 is gone from 00001 on. With --stride 2 (frames 0, 2, 4), the mark
    holds from 00002: the results equal a folder of those three frames whose keyframe file marks 00002."""
    frames, _, masks = write_clip(tmp_path / "clip", num_frames=6, size=(64, 48))
    runs = {}
    for name, mark, chosen in (("chosen", "00001", ["--stride", "2"]), ("ref", "00002", [])):
        keys = tmp_path / f"keys-{name}"
        keys.mkdir()
        write_mask(keys / "00000.png", masks[0])
        write_mask(keys / "00004.png", masks[4])
        (keys / "keyframes.yaml").write_text(f'frames:\n  "00004": {{objects: [1]}}\n  "{mark}": {{absent: [2]}}\n')
        video = frames if name == "chosen" else copy_frames(frames, ["00000", "00002", "00004"], tmp_path / "alone")
        assert main(["run", str(video), "--mask", str(keys), "--out", str(tmp_path / name), *chosen, *SMALL]) == 0
        runs[name] = pngs(tmp_path / name)
    assert runs["chosen"] == runs["ref"] and list(runs["ref"]) == ["00000.png", "00002.png", "00004.png"]
    info = json.loads((tmp_path / "chosen" / "run_info.json").read_text())
    assert info["partial"] == {"00004": [1]} and info["absent"] == {"00002": [2]}
