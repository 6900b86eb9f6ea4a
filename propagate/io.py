"""Atomic file writes and output-folder checks shared by every writer.

Every output file is written to a temporary name in the same folder and renamed into place, so an interrupted
run never leaves a truncated file that looks complete. A folder of results is marked finished by a
``.complete`` file written last.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from propagate.errors import PropagateError

COMPLETE_MARK = ".complete"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    The temporary name keeps ``path``'s suffix so that writers that pick a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes files private; results are ordinary files
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def is_complete(folder: str | Path) -> bool:
    """True if ``folder`` holds a finished set of results (its ``.complete`` mark exists)."""
    return (Path(folder) / COMPLETE_MARK).is_file()


def mark_complete(folder: str | Path, info: dict[str, Any] | None = None) -> None:
    """Mark ``folder`` finished; call only after every other file in it is written."""
    atomic_write_json(Path(folder) / COMPLETE_MARK, info or {})


def prepare_output_dir(folder: str | Path, overwrite: bool = False) -> Path:
    """Make ``folder`` ready for a fresh set of results.

    A folder that already holds files is an error unless ``overwrite`` is set, in which case it is emptied.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PropagateError(f"output {folder} exists and is not a folder: choose another --out")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise PropagateError(f"output folder {folder} already holds results: pass --overwrite to replace them, or choose another --out")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def results_folder(folder: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """An empty output folder (see :func:`prepare_output_dir`) that is removed if the body fails, so a run that
    stops midway never leaves results that look complete."""
    out = prepare_output_dir(folder, overwrite)
    try:
        yield out
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
