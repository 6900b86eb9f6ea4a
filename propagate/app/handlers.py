"""What the page does (Gradio handlers): each is a few lines over :class:`~propagate.app.workspace.Workspace` (the
session) and :mod:`propagate.app.core`, and :func:`wire` connects them to the components of
:mod:`propagate.app.layout`. A user's mistake shows as one ``error: ...`` line in the page's status and the server
keeps serving. Per-browser state lives in ``gr.State``, so a video opened or uploaded in one browser tab is not
visible in another.
"""
from __future__ import annotations

import functools
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr
import numpy as np

from propagate.app.core import (
    BASELINE_CAPTION,
    Correspondence,
    Server,
    best_match,
    carry_edit,
    confidence_strip,
    draw_named,
    heatmap_overlay,
    mask_to_layer,
    match_named,
    open_upload,
    place_sticker,
    resolve_under_root,
    same_image,
)
from propagate.app.layout import Page, brush
from propagate.app.project import copy_upload, path_key, project_folder, upload_key
from propagate.app.workspace import Workspace
from propagate.errors import PropagateError
from propagate.progress import PhaseClock
from propagate.video import open_video

PLAY_FPS = 8  # frames a second of Play
Outputs = tuple[object, ...]  # the values of a handler's outputs, in order (gr.skip() leaves one as it is)
Pair = dict[str, object]  # a browser session's correspond pair, see Page.corr


def error_text(exc: PropagateError) -> str:
    return f"**error:** {exc}"


def halt(w: Workspace | None, flag: str, said: str) -> str:
    """Clear the workspace's ``flag`` (``playing``, ``running``) and say ``said``. The button also cancels the
    stream; a propagation's worker thread checks ``running`` at its next frame (see
    :meth:`Workspace.propagate_in_thread`)."""
    if w is not None:
        setattr(w, flag, False)
    return said


def need(w: Workspace | None) -> Workspace:
    if w is None:
        raise PropagateError("no video is open: open a path or upload one first")
    return w


def editor_value(w: Workspace, i: int) -> dict[str, object]:
    """The editor's value for frame ``i``: the frame behind, its labels as the brush layer (an empty layer when the
    labels are toggled off: what is painted then changes only where it is painted)."""
    shown = bool(w.settings.get("overlay", True))
    mask = w.editor_mask(i, shown)
    layer = mask_to_layer(mask if shown else np.zeros_like(mask))
    return {"background": w.image(i), "layers": [layer], "composite": None}


def frame_outputs(w: Workspace, i: int) -> Outputs:
    """The values of :attr:`Page.view` for frame ``i``."""
    strip_html = confidence_strip(w.num_frames, w.confidence(), w.keyframes, i, w.absent())
    points = w.settings.get("mode") == "points"
    return editor_value(w, i), w.overlay(i) if points else gr.skip(), strip_html


def object_choices(w: Workspace, value: int | None = None) -> dict[str, object]:
    """The object radio's choices (``id name (category)``, the value the id) and its value."""
    chosen = value if value in w.objects else min(w.objects)
    return gr.update(choices=[(w.object_label(o), str(o)) for o in sorted(w.objects)], value=str(chosen))


