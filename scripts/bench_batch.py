"""Videos per second of ``propagate batch`` with 1 worker and with N workers, measured side by side in one run.

On this machine (CPU, baseline features): ``python scripts/bench_batch.py`` (1 and 2 workers). The ratio should
approach the number of cores the workers get (the videos are independent; only the scheduling is shared).

On a machine with N GPUs (DIFT-SD, one model per GPU)::

    python scripts/bench_batch.py --workers 1,N --gpus-per-worker 1 --features dift_sd --model MODEL_FOLDER

Each worker count gets a fresh set of workers; a warm-up run (one video per worker: process start, imports,
extractor build) is left out of the timing, which then covers the steady state over ``--videos`` videos. The worker
counts are measured in alternating rounds (``--rounds``) and the best round of each is compared, so that a burst of
load from other processes on a shared machine does not decide the ratio.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from propagate.cluster import RayRunner, import_ray  # noqa: E402
from propagate.config import load_config  # noqa: E402
from propagate.demo import demo_frames  # noqa: E402
from propagate.features import preset_name  # noqa: E402
from propagate.labels import write_mask  # noqa: E402
from propagate.runs import Unit  # noqa: E402


def make_clip(folder: Path, frames: int, size: tuple[int, int], seed: int) -> tuple[Path, Path]:
    """A folder of jpg frames of the demo scene and its first-frame mask."""
    (folder / "frames").mkdir(parents=True)
    first: np.ndarray | None = None
    for index, (image, mask) in enumerate(demo_frames(frames, size, seed=seed)):
        Image.fromarray(image).save(folder / "frames" / f"{index:05d}.jpg", quality=95)
        first = mask if first is None else first
    assert first is not None
    write_mask(folder / "first.png", first)
    return folder / "frames", folder / "first.png"


def spin(n: int) -> int:
    """Pure-Python busy work: what any worker count can get from the machine, without propagate."""
    total = 0
    for i in range(n):
        total += i
    return total


def machine_ceiling(ray: object, counts: list[int], rounds: int) -> dict[int, float]:
    """Best tasks/s of ``spin`` on 1..N one-CPU tasks at a time: the ratio the machine itself allows right now."""
    task = ray.remote(num_cpus=1)(spin)  # type: ignore[attr-defined]
    ray.get([task.remote(10) for _ in range(max(counts))])  # type: ignore[attr-defined]
    best: dict[int, float] = {}
    for _ in range(rounds):
        for count in counts:
            started = time.perf_counter()
            for _ in range(2):
                ray.get([task.remote(5_000_000) for _ in range(count)])  # type: ignore[attr-defined]
            best[count] = max(best.get(count, 0.0), 2 * count / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="timed videos per worker count (default 8)")
    parser.add_argument("--frames", type=int, default=16, help="frames per video (default 16)")
    parser.add_argument("--size", default="192x128", help="frame size WxH (default 192x128)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--features", default="baseline")
    parser.add_argument("--model", help="DIFT-SD model folder or hub id / ADM checkpoint")
    parser.add_argument("--address", help="a running Ray cluster (default: a local one sized to this machine)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over the worker counts (default 2)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    width, height = (int(v) for v in args.size.split("x"))

    overrides = [f"resize.short_side={min(width, height)}", "resize.multiple=8"]
    if args.model:
        overrides.append(f"extractor.model={args.model}")
    config = load_config(preset_name("davis", args.features), overrides)
    ray = import_ray()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    resources = ray.cluster_resources()
    print(f"cluster: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs; features {args.features}; "
          f"{args.videos} videos x {args.frames} frames at {width}x{height}")

    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        root = Path(tmp)
        clips = [make_clip(root / "clips" / f"v{i}", args.frames, (width, height), seed=i)
                 for i in range(args.videos + max(counts))]
        rates: dict[int, list[float]] = {count: [] for count in counts}
        for round_ in range(args.rounds):
            for count in counts:
                out = root / f"out_{round_}_{count}"

                def units(first: int, last: int, out: Path = out) -> list[tuple[Unit, object]]:
                    return [(Unit(f"v{i}", clips[i][0], clips[i][1], out / f"v{i}", render=False), config)
                            for i in range(first, last)]

                with RayRunner(workers=count, gpus_per_worker=args.gpus_per_worker) as runner:
                    started = time.perf_counter()
                    runner.run(units(args.videos, args.videos + count), progress=False)  # type: ignore[arg-type]
                    warm = time.perf_counter() - started
                    started = time.perf_counter()
                    outcomes = runner.run(units(0, args.videos), progress=False)  # type: ignore[arg-type]
                    seconds = time.perf_counter() - started
                failed = [o for o in outcomes if o.status != "done"]
                if failed:
                    raise SystemExit(f"{failed[0].name} failed: {failed[0].error}")
                rates[count].append(args.videos / seconds)
                print(f"round {round_ + 1}, {count} worker(s): {args.videos / seconds:.3f} videos/s "
                      f"({args.videos * args.frames / seconds:.1f} frames/s; {seconds:.1f} s for {args.videos} "
                      f"videos; start-up and warm-up {warm:.1f} s)")
        best = {count: max(values) for count, values in rates.items()}
        ceiling = machine_ceiling(ray, counts, args.rounds)
        for count in counts[1:]:
            print(f"best of {args.rounds}: {counts[0]} worker(s) {best[counts[0]]:.3f} videos/s, {count} worker(s) "
                  f"{best[count]:.3f} videos/s; ratio {best[count] / best[counts[0]]:.2f}x "
                  f"(os.cpu_count() = {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; the same ratio for "
                  f"pure-Python busy tasks on this machine now: {ceiling[count] / ceiling[counts[0]]:.2f}x)")
    ray.shutdown()


if __name__ == "__main__":
    main()
