"""``propagate serve``: a local web app over the session API (annotate, propagate, correct, export) and the DIFT
paper's click-to-correspond demo.

The web libraries are an optional extra (``pip install -e ".[app]"``): importing this package needs none of them;
:func:`serve` imports the page (:mod:`propagate.app.ui`, Gradio) when it starts: its layout
(:mod:`propagate.app.layout`) and handlers (:mod:`propagate.app.handlers`) over one browser session's work
(:mod:`propagate.app.workspace`) and what needs no web (:mod:`propagate.app.core`).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from propagate.app.core import Server, resolve_under_root
from propagate.config import Config
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.features.base import FeatureExtractor
from propagate.features.fallback import dift_or_baseline

DEFAULT_UPLOAD_MB = 500

# A local tool: no calls home. Set when this package loads, before any of its modules imports gradio.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def features_label(extractor: FeatureExtractor, reason: str | None = None) -> str:
    """What the page says about the features: the baseline is labelled as not DIFT (as the demo does)."""
    if extractor.name == "baseline":
        why = f" ({reason})" if reason else ""
        return f"**BASELINE features, not DIFT**{why}: {extractor.describe()}"
    return extractor.describe()


def choose_extractor(config: Config, fallback: bool) -> tuple[Config, FeatureExtractor, str]:
    """Build the configured extractor; with ``fallback`` (no features chosen by the user) a DIFT model whose
    weights cannot be had gives way to the baseline, said so in one line and on the page."""
    if not fallback:
        extractor = build_extractor(config.features, config.extractor)
        return config, extractor, features_label(extractor)
    config, extractor, label = dift_or_baseline(config, "serving with")
    return config, extractor, features_label(extractor, "DIFT weights unavailable" if label else None)


def serve(config: Config, *, video: str | Path | None = None, root: str | Path = ".", host: str = "127.0.0.1",
          port: int = 7860, max_upload_mb: int = DEFAULT_UPLOAD_MB, fallback: bool = False,
          block: bool = True) -> None:
    """Start the app on ``host:port`` (127.0.0.1 unless told otherwise) and serve until interrupted.

    Args:
        config: the settings every session uses (a preset with the command's flags).
        video: opened in every new browser session; must lie under ``root``.
        root: the only folder whose files the app opens by path.
        max_upload_mb: uploads larger than this are refused.
        fallback: build the baseline extractor if the configured one cannot be loaded (see :func:`choose_extractor`).
        block: serve until interrupted (False: return once started, for tests).
    """
    root_path = Path(root).resolve()
    if not root_path.is_dir():
        raise PropagateError(f"--root {root} is not a folder")
    video_path = None
    if video is not None:
        video_path = Path(video).resolve()
        if not video_path.is_relative_to(root_path):
            raise PropagateError(f"video {video} is outside --root {root_path}: give --root a folder that holds it")
        resolve_under_root(root_path, str(video_path))  # exists
    try:
        from propagate.app.ui import build_app, launch_options
    except ImportError as exc:
        raise PropagateError(f"the web app needs the app extra ({exc.name} is missing): "
                             "pip install -e \".[app]\"") from None
    config, extractor, label = choose_extractor(config, fallback)
    work = Path(tempfile.mkdtemp(prefix="propagate-serve-"))
    server = Server(config=config, extractor=extractor, root=root_path, work=work, features_label=label,
                    max_upload_bytes=max_upload_mb * 2**20, video=video_path)
    app = build_app(server)
    print(f"propagate serve: http://{host}:{port}  (root {root_path}; features: {label.replace('**', '')})", flush=True)
    try:
        app.queue().launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb}mb", ssr_mode=False,
                           prevent_thread_lock=not block, quiet=True, show_error=False, footer_links=[],
                           **launch_options())
    finally:
        if block:
            shutil.rmtree(work, ignore_errors=True)
