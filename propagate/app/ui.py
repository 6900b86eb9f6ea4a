"""The page of ``propagate serve`` (Gradio): annotate, propagate, correct and export a video; click to correspond.

Every handler is a few lines over :class:`~propagate.app.workspace.Workspace` (the session) and
:mod:`propagate.app.core`; a user's mistake shows as one ``error: ...`` line in the page's status and the server
keeps serving. Per-browser state lives in ``gr.State``, so a video opened or uploaded in one browser tab is not
visible in another. Element ids (``elem_id``) are stable: the browser test drives the page by them.
"""
from __future__ import annotations

import functools
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local tool: no calls home
import gradio as gr  # noqa: E402

from propagate.app.core import (  # noqa: E402
    LAYER_ALPHA, MAX_OBJECTS, Correspondence, best_match, colour_hex, confidence_strip, draw_marker, heatmap_overlay,
    layer_to_mask, mask_to_layer, open_upload, resolve_under_root,
)
from propagate.app.workspace import Workspace  # noqa: E402
from propagate.config import Config  # noqa: E402
from propagate.errors import PropagateError  # noqa: E402
from propagate.features.base import FeatureExtractor  # noqa: E402
from propagate.video import open_video  # noqa: E402

BRUSH_SIZE = 12


@dataclass
class Server:
    """What every browser session shares: settings, the extractor (built once), the root and a temp folder."""

    config: Config
    extractor: FeatureExtractor
    root: Path
    work: Path  # the server's temporary folder; each workspace gets a subfolder
    features_label: str
    max_upload_bytes: int
    video: Path | None = None  # opened in every new browser session


def _error(exc: PropagateError) -> str:
    return f"**error:** {exc}"


def _brush(obj: int) -> gr.Brush:
    return gr.Brush(colors=[(colour_hex(obj), LAYER_ALPHA)], default_color=(colour_hex(obj), LAYER_ALPHA),
                    color_mode="fixed", default_size=BRUSH_SIZE)