def guarded(fn: Callable[..., object], count: int) -> Callable[..., object]:
    """Run ``fn``; on a user's mistake show ``error: ...`` in the status (the first of its ``count`` outputs) and
    change nothing else."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except PropagateError as exc:
            return (error_text(exc), *([gr.skip()] * (count - 1))) if count > 1 else error_text(exc)

    return wrapper


class Handlers:
    """The page's handlers over one server; the outputs of each are named where it is wired (:func:`wire`)."""

    def __init__(self, server: Server, page: Page):
        self.server = server
        self.page = page

    # ------------------------------------------------------------------------------------------ open a video

    def workspace(self, source_path: Path | None, upload_path: str | Path | None,
                  key: str | None = None) -> tuple[Workspace, str]:
        """A new workspace (in its own folder) over a path under the root or an upload, with its project folder
        under the root (an upload is copied into it; ``key``: the project of an upload opened again)."""
        server = self.server
        folder = server.work / uuid.uuid4().hex
        folder.mkdir()
        try:
            if upload_path is not None:
                upload_path = Path(upload_path)
                source = open_upload(upload_path, folder, server.max_upload_bytes)
                key = key or upload_key(upload_path)
                project = project_folder(server.root, key)
                name = upload_path.name if not upload_path.name.startswith("upload.") else self.upload_name(project)
                if not upload_path.is_relative_to(project):
                    copy_upload(upload_path, project)
                what, remembered, upload = f"upload {name}", f"upload:{key}", True
            else:
                assert source_path is not None
                source = open_video(source_path)
                name = str(source_path.relative_to(server.root))
                project = project_folder(server.root, path_key(name))
                what, remembered, upload = name, f"path:{name}", False
            w = Workspace(source, server.config, server.extractor, folder, project=project, video=name,
                          upload=upload)
            w.remembered = remembered
            return w, what
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @staticmethod
    def upload_name(project: Path) -> str:
        """The name an upload had, as its project recorded it."""
        try:
            return str(json.loads((project / "project.json").read_text(encoding="utf-8"))["video"])
        except (OSError, ValueError, KeyError):
            return project.name

    @staticmethod
    def opened(w: Workspace | None, new: Workspace, what: str) -> Outputs:
        """The values of :attr:`Page.opened` for a newly opened workspace (the previous one is closed), with what its
        project folder kept restored."""
        if w is not None:
            w.close()
        try:
            restored = new.restore()
        except PropagateError as exc:
            restored = f"error: {exc}"
        width, height = new.session.native_size
        text = f"opened {what}: {new.num_frames} frames, {width}x{height}" + (f"; {restored}" if restored else "")
        frame = min(max(int(new.settings.get("frame", 0)), 0), new.num_frames - 1)  # type: ignore[call-overload]
        obj = int(new.settings.get("object", 1))  # type: ignore[call-overload]
        return (text, new, gr.update(maximum=new.num_frames - 1, value=frame), *frame_outputs(new, frame),
                object_choices(new, obj), bool(new.settings.get("overlay", True)), new.remembered)

    def open_path(self, text: str, w: Workspace | None) -> Outputs:
        return self.opened(w, *self.workspace(resolve_under_root(self.server.root, text), None))

    def open_uploaded(self, file: str | None, w: Workspace | None) -> Outputs:
        """Outputs: :attr:`Page.opened`."""
        if file is None:
            return (gr.skip(),) * len(self.page.opened)
        return self.opened(w, *self.workspace(None, file))

    def reopen(self, remembered: str | None, w: Workspace | None) -> Outputs:
        """On page load: open again what this browser had open (its project brings back the rest), else the
        server's video, else nothing."""
        remembered = remembered or ""
        if remembered.startswith("path:"):
            return self.open_path(remembered[len("path:"):], w)
        if remembered.startswith("upload:"):
            folder = project_folder(self.server.root, remembered[len("upload:"):])
            copies = sorted(folder.glob("upload.*")) if folder.is_dir() else []
            if copies:
                return self.opened(w, *self.workspace(None, copies[0], folder.name))
        if self.server.video is not None:
            return self.open_path(str(self.server.video.relative_to(self.server.root)), w)
        return (gr.skip(),) * len(self.page.opened)

    # ------------------------------------------------------------------------------------------ annotate

    def show_frame(self, i: float, w: Workspace | None) -> Outputs:
        if w is None:
            return (gr.skip(),) * (1 + len(self.page.view))
        w.settings["frame"] = int(i)
        return (gr.skip(), *frame_outputs(w, int(i)))

    @staticmethod
    def step(delta: int, i: float, w: Workspace | None) -> Outputs:
        w = need(w)
        return gr.skip(), gr.update(value=min(max(int(i) + delta, 0), w.num_frames - 1))

    @staticmethod
    def play(i: float, w: Workspace | None) -> Iterator[Outputs]:
        """Step the slider through the frames (the editor shows each frame's labels) from ``i`` (from the start if
        ``i`` is the last frame) to the end, at :data:`PLAY_FPS`; Stop (or Space) ends it."""
        if w is None:
            yield error_text(PropagateError("no video is open: open a path or upload one first")), gr.skip()
            return
        if w.playing:  # a second Play (a double key press) does not start over
            yield gr.skip(), gr.skip()
            return
        w.playing = True
        try:
            start = 0 if int(i) >= w.num_frames - 1 else int(i) + 1
            for j in range(start, w.num_frames):
                yield f"playing: frame {j} of {w.num_frames - 1}", gr.update(value=j)
                time.sleep(1 / PLAY_FPS)
            yield "played to the last frame", gr.update(value=w.num_frames - 1)  # said again: the last word
        finally:
            w.playing = False

    @staticmethod
    def stop(w: Workspace | None) -> str:
        return halt(w, "playing", "stopped")

    @staticmethod
    def pick_object(o: str, w: Workspace | None) -> Outputs:
        """The brush takes object ``o``'s colour; its name and category fill the boxes (to rename it)."""
        if not o:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        obj = int(o)
        name, category = w.objects.get(obj, ("", "")) if w is not None else ("", "")
        if w is not None:
            w.settings["object"] = obj
        return gr.skip(), gr.update(brush=brush(obj)), name, category

    @staticmethod
    def add_object(name: str, category: str, w: Workspace | None) -> Outputs:
        w = need(w)
        obj = w.add_object(name or "", category or "")
        return (f"object {obj} ({w.objects[obj][0]}) added: paint it with its colour", object_choices(w, obj))

    @staticmethod
    def rename_object(o: str, name: str, category: str, w: Workspace | None) -> Outputs:
        w = need(w)
        w.rename_object(int(o), name or "", category or "")
        return f"object {o} is {w.object_label(int(o))}", object_choices(w, int(o))

    @staticmethod
    def delete_object(o: str, i: float, w: Workspace | None) -> Outputs:
        w = need(w)
        w.delete_object(int(o))
        return (f"object {o} deleted (undo brings it back)", object_choices(w), *frame_outputs(w, int(i)))

    @staticmethod
    def mark_absent(o: str, i: float, w: Workspace | None) -> Outputs:
        w = need(w)
        w.mark_absent(int(i), int(o))
        return (f"object {o} is absent from frame {int(i)} on (to its next keyframe): propagate to see it",
                *frame_outputs(w, int(i)))

    @staticmethod
    def switch_mode(m: str, i: float, w: Workspace | None) -> Outputs:
        masks = m == "masks"
        if w is not None:
            w.settings["mode"] = m
        view = gr.update(visible=True, value=w.overlay(int(i))) if w is not None and not masks else \
            gr.update(visible=not masks)
        return (gr.skip(), gr.update(visible=masks), view,
                gr.update(visible=masks), gr.update(visible=masks), gr.update(visible=not masks))

    @staticmethod
    def toggle_overlay(show: bool, i: float, w: Workspace | None) -> Outputs:
        if w is None:
            return gr.skip(), gr.skip()
        w.settings["overlay"] = bool(show)
        return (gr.skip(), *frame_outputs(w, int(i))[:1])

    @staticmethod
    def place_point(name: str, i: float, w: Workspace | None, evt: gr.SelectData) -> Outputs:
        w = need(w)
        x, y = evt.index
        w.place_point(int(i), name, (x, y))
        return f"point {name.strip()} at ({x}, {y}) on frame {int(i)}", w.overlay(int(i))

    @staticmethod
    def save_keyframe(m: str, value: dict[str, object] | None, i: float, w: Workspace | None) -> Outputs:
        w = need(w)
        i = int(i)
        if m == "points":
            names = w.set_points(i)
            text = f"frame {i} is a keyframe: points {', '.join(names)}"
        else:
            layers = value.get("layers") if value else None
            if not layers:
                raise PropagateError(f"frame {i}: nothing is painted: paint an object before saving a keyframe")
            background = value.get("background") if value else None
            if background is not None and not same_image(np.asarray(background), w.image(i)):
                raise PropagateError(f"the editor is still drawing another frame than frame {i}: wait until it shows "
                                     f"frame {i}, then save again (nothing was saved)")
            text = w.save_layer(i, np.asarray(layers[0]))  # type: ignore[index]
        return (text, gr.skip(), *frame_outputs(w, i)[1:])  # the editor keeps what was painted

    @staticmethod
    def remove_keyframe(i: float, w: Workspace | None) -> Outputs:
        w = need(w)
        w.remove(int(i))
        return (f"frame {int(i)} is no longer a keyframe", *frame_outputs(w, int(i)))

    @staticmethod
    def undo(i: float, w: Workspace | None) -> Outputs:
        w = need(w)
        text = w.undo()
        return (text, object_choices(w, int(w.settings.get("object", 1))),  # type: ignore[call-overload]
                *frame_outputs(w, int(i)))

    @staticmethod
    def redo(i: float, w: Workspace | None) -> Outputs:
        w = need(w)
        text = w.redo()
        return (text, object_choices(w, int(w.settings.get("object", 1))),  # type: ignore[call-overload]
                *frame_outputs(w, int(i)))

    def propagate(self, i: float, w: Workspace | None) -> Iterator[Outputs]:
        """Stream the status and the confidence strip as results come (a few a second); the editor stays usable
        (scrub, paint; the slider shows each frame's latest result). Cancellable."""
        try:
            w = need(w)
            start, done, last = time.perf_counter(), 0, 0.0
            total = w.num_frames
            if not w.keyframes:
                raise PropagateError("no keyframe yet: paint a mask (or place points) and save it as a keyframe first")
            clock = PhaseClock()  # the current phase and its ETA, for the status line
            extraction = w.extract_in_background(clock)
            while extraction.is_alive():
                said = clock.text() if clock.phase == "extract" else f"features: {w.extracted}/{total} frames"
                yield f"{said} (once per video), then propagating ...", gr.skip()
                extraction.join(0.5)
            if w.extract_error is not None:
                raise w.extract_error
            for r in w.propagate_in_thread(clock):
                now = time.perf_counter()
                if r is None:  # a sweep run whole before the first result (the backward one): its phase and ETA
                    yield f"propagating: {clock.text()}", gr.skip()
                    continue
                done += 1
                if now - last > 0.25 or done == total:
                    last = now
                    strip_html = confidence_strip(w.num_frames, w.confidence(), w.keyframes, int(w.settings.get(
                        "frame", i)), w.absent())  # type: ignore[call-overload]
                    yield f"propagating: frame {r.index} ({done}/{total}; {clock.text()})", strip_html
            # said by after_run, with the current frame's new result (so the page shows both at once)
            w.run_summary = (f"propagated {done} frames in {time.perf_counter() - start:.1f} s "
                             f"({w.session.stats.get('extractor_frames', '?')} frames' features extracted so far)")
            yield f"propagating: all {done} frames done, showing the results ...", gr.skip()
        except PropagateError as exc:
            yield error_text(exc), gr.skip()

    @staticmethod
    def after_run(value: dict[str, object] | None, w: Workspace | None) -> Outputs:
        """After a propagation: show the current frame's new result (the frame the slider last showed, which may
        have moved while it ran), unless the editor holds unsaved paint there. Nothing if the slider moves on
        meanwhile: its own handler shows that frame, and this one must not arrive after it."""
        if w is None:
            return (gr.skip(),) * 4
        summary, w.run_summary = w.run_summary, ""
        said = summary or gr.skip()
        i = int(w.settings.get("frame", 0))  # type: ignore[call-overload]
        layers = value.get("layers") if value else None
        background = value.get("background") if value else None
        if (layers and background is not None and same_image(np.asarray(background), w.image(i))
                and w.unsaved(i, np.asarray(layers[0]))):  # type: ignore[index]
            shown = (said, gr.skip(), *frame_outputs(w, i)[1:])
        else:
            shown = (said, *frame_outputs(w, i))
        if int(w.settings.get("frame", 0)) != i:  # type: ignore[call-overload]
            return (said, gr.skip(), gr.skip(), gr.skip())
        return shown

    @staticmethod
    def cancelled(w: Workspace | None) -> str:
        return halt(w, "running", "propagation cancelled: the frames done so far are kept")

    @staticmethod
    def export_files(w: Workspace | None) -> Outputs:
        w = need(w)
        files = w.export()
        return f"exported {w.num_frames} frames: {', '.join(p.name for p in files)}", [str(p) for p in files]

    # ------------------------------------------------------------------------------------------ correspond

    def matcher(self, c: Pair | None) -> Pair:
        if c is None:
            c = {"corr": Correspondence(self.server.extractor, self.server.config.resize)}
        return c

    def set_image(self, side: str, image: np.ndarray | None, c: Pair | None) -> Outputs:
        c = self.matcher(c)
        if side == "left":
            c["points"] = []  # points of another image
        if image is None:
            c.pop(side, None)
            return gr.skip(), c, gr.skip()
        start = time.perf_counter()
        image = np.ascontiguousarray(image[..., :3])
        c[side] = (image, c["corr"].features(image))  # type: ignore[attr-defined]
        text = f"{side} image: features in {time.perf_counter() - start:.2f} s"
        return text, c, image

    def use_video_frames(self, a: float, b: float, w: Workspace | None, c: Pair | None) -> Outputs:
        w = need(w)
        c = self.matcher(c)
        for side, index in (("left", int(a)), ("right", int(b))):
            if not 0 <= index < w.num_frames:
                raise PropagateError(f"frame {index} does not exist: the video has frames 0..{w.num_frames - 1}")
            c[side] = (w.image(index), w.session.features(index).float().cpu())
        c["points"] = []
        return (f"frames {int(a)} and {int(b)}: click a point on the left", c, c["left"][0],  # type: ignore[index]
                c["right"][0])  # type: ignore[index]

    @staticmethod
    def clear_points(c: Pair | None) -> Outputs:
        """Forget the named points; show the two images as they are."""
        shown = []
        for side in ("left", "right"):
            pair = c.get(side) if c is not None else None
            shown.append(gr.skip() if pair is None else pair[0])  # type: ignore[index]
        if c is not None:
            c["points"] = []
        return ("points cleared: click a point on the left", c, *shown)

    def baseline_note(self) -> tuple[str, str | None]:
        """The result text's prefix and the right picture's caption: the baseline says it is not DIFT."""
        if self.server.extractor.name == "baseline":
            return f"{self.server.features_label}. ", BASELINE_CAPTION
        return "", None

    def click(self, c: Pair | None, mode: str, name: str | None, sticker: np.ndarray | None,
              evt: gr.SelectData) -> Outputs:
        """A click on the left image: in ``points`` mode, add (or move, if its name is taken) a named point and match
        all of them; in ``edit`` mode, place the sticker there and carry it to the right image."""
        if c is None or "left" not in c or "right" not in c:
            raise PropagateError("give two images (or two frames of the open video) first")
        start = time.perf_counter()
        (left, lf), (right, rf) = c["left"], c["right"]  # type: ignore[misc]
        x, y = evt.index
        note, label = self.baseline_note()
        if mode == "edit":
            if sticker is None:
                raise PropagateError("edit mode: upload a sticker (an RGBA image) first")
            edit = place_sticker(np.asarray(sticker), (x, y), (left.shape[1], left.shape[0]))
            left_img, right_img, homography, inliers, samples = carry_edit(left, lf, right, rf, edit,
                                                                           self.server.config.match)
            fitted = ("no homography could be fitted: the right image is unchanged" if homography is None
                      else f"carried by a homography ({inliers} of {samples} samples are inliers)")
            ms = 1000 * (time.perf_counter() - start)
            text = f"{note}sticker placed at ({x}, {y}); {fitted} ({ms:.0f} ms)"
            return text, c, left_img, draw_named(right_img, [], [], label)
        points = list(c.get("points", []))  # type: ignore[call-overload]
        name = (name or "").strip()
        names = [n for n, _ in points]
        if not name:
            count = len(points) + 1
            while f"p{count}" in names:
                count += 1
            name = f"p{count}"
        if name in names:  # moved: it keeps its colour
            points[names.index(name)] = (name, (float(x), float(y)))
        else:
            points.append((name, (float(x), float(y))))
        c["points"] = points
        names = [n for n, _ in points]
        xy, similarity = match_named(left, lf, right, rf, points)
        m = best_match(lf, rf, (x, y), (left.shape[1], left.shape[0]), (right.shape[1], right.shape[0]))
        j = names.index(name)
        left_img = draw_named(left, points, names)
        right_img = draw_named(heatmap_overlay(right, m.heatmap), xy, names, label)
        ms = 1000 * (time.perf_counter() - start)
        listed = "; ".join(f"{n} -> ({px:.0f}, {py:.0f}) {s:.3f}" for n, (px, py), s in zip(names, xy, similarity))
        text = (f"{note}{name}: clicked ({x}, {y}) (cell {m.cell[0]}, {m.cell[1]}) -> match at "
                f"<span id='match-xy'>{xy[j, 0]:.0f}, {xy[j, 1]:.0f}</span>, similarity {similarity[j]:.3f} "
                f"({ms:.0f} ms); heatmap of {name}. All points: {listed}")
        return text, c, left_img, right_img


