#!/usr/bin/env python
"""Benchmark DIFT-SD extraction: our batched path against a plain one-frame-at-a-time DIFT recipe.

Both run on a random-weight model with the real SD-2.1 (768-v) UNet and VAE architectures (built from the configs
below; nothing is downloaded) and the same noise (the same per-frame generator draws), so their fp32 features
must agree; the script prints the largest difference and frames/s of both, side by side.

- ours:  ``DiftSDExtractor`` - VAE encode once per frame, ensemble copies drawn from the posterior, copies of
  several frames batched through a UNet that stops after ``up_blocks[up_ft_index]``.
- plain: the reference recipe - the image repeated ``ensemble`` times, every copy VAE-encoded, sampled and
  noised, one frame per UNet call (also stopped after the feature block, as the reference does).

The prompt embedding is a random ``[1, 77, 1024]`` tensor given to both (only its shape matters here).

    python scripts/bench_extract.py                      # CPU default: 2 frames, 240x416, ensemble 4
    python scripts/bench_extract.py --size 480x832 --frames 2 --ensemble 8
    python scripts/bench_extract.py --device cuda        # + SD-2.1 at 480x832, ensemble 8, fp16 and bf16
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from propagate.features.common import frame_generator  # noqa: E402
from propagate.features.dift_sd import DiftSDExtractor, DiftSDOptions  # noqa: E402
from propagate.features.tiny_sd import SD21_SCHEDULER_CONFIG, SD21_UNET_CONFIG, SD_VAE_CONFIG  # noqa: E402

TEXT_SHAPE = (1, 77, 1024)


class _Stop(Exception):
    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


def _quiet_diffusers() -> None:
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()  # e.g. its warning on every dtype cast of a model


def build_random_sd(device: torch.device, seed: int):
    """Random-weight SD-2.1 UNet and VAE (fp32, on ``device``), its scheduler and a random prompt embedding."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD21_UNET_CONFIG).eval().requires_grad_(False)
        vae = AutoencoderKL(**SD_VAE_CONFIG).eval().requires_grad_(False)
    prompt_embeds = torch.randn(TEXT_SHAPE, generator=torch.Generator().manual_seed(seed))
    return unet, vae, DDIMScheduler(**SD21_SCHEDULER_CONFIG), prompt_embeds


class PlainDift:
    """The reference recipe, one frame at a time (written out here, independent of DiftSDExtractor)."""

    def __init__(self, unet, vae, scheduler, prompt_embeds, *, t: int, up_ft_index: int, ensemble: int,
                 seed: int, dtype: torch.dtype, device: torch.device) -> None:
        self.unet, self.vae, self.scheduler = unet.to(dtype), vae.to(dtype), scheduler
        self.t, self.ensemble, self.seed, self.dtype, self.device = t, ensemble, seed, dtype, device
        self.context = prompt_embeds.to(device, dtype).expand(ensemble, -1, -1)

        def stop(module, args, output):
            raise _Stop(output)

        self.handle = unet.up_blocks[up_ft_index].register_forward_hook(stop)

    @torch.inference_mode()
    def frame(self, image: torch.Tensor, frame_id: int) -> torch.Tensor:
        """``[3, H, W]`` in [0, 1] -> ``[C, h, w]`` float32."""
        gen = frame_generator(self.seed, frame_id)
        batch = (image.to(self.device) * 2 - 1)[None].repeat(self.ensemble, 1, 1, 1).to(self.dtype)
        posterior = self.vae.encode(batch).latent_dist  # every copy encoded
        latents = posterior.sample(generator=gen).float() * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        noisy = self.scheduler.add_noise(latents, noise, torch.tensor(self.t, device=self.device))
        try:
            self.unet(noisy.to(self.dtype), self.t, encoder_hidden_states=self.context)
        except _Stop as stop:
            return stop.output.float().mean(0)
        raise RuntimeError("the UNet never reached the feature block")

    def close(self) -> None:
        self.handle.remove()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_plain(plain: PlainDift, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, float]:
    _sync(device)
    start = time.perf_counter()
    feats = torch.stack([plain.frame(img, i) for i, img in enumerate(images)])
    _sync(device)
    return feats, time.perf_counter() - start


def time_ours(ext: DiftSDExtractor, images: torch.Tensor, frames_per_call: int,
              device: torch.device) -> tuple[torch.Tensor, float]:
    _sync(device)
    start = time.perf_counter()
    out = []
    for s in range(0, len(images), frames_per_call):
        chunk = images[s:s + frames_per_call]
        out.append(ext.extract(chunk, list(range(s, s + len(chunk)))))
    _sync(device)
    return torch.cat(out), time.perf_counter() - start


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def parity_and_speed(args: argparse.Namespace, device: torch.device) -> None:
    height, width = args.size
    print(f"[fp32 parity + speed] device={device} size={height}x{width} frames={args.frames} "
          f"ensemble={args.ensemble} t={args.t} up_ft_index={args.up_ft_index} batch_size={args.batch_size} "
          f"frames_per_call={args.frames_per_call}")
    t0 = time.perf_counter()
    unet, vae, scheduler, prompt = build_random_sd(device, args.seed)
    print(f"  built random SD-2.1 UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.0f} M params) and VAE "
          f"in {time.perf_counter() - t0:.1f} s")
    images = torch.rand(args.frames, 3, height, width, generator=torch.Generator().manual_seed(args.seed + 1))

    # The plain recipe runs first, on the intact UNet; our extractor then takes the same modules over.
    plain = PlainDift(unet, vae, scheduler, prompt, t=args.t, up_ft_index=args.up_ft_index,
                      ensemble=args.ensemble, seed=args.seed, dtype=torch.float32, device=device)
    plain.frame(images[0, :, :64, :64], 0)  # warm-up (kernels, allocator)
    ref, plain_s = time_plain(plain, images, device)
    plain.close()

    options = DiftSDOptions(model="random SD-2.1", t=args.t, up_ft_index=args.up_ft_index,
                            ensemble_size=args.ensemble, dtype="fp32", device=str(device), seed=args.seed,
                            batch_size=args.batch_size)
    ext = DiftSDExtractor.from_modules(unet, vae, scheduler, prompt, options)
    ext.extract(images[:1, :, :64, :64], [0])  # warm-up
    ours, ours_s = time_ours(ext, images, args.frames_per_call, device)

    diff = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    print(f"  features {list(ours.shape)}; max |ours - plain| = {diff:.3g} (max |plain| = {scale:.3g}, "
          f"relative {diff / max(scale, 1e-12):.2g})")
    print(f"  plain: {args.frames / plain_s:.4f} frames/s ({plain_s:.1f} s)")
    print(f"  ours : {args.frames / ours_s:.4f} frames/s ({ours_s:.1f} s)")
    print(f"  speed-up ours / plain: {plain_s / ours_s:.2f}x")
    if diff > 1e-3 * max(scale, 1e-12):
        print("  PARITY FAILED: the features differ by more than 1e-3 of their scale")
        sys.exit(1)


