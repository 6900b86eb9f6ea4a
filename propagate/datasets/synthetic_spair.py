"""A synthetic dataset in the SPair-71k layout whose PCK is known by construction.

Images are frames of the shipped demo clip (real footage) and crops of them, so every true correspondence is a
known shift. Each pair's target keypoints are either where the source keypoints truly are in the target ("true"
points, which a working matcher finds well inside the threshold: 0.1 x the longer side of a box covering the whole
target) or moved 3 thresholds away from it ("moved" points, which no matcher near the truth can score). The PCK is
then a count done by hand:

=========  =========================  ======  =====  =================
category   pair                       true    moved  pair's fraction
=========  =========================  ======  =====  =================
room       full frame -> crop         2       1      2/3
room       crop -> full frame         4       0      1
hall       full frame -> crop         0       2      0
=========  =========================  ======  =====  =================

room: per point 6/7, per image (2/3 + 1) / 2; hall: 0 and 0; all: per point 6/9, per image (2/3 + 1 + 0) / 3.
Keypoints are the strongest corners (OpenCV SIFT detector) inside both images, whole pixels as SPair's.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from propagate.correspond import detect_keypoints
from propagate.demo import WALK_CLIP
from propagate.video import open_video

CROP = (24, 16, 440, 248)  # x, y, width, height of the crop in the 512x288 frame
# (category, clip frame, source is the full frame?, true points, moved points)
PAIRS = [("room", 0, True, 2, 1), ("room", 0, False, 4, 0), ("hall", 40, True, 0, 2)]
EXPECTED = {
    "categories": {
        "room": {"pairs": 2, "points": 7, "pck_point": 100 * 6 / 7, "pck_image": 100 * (2 / 3 + 1) / 2},
        "hall": {"pairs": 1, "points": 2, "pck_point": 0.0, "pck_image": 0.0},
    },
    "overall": {"pairs": 3, "points": 9, "pck_point": 100 * 6 / 9, "pck_image": 100 * (2 / 3 + 1 + 0) / 3},
}


def _frames(indices: set[int]) -> dict[int, np.ndarray]:
    found = {}
    for frame in open_video(WALK_CLIP):
        if frame.index in indices:
            found[frame.index] = frame.image
    return found


def make_synthetic_spair(root: str | Path, split: str = "test") -> dict[str, object]:
    """Write the dataset under ``root`` (``JPEGImages/<category>/``, ``PairAnnotation/<split>/``); returns the
    expected scores (:data:`EXPECTED`, the shape :func:`propagate.datasets.spair.score_spair` returns)."""
    root = Path(root)
    x0, y0, cw, ch = CROP
    frames = _frames({p[1] for p in PAIRS})
    for number, (category, index, from_full, true_count, moved_count) in enumerate(PAIRS, start=1):
        folder = root / "JPEGImages" / category
        folder.mkdir(parents=True, exist_ok=True)
        full, crop = frames[index], frames[index][y0:y0 + ch, x0:x0 + cw]
        names = {"full": f"{index:05d}_full.png", "crop": f"{index:05d}_crop.png"}
        Image.fromarray(full).save(folder / names["full"])
        Image.fromarray(crop).save(folder / names["crop"])
        src, trg = (full, crop) if from_full else (crop, full)
        shift = np.array([-x0, -y0]) if from_full else np.array([x0, y0])  # source pixel + shift = target pixel
        corners = detect_keypoints(src, 200).round()
        truth = corners + shift
        margin = 20
        inside = ((truth >= margin) & (truth < [trg.shape[1] - margin, trg.shape[0] - margin])).all(axis=1)
        inside &= ((corners >= margin) & (corners < [src.shape[1] - margin, src.shape[0] - margin])).all(axis=1)
        chosen = corners[inside][: true_count + moved_count]
        threshold = 0.1 * max(trg.shape[:2])
        trg_kps = chosen + shift
        trg_kps[true_count:, 0] += np.where(trg_kps[true_count:, 0] < trg.shape[1] / 2, 3, -3) * threshold
        pair = {
            "src_imname": names["full" if from_full else "crop"], "trg_imname": names["crop" if from_full else "full"],
            "category": category, "src_imsize": [src.shape[1], src.shape[0], 3],
            "trg_imsize": [trg.shape[1], trg.shape[0], 3],
            "src_kps": chosen.astype(int).tolist(), "trg_kps": trg_kps.astype(int).tolist(),
            "src_bndbox": [0, 0, src.shape[1] - 1, src.shape[0] - 1], "trg_bndbox": [0, 0, trg.shape[1], trg.shape[0]],
        }
        pairs = root / "PairAnnotation" / split
        pairs.mkdir(parents=True, exist_ok=True)
        (pairs / f"{number:06d}-{pair['src_imname'][:-4]}-{pair['trg_imname'][:-4]}:{category}.json").write_text(
            json.dumps(pair, indent=1))
    return EXPECTED
