"""A tiny random-weight Stable Diffusion 2.1 look-alike, written as a complete diffusers folder.

Tests load it through exactly the same ``from_pretrained`` code path as the real model. It keeps SD-2.1's block
layout, so indices mean the same thing on both:

- UNet: down blocks 3 x CrossAttnDownBlock2D + DownBlock2D; up blocks UpBlock2D + 3 x CrossAttnUpBlock2D.
  ``up_blocks[2]`` is the second cross-attention up block; its output is at 1/8 of the image with
  ``block_out_channels[1]`` (here 32) channels, like SD-2.1's 640 channels at 1/8.
- VAE: AutoencoderKL with 4 encoder blocks (downsampling factor 8) and 4 latent channels.
- Text encoder: a 2-layer CLIP text model (hidden size 32) with a small byte-level BPE vocabulary written here.
- Scheduler: DDIM with SD-2.1's v-prediction config (scaled_linear betas 0.00085..0.012, 1000 steps).

Only the channel widths and depths are shrunk. The whole folder is about 2 MB and runs in milliseconds on a CPU.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# SD-2.1's unet/config.json (the 768 v-prediction model): the layout the tiny model keeps.
SD21_UNET_CONFIG = {
    "sample_size": 96,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    # diffusers reads attention_head_dim as the number of heads when num_attention_heads is unset (as SD-2.1 does).
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "upcast_attention": True,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "act_fn": "silu",
}

# The SD VAE (vae/config.json of SD-2.1; the same autoencoder as SD-1.x).
SD_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 768,
    "act_fn": "silu",
    "scaling_factor": 0.18215,
}

# The tiny model: the same blocks, shrunk widths and depths. SD-2.1 has [320, 640, 1280, 1280].
TINY_UNET_CHANNELS = [16, 32, 48, 48]
TINY_TEXT_DIM = 32
TINY_UNET_CONFIG = {**SD21_UNET_CONFIG, "sample_size": 12, "block_out_channels": TINY_UNET_CHANNELS,
                    "layers_per_block": 1, "attention_head_dim": [2, 2, 4, 4], "cross_attention_dim": TINY_TEXT_DIM,
                    "norm_num_groups": 8}
TINY_VAE_CONFIG = {**SD_VAE_CONFIG, "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4,
                   "sample_size": 64}

# SD-2.1's scheduler/scheduler_config.json (the 768 v-prediction model).
SD21_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
}

TEXT_MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A handful of merges so that the BPE has real merge rules to apply; the result tokens are added to the vocab.
TINY_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("o", "n</w>")]


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for the bytes 0..255 used by byte-level BPE (GPT-2 / CLIP convention):
    printable Latin-1 bytes map to themselves, the rest to code points from 256 upwards, in byte order."""
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(ord("¡"), ord("¬") + 1)) | set(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for b in range(256):
        if b in keep:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def tiny_vocab() -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merge lines of the tiny tokenizer: every byte symbol alone and word-final, the merge
    results, then the two special tokens (the order CLIP's own vocabulary uses)."""
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in TINY_MERGES] + [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    merges = [f"{a} {b}" for a, b in TINY_MERGES]
    return vocab, merges


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_tokenizer(folder: Path) -> int:
    """Write vocab.json, merges.txt and the configs of a CLIP tokenizer; return the vocabulary size."""
    vocab, merges = tiny_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "vocab.json", vocab)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    # SD-2.1 pads with "!" (OpenCLIP's convention); keep that.
    _write_json(folder / "special_tokens_map.json",
                {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": "!"})
    _write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": TEXT_MAX_LENGTH, "do_lower_case": True,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": "!",
    })
    return len(vocab)


def make_tiny_sd(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny random-weight SD-2.1-layout diffusers folder into ``folder`` and return its path.

    The weights depend only on ``seed`` (the global torch RNG is left untouched). Existing files of the same
    names are overwritten.
    """
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from propagate.features.dift_sd import quiet_hf_loading

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = _write_tokenizer(folder / "tokenizer")
    vocab, _ = tiny_vocab()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**TINY_VAE_CONFIG)
        torch.manual_seed(seed + 2)
        text_config = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TINY_TEXT_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=TEXT_MAX_LENGTH,
            projection_dim=TINY_TEXT_DIM,
            hidden_act="gelu",
            bos_token_id=vocab[BOS],
            eos_token_id=vocab[EOS],
            pad_token_id=vocab["!"],
        )
        text_encoder = CLIPTextModel(text_config)

    with quiet_hf_loading():
        unet.save_pretrained(folder / "unet")
        vae.save_pretrained(folder / "vae")
        text_encoder.save_pretrained(folder / "text_encoder")
        DDIMScheduler(**SD21_SCHEDULER_CONFIG).save_pretrained(folder / "scheduler")
    _write_json(folder / "model_index.json", {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    return folder


__all__ = ["make_tiny_sd", "TINY_UNET_CONFIG", "TINY_VAE_CONFIG", "SD21_UNET_CONFIG", "SD_VAE_CONFIG",
           "SD21_SCHEDULER_CONFIG", "tiny_vocab"]