def wire(app: gr.Blocks, page: Page, server: Server) -> Handlers:
    """Connect the handlers to the page's events (inside ``app``'s ``with`` block); the status is the first output
    of each, and a user's mistake shows there (:func:`guarded`)."""
    h, p = Handlers(server, page), page

    def on(event: Callable[..., object], fn: Callable[..., object], inputs: list[object], outputs: list[object],
           **kwargs: object) -> object:
        return event(guarded(fn, len(outputs)), inputs, outputs, **kwargs)

    on(p.open_button.click, h.open_path, [p.path, p.ws], p.opened)
    on(p.path.submit, h.open_path, [p.path, p.ws], p.opened)
    on(p.upload.upload, h.open_uploaded, [p.upload, p.ws], p.opened)
    on(app.load, h.reopen, [p.remembered, p.ws], p.opened)

    on(p.frame.change, h.show_frame, [p.frame, p.ws], [p.status, *p.view], show_progress="hidden",
       trigger_mode="always_last")
    on(p.prev.click, functools.partial(h.step, -1), [p.frame, p.ws], [p.status, p.frame], show_progress="hidden")
    on(p.next.click, functools.partial(h.step, 1), [p.frame, p.ws], [p.status, p.frame], show_progress="hidden")
    playing = p.play.click(h.play, [p.frame, p.ws], [p.status, p.frame], show_progress="hidden")
    p.stop.click(h.stop, [p.ws], [p.status], cancels=[playing])
    on(p.obj.change, h.pick_object, [p.obj, p.ws], [p.status, p.editor, p.obj_name, p.obj_category],
       show_progress="hidden")
    on(p.add_obj.click, h.add_object, [p.obj_name, p.obj_category, p.ws], [p.status, p.obj])
    on(p.rename_obj.click, h.rename_object, [p.obj, p.obj_name, p.obj_category, p.ws], [p.status, p.obj])
    on(p.delete_obj.click, h.delete_object, [p.obj, p.frame, p.ws], [p.status, p.obj, *p.view])
    on(p.absent.click, h.mark_absent, [p.obj, p.frame, p.ws], [p.status, *p.view])
    on(p.overlay.change, h.toggle_overlay, [p.overlay, p.frame, p.ws], [p.status, p.editor],
       show_progress="hidden")
    on(p.mode.change, h.switch_mode, [p.mode, p.frame, p.ws],
       [p.status, p.editor, p.points_view, p.obj, p.add_obj, p.point_name])
    on(p.points_view.select, h.place_point, [p.point_name, p.frame, p.ws], [p.status, p.points_view])
    on(p.save.click, h.save_keyframe, [p.mode, p.editor, p.frame, p.ws], [p.status, *p.view])
    on(p.remove.click, h.remove_keyframe, [p.frame, p.ws], [p.status, *p.view])
    on(p.undo.click, h.undo, [p.frame, p.ws], [p.status, p.obj, *p.view])
    on(p.redo.click, h.redo, [p.frame, p.ws], [p.status, p.obj, *p.view])
    running = p.run.click(h.propagate, [p.frame, p.ws], [p.status, p.strip], show_progress="hidden")
    running.then(guarded(h.after_run, 1 + len(p.view)), [p.editor, p.ws], [p.status, *p.view],
                 show_progress="hidden")
    p.cancel.click(h.cancelled, [p.ws], [p.status], cancels=[running])
    on(p.export.click, h.export_files, [p.ws], [p.status, p.downloads])

    on(p.left_in.change, lambda im, c: h.set_image("left", im, c), [p.left_in, p.corr],
       [p.corr_result, p.corr, p.left_view])
    on(p.right_in.change, lambda im, c: h.set_image("right", im, c), [p.right_in, p.corr],
       [p.corr_result, p.corr, p.right_view])
    on(p.use_frames.click, h.use_video_frames, [p.frame_a, p.frame_b, p.ws, p.corr],
       [p.corr_result, p.corr, p.left_view, p.right_view])
    on(p.left_view.select, h.click, [p.corr, p.corr_mode, p.corr_name, p.sticker],
       [p.corr_result, p.corr, p.left_view, p.right_view])
    on(p.corr_clear.click, h.clear_points, [p.corr], [p.corr_result, p.corr, p.left_view, p.right_view])
    return h
