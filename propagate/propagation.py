"""Label propagation by feature affinity (DESIGN sections 4 and 5), computed only inside the window.

For every position of a new frame, the affinities to the keys of the context frames (frame 0 plus the last
``n_last_frames`` predictions) are ``exp(q.k / T)`` for l2-normalised features, zero outside a window around the
query's position. Per query, every affinity >= its k-th largest is kept (DINO's threshold rule, so ties are all
kept) and the kept ones are normalised to sum to 1 -- a softmax over the kept logits. The new frame's soft labels
are the weighted sum of the context labels.

The reference implementations build the dense ``n_ctx x HW x HW`` affinity (4.5 GB per frame at DIFT's DAVIS
settings). Here queries are processed in tiles, and each tile is compared only with the keys of its window's union
(one matmul per tile), so memory is the context buffers plus one column stripe of keys and one tile's scores. Per
query only the top ``CANDIDATES`` keys go on to the top-k step (checked to hold every key that can reach the top-k;
widened for the queries where they do not).

With ``screen`` on (CPUs with AVX512-BF16, and GPUs), scores are first computed in bfloat16, about 3x faster. The
error of a bf16 score is bounded (see :func:`_screen_threshold`), so every key that can reach the exact top-k is
kept as a candidate and re-scored in float32; where features are too alike for the screen, a query is scored in
float32 instead. Either way the result is the dense float32 computation's: the same kept set, and weights equal to
float rounding (``scripts/bench_propagation.py`` measures both side by side).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from propagate.config import PropagationConfig
from propagate.errors import PropagateError

BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
CANDIDATES = 64  # keys per query kept from the bf16 screen (at least 4 * topk); more only where a query needs them
MAX_CANDIDATES_PER_QUERY = 256  # beyond this many bf16 candidates, a query's scores are recomputed in fp32 instead
TILE = (15, 26)  # query tile (rows, cols) in grid cells (divides the 60x104 DAVIS grid; measured fastest there)
SCREEN_GIVE_UP = 0.25  # if more than this share of a frame's queries had to be rescored, the next frames skip the
SCREEN_RETRY = 16  # bf16 screen (features too alike for it: it only costs time), trying it again every 16 frames


def resolve_device(device: str | None) -> torch.device:
    """``auto`` -> cuda if available, else cpu."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise PropagateError("device cuda was asked for but torch sees no CUDA GPU: use --device cpu or auto")
    return torch.device(device)


