"""The page's layout (Gradio components, no behaviour): an "annotate" tab (open; one large editor with the labels as
its brush layer, a toolbar above it and the objects beside it; scrub, paint, propagate, correct, export) and a
"correspond" tab; the page's keyboard shortcuts and style. :mod:`propagate.app.handlers` gives the components their
behaviour.

Element ids (``elem_id``) are stable: the browser test drives the page by them.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import gradio as gr

from propagate.app.core import LAYER_ALPHA, MAX_OBJECTS, Server, colour_hex

BRUSH_SIZE = 12
UPLOAD_TYPES = [".mp4", ".zip", ".mov", ".avi", ".mkv", ".webm"]


def brush(obj: int) -> gr.Brush:
    """The editor's brush for object ``obj``: its palette colour, see-through."""
    return gr.Brush(colors=[(colour_hex(obj), LAYER_ALPHA)], default_color=(colour_hex(obj), LAYER_ALPHA),
                    color_mode="fixed", default_size=BRUSH_SIZE)


# Keyboard shortcuts (ignored while typing in a text box) and wheel zoom on the editor. Each key clicks a control of
# the page, found by its element id, so a shortcut does exactly what its button does.
SHORTCUTS = [("← / →", "previous / next frame"), ("B / E", "brush / eraser"), ("1-9", "object"),
             ("S", "save keyframe"), ("P", "propagate"), ("Space", "play / stop"), ("O", "labels on / off"),
             ("+ / -", "zoom (or the mouse wheel)"), ("Ctrl+Z / Ctrl+Y", "undo / redo")]
PAGE_HEAD = """<script>
(() => {
  const q = (s) => document.querySelector(s);
  const press = (s) => { const b = q(s); if (b) { b.click(); return true; } return false; };
  const typing = (t) => t && (t.tagName === 'INPUT' && !['radio', 'checkbox', 'range'].includes(t.type)
    || t.tagName === 'TEXTAREA' || t.isContentEditable);
  document.addEventListener('keydown', (e) => {
    if (typing(e.target) || e.altKey) return;
    const k = e.key;
    let done = false;
    if (e.ctrlKey || e.metaKey) {
      if (k === 'z' && !e.shiftKey) done = press('#undo');
      else if (k === 'y' || (k === 'Z' && e.shiftKey) || (k === 'z' && e.shiftKey)) done = press('#redo');
    } else if (k === 'ArrowLeft' || k === ',') done = press('#prev-frame');
    else if (k === 'ArrowRight' || k === '.') done = press('#next-frame');
    else if (k === 'b' || k === 'B') done = press("#editor button[aria-label='Brush']");
    else if (k === 'e' || k === 'E') done = press("#editor button[aria-label='Erase']");
    else if (/^[1-9]$/.test(k)) done = press(`#object input[value='${k}']`);
    else if (k === 's' || k === 'S') done = press('#save-keyframe');
    else if (k === 'p' || k === 'P') done = press('#propagate');
    else if (k === ' ') done = press(((q('#status') || {}).innerText || '').startsWith('playing') ? '#stop' : '#play');
    else if (k === 'o' || k === 'O') done = press('#overlay input');
    else if (k === '+' || k === '=') done = press("#editor button[aria-label='Zoom in']");
    else if (k === '-' || k === '_') done = press("#editor button[aria-label='Zoom out']");
    if (done) e.preventDefault();
  });
  document.addEventListener('keyup', (e) => {  // Space must not also press a focused button
    if (e.key === ' ' && !typing(e.target)) e.preventDefault();
  });
  document.addEventListener('wheel', (e) => {
    const editor = q('#editor');
    if (!editor || !editor.contains(e.target) || !e.target.closest('.image-container')) return;
    e.preventDefault();
    press(`#editor button[aria-label='${e.deltaY < 0 ? 'Zoom in' : 'Zoom out'}']`);
  }, {passive: false, capture: true});
})();
</script>"""