def build_app(server: Server) -> gr.Blocks:
    """The page: an "annotate" tab (open, scrub, paint, propagate, correct, export) and a "correspond" tab."""
    with gr.Blocks(title="propagate", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        # this browser session's Workspace, closed (features freed, folder removed) when the session ends
        ws = gr.State(None, delete_callback=lambda w: w.close() if w is not None else None)
        corr = gr.State(None)  # this browser session's correspond pair: dict(left=..., right=..., feats...)
        gr.Markdown("## propagate: label propagation with diffusion features")
        gr.Markdown(f"Features in use: {server.features_label}", elem_id="features")
        status = gr.Markdown("Open a video: a path under the server's root, or upload an mp4 or a zip of frames.",
                             elem_id="status")
        with gr.Tab("annotate", elem_id="tab-annotate"):
            with gr.Row():
                path = gr.Textbox(label=f"video path under {server.root}", elem_id="open-path", scale=3)
                open_button = gr.Button("Open", elem_id="open-button", scale=1)
                upload = gr.File(label="or upload (mp4, or a zip of frames)", file_types=[".mp4", ".zip", ".mov",
                                 ".avi", ".mkv", ".webm"], elem_id="upload", scale=2, height=120)
            frame = gr.Slider(0, 1, value=0, step=1, label="frame", elem_id="frame")
            strip = gr.HTML(elem_id="strip")
            with gr.Row():
                mode = gr.Radio(["masks", "points"], value="masks", label="labels", elem_id="mode")
                obj = gr.Radio(["1"], value="1", label="object (brush colour)", elem_id="object")
                add_obj = gr.Button("Add object", elem_id="add-object")
                point_name = gr.Textbox(label="point name (click the frame to place or move it)", visible=False,
                                        elem_id="point-name")
            with gr.Row():
                editor = gr.ImageEditor(label="paint (brush) / erase; then save as keyframe", type="numpy",
                                        image_mode="RGBA", sources=(), transforms=(), layers=False,
                                        brush=_brush(1), eraser=gr.Eraser(default_size=BRUSH_SIZE),
                                        height=420, elem_id="editor")
                points_view = gr.Image(label="click to place a named point", type="numpy", interactive=False,
                                       visible=False, elem_id="points-view")
                result = gr.Image(label="result", type="numpy", interactive=False, height=420, elem_id="result")
            with gr.Row():
                save = gr.Button("Save keyframe", variant="primary", elem_id="save-keyframe")
                remove = gr.Button("Remove keyframe", elem_id="remove-keyframe")
                run = gr.Button("Propagate", variant="primary", elem_id="propagate")
                cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                export = gr.Button("Export", elem_id="export")
            downloads = gr.File(label="downloads: masks (zip of PNGs), COCO JSON, overlay mp4", file_count="multiple",
                                interactive=False, height=120, elem_id="downloads")

        with gr.Tab("correspond", elem_id="tab-correspond"):
            gr.Markdown("Click a point on the left image: the best match on the right (cosine similarity of the "
                        "features) and the similarity heatmap. Two images, or two frames of the open video.")
            with gr.Row():
                left_in = gr.Image(label="left image", type="numpy", sources=["upload"], elem_id="corr-left-in")
                right_in = gr.Image(label="right image", type="numpy", sources=["upload"], elem_id="corr-right-in")
            with gr.Row():
                frame_a = gr.Number(0, precision=0, label="or frames of the open video: left", elem_id="corr-frame-a")
                frame_b = gr.Number(1, precision=0, label="right", elem_id="corr-frame-b")
                use_frames = gr.Button("Use these frames", elem_id="corr-use-frames")
            with gr.Row():
                left_view = gr.Image(label="left: click a point", type="numpy", interactive=False, elem_id="corr-left")
                right_view = gr.Image(label="right: best match and heatmap", type="numpy", interactive=False,
                                      elem_id="corr-right")
            corr_result = gr.Markdown(elem_id="corr-result")

        # ---------------------------------------------------------------------------------------- annotate

        def editor_value(w: Workspace, i: int) -> dict:
            return {"background": w.image(i), "layers": [mask_to_layer(w.mask(i))], "composite": None}

        def frame_outputs(w: Workspace, i: int) -> tuple:
            strip_html = confidence_strip(w.num_frames, w.confidence(), w.keyframes, i)
            return editor_value(w, i), w.overlay(i), w.overlay(i), strip_html

        view_outputs = [editor, result, points_view, strip]

        def opened(w: Workspace | None, new: Workspace, what: str) -> tuple:
            """The outputs of ``open_outputs`` for a newly opened workspace (the previous one is closed)."""
            if w is not None:
                w.close()
            width, height = new.session.native_size
            return (f"opened {what}: {new.num_frames} frames, {width}x{height}", new,
                    gr.update(maximum=new.num_frames - 1, value=0), *frame_outputs(new, 0),
                    gr.update(choices=["1"], value="1"))  # object 1 again (its change sets the brush)

        open_outputs = [status, ws, frame, *view_outputs, obj]

        def workspace(source_path: Path | None, upload_path: str | None) -> tuple[Workspace, str]:
            """A new workspace (in its own folder) over a path under the root or an upload."""
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

        def guarded(fn: Callable, count: int) -> Callable:
            """Run ``fn``; on a user's mistake show ``error: ...`` in the status (the first of its ``count``
            outputs) and change nothing else."""

            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                try:
                    return fn(*args, **kwargs)
                except PropagateError as exc:
                    return (_error(exc), *([gr.skip()] * (count - 1))) if count > 1 else _error(exc)

            return wrapper

        def on(event, fn: Callable, inputs: list, outputs: list, **kwargs):
            """Wire ``fn`` (status first among its outputs) through :func:`guarded`."""
            return event(guarded(fn, len(outputs)), inputs, outputs, **kwargs)

        def open_path(text: str, w: Workspace | None):
            return opened(w, *workspace(resolve_under_root(server.root, text), None))

        def open_uploaded(file: str | None, w: Workspace | None):
            if file is None:
                return (gr.skip(),) * (len(open_outputs) + 1)
            try:
                new, what = workspace(None, file)
            except PropagateError as exc:  # shown, and the upload box is emptied for the next try
                return (_error(exc), *([gr.skip()] * (len(open_outputs) - 1)), None)
            return (*opened(w, new, what), gr.skip())

        on(open_button.click, open_path, [path, ws], open_outputs)
        on(path.submit, open_path, [path, ws], open_outputs)
        on(upload.upload, open_uploaded, [upload, ws], [*open_outputs, upload])
        if server.video is not None:
            video_text = str(server.video.relative_to(server.root))
            on(app.load, lambda w: open_path(video_text, w), [ws], open_outputs)

        def need(w: Workspace | None) -> Workspace:
            if w is None:
                raise PropagateError("no video is open: open a path or upload one first")
            return w

        def show_frame(i: float, w: Workspace | None):
            if w is None:
                return (gr.skip(),) * (1 + len(view_outputs))
            return (gr.skip(), *frame_outputs(w, int(i)))

        on(frame.change, show_frame, [frame, ws], [status, *view_outputs], show_progress="hidden")

        def pick_object(o: str):
            return gr.skip(), gr.update(brush=_brush(int(o)))

        on(obj.change, pick_object, [obj], [status, editor], show_progress="hidden")

        def add_object(w: Workspace | None):
            w = need(w)
            if w.objects >= MAX_OBJECTS:
                raise PropagateError(f"at most {MAX_OBJECTS} objects")
            w.objects += 1
            choices = [str(k) for k in range(1, w.objects + 1)]
            return f"object {w.objects} added: paint it with its colour", gr.update(choices=choices, value=str(w.objects))

        on(add_obj.click, add_object, [ws], [status, obj])  # the object's change sets the brush

        def switch_mode(m: str):
            masks = m == "masks"
            return (gr.skip(), gr.update(visible=masks), gr.update(visible=not masks), gr.update(visible=masks),
                    gr.update(visible=masks), gr.update(visible=not masks))

        on(mode.change, switch_mode, [mode], [status, editor, points_view, obj, add_obj, point_name])

        def place_point(name: str, i: float, w: Workspace | None, evt: gr.SelectData):
            w = need(w)
            x, y = evt.index
            w.place_point(int(i), name, (x, y))
            return f"point {name.strip()} at ({x}, {y}) on frame {int(i)}", w.overlay(int(i))

        on(points_view.select, place_point, [point_name, frame, ws], [status, points_view])

        def save_keyframe(m: str, value: dict | None, i: float, w: Workspace | None):
            w = need(w)
            i = int(i)
            if m == "points":
                names = w.set_points(i)
                text = f"frame {i} is a keyframe: points {', '.join(names)}"
            else:
                if not value or not value.get("layers"):
                    raise PropagateError(f"frame {i}: nothing is painted: paint an object before saving a keyframe")
                objects = w.set_mask(i, layer_to_mask(value["layers"][0]))
                text = f"frame {i} is a keyframe: objects {', '.join(map(str, objects))}"
            return (text, gr.skip(), *frame_outputs(w, i)[1:])  # the editor keeps what was painted

        on(save.click, save_keyframe, [mode, editor, frame, ws], [status, *view_outputs])

        def remove_keyframe(i: float, w: Workspace | None):
            w = need(w)
            w.remove(int(i))
            return (f"frame {int(i)} is no longer a keyframe", *frame_outputs(w, int(i)))

        on(remove.click, remove_keyframe, [frame, ws], [status, *view_outputs])

        def propagate(i: float, w: Workspace | None, progress: gr.Progress = gr.Progress()):
            try:
                w = need(w)
                start, done, last = time.perf_counter(), 0, 0.0
                total = w.num_frames
                w.session.extract(lambda k, n: progress((k, n), desc="features (once per video)", unit="frames"))
                for r in w.propagate():
                    done += 1
                    progress((done, total), desc="propagating", unit="frames")
                    now = time.perf_counter()
                    if now - last > 0.25 or done == total:  # overlays as results stream in, a few a second
                        last = now
                        strip_html = confidence_strip(w.num_frames, w.confidence(), w.keyframes, r.index)
                        yield f"propagating: frame {r.index} ({done}/{total})", gr.skip(), w.overlay(r.index), \
                            gr.skip(), strip_html
                yield (f"propagated {done} frames in {time.perf_counter() - start:.1f} s "
                       f"({w.session.stats.get('extractor_frames', '?')} frames' features extracted so far)",
                       *frame_outputs(w, int(i)))
            except PropagateError as exc:
                yield (_error(exc), *([gr.skip()] * len(view_outputs)))

        running = run.click(propagate, [frame, ws], [status, *view_outputs])
        cancel.click(lambda: "propagation cancelled: the frames done so far are kept", None, [status],
                     cancels=[running])

        def export_files(w: Workspace | None):
            w = need(w)
            files = w.export()
            return f"exported {w.num_frames} frames: {', '.join(p.name for p in files)}", [str(p) for p in files]

        on(export.click, export_files, [ws], [status, downloads])

        # ---------------------------------------------------------------------------------------- correspond

        def matcher(c: dict | None) -> dict:
            if c is None:
                c = {"corr": Correspondence(server.extractor, server.config.resize)}
            return c

        def set_image(side: str, image: np.ndarray | None, c: dict | None):
            c = matcher(c)
            if image is None:
                c.pop(side, None)
                return gr.skip(), c, gr.skip()
            start = time.perf_counter()
            image = np.ascontiguousarray(image[..., :3])
            c[side] = (image, c["corr"].features(image))
            text = f"{side} image: features in {time.perf_counter() - start:.2f} s"
            return text, c, image

        on(left_in.change, lambda im, c: set_image("left", im, c), [left_in, corr], [corr_result, corr, left_view])
        on(right_in.change, lambda im, c: set_image("right", im, c), [right_in, corr],
           [corr_result, corr, right_view])

        def use_video_frames(a: float, b: float, w: Workspace | None, c: dict | None):
            w = need(w)
            c = matcher(c)
            for side, index in (("left", int(a)), ("right", int(b))):
                if not 0 <= index < w.num_frames:
                    raise PropagateError(f"frame {index} does not exist: the video has frames 0..{w.num_frames - 1}")
                c[side] = (w.image(index), w.session.features(index).float().cpu())
            return f"frames {int(a)} and {int(b)}: click a point on the left", c, c["left"][0], c["right"][0]

        on(use_frames.click, use_video_frames, [frame_a, frame_b, ws, corr],
           [corr_result, corr, left_view, right_view])

        def click(c: dict | None, evt: gr.SelectData):
            if c is None or "left" not in c or "right" not in c:
                raise PropagateError("give two images (or two frames of the open video) first")
            start = time.perf_counter()
            (left, lf), (right, rf) = c["left"], c["right"]
            x, y = evt.index
            m = best_match(lf, rf, (x, y), (left.shape[1], left.shape[0]), (right.shape[1], right.shape[0]))
            left_img = draw_marker(left, (x, y))
            right_img = draw_marker(heatmap_overlay(right, m.heatmap), m.xy)
            ms = 1000 * (time.perf_counter() - start)
            text = (f"clicked ({x}, {y}) (cell {m.cell[0]}, {m.cell[1]}) -> match at "
                    f"<span id='match-xy'>{m.xy[0]:.0f}, {m.xy[1]:.0f}</span>, similarity {m.score:.3f} "
                    f"({ms:.0f} ms)")
            return text, left_img, right_img

        on(left_view.select, click, [corr], [corr_result, left_view, right_view])
    return app