def screening_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls are fast here (CUDA, or a CPU with native bf16 support)."""
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def window_offsets_valid(dy: torch.Tensor, dx: torch.Tensor, shape: str, radius: int) -> torch.Tensor:
    """Which key offsets lie inside the window: ``square`` (|dy|, |dx| <= r), ``disk`` (dy^2+dx^2 <= r^2), ``none``."""
    if shape == "square":
        return (dy.abs() <= radius) & (dx.abs() <= radius)
    if shape == "disk":
        return dy * dy + dx * dx <= radius * radius
    if shape == "none":
        return torch.ones_like(dy, dtype=torch.bool)
    raise PropagateError(f"unknown window {shape!r}: choose square, disk or none")


def _bf16_residual(x: torch.Tensor) -> torch.Tensor:
    """Norm of what bf16 rounding removes from each vector of ``x [..., C]`` -> ``[...]``."""
    return torch.linalg.vector_norm(x - x.to(torch.bfloat16).float(), dim=-1)


class ContextQueue:
    """Frame 0 plus a FIFO of the last ``n_last`` frames: l2-normalised keys and soft labels.

    Kept in preallocated buffers (slot 0 is frame 0, slots 1..n_last a ring), so a step never copies the context.
    Buffers: ``keys [1+n, h, w, C]`` float32 (and a bfloat16 copy when screening, with ``bf16_error [1+n]``: per
    slot the largest norm of a key's bf16 rounding residual), ``labels [1+n, h, w, K]``.
    """

    def __init__(self, n_last: int, hwc: tuple[int, int, int], num_labels: int, device: torch.device, keep_bf16: bool):
        h, w, c = hwc
        self.n_last = n_last
        self.keys = torch.empty((1 + n_last, h, w, c), dtype=torch.float32, device=device)
        self.keys_bf16 = torch.empty((1 + n_last, h, w, c), dtype=torch.bfloat16, device=device) if keep_bf16 else None
        self.bf16_error = torch.zeros(1 + n_last, dtype=torch.float32, device=device)
        self.labels = torch.empty((1 + n_last, h, w, num_labels), dtype=torch.float32, device=device)
        self.count = 0  # recent frames held
        self.next_slot = 1

    def _store(self, slot: int, keys_hwc: torch.Tensor, labels_hwk: torch.Tensor) -> None:
        self.keys[slot].copy_(keys_hwc)
        if self.keys_bf16 is not None:
            self.keys_bf16[slot].copy_(keys_hwc)
            self.bf16_error[slot] = _bf16_residual(self.keys[slot]).max()
        self.labels[slot].copy_(labels_hwk)

    def set_first(self, keys_hwc: torch.Tensor, labels_hwk: torch.Tensor) -> None:
        self._store(0, keys_hwc, labels_hwk)
        self.count = 0
        self.next_slot = 1

    def push(self, keys_hwc: torch.Tensor, labels_hwk: torch.Tensor) -> None:
        """Add a predicted frame; the oldest recent frame drops out once ``n_last`` are held."""
        if self.n_last == 0:
            return
        self._store(self.next_slot, keys_hwc, labels_hwk)
        self.count = min(self.count + 1, self.n_last)
        self.next_slot = self.next_slot % self.n_last + 1


def _topk_weights(scores: torch.Tensor, topk: int, temperature: float) -> torch.Tensor:
    """Per row, keep every finite score >= the k-th largest; softmax over the kept ones.

    ``scores [nq, n_keys]`` with -inf for keys outside the window -> weights of the same shape summing to 1 per row.
    """
    k = min(topk, scores.shape[1])
    kth = torch.topk(scores, k, dim=1).values[:, -1:]
    # fewer than k keys in the window: the k-th value is -inf and every key in the window is kept
    keep = (scores >= kth) & torch.isfinite(scores)
    top = scores.max(dim=1, keepdim=True).values
    weights = torch.where(keep, torch.exp((scores - top) / temperature), torch.zeros((), device=scores.device))
    return weights / weights.sum(dim=1, keepdim=True)


def _screen_threshold(kth: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
    """Lowest bf16 score a key can have and still reach the exact top-k, given the bf16 k-th value ``kth [nq]``.

    A bf16 score is the fp32-accumulated dot product of the bf16-rounded vectors, rounded to bf16. With ``err [nq]``
    bounding |exact - accumulated| (rounding residuals of both vectors, Cauchy-Schwarz, plus accumulation), and the
    final rounding moving a value by at most ``BF16_UNIT * |value|`` (monotonically): k keys have bf16 >= kth, so
    the exact k-th value is >= L = kth - u|kth| - err; a key with exact >= L has accumulated >= L - err, so its bf16
    score is >= (L - err) - u|L - err|. Every key of the exact top-k (ties included) is therefore at or above this.
    """
    low = kth - BF16_UNIT * kth.abs() - 2 * err
    return low - BF16_UNIT * low.abs() - 1e-7


def propagate_frame(
    query_hwc: torch.Tensor, queue: ContextQueue, cfg: PropagationConfig, screen: bool,
    tile: tuple[int, int] | None = None, stats: dict[str, int] | None = None,
) -> torch.Tensor:
    """Soft labels of one frame from the context in ``queue``.

    Queries are processed in tiles of ``tile = (rows, cols)`` cells. For each column stripe the windowed keys of the
    stripe's column range are copied once into a buffer laid out ``[h, n_frames, cols, C]``, so the keys of a tile's
    window union (its rows) are one contiguous matrix and a tile's scores are a single matmul.

    Per query only a few candidates are carried on: the top ``CANDIDATES`` keys of each part (checked to contain
    every key that can reach the top-k, and widened for the queries where they do not). With ``screen`` the scores
    are bf16 and the candidates are recomputed exactly in fp32 (see :func:`_screen_threshold`).

    Args:
        query_hwc: ``[h, w, C]`` l2-normalised features of the new frame.
        queue: the context (frame 0 and recent frames) on the same device.
        cfg: window, radius, topk, temperature, window_first.
        screen: pre-screen in bf16 and re-check candidates in fp32 (same result, faster where bf16 is fast).
        tile: query tile ``(rows, cols)``; default :data:`TILE`.
        stats: if given, ``queries`` and ``rescored`` (queries whose first candidates did not suffice) are added up.

    Returns:
        ``[h, w, K]`` soft labels.
    """
    h, w, c = query_hwc.shape
    hw = h * w
    device = query_hwc.device
    num_labels = queue.labels.shape[-1]
    recent = queue.count
    if cfg.window == "none":
        w_slots, full_slots, radius = (0, 0), list(range(0, 1 + recent)), 0
    elif cfg.window_first:
        w_slots, full_slots, radius = (0, 1 + recent), [], int(cfg.radius)
    else:
        w_slots, full_slots, radius = (1, 1 + recent), [0], int(cfg.radius)
    n_w = w_slots[1] - w_slots[0]
    k = int(cfg.topk)
    m = max(CANDIDATES, 4 * k)
    keysrc = queue.keys_bf16 if screen else queue.keys
    keys32_flat = queue.keys.view(-1, c)
    labels_flat = queue.labels.view(-1, num_labels)
    fslots = torch.tensor(full_slots, dtype=torch.long, device=device)
    full_keys = keysrc[fslots].reshape(-1, c) if full_slots else None  # [Nf*hw, C], shared by all tiles
    full_keys32 = queue.keys[fslots].reshape(-1, c) if (full_slots and screen) else full_keys
    query_src = query_hwc.to(torch.bfloat16) if screen else query_hwc
    slots_used = list(range(w_slots[0], w_slots[1])) + full_slots
    if screen:
        key_err = float(queue.bf16_error[slots_used].max())
        acc = c * 2.0**-23 + (BF16_UNIT if device.type == "cuda" else 0.0)  # fp32 accumulation (cuBLAS may reduce in bf16)
        query_err = _bf16_residual(query_hwc)  # [h, w]
    out = torch.empty((h, w, num_labels), dtype=torch.float32, device=device)
    rows_t, cols_t = tile or TILE
    # one buffer for the column stripes of keys (reused: a step allocates no more than this and one tile's scores)
    stripe_buf = torch.empty(h * n_w * min(w, cols_t + 2 * radius) * c, dtype=keysrc.dtype, device=device) if n_w else None

    for tx0 in range(0, w, cols_t):
        tx1 = min(w, tx0 + cols_t)
        rx0, rx1 = max(0, tx0 - radius), min(w, tx1 + radius)
        sw = rx1 - rx0
        # [h, Nw, sw, C]: the rows of any tile's window union are one contiguous block
        stripe = None
        if n_w:
            stripe = stripe_buf[: h * n_w * sw * c].view(h, n_w, sw, c)
            stripe.copy_(keysrc[w_slots[0]:w_slots[1], :, rx0:rx1].permute(1, 0, 2, 3))
        stripe32 = None if screen else stripe  # fp32 copy, made only if a tile needs the fp32 fallback
        for ty0 in range(0, h, rows_t):
            ty1 = min(h, ty0 + rows_t)
            ry0, ry1 = max(0, ty0 - radius), min(h, ty1 + radius)
            nq = (ty1 - ty0) * (tx1 - tx0)
            q = query_src[ty0:ty1, tx0:tx1].reshape(nq, c)
            q32 = query_hwc[ty0:ty1, tx0:tx1].reshape(nq, c)
            geometry = (ty1 - ty0, tx1 - tx0, ty0 - ry0, tx0 - rx0, ry1 - ry0, sw)
            bias = _window_bias(geometry, cfg.window, radius, keysrc.dtype, device) if n_w else None
            decoders = []
            if n_w:
                decoders.append(_region_decoder(ry0, rx0, n_w, sw, w_slots[0], w, hw))
            if full_slots:
                decoders.append(lambda i: fslots[i // hw] * hw + i % hw)

            def scores_of(qm: torch.Tensor, region_src: torch.Tensor | None, full_src: torch.Tensor | None,
                          rows: torch.Tensor | None) -> list[torch.Tensor]:
                parts = []
                if region_src is not None:
                    region = region_src[ry0:ry1].view(-1, c)  # [ry*Nw*sw, C], a view of the stripe
                    s = qm @ region.T
                    b = bias if rows is None else bias[rows]
                    s.view(qm.shape[0], ry1 - ry0, n_w, sw).add_(b.to(s.dtype)[:, :, None, :])
                    parts.append(s)
                if full_src is not None:
                    parts.append(qm @ full_src.T)
                return parts

            parts = scores_of(q, stripe, full_keys, None)
            vals, flat, ok, thr = _candidates(parts, decoders, None, k, m)
            if screen:
                err = key_err + query_err[ty0:ty1, tx0:tx1].reshape(nq) * (1 + key_err) + acc
                thr = _screen_threshold(vals.float().topk(min(k, vals.shape[1]), dim=1).values[:, -1], err)
                ok = _covers(parts, vals, thr, m)
                exact = _exact_scores(q32, flat, vals, keys32_flat, thr)
            else:
                exact = vals
            if stats is not None:
                stats["queries"] = stats.get("queries", 0) + nq
            if not bool(ok.all()):
                bad = (~ok).nonzero(as_tuple=True)[0]
                if stats is not None:
                    stats["rescored"] = stats.get("rescored", 0) + len(bad)
                need = max(int((p[bad] >= thr[bad, None]).sum(1).max()) for p in parts)
                if not screen or need <= MAX_CANDIDATES_PER_QUERY:
                    v2, f2 = _topk_parts(parts, decoders, bad, need)
                    e2 = _exact_scores(q32[bad], f2, v2, keys32_flat, thr[bad]) if screen else v2
                else:  # features too alike for the screen: score these queries in fp32
                    if stripe32 is None and n_w:
                        stripe32 = queue.keys[w_slots[0]:w_slots[1], :, rx0:rx1].permute(1, 0, 2, 3).contiguous()
                    parts32 = scores_of(q32[bad], stripe32, full_keys32, bad)
                    v2, f2, ok2, kth2 = _candidates(parts32, decoders, None, k, m)
                    if not bool(ok2.all()):  # ties beyond m: take every key >= the k-th value
                        need = max(int((p >= kth2[:, None]).sum(1).max()) for p in parts32)
                        v2, f2 = _topk_parts(parts32, decoders, None, need)
                    e2 = v2
                exact, flat = _merge_rows(exact, flat, bad, e2, f2)
            weights = _topk_weights(exact.float(), k, cfg.temperature)  # [nq, M]
            tile_out = torch.bmm(weights.unsqueeze(1), labels_flat[flat]).squeeze(1)  # [nq, K]
            out[ty0:ty1, tx0:tx1] = tile_out.view(ty1 - ty0, tx1 - tx0, num_labels)
    return out


@functools.lru_cache(maxsize=64)
def _window_bias(geometry: tuple, window: str, radius: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[nq, ry, sw]``: 0 where a region key lies in the query's window, -inf elsewhere (cached: a grid has only
    a few distinct tile geometries, the same on every frame)."""
    th, tw, oy, ox, ry, sw = geometry
    qy = torch.arange(th, device=device).repeat_interleave(tw) + oy  # query rows/cols in region coordinates
    qx = torch.arange(tw, device=device).repeat(th) + ox
    dy = torch.arange(ry, device=device)[None, :] - qy[:, None]  # [nq, ry]
    dx = torch.arange(sw, device=device)[None, :] - qx[:, None]  # [nq, sw]
    inside = window_offsets_valid(dy[:, :, None], dx[:, None, :], window, radius)
    return torch.zeros(inside.shape, dtype=dtype, device=device).masked_fill_(~inside, -math.inf)


def _region_decoder(ry0: int, rx0: int, n_w: int, sw: int, slot0: int, w: int, hw: int):
    """Column of a region score row (laid out [ry, Nw, sw]) -> flat key index ``slot * hw + y * w + x``."""
    def decode(i: torch.Tensor) -> torch.Tensor:
        y = ry0 + i // (n_w * sw)
        rem = i % (n_w * sw)
        return (slot0 + rem // sw) * hw + y * w + rx0 + rem % sw
    return decode


def _topk_parts(parts, decoders, rows, m):
    vals, flats = [], []
    for scores, decode in zip(parts, decoders):
        if rows is not None:
            scores = scores[rows]
        v, i = torch.topk(scores, min(max(m, 1), scores.shape[1]), dim=1)
        vals.append(v)
        flats.append(decode(i))
    return torch.cat(vals, 1), torch.cat(flats, 1)


def _covers(parts, vals: torch.Tensor, thr: torch.Tensor, m: int) -> torch.Tensor:
    """``[nq]`` whether the top-``m`` of every part holds every key scoring >= ``thr``: true where a part has at
    most m columns, or its m-th value is below thr (or -inf: the window has fewer keys)."""
    ok = torch.ones(vals.shape[0], dtype=torch.bool, device=vals.device)
    start = 0
    for scores in parts:
        mm = min(m, scores.shape[1])
        if scores.shape[1] > mm:
            last = vals[:, start + mm - 1].float()
            ok &= (last < thr) | torch.isinf(last)
        start += mm
    return ok


def _candidates(parts, decoders, rows, k: int, m: int):
    """Top-``m`` keys of each part; exact threshold check (k-th value among them) -> vals, flat, ok, kth."""
    vals, flat = _topk_parts(parts, decoders, rows, m)
    kth = vals.float().topk(min(k, vals.shape[1]), dim=1).values[:, -1]
    ok = _covers(parts, vals, kth, m)
    return vals, flat, ok, kth


def _exact_scores(
    q32: torch.Tensor, flat: torch.Tensor, vals: torch.Tensor, keys32_flat: torch.Tensor, thr: torch.Tensor
) -> torch.Tensor:
    """fp32 dot products of queries ``q32 [n, C]`` with those of their candidate keys ``flat [n, M]`` whose screened
    score ``vals`` is >= ``thr [n]``; -inf for the others (they cannot reach the top-k, or lie outside the window)."""
    screened = vals.float()
    rows, cols = ((screened >= thr[:, None]) & torch.isfinite(screened)).nonzero(as_tuple=True)
    exact = torch.full(vals.shape, -math.inf, dtype=torch.float32, device=vals.device)
    keys = keys32_flat.index_select(0, flat[rows, cols])  # [n_cand, C]
    exact[rows, cols] = torch.bmm(keys.unsqueeze(1), q32.index_select(0, rows).unsqueeze(2)).view(-1)
    return exact


def _merge_rows(exact: torch.Tensor, flat: torch.Tensor, rows: torch.Tensor, e2: torch.Tensor, f2: torch.Tensor):
    """Replace the candidates of ``rows`` by wider ones, padding every row with -inf to a common width."""
    width = max(exact.shape[1], e2.shape[1])
    if exact.shape[1] < width:
        pad = width - exact.shape[1]
        exact = torch.cat([exact.float(), exact.new_full((exact.shape[0], pad), -math.inf, dtype=torch.float32)], 1)
        flat = torch.cat([flat, flat[:, :1].expand(-1, pad)], 1)
    if e2.shape[1] < width:
        pad = width - e2.shape[1]
        e2 = torch.cat([e2.float(), e2.new_full((e2.shape[0], pad), -math.inf, dtype=torch.float32)], 1)
        f2 = torch.cat([f2, f2[:, :1].expand(-1, pad)], 1)
    exact = exact.float().clone()
    flat = flat.clone()
    exact[rows] = e2.float()
    flat[rows] = f2
    return exact, flat


class LabelPropagator:
    """A small stateful propagator fed one frame at a time (it owns its context queue; no I/O).

    >>> prop = LabelPropagator(cfg)
    >>> prop.start(feats0, labels0)          # frame 0: [C, h, w] features, [K, h, w] labels
    >>> soft = prop.step(feats1)              # [K, h, w] soft labels of frame 1, and so on
    """

    def __init__(self, cfg: PropagationConfig, device: str | torch.device | None = None):
        for name in ("temperature", "topk"):
            if getattr(cfg, name) <= 0:
                raise PropagateError(f"propagation.{name} must be positive, got {getattr(cfg, name)}")
        if cfg.n_last_frames < 0 or cfg.radius < 0:
            raise PropagateError("propagation.n_last_frames and propagation.radius must be >= 0")
        if cfg.screen not in ("auto", "on", "off", True, False):
            raise PropagateError(f"propagation.screen must be auto, on or off, got {cfg.screen!r}")
        window_offsets_valid(torch.zeros(1), torch.zeros(1), cfg.window, 0)  # validates the window name
        self.cfg = cfg
        self.device = resolve_device(device if device is not None else cfg.device)
        if cfg.screen in ("auto",):
            self.screen = screening_supported(self.device)
        else:
            self.screen = cfg.screen in ("on", True)
        self.queue: ContextQueue | None = None
        self._frames_unscreened = 0  # > 0 while the screen is paused (see SCREEN_GIVE_UP)

    @staticmethod
    def _hwc(feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(feats.float(), dim=0, p=2).permute(1, 2, 0).contiguous()

    def start(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Frame 0: features ``[C, h, w]`` and labels ``[K, h, w]`` on the same grid."""
        if feats.shape[1:] != labels.shape[1:]:
            raise ValueError(f"features {tuple(feats.shape)} and labels {tuple(labels.shape)} are on different grids")
        c, h, w = feats.shape
        self.queue = ContextQueue(self.cfg.n_last_frames, (h, w, c), labels.shape[0], self.device, self.screen)
        self.queue.set_first(self._hwc(feats.to(self.device)), labels.to(self.device, torch.float32).permute(1, 2, 0))

    def step(self, feats: torch.Tensor) -> torch.Tensor:
        """Soft labels ``[K, h, w]`` of the next frame from its features ``[C, h, w]``; the frame joins the context."""
        if self.queue is None:
            raise RuntimeError("call start() with frame 0 before step()")
        query = self._hwc(feats.to(self.device))
        if query.shape != self.queue.keys.shape[1:]:
            raise ValueError(f"features {tuple(feats.shape)} do not match frame 0's grid {tuple(self.queue.keys.shape[1:])}")
        screen = self.screen and self._frames_unscreened == 0
        stats: dict[str, int] = {}
        labels = propagate_frame(query, self.queue, self.cfg, screen, stats=stats)
        if screen:
            if stats.get("rescored", 0) > SCREEN_GIVE_UP * stats.get("queries", 1):
                self._frames_unscreened = 1  # features too alike for the bf16 screen: fp32 is faster
        elif self._frames_unscreened:
            self._frames_unscreened = (self._frames_unscreened + 1) % SCREEN_RETRY
        self.queue.push(query, labels)
        return labels.permute(2, 0, 1)


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel, as PIL's NEAREST resize computes it (a running double sum of the scale
    starting at half a step, truncated), so masks resize bit-identically to the reference scripts' PIL calls."""
    scale = n_in / n_out
    steps = np.full(n_out, scale)
    steps[0] = 0.5 * scale
    return np.minimum(np.add.accumulate(steps).astype(np.int64), n_in - 1)


def resize_nearest(mask: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an index image ``[H, W]`` to ``size_wh`` (W, H), identical to PIL's NEAREST."""
    rows = _nearest_index(mask.shape[0], size_wh[1])
    cols = _nearest_index(mask.shape[1], size_wh[0])
    return mask[rows][:, cols]


def mask_to_labels(mask: np.ndarray, num_objects: int, grid_hw: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """First-frame mask ``[H, W]`` (0 background, 1..N objects, 255 void -> background) -> labels ``[N+1, h, w]``.

    ``nearest``: the mask is resized to the grid with nearest sampling, then one-hot (DINO/DIFT). ``area``: the
    one-hot mask is area-averaged into each cell (soft fractions).
    """
    mask = np.where(mask == 255, 0, mask).astype(np.int64)
    if mask.max() > num_objects:
        raise ValueError(f"mask holds index {mask.max()} > num_objects {num_objects}")
    h, w = grid_hw
    if mode == "nearest":
        small = torch.from_numpy(resize_nearest(mask.astype(np.uint8), (w, h)).astype(np.int64))
        return F.one_hot(small, num_objects + 1).permute(2, 0, 1).float()
    if mode == "area":
        one_hot = F.one_hot(torch.from_numpy(mask), num_objects + 1).permute(2, 0, 1).float()
        return F.adaptive_avg_pool2d(one_hot[None], (h, w))[0]
    raise PropagateError(f"unknown label_downsample {mode!r}: choose nearest or area")


def labels_to_mask(
    soft: torch.Tensor, proc_hw: tuple[int, int], native_hw: tuple[int, int], minmax: bool = True
) -> np.ndarray:
    """Soft labels ``[K, h, w]`` -> index mask ``[H, W]`` uint8 at native size.

    Bilinear upsampling to the processing size, optional per-channel min-max normalisation (DINO's ``norm_mask``),
    argmax, then a nearest resize to the native size.
    """
    up = F.interpolate(soft[None].float(), size=tuple(proc_hw), mode="bilinear", align_corners=False)[0]
    if minmax:
        flat = up.reshape(up.shape[0], -1)
        lo = flat.min(dim=1, keepdim=True).values
        span = flat.max(dim=1, keepdim=True).values - lo
        scale = torch.where(span > 0, span, torch.ones_like(span))
        top = flat.max(dim=1, keepdim=True).values
        # channels whose max is 0 stay as they are (DINO leaves them untouched)
        flat = torch.where(top > 0, (flat - lo) / scale, flat)
        up = flat.reshape(up.shape)
    index = up.argmax(dim=0).to(torch.uint8).cpu().numpy()
    if index.shape != tuple(native_hw):
        index = resize_nearest(index, (native_hw[1], native_hw[0]))
    return index