def gpu_throughput(args: argparse.Namespace, device: torch.device) -> None:
    """frames/s of SD-2.1 at 480x832, ensemble 8, fp16 and bf16: ours, and the plain recipe in fp16."""
    height, width, ensemble, frames = 480, 832, 8, args.gpu_frames
    images = torch.rand(frames, 3, height, width, generator=torch.Generator().manual_seed(args.seed + 2))
    print(f"[GPU throughput] SD-2.1 architecture, {height}x{width}, ensemble {ensemble}, {frames} frames, "
          f"up_ft_index {args.up_ft_index}, t {args.t}")
    for dtype in ("fp16", "bf16"):
        unet, vae, scheduler, prompt = build_random_sd(device, args.seed)
        if dtype == "fp16":
            plain = PlainDift(copy.deepcopy(unet), copy.deepcopy(vae), scheduler, prompt, t=args.t,
                              up_ft_index=args.up_ft_index, ensemble=ensemble, seed=args.seed,
                              dtype=torch.float16, device=device)
            plain.frame(images[0], 0)
            _, plain_s = time_plain(plain, images, device)
            print(f"  plain fp16: {frames / plain_s:.2f} frames/s")
            del plain
        for batch_size in args.gpu_batch_sizes:
            options = DiftSDOptions(model="random SD-2.1", t=args.t, up_ft_index=args.up_ft_index,
                                    ensemble_size=ensemble, dtype=dtype, device=str(device), seed=args.seed,
                                    batch_size=batch_size)
            ext = DiftSDExtractor.from_modules(copy.deepcopy(unet), copy.deepcopy(vae), scheduler, prompt, options)
            if args.channels_last:
                ext.unet.to(memory_format=torch.channels_last)
                ext.vae.to(memory_format=torch.channels_last)
            ext.extract(images[:2], [0, 1])
            feats, ours_s = time_ours(ext, images, args.frames_per_call, device)
            finite = bool(torch.isfinite(feats).all())
            line = f"  ours  {dtype} batch_size {batch_size:3d}: {frames / ours_s:.2f} frames/s"
            if dtype == "fp16":
                line += f" ({plain_s / ours_s:.2f}x plain fp16)"
            print(line + ("" if finite else "  [random weights overflowed: non-finite features]"))
            del ext
            torch.cuda.empty_cache()
        del unet, vae
        torch.cuda.empty_cache()
    print(f"  peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", type=parse_size, default=None,
                        help="HxW of the parity run (default: 480x832 on cuda, 240x416 on cpu)")
    parser.add_argument("--frames", type=int, default=None, help="frames of the parity run (default 2 cpu, 8 cuda)")
    parser.add_argument("--ensemble", type=int, default=None, help="ensemble size (default 4 on cpu, 8 on cuda)")
    parser.add_argument("--batch-size", type=int, default=8, help="our UNet batch (frames x copies)")
    parser.add_argument("--frames-per-call", type=int, default=4, help="frames per extract() call (ours)")
    parser.add_argument("--t", type=int, default=51)
    parser.add_argument("--up-ft-index", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gpu-frames", type=int, default=32, help="frames of the GPU throughput runs")
    parser.add_argument("--gpu-batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--channels-last", action="store_true", help="channels-last weights in the GPU runs")
    parser.add_argument("--skip-throughput", action="store_true", help="on cuda, only the fp32 parity run")
    args = parser.parse_args()
    _quiet_diffusers()

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.size = args.size or ((480, 832) if cuda else (240, 416))
    args.frames = args.frames or (8 if cuda else 2)
    args.ensemble = args.ensemble or (8 if cuda else 4)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name(device)}" if cuda else ""))
    if not cuda and args.size != (480, 832):
        print(f"note: CPU run at a reduced size {args.size[0]}x{args.size[1]} (the full 480x832 x ensemble 8 "
              f"takes minutes per frame on a small CPU; pass --size 480x832 --ensemble 8 to run it)")
    if cuda:  # exact fp32 for the parity run: no TF32 convolutions / matmuls
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    parity_and_speed(args, device)
    if cuda:
        torch.backends.cudnn.allow_tf32 = True
    if cuda and not args.skip_throughput:
        gpu_throughput(args, device)


if __name__ == "__main__":
    main()