def page_css() -> str:
    """The page's style: a colour swatch before each object's name (by its id), compact tool rows."""
    swatches = "\n".join(f"#object input[value='{o}'] + span::before {{ background: {colour_hex(o)}; }}"
                         for o in range(1, MAX_OBJECTS + 1))
    return swatches + """
#object input + span::before { content: ""; display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em;
  border-radius: 2px; vertical-align: -0.1em; }
#toolbar button, #sidebar button { min-width: 0; padding-left: 6px; padding-right: 6px; }
#shortcuts { font-size: 12px; opacity: 0.8; }
"""


@dataclass
class Page:
    """The components of the page, by role. ``ws`` holds the browser session's Workspace, ``corr`` its
    correspond pair (``{"corr": Correspondence, "left": (image, features), "right": ...,
    "points": [(name, (x, y)), ...]}``), ``remembered`` (kept by the browser across reloads) what to open again."""

    ws: gr.State
    corr: gr.State
    remembered: gr.BrowserState
    status: gr.Markdown
    # annotate
    path: gr.Textbox
    open_button: gr.Button
    upload: gr.UploadButton
    frame: gr.Slider
    strip: gr.HTML
    prev: gr.Button
    next: gr.Button
    play: gr.Button
    stop: gr.Button
    save: gr.Button
    run: gr.Button
    cancel: gr.Button
    undo: gr.Button
    redo: gr.Button
    overlay: gr.Checkbox
    mode: gr.Radio
    obj: gr.Radio
    obj_name: gr.Textbox
    obj_category: gr.Textbox
    add_obj: gr.Button
    rename_obj: gr.Button
    delete_obj: gr.Button
    absent: gr.Button
    remove: gr.Button
    point_name: gr.Textbox
    editor: gr.ImageEditor
    points_view: gr.Image
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
        """What shows the current frame: the editor (the frame, its labels as the brush layer), the points view
        and the confidence strip."""
        return [self.editor, self.points_view, self.strip]

    @property
    def opened(self) -> list[gr.components.Component]:
        """What opening a video sets: the status, the workspace, the slider, the frame's view, the objects, the
        overlay toggle and what the browser remembers."""
        return [self.status, self.ws, self.frame, *self.view, self.obj, self.overlay, self.remembered]


