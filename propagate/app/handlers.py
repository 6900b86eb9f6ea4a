"""What the page does (Gradio handlers): each is a few lines over :class:`~propagate.app.workspace.Workspace` (the
session) and :mod:`propagate.app.core`, and :func:`wire` connects them to the components of
:mod:`propagate.app.layout`. A user's mistake shows as one ``error: ...`` line in the page's status and the server
keeps serving. Per-browser state lives in ``gr.State``, so a video opened or uploaded in one browser tab is not
visible in another.
"""
from __future__ import annotations

import functools
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr
import numpy as np

from propagate.app.core import (
    BASELINE_CAPTION,
    MAX_OBJECTS,
    Correspondence,
    Server,
    best_match,
    carry_edit,
    confidence_strip,
    draw_named,
    heatmap_overlay,
    layer_to_mask,
    mask_to_layer,
    match_named,
    open_upload,
    place_sticker,
    resolve_under_root,
)
from propagate.app.layout import Page, brush
from propagate.app.workspace import Workspace
from propagate.errors import PropagateError
from propagate.video import open_video

Outputs = tuple[object, ...]  # the values of a handler's outputs, in order (gr.skip() leaves one as it is)
Pair = dict[str, object]  # a browser session's correspond pair, see Page.corr


def error_text(exc: PropagateError) -> str:
    return f"**error:** {exc}"


def need(w: Workspace | None) -> Workspace:
    if w is None:
        raise PropagateError("no video is open: open a path or upload one first")
    return w


def editor_value(w: Workspace, i: int) -> dict[str, object]:
    """The editor's value for frame ``i``: the frame behind, its mask as the brush layer."""
    return {"background": w.image(i), "layers": [mask_to_layer(w.mask(i))], "composite": None}


