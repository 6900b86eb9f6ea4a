"""propagate batch on Ray: a local cluster of 2 CPU workers labels synthetic clips with the baseline features.

Every result is compared byte for byte with serial ``propagate run`` (run_info.json up to its date and command line).
One cluster serves the whole module (Ray's start-up dominates the time).
"""
from __future__ import annotations

import _thread
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import write_clip

from propagate.batch import read_manifest, run_batch
from propagate.cli import _cluster_runner, build_parser, main
from propagate.cluster import RayRunner
from propagate.config import load_config
from propagate.datasets.davis import evaluate_davis
from propagate.datasets.synthetic_davis import make_synthetic_davis
from propagate.errors import PropagateError
from propagate.results import STAGING_MARK, STAGING_TAG, ResultsFolder, check_output

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[cluster]"')

SMALL = ["--set", "resize.short_side=128", "--set", "resize.multiple=8"]
NAMES = ["walk", "jump", "run"]
FRAMES = 8


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, Path]]:
    """Three clips (frames, first mask) and their serial ``propagate run`` results."""
    root = tmp_path_factory.mktemp("clips")
    made = {}
    for number, name in enumerate(NAMES):
        frames, mask, _ = write_clip(root / name, num_frames=FRAMES + number, size=(96, 64))
        reference = root / "serial" / name
        assert main(["run", str(frames), "--mask", str(mask), "--out", str(reference), "--features", "baseline",
                     *SMALL]) == 0
        made[name] = (frames, mask, reference)
    return made


def manifest(path: Path, clips: dict[str, tuple[Path, Path, Path]], extra: str = "") -> Path:
    lines = ["video,mask,name"] + [f"{frames},{mask},{name}" for name, (frames, mask, _) in clips.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def files(folder: Path) -> dict[str, bytes]:
    found = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "run_info.json":  # the date and command line differ between any two runs
                record = json.loads(data)
                record.pop("date"), record.pop("command")
                record["config"].pop("batch_frames")  # speed only (records.SPEED_ONLY): the slow tests use 1
                data = json.dumps(record, sort_keys=True).encode()
            found[str(p.relative_to(folder))] = data
    return found


def assert_same_as_serial(out: Path, clips: dict[str, tuple[Path, Path, Path]]) -> None:
    for name, (_, _, reference) in clips.items():
        got, want = files(out / name), files(reference)
        assert sorted(got) == sorted(want), name
        assert {"overlay.mp4", ".complete", "00000.png"} <= set(got)
        for key in want:
            assert got[key] == want[key], f"{name}/{key} differs from serial propagate run"


def staging_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.glob(f".*{STAGING_TAG}*"))


def config():
    return load_config("davis_baseline", ["resize.short_side=128", "resize.multiple=8", "batch_frames=1"])


def slow_baseline() -> None:
    """Worker setup: 0.25 s per frame batch, so that a test can act while a video is half done."""
    from propagate.features.baseline import BaselineExtractor

    fast = BaselineExtractor.extract

    def extract(self, images, frame_ids):
        time.sleep(0.25)
        return fast(self, images, frame_ids)

    BaselineExtractor.extract = extract


