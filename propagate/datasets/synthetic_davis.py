"""Synthetic datasets in the DAVIS-2017 layout, with ground truth known by construction.

Each sequence shows textured shapes moving over a textured background. Every sequence has, by design:

- several objects, all visible in the first frame (so the first annotation defines them all);
- an occlusion: object 2 slides across object 1 and is drawn on top of it (higher index = nearer);
- an object leaving the frame: object 2 exits through the right edge and is gone in the last frames, so some
  scored frames have an empty ground truth for it;
- a void region: a patch marked 255 in every annotation, on object 2's path (DAVIS's "not scored" label; the
  official semi-supervised evaluation counts it as background).

Layout written under ``root``: ``JPEGImages/480p/<seq>/00000.jpg``, ``Annotations/480p/<seq>/00000.png`` (indexed
PNG with the DAVIS palette) and ``ImageSets/2017/<split>.txt``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from propagate.io import atomic_path, atomic_write_text
from propagate.labels import VOID, write_mask


@dataclass
class _Shape:
    kind: str  # "ellipse" or "rect"
    half_wh: tuple[float, float]
    start: tuple[float, float]  # centre (x, y) at frame 0
    velocity: tuple[float, float]  # pixels per frame
    texture: np.ndarray  # [H, W, 3] uint8, the object's appearance in image coordinates


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """``[H, W]`` float in [0, 1]: random values on a coarse grid, upsampled smoothly."""
    coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _texture(rng: np.random.Generator, height: int, width: int, base: np.ndarray, stripes: bool) -> np.ndarray:
    """``[H, W, 3]`` uint8: a base colour modulated by smooth noise, fine noise and (optionally) stripes."""
    shade = 0.6 + 0.4 * _smooth_noise(rng, height, width, cell=int(rng.integers(6, 16)))
    if stripes:
        period = float(rng.integers(5, 11))
        angle = float(rng.uniform(0, np.pi))
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        shade = shade * (0.8 + 0.2 * (wave > 0))
    image = base[None, None, :].astype(np.float32) * shade[..., None]
    image += rng.normal(0, 6, size=image.shape)
    return image.clip(0, 255).astype(np.uint8)


def _shape_mask(shape: _Shape, t: int, height: int, width: int) -> np.ndarray:
    """``[H, W]`` bool footprint of ``shape`` at frame ``t`` (clipped to the frame; may be empty)."""
    cx = shape.start[0] + shape.velocity[0] * t
    cy = shape.start[1] + shape.velocity[1] * t
    hw, hh = shape.half_wh
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if shape.kind == "ellipse":
        return ((xx - cx) / hw) ** 2 + ((yy - cy) / hh) ** 2 <= 1.0
    return (np.abs(xx - cx) <= hw) & (np.abs(yy - cy) <= hh)


def _sequence_shapes(rng: np.random.Generator, num_objects: int, num_frames: int, width: int, height: int,
                     ) -> list[_Shape]:
    """Trajectories that guarantee the occlusion and the exit described in the module docstring."""
    shapes: list[_Shape] = []
    steps = max(num_frames - 1, 1)
    colours = rng.permutation(np.array([
        [220, 60, 50], [50, 180, 70], [60, 90, 220], [230, 200, 40], [200, 60, 200], [40, 200, 210], [240, 140, 30],
    ]))
    # Object 1: a large ellipse near the centre, drifting slowly.
    shapes.append(_Shape("ellipse", (0.16 * width, 0.24 * height), (0.5 * width, 0.55 * height),
                         (float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.2, 0.2))), np.empty(0)))
    # Object 2: a rectangle entering from the left third, crossing object 1 (drawn on top), gone by the last frames.
    half = (0.09 * width, 0.16 * height)
    start_x = 0.2 * width
    end_x = width + half[0] + 0.1 * width  # fully outside before the end
    speed = (end_x - start_x) / max(steps - 1, 1)  # fully outside from frame T-2 (the last scored frame) on
    shapes.append(_Shape("rect", half, (start_x, 0.5 * height), (speed, 0.0), np.empty(0)))
    # Objects 3..K: smaller shapes in the free corners with random slow motion.
    corners = [(0.15, 0.2), (0.85, 0.8), (0.15, 0.82), (0.85, 0.22), (0.5, 0.15)]
    for k in range(2, num_objects):
        fx, fy = corners[(k - 2) % len(corners)]
        kind = "ellipse" if k % 2 else "rect"
        shapes.append(_Shape(kind, (0.07 * width, 0.1 * height), (fx * width, fy * height),
                             (float(rng.uniform(-1.0, 1.0)), float(rng.uniform(-0.5, 0.5))), np.empty(0)))
    for k, shape in enumerate(shapes):
        shape.texture = _texture(rng, height, width, colours[k % len(colours)], stripes=bool(k % 2 == 0))
    return shapes


def render_sequence(rng: np.random.Generator, num_objects: int, num_frames: int, width: int, height: int,
                    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames ``T x [H, W, 3]`` uint8 and annotations ``T x [H, W]`` uint8 (0 background, 1..K objects, 255 void)."""
    background = _texture(rng, height, width, np.array([120, 110, 100]), stripes=False)
    # A static background pattern (checks) so features have structure to match outside the objects.
    yy, xx = np.mgrid[0:height, 0:width]
    checks = ((yy // 12 + xx // 12) % 2).astype(np.float32)
    background = (background.astype(np.float32) * (0.85 + 0.15 * checks[..., None])).astype(np.uint8)
    shapes = _sequence_shapes(rng, num_objects, num_frames, width, height)
    # Void: a patch on object 2's path, so some object pixels are void in the frames it crosses.
    void = np.zeros((height, width), dtype=bool)
    void[int(0.28 * height):int(0.40 * height), int(0.70 * width):int(0.80 * width)] = True

    frames, masks = [], []
    for t in range(num_frames):
        image = background.copy()
        labels = np.zeros((height, width), dtype=np.uint8)
        for k, shape in enumerate(shapes):  # later objects are nearer: they overwrite earlier ones
            footprint = _shape_mask(shape, t, height, width)
            image[footprint] = shape.texture[footprint]
            labels[footprint] = k + 1
        labels[void] = VOID
        frames.append(image)
        masks.append(labels)
    return frames, masks


def make_synthetic_davis(root: str | Path, num_sequences: int = 3, num_frames: int = 12,
                         size: tuple[int, int] = (160, 96), seed: int = 0, split: str = "val",
                         objects_per_sequence: list[int] | None = None) -> dict[str, Any]:
    """Write a synthetic DAVIS-2017-format dataset under ``root``.

    Args:
        root: dataset folder (created; existing sequences of the same names are overwritten).
        num_sequences: number of sequences, named ``synth-00``, ``synth-01``, ...
        num_frames: frames per sequence (at least 4: the first and last are not scored).
        size: ``(W, H)`` of every frame.
        seed: everything is drawn from this seed, so a dataset is reproducible.
        split: name of the ``ImageSets/2017/<split>.txt`` list written.
        objects_per_sequence: objects in each sequence (each >= 2); default 2, 3, 4, 2, 3, 4, ...

    Returns:
        ``{"root": str, "split": str, "sequences": {name: num_objects}, "num_frames": T, "size": [W, H]}``.
    """
    if num_frames < 4:
        raise ValueError(f"num_frames must be at least 4 (first and last frames are not scored), got {num_frames}")
    width, height = int(size[0]), int(size[1])
    if objects_per_sequence is None:
        objects_per_sequence = [2 + (i % 3) for i in range(num_sequences)]
    if len(objects_per_sequence) != num_sequences or min(objects_per_sequence) < 2:
        raise ValueError("objects_per_sequence needs one count >= 2 per sequence")
    root = Path(root)
    rng = np.random.default_rng(seed)
    sequences: dict[str, int] = {}
    for index in range(num_sequences):
        name = f"synth-{index:02d}"
        frames, masks = render_sequence(rng, objects_per_sequence[index], num_frames, width, height)
        image_dir = root / "JPEGImages" / "480p" / name
        mask_dir = root / "Annotations" / "480p" / name
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for t, (image, mask) in enumerate(zip(frames, masks)):
            with atomic_path(image_dir / f"{t:05d}.jpg") as tmp:
                Image.fromarray(image).save(tmp, format="JPEG", quality=95)
            write_mask(mask_dir / f"{t:05d}.png", mask)
        sequences[name] = objects_per_sequence[index]
    atomic_write_text(root / "ImageSets" / "2017" / f"{split}.txt", "".join(f"{n}\n" for n in sequences))
    return {"root": str(root), "split": split, "sequences": sequences, "num_frames": num_frames,
            "size": [width, height]}
