"""COCO exports: masks as one video in the YouTube-VIS / COCO video layout, points as COCO keypoints.

Masks (``coco.json``)::

    {"info": {...}, "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
     "videos": [{"id": 1, "name": ..., "width": W, "height": H, "length": T, "file_names": ["00000.png", ...]}],
     "annotations": [{"id": <object index>, "video_id": 1, "category_id": 1, "iscrowd": 0, "width": W, "height": H,
                      "length": 1, "segmentations": [RLE or null per frame], "areas": [...], "bboxes": [[x, y, w, h]
                      or null per frame]}]}

One track per object index (the track's ``id`` is the object's index in the PNGs); a frame where the object is
absent has ``null`` segmentation and bbox and area 0. RLEs are compressed COCO RLEs (``{"size": [H, W], "counts":
str}``) made by pycocotools, so ``pycocotools.mask.decode`` gives the masks back.

Points (``coco_keypoints.json``): one COCO image per frame, one annotation per frame with ``keypoints`` as
``[x, y, v] * J`` (v = 2 visible, 0 lost with x = y = 0) and the category listing the point names and the
skeleton (1-based pairs, as COCO writes it).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils

JSON = dict[str, object]


class CocoVideoWriter:
    """Collects one video's masks frame by frame, then :meth:`to_json` the COCO video dict."""

    def __init__(self, name: str, size_wh: tuple[int, int], object_ids: Sequence[int],
                 categories: Mapping[int, str] | None = None):
        self.name = name
        self.size_wh = tuple(size_wh)
        self.object_ids = sorted(int(o) for o in object_ids)
        # object -> category name (default "object"); one category id per name, in order of first use by object id
        named = {o: (categories or {}).get(o, "object") for o in self.object_ids}
        self.categories = list(dict.fromkeys(named.values())) or ["object"]
        self.category_of = {o: self.categories.index(c) + 1 for o, c in named.items()}
        self.file_names: list[str] = []
        self.tracks: dict[int, dict[str, list]] = {o: {"segmentations": [], "areas": [], "bboxes": []}
                                                    for o in self.object_ids}

    def add(self, frame_name: str, mask: np.ndarray) -> None:
        """Add the next frame's mask ``[H, W]`` uint8 (object indices)."""
        self.file_names.append(f"{frame_name}.png")
        for obj, track in self.tracks.items():
            binary = np.asfortranarray((mask == obj).astype(np.uint8))
            if not binary.any():
                track["segmentations"].append(None)
                track["areas"].append(0)
                track["bboxes"].append(None)
                continue
            rle = mask_utils.encode(binary)
            track["areas"].append(int(mask_utils.area(rle)))
            track["bboxes"].append([float(v) for v in mask_utils.toBbox(rle)])
            track["segmentations"].append({"size": [int(v) for v in rle["size"]],
                                           "counts": rle["counts"].decode("ascii")})

    def to_json(self) -> JSON:
        width, height = self.size_wh
        return {
            "info": {"description": f"propagate masks of {self.name}"},
            "categories": [{"id": i, "name": c, "supercategory": c} for i, c in enumerate(self.categories, 1)],
            "videos": [{"id": 1, "name": self.name, "width": width, "height": height,
                        "length": len(self.file_names), "file_names": list(self.file_names)}],
            "annotations": [{"id": obj, "video_id": 1, "category_id": self.category_of[obj], "iscrowd": 0,
                             "width": width, "height": height, "length": 1, **track}
                            for obj, track in self.tracks.items()],
        }


def decode_video(data: JSON) -> list[np.ndarray]:
    """The masks ``[H, W]`` uint8 of a COCO video dict written by :class:`CocoVideoWriter` (one per frame)."""
    video = data["videos"][0]  # type: ignore[index]
    height, width, length = video["height"], video["width"], video["length"]
    masks = [np.zeros((height, width), np.uint8) for _ in range(length)]
    for track in data["annotations"]:  # type: ignore[union-attr]
        for t, rle in enumerate(track["segmentations"]):
            if rle is not None:
                binary = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
                masks[t][binary.astype(bool)] = track["id"]
    return masks


def keypoints_json(name: str, size_wh: tuple[int, int], point_names: Sequence[str], edges: Sequence[tuple[int, int]],
                   frames: Sequence[tuple[str, np.ndarray]]) -> JSON:
    """COCO keypoints of a video: ``frames`` are ``(frame name, xy [J, 2])`` with NaN rows for lost points."""
    width, height = size_wh
    images, annotations = [], []
    for i, (frame_name, xy) in enumerate(frames, start=1):
        images.append({"id": i, "file_name": f"{frame_name}.png", "width": width, "height": height,
                       "video": name, "frame_index": i - 1})
        flat: list[float] = []
        for x, y in np.asarray(xy, dtype=np.float64):
            flat += [round(float(x), 3), round(float(y), 3), 2] if np.isfinite(x) and np.isfinite(y) else [0, 0, 0]
        visible = sum(1 for v in flat[2::3] if v)
        annotations.append({"id": i, "image_id": i, "category_id": 1, "keypoints": flat, "num_keypoints": visible,
                            "iscrowd": 0})
    return {
        "info": {"description": f"propagate keypoints of {name}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "object", "keypoints": list(point_names),
                        "skeleton": [[a + 1, b + 1] for a, b in edges]}],
    }
