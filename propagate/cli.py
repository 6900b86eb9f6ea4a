"""The ``propagate`` command: a thin layer over the Python API.

Every option lives in a YAML preset (``propagate/configs/``); flags override it. Errors a user can act on are
printed as one line (``error: ...``) with exit status 2, never as a traceback (``--debug`` or ``PROPAGATE_DEBUG=1``
shows it, for bug reports).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from propagate.config import Config, config_from_dict, load_config, parse_overrides, set_dotted
from propagate.errors import PropagateError
from propagate.io import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from propagate.writers import format_help

if TYPE_CHECKING:
    from propagate.cache import FeatureCache
    from propagate.cluster import RayRunner

# flag -> dotted config key; each is also reachable as --set KEY=VALUE
FLAG_KEYS = {
    "model": "extractor.model",
    "t": "extractor.t",
    "up_ft_index": "extractor.up_ft_index",
    "ensemble_size": "extractor.ensemble_size",
    "prompt": "extractor.prompt",
    "dtype": "extractor.dtype",
    "seed": "extractor.seed",
    "batch_size": "extractor.batch_size",
    "temperature": "propagation.temperature",
    "topk": "propagation.topk",
    "n_last_frames": "propagation.n_last_frames",
    "radius": "propagation.radius",
    "window": "propagation.window",
    "batch_frames": "batch_frames",
}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (a preset, then flags on top)")
    g.add_argument("--config", help="preset name in configs/ (davis_sd, davis_adm, davis_baseline, jhmdb_sd, ...) "
                   "or a YAML file")
    g.add_argument("--features", help="extractor: dift_sd, adm, baseline (weight-free, not DIFT), "
                   "or another registered one")
    g.add_argument("--model", help="DIFT-SD: hub id or local diffusers folder; ADM: checkpoint file")
    g.add_argument("--t", type=int, help="noise timestep")
    g.add_argument("--up-ft-index", type=int, help="up block (SD) / output block (ADM) whose output is the feature")
    g.add_argument("--ensemble-size", type=int, help="noised copies averaged per frame")
    g.add_argument("--prompt", help="text prompt for DIFT-SD (default empty)")
    g.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"], help="UNet precision")
    g.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="device for extraction and propagation")
    g.add_argument("--seed", type=int, help="seed of the diffusion noise")
    g.add_argument("--batch-size", type=int, help="max UNet samples per forward pass (speed only)")
    g.add_argument("--batch-frames", type=int, help="frames extracted together (speed only)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--topk", type=int)
    g.add_argument("--n-last-frames", type=int, help="recent frames kept in the context besides frame 0")
    g.add_argument("--radius", type=int, help="window radius in feature cells")
    g.add_argument("--window", choices=["square", "disk", "open_disk", "none"])
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set propagation.minmax_norm=false (repeatable)")


def config_from_args(args: argparse.Namespace, task: str) -> Config:
    """Preset (``--config``, else ``<task>_<features>``), then ``--features``, the flags, and ``--set``."""
    from propagate.features import preset_name  # imported here: the registry loads torch; --help and score need none

    overrides: dict[str, object] = {}
    preset = args.config
    features = args.features
    if preset is None:
        preset = preset_name(task, features or "dift_sd")
    base = load_config(preset)
    if features and features != base.features:
        overrides["features"] = features
        overrides["extractor"] = {}  # the preset's extractor options belong to another extractor
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    if getattr(args, "device", None):
        overrides["extractor.device"] = args.device
        overrides["propagation.device"] = args.device
    data = base.to_dict()
    for key, value in {**overrides, **parse_overrides(args.set)}.items():
        if key == "extractor" and value == {}:
            data["extractor"] = {}
        else:
            set_dotted(data, key, value)
    return config_from_dict(data, str(preset))


def cmd_run(args: argparse.Namespace) -> None:
    if (args.mask is None) == (args.points is None):
        raise PropagateError("give exactly one of --mask FIRST.png (masks) or --points FIRST.json (keypoints)")
    from propagate.runs import run_points, run_video

    cache = _open_cache(args)
    inputs = [cache.folder] if cache is not None else []
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    if args.mask is not None:
        config = config_from_args(args, "davis")
        summary = run_video(args.video, args.mask, args.out, config, overwrite=args.overwrite,
                            render=not args.no_video, cache=cache, inputs=inputs, formats=formats,
                            direction=args.direction, frames=args.frames, stride=args.stride)
        print(f"wrote {summary['frames']} masks to {summary['out']}"
              + (f" and {summary['overlay']}" if summary["overlay"] else "") + f" [{summary['features']}]")
        if summary["check_first"]:
            print("least confident frames (check these first): "
                  + ", ".join(f"{name} ({value:.2f})" for name, value in summary["check_first"]))
    else:
        config = config_from_args(args, "jhmdb")
        summary = run_points(args.video, args.points, args.out, config, overwrite=args.overwrite,
                             render=not args.no_video, cache=cache, inputs=inputs, direction=args.direction,
                             formats=formats, frames=args.frames, stride=args.stride)
        print(f"wrote keypoints of {summary['frames']} frames to {summary['out']}"
              + (f" and {summary['overlay']}" if summary["overlay"] else "") + f" [{summary['features']}]")


def _open_cache(args: argparse.Namespace) -> FeatureCache | None:
    if getattr(args, "cache", None) is None:
        return None
    from propagate.cache import FeatureCache

    return FeatureCache(args.cache)


def cmd_demo(args: argparse.Namespace) -> None:
    from propagate.demo import run_demo

    run_demo(args.out, overwrite=args.overwrite, model=args.model, num_frames=args.frames)


def cmd_eval_davis(args: argparse.Namespace) -> None:
    from propagate.datasets.davis import evaluate_davis, format_table

    config = config_from_args(args, "davis")
    sequences = args.sequences.split(",") if args.sequences else None
    try:
        keyframes = [int(k) for k in args.keyframes.split(",")] if args.keyframes else [0]
    except ValueError:
        raise PropagateError(f"--keyframes {args.keyframes!r}: give frame indices like 0,20") from None
    result = evaluate_davis(args.root, args.out, config, split=args.split, sequences=sequences, preset=args.config,
                            command=" ".join(sys.argv), cache=_open_cache(args), keyframes=keyframes,
                            runner=_cluster_runner(args))
    print(format_table(result))


def cmd_eval_jhmdb(args: argparse.Namespace) -> None:
    from propagate.datasets.jhmdb import evaluate_jhmdb, format_pck_table

    config = config_from_args(args, "jhmdb")
    result = evaluate_jhmdb(args.root, args.split_file, args.out, config, preset=args.config,
                            command=" ".join(sys.argv), cache=_open_cache(args), runner=_cluster_runner(args))
    print(format_pck_table(result))


def cmd_match(args: argparse.Namespace) -> None:
    from propagate.matching import run_match

    config = config_from_args(args, "spair")
    summary = run_match(args.source, args.targets, args.points, args.out, config, category=args.category,
                        overwrite=args.overwrite)
    print(f"matched points into {summary['targets']} image(s) in {summary['out']} [{summary['features']}]")


def cmd_edit(args: argparse.Namespace) -> None:
    from propagate.edit import run_edit, run_edit_video

    if (args.to is None) == (args.at is None):
        raise PropagateError("give exactly one of --to TGT... (images) or --at FRAME (a video)")
    config = config_from_args(args, "spair")
    if args.to is not None:
        if args.mask is not None:
            raise PropagateError("--mask hides the edit where a video's surface is occluded: use it with --at")
        summary = run_edit(args.source, args.edit, args.to, args.out, config, category=args.category,
                           overwrite=args.overwrite)
        failed = [f["target"] for f in summary["fits"] if not f["fitted"]]  # type: ignore[union-attr]
        print(f"edit carried to {summary['targets']} image(s) in {summary['out']} [{summary['features']}]"
              + (f"; no homography for {', '.join(failed)} (written unedited)" if failed else ""))
    else:
        summary = run_edit_video(args.source, args.edit, args.at, args.out, config, mask=args.mask,
                                 category=args.category, overwrite=args.overwrite)
        print(f"edit carried through {summary['frames']} frames ({summary['fitted']} fitted) into {summary['out']} "
              f"[{summary['features']}]")


def cmd_eval_spair(args: argparse.Namespace) -> None:
    from propagate.datasets.spair import evaluate_spair, format_spair_table

    config = config_from_args(args, "spair")
    categories = args.categories.split(",") if args.categories else None
    result = evaluate_spair(args.root, args.out, config, split=args.split, categories=categories, preset=args.config,
                            command=" ".join(sys.argv))
    print(format_spair_table(result))


def cmd_eval_hpatches(args: argparse.Namespace) -> None:
    from propagate.datasets.hpatches import evaluate_hpatches, format_hpatches_table

    config = config_from_args(args, "hpatches")
    sequences = args.sequences.split(",") if args.sequences else None
    result = evaluate_hpatches(args.root, args.out, config, sequences=sequences, preset=args.config,
                               command=" ".join(sys.argv))
    print(format_hpatches_table(result))


def add_cluster_flags(p: argparse.ArgumentParser, batch: bool = False) -> None:
    g = p.add_argument_group("workers (Ray; pip install -e \".[cluster]\")")
    g.add_argument("--workers", type=int, help="worker processes, each with its own extractor (default: one per CPU, "
                   "or per --gpus-per-worker GPUs)" if batch
                   else "run the videos on this many Ray workers (default: in this process)")
    g.add_argument("--address", help="a running Ray cluster: auto (on one of its nodes) or ray://HEAD:10001 "
                   "(default: start a local one)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each worker holds (default 0: CPU)")
    g.add_argument("--connect-timeout", type=float, default=30.0,
                   help="seconds to wait for the cluster at --address to answer (default 30)")


def _cluster_runner(args: argparse.Namespace, always: bool = False) -> RayRunner | None:
    """A Ray runner if the command asked for workers (``--workers`` or ``--address``), else None (in-process)."""
    if not (always or args.workers is not None or args.address is not None):
        return None
    from propagate.cluster import RayRunner

    return RayRunner(workers=args.workers, address=args.address, gpus_per_worker=args.gpus_per_worker,
                     connect_timeout=args.connect_timeout)


def cmd_batch(args: argparse.Namespace) -> int:
    from propagate.batch import run_batch

    def configure(preset: str | None, task: str) -> Config:
        return config_from_args(argparse.Namespace(**{**vars(args), "config": preset or args.config}), task)

    runner = _cluster_runner(args, always=True)
    assert runner is not None
    report = run_batch(args.manifest, args.out, configure, runner, render=not args.no_video, cache=_open_cache(args))
    print(report.table())
    if report.failed:
        print(f"failures listed in {Path(args.out) / 'failures.csv'}; fix those rows and run the same command "
              "again (finished videos are skipped)")
        return 1
    return 0


def cmd_score_davis(args: argparse.Namespace) -> None:
    from propagate.datasets.davis import format_table, score_davis

    result = score_davis(args.root, args.results, split=args.split)
    print(format_table(result))


def cmd_extract(args: argparse.Namespace) -> None:
    from propagate.cache import extract_to_cache
    from propagate.datasets.davis import is_davis_root, sequence_folders
    from propagate.results import check_not_input

    config = config_from_args(args, "davis")
    videos = sequence_folders(args.input) if is_davis_root(args.input) else [Path(args.input)]
    check_not_input(args.out, [args.input])
    summary = extract_to_cache(videos, args.out, config)
    print(f"cached features of {summary['frames']} frames in {args.out}")


def cmd_serve(args: argparse.Namespace) -> None:
    from propagate.app import serve
    from propagate.features import preset_name

    chosen = args.config or args.features or args.model  # nothing chosen: DIFT if its weights load, else baseline
    if args.config is None:  # the app's default: the interactive preset of the backbone (davis_sd_interactive)
        args.config = preset_name("davis", args.features or "dift_sd") + "_interactive"
    serve(config_from_args(args, "davis"), video=args.video, root=args.root, host=args.host, port=args.port,
          max_upload_mb=args.max_upload_mb, fallback=not chosen)


class OneLineParser(argparse.ArgumentParser):
    """argparse with a usage mistake reported like every other failure: one ``error:`` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="propagate", description="Carry first-frame labels through a video with DIFT features.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also PROPAGATE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="propagate a first-frame mask (or keypoints) through a video")
    run.add_argument("video", help=f"folder of frames ({'/'.join(sorted(s[1:] for s in IMAGE_SUFFIXES))}) or a video "
                     f"file ({'/'.join(sorted(s[1:] for s in VIDEO_SUFFIXES))})")
    run.add_argument("--mask", help="first-frame mask: indexed PNG (0 background, 1..N objects, 255 void), a folder "
                     "of keyframe masks named like frames (00000.png, 00040.png, ...), or a CVAT for video 1.1 "
                     "annotations.xml or export zip")
    run.add_argument("--direction", choices=["auto", "forward", "backward", "both"],
                     help="propagation direction (default auto: forward for one keyframe on frame 0, else both)")
    run.add_argument("--format", default="png", help="outputs, comma-separated: " + format_help() + " (e.g. png,coco)")
    run.add_argument("--points", help="first-frame keypoints: JSON or CSV (see README)")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    run.add_argument("--no-video", action="store_true", help="skip the overlay mp4")
    run.add_argument("--cache", help="feature cache folder made by `propagate extract` (refused if settings differ)")
    run.add_argument("--frames", metavar="A:B", help="read frames A to B-1 only (counted from 0; A: to the end, :B "
                     "from the start); results keep their frames' names")
    run.add_argument("--stride", type=int, default=1, help="read every N-th frame of the range (default 1: all)")
    add_config_flags(run)
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="make the demo clip and run the main job on it")
    demo.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    demo.add_argument("--overwrite", action="store_true", default=True, help=argparse.SUPPRESS)
    demo.add_argument("--model", help="DIFT-SD model to try first (hub id or local diffusers folder)")
    demo.add_argument("--frames", type=int, default=60, help="frames of the demo clip to use (default all 60)")
    demo.set_defaults(func=cmd_demo)

    ev = sub.add_parser("eval", help="run a benchmark protocol end to end (DAVIS-2017 or JHMDB)")
    ev_sub = ev.add_subparsers(dest="dataset", required=True)
    ed = ev_sub.add_parser("davis", help="DAVIS-2017 semi-supervised: propagate every sequence, then score (J&F)")
    ed.add_argument("--root", required=True, help="DAVIS root (JPEGImages/480p, Annotations/480p, ImageSets/2017)")
    ed.add_argument("--split", default="val")
    ed.add_argument("--out", required=True, help="results folder (resumable)")
    ed.add_argument("--sequences", help="comma-separated subset of the split")
    ed.add_argument("--cache", help="feature cache folder made by `propagate extract`")
    ed.add_argument("--keyframes", help="annotated frames given as keyframes (default 0, the DAVIS protocol), "
                    "e.g. 0,20 to measure a correction")
    add_config_flags(ed)
    add_cluster_flags(ed)
    ed.set_defaults(func=cmd_eval_davis)
    ej = ev_sub.add_parser("jhmdb", help="JHMDB keypoints: propagate every video, then PCK@0.1/0.2")
    ej.add_argument("--root", required=True, help="JHMDB root (Rename_Images/, joint_positions/)")
    ej.add_argument("--split-file", required=True, help="list of videos")
    ej.add_argument("--out", required=True, help="results folder (resumable)")
    ej.add_argument("--cache", help="feature cache folder made by `propagate extract`")
    add_config_flags(ej)
    add_cluster_flags(ej)
    ej.set_defaults(func=cmd_eval_jhmdb)
    es = ev_sub.add_parser("spair", help="SPair-71k semantic correspondence: carry keypoints, then PCK@0.1")
    es.add_argument("--root", required=True, help="SPair-71k root (JPEGImages/<category>/, PairAnnotation/<split>/)")
    es.add_argument("--split", default="test")
    es.add_argument("--out", required=True, help="results folder (resumable)")
    es.add_argument("--categories", help="comma-separated subset of the categories")
    add_config_flags(es)
    es.set_defaults(func=cmd_eval_spair)
    eh = ev_sub.add_parser("hpatches", help="HPatches: homography accuracy at 1, 3, 5 px (illumination, viewpoint)")
    eh.add_argument("--root", required=True, help="hpatches-sequences-release (<seq>/1.ppm..6.ppm, H_1_2..H_1_6)")
    eh.add_argument("--out", required=True, help="results folder (resumable)")
    eh.add_argument("--sequences", help="comma-separated subset of the sequences")
    add_config_flags(eh)
    eh.set_defaults(func=cmd_eval_hpatches)

    ba = sub.add_parser("batch", help="label every video of a manifest on Ray workers (local or a cluster)")
    ba.add_argument("manifest", help="CSV: video,mask or video,points; optional name and config columns (README)")
    ba.add_argument("--out", required=True, help="results folder: one folder per video, as `propagate run` writes")
    ba.add_argument("--no-video", action="store_true", help="skip the overlay mp4s")
    ba.add_argument("--cache", help="feature cache folder made by `propagate extract` (seen by every worker)")
    add_config_flags(ba)
    add_cluster_flags(ba, batch=True)
    ba.set_defaults(func=cmd_batch)

    sc = sub.add_parser("score", help="score an existing results folder")
    sc_sub = sc.add_subparsers(dest="dataset", required=True)
    sd = sc_sub.add_parser("davis", help="J&F of a DAVIS results folder, as davis2017-evaluation computes it")
    sd.add_argument("--root", required=True)
    sd.add_argument("--results", required=True)
    sd.add_argument("--split", default="val")
    sd.set_defaults(func=cmd_score_davis)

    ex = sub.add_parser("extract", help="store features of a video or a DAVIS dataset for reuse with --cache")
    ex.add_argument("input", help="video (folder or file) or a DAVIS root")
    ex.add_argument("--out", required=True, help="cache folder")
    add_config_flags(ex)
    ex.set_defaults(func=cmd_extract)

    sv = sub.add_parser("serve", help="a local web app: paint, propagate, correct, export; click-to-correspond")
    sv.add_argument("video", nargs="?", help="a video (file or folder of frames) under --root, opened on page load")
    sv.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    sv.add_argument("--root", default=".",
                    help="the only folder whose files the app opens (default: the working directory)")
    sv.add_argument("--max-upload-mb", type=int, default=500, help="largest upload accepted (default 500)")
    add_config_flags(sv)
    sv.set_defaults(func=cmd_serve)

    ma = sub.add_parser("match", help="carry named points from one image to others (semantic correspondence)")
    ma.add_argument("source", help="the image the points are on")
    ma.add_argument("targets", nargs="+", metavar="TGT", help="target images, or folders of them")
    ma.add_argument("--points", required=True, help="points on the source: JSON or CSV (see README)")
    ma.add_argument("--out", required=True, help="output folder: <target>.json and <target>.jpg per target")
    ma.add_argument("--category", help="what the images show (DIFT-SD's prompt \"a photo of a {category}\")")
    ma.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    add_config_flags(ma)
    ma.set_defaults(func=cmd_match)

    ed_ = sub.add_parser("edit", help="carry an edit (an RGBA sticker over the source) to other images or a video")
    ed_.add_argument("source", help="the image the edit is drawn over, or a video (file or folder of frames)")
    ed_.add_argument("--edit", required=True, help="RGBA PNG the size of the source, transparent where not drawn")
    ed_.add_argument("--to", nargs="+", metavar="TGT", help="target images, or folders of them")
    ed_.add_argument("--at", type=int, help="video: the frame the edit is drawn over (0-based)")
    ed_.add_argument("--mask", help="video: folder of per-frame masks of the surface; the edit hides outside them")
    ed_.add_argument("--out", required=True, help="output folder")
    ed_.add_argument("--category", help="what the images show (DIFT-SD's prompt \"a photo of a {category}\")")
    ed_.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    add_config_flags(ed_)
    ed_.set_defaults(func=cmd_edit)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``kill``, ``timeout`` and a container stop send), raised where the program is so that it unwinds
    exactly as Ctrl-C does: staging folders removed, nothing marked complete."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


