"""Issue 10's acceptance test: every failure a user can cause is one ``error:`` line, exit status 2, no traceback,
nothing the user owned is changed and nothing is marked complete.

Each case of :data:`CASES` builds a small world in ``tmp_path`` (a 4-frame clip, its mask and points; a DAVIS or
JHMDB root on demand; earlier results where the case needs them), checksums every file in it, runs the CLI
in-process (:func:`propagate.cli.main`), and checks the exit status, the one line, the checksums, and that no new
``.complete`` mark or staging folder is left. Faults that need the real console or the operating system (SIGINT and
SIGKILL mid-run, a read-only folder, a full disk) run in subprocesses or on small tmpfs mounts, skipped with the
reason printed where mounting is not allowed.

``pytest -s tests/test_errors.py`` prints every error line the cases produced.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import write_clip
from PIL import Image

from propagate.cli import main
from propagate.labels import read_mask, write_mask
from propagate.results import COMPLETE, STAGING_TAG

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--set", "resize.short_side=48", "--set", "resize.multiple=8"]
BASE = ["--features", "baseline", *SMALL, "--no-video"]
ERRORS: list[str] = []  # every error line printed by a case, shown at the end with -s
PROGRESS = re.compile(r"(\d+/\d+ \[|\?\w+/s\]|\w+/s\]|it/s)")  # tqdm residue on stderr


# ---------------------------------------------------------------------------------------------- the world


class World:
    """The files of one case: a 4-frame clip (64x48), its mask and points, and on demand a DAVIS or JHMDB root,
    earlier results, a home folder and a working directory that hold user files."""

    def __init__(self, root: Path, shared: dict[str, Path]):
        self.root = root
        self.frames, self.mask, _ = write_clip(root / "clip", num_frames=4, size=(64, 48))
        self.points = root / "clip" / "points.json"
        self.points.write_text(json.dumps({"points": [{"name": "a", "x": 20, "y": 20},
                                                      {"name": "b", "x": 40, "y": 30}]}))
        self.out = root / "out"
        self.shared = shared
        self.home = root / "home"
        self.home.mkdir()
        (self.home / "notes.txt").write_text("my notes")
        self.cwd = root / "work"
        self.cwd.mkdir()
        (self.cwd / "draft.txt").write_text("my draft")

    def copy(self, name: str) -> Path:
        """A copy of a shared dataset (``davis`` or ``jhmdb``) inside this world."""
        target = self.root / name
        if not target.exists():
            shutil.copytree(self.shared[name], target)
        return target

    @property
    def davis(self) -> Path:
        return self.copy("davis")

    @property
    def jhmdb(self) -> Path:
        return self.copy("jhmdb")

    def results(self, out: Path | None = None, *extra: str) -> Path:
        """Earlier results of ours in ``out`` (default :attr:`out`)."""
        out = out or self.out
        assert main(["run", str(self.frames), "--mask", str(self.mask), "--out", str(out), *BASE, *extra]) == 0
        assert (out / COMPLETE).is_file()
        return out

    def file(self, relative: str, data: bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks not followed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def marks(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob(COMPLETE)}


def staging_left(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob(f"*{STAGING_TAG}*")]


def error_lines(err: str) -> list[str]:
    """The lines of stderr that are not progress-bar residue."""
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines()]
    return [line for line in lines if line.startswith(("error: ", "note: ", "interrupted: "))
            or (line and not PROGRESS.search(line))]


def assert_one_error(code: int, err: str, expected_code: int = 2, needle: str | None = None) -> str:
    assert "Traceback" not in err, err
    assert code == expected_code, err
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if needle is not None:
        assert needle in lines[0], lines[0]
    ERRORS.append(lines[0])
    return lines[0]


def assert_nothing_lost(root: Path, before: dict[str, str], marks_before: set[str],
                        staging_before: set[str] = frozenset()) -> None:
    after = checksums(root)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"files changed or removed: {changed}"
    assert marks(root) <= marks_before, f"new completion marks: {marks(root) - marks_before}"
    assert set(staging_left(root)) <= set(staging_before), staging_left(root)  # a case's own hidden folders stay


def cli(args: list) -> int:
    """``propagate ARGS`` in this process; its exit status."""
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_sd_dir: Path) -> dict[str, Path]:
    from propagate.datasets.synthetic_davis import make_synthetic_davis
    from propagate.datasets.synthetic_jhmdb import make_synthetic_jhmdb
    from propagate.features.adm_net import save_tiny_checkpoint

    base = tmp_path_factory.mktemp("shared")
    make_synthetic_davis(base / "davis", num_sequences=2, num_frames=4, size=(64, 48), seed=0)
    make_synthetic_jhmdb(base / "jhmdb", num_videos=1, num_frames=3, size=(64, 48), seed=0)
    return {"davis": base / "davis", "jhmdb": base / "jhmdb", "tiny_sd": tiny_sd_dir,
            "adm": save_tiny_checkpoint(base / "adm" / "tiny.pt")}


@pytest.fixture(scope="module", autouse=True)
def print_errors():
    yield
    if ERRORS:
        print(f"\n--- {len(ERRORS)} one-line errors printed by tests/test_errors.py ---")
        print("\n".join(ERRORS))


# ---------------------------------------------------------------------------------------------- the table


Args = Callable[[World], list]


@dataclass
class Case:
    id: str
    args: Args  # the command line (paths from the world)
    needle: str  # must appear in the error line
    setup: Callable[[World], object] | None = None
    code: int = 2
    cwd: bool = False  # run inside the world's working directory (which holds a user file)
    env: dict[str, str] = field(default_factory=dict)
    missing: str | None = None  # a device the case needs this machine to lack (cuda, mps)


def run(w: World, *extra: object, out: object = None, overwrite: bool = False) -> list:
    return ["run", w.frames, "--mask", w.mask, "--out", w.out if out is None else out, *BASE, *extra,
            *(["--overwrite"] if overwrite else [])]


def points(w: World, *extra: object, file: object = None, out: object = None) -> list:
    return ["run", w.frames, "--points", w.points if file is None else file, "--out", w.out if out is None else out,
            *BASE, *extra]


def setting(name: str, key_value: str, expect: str | None = None, job: Callable[..., list] = run) -> Case:
    """The case of ``job`` (``run`` or ``points``) given ``--set key_value``: one line naming ``expect`` (default the
    ``key=value`` itself)."""
    return Case(name, lambda w: job(w, "--set", key_value), expect or key_value)


def eval_davis(w: World, *extra: object, out: object = None) -> list:
    return ["eval", "davis", "--root", w.davis, "--out", w.out if out is None else out, "--features", "baseline",
            *SMALL, *extra]


def eval_jhmdb(w: World, *extra: object, out: object = None, split: object = None) -> list:
    return ["eval", "jhmdb", "--root", w.jhmdb, "--split-file", split or w.jhmdb / "test_list.txt",
            "--out", w.out if out is None else out, "--features", "baseline", "--set", "resize.size=[64,48]", *extra]


def gt_results(w: World) -> Path:
    """The DAVIS ground truth copied as results into ``w.out``."""
    from propagate.datasets.davis import DavisDataset

    dataset = DavisDataset(w.davis)
    for seq in dataset.sequences:
        gt, names = dataset.read_annotations(seq)
        for mask, name in zip(gt, names):
            write_mask(w.out / seq / f"{name}.png", np.where(mask == 255, 0, mask))
    return w.out


def jpeg_mask(w: World) -> None:
    mask = read_mask(w.mask)
    Image.fromarray((mask * 100).astype(np.uint8), mode="L").save(w.root / "first.jpg", quality=90)


def make_cache(w: World) -> None:
    """A feature cache of the clip in ``w.root / "cache"``."""
    assert cli(["extract", w.frames, "--out", w.root / "cache", "--features", "baseline", *SMALL]) == 0


def not_utf8(w: World) -> None:
    w.file("bad.yaml", "features: baseline\n# caf\xe9\n".encode("latin-1"))


# ---------------------------------------------------------------------------------------------- issue 22: inputs


def bomb_png(path: Path, side: int = 12_000) -> Path:
    """A real PNG decompression bomb: a side x side greyscale image of zeros (144 megapixels at the default side,
    more than the 100-megapixel limit), a few hundred kilobytes on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    deflate = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then the row's pixels
    body = b"".join(deflate.compress(row) for _ in range(side)) + deflate.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def tiny_clip(w: World, side: int = 1) -> None:
    """A 4-frame clip of side x side frames in ``w.root / "tiny"``, with a mask labelling every pixel object 1."""
    frames = w.root / "tiny" / "frames"
    frames.mkdir(parents=True)
    for index in range(4):
        Image.new("RGB", (side, side), (index * 60, 20, 20)).save(frames / f"{index:05d}.png")
    write_mask(w.root / "tiny" / "first.png", np.ones((side, side), np.uint8))


