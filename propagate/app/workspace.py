"""One browser session's work: the open video's :class:`~propagate.session.Session`, the points being placed, and
the files it exports. Keyframes, results and confidences are the session's own (read from it, never copied). No
gradio here; the page (:mod:`propagate.app.ui`) holds one workspace per browser session, so one user's video is
never visible to another.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features.base import FeatureExtractor
from propagate.labels import object_ids
from propagate.progress import Progress
from propagate.render import draw_points, overlay_mask
from propagate.runs import export_session
from propagate.session import FrameResult, Session
from propagate.video import VideoSource
from propagate.writers import names_for


class Workspace:
    """A video opened in the app: the session over it (keyframes, streamed results), the points being placed, the
    object ids offered for painting, and an export folder.

    Args:
        source: the video (a path under the server's root, or an unpacked upload).
        config: the server's configuration; ``extractor``: the server's extractor (built once, shared).
        folder: a folder of this workspace alone, inside the server's temporary folder (exports go there).
    """

    def __init__(self, source: VideoSource, config: Config, extractor: FeatureExtractor, folder: Path):
        self.source = source
        self.session = Session(source, config, extractor=extractor)
        self.folder = folder
        # points placed with the mouse (saved as a keyframe by set_points): frame -> name -> (x, y)
        self.points: dict[int, dict[str, tuple[float, float]]] = {}
        self.exports = 0
        self._images: dict[int, np.ndarray] = {}
        self.objects = 1  # object ids offered for painting: 1..objects

    @property
    def num_frames(self) -> int:
        return self.session.num_frames

    @property
    def keyframes(self) -> list[int]:
        return list(self.session.keyframes)

    @property
    def results(self) -> dict[int, FrameResult]:
        """The session's results of its last propagation, as far as it streamed (a cancelled run keeps these)."""
        return self.session.results

    def keyframe_mask(self, index: int) -> np.ndarray | None:
        """The session's mask of keyframe ``index`` ``[H, W]`` uint8 (read-only), or None if it is no mask keyframe."""
        if self.session.kind != "masks" or index not in self.session.keyframes:
            return None
        return self.session.annotation(index)

    def confidence(self) -> dict[int, float]:
        """Per propagated frame (not keyframes), the confidence of its least confident object or point."""
        return {i: r.least_confidence() for i, r in self.results.items() if not r.keyframe}

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` ``[H, W, 3]`` uint8 (the last few are kept: scrubbing back and forth decodes once)."""
        if index not in self._images:
            if len(self._images) >= 8:
                self._images.pop(next(iter(self._images)))
            self._images[index] = self.session.image(index)
        return self._images[index]

    # -------------------------------------------------------------------------------------------- a frame's labels

    def mask(self, index: int) -> np.ndarray:
        """The mask shown on frame ``index``: its keyframe mask, else the propagated one, else empty ``[H, W]``."""
        keyframe = self.keyframe_mask(index)
        if keyframe is not None:
            return keyframe
        result = self.results.get(index)
        if result is not None and result.mask is not None:
            return result.mask
        width, height = self.session.native_size
        return np.zeros((height, width), np.uint8)

    def overlay(self, index: int) -> np.ndarray:
        """Frame ``index`` ``[H, W, 3]`` with its mask (or points) drawn."""
        image = self.image(index)
        keyframe = self.keyframe_mask(index)
        if keyframe is not None:
            return overlay_mask(image, keyframe)
        result = self.results.get(index)
        if index in self.points:
            names = list(self.points[index])
            xy = np.array([self.points[index][n] for n in names], np.float32).reshape(-1, 2)
            return draw_points(image, xy, names)
        if result is None:
            return image
        if result.mask is not None:
            return overlay_mask(image, result.mask)
        names = self.session.point_names
        confidence = np.array([result.confidence.get(n, 1.0) for n in names], np.float32)
        return draw_points(image, result.xy, names, confidence=confidence)

    # -------------------------------------------------------------------------------------------- keyframes

    def set_mask(self, index: int, mask: np.ndarray) -> list[int]:
        """Make frame ``index`` a keyframe with ``mask [H, W]`` uint8; return its object ids."""
        objects = object_ids(mask)
        if not objects:
            raise PropagateError(f"frame {index}: nothing is painted: paint an object before saving a keyframe")
        self.session.add_mask(index, mask)
        self.objects = max(self.objects, *objects)
        return objects

    def place_point(self, index: int, name: str, xy: tuple[float, float]) -> None:
        """Place the point ``name`` on frame ``index`` at ``xy``, or move it there if it is already placed."""
        name = name.strip()
        if not name:
            raise PropagateError("a point needs a name: type one in 'point name' before clicking")
        self.points.setdefault(index, {})[name] = (float(xy[0]), float(xy[1]))

    def set_points(self, index: int) -> list[str]:
        """Make frame ``index`` a keyframe with the points placed on it; return their names."""
        placed = self.points.get(index, {})
        if not placed:
            raise PropagateError(f"frame {index}: no point placed: click on the frame to place named points")
        names = list(placed)
        self.session.add_points(index, np.array([placed[n] for n in names], np.float32), names)
        return names

    def remove(self, index: int) -> None:
        if index not in self.session.keyframes:
            raise PropagateError(f"frame {index} is not a keyframe")
        self.session.remove(index)
        self.points.pop(index, None)

    # -------------------------------------------------------------------------------------------- propagate, export

    def propagate(self, callback: Progress | None = None) -> Iterator[FrameResult]:
        """Propagate from every keyframe (features are extracted on the first call only); results are kept as they
        stream (a cancelled run keeps what it had). ``callback(phase, done, total)``: see
        :meth:`propagate.session.Session.propagate` (:class:`propagate.progress.PhaseClock` gives an ETA)."""
        if not self.session.keyframes:
            raise PropagateError("no keyframe yet: paint a mask (or place points) and save it as a keyframe first")
        for _, result in self.session.propagate(callback=callback):
            yield result

    def export(self) -> list[Path]:
        """Write the results in every format of the writer table for masks (PNGs, COCO JSON, CVAT XML, ...) with the
        overlay mp4 and confidences, and zip the PNGs; return the files to download."""
        if self.session.kind != "masks":
            raise PropagateError("export writes masks: points are not exported by the app yet")
        if len(self.results) < self.num_frames:
            raise PropagateError("some frames have no result yet: propagate (to the end) before exporting")
        self.exports += 1
        out = self.folder / f"export-{self.exports}"
        export_session(self.session, out, formats=names_for("masks"), render=True)
        pngs = sorted(out.glob("*.png"))
        archive = self.folder / f"masks-{self.exports}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for png in pngs:
                zf.write(png, png.name)
        return [archive] + sorted(p for p in out.iterdir() if p.suffix != ".png" and not p.name.startswith("."))

    def close(self) -> None:
        """Remove this workspace's folder (what it wrote: unpacked uploads and exports)."""
        self.session.close()
        shutil.rmtree(self.folder, ignore_errors=True)
