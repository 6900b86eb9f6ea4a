#!/usr/bin/env python
"""What reduced precision costs and buys: DIFT features in fp32 vs bf16 (and fp16 on CUDA), side by side.

For SD-2.1's real architecture (UNet and VAE built from SD-2.1's configs, random weights; nothing is downloaded)
and ADM's full 256x256-uncond architecture (random weights), at one frame size (default 480x832, DAVIS), it
prints per model and dtype:

- wall and process-CPU time per frame (``--ensemble`` noised copies, default 1; DIFT's DAVIS settings use 8 for SD
  and 4 for ADM, and time grows about linearly with it), measured in one run after a warm-up;
- the relative feature error ``||f - f_fp32|| / ||f_fp32||`` over two frames;
- the share of top-15 neighbours that change: per query position of frame A, the 15 positions of frame B whose
  (l2-normalised) features are most similar, compared with the fp32 set (``1 - |S & S_fp32| / 15``, averaged).

Frames are two frames of the synthetic demo clip (textured moving objects), resized to ``--size``. The numbers
are for random weights: real weights have other activation ranges, so treat the errors as an indication of the
precision's effect on this architecture, not as the trained model's. The noise is the same in every dtype (drawn
in fp32 from the per-frame generator), so differences come from the dtype alone.

    python scripts/bench_precision.py                       # 480x832 (slow on a small CPU)
    python scripts/bench_precision.py --size 224x416        # a quicker CPU run (ADM: sides multiples of 32)
    python scripts/bench_precision.py --device cuda         # adds fp16
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_extract import _quiet_diffusers, build_random_sd, parse_size  # noqa: E402

from propagate.demo import demo_frames  # noqa: E402
from propagate.device import DTYPES, cpu_has_bf16_units  # noqa: E402
from propagate.features.adm_net import ADMArch, ADMUNet, q_sample_coefficients, set_compute_dtype  # noqa: E402
from propagate.features.common import frame_normals  # noqa: E402
from propagate.features.dift_sd import DiftSDExtractor, DiftSDOptions  # noqa: E402

TOPK = 15


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frames(size_hw: tuple[int, int]) -> torch.Tensor:
    """Frames 0 and 3 of the demo clip at ``size_hw``: ``[2, 3, H, W]`` in [0, 1]."""
    h, w = size_hw
    images = [img for img, _ in demo_frames(4, (w, h), seed=0)]
    return torch.from_numpy(np.stack([images[0], images[3]])).permute(0, 3, 1, 2).float() / 255.0


def changed_neighbours(ref: torch.Tensor, other: torch.Tensor, k: int = TOPK) -> float:
    """Share of the top-``k`` neighbours (frame 0's positions in frame 1's) that differ from ``ref``'s.

    ``ref``, ``other``: ``[2, C, h, w]`` features of frames A and B."""
    def top(feats: torch.Tensor) -> torch.Tensor:
        a, b = (F.normalize(f.flatten(1).double(), dim=0) for f in feats)  # [C, hw]
        return torch.topk(a.T @ b, k, dim=1).indices  # [hw, k]

    r, o = top(ref), top(other)
    same = (r[:, :, None] == o[:, None, :]).any(dim=2).sum(dim=1)  # [hw]
    return float(1.0 - same.double().mean() / k)


def time_per_frame(run, images: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, tuple[float, float]]:
    """Features ``[2, C, h, w]`` of both frames, and (wall, process CPU) seconds per frame (each frame alone).

    The process CPU time (summed over its threads) is what to compare on a shared machine, where wall time depends
    on the other jobs."""
    run(images[:1, :, :64, :64], [0])  # warm-up (kernels, allocator)
    feats, wall, cpu = [], 0.0, 0.0
    for i in range(len(images)):
        _sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        feats.append(run(images[i:i + 1], [i]))
        _sync(device)
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    return torch.cat(feats).float().cpu(), (wall / len(images), cpu / len(images))


def bench_sd(args, device: torch.device, images: torch.Tensor, dtypes: list[str]) -> list[tuple]:
    rows, ref = [], None
    for name in dtypes:  # the same random weights rebuilt per dtype (one model in memory at a time)
        unet, vae, scheduler, prompt = build_random_sd(device, args.seed)
        options = DiftSDOptions(model="random SD-2.1", t=51, up_ft_index=2, ensemble_size=args.ensemble,
                                dtype=name, device=str(device), seed=args.seed, batch_size=args.ensemble)
        ext = DiftSDExtractor.from_modules(unet, vae, scheduler, prompt, options)
        del unet, vae
        feats, seconds = time_per_frame(ext.extract, images.to(device), device)
        ref = feats if ref is None else ref
        rows.append(("SD-2.1 up_blocks[2]", name, seconds, feats, ref))
        del ext
        gc.collect()
    return rows


def adm_run(unet: ADMUNet, dtype: torch.dtype, args, device: torch.device):
    """``run(batch, ids)``: ADM's output block 7 features of ``batch`` (DiftADMExtractor.extract, written out)."""
    coef_x0, coef_eps = q_sample_coefficients("linear", 1000, 51)

    @torch.no_grad()
    def run(batch: torch.Tensor, ids: list[int]) -> torch.Tensor:
        b, _, h, w = batch.shape
        eps = torch.stack([frame_normals(args.seed, i, (args.ensemble, 3, h, w))[0] for i in ids]).to(device)
        x_t = (coef_x0 * (batch.to(device) * 2 - 1)[:, None] + coef_eps * eps).reshape(-1, 3, h, w)
        steps = torch.full((x_t.shape[0],), 51.0, device=device)
        out = unet(x_t.to(dtype), steps, 7).float()
        return out.reshape(b, args.ensemble, *out.shape[1:]).mean(dim=1)

    return run


