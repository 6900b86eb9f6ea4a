"""Synthetic datasets in the JHMDB layout, with joint positions known by construction.

Each video shows a textured stick figure (15 joints in JHMDB's order, limbs drawn as thick textured bars, a
head disc and a torso) over a textured background. The figure is rendered once and moved by a constant
sub-pixel translation per frame (``cv2.warpAffine``, bilinear), so in frame ``t`` joint ``j`` is exactly at
``joints0[j] + t * velocity`` (0-based pixel coordinates, pixel centres at integers). The figure stays inside the
frame throughout.

Layout written under ``root``::

    Rename_Images/<class>/<video>/00001.png ...
    joint_positions/<class>/<video>/joint_positions.mat     pos_img [2, 15, T], 1-based (MATLAB), as JHMDB
    test_list.txt                                           <class>/<video> lines
    test_list_crw.txt                                       CRW's "<frames folder> <mat path>" lines (relative)
    splits/<class>_test_split1.txt                          JHMDB's "<video>.avi 2" lines
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import scipy.io
from PIL import Image

from propagate.io import atomic_path, atomic_write_text

CLASSES = ("walk", "wave")

# Joint layout (x, y) relative to the belly, for a figure about 150 px tall, in JHMDB's order:
# neck, belly, face, r/l shoulder, r/l hip, r/l elbow, r/l knee, r/l wrist, r/l ankle.
_TEMPLATE = np.array([
    [0, -45], [0, 0], [0, -66], [-20, -40], [20, -40], [-12, 10], [12, 10], [-34, -16], [34, -16],
    [-15, 40], [15, 40], [-44, 8], [44, 8], [-18, 72], [18, 72],
], dtype=np.float64)
_LIMBS = ((0, 2), (3, 7), (7, 11), (4, 8), (8, 12), (5, 9), (9, 13), (6, 10), (10, 14), (3, 4), (5, 6))


def _texture(rng: np.random.Generator, height: int, width: int, base: np.ndarray, cell: int) -> np.ndarray:
    """``[H, W, 3]`` float32: ``base`` colour shaded by smooth noise plus fine noise (distinct per region)."""
    coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
    shade = 0.55 + 0.45 * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    image = base[None, None, :].astype(np.float32) * shade[..., None]
    return image + rng.normal(0, 8, size=image.shape).astype(np.float32)


def _render_figure(rng: np.random.Generator, joints: np.ndarray, height: int,
                   width: int) -> tuple[np.ndarray, np.ndarray]:
    """The figure at frame 0: colours ``[H, W, 3]`` float32 and coverage ``[H, W]`` float32 in [0, 1]."""
    colour = np.zeros((height, width, 3), dtype=np.float32)
    alpha = np.zeros((height, width), dtype=np.float32)

    def paint(mask: np.ndarray) -> None:
        base = rng.uniform(40, 255, size=3)
        tex = _texture(rng, height, width, base, cell=int(rng.integers(4, 9)))
        m = mask.astype(bool)
        colour[m] = tex[m]
        alpha[m] = 1.0

    pts = np.round(joints).astype(np.int32)
    torso = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(torso, pts[[3, 4, 6, 5]], 1)
    paint(torso)
    for a, b in _LIMBS:
        limb = np.zeros((height, width), np.uint8)
        cv2.line(limb, tuple(int(v) for v in pts[a]), tuple(int(v) for v in pts[b]), 1, thickness=9)
        paint(limb)
    head = np.zeros((height, width), np.uint8)
    cv2.circle(head, tuple(int(v) for v in pts[2]), 12, 1, thickness=-1)
    paint(head)
    for j in range(len(pts)):  # a small distinct blob on every joint: each joint has its own local look
        blob = np.zeros((height, width), np.uint8)
        cv2.circle(blob, tuple(int(v) for v in pts[j]), 4, 1, thickness=-1)
        paint(blob)
    return colour, alpha


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def make_synthetic_jhmdb(
    root: str | Path, num_videos: int = 2, num_frames: int = 10, size: tuple[int, int] = (320, 240), seed: int = 0
) -> dict[str, Any]:
    """Write a synthetic JHMDB-layout dataset under ``root``.

    Args:
        root: output folder (created; existing files of the same names are replaced).
        num_videos: videos, spread over the classes ``walk`` and ``wave``.
        num_frames: frames per video (at least 2).
        size: frame size (W, H); the figure (about 150 px tall at 240 px high) scales with H.
        seed: everything (textures, figure, motion) derives from it.

    Returns:
        ``{"root", "videos": {"<class>/<video>": {"frames", "velocity"}}, "split": path of test_list.txt}``.
    """
    if num_frames < 2 or num_videos < 1:
        raise ValueError("need at least 1 video of at least 2 frames")
    width, height = (int(v) for v in size)
    root = Path(root)
    rng = np.random.default_rng(seed)
    scale = height / 240.0
    videos: dict[str, Any] = {}
    plain, crw, official = [], [], {}
    for index in range(num_videos):
        cls = CLASSES[index % len(CLASSES)]
        name = f"{cls}_synthetic_{index:02d}"
        template = (_TEMPLATE + rng.uniform(-3, 3, size=_TEMPLATE.shape)) * scale * rng.uniform(0.9, 1.05)
        lo, hi = template.min(axis=0) - 14 * scale, template.max(axis=0) + 14 * scale  # figure extent with margins
        # velocity such that the whole figure stays in the frame for all frames
        room = np.array([width, height]) - (hi - lo)
        velocity = rng.uniform(-1, 1, size=2) * np.minimum(room / (num_frames - 1) * 0.8, [3.0, 1.5])
        travel = velocity * (num_frames - 1)
        start_lo = -lo + np.maximum(0, -travel)
        start_hi = np.array([width, height]) - hi - np.maximum(0, travel)
        centre = rng.uniform(start_lo, np.maximum(start_lo, start_hi))
        joints0 = template + centre

        background = _texture(rng, height, width, rng.uniform(60, 200, size=3), cell=int(rng.integers(10, 20)))
        colour, alpha = _render_figure(rng, joints0, height, width)
        frames_dir = root / "Rename_Images" / cls / name
        gt = np.zeros((num_frames, len(_TEMPLATE), 2))
        for t in range(num_frames):
            shift = np.float32([[1, 0, velocity[0] * t], [0, 1, velocity[1] * t]])
            moved = cv2.warpAffine(colour, shift, (width, height), flags=cv2.INTER_LINEAR)
            cover = cv2.warpAffine(alpha, shift, (width, height), flags=cv2.INTER_LINEAR)[..., None]
            frame = background * (1 - cover) + moved * cover
            _write_png(frames_dir / f"{t + 1:05d}.png", frame.clip(0, 255).astype(np.uint8))
            gt[t] = joints0 + velocity * t

        mat_path = root / "joint_positions" / cls / name / "joint_positions.mat"
        mat_path.parent.mkdir(parents=True, exist_ok=True)
        pos_img = (gt + 1.0).transpose(2, 1, 0)  # [2, 15, T], 1-based like JHMDB
        with atomic_path(mat_path) as tmp:
            scipy.io.savemat(str(tmp), {"pos_img": pos_img, "scale": np.full((1, num_frames), scale)})

        videos[f"{cls}/{name}"] = {"frames": num_frames, "velocity": [float(v) for v in velocity]}
        plain.append(f"{cls}/{name}")
        crw.append(f"Rename_Images/{cls}/{name} joint_positions/{cls}/{name}/joint_positions.mat")
        official.setdefault(cls, []).append(f"{name}.avi 2")
    atomic_write_text(root / "test_list.txt", "\n".join(plain) + "\n")
    atomic_write_text(root / "test_list_crw.txt", "\n".join(crw) + "\n")
    for cls, lines in official.items():
        atomic_write_text(root / "splits" / f"{cls}_test_split1.txt", "\n".join(lines) + "\n")
    return {"root": str(root), "videos": videos, "split": str(root / "test_list.txt")}
