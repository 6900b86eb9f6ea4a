"""The app's project folder: what a user did on one video (keyframes, absences, object names and categories, the
page's settings and the latest results), kept under the server's ``--root`` so it survives a reload or a restart.

One folder per video, ``<root>/propagate-projects/<key>/``, in the tool's own files only (the video is never
touched; an upload is copied in, so a reload can open it again)::

    project.json            the video, its frames' names, objects, keyframes (file, objects), absences, settings
    keyframes/<frame>.png   each keyframe's mask (indexed PNG, DAVIS palette)
    results/<frame>.png     the latest propagated masks; results.json their confidences and absences
    upload<suffix>          an uploaded video (or zip of frames), copied in

Every file is written whole, beside its place, then moved into place (:mod:`propagate.io`), so a crash leaves the
previous version. No gradio here.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from propagate.errors import PropagateError
from propagate.io import atomic_path, atomic_write_json
from propagate.labels import read_mask, write_mask

PROJECTS = "propagate-projects"  # the folder under --root that holds the projects
VERSION = 1


@dataclass
class Project:
    """What is kept of one video's work. Frames are indices; masks ``[H, W]`` uint8."""

    video: str  # the video as opened: a path relative to the root, or the upload's file name
    upload: bool  # the video is an upload (copied into the folder)
    names: list[str]  # the video's frame names (a project is restored only onto the same frames)
    objects: dict[int, tuple[str, str]] = field(default_factory=dict)  # object -> (name, category)
    keyframes: dict[int, tuple[np.ndarray, list[int] | None]] = field(default_factory=dict)  # mask, its objects
    absent: dict[int, list[int]] = field(default_factory=dict)  # frame -> objects absent from there
    settings: dict[str, object] = field(default_factory=dict)  # frame, object, overlay, ...
    results: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> propagated mask
    confidence: dict[int, dict[int, float]] = field(default_factory=dict)  # frame -> object -> confidence
    result_absent: dict[int, list[int]] = field(default_factory=dict)  # frame -> objects absent on it


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "video"


def path_key(relative: str) -> str:
    """The folder name of the project of a video opened by path (``relative`` to the root)."""
    digest = hashlib.sha1(relative.encode("utf-8")).hexdigest()[:8]
    return f"{_slug(relative)}-{digest}"


def upload_key(upload: Path) -> str:
    """The folder name of the project of an uploaded file: its name and a digest of its content."""
    digest = hashlib.sha1()
    with open(upload, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"upload-{_slug(upload.stem)}-{digest.hexdigest()[:10]}"


def project_folder(root: Path, key: str) -> Path:
    """``<root>/propagate-projects/<key>``; a key that is not a plain folder name is refused."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", key or "") or key.startswith("."):
        raise PropagateError(f"project {key!r} is not a project name: open the video again")
    return Path(root) / PROJECTS / key


def _frame_file(names: list[str], index: int) -> str:
    return f"{Path(names[index]).stem}.png"


def save_project(folder: Path, project: Project, results: bool = False) -> None:
    """Write ``project`` into ``folder`` (keyframe masks, then ``project.json``; with ``results``, the result masks
    and ``results.json`` first). Files of keyframes that are gone are removed (the project's own files)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = project.names
    if results:
        for index, mask in sorted(project.results.items()):
            write_mask(folder / "results" / _frame_file(names, index), mask)
        atomic_write_json(folder / "results.json", {
            "frames": sorted(project.results),
            "confidence": {str(i): {str(o): c for o, c in sorted(conf.items())}
                           for i, conf in sorted(project.confidence.items())},
            "absent": {str(i): sorted(a) for i, a in sorted(project.result_absent.items()) if a}})
    keep = set()
    for index, (mask, _) in sorted(project.keyframes.items()):
        name = _frame_file(names, index)
        keep.add(name)
        path = folder / "keyframes" / name
        if not (path.is_file() and np.array_equal(read_mask(path), mask)):
            write_mask(path, mask)
    atomic_write_json(folder / "project.json", {
        "version": VERSION, "video": project.video, "upload": project.upload, "frames": len(names),
        "names": names,
        "objects": {str(o): {"name": name, "category": category}
                    for o, (name, category) in sorted(project.objects.items())},
        "keyframes": {str(i): {"file": f"keyframes/{_frame_file(names, i)}", "objects": objs}
                      for i, (_, objs) in sorted(project.keyframes.items())},
        "absent": {str(i): sorted(a) for i, a in sorted(project.absent.items()) if a},
        "settings": project.settings})
    for stale in sorted((folder / "keyframes").glob("*.png")) if (folder / "keyframes").is_dir() else []:
        if stale.name not in keep:
            stale.unlink()


def load_project(folder: Path, names: list[str]) -> Project | None:
    """The project kept in ``folder`` for a video with frames ``names``; None if there is none. A project of other
    frames, or one whose files cannot be read, is refused in one line naming the folder and the fix."""
    path = folder / "project.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, not {VERSION}")
        if list(data["names"]) != list(names):
            raise PropagateError(f"project {folder} was saved for other frames ({data['frames']} frames) than the "
                                 f"video has now ({len(names)}): move that folder away to start afresh")
        project = Project(video=str(data["video"]), upload=bool(data["upload"]), names=list(names),
                          objects={int(o): (str(v["name"]), str(v.get("category") or "object"))
                                   for o, v in data["objects"].items()},
                          absent={int(i): [int(o) for o in a] for i, a in data.get("absent", {}).items()},
                          settings=dict(data.get("settings", {})))
        for i, entry in data["keyframes"].items():
            objs = entry.get("objects")
            project.keyframes[int(i)] = (read_mask(folder / entry["file"]),
                                         None if objs is None else [int(o) for o in objs])
        if (folder / "results.json").is_file():
            res = json.loads((folder / "results.json").read_text(encoding="utf-8"))
            for i in res["frames"]:
                project.results[int(i)] = read_mask(folder / "results" / _frame_file(names, int(i)))
            project.confidence = {int(i): {int(o): float(c) for o, c in conf.items()}
                                  for i, conf in res.get("confidence", {}).items()}
            project.result_absent = {int(i): [int(o) for o in a] for i, a in res.get("absent", {}).items()}
    except PropagateError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PropagateError(f"project {folder} cannot be read ({exc}): move that folder away to start "
                             "afresh") from None
    return project


def copy_upload(upload: Path, folder: Path) -> Path:
    """Copy an uploaded file into the project ``folder`` (once) as ``upload<suffix>``; return the copy."""
    target = folder / f"upload{upload.suffix.lower()}"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp, open(upload, "rb") as src, open(tmp, "wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                dst.write(chunk)
    return target