def bench_adm(args, device: torch.device, images: torch.Tensor, dtypes: list[str]) -> list[tuple]:
    rows, ref = [], None
    for name in dtypes:  # the 256x256-uncond architecture, the same random weights rebuilt per dtype
        torch.manual_seed(args.seed)
        unet = set_compute_dtype(ADMUNet(ADMArch()).eval().requires_grad_(False).to(device), DTYPES[name])
        run = adm_run(unet, DTYPES[name], args, device)
        feats, seconds = time_per_frame(run, images, device)
        ref = feats if ref is None else ref
        rows.append(("ADM output_blocks[7]", name, seconds, feats, ref))
        del run, unet  # one model in memory at a time
        gc.collect()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--size", type=parse_size, default=(480, 832), help="HxW (default 480x832, DAVIS)")
    parser.add_argument("--ensemble", type=int, default=1, help="noised copies per frame (default 1)")
    parser.add_argument("--models", default="sd,adm", help="sd, adm or both (default sd,adm)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _quiet_diffusers()
    device = torch.device(args.device)
    dtypes = ["fp32", "bf16"] + (["fp16"] if device.type == "cuda" else [])
    images = frames(args.size)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, CPU bf16 units "
          f"(AMX/AVX512-BF16): {cpu_has_bf16_units()}, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"frame {args.size[0]}x{args.size[1]}, ensemble {args.ensemble}, t=51, random weights, 2 frames\n")
    if "adm" in args.models and (args.size[0] % 32 or args.size[1] % 32):
        parser.error(f"ADM needs a size whose sides are multiples of 32 (e.g. 224x416, 480x832), got {args.size}")
    head = (f"{'model':22s} {'dtype':5s} {'wall s/frame':>12s} {'CPU s/frame':>12s} {'CPU vs fp32':>11s} "
            f"{'rel. error':>11s} {'top-15 changed':>15s}")
    print(head + "\n" + "-" * len(head), flush=True)
    for model, bench in (("sd", bench_sd), ("adm", bench_adm)):
        if model not in args.models:
            continue
        rows = bench(args, device, images, dtypes)
        base_cpu = rows[0][2][1]
        for label, name, (wall, cpu), feats, ref in rows:
            err = float((feats.double() - ref.double()).norm() / ref.double().norm())
            finite = bool(torch.isfinite(feats).all())
            print(f"{label:22s} {name:5s} {wall:12.2f} {cpu:12.2f} {base_cpu / cpu:10.2f}x {err:11.2e} "
                  f"{100 * changed_neighbours(ref, feats):14.1f}%" + ("" if finite else "  [non-finite features]"),
                  flush=True)


if __name__ == "__main__":
    main()