class _StderrLines(logging.Handler):
    """The package's info lines (e.g. the precision an extractor resolved to) on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed: Python's or NumPy's MemoryError, torch's out-of-memory error, or
    OpenCV's ``cv2.error`` for a buffer it could not allocate."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    if type(exc).__name__ == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and (
            "out of memory" in text or "can't allocate memory" in text)):  # CUDA's, and torch's CPU allocator's
        return True
    return type(exc).__module__.startswith("cv2") and ("Insufficient memory" in text or "Failed to allocate" in text)


def _first_line(exc: BaseException) -> str:
    """The exception's message, as one short line (OpenCV's span several)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((x for x in lines if "memory" in x.lower() or "alloc" in x.lower()), lines[0] if lines else "")
    return f"{type(exc).__name__}: {line[:160]}" if line else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log = logging.getLogger("propagate")
    if not any(isinstance(h, _StderrLines) for h in log.handlers):
        log.addHandler(_StderrLines())
        log.setLevel(logging.INFO)
    debug = args.debug or os.environ.get("PROPAGATE_DEBUG", "") not in ("", "0")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        status = args.func(args)  # None, or an exit status (batch: 1 when some videos failed)
    except PropagateError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a read-only folder, a full disk, too many open files...
        if debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}: nothing was marked complete; fix this and run again",
              file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - only running out of memory is turned into a line; the rest re-raised
        if debug or not _out_of_memory(exc):
            raise
        print(f"error: out of memory ({_first_line(exc)}): nothing was marked complete; use smaller frames "
              "(resize.short_side), fewer frames per batch (--batch-frames, --batch-size) or a machine with more "
              "memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM); " if isinstance(exc, Terminated) else ""
        print(f"interrupted: {how}what was being written is not marked complete (finished results are); run the "
              "same command again to resume", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