def when_half_done(out: Path, act, result: dict) -> threading.Thread:
    """A thread that waits for a staging folder holding two masks already, then calls ``act(folder, mark)``."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for staging in staging_folders(out):
                try:
                    mark = json.loads((staging / STAGING_MARK).read_text())
                    masks = len(list(staging.glob("*.png")))
                except (OSError, ValueError):
                    continue
                if masks >= 2:
                    result.update(staging=staging, masks=masks, **mark)
                    act(staging, mark)
                    return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_batch_gives_serial_bytes_reports_bad_rows_and_a_rerun_skips_finished_videos(cluster, clips, tmp_path,
                                                                                      capsys):
    out = tmp_path / "out"
    walk_frames, walk_mask, _ = clips["walk"]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = (f"{tmp_path / 'nowhere'},{walk_mask},missing\n"  # refused before anything runs
           f"{walk_frames},{broken},unreadable_mask\n"  # fails on its worker: reported, not retried
           f"{walk_frames},{walk_mask},typo_preset,no_such_preset\n")  # its config: refused before anything runs
    rows = manifest(tmp_path / "videos.csv", clips, extra=bad)
    rows.write_text(rows.read_text().replace("video,mask,name", "video,mask,name,config"))
    assert main(["batch", str(rows), "--out", str(out), "--features", "baseline", *SMALL]) == 1
    table = capsys.readouterr().out
    assert table.startswith("done     3\nskipped  0 (results already complete)\nfailed   3\n")
    lines = {line.split()[0]: line for line in table.splitlines()[3:6]}
    assert "line 5: video" in lines["missing"] and "nowhere does not exist" in lines["missing"]
    assert "line 6: mask" in lines["unreadable_mask"] and "not a readable image" in lines["unreadable_mask"]
    assert "line 7: no preset 'no_such_preset'" in lines["typo_preset"]
    failures = (out / "failures.csv").read_text().splitlines()
    assert failures[0] == "name,video,error" and [f.split(",")[0] for f in failures[1:]] == \
        ["missing", "unreadable_mask", "typo_preset"]
    assert_same_as_serial(out, clips)
    assert sorted(p.name for p in out.iterdir()) == [".batch.json", "failures.csv", *sorted(NAMES)]  # no bad rows

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "failures.csv"}
    rows.write_text("\n".join(rows.read_text().splitlines()[:4]) + "\n")  # the bad rows fixed (dropped)
    assert main(["batch", str(rows), "--out", str(out), "--features", "baseline", *SMALL]) == 0
    assert capsys.readouterr().out.startswith("done     0\nskipped  3 (results already complete)\nfailed   0")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != "failures.csv"} == stamps
    assert (out / "failures.csv").read_text() == "name,video,error\n"


@pytest.fixture(scope="module")
def slow_workers(cluster):
    """Two workers kept up for the tests below (each start costs seconds): slow only with ``batch_frames=1``."""
    with RayRunner(workers=2, setup=slow_baseline) as runner:
        yield runner


def test_eval_davis_on_workers_matches_serial_and_the_flags_choose_it(slow_workers, tmp_path):
    root = tmp_path / "davis"
    make_synthetic_davis(root, num_sequences=2, num_frames=6, size=(96, 64), seed=0)
    settings = load_config("davis_baseline", ["resize.short_side=64", "resize.multiple=8"])
    serial = evaluate_davis(root, tmp_path / "serial", settings, progress=False)
    spread = evaluate_davis(root, tmp_path / "spread", settings, progress=False, runner=slow_workers)
    assert spread["global"] == serial["global"]
    for seq in serial["sequences"]:
        assert files(tmp_path / "spread" / seq) == files(tmp_path / "serial" / seq)

    args = build_parser().parse_args(["eval", "davis", "--root", str(root), "--out", "x", "--workers", "3",
                                      "--address", "auto"])
    runner = _cluster_runner(args)
    assert isinstance(runner, RayRunner) and (runner.workers, runner.address) == (3, "auto")
    assert _cluster_runner(build_parser().parse_args(["eval", "davis", "--root", str(root), "--out", "x"])) is None


def test_a_worker_whose_features_would_differ_from_the_recorded_ones_refuses(slow_workers, tmp_path, monkeypatch):
    """The driver records its extractor's settings; a worker resolving them otherwise (``dtype: auto`` on other
    hardware, simulated here by the driver's side) refuses instead of mixing features."""
    from propagate.features.baseline import BaselineExtractor

    root = tmp_path / "davis"
    make_synthetic_davis(root, num_sequences=1, num_frames=4, size=(96, 64), seed=0)
    settings = load_config("davis_baseline", ["resize.short_side=64", "resize.multiple=8"])
    plain = BaselineExtractor.settings
    monkeypatch.setattr(BaselineExtractor, "settings", lambda self: {**plain(self), "dtype": "bf16"})
    with pytest.raises(PropagateError, match=r"computes features with dtype=None, but the run records "
                                             r"dtype='bf16': pin it"):
        evaluate_davis(root, tmp_path / "out", settings, progress=False, runner=slow_workers)
    assert not list((tmp_path / "out").glob("*/.complete"))