def keyframe_folder_with_jpeg(w: World) -> None:
    """A keyframe folder: frame 0's PNG mask, and frame 2's mask saved as JPEG (which used to be skipped)."""
    shutil.copy(w.mask, w.file("keys/00000.png", b""))
    Image.fromarray(read_mask(w.mask) * 100).save(w.root / "keys" / "00002.jpg", quality=90)


def keyframe_file(text: str, pngs: tuple[int, ...] = (0,), name: str = "keyframes.yaml") -> Callable[[World], None]:
    """A keyframe folder: the clip's first mask as each frame's PNG of ``pngs``, and the keyframe file ``text``."""
    def setup(w: World) -> None:
        for index in pngs:
            shutil.copy(w.mask, w.file(f"keys/{index:05d}.png", b""))
        w.file(f"keys/{name}", text.encode())
    return setup


def keys_run(w: World) -> list:
    return ["run", w.frames, "--mask", w.root / "keys", "--out", w.out, *BASE]


def antialiased_rgb(w: World) -> None:
    """An RGB mask painted with a soft brush: a red disk whose edge fades into black over many shades."""
    yy, xx = np.mgrid[0:48, 0:64]
    fade = np.clip(14 - np.hypot(xx - 30, yy - 24), 0, 4) / 4  # 1 inside, a 4-pixel ramp at the edge
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0] = (fade * 230).astype(np.uint8)
    rgb[..., 1] = (fade * 40).astype(np.uint8)
    Image.fromarray(rgb).save(w.root / "painted.png")


# YAML whose aliases expand to 10^6 values (a "billion laughs" in small): refused before anything expands it.
ALIAS_BOMB = b"".join([b"features: baseline\nextractor:\n  a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"]
                      + [f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n".encode()
                         for i in range(5)])


def davis_split(w: World, text: str, name: str = "mine") -> None:
    (w.davis / "ImageSets" / "2017" / f"{name}.txt").write_text(text)


def user_csv_beside(w: World) -> None:
    """A split file and a user's CSV outside the DAVIS root and --out: ``--split ../../../outside`` names them."""
    w.davis  # noqa: B018 - copies the dataset into the world
    w.file("outside.txt", b"synth-00\n")
    w.file("global_results-outside.csv", b"J&F-Mean\n0.99\n")
def hostile_manifest(w: World, *names: str, folder: Path | None = None) -> None:
    """Earlier results in ``w.out`` (or a bare ``folder``) whose manifest also lists ``names``; a user's
    ``victim.txt`` beside them."""
    w.file("victim.txt", b"mine")
    if folder is None:
        folder = w.results()
    folder.mkdir(parents=True, exist_ok=True)
    listed = json.loads((folder / COMPLETE).read_text())["files"] if (folder / COMPLETE).exists() else []
    (folder / COMPLETE).write_text(json.dumps({"files": [*listed, *names]}))


def batch_rows(w: World) -> Path:
    """A batch manifest of the world's clip."""
    return w.file("videos.csv", f"video,mask,name\n{w.frames},{w.mask},clip\n".encode())


def batch(w: World, *extra: object) -> list:
    return ["batch", w.root / "videos.csv", "--out", w.out, "--features", "baseline", *SMALL, "--no-video", *extra]


