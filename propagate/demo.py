"""The demo: a generated clip with a known first-frame mask, and the main job run on it.

The clip (two textured objects moving over a textured background, 36 frames, 512x288, H.264) is made by the
code below, so a fresh clone needs no data. It is processed at its own size (short side 288 instead of DAVIS's
480) so the demo stays quick on a CPU. The demo tries DIFT first; where its weights cannot be had it says so
in one line and runs the weight-free baseline features, labelled as such in the log and on the video.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from propagate.config import load_config
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.labels import write_mask
from propagate.render import OverlayWriter
from propagate.runs import run_video

DEMO_SIZE = (512, 288)
DEMO_FRAMES = 36


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


def make_demo_clip(folder: str | Path, num_frames: int = DEMO_FRAMES) -> tuple[Path, Path]:
    """Write ``clip.mp4`` and its first-frame mask ``first_mask.png`` into ``folder``; return both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    video, mask_path = folder / "clip.mp4", folder / "first_mask.png"
    with OverlayWriter(video, 24, DEMO_SIZE) as writer:
        for index, (image, mask) in enumerate(demo_frames(num_frames)):
            writer.write(image)
            if index == 0:
                write_mask(mask_path, mask)
    return video, mask_path


def run_demo(out: str | Path = "demo_out", overwrite: bool = True, model: str | None = None,
             num_frames: int = DEMO_FRAMES) -> dict[str, object]:
    """Make the demo clip under ``out/input`` and propagate its mask into ``out/result`` (PNGs + overlay.mp4)."""
    if num_frames < 2:
        raise PropagateError(f"--frames {num_frames}: the demo needs at least 2 frames")
    out = Path(out)
    video, mask = make_demo_clip(out / "input", num_frames)
    demo_resize = {"resize.short_side": DEMO_SIZE[1]}
    config = load_config("davis_sd", demo_resize)
    if model:
        config.extractor["model"] = model
    label = None
    try:
        extractor = build_extractor(config.features, config.extractor)
    except PropagateError as exc:
        print(f"DIFT weights unavailable ({exc}); running the weight-free BASELINE features instead (not DIFT)", flush=True)
        config = load_config("davis_baseline", demo_resize)
        extractor = build_extractor(config.features, config.extractor)
        label = "BASELINE features (DIFT weights unavailable)"
    print(f"features: {label or extractor.describe()}", flush=True)
    summary = run_video(video, mask, out / "result", config, extractor=extractor, overwrite=overwrite, label=label)
    print(f"demo: {summary['frames']} masks in {summary['out']}, overlay {summary['overlay']}")
    return summary
