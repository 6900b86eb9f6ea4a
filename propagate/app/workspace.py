"""One browser session's work: the open video's :class:`~propagate.session.Session`, its objects (names,
categories), the points being placed, undo/redo of keyframe edits, the project folder it autosaves into, and the
files it exports. Keyframes, absences, results and confidences are the session's own (read from it, never copied).
No gradio here; the page (:mod:`propagate.app.ui`) holds one workspace per browser session, so one user's video is
never visible to another.
"""
from __future__ import annotations

import queue
import shutil
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from propagate.app.core import MAX_OBJECTS, edited_objects, layer_to_mask
from propagate.app.project import Project, load_project, save_project
from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features.base import FeatureExtractor
from propagate.labels import object_ids, paint_objects, without_objects
from propagate.progress import Progress
from propagate.render import draw_points, overlay_mask
from propagate.runs import export_session
from propagate.session import FRAME_BYTES, FrameResult, Session
from propagate.video import VideoSource
from propagate.writers import names_for

# A frame's keyframe state: its mask (None: no keyframe), the objects it gives (None: all, a full keyframe) and the
# objects marked absent from it.
FrameState = tuple[np.ndarray | None, tuple[int, ...] | None, tuple[int, ...]]
Objects = dict[int, tuple[str, str]]  # object id -> (name, category)


class _Stopped(Exception):
    """A propagation run by :meth:`Workspace.propagate_in_thread` was closed (cancelled) by its page."""


@dataclass
class Edit:
    """One undoable edit: each frame it changed, before and after, and the object table before and after."""

    what: str
    frames: dict[int, tuple[FrameState, FrameState]] = field(default_factory=dict)
    objects: tuple[Objects, Objects] | None = None


