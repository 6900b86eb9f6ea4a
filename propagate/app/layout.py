"""The page's layout (Gradio components, no behaviour): an "annotate" tab (open, scrub, paint, propagate, correct,
export) and a "correspond" tab. :mod:`propagate.app.handlers` gives the components their behaviour.

Element ids (``elem_id``) are stable: the browser test drives the page by them.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from propagate.app.core import LAYER_ALPHA, Server, colour_hex

BRUSH_SIZE = 12
UPLOAD_TYPES = [".mp4", ".zip", ".mov", ".avi", ".mkv", ".webm"]


def brush(obj: int) -> gr.Brush:
    """The editor's brush for object ``obj``: its palette colour, see-through."""
    return gr.Brush(colors=[(colour_hex(obj), LAYER_ALPHA)], default_color=(colour_hex(obj), LAYER_ALPHA),
                    color_mode="fixed", default_size=BRUSH_SIZE)


@dataclass
class Page:
    """The components of the page, by role. ``ws`` holds the browser session's Workspace, ``corr`` its
    correspond pair (``{"corr": Correspondence, "left": (image, features), "right": ...,
    "points": [(name, (x, y)), ...]}``)."""

    ws: gr.State
    corr: gr.State
    status: gr.Markdown
    # annotate
    path: gr.Textbox
    open_button: gr.Button
    upload: gr.File
    frame: gr.Slider
    strip: gr.HTML
    mode: gr.Radio
    obj: gr.Radio
    add_obj: gr.Button
    point_name: gr.Textbox
    editor: gr.ImageEditor
    points_view: gr.Image
    result: gr.Image
    save: gr.Button
    remove: gr.Button
    run: gr.Button
    cancel: gr.Button
    export: gr.Button
    downloads: gr.File
    # correspond
    left_in: gr.Image
    right_in: gr.Image
    frame_a: gr.Number
    frame_b: gr.Number
    use_frames: gr.Button
    left_view: gr.Image
    right_view: gr.Image
    corr_result: gr.Markdown
    corr_mode: gr.Radio
    corr_name: gr.Textbox
    corr_clear: gr.Button
    sticker: gr.Image

    @property
    def view(self) -> list[gr.components.Component]:
        """What shows the current frame: the editor, the result, the points view and the confidence strip."""
        return [self.editor, self.result, self.points_view, self.strip]

    @property
    def opened(self) -> list[gr.components.Component]:
        """What opening a video sets: the status, the workspace, the slider, the frame's view and the object."""
        return [self.status, self.ws, self.frame, *self.view, self.obj]


def build_page(server: Server) -> Page:
    """Lay the page out inside the current ``gr.Blocks``; return its components."""
    # this browser session's Workspace, closed (features freed, folder removed) when the session ends
    ws = gr.State(None, delete_callback=lambda w: w.close() if w is not None else None)
    corr = gr.State(None)
    gr.Markdown("## propagate: label propagation with diffusion features")
    gr.Markdown(f"Features in use: {server.features_label}", elem_id="features")
    status = gr.Markdown("Open a video: a path under the server's root, or upload an mp4 or a zip of frames.",
                         elem_id="status")
    with gr.Tab("annotate", elem_id="tab-annotate"):
        with gr.Row():
            path = gr.Textbox(label=f"video path under {server.root}", elem_id="open-path", scale=3)
            open_button = gr.Button("Open", elem_id="open-button", scale=1)
            upload = gr.File(label="or upload (mp4, or a zip of frames)", file_types=UPLOAD_TYPES, elem_id="upload",
                             scale=2, height=120)
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
                                    image_mode="RGBA", sources=(), transforms=(), layers=False, brush=brush(1),
                                    eraser=gr.Eraser(default_size=BRUSH_SIZE), height=420, elem_id="editor")
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
        gr.Markdown("Click points on the left image: each is matched on the right (cosine similarity of the "
                    "features; one colour per point) with the last one's similarity heatmap. Or, in edit mode, "
                    "place a sticker on the left and see it carried to the right. Two images, or two frames of the "
                    "open video.")
        with gr.Row():
            left_in = gr.Image(label="left image", type="numpy", sources=["upload"], elem_id="corr-left-in")
            right_in = gr.Image(label="right image", type="numpy", sources=["upload"], elem_id="corr-right-in")
        with gr.Row():
            frame_a = gr.Number(0, precision=0, label="or frames of the open video: left", elem_id="corr-frame-a")
            frame_b = gr.Number(1, precision=0, label="right", elem_id="corr-frame-b")
            use_frames = gr.Button("Use these frames", elem_id="corr-use-frames")
        with gr.Row():
            corr_mode = gr.Radio(["points", "edit"], value="points", label="a click on the left", elem_id="corr-mode")
            corr_name = gr.Textbox(label="point name (empty: p1, p2, ...)", elem_id="corr-point-name")
            corr_clear = gr.Button("Clear points", elem_id="corr-clear")
            sticker = gr.Image(label="sticker (RGBA; edit mode: its centre at the click)", type="numpy",
                               image_mode="RGBA", sources=["upload"], height=120, elem_id="corr-sticker")
        with gr.Row():
            left_view = gr.Image(label="left: click a point", type="numpy", interactive=False, elem_id="corr-left")
            right_view = gr.Image(label="right: matches and heatmap, or the carried sticker", type="numpy",
                                  interactive=False, elem_id="corr-right")
        corr_result = gr.Markdown(elem_id="corr-result")
    return Page(ws=ws, corr=corr, status=status, path=path, open_button=open_button, upload=upload, frame=frame,
                strip=strip, mode=mode, obj=obj, add_obj=add_obj, point_name=point_name, editor=editor,
                points_view=points_view, result=result, save=save, remove=remove, run=run, cancel=cancel,
                export=export, downloads=downloads, left_in=left_in, right_in=right_in, frame_a=frame_a,
                frame_b=frame_b, use_frames=use_frames, left_view=left_view, right_view=right_view,
                corr_result=corr_result, corr_mode=corr_mode, corr_name=corr_name, corr_clear=corr_clear,
                sticker=sticker)