CASES: list[Case] = [
    # --- run --mask: inputs
    Case("video-missing", lambda w: run(w)[:1] + [w.root / "nowhere"] + run(w)[2:], "nowhere"),
    Case("video-empty-folder", lambda w: ["run", w.root / "empty", *run(w)[2:]], "holds no frames",
         setup=lambda w: (w.root / "empty").mkdir()),
    Case("frame-unreadable", lambda w: run(w), "00002.jpg",
         setup=lambda w: (w.frames / "00002.jpg").write_bytes(b"\xff\xd8 truncated")),
    Case("frames-of-two-sizes", lambda w: run(w), "all frames must have one size",
         setup=lambda w: Image.new("RGB", (32, 32)).save(w.frames / "00003.jpg")),
    Case("mask-missing", lambda w: ["run", w.frames, "--mask", w.root / "no.png", "--out", w.out, *BASE],
         "does not exist"),
    Case("mask-is-a-folder", lambda w: ["run", w.frames, "--mask", w.frames, "--out", w.out, *BASE], "is a folder"),
    Case("mask-jpeg", lambda w: ["run", w.frames, "--mask", w.root / "first.jpg", "--out", w.out, *BASE],
         "save it as PNG", setup=jpeg_mask),
    Case("mask-other-size", lambda w: ["run", w.frames, "--mask", w.root / "small.png", "--out", w.out, *BASE],
         "32x24 but the frames are 64x48",
         setup=lambda w: write_mask(w.root / "small.png", read_mask(w.mask)[:24, :32])),
    Case("mask-no-object", lambda w: ["run", w.frames, "--mask", w.root / "blank.png", "--out", w.out, *BASE],
         "holds no object", setup=lambda w: write_mask(w.root / "blank.png", np.zeros((48, 64), np.uint8))),
    Case("mask-not-an-image", lambda w: ["run", w.frames, "--mask", w.root / "mask.png", "--out", w.out, *BASE],
         "not a readable image", setup=lambda w: w.file("mask.png", b"not a png")),
    Case("mask-and-points", lambda w: run(w, "--points", w.points), "exactly one of"),
    Case("option-unknown", lambda w: run(w, "--temprature", "0.1"), "--temprature"),
    Case("option-bad-choice", lambda w: run(w, "--device", "tpu"), "tpu"),
    Case("option-not-a-number", lambda w: run(w, "--topk", "ten"), "ten"),
    Case("out-missing", lambda w: ["run", w.frames, "--mask", w.mask], "--out"),
    # --- run: output overlapping an input (refused with or without --overwrite)
    Case("out-is-frames", lambda w: run(w, out=w.frames, overwrite=True), "is the input"),
    Case("out-inside-frames", lambda w: run(w, out=w.frames / "res"), "lies inside the input"),
    Case("out-contains-frames", lambda w: run(w, out=w.root / "clip", overwrite=True), "contains the input"),
    Case("out-is-mask-folder", lambda w: ["run", w.frames, "--mask", w.root / "masks" / "m.png", "--out",
                                          w.root / "masks", *BASE, "--overwrite"], "contains the input",
         setup=lambda w: shutil.copy(w.mask, w.file("masks/m.png", b""))),
    Case("out-is-mask-file", lambda w: run(w, out=w.mask, overwrite=True), "is the input"),
    Case("out-dot", lambda w: run(w, out="."), "working directory", cwd=True),
    Case("out-dot-overwrite", lambda w: run(w, out=".", overwrite=True), "working directory", cwd=True),
    Case("out-tilde", lambda w: run(w, out="~", overwrite=True), "not empty", cwd=True, env={"HOME": "{home}"}),
    Case("out-home", lambda w: run(w, out=w.home, overwrite=True), "not empty", env={"HOME": "{home}"}),
    Case("out-user-folder", lambda w: run(w, out=w.cwd, overwrite=True), "draft.txt"),
    Case("out-is-a-file", lambda w: run(w, out=w.cwd / "draft.txt"), "not a folder"),
    Case("out-is-cache", lambda w: run(w, "--cache", w.root / "cache", out=w.root / "cache"), "is the input",
         setup=make_cache),
    Case("out-inside-cache", lambda w: run(w, "--cache", w.root / "cache", out=w.root / "cache" / "r"),
         "lies inside the input",
         setup=make_cache),
    # --- run: earlier results
    Case("results-without-overwrite", lambda w: run(w), "--overwrite", setup=lambda w: w.results()),
    Case("overwrite-foreign-file", lambda w: run(w, overwrite=True), "notes.txt",
         setup=lambda w: (w.results(), (w.out / "notes.txt").write_text("mine"))),
    Case("overwrite-foreign-subfolder", lambda w: run(w, overwrite=True), "keep/x.txt",
         setup=lambda w: (w.results(), w.file("out/keep/x.txt", b"mine"))),
    Case("overwrite-typo-topk", lambda w: run(w, "--set", "propagation.topk=abc", overwrite=True), "topk",
         setup=lambda w: w.results()),
    Case("overwrite-typo-features", lambda w: run(w, "--features", "basline", overwrite=True), "basline",
         setup=lambda w: w.results()),
    Case("overwrite-typo-mask", lambda w: ["run", w.frames, "--mask", w.root / "frist.png", "--out", w.out, *BASE,
                                           "--overwrite"], "frist.png", setup=lambda w: w.results()),
    # --- values: wrong types, ranges, non-finite
    Case("temperature-nan", lambda w: run(w, "--temperature", "nan"), "temperature"),
    Case("temperature-inf", lambda w: run(w, "--temperature", "inf"), "temperature"),
    Case("temperature-negative", lambda w: run(w, "--temperature=-1"), "temperature"),
    setting("set-topk-abc", "propagation.topk=abc", "propagation.topk"),
    setting("set-multiple-0", "resize.multiple=0", "resize.multiple"),
    setting("set-size-0-0", "resize.size=[0,0]", "resize.size"),
    setting("set-size-text", "resize.size=big", "resize.size"),
    setting("set-short-side-float", "resize.short_side=4.5", "resize.short_side"),
    setting("set-unknown-key", "propagation.topkk=3", "propagation.topkk"),
    setting("set-section-not-mapping", "propagation=3", "propagation"),
    setting("set-no-equals", "topk", "KEY=VALUE"),
    setting("set-bad-yaml", "resize.size=[1,", "not valid YAML"),
    setting("set-window-bool", "propagation.minmax_norm=maybe", "minmax_norm"),
    Case("batch-frames-0", lambda w: run(w, "--batch-frames", "0"), "batch_frames"),
    Case("seed-negative", lambda w: ["run", w.frames, "--mask", w.mask, "--out", w.out, "--model", w.shared["tiny_sd"],
                                     *SMALL, "--seed=-1"], "seed=-1"),
    Case("seed-for-baseline", lambda w: run(w, "--seed=1"), "no option(s) seed"),
    setting("sigma-nan", "keypoints.sigma=.nan", "keypoints.sigma", job=points),
    setting("set-device-typo", "extractor.device=cdua", "cdua"),
    Case("features-unknown", lambda w: run(w, "--features", "nope"), "nope"),
    Case("preset-unknown", lambda w: run(w, "--config", "davis_nope"), "davis_nope"),
    # --- config files
    Case("config-not-utf8", lambda w: run(w, "--config", w.root / "bad.yaml"), "not UTF-8", setup=not_utf8),
    Case("config-bad-yaml", lambda w: run(w, "--config", w.root / "bad.yaml"), "not valid YAML",
         setup=lambda w: w.file("bad.yaml", b"features: [baseline\n")),
    Case("config-a-list", lambda w: run(w, "--config", w.root / "bad.yaml"), "mapping",
         setup=lambda w: w.file("bad.yaml", b"- 1\n- 2\n")),
    Case("config-bad-value", lambda w: run(w, "--config", w.root / "bad.yaml"), "propagation.temperature",
         setup=lambda w: w.file("bad.yaml", b"features: baseline\npropagation:\n  temperature: .nan\n")),
    Case("config-unknown-section", lambda w: run(w, "--config", w.root / "bad.yaml"), "propagtion",
         setup=lambda w: w.file("bad.yaml", b"propagtion:\n  topk: 3\n")),
    # --- devices this machine lacks, for every extractor
    Case("cuda-baseline", lambda w: run(w, "--device", "cuda"), "cuda", missing="cuda"),
    Case("mps-baseline", lambda w: run(w, "--device", "mps"), "mps", missing="mps"),
    setting("cuda-index-baseline", "extractor.device=cuda:9", "cuda:9"),
    setting("cuda-propagation-only", "propagation.device=cuda:9", "cuda:9"),
    Case("cuda-dift-sd", lambda w: ["run", w.frames, "--mask", w.mask, "--out", w.out, "--model", w.shared["tiny_sd"],
                                    *SMALL, "--device", "cuda"], "cuda", missing="cuda"),
    Case("mps-dift-sd", lambda w: ["run", w.frames, "--mask", w.mask, "--out", w.out, "--model", w.shared["tiny_sd"],
                                   *SMALL, "--device", "mps"], "mps", missing="mps"),
    Case("cuda-adm", lambda w: ["run", w.frames, "--mask", w.mask, "--out", w.out, "--features", "adm", "--model",
                                w.shared["adm"], *SMALL, "--device", "cuda"], "cuda", missing="cuda"),
    Case("model-missing", lambda w: ["run", w.frames, "--mask", w.mask, "--out", w.out, "--model",
                                     w.root / "no_model", *SMALL], "no_model"),
    # --- run --points
    Case("points-missing", lambda w: points(w, file=w.root / "nope.json"), "nope.json"),
    Case("points-bad-json", lambda w: points(w, file=w.root / "p.json"), "not valid JSON",
         setup=lambda w: w.file("p.json", b"{points: ")),
    Case("points-nan", lambda w: points(w, file=w.root / "p.json"), "finite",
         setup=lambda w: w.file("p.json", b'{"points": [{"name": "a", "x": NaN, "y": 1}]}')),
    Case("points-csv-text", lambda w: points(w, file=w.root / "p.csv"), "p.csv",
         setup=lambda w: w.file("p.csv", b"name,x,y\nhead,left,3\n")),
    Case("points-outside", lambda w: points(w, file=w.root / "p.csv"), "outside",
         setup=lambda w: w.file("p.csv", b"name,x,y\nhead,500,3\n")),
    Case("points-not-utf8", lambda w: points(w, file=w.root / "p.json"), "p.json",
         setup=lambda w: w.file("p.json", '{"points": [{"name": "t\xeate", "x": 1, "y": 1}]}'.encode("latin-1"))),
    Case("points-out-is-their-folder", lambda w: points(w, out=w.root / "clip"), "contains the input"),
    # --- eval davis
    Case("davis-root-missing", lambda w: ["eval", "davis", "--root", w.root / "DAVIS", "--out", w.out], "DAVIS"),
    Case("davis-split-missing", lambda w: eval_davis(w, "--split", "tset"), "tset"),
    Case("davis-unknown-sequence", lambda w: eval_davis(w, "--sequences", "synth-99"), "synth-99"),
    Case("davis-out-is-root", lambda w: eval_davis(w, out=w.davis), "is the input"),
    Case("davis-out-in-annotations", lambda w: eval_davis(w, out=w.davis / "Annotations" / "480p"),
         "lies inside the input"),
    Case("davis-out-in-jpegimages", lambda w: eval_davis(w, out=w.davis / "JPEGImages"), "lies inside the input"),
    Case("davis-out-contains-root", lambda w: eval_davis(w, out=w.root), "contains the input"),
    Case("davis-out-is-cache", lambda w: eval_davis(w, "--cache", w.root / "cache", out=w.root / "cache"),
         "is the input", setup=lambda w: (w.root / "cache").mkdir()),
    Case("davis-foreign-sequence-folder", lambda w: eval_davis(w), "notes.txt",
         setup=lambda w: w.file("out/synth-00/notes.txt", b"mine")),
    Case("davis-foreign-sequence-pngs", lambda w: eval_davis(w), "00000.png",
         setup=lambda w: shutil.copytree(w.davis / "Annotations" / "480p" / "synth-01", w.out / "synth-01")),
    Case("davis-other-settings", lambda w: eval_davis(w, "--topk", "3"), "other settings",
         setup=lambda w: main([str(a) for a in eval_davis(w, "--sequences", "synth-00")])),
    Case("davis-out-dot", lambda w: eval_davis(w, out="."), "working directory", cwd=True),
    Case("davis-split-not-utf8", lambda w: eval_davis(w, "--split", "bad"), "bad.txt",
         setup=lambda w: (w.davis / "ImageSets" / "2017" / "bad.txt").write_bytes(b"synth-0\xe9\n")),
    Case("davis-cuda", lambda w: eval_davis(w, "--device", "cuda"), "cuda", missing="cuda"),
    # --- eval jhmdb
    Case("jhmdb-split-missing", lambda w: eval_jhmdb(w, split=w.root / "nolist.txt"), "nolist.txt"),
    Case("jhmdb-out-in-root", lambda w: eval_jhmdb(w, out=w.jhmdb / "Rename_Images"), "lies inside the input"),
    Case("jhmdb-out-is-split-folder", lambda w: eval_jhmdb(w, split=w.root / "lists" / "l.txt", out=w.root / "lists"),
         "contains the input", setup=lambda w: w.file("lists/l.txt", b"walk/walk_synthetic_00\n")),
    Case("jhmdb-foreign-video-folder", lambda w: eval_jhmdb(w), "mine.txt",
         setup=lambda w: w.file("out/videos/walk/walk_synthetic_00/mine.txt", b"mine")),
    Case("jhmdb-split-not-utf8", lambda w: eval_jhmdb(w, split=w.root / "l.txt"), "l.txt",
         setup=lambda w: w.file("l.txt", b"walk/walk_synth\xe9\n")),
    Case("jhmdb-temperature-nan", lambda w: eval_jhmdb(w, "--temperature", "nan"), "temperature"),
    # --- score davis
    Case("score-results-missing", lambda w: ["score", "davis", "--root", w.davis, "--results", w.out],
         "does not exist"),
    Case("score-frame-missing", lambda w: ["score", "davis", "--root", w.davis, "--results", w.out], "00001",
         setup=lambda w: (gt_results(w) / "synth-00" / "00001.png").unlink()),
    Case("score-rgb-result", lambda w: ["score", "davis", "--root", w.davis, "--results", w.out], "RGB",
         setup=lambda w: Image.new("RGB", (64, 48)).save(gt_results(w) / "synth-01" / "00002.png")),
    Case("score-results-in-root", lambda w: ["score", "davis", "--root", w.davis, "--results",
                                             w.davis / "Annotations" / "480p"], "inside the input"),
    # --- extract
    Case("extract-out-is-input", lambda w: ["extract", w.frames, "--out", w.frames, "--features", "baseline"],
         "is the input"),
    Case("extract-out-in-davis", lambda w: ["extract", w.davis, "--out", w.davis / "cache", "--features", "baseline"],
         "lies inside the input"),
    Case("extract-out-user-folder", lambda w: ["extract", w.frames, "--out", w.cwd, "--features", "baseline"],
         "not a feature cache"),
    Case("extract-cuda", lambda w: ["extract", w.frames, "--out", w.root / "cache", "--features", "baseline",
                                    "--device", "cuda"], "cuda", missing="cuda"),
    Case("extract-other-settings", lambda w: ["extract", w.frames, "--out", w.root / "cache", "--features", "baseline",
                                              "--set", "resize.short_side=40"], "other feature settings",
         setup=make_cache),
    # --- issue 22: every numeric option in range, bounded reads, degenerate results, names confined to --out
    setting("set-bins-0", "extractor.bins=0"),
    setting("set-scales-0", "extractor.scales=[0]"),
    setting("set-scales-even", "extractor.scales=[1,2]", "each odd"),
    setting("set-scales-empty", "extractor.scales=[]"),
    setting("set-colour-sigma-0", "extractor.colour_sigma=0"),
    setting("set-fourier-dim-0", "extractor.fourier_dim=0"),
    Case("points-open-disk-radius-0", lambda w: points(w, "--set", "propagation.radius=0"),
         "propagation.radius=0 is not valid with propagation.window=open_disk"),
    setting("points-sigma-underflow", "keypoints.sigma=1e-200", job=points),
    setting("points-sigma-huge", "keypoints.sigma=1e6", "keypoints.sigma=1000000.0", job=points),
    setting("short-side-huge", "resize.short_side=100000"),
    setting("size-huge", "resize.size=[100000,100000]", "resize.size"),
    setting("multiple-huge", "resize.multiple=100000"),
    Case("n-last-frames-huge", lambda w: run(w, "--n-last-frames", "100000000000000000000"),
         "propagation.n_last_frames=100000000000000000000"),
    Case("temperature-underflow", lambda w: run(w, "--temperature", "1e-300"), "propagation.temperature=1e-300"),
    Case("config-nested-yaml", lambda w: run(w, "--config", w.root / "deep.yaml"), "nested deeper than",
         setup=lambda w: w.file("deep.yaml", b"features: " + b"[" * 5000 + b"]" * 5000 + b"\n")),
    Case("config-alias-bomb", lambda w: run(w, "--config", w.root / "bomb.yaml"), "through its aliases",
         setup=lambda w: w.file("bomb.yaml", ALIAS_BOMB)),
    Case("set-nested-yaml", lambda w: run(w, "--set", "features=" + "[" * 5000 + "]" * 5000), "nested deeper than"),
    Case("set-deep-key", lambda w: run(w, "--set", "a." * 5000 + "b=1"), "dotted parts"),
    Case("points-nested-json", lambda w: points(w, file=w.root / "p.json"), "nested deeper than",
         setup=lambda w: w.file("p.json", b'{"points": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")),
    Case("frame-decompression-bomb", lambda w: run(w), "PROPAGATE_MAX_PIXELS",
         setup=lambda w: bomb_png(w.frames / "00004.png")),
    Case("frame-over-the-set-limit", lambda w: run(w), "more than 1000 pixels", env={"PROPAGATE_MAX_PIXELS": "1000"}),
    Case("max-pixels-not-a-number", lambda w: run(w), "PROPAGATE_MAX_PIXELS='lots'",
         env={"PROPAGATE_MAX_PIXELS": "lots"}),
    Case("mask-decompression-bomb", lambda w: ["run", w.frames, "--mask", w.root / "bomb.png", "--out", w.out, *BASE],
         "12000x12000", setup=lambda w: bomb_png(w.root / "bomb.png")),
    Case("frames-1x1", lambda w: ["run", w.root / "tiny" / "frames", "--mask", w.root / "tiny" / "first.png",
                                  "--out", w.out, "--features", "baseline", "--no-video"],
         "smaller than one baseline feature cell", setup=tiny_clip),
    Case("frames-4x4", lambda w: ["run", w.root / "tiny" / "frames", "--mask", w.root / "tiny" / "first.png",
                                  "--out", w.out, "--features", "baseline", "--no-video"],
         "are 4x4", setup=lambda w: tiny_clip(w, 4)),
    # --- run --frames A:B --stride N (the clip has 4 frames, 0..3)
    Case("frames-past-the-end", lambda w: run(w, "--frames", "1:9"), "B must be at most 4"),
    Case("frames-start-past-the-end", lambda w: run(w, "--frames", "4:"), "A must be at most 3"),
    Case("frames-empty", lambda w: run(w, "--frames", "3:2"), "is empty"),
    Case("frames-not-a-range", lambda w: run(w, "--frames", "1-3"), "give a range A:B"),
    Case("frames-not-numbers", lambda w: run(w, "--frames", "a:b"), "whole numbers"),
    Case("frames-negative", lambda w: run(w, "--frames=-1:3"), "counted from 0"),
    Case("stride-zero", lambda w: run(w, "--stride", "0"), "at least 1"),
    Case("stride-one-frame", lambda w: run(w, "--stride", "4"), "reads 1 frame (00000)"),
    Case("keyframe-off-the-stride", lambda w: ["run", w.frames, "--mask", w.root / "keys", "--out", w.out, *BASE,
                                               "--stride", "2"], "keyframe 00001 is not one of the frames read",
         setup=lambda w: [shutil.copy(w.mask, w.file(f"keys/{n}.png", b"")) for n in ("00000", "00001")]),
    Case("keyframe-folder-jpeg", lambda w: ["run", w.frames, "--mask", w.root / "keys", "--out", w.out, *BASE],
         "'00002.jpg', which is not a PNG mask", setup=keyframe_folder_with_jpeg),
    # --- the keyframe folder's file form (issue 18): anything ambiguous is an error
    Case("keyframe-file-given-and-absent", keys_run, "gives object 2 and marks it absent: keep one",
         setup=keyframe_file('frames: {"00002": {objects: [2], absent: [2]}}', (0, 2))),
    Case("keyframe-file-unknown-frame", keys_run, "frame '00009' is no frame of the video",
         setup=keyframe_file('frames: {"00009": {absent: [1]}}')),
    Case("keyframe-file-unquoted-frame", keys_run, "is not a quoted frame name",
         setup=keyframe_file("frames:\n  00002: {absent: [1]}\n")),
    Case("keyframe-file-object-not-in-png", keys_run, "lists object 3, which 00002.png does not hold",
         setup=keyframe_file('{"frames": {"00002": {"objects": [3]}}}', (0, 2), "keyframes.json")),
    Case("keyframe-file-objects-without-png", keys_run, "the folder has no 00002.png",
         setup=keyframe_file('frames: {"00002": {objects: [1]}}')),
    Case("keyframe-file-absent-but-painted", keys_run, "marks object 1 absent but 00000.png holds it",
         setup=keyframe_file('frames: {"00000": {absent: [1]}}')),
    Case("keyframe-file-absent-unknown-object", keys_run, "marks object 7 absent, but no keyframe PNG gives it",
         setup=keyframe_file('frames: {"00002": {absent: [7]}}')),
    Case("keyframe-file-unknown-key", keys_run, "give objects: [ids] and/or absent: [ids]",
         setup=keyframe_file('frames: {"00002": {gone: [1]}}')),
    Case("keyframe-file-bad-ids", keys_run, "absent must be a list of object ids 1..254",
         setup=keyframe_file('frames: {"00002": {absent: [0]}}')),
    Case("keyframe-file-syntax", keys_run, "is not readable YAML/JSON", setup=keyframe_file("frames: [\n")),
    Case("keyframe-file-bad-name", keys_run, "objects: 1: give a name",
         setup=keyframe_file('objects: {1: {name: ""}}')),
    Case("mask-rgb-anti-aliased", lambda w: ["run", w.frames, "--mask", w.root / "painted.png", "--out", w.out, *BASE],
         "look anti-aliased (shades along edges): paint with anti-aliasing off", setup=antialiased_rgb),
    Case("mask-16-bit-ids", lambda w: ["run", w.frames, "--mask", w.root / "wide.png", "--out", w.out, *BASE],
         "image mode I;16", setup=lambda w: Image.fromarray(np.where(read_mask(w.mask) > 0, 300, 0).astype(np.uint16))
         .save(w.root / "wide.png")),
    Case("davis-split-file-escape", lambda w: eval_davis(w, "--split", "mine"), "'../escape'",
         setup=lambda w: davis_split(w, "synth-00\n../escape\n")),
    Case("davis-split-file-absolute", lambda w: eval_davis(w, "--split", "mine"), "/tmp",
         setup=lambda w: davis_split(w, "/tmp\n")),
    Case("davis-split-name-escape", lambda w: eval_davis(w, "--split", "../../../outside"),
         "split '../../../outside' is not a split name", setup=user_csv_beside),
    Case("score-split-name-escape", lambda w: ["score", "davis", "--root", w.davis, "--results", w.out, "--split",
                                               "../../../outside"], "is not a split name",
         setup=lambda w: (user_csv_beside(w), gt_results(w))),
    Case("jhmdb-split-file-escape", lambda w: eval_jhmdb(w, split=w.root / "l.txt"), "'walk/../../escape'",
         setup=lambda w: w.file("l.txt", b"walk/../../escape\n")),
    Case("jhmdb-split-crw-escape", lambda w: eval_jhmdb(w, split=w.root / "l.txt"), "'../..'",
         setup=lambda w: w.file("l.txt", b"/data/../.. /data/x/joint_positions.mat\n")),
    # --- issue 22: results folders trust nothing read from disk (this block is the results owner's; other blocks
    # --- of issue 22 sit beside it)
    Case("manifest-escape-dotdot", lambda w: run(w, overwrite=True), "'../victim.txt', which lies outside",
         setup=lambda w: hostile_manifest(w, "../victim.txt")),
    Case("manifest-escape-absolute", lambda w: run(w, overwrite=True), "victim.txt', which lies outside",
         setup=lambda w: hostile_manifest(w, str(w.root / "victim.txt"))),
    Case("manifest-escape-symlink", lambda w: run(w, overwrite=True), "'up/victim.txt', which lies outside",
         setup=lambda w: (hostile_manifest(w, "up/victim.txt"), (w.out / "up").symlink_to(w.root))),
    Case("staging-manifest-escape", lambda w: run(w, out=w.root / "new"), "'../victim.txt', which lies outside",
         setup=lambda w: hostile_manifest(w, "../victim.txt", folder=w.root / ".new.propagate-1234abcd-old")),
    Case("journal-escape", lambda w: run(w), "install journal",  # names ../victim.txt
         setup=lambda w: (w.file("victim.txt", b"mine"), w.file("out/.installing", json.dumps(
             {"staging": ".out.propagate-1234abcd", "replaces": ["../victim.txt"], "manifest": {"files": []}}
         ).encode()))),
    Case("overwrite-foreign-empty-folder", lambda w: run(w, overwrite=True), "empty (an empty folder)",
         setup=lambda w: (w.results(), (w.out / "empty").mkdir())),
    Case("overwrite-foreign-symlink", lambda w: run(w, overwrite=True), "data (a symlink)",
         setup=lambda w: (w.results(), w.file("userdata/x.png", b"mine"),
                          (w.out / "data").symlink_to(w.root / "userdata"))),
    Case("overwrite-foreign-dotfile", lambda w: run(w, overwrite=True), ".notes, which propagate did not write",
         setup=lambda w: (w.results(), (w.out / ".notes").write_text("mine"))),
    Case("overwrite-listed-foreign-name", lambda w: run(w, overwrite=True), "notes.txt, which propagate did not write",
         setup=lambda w: (hostile_manifest(w, "notes.txt"), (w.out / "notes.txt").write_text("mine"))),
    Case("batch-failures-csv-by-header", lambda w: batch(w), "was not written by propagate batch",
         setup=lambda w: (batch_rows(w), w.file("out/failures.csv", b"name,video,error\nmy,own,notes\n"))),
    Case("batch-connect-timeout-0", lambda w: batch(w, "--connect-timeout", "0"), "connect-timeout",
         setup=batch_rows),
    Case("batch-dead-address", lambda w: batch(w, "--address", "127.0.0.1:1", "--connect-timeout", "5"),
         "127.0.0.1:1 does not answer", setup=batch_rows),
]


def device_available(kind: str) -> bool:
    import torch

    return torch.cuda.is_available() if kind == "cuda" else torch.backends.mps.is_available()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_failure_is_one_line_and_loses_nothing(case: Case, shared, tmp_path, capsys, monkeypatch):
    if case.missing is not None and device_available(case.missing):
        pytest.skip(f"this machine has {case.missing}: the case needs it missing")
    world = World(tmp_path, shared)
    if case.setup is not None:
        case.setup(world)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.format(home=world.home))
    if case.cwd:
        monkeypatch.chdir(world.cwd)
    capsys.readouterr()
    before, marks_before, staging_before = checksums(tmp_path), marks(tmp_path), set(staging_left(tmp_path))
    code = cli(case.args(world))
    err = capsys.readouterr().err
    assert_one_error(code, err, case.code, case.needle)
    assert_nothing_lost(tmp_path, before, marks_before, staging_before)


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


# ---------------------------------------------------------------------------------------------- --debug


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from propagate.errors import PropagateError

    args = ["run", str(tmp_path / "nowhere"), "--mask", "m.png", "--out", str(tmp_path / "o")]
    with pytest.raises(PropagateError, match="nowhere"):
        main(["--debug", *args])
    monkeypatch.setenv("PROPAGATE_DEBUG", "1")
    with pytest.raises(PropagateError, match="nowhere"):
        main(args)


# ---------------------------------------------------------------------------------------------- masks


def test_a_black_and_white_mask_reads_255_as_object_1_with_a_note(tmp_path, capsys):
    truth = (read_mask(write_clip(tmp_path, num_frames=2, size=(64, 48))[1]) == 1)
    Image.fromarray(truth.astype(np.uint8) * 255, mode="L").save(tmp_path / "bw.png")
    mask = read_mask(tmp_path / "bw.png")
    assert mask.dtype == np.uint8 and np.array_equal(mask, truth.astype(np.uint8))
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("note: ") and "bw.png" in lines[0] and "object 1" in lines[0]
    # indices with void stay as they are: 0, 1 and 255 is not a black-and-white mask
    Image.fromarray(np.where(truth, 1, 255).astype(np.uint8), mode="L").save(tmp_path / "void.png")
    assert set(np.unique(read_mask(tmp_path / "void.png"))) == {1, 255}
    assert capsys.readouterr().err == ""


def test_a_lossy_mask_is_refused_whatever_its_name(tmp_path):
    from propagate.errors import PropagateError

    Image.new("L", (8, 8)).save(tmp_path / "looks.png", format="JPEG")
    Image.new("P", (8, 8)).save(tmp_path / "m.webp", format="WEBP", lossless=True)
    for name in ("looks.png", "m.webp"):
        with pytest.raises(PropagateError, match="save it as PNG"):
            read_mask(tmp_path / name)


# ---------------------------------------------------------------------------------------------- faults


def _mount(what: list[str], where: Path) -> str | None:
    """Run ``mount WHAT WHERE``; the reason it failed, or None."""
    if os.geteuid() != 0:
        return "not root: cannot mount"
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(["mount", *what, str(where)], capture_output=True, text=True)
    return None if done.returncode == 0 else f"mount {' '.join(what)} failed: {done.stderr.strip()}"


def _umount(where: Path) -> None:
    subprocess.run(["umount", str(where)], check=False, capture_output=True)


def _console(args: list, env: dict[str, str] | None = None, script: str | None = None) -> subprocess.Popen:
    """``python -m propagate.cli ARGS`` (or ``python -c SCRIPT ARGS``), as a user's console runs it."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "propagate.cli"] if script is None else [sys.executable, "-c", script]
    return subprocess.Popen([*command, *[str(a) for a in args]], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _read_only_view(source: Path, view: Path) -> str | None:
    """Make ``view`` a read-only view of ``source``: a read-only bind mount as root (root ignores file modes), else
    ``chmod`` of ``source`` and a symlink. The reason it could not, or None."""
    if os.geteuid() != 0:
        view.symlink_to(source)
        source.chmod(0o555)
        return None
    view.mkdir()
    reason = _mount(["--bind", str(source)], view)
    if reason is None and _mount(["-o", "remount,bind,ro"], view) is not None:
        _umount(view)
        reason = "remount read-only failed"
    return reason


def _undo_read_only_view(source: Path, view: Path) -> None:
    if os.geteuid() != 0:
        source.chmod(0o755)
    else:
        _umount(view)


def test_console_prints_one_line_for_a_bad_value_and_a_read_only_folder(shared, tmp_path):
    """The real console path (``python -m propagate.cli``): a bad ``--set`` value, and ``--overwrite`` of results in
    a read-only folder, each give one line and status 2, and change nothing."""
    world = World(tmp_path, shared)
    store = world.results(tmp_path / "store" / "out").parent
    ro = tmp_path / "ro"
    reason = _read_only_view(store, ro)
    try:
        before, marks_before = checksums(tmp_path), marks(tmp_path)
        bad = _console(run(world, "--set", "propagation.topk=abc"))
        read_only = None if reason else _console(run(world, out=ro / "out", overwrite=True))
        _, err = bad.communicate(timeout=120)
        assert_one_error(bad.returncode, err, 2, "propagation.topk='abc'")
        if read_only is not None:
            _, err = read_only.communicate(timeout=120)
            assert_one_error(read_only.returncode, err, 2, "ead-only file system" if os.geteuid() == 0 else "ermission")
        assert_nothing_lost(tmp_path, before, marks_before)
    finally:
        if reason is None:
            _undo_read_only_view(store, ro)
    if reason:
        print(f"SKIPPED part: read-only folder not tested: {reason}")
        pytest.skip(f"read-only folder not tested: {reason}")


def test_a_full_disk_is_one_line_and_the_earlier_results_survive(shared, tmp_path, capsys):
    """A 64 KiB tmpfs holds earlier results and a user's file that fills it: ``--overwrite`` fails with one line and
    leaves both as they were; a new folder there fails the same way and leaves nothing."""
    world = World(tmp_path, shared)
    disk = tmp_path / "disk"
    disk.mkdir()
    reason = _mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs"], disk)
    if reason:
        print(f"SKIPPED: full disk not tested: {reason}")
        pytest.skip(f"full disk not tested: {reason}")
    try:
        world.results(disk / "out")
        stat = os.statvfs(disk)
        (disk / "filler.bin").write_bytes(b"x" * max(0, stat.f_bavail * stat.f_frsize - 4096))  # one page left
        capsys.readouterr()
        before, marks_before = checksums(tmp_path), marks(tmp_path)
        for out, overwrite in ((disk / "out", True), (disk / "new", False)):
            code = cli(run(world, out=out, overwrite=overwrite))
            assert_one_error(code, capsys.readouterr().err, 2, "No space left on device")
            assert_nothing_lost(tmp_path, before, marks_before)
        assert sorted(p.name for p in disk.iterdir()) == ["filler.bin", "out"]
    finally:
        _umount(disk)


# ---------------------------------------------------------------------------------------------- kill, then rerun

# The CLI with each mask write slowed down, so that a signal reliably lands mid-run.
SLOW_CLI = """
import sys, time
import propagate.labels as labels
write = labels.write_mask
def slow_write(path, mask):
    write(path, mask)
    time.sleep(0.25)
labels.write_mask = slow_write
from propagate.cli import main
sys.exit(main(sys.argv[1:]))
"""


def same_results(a: Path, b: Path) -> None:
    """Two results folders hold the same files, byte for byte (``run_info.json``: all but the date and command)."""
    files_a, files_b = checksums(a), checksums(b)
    assert sorted(files_a) == sorted(files_b)
    for name in files_a:
        if Path(name).name == "run_info.json":
            info_a, info_b = (json.loads((folder / name).read_text()) for folder in (a, b))
            for info in (info_a, info_b):
                del info["date"], info["command"]
            assert info_a == info_b, name
        else:
            assert files_a[name] == files_b[name], name


def _wait_for_partial_results(parent: Path, frames: int = 2, timeout: float = 60.0) -> None:
    """Until a staging folder under ``parent`` holds ``frames`` masks."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(len(list(s.rglob("*.png"))) >= frames for s in parent.rglob(f".*{STAGING_TAG}*") if s.is_dir()):
            return
        time.sleep(0.05)
    raise AssertionError("the slowed-down run wrote no partial results in time")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_killed_run_leaves_earlier_results_and_a_rerun_equals_an_uninterrupted_one(sig, shared, tmp_path, capsys):
    world = World(tmp_path, shared)
    for index in range(4, 10):  # 10 frames
        shutil.copy(world.frames / f"{index % 4:05d}.jpg", world.frames / f"{index:05d}.jpg")
    args = ["run", world.frames, "--mask", world.mask, "--out", world.out, "--features", "baseline", *SMALL,
            "--overwrite"]
    world.results(world.out, "--topk", "3")  # earlier results, made with other settings
    reference = tmp_path / "reference"
    assert cli([*args[:5], reference, *args[6:-1]]) == 0
    before, marks_before = checksums(tmp_path), marks(tmp_path)

    process = _console(args, script=SLOW_CLI)
    _wait_for_partial_results(tmp_path)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    if sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM (kill, timeout, a container stop) is handled as Ctrl-C
        assert process.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig] and "Traceback" not in err, err
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("interrupted: "), err
        ERRORS.append(lines[0])
        assert_nothing_lost(tmp_path, before, marks_before)
    else:
        assert process.returncode == -signal.SIGKILL
        staging = staging_left(tmp_path)
        assert len(staging) == 1  # a kill leaves its staging folder (marked in progress): the next run removes it
        left = {k: v for k, v in checksums(tmp_path).items() if not k.startswith(staging[0] + "/")}
        assert left == before and marks(tmp_path) == marks_before
    capsys.readouterr()
    assert cli(args) == 0  # the rerun
    assert not staging_left(tmp_path)
    same_results(world.out, reference)