def frame_outputs(w: Workspace, i: int) -> Outputs:
    """The values of :attr:`Page.view` for frame ``i``."""
    strip_html = confidence_strip(w.num_frames, w.confidence(), w.keyframes, i)
    return editor_value(w, i), w.overlay(i), w.overlay(i), strip_html


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

    def workspace(self, source_path: Path | None, upload_path: str | None) -> tuple[Workspace, str]:
        """A new workspace (in its own folder) over a path under the root or an upload."""
        server = self.server
        folder = server.work / uuid.uuid4().hex
        folder.mkdir()
        try:
            if upload_path is not None:
                source = open_upload(upload_path, folder, server.max_upload_bytes)
                what = f"upload {Path(upload_path).name}"
            else:
                assert source_path is not None
                source = open_video(source_path)
                what = str(source_path.relative_to(server.root))
            return Workspace(source, server.config, server.extractor, folder), what
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    @staticmethod
    def opened(w: Workspace | None, new: Workspace, what: str) -> Outputs:
        """The values of :attr:`Page.opened` for a newly opened workspace (the previous one is closed)."""
        if w is not None:
            w.close()
        width, height = new.session.native_size
        return (f"opened {what}: {new.num_frames} frames, {width}x{height}", new,
                gr.update(maximum=new.num_frames - 1, value=0), *frame_outputs(new, 0),
                gr.update(choices=["1"], value="1"))  # object 1 again (its change sets the brush)

    def open_path(self, text: str, w: Workspace | None) -> Outputs:
        return self.opened(w, *self.workspace(resolve_under_root(self.server.root, text), None))

    def open_uploaded(self, file: str | None, w: Workspace | None) -> Outputs:
        """Outputs: :attr:`Page.opened` and the upload box (emptied after a refused upload, for the next try)."""
        count = len(self.page.opened)
        if file is None:
            return (gr.skip(),) * (count + 1)
        try:
            new, what = self.workspace(None, file)
        except PropagateError as exc:
            return (error_text(exc), *([gr.skip()] * (count - 1)), None)
        return (*self.opened(w, new, what), gr.skip())

    # ------------------------------------------------------------------------------------------ annotate

    def show_frame(self, i: float, w: Workspace | None) -> Outputs:
        if w is None:
            return (gr.skip(),) * (1 + len(self.page.view))
        return (gr.skip(), *frame_outputs(w, int(i)))

    @staticmethod
    def pick_object(o: str) -> Outputs:
        return gr.skip(), gr.update(brush=brush(int(o)))

    @staticmethod
    def add_object(w: Workspace | None) -> Outputs:
        w = need(w)
        if w.objects >= MAX_OBJECTS:
            raise PropagateError(f"at most {MAX_OBJECTS} objects")
        w.objects += 1
        choices = [str(k) for k in range(1, w.objects + 1)]
        return f"object {w.objects} added: paint it with its colour", gr.update(choices=choices, value=str(w.objects))

    @staticmethod
    def switch_mode(m: str) -> Outputs:
        masks = m == "masks"
        return (gr.skip(), gr.update(visible=masks), gr.update(visible=not masks), gr.update(visible=masks),
                gr.update(visible=masks), gr.update(visible=not masks))

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
            objects = w.set_mask(i, layer_to_mask(layers[0]))  # type: ignore[index]
            text = f"frame {i} is a keyframe: objects {', '.join(map(str, objects))}"
        return (text, gr.skip(), *frame_outputs(w, i)[1:])  # the editor keeps what was painted

    @staticmethod
    def remove_keyframe(i: float, w: Workspace | None) -> Outputs:
        w = need(w)
        w.remove(int(i))
        return (f"frame {int(i)} is no longer a keyframe", *frame_outputs(w, int(i)))

    def propagate(self, i: float, w: Workspace | None, progress: gr.Progress = gr.Progress()) -> Iterator[Outputs]:
        """Stream overlays as results come (a few a second), then show frame ``i``; cancellable."""
        try:
            w = need(w)
            start, done, last = time.perf_counter(), 0, 0.0
            total = w.num_frames
            w.session.extract(lambda k, n: progress((k, n), desc="features (once per video)", unit="frames"))
            for r in w.propagate():
                done += 1
                progress((done, total), desc="propagating", unit="frames")
                now = time.perf_counter()
                if now - last > 0.25 or done == total:
                    last = now
                    strip_html = confidence_strip(w.num_frames, w.confidence(), w.keyframes, r.index)
                    yield (f"propagating: frame {r.index} ({done}/{total})", gr.skip(), w.overlay(r.index), gr.skip(),
                           strip_html)
            yield (f"propagated {done} frames in {time.perf_counter() - start:.1f} s "
                   f"({w.session.stats.get('extractor_frames', '?')} frames' features extracted so far)",
                   *frame_outputs(w, int(i)))
        except PropagateError as exc:
            yield (error_text(exc), *([gr.skip()] * len(self.page.view)))

    @staticmethod
    def cancelled() -> str:
        return "propagation cancelled: the frames done so far are kept"

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
    on(p.upload.upload, h.open_uploaded, [p.upload, p.ws], [*p.opened, p.upload])
    if server.video is not None:
        video_text = str(server.video.relative_to(server.root))
        on(app.load, lambda w: h.open_path(video_text, w), [p.ws], p.opened)

    on(p.frame.change, h.show_frame, [p.frame, p.ws], [p.status, *p.view], show_progress="hidden")
    on(p.obj.change, h.pick_object, [p.obj], [p.status, p.editor], show_progress="hidden")
    on(p.add_obj.click, h.add_object, [p.ws], [p.status, p.obj])  # the object's change sets the brush
    on(p.mode.change, h.switch_mode, [p.mode], [p.status, p.editor, p.points_view, p.obj, p.add_obj, p.point_name])
    on(p.points_view.select, h.place_point, [p.point_name, p.frame, p.ws], [p.status, p.points_view])
    on(p.save.click, h.save_keyframe, [p.mode, p.editor, p.frame, p.ws], [p.status, *p.view])
    on(p.remove.click, h.remove_keyframe, [p.frame, p.ws], [p.status, *p.view])
    running = p.run.click(h.propagate, [p.frame, p.ws], [p.status, *p.view])
    p.cancel.click(h.cancelled, None, [p.status], cancels=[running])
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
