"""Shared fixtures: a tiny random-weight SD model and small synthetic clips with known masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from propagate.demo import demo_frames
from propagate.labels import write_mask


@pytest.fixture(scope="session", autouse=True)
def plain_cpu_dtype():
    """``dtype: auto`` resolves as on a CPU without bf16 units (fp32), so results do not depend on the test machine's
    CPU (session-wide, before any module fixture builds an extractor); tests of the bf16 rule patch
    :func:`propagate.device.cpu_has_bf16_units` themselves."""
    import propagate.device as device

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(device, "cpu_has_bf16_units", lambda: False)
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models' ops are far too small for intra-op threads: one thread is as fast, and much faster when other
    jobs share the cores. Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD-2.1-layout diffusers folder, built the same way as `scripts/make_tiny_model.py`."""
    from propagate.features.tiny_sd import make_tiny_sd

    return make_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "model")


def write_clip(folder: Path, num_frames: int = 6,
               size: tuple[int, int] = (192, 128)) -> tuple[Path, Path, list[np.ndarray]]:
    """A folder of jpg frames of the demo scene, its first-frame mask, and every frame's true mask."""
    frames_dir = folder / "frames"
    frames_dir.mkdir(parents=True)
    masks = []
    for index, (image, mask) in enumerate(demo_frames(num_frames, size, seed=1)):
        Image.fromarray(image).save(frames_dir / f"{index:05d}.jpg", quality=95)
        masks.append(mask)
    mask_path = folder / "first.png"
    write_mask(mask_path, masks[0])
    return frames_dir, mask_path, masks


@pytest.fixture
def clip(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray]]:
    return write_clip(tmp_path)


def damaged_zip(path: Path, files: list[Path], compression: int = 0) -> Path:
    """A zip of ``files`` (``compression``: a zipfile constant, default stored) whose second member has one byte of
    its data flipped, so its CRC fails (stored) or its compressed data is broken (deflated) when unpacked."""
    import struct
    import zipfile

    with zipfile.ZipFile(path, "w", compression) as zf:
        for file in files:
            zf.write(file, file.name)
    with zipfile.ZipFile(path) as zf:
        member = zf.infolist()[1]
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[member.header_offset + 26:member.header_offset + 30])
    start = member.header_offset + 30 + name_len + extra_len  # the member's data, after its local header
    data[start + member.compress_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path