def test_a_failure_while_moving_new_results_into_place_puts_the_earlier_ones_back(shared, tmp_path, capsys,
                                                                                   monkeypatch):
    """The last step of ``--overwrite`` sets the earlier results aside, then moves the new ones in; if that move
    fails (here: an injected EIO), the earlier results go back, and nothing is left for a later run to delete."""
    import errno

    world = World(tmp_path, shared)
    world.results(world.out, "--topk", "3")
    rename = os.rename

    def failing_rename(src, dst):
        if STAGING_TAG in Path(src).name and not Path(src).name.endswith("-old") and Path(dst) == world.out:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        rename(src, dst)

    capsys.readouterr()
    before, marks_before = checksums(tmp_path), marks(tmp_path)
    monkeypatch.setattr(os, "rename", failing_rename)
    assert_one_error(cli(run(world, overwrite=True)), capsys.readouterr().err, 2, "Input/output error")
    assert_nothing_lost(tmp_path, before, marks_before)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------------------------------------- issue 22: accepted


def test_small_floats_in_any_notation_are_numbers(shared, tmp_path, capsys):
    """YAML 1.1 reads ``1e-3`` as a string; ``--set`` values and presets read it as the number (YAML 1.2)."""
    from propagate.config import load_config

    world = World(tmp_path, shared)
    preset = world.file("mine.yaml", b"features: baseline\npropagation:\n  temperature: 5E-2\n  topk: 1_0\n")
    assert load_config(preset).propagation.temperature == 0.05 and load_config(preset).propagation.topk == 10
    assert load_config(None, ["propagation.temperature=1e-3"]).propagation.temperature == 0.001
    assert load_config(None, ["propagation.temperature=.5e+1"]).propagation.temperature == 5.0
    assert load_config(None, ["features=1e"]).features == "1e"  # not a number: stays a string
    assert cli(run(world, "--set", "propagation.temperature=1e-3")) == 0
    assert error_lines(capsys.readouterr().err) == []
    assert json.loads((world.out / "run_info.json").read_text())["config"]["propagation"]["temperature"] == 0.001


