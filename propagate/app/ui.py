"""The page of ``propagate serve`` (Gradio): annotate, propagate, correct and export a video; click to correspond.

The layout is :mod:`propagate.app.layout` (components, no behaviour), the behaviour :mod:`propagate.app.handlers`
(each handler a few lines over the workspace and :mod:`propagate.app.core`).
"""
from __future__ import annotations

import gradio as gr

from propagate.app.core import Server
from propagate.app.handlers import wire
from propagate.app.layout import PAGE_HEAD, build_page, page_css

__all__ = ["Server", "build_app", "launch_options"]


def build_app(server: Server) -> gr.Blocks:
    """The page: an "annotate" tab (open, scrub, paint, propagate, correct, export) and a "correspond" tab."""
    with gr.Blocks(title="propagate", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        wire(app, build_page(server), server)
    return app


def launch_options() -> dict[str, str]:
    """What ``launch`` takes besides the server's settings: the page's style and its keyboard shortcuts."""
    return {"css": page_css(), "head": PAGE_HEAD}
