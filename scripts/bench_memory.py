"""Memory of ``propagate run`` is bounded by the context, not by the video: peak RSS on 50 vs 500 frames.

Makes two synthetic videos (a folder of 160x96 JPEG frames with a square moving over a textured background, and
the first frame's mask), builds the tiny random-weight SD model (:func:`propagate.features.tiny_sd.make_tiny_sd`,
same code path as the real DIFT-SD model), runs the CLI ``propagate run`` on each as a child process -- overlay
video included, as it is part of the job -- and reads each child's peak resident set size from ``os.wait4``
(``ru_maxrss`` of that child alone; it includes the ffmpeg encoder only if larger, as Linux reports the largest
of the child and its waited-for descendants). Frames are processed at their native size (``resize.size``) so the
500-frame run takes a few minutes on a CPU.

    python scripts/bench_memory.py                  # 50 and 500 frames
    python scripts/bench_memory.py --short 20 --long 100 --features baseline
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WIDTH, HEIGHT, SIDE = 160, 96, 24


def make_video(folder: Path, frames: int, seed: int = 0) -> Path:
    """Frames ``00000.jpg``.. of a square bouncing over a fixed random texture; returns the first-frame mask path."""
    from propagate.labels import write_mask

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    background = (rng.random((HEIGHT, WIDTH, 3)) * 120 + 60).astype(np.uint8)
    square = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    square[:] = (230, 40, 40)
    square[::4] = (250, 220, 30)  # stripes give the square a texture of its own
    x, y, vx, vy = 10, 20, 3, 2
    for i in range(frames):
        image = background.copy()
        image[y:y + SIDE, x:x + SIDE] = square
        Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=95)
        if i == 0:
            mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
            mask[y:y + SIDE, x:x + SIDE] = 1
            mask_path = folder.parent / f"{folder.name}_mask.png"
            write_mask(mask_path, mask)
        if not 0 <= x + vx <= WIDTH - SIDE:
            vx = -vx
        if not 0 <= y + vy <= HEIGHT - SIDE:
            vy = -vy
        x, y = x + vx, y + vy
    return mask_path


def run_child(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd``; return (peak RSS in MiB of that child, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stdout.write(output.decode(errors="replace"))
        raise SystemExit(f"command failed (exit {proc.returncode}): {' '.join(cmd)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", type=int, default=50, help="frames of the short video")
    p.add_argument("--long", type=int, default=500, help="frames of the long video")
    p.add_argument("--features", default="dift_sd", help="dift_sd (tiny random-weight model) or baseline")
    p.add_argument("--no-video", action="store_true", help="skip the overlay mp4 (default: render it)")
    p.add_argument("--workdir", help="keep inputs and outputs here (default: a temporary folder)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        extra = ["--features", args.features, "--set", f"resize.size=[{WIDTH},{HEIGHT}]"]
        if args.features == "dift_sd":
            from propagate.features.tiny_sd import make_tiny_sd

            extra += ["--model", str(make_tiny_sd(work / "tiny_sd")), "--ensemble-size", "2", "--device", "cpu"]
        results = {}
        for frames in (args.short, args.long):
            video = work / f"video{frames}"
            mask = make_video(video, frames)
            cmd = [sys.executable, "-c", "import sys; from propagate.cli import main; sys.exit(main())", "run",
                   str(video), "--mask", str(mask), "--out", str(work / f"out{frames}"), "--overwrite", *extra]
            if args.no_video:
                cmd.append("--no-video")
            peak, seconds = run_child(cmd)
            written = len(list((work / f"out{frames}").glob("*.png")))
            results[frames] = peak
            print(f"{frames:5d} frames: peak RSS {peak:8.1f} MiB, {seconds:6.1f} s, {written} masks written",
                  flush=True)
    ratio = results[args.long] / results[args.short]
    print(f"peak RSS ratio {args.long}/{args.short} frames: {ratio:.3f} (target <= 1.15); features {args.features}, "
          f"overlay {'off' if args.no_video else 'on'}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