@pytest.mark.parametrize("data", [
    b"\xef\xbb\xbfname,x,y\nhead,20,20\nneck,40,30\n",  # a byte-order mark (Excel, Notepad)
    b"name,x,y\r\nhead,20,20\r\nneck,40,30\r\n",  # Windows line ends
    b"\xef\xbb\xbfhead,20,20\r\nneck,40,30",  # both, no header, no final line end
])
def test_points_csv_with_a_bom_or_crlf_is_read(tmp_path, data):
    from propagate.keypoints import read_points

    (tmp_path / "p.csv").write_bytes(data)
    points = read_points(tmp_path / "p.csv")
    assert points.names == ["head", "neck"] and points.xy.tolist() == [[20.0, 20.0], [40.0, 30.0]]


def test_points_json_with_a_bom_is_read(tmp_path):
    from propagate.keypoints import read_points

    text = json.dumps({"points": [{"name": "a", "x": 1, "y": 2}]})
    (tmp_path / "p.json").write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert read_points(tmp_path / "p.json").xy.tolist() == [[1.0, 2.0]]


def test_brackets_inside_json_strings_do_not_count_as_nesting(tmp_path):
    from propagate.keypoints import read_points

    name = '[{"' * 200 + '\\"]'
    (tmp_path / "p.json").write_text(json.dumps({"points": [{"name": name, "x": 1, "y": 2}]}))
    assert read_points(tmp_path / "p.json").names == [name]