def test_a_worker_killed_mid_video_still_yields_every_video_byte_identical(slow_workers, clips, tmp_path):
    out = tmp_path / "out"
    killed: dict = {}

    def kill(staging: Path, mark: dict) -> None:
        assert mark["host"] == socket.gethostname()
        os.kill(mark["pid"], signal.SIGKILL)  # the Ray worker process writing this video

    watcher = when_half_done(out, kill, killed)
    report = run_batch(manifest(tmp_path / "videos.csv", clips), out, lambda preset, task: config(), slow_workers,
                       progress=False)
    watcher.join(timeout=5)
    print(f"\nkilled worker pid {killed.get('pid')} while {killed.get('target')} had {killed.get('masks')} of its "
          f"masks in {killed.get('staging')}")
    print(report.table())
    assert killed, "no video was seen half done"
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    assert sorted(report.done) == sorted(NAMES) and not report.failed and report.retried == 1
    assert not staging_folders(out), "the dead worker's partial output was left behind"
    assert_same_as_serial(out, clips)


def test_ctrl_c_stops_the_workers_and_leaves_a_resumable_folder(slow_workers, clips, tmp_path):
    out = tmp_path / "out"
    rows = manifest(tmp_path / "videos.csv", clips)
    seen: dict = {}
    watcher = when_half_done(out, lambda staging, mark: _thread.interrupt_main(), seen)
    with pytest.raises(KeyboardInterrupt):
        run_batch(rows, out, lambda preset, task: config(), slow_workers, progress=False)
    watcher.join(timeout=5)
    assert seen and not staging_folders(out)  # the videos being written were discarded...
    assert not Path(seen["target"]).exists()
    for name in NAMES:  # ...any finished one is whole, and nothing stands in the way of the same command again
        if not ResultsFolder.is_complete(out / name):
            assert not (out / name).exists()
            check_output(out / name)


def test_manifest_columns_names_and_paths(tmp_path):
    (tmp_path / "clips").mkdir()
    good = tmp_path / "clips" / "m.csv"
    good.write_text("video,points\nv1/frames,v1.json\n/abs/clip.mp4,p.json\n\n")
    rows = read_manifest(good)
    assert [(r.name, r.kind, r.line) for r in rows] == [("frames", "points", 2), ("clip", "points", 3)]
    assert rows[0].video == tmp_path / "clips" / "v1" / "frames" and rows[1].video == Path("/abs/clip.mp4")
    for text, words in [("video,mask,points\na,b,c\n", "header"), ("video,maks\na,b\n", "unknown column 'maks'"),
                        ("video,mask\na/x,m.png\nb/x,m.png\n", "lines 2 and 3 both write 'x'"),
                        ("video,mask,name\na,m.png,../up\n", "not a plain folder name"),
                        ("video,mask\na,\n", "line 2: give both"), ("video,mask\n", "no rows")]:
        good.write_text(text)
        with pytest.raises(PropagateError, match=words.replace("(", r"\(")):
            read_manifest(good)


def test_a_bad_flag_or_manifest_stops_batch_before_any_work_in_one_line(tmp_path, capsys):
    rows = tmp_path / "videos.csv"
    rows.write_text("video,mask\nclips/a,a.png\n")
    assert main(["batch", str(rows), "--out", str(tmp_path / "out"), "--features", "baseline", "--topk", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "topk" in err and err.count("\n") == 1
    assert main(["batch", str(tmp_path / "none.csv"), "--out", str(tmp_path / "out")]) == 2
    assert "manifest" in capsys.readouterr().err and not (tmp_path / "out").exists()
