"""The built wheel works on its own: presets inside it, the CLI runs from a folder outside the repository.

A wheel (not an editable install) of the repository is installed into a temporary folder, which is the only
place Python finds ``propagate`` in (``PYTHONPATH``); the dependencies come from the running environment.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _why_no_wheel() -> str | None:
    """Why a wheel cannot be built here (``--no-build-isolation`` needs pip and setuptools installed), or None."""
    if not (REPO / "setup.cfg").is_file():
        return "not a source checkout (no setup.cfg next to tests/)"
    for module in ("pip", "setuptools"):
        if importlib.util.find_spec(module) is None:
            return f"pip wheel is unavailable: {module} is not installed in {sys.prefix}"
    return None


pytestmark = pytest.mark.skipif(_why_no_wheel() is not None, reason=_why_no_wheel() or "")


def _pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args, "--no-input", "--disable-pip-version-check", "-q"],
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pip {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A folder holding ``propagate`` installed from a freshly built wheel."""
    work = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the sources: a build in the checkout would leave build/ there (whose stale files a later
    # wheel would pick up) while others work in it.
    src = work / "src"
    src.mkdir()
    for item in REPO.iterdir():
        if item.is_file():
            shutil.copy2(item, src / item.name)
    shutil.copytree(REPO / "propagate", src / "propagate", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _pip("wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), cwd=work)
    wheels = list((work / "dist").glob("propagate-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as archive:
        shipped = sorted(Path(n).stem for n in archive.namelist()
                         if n.startswith("propagate/configs/") and n.endswith(".yaml"))
        assert shipped == sorted(p.stem for p in (REPO / "propagate" / "configs").glob("*.yaml"))
        shipped_sd = archive.read("propagate/configs/davis_sd.yaml")
        assert shipped_sd == (REPO / "propagate" / "configs" / "davis_sd.yaml").read_bytes()
    target = work / "site"
    _pip("install", "--no-deps", "--target", str(target), str(wheels[0]), cwd=work)
    return target


def _python(args: list[str], target: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PROPAGATE_VIDEO_READER")}
    env.update(PYTHONPATH=str(target), HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_wheel_imports_from_its_folder_and_loads_every_preset(installed, tmp_path):
    script = (
        "import json, propagate\n"
        "from propagate.config import CONFIG_DIR, load_config\n"
        "names = sorted(p.stem for p in CONFIG_DIR.glob('*.yaml'))\n"
        "configs = {n: load_config(n).features for n in names}\n"
        "print(json.dumps({'file': propagate.__file__, 'config_dir': str(CONFIG_DIR), 'presets': configs}))\n"
    )
    done = _python(["-c", script], installed, tmp_path)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).resolve().is_relative_to(installed.resolve())
    assert Path(seen["config_dir"]).resolve() == (installed / "propagate" / "configs").resolve()
    assert sorted(seen["presets"]) == sorted(p.stem for p in (REPO / "propagate" / "configs").glob("*.yaml"))
    assert seen["presets"]["davis_sd"] == "dift_sd" and seen["presets"]["davis_baseline"] == "baseline"


def test_wheel_cli_run_writes_one_mask_per_frame(installed, tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    for i in range(4):  # a bright square moving right on a dark ground
        frame = np.full((64, 64, 3), 30, np.uint8)
        frame[20:40, 10 + 3 * i:30 + 3 * i] = (220, 60, 40)
        Image.fromarray(frame).save(clip / f"{i:05d}.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 10:30] = 1
    first = Image.fromarray(mask, mode="P")
    first.putpalette([0, 0, 0, 128, 0, 0] + [0] * (256 * 3 - 6))
    first.save(tmp_path / "first.png")
    out = tmp_path / "out"
    done = _python(["-m", "propagate.cli", "run", str(clip), "--mask", str(tmp_path / "first.png"), "--out", str(out),
                    "--config", "davis_baseline", "--no-video", "--set", "resize.short_side=64"], installed, tmp_path)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(4)]
    for i in range(4):
        with Image.open(out / f"{i:05d}.png") as img:
            assert img.mode == "P" and img.size == (64, 64)
            assert (np.array(img) == 1).any()  # the object is still there