def test_an_image_over_the_default_limit_is_read_when_the_limit_is_raised(tmp_path, monkeypatch):
    """The limit is overridable: a 12000x12000 PNG is refused by default and read (header only) at 200 MP."""
    from propagate.errors import PropagateError
    from propagate.io import image_size

    bomb = bomb_png(tmp_path / "big.png")
    with pytest.raises(PropagateError, match="more than 100000000 pixels"):
        image_size(bomb)
    monkeypatch.setenv("PROPAGATE_MAX_PIXELS", "200000000")
    assert image_size(bomb) == (12000, 12000)


# ---------------------------------------------------------------------------------------------- issue 22: memory


@pytest.mark.parametrize("failure", ["MemoryError", "numpy", "opencv", "torch-cpu"])
def test_running_out_of_memory_is_one_line(failure, shared, tmp_path, capsys, monkeypatch):
    """An allocation that fails anywhere in a run (Python, NumPy, OpenCV, torch's CPU allocator) is one line, and
    nothing is marked complete or left behind."""
    import cv2

    from propagate.features.baseline import BaselineExtractor

    def fail(*args, **kwargs):
        if failure == "MemoryError":
            raise MemoryError()
        if failure == "numpy":
            np.zeros((2**40, 2**20), np.uint8)  # 1 EiB: NumPy's _ArrayMemoryError
        if failure == "opencv":
            cv2.resize(np.zeros((4, 4, 3), np.uint8), (300_000, 300_000))
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")

    world = World(tmp_path, shared)
    monkeypatch.setattr(BaselineExtractor, "extract", fail)
    capsys.readouterr()
    before, marks_before = checksums(tmp_path), marks(tmp_path)
    line = assert_one_error(cli(run(world)), capsys.readouterr().err, 2, "out of memory")
    assert "resize.short_side" in line
    assert_nothing_lost(tmp_path, before, marks_before)