def build_page(server: Server) -> Page:
    """Lay the page out inside the current ``gr.Blocks``; return its components."""
    # this browser session's Workspace, closed (features freed, folder removed) when the session ends
    ws = gr.State(None, delete_callback=lambda w: w.close() if w is not None else None)
    corr = gr.State(None)
    # what to open again on a reload (a path under the root, or an upload's project), kept in the browser; the key
    # is the root's, so a restarted server still reads it (every value is checked against the root when used)
    remembered = gr.BrowserState("", storage_key="propagate-open-video",
                                 secret=hashlib.sha256(f"propagate serve {server.root}".encode()).hexdigest())
    gr.Markdown(f"**propagate**: label propagation with diffusion features. Features in use: {server.features_label}",
                elem_id="features")
    status = gr.Markdown("Open a video: a path under the server's root, or upload an mp4 or a zip of frames.",
                         elem_id="status")
    with gr.Tab("annotate", elem_id="tab-annotate"):
        with gr.Row(equal_height=True):
            path = gr.Textbox(show_label=False, placeholder=f"a video or frame folder under {server.root}",
                              elem_id="open-path", scale=4, max_lines=1, container=False)
            open_button = gr.Button("Open", elem_id="open-button", scale=1, size="sm")
            upload = gr.UploadButton("Upload (mp4, or a zip of frames)", file_types=UPLOAD_TYPES, elem_id="upload",
                                     scale=2, size="sm")
        with gr.Row(elem_id="toolbar", equal_height=True):
            prev = gr.Button("◀", elem_id="prev-frame", size="sm", scale=0, min_width=40)
            next_ = gr.Button("▶", elem_id="next-frame", size="sm", scale=0, min_width=40)
            play = gr.Button("Play", elem_id="play", size="sm", scale=0, min_width=60)
            stop = gr.Button("Stop", elem_id="stop", size="sm", scale=0, min_width=60)
            save = gr.Button("Save keyframe (S)", variant="primary", elem_id="save-keyframe", size="sm", scale=1)
            run = gr.Button("Propagate (P)", variant="primary", elem_id="propagate", size="sm", scale=1)
            cancel = gr.Button("Cancel", variant="stop", elem_id="cancel", size="sm", scale=0, min_width=70)
            undo = gr.Button("Undo", elem_id="undo", size="sm", scale=0, min_width=60)
            redo = gr.Button("Redo", elem_id="redo", size="sm", scale=0, min_width=60)
            overlay = gr.Checkbox(True, label="labels (O)", elem_id="overlay", scale=0, min_width=100, container=False)
        with gr.Row():
            with gr.Column(scale=5):
                editor = gr.ImageEditor(label="paint (B) / erase (E) the objects; save keyframe (S)", type="numpy",
                                        image_mode="RGBA", sources=(), transforms=(), layers=False, brush=brush(1),
                                        eraser=gr.Eraser(default_size=BRUSH_SIZE), height=560, format="png",
                                        elem_id="editor")
                points_view = gr.Image(label="click to place a named point", type="numpy", interactive=False,
                                       visible=False, height=560, format="png", elem_id="points-view")
                frame = gr.Slider(0, 1, value=0, step=1, label="frame", elem_id="frame")
                strip = gr.HTML(elem_id="strip")
            with gr.Column(scale=2, elem_id="sidebar"):
                mode = gr.Radio(["masks", "points"], value="masks", label="labels", elem_id="mode")
                obj = gr.Radio([("1 object 1", "1")], value="1", label="object (brush colour; keys 1-9)",
                               elem_id="object")
                with gr.Row():
                    obj_name = gr.Textbox(label="name", elem_id="object-name", max_lines=1, min_width=80)
                    obj_category = gr.Textbox(label="category (COCO)", elem_id="object-category", max_lines=1,
                                              min_width=80)
                with gr.Row():
                    add_obj = gr.Button("Add object", elem_id="add-object", min_width=60, size="sm")
                    rename_obj = gr.Button("Rename", elem_id="rename-object", min_width=60, size="sm")
                    delete_obj = gr.Button("Delete", elem_id="delete-object", min_width=60, size="sm")
                with gr.Row():
                    absent = gr.Button("Absent from here", elem_id="absent", min_width=60, size="sm")
                    remove = gr.Button("Remove keyframe", elem_id="remove-keyframe", min_width=60, size="sm")
                point_name = gr.Textbox(label="point name (click the frame to place or move it)", visible=False,
                                        elem_id="point-name")
                export = gr.Button("Export", elem_id="export", size="sm")
                downloads = gr.File(label="downloads (named after the video)", file_count="multiple",
                                    interactive=False, height=110, elem_id="downloads")
                gr.Markdown("Keys: " + "; ".join(f"**{k}** {what}" for k, what in SHORTCUTS), elem_id="shortcuts")

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
    return Page(ws=ws, corr=corr, remembered=remembered, status=status, path=path, open_button=open_button,
                upload=upload, frame=frame, strip=strip, prev=prev, next=next_, play=play, stop=stop, save=save,
                run=run, cancel=cancel, undo=undo, redo=redo, overlay=overlay, mode=mode, obj=obj, obj_name=obj_name,
                obj_category=obj_category, add_obj=add_obj, rename_obj=rename_obj, delete_obj=delete_obj,
                absent=absent, remove=remove, point_name=point_name, editor=editor, points_view=points_view,
                export=export, downloads=downloads, left_in=left_in, right_in=right_in, frame_a=frame_a,
                frame_b=frame_b, use_frames=use_frames, left_view=left_view, right_view=right_view,
                corr_result=corr_result, corr_mode=corr_mode, corr_name=corr_name, corr_clear=corr_clear,
                sticker=sticker)