class Workspace:
    """A video opened in the app: the session over it, its objects, the points being placed, the edit history, the
    project folder (autosaved after every edit and propagation) and an export folder.

    Args:
        source: the video (a path under the server's root, or an unpacked upload).
        config: the server's configuration; ``extractor``: the server's extractor (built once, shared).
        folder: a folder of this workspace alone, inside the server's temporary folder (exports go there).
        project: the project folder under the root (None: nothing is kept).
        video: the video as the user knows it (a path under the root, or the upload's name): exports are named
            after it, and the project records it.
        upload: whether the video is an upload (its project holds a copy).
    """

    def __init__(self, source: VideoSource, config: Config, extractor: FeatureExtractor, folder: Path, *,
                 project: Path | None = None, video: str = "", upload: bool = False):
        self.source = source
        self.session = Session(source, config, extractor=extractor, frame_bytes=FRAME_BYTES)  # scrubbing reads
        self.folder = folder
        self.project = project
        self.video = video or Path(source.path).name
        self.upload = upload
        # points placed with the mouse (saved as a keyframe by set_points): frame -> name -> (x, y)
        self.points: dict[int, dict[str, tuple[float, float]]] = {}
        self.exports = 0
        self.objects: Objects = {1: ("object 1", "object")}  # the objects offered for painting
        self.settings: dict[str, object] = {"frame": 0, "object": 1, "overlay": True}
        self.sent: dict[int, tuple[np.ndarray, bool]] = {}  # frame -> the mask the editor was given, shown or not
        self.history: list[Edit] = []
        self.future: list[Edit] = []
        self.running = False  # a propagation is streaming
        self.playing = False  # Play is stepping the slider
        self.remembered = ""  # what the browser remembers to open this video again (see handlers.reopen)
        self.run_summary = ""  # what the latest propagation did, said once the page shows its result
        self.extracted = 0  # frames whose features the background extraction has (see extract_in_background)
        self.extract_error: BaseException | None = None
        self._extraction: threading.Thread | None = None
        # results read back from the project folder (shown until the session propagates): masks, confidences
        self.restored: dict[int, np.ndarray] = {}
        self.restored_confidence: dict[int, dict[int, float]] = {}
        self.restored_absent: dict[int, list[int]] = {}

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

    @property
    def stem(self) -> str:
        """The name exports carry: the video's file name without its suffix (a frame folder: its name)."""
        return Path(self.video).stem or "video"

    def keyframe_mask(self, index: int) -> np.ndarray | None:
        """The session's mask of keyframe ``index`` ``[H, W]`` uint8 (read-only), or None if it is no mask keyframe."""
        if self.session.kind != "masks" or index not in self.session.keyframes:
            return None
        return self.session.annotation(index)

    def confidence(self) -> dict[int, float]:
        """Per propagated frame (not keyframes), the confidence of its least confident present object or point."""
        if self.results:
            return {i: r.least_confidence() for i, r in self.results.items() if not r.keyframe}
        keys = set(self.keyframes)
        return {i: min(c.values(), default=1.0) for i, c in self.restored_confidence.items() if i not in keys}

    def absent(self) -> dict[int, list[int]]:
        """Per frame of the latest results, the objects absent on it."""
        if self.results:
            return {i: sorted(r.absent) for i, r in self.results.items() if r.absent}
        return dict(self.restored_absent)

    def image(self, index: int) -> np.ndarray:
        """Frame ``index`` ``[H, W, 3]`` uint8 (the session keeps every frame it decodes: scrubbing decodes once)."""
        return self.session.image(index)

    # -------------------------------------------------------------------------------------------- a frame's labels

    def result_mask(self, index: int) -> np.ndarray | None:
        """The latest result's mask of frame ``index`` (the session's, else one read back from the project)."""
        result = self.results.get(index)
        if result is not None and result.mask is not None:
            return result.mask
        return self.restored.get(index)

    def mask(self, index: int) -> np.ndarray:
        """The mask shown on frame ``index`` ``[H, W]``: its result, with its keyframe (a full one replaces it, a
        partial one replaces its objects), absence marks and deleted objects over it when they are newer than the
        result."""
        base = self.result_mask(index)
        if base is None:
            width, height = self.session.native_size
            base = np.zeros((height, width), np.uint8)
        keyframe = self.keyframe_mask(index)
        if keyframe is not None:
            objects = self.session.keyframe_objects(index)
            if objects is None:
                base = keyframe
            else:
                base = paint_objects(base, keyframe, objects)
        marks = self.session.absent_marks().get(index) if self.session.kind == "masks" else None
        if marks and np.isin(base, marks).any():
            base = without_objects(base, marks)
        gone = ~np.isin(base, [0, 255, *self.objects])  # objects deleted since the result was computed
        if gone.any():
            base = np.where(gone, 0, base).astype(np.uint8)
        return base

    def overlay(self, index: int) -> np.ndarray:
        """Frame ``index`` ``[H, W, 3]`` with its mask (or points) drawn."""
        image = self.image(index)
        if index in self.points:
            names = list(self.points[index])
            xy = np.array([self.points[index][n] for n in names], np.float32).reshape(-1, 2)
            return draw_points(image, xy, names)
        result = self.results.get(index)
        if self.session.kind == "points" and result is not None and result.xy is not None:
            names = self.session.point_names
            confidence = np.array([result.confidence.get(n, 1.0) for n in names], np.float32)
            return draw_points(image, result.xy, names, confidence=confidence)
        return overlay_mask(image, self.mask(index))

    def editor_mask(self, index: int, shown: bool = True) -> np.ndarray:
        """The mask the editor is given for frame ``index`` (kept: a save reads the editor's layer against it)."""
        mask = self.mask(index)
        self.sent[index] = (mask, shown)
        return mask

    def unsaved(self, index: int, layer: np.ndarray) -> bool:
        """Whether the editor's layer ``[H, W, 4]`` of frame ``index`` holds paint not saved yet."""
        sent = self.sent.get(index)
        if sent is None:
            return False
        base, shown = sent
        return bool((layer_to_mask(layer, list(self.objects), base, shown) != base).any())

    # -------------------------------------------------------------------------------------------- objects

    def add_object(self, name: str = "", category: str = "") -> int:
        """A new object (the smallest free id); return its id."""
        free = [o for o in range(1, MAX_OBJECTS + 1) if o not in self.objects]
        if not free:
            raise PropagateError(f"at most {MAX_OBJECTS} objects: delete one first")
        obj = free[0]
        before = dict(self.objects)
        self.objects[obj] = (name.strip() or f"object {obj}", category.strip() or "object")
        self._name_in_session(obj)
        self._record(Edit(f"add object {obj}", objects=(before, dict(self.objects))))
        return obj

    def rename_object(self, obj: int, name: str, category: str = "") -> None:
        """Give object ``obj`` a name (and a category; empty keeps the one it has)."""
        if obj not in self.objects:
            raise PropagateError(f"object {obj} does not exist: add it first")
        if not name.strip():
            raise PropagateError(f"object {obj}: type a name first")
        before = dict(self.objects)
        self.objects[obj] = (name.strip(), category.strip() or self.objects[obj][1])
        self._name_in_session(obj)
        self._record(Edit(f"rename object {obj}", objects=(before, dict(self.objects))))

    def delete_object(self, obj: int) -> None:
        """Object ``obj`` goes: out of every keyframe (a keyframe left empty goes) and every absence mark."""
        if obj not in self.objects:
            raise PropagateError(f"object {obj} does not exist")
        if len(self.objects) == 1:
            raise PropagateError("the last object cannot be deleted: rename it instead")
        self._idle("delete an object")
        frames = [i for i in self.keyframes if self._gives(i, obj)]
        frames += [i for i, objs in self.session.absent_marks().items() if obj in objs and i not in frames]
        edit = Edit(f"delete object {obj}", objects=(dict(self.objects), {}))
        for i in sorted(frames):
            before = self.state(i)
            mask, objects, marks = before
            if mask is not None and objects is None and (mask == obj).any():  # a full keyframe stays full
                left = without_objects(mask, [obj])
                if object_ids(left):
                    self.session.add_mask(i, left)
                else:
                    self.session.remove(i)  # the keyframe and the frame's marks: the other marks come back
                    for other in marks:
                        if other != obj:
                            self.session.set_absent(i, other)
            if obj in self.session.absent_marks().get(i, ()) or (i in self.keyframes and self._gives(i, obj)):
                self.session.remove(i, [obj])
            edit.frames[i] = (before, self.state(i))
        del self.objects[obj]
        edit.objects = (edit.objects[0], dict(self.objects))  # type: ignore[index]
        self._record(edit)

    def object_label(self, obj: int) -> str:
        name, category = self.objects[obj]
        return f"{obj} {name}" + (f" ({category})" if category != "object" else "")

    def _name_in_session(self, obj: int) -> None:
        name, category = self.objects[obj]
        self.session.name_object(obj, name, category)

    def _gives(self, index: int, obj: int) -> bool:
        objects = self.session.keyframe_objects(index)
        mask = self.session.annotation(index)
        return bool((mask == obj).any()) if objects is None else obj in objects

    # -------------------------------------------------------------------------------------------- keyframes

    def state(self, index: int) -> FrameState:
        """Frame ``index``'s keyframe state (a copy), for undo."""
        marks = tuple(self.session.absent_marks().get(index, ())) if self.session.kind != "points" else ()
        if index not in self.session.keyframes or self.session.kind != "masks":
            return None, None, marks
        objects = self.session.keyframe_objects(index)
        return (np.array(self.session.annotation(index)), None if objects is None else tuple(objects), marks)

    def _apply(self, index: int, state: FrameState) -> None:
        mask, objects, marks = state
        if index in self.session.keyframes or index in self.session.absent_marks():
            self.session.remove(index)
        if mask is not None:
            self.session.add_mask(index, mask, None if objects is None else list(objects))
        for obj in marks:
            self.session.set_absent(index, obj)

    def _record(self, edit: Edit) -> None:
        self.history.append(edit)
        self.future.clear()
        self.autosave()

    def _idle(self, what: str) -> None:
        if self.running:
            raise PropagateError(f"a propagation is running: cancel it or wait for it, then {what}")

    def save_layer(self, index: int, layer: np.ndarray) -> str:
        """Save what the editor shows on frame ``index`` (its brush layer ``[H, W, 4]``) as a keyframe; return what
        was done, in words.

        Untouched, on a full keyframe, or on a frame with no result yet: a full keyframe of the mask (the whole
        frame's truth). Otherwise (a correction of a propagated frame) only the objects painted or erased are given
        (a partial keyframe: the others go on being propagated there), and an object erased away is marked absent
        from here.
        """
        self._idle("save")
        if self.session.kind == "points":
            raise PropagateError("this video's keyframes are points: switch labels to points")
        base, shown = self.sent.get(index) or (self.mask(index), True)
        mask = layer_to_mask(layer, list(self.objects), base, shown)
        touched = edited_objects(base, mask)
        if index in self.keyframes:
            full = self.session.keyframe_objects(index) is None
        else:
            full = self.result_mask(index) is None
        edit = Edit(f"keyframe {index}")
        before = self.state(index)
        if full or not touched:
            objects = object_ids(mask)
            if not objects:
                raise PropagateError(f"frame {index}: nothing is painted: paint an object before saving a keyframe")
            self.session.add_mask(index, mask)
            text = f"frame {index} is a keyframe: objects {', '.join(map(str, objects))}"
        else:
            present = [o for o in touched if (mask == o).any()]
            gone = [o for o in touched if o not in present]
            if present:
                self.session.add_mask(index, mask, present)
            for obj in gone:
                self.session.set_absent(index, obj)
            text = f"frame {index} is a keyframe of objects {', '.join(map(str, present)) or '-'}"
            if gone:
                text += f"; absent from here: {', '.join(map(str, gone))}"
            text += " (the other objects go on being propagated)"
        self.sent[index] = (mask, shown)  # what the editor still holds, as the next save reads it
        edit.frames[index] = (before, self.state(index))
        self._record(edit)
        return text

    def set_mask(self, index: int, mask: np.ndarray, objects: list[int] | None = None) -> list[int]:
        """Make frame ``index`` a keyframe with ``mask [H, W]`` uint8 (of ``objects`` only, if given); return the
        objects it gives."""
        self._idle("save")
        given = object_ids(mask) if objects is None else sorted(objects)
        if not given:
            raise PropagateError(f"frame {index}: nothing is painted: paint an object before saving a keyframe")
        before = self.state(index)
        self.session.add_mask(index, mask, objects)
        for obj in given:
            if obj not in self.objects:
                self.objects[obj] = (f"object {obj}", "object")
        self._record(Edit(f"keyframe {index}", {index: (before, self.state(index))}))
        return given

    def mark_absent(self, index: int, obj: int) -> None:
        """Object ``obj`` is not in the frame from ``index`` up to its next keyframe."""
        self._idle("mark it absent")
        if obj not in self.objects:
            raise PropagateError(f"object {obj} does not exist")
        before = self.state(index)
        self.session.set_absent(index, obj)
        self._record(Edit(f"object {obj} absent from frame {index}", {index: (before, self.state(index))}))

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
        """Frame ``index`` is no keyframe, and marks no object absent, any more."""
        self._idle("remove a keyframe")
        marks = self.session.absent_marks() if self.session.kind != "points" else {}
        if index not in self.session.keyframes and index not in marks:
            raise PropagateError(f"frame {index} is not a keyframe")
        before = self.state(index)
        self.session.remove(index)
        self.points.pop(index, None)
        if before[0] is not None or before[2]:  # masks (points keyframes are not undone)
            self._record(Edit(f"remove keyframe {index}", {index: (before, self.state(index))}))

    def undo(self) -> str:
        """Undo the latest edit (keyframes, absences, objects); return what was undone."""
        return self._step(self.history, self.future, 0, "undo", "undone")

    def redo(self) -> str:
        """Redo the latest undone edit; return what was redone."""
        return self._step(self.future, self.history, 1, "redo", "redone")

    def _step(self, source: list[Edit], target: list[Edit], side: int, verb: str, done: str) -> str:
        """Move the latest edit of ``source`` to ``target``, putting back each frame's and the objects' state on
        ``side`` of it (0: before the edit, 1: after)."""
        self._idle(verb)
        if not source:
            raise PropagateError(f"nothing to {verb}")
        edit = source.pop()
        for index, states in sorted(edit.frames.items()):
            self._apply(index, states[side])
        if edit.objects is not None:
            self._set_objects(edit.objects[side])
        target.append(edit)
        self.autosave()
        return f"{done}: {edit.what}"

    def _set_objects(self, objects: Objects) -> None:
        self.objects = dict(objects)
        for obj in self.objects:
            self._name_in_session(obj)

    # -------------------------------------------------------------------------------------------- project

    def snapshot(self) -> Project:
        """What the project folder keeps of this workspace."""
        project = Project(video=self.video, upload=self.upload, names=list(self.session.names),
                          objects=dict(self.objects), settings=dict(self.settings))
        if self.session.kind == "masks":
            for i in self.keyframes:
                objects = self.session.keyframe_objects(i)
                project.keyframes[i] = (np.array(self.session.annotation(i)), objects)
            project.absent = self.session.absent_marks()
        for i, r in self.results.items():
            if r.mask is not None:
                project.results[i] = r.mask
                project.confidence[i] = {int(o): float(c) for o, c in r.confidence.items()}
                if r.absent:
                    project.result_absent[i] = sorted(r.absent)
        return project

    def autosave(self, results: bool = False) -> None:
        """Write the project folder (with ``results``: the latest results too, once they cover every frame)."""
        if self.project is None:
            return
        project = self.snapshot()
        save_project(self.project, project, results=results and len(project.results) == self.num_frames)

    def restore(self) -> str:
        """Bring back what the project folder keeps (keyframes, absences, objects, settings, results); return what
        came back, in words (empty: nothing kept)."""
        if self.project is None:
            return ""
        project = load_project(self.project, list(self.session.names))
        if project is None:
            return ""
        if project.objects:
            self.objects = dict(project.objects)
        for obj in self.objects:
            self._name_in_session(obj)
        for i, (mask, objects) in sorted(project.keyframes.items()):
            self.session.add_mask(i, mask, objects)
        for i, objects in sorted(project.absent.items()):
            for obj in objects:
                self.session.set_absent(i, obj)
        self.settings.update(project.settings)
        self.restored = project.results
        self.restored_confidence = project.confidence
        self.restored_absent = project.result_absent
        plural = lambda n, what: f"{n} {what}" + ("" if n == 1 else "s")  # noqa: E731
        parts = [plural(len(project.keyframes), "keyframe"), plural(len(self.objects), "object")]
        if project.results:
            parts.append(f"results of {len(project.results)} frames")
        return "restored " + ", ".join(parts)

    # -------------------------------------------------------------------------------------------- propagate, export

    def extract_in_background(self, callback: Progress | None = None) -> threading.Thread:
        """Extract every frame's features (once per video) in a thread, counting them in :attr:`extracted` and
        telling ``callback("extract", done, total)`` (a failure is kept in :attr:`extract_error`); a second call
        while it runs returns the same thread."""
        if self._extraction is None or not self._extraction.is_alive():
            self.extract_error = None

            def counted(done: int, total: int) -> None:
                self.extracted = done
                if callback is not None:
                    callback("extract", done, total)

            def work() -> None:
                try:
                    self.session.extract(counted)
                except BaseException as exc:  # reported by the page, in its status line
                    self.extract_error = exc

            self._extraction = threading.Thread(target=work, name="propagate-extract", daemon=True)
            self._extraction.start()
        return self._extraction

    def propagate(self, callback: Progress | None = None) -> Iterator[FrameResult]:
        """Propagate from every keyframe (features are extracted on the first call only); results are kept as they
        stream (a cancelled run keeps what it had); a run to the end is saved into the project folder.
        ``callback(phase, done, total)``: see :meth:`propagate.session.Session.propagate`
        (:class:`propagate.progress.PhaseClock` gives an ETA)."""
        if not self.session.keyframes:
            raise PropagateError("no keyframe yet: paint a mask (or place points) and save it as a keyframe first")
        self.running = True
        try:
            for _, result in self.session.propagate(callback=callback):
                yield result
        finally:
            self.running = False
        self.restored, self.restored_confidence, self.restored_absent = {}, {}, {}
        self.autosave(results=True)

    def propagate_in_thread(self, callback: Progress | None = None, tick: float = 0.5) -> Iterator[FrameResult | None]:
        """:meth:`propagate` run in a thread: yields each result as it comes and None every ``tick`` seconds while
        none does, so a page can refresh its status line (``callback``'s phase and ETA) while a sweep runs whole
        before the first result, as the backward one does. Closing the iterator, or clearing :attr:`running` (the
        page's cancel does both), stops the propagation at its next frame, keeping the results streamed so far."""
        out: queue.Queue[tuple[str, FrameResult | BaseException | None]] = queue.Queue()
        stop = threading.Event()

        def told(phase: str, done: int, total: int) -> None:
            if stop.is_set() or not self.running:  # closed, or the page's cancel cleared ``running``
                raise _Stopped
            if callback is not None:
                callback(phase, done, total)

        def work() -> None:
            try:
                for result in self.propagate(callback=told):
                    out.put(("result", result))
                    if stop.is_set():
                        break
                out.put(("end", None))
            except _Stopped:
                out.put(("end", None))
            except BaseException as exc:  # raised again in the page's thread
                out.put(("error", exc))

        worker = threading.Thread(target=work, name="propagate-run", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    kind, item = out.get(timeout=tick)
                except queue.Empty:
                    yield None
                    continue
                if kind == "error":
                    assert isinstance(item, BaseException)
                    raise item
                if kind == "end":
                    return
                assert isinstance(item, FrameResult)
                yield item
        finally:
            stop.set()
            worker.join()

    def export(self) -> list[Path]:
        """Write the results in every format of the writer table for masks (PNGs, COCO JSON, CVAT XML, ...) with the
        overlay mp4 and confidences, named after the video, and zip the PNGs; return the files to download.
        Results read back from the project folder are recomputed first (the session's own are exported)."""
        if self.session.kind != "masks":
            raise PropagateError("export writes masks: points are not exported by the app yet")
        if len(self.results) < self.num_frames and self.restored and self.keyframes:
            for _ in self.propagate():
                pass
        if len(self.results) < self.num_frames:
            raise PropagateError("some frames have no result yet: propagate (to the end) before exporting")
        self.exports += 1
        out = self.folder / f"export-{self.exports}"
        export_session(self.session, out / "files", formats=names_for("masks"), render=True)
        files = out / "files"
        archive = out / f"{self.stem}_masks.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for png in sorted(files.glob("*.png")):
                zf.write(png, png.name)
        named = [archive]
        for path in sorted(p for p in files.iterdir() if p.suffix != ".png" and not p.name.startswith(".")):
            target = out / f"{self.stem}_{path.name}"
            path.rename(target)
            named.append(target)
        return named

    def close(self) -> None:
        """Remove this workspace's folder (what it wrote: unpacked uploads and exports)."""
        self.session.close()
        shutil.rmtree(self.folder, ignore_errors=True)