def test_other_errors_are_not_taken_for_memory(shared, tmp_path, monkeypatch):
    """Only allocation failures become a line: any other bug still shows its traceback (it is ours to fix)."""
    from propagate.features.baseline import BaselineExtractor

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(BaselineExtractor, "extract", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        cli(run(World(tmp_path, shared)))
def test_two_runs_started_at_once_on_one_new_folder_one_wins_the_other_says_so(shared, tmp_path):
    """Two real ``propagate run`` processes on the same new ``--out``, no ``--overwrite``: one writes the results,
    the other stops with one line (another run is writing, or wrote, that folder), and nothing else changes."""
    world = World(tmp_path, shared)
    before, marks_before = checksums(tmp_path), marks(tmp_path)
    args = ["run", world.frames, "--mask", world.mask, "--out", world.out, "--features", "baseline", *SMALL]
    processes = [_console(args, script=SLOW_CLI) for _ in range(2)]
    ended = [(p.wait(timeout=180), p.communicate()[1]) for p in processes]
    assert sorted(code for code, _ in ended) == [0, 2], ended
    line = assert_one_error(2, next(err for code, err in ended if code == 2))
    assert re.search(r"another propagate run .* is writing|another run wrote results|already holds results", line)
    assert_nothing_lost(tmp_path, before, marks_before | {f"out/{COMPLETE}"})  # the winner's results: complete
    assert len(list(world.out.glob("*.png"))) == 4
