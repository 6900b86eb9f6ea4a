"""DIFT-ADM: the native ADM UNet (adm_net) against the official checkpoint's key list, and the extractor (adm) on
tiny checkpoints."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.features.adm import DiftADMExtractor, DiftADMOptions
from propagate.features.adm_net import ADMArch, ADMUNet, q_sample_coefficients, save_tiny_checkpoint, sidecar_path
from propagate.features.common import frame_generator
from propagate.features.dift_sd import frame_noise

KEYS_FILE = Path(__file__).parent / "data" / "adm_256x256_uncond_keys.json"

# Three levels (32, 64, 64 channels), one res block per level, attention at 1/2 and 1/4: six output blocks.
SMALL = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2,2",
             attention_resolutions="16,8", num_head_channels=8)
# Worked out by hand from the layout: per level (coarsest first) two output blocks, the second of which
# upsamples, except at the finest level.
SMALL_CHANNELS = [64, 64, 64, 64, 32, 32]
SMALL_STRIDES = [4, 2, 2, 1, 1, 1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("adm") / "small.pt", seed=0, **SMALL)


def _adm(**options) -> DiftADMExtractor:
    return DiftADMExtractor(DiftADMOptions(**options))


def _images(n: int = 3, h: int = 16, w: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- official layout


def test_state_dict_matches_official_256x256_uncond_keys():
    data = json.loads(KEYS_FILE.read_text())
    expected = [(name, list(shape)) for name, shape in data["keys"]]
    with torch.device("meta"):
        model = ADMUNet(ADMArch())
    ours = [(name, list(t.shape)) for name, t in model.state_dict().items()]
    assert len(ours) == data["num_keys"] == 566
    assert dict(ours) == dict(expected)  # every key, every shape
    assert [n for n, _ in ours] == [n for n, _ in expected]  # and in the checkpoint's order
    count = sum(int(np.prod(s)) for _, s in ours)
    assert count == data["num_parameters"] == 552_814_086


def test_extractor_defaults_are_the_256x256_uncond_model():
    params = {f.name: f for f in dataclasses.fields(DiftADMOptions)}
    for name, value in ADMArch().to_dict().items():
        assert params[name].default == value, name
    assert params["t"].default == 51 and params["up_ft_index"].default == 7 and params["ensemble_size"].default == 4
    assert params["diffusion_steps"].default == 1000 and params["noise_schedule"].default == "linear"
    assert DiftADMOptions().to_dict() == ADMArch().to_dict()


def test_arch_lists_from_yaml_are_the_reference_strings():
    assert ADMArch(channel_mult=[1, 2, 2], attention_resolutions=[16, 8]) == ADMArch(channel_mult="1,2,2",
                                                                                    attention_resolutions="16,8")
    assert ADMArch(attention_resolutions=32).attention_resolutions == "32"


def test_official_output_block_7_is_512_channels_at_one_eighth():
    with torch.device("meta"):
        model = ADMUNet(ADMArch())
        out = model(torch.empty(1, 3, 480, 832), torch.full((1,), 51.0), 7)
    assert model.output_channels[7] == 512 and model.output_strides[7] == 8
    assert tuple(out.shape) == (1, 512, 60, 104)
    assert ADMArch().size_multiple == 32


def test_linear_schedule_q_sample_coefficients():
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.prod(1 - betas[:52])  # t = 51 -> product over steps 0..51
    a, b = q_sample_coefficients("linear", 1000, 51)
    assert a == pytest.approx(np.sqrt(abar), rel=1e-6) and b == pytest.approx(np.sqrt(1 - abar), rel=1e-6)
    a, b = q_sample_coefficients("linear", 500, 0)  # the schedule scales with 1000 / steps
    assert b == pytest.approx(np.sqrt(2e-4), rel=1e-6)


# ---------------------------------------------------------------------------------------------- tiny extractor


def test_feature_shape_and_stride_per_output_block(small_ckpt):
    images = _images(2, 16, 24)
    for index, (channels, stride) in enumerate(zip(SMALL_CHANNELS, SMALL_STRIDES)):
        ext = _adm(model=str(small_ckpt), up_ft_index=index, ensemble_size=2, device="cpu")
        assert ext.stride == stride and ext.channels == channels
        feats = ext.extract(images, [0, 1])
        assert feats.shape == (2, channels, 16 // stride, 24 // stride) and feats.dtype == torch.float32
        assert torch.isfinite(feats).all()


def test_stops_after_the_chosen_output_block(small_ckpt):
    ext = _adm(model=str(small_ckpt), up_ft_index=2, ensemble_size=2, device="cpu")
    ran: list[str] = []
    modules = {f"output_blocks.{i}": block for i, block in enumerate(ext.unet.output_blocks)}
    modules.update({"middle_block": ext.unet.middle_block, "out": ext.unet.out})
    handles = [m.register_forward_hook(lambda *_, name=name: ran.append(name)) for name, m in modules.items()]
    try:
        ext.extract(_images(1), [0])
    finally:
        for handle in handles:
            handle.remove()
    assert ran == ["middle_block", "output_blocks.0", "output_blocks.1", "output_blocks.2"]


def test_size_multiple_is_the_networks_not_the_stride(small_ckpt):
    for index in (0, 5):
        ext = _adm(model=str(small_ckpt), up_ft_index=index, ensemble_size=1, device="cpu")
        assert ext.size_multiple == 4 and ext.stride == SMALL_STRIDES[index]  # three levels: halved twice


def test_noise_is_the_rule_dift_sd_uses(small_ckpt):
    ext = _adm(model=str(small_ckpt), up_ft_index=0, ensemble_size=3, seed=7, device="cpu")
    noise = ext.noise([4, 9], 16, 24)
    assert noise.shape == (2, 3, 3, 16, 24) and noise.dtype == torch.float32
    for row, fid in enumerate([4, 9]):
        expected = torch.randn((3, 3, 16, 24), generator=frame_generator(7, fid))
        assert torch.equal(noise[row], expected)
        # DIFT-SD's first draw of the same frame, for latents of the same shape, is the same stream.
        assert torch.equal(frame_noise(7, fid, 3, (3, 16, 24))[0], expected)


def test_matches_a_plain_reference_computation(small_ckpt):
    ext = _adm(model=str(small_ckpt), t=51, up_ft_index=3, ensemble_size=3, seed=7, device="cpu")
    images = _images(2)
    feats = ext.extract(images, [4, 9])
    abar = np.prod(1 - np.linspace(1e-4, 0.02, 1000)[:52])
    for row, fid in enumerate([4, 9]):
        eps = ext.noise([fid], 16, 24)[0]  # [E, 3, H, W]
        x_t = np.sqrt(abar) * (images[row] * 2 - 1) + np.sqrt(1 - abar) * eps
        with torch.no_grad():
            per_copy = ext.unet(x_t.float(), torch.full((3,), 51.0), 3)
        torch.testing.assert_close(feats[row], per_copy.mean(0), rtol=1e-4, atol=1e-5)


def test_determinism_and_batching_independence(small_ckpt):
    images = _images(3)
    a = _adm(model=str(small_ckpt), up_ft_index=1, ensemble_size=3, seed=0, device="cpu", batch_size=8)
    b = _adm(model=str(small_ckpt), up_ft_index=1, ensemble_size=3, seed=0, device="cpu", batch_size=2)
    together = a.extract(images, [10, 11, 12])
    assert torch.equal(together, a.extract(images, [10, 11, 12]))  # same seed, same result
    one_by_one = torch.cat([b.extract(images[i : i + 1], [10 + i]) for i in range(3)])
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-5)
    # The noise follows the frame id, not the position in the batch.
    torch.testing.assert_close(a.extract(images[[2, 0]], [12, 10]), together[[2, 0]], rtol=1e-5, atol=1e-5)
    other_seed = _adm(model=str(small_ckpt), up_ft_index=1, ensemble_size=3, seed=1, device="cpu")
    assert not torch.allclose(other_seed.extract(images, [10, 11, 12]), together)
    assert not torch.allclose(a.extract(images[:1], [99]), together[:1])


def test_bf16_close_to_fp32(small_ckpt):
    images = _images(2)
    kwargs = dict(model=str(small_ckpt), up_ft_index=3, ensemble_size=2, device="cpu")
    full = _adm(dtype="fp32", **kwargs).extract(images, [0, 1])
    half = _adm(dtype="bf16", **kwargs)
    assert half.unet.input_blocks[0][0].weight.dtype == torch.bfloat16
    assert half.unet.time_embed[0].weight.dtype == torch.float32  # timestep MLP and norms stay fp32
    low = half.extract(images, [0, 1])
    assert low.dtype == torch.float32
    rel = (low - full).norm() / full.norm()
    assert rel < 0.05
    cos = torch.nn.functional.cosine_similarity(low.flatten(1), full.flatten(1)).min()
    assert cos > 0.995


def test_sidecar_supplies_the_architecture_and_settings_record_it(small_ckpt):
    ext = build_extractor("adm", {"model": str(small_ckpt), "up_ft_index": 5, "ensemble_size": 1, "device": "cpu"})
    assert isinstance(ext, DiftADMExtractor) and ext.name == "adm"
    settings = ext.settings()
    assert settings["num_channels"] == 32 and settings["channel_mult"] == "1,2,2" and settings["up_ft_index"] == 5
    assert settings["dtype"] == "fp32" and "device" not in settings and "batch_size" not in settings
    json.dumps(settings)
    assert "output block 5" in ext.describe()


def test_tiny_default_checkpoint_keeps_the_official_layout(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "tiny.pt")
    assert sidecar_path(path).is_file()
    ext = _adm(model=str(path), ensemble_size=1, device="cpu")  # preset defaults: t 51, block 7
    assert ext.stride == 8 and len(ext.unet.output_blocks) == 18
    assert ext.size_multiple == 32  # six levels: the frame is halved five times, although features are at 1/8
    assert ext.extract(_images(1, 32, 64), [0]).shape == (1, 32, 4, 8)


# ---------------------------------------------------------------------------------------------- errors


def _one_line_error(match: str, **kwargs) -> str:
    with pytest.raises(PropagateError, match=match) as info:
        _adm(device="cpu", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_or_wrong_checkpoint_errors(small_ckpt, tmp_path):
    assert "256x256_diffusion_uncond.pt" in _one_line_error("--model PATH")
    missing = tmp_path / "nope.pt"
    assert str(missing) in _one_line_error("does not exist", model=str(missing))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    assert "expected" in _one_line_error("not a readable PyTorch", model=str(garbage))
    not_tensors = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_tensors)
    _one_line_error("state dict of tensors", model=str(not_tensors))
    # A checkpoint without its side-car is read with the 256x256 defaults and does not match them.
    bare = tmp_path / "bare.pt"
    bare.write_bytes(small_ckpt.read_bytes())
    message = _one_line_error("does not match the architecture", model=str(bare))
    assert str(bare) in message and "missing key(s)" in message and "mis-shaped" in message
    assert "num_channels=256" in message  # says what it expected
    # The same checkpoint with the right options loads.
    ext = _adm(model=str(bare), device="cpu", up_ft_index=0, **SMALL)
    assert ext.channels == 64
    # ... also given as a preset would (YAML lists for channel_mult and attention_resolutions), and they are
    # recorded as the reference's strings.
    yaml_options = {**SMALL, "channel_mult": [1, 2, 2], "attention_resolutions": [16, 8]}
    ext = build_extractor("adm", {"model": str(bare), "device": "cpu", "up_ft_index": 0, **yaml_options})
    assert ext.channels == 64 and ext.settings()["channel_mult"] == "1,2,2"
    with pytest.raises(PropagateError, match=r"^extractor\.num_channels='32' .*integer") as info:
        build_extractor("adm", {"model": str(bare), **SMALL, "num_channels": "32"})
    assert "\n" not in str(info.value)


def test_option_errors(small_ckpt):
    _one_line_error("up_ft_index 6 is out of range", model=str(small_ckpt), up_ft_index=6)
    _one_line_error("ensemble_size=0", model=str(small_ckpt), ensemble_size=0)
    _one_line_error("seed=-1", model=str(small_ckpt), seed=-1)
    _one_line_error("outside the schedule", model=str(small_ckpt), t=1000)
    _one_line_error("dtype", model=str(small_ckpt), dtype="fp8")
    _one_line_error("noise_schedule", model=str(small_ckpt), noise_schedule="quadratic")
    ext = _adm(model=str(small_ckpt), up_ft_index=0, ensemble_size=1, device="cpu")
    with pytest.raises(PropagateError, match="multiple of 4"):
        ext.extract(torch.rand(1, 3, 18, 24), [0])


# ---------------------------------------------------------------------------------------------- end to end


def test_davis_preset_runs_end_to_end_on_a_tiny_checkpoint(tmp_path):
    """`propagate run` and `propagate eval davis` with --features adm and a saved tiny checkpoint (Python API)."""
    from propagate.config import load_config
    from propagate.datasets.davis import evaluate_davis
    from propagate.datasets.synthetic_davis import make_synthetic_davis
    from propagate.runs import run_video

    ckpt = save_tiny_checkpoint(tmp_path / "tiny.pt")
    root = tmp_path / "davis"
    make_synthetic_davis(root, num_sequences=1, num_frames=4, size=(128, 64), seed=0)
    config = load_config("davis_adm", [f"extractor.model={ckpt}", "extractor.ensemble_size=1", "resize.short_side=64"])
    assert config.features == "adm" and config.propagation.temperature == 0.1 and config.propagation.topk == 10

    seq = "synth-00"
    frames = sorted((root / "JPEGImages" / "480p" / seq).iterdir())
    summary = run_video(root / "JPEGImages" / "480p" / seq, root / "Annotations" / "480p" / seq / "00000.png",
                        tmp_path / "run", config, render=False, progress=False)
    assert summary["frames"] == len(frames) == 4
    assert "adm (tiny.pt" in summary["features"]
    assert sorted(p.stem for p in (tmp_path / "run").glob("*.png")) == [p.stem for p in frames]

    scores = evaluate_davis(root, tmp_path / "eval", config, progress=False)
    assert 0.0 <= scores["global"]["J&F-Mean"] <= 1.0
    run_info = json.loads(Path(scores["run_info"]).read_text())
    assert run_info["features"] == "adm" and '"num_channels": 32' in json.dumps(run_info)  # the tiny arch is recorded
