"""The demo, on real footage: a person walks in front of a table (60 frames of a CC BY 4.0 clip, 512x288, shipped
in ``demo_data/``), with two hand-drawn keyframes: frame 0 (the person just entering, only head and shoulders in
view) and frame 12 (the whole person: the correction). ``propagate demo`` propagates both ways and writes the
results; it tries DIFT first and, where its weights cannot be had, says so in one line and runs the weight-free
baseline features, labelled as such in the log and on the video.

Also here: the synthetic scene the tests use (two textured objects moving over a textured background, the disk
passing in front of the square; :func:`demo_frames`), whose ground truth is known by construction.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from propagate.config import load_config
from propagate.errors import PropagateError
from propagate.features.fallback import dift_or_baseline, overlay_label
from propagate.labels import write_mask
from propagate.render import OverlayWriter
from propagate.runs import run_video
from propagate.video import open_video

DEMO_SIZE = (512, 288)
DEMO_FRAMES = 36  # frames of the synthetic scene


def _texture(rng: np.random.Generator, h: int, w: int, base: tuple[int, int, int], cells: int) -> np.ndarray:
    """A smooth random colour texture ``[h, w, 3]`` uint8 around ``base``."""
    import cv2

    noise = rng.normal(0, 1, size=(cells, max(2, cells * w // h), 3)).astype(np.float32)
    smooth = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 0.4, size=(h, w, 3)).astype(np.float32)
    return np.clip(np.array(base, np.float32) + 35 * smooth + 20 * fine, 0, 255).astype(np.uint8)


def demo_frames(num_frames: int = DEMO_FRAMES, size: tuple[int, int] = DEMO_SIZE, seed: int = 0):
    """Yield ``(image [H, W, 3] uint8, mask [H, W] uint8)``: object 1 a disk, object 2 a square, both moving."""
    w, h = size
    rng = np.random.default_rng(seed)
    background = _texture(rng, h, w, (90, 120, 90), 6)
    disk_tex = _texture(rng, h, w, (200, 60, 50), 12)
    square_tex = _texture(rng, h, w, (50, 80, 200), 12)
    yy, xx = np.mgrid[0:h, 0:w]
    for t in range(num_frames):
        s = t / max(1, num_frames - 1)
        # positions as fractions of the frame, so any size shows the same scene
        cx, cy, r = w * (0.17 + 0.62 * s), h * (0.51 + 0.15 * np.sin(2 * np.pi * s)), 0.165 * h
        sx, sy, half = w * (0.75 - 0.42 * s), h * (0.26 + 0.37 * s), 0.14 * h
        image, mask = background.copy(), np.zeros((h, w), np.uint8)
        square = (np.abs(xx - sx) <= half) & (np.abs(yy - sy) <= half)
        disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        # textures move with their objects
        sq_src = square_tex[(yy - int(sy)) % h, (xx - int(sx)) % w]
        dk_src = disk_tex[(yy - int(cy)) % h, (xx - int(cx)) % w]
        image[square], mask[square] = sq_src[square], 2
        image[disk], mask[disk] = dk_src[disk], 1  # the disk passes in front of the square
        yield image, mask


DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
WALK_CLIP = DEMO_DATA / "walk.mp4"  # 60 frames, 512x288: a person walks in front of a table (CC BY 4.0, see README)
WALK_SHAPES = DEMO_DATA / "walk.json"  # its two keyframes, drawn by hand as polygons and ellipses


def draw_shapes(shapes: Sequence[dict[str, object]], size_wh: tuple[int, int]) -> np.ndarray:
    """A mask ``[H, W]`` uint8 from shapes filled in order (later on top): ``{"id": k, "polygon": [[x, y], ...]}``
    or ``{"id": k, "ellipse": [cx, cy, rx, ry]}`` in pixel coordinates."""
    image = Image.new("L", tuple(size_wh), 0)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        index = int(shape["id"])  # type: ignore[arg-type]
        if "polygon" in shape:
            draw.polygon([tuple(map(float, p)) for p in shape["polygon"]], fill=index)  # type: ignore[union-attr]
        elif "ellipse" in shape:
            cx, cy, rx, ry = (float(v) for v in shape["ellipse"])  # type: ignore[union-attr]
            draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=index)
        else:
            raise PropagateError(f"shape {shape!r}: give a polygon or an ellipse")
    return np.array(image, dtype=np.uint8)


def write_keyframes(shapes_json: str | Path, folder: str | Path, num_frames: int | None = None) -> list[Path]:
    """Render every keyframe of a shapes file (see ``demo_data/walk.json``) to ``folder/<frame>.png``; keyframes at
    or beyond ``num_frames`` are left out."""
    data = json.loads(Path(shapes_json).read_text())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, shapes in data["keyframes"].items():
        if num_frames is not None and int(name) >= num_frames:
            continue
        path = folder / f"{name}.png"
        write_mask(path, draw_shapes(shapes, tuple(data["size"])))
        written.append(path)
    return written


def make_walk_clip(folder: str | Path, num_frames: int = 60) -> tuple[Path, Path]:
    """The real demo input under ``folder``: ``walk.mp4`` (the first ``num_frames`` of the clip) and ``keyframes/``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "walk.mp4"
    if num_frames >= 60:
        video.write_bytes(WALK_CLIP.read_bytes())
    else:
        source = open_video(WALK_CLIP)
        with OverlayWriter(video, source.fps, source.native_size) as writer:
            for frame in source:
                if frame.index >= num_frames:
                    break
                writer.write(frame.image)
    keyframes = folder / "keyframes"
    for name in json.loads(WALK_SHAPES.read_text())["keyframes"]:
        (keyframes / f"{name}.png").unlink(missing_ok=True)  # only the demo's own renders of an earlier run
    write_keyframes(WALK_SHAPES, keyframes, num_frames)
    return video, keyframes


def run_demo(out: str | Path = "demo_out", overwrite: bool = True, model: str | None = None,
             num_frames: int = 60) -> dict[str, object]:
    """Cut the demo clip into ``out/input`` (``walk.mp4`` and its two hand-drawn keyframes, frames 0 and 12) and
    propagate them into ``out/result`` (PNGs, overlay.mp4, confidence.csv, coco.json)."""
    if num_frames < 2:
        raise PropagateError(f"--frames {num_frames}: the demo needs at least 2 frames")
    out = Path(out)
    video, keyframes = make_walk_clip(out / "input", num_frames)
    config = load_config("davis_sd", {"resize.short_side": 288})
    if model:
        config.extractor["model"] = model
    config, extractor, _ = dift_or_baseline(config)
    print(f"features: {overlay_label(extractor)}", flush=True)
    summary = run_video(video, keyframes, out / "result", config, extractor=extractor, overwrite=overwrite,
                        formats=("png", "coco"))  # the overlay's caption is overlay_label's, as in run and the app
    print(f"demo: {summary['frames']} masks in {summary['out']}, overlay {summary['overlay']}, keyframes "
          f"{summary['keyframes']}; least confident frames: "
          + ", ".join(f"{name} ({value:.2f})" for name, value in summary["check_first"]))  # type: ignore[union-attr]
    return summary
