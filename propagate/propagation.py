"""Label propagation by feature affinity (DESIGN sections 4 and 5), computed only inside the window.

For every position of a new frame, the affinities to the keys of the context frames (frame 0 plus the last
``n_last_frames`` predictions) are ``exp(q.k / T)`` for l2-normalised features, zero outside a window around the
query's position. Per query, every affinity >= its k-th largest is kept (``topk_rule: ties``, DINO's threshold
rule, so ties are all kept; ``exact`` keeps exactly k as ``torch.topk`` does, CRW, ties at the k-th value broken
in favour of the lowest key index ``slot * h * w + y * w + x``) and the kept ones are normalised to sum to 1 -- a
softmax over the kept logits. The new frame's soft labels are the weighted sum of the context labels.

The queue of recent frames starts empty (``queue_init: first``) or full of copies of frame 0 (``copies``, CRW).
CRW's ``test.py`` pads the video in front with ``videoLen`` copies of frame 0 (``data/jhmdb.py``: ``frame_num =
len(I) + videoLen``, frame ``max(0, i - videoLen)``; labels ``lbls[0]``), and its context for a frame is the first
frame (``long_mem``, never windowed) plus the ``videoLen`` frames before it, windowed like every recent frame. For
frame 1 those are ``videoLen - 1`` padding copies and frame 0 itself: ``n_last_frames`` copies of frame 0 in the
windowed queue, which later predictions push out one by one. So a far spurious match in the unwindowed frame 0
takes at most one of the k slots, where ``first`` lets frame 0 alone fill them all.

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
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from propagate.config import PropagationConfig
from propagate.device import resolve_device
from propagate.errors import PropagateError

BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
CANDIDATES = 64  # keys per query kept from the bf16 screen (at least 4 * topk); more only where a query needs them
MAX_CANDIDATES_PER_QUERY = 256  # beyond this many bf16 candidates, a query's scores are recomputed in fp32 instead
TILE = (15, 26)  # query tile (rows, cols) in grid cells (divides the 60x104 DAVIS grid; measured fastest there)
SCREEN_GIVE_UP = 0.25  # if more than this share of a frame's queries had to be rescored, the next frames skip the
SCREEN_RETRY = 16  # bf16 screen (features too alike for it: it only costs time), trying it again every 16 frames


def screening_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls are fast here (CUDA, or a CPU with native bf16 support)."""
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def window_offsets_valid(dy: torch.Tensor, dx: torch.Tensor, shape: str, radius: int) -> torch.Tensor:
    """Which key offsets lie inside the window: ``square`` (|dy|, |dx| <= r), ``disk`` (dy^2+dx^2 <= r^2),
    ``open_disk`` (dy^2+dx^2 < r^2, CRW's), ``none``."""
    if shape == "square":
        return (dy.abs() <= radius) & (dx.abs() <= radius)
    if shape == "disk":
        return dy * dy + dx * dx <= radius * radius
    if shape == "open_disk":  # CRW's MaskedAttention: distance < radius
        return dy * dy + dx * dx < radius * radius
    if shape == "none":
        return torch.ones_like(dy, dtype=torch.bool)
    raise PropagateError(f"unknown window {shape!r}: choose square, disk, open_disk or none")


def _bf16_residual(x: torch.Tensor) -> torch.Tensor:
    """Norm of what bf16 rounding removes from each vector of ``x [..., C]`` -> ``[...]``."""
    return torch.linalg.vector_norm(x - x.to(torch.bfloat16).float(), dim=-1)


class ContextQueue:
    """The permanent frames (frame 0, or the keyframes met so far) plus a FIFO of the last ``n_last`` predicted
    frames: l2-normalised keys and soft labels.

    Kept in preallocated buffers (slots 0..P-1 the ``fixed`` permanent frames, slots P..P+n_last-1 a ring), so a step
    never copies the context; only adding a keyframe reallocates. Buffers: ``keys [P+n, h, w, C]`` float32 (and a
    bfloat16 copy when screening, with ``bf16_error [P+n]``: per slot the largest norm of a key's bf16 rounding
    residual), ``labels [P+n, h, w, K]``.
    """

    def __init__(self, n_last: int, hwc: tuple[int, int, int], num_labels: int, device: torch.device, keep_bf16: bool,
                 key_dtype: torch.dtype = torch.float32):
        h, w, c = hwc
        self.n_last = n_last
        self.fixed = 1  # permanent slots; frame 0 (the first keyframe) fills slot 0
        self.keys = torch.empty((1 + n_last, h, w, c), dtype=key_dtype, device=device)
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
        self.next_slot = self.fixed

    def add_fixed(self, keys_hwc: torch.Tensor, labels_hwk: torch.Tensor) -> None:
        """Make a keyframe permanent: a new fixed slot after the others (the recent frames stay, in their order)."""
        p = self.fixed

        def grow(buf: torch.Tensor) -> torch.Tensor:
            return torch.cat([buf[:p], buf[:1], buf[p:]])  # the new slot is filled below

        self.keys, self.labels, self.bf16_error = grow(self.keys), grow(self.labels), grow(self.bf16_error)
        if self.keys_bf16 is not None:
            self.keys_bf16 = grow(self.keys_bf16)
        self.fixed += 1
        self.next_slot += 1
        self._store(p, keys_hwc, labels_hwk)

    def push(self, keys_hwc: torch.Tensor, labels_hwk: torch.Tensor) -> None:
        """Add a predicted frame; the oldest recent frame drops out once ``n_last`` are held."""
        if self.n_last == 0:
            return
        self._store(self.next_slot, keys_hwc, labels_hwk)
        self.count = min(self.count + 1, self.n_last)
        self.next_slot = (self.next_slot - self.fixed + 1) % self.n_last + self.fixed


def _topk_weights(scores: torch.Tensor, topk: int, temperature: float, rule: str = "ties",
                  key_ids: torch.Tensor | None = None, ordered: bool = False) -> torch.Tensor:
    """Per row, keep the top-k finite scores; softmax over the kept ones.

    ``scores [nq, n_keys]`` with -inf for keys outside the window -> weights of the same shape summing to 1 per row.
    ``rule``: ``ties`` keeps every score >= the k-th largest; ``exact`` keeps exactly k, breaking ties at the k-th
    value by the lowest ``key_ids [nq, n_keys]`` (flat key indices; the row must hold every key tied there).
    ``ordered``: each row is sorted, largest first (its k-th value is its k-th column).
    """
    k = min(topk, scores.shape[1])
    kth = scores[:, k - 1:k] if ordered else torch.topk(scores, k, dim=1).values[:, -1:]
    # fewer than k keys in the window: the k-th value is -inf and every key in the window is kept
    if rule == "exact":
        keep = _exactly_k(scores, kth, k, key_ids) & torch.isfinite(scores)
    else:
        keep = (scores >= kth) & torch.isfinite(scores)
    top = scores.max(dim=1, keepdim=True).values
    weights = torch.where(keep, torch.exp((scores - top) / temperature), torch.zeros((), device=scores.device))
    return weights / weights.sum(dim=1, keepdim=True)


def _exactly_k(scores: torch.Tensor, kth: torch.Tensor, k: int, key_ids: torch.Tensor | None) -> torch.Tensor:
    """``[nq, n]`` bool: the scores above ``kth [nq, 1]``, then as many of those equal to it as make k, lowest
    ``key_ids`` first (column order if None)."""
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(dim=1, keepdim=True)
    ids = key_ids if key_ids is not None else torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    order = torch.where(tied, ids, torch.full_like(ids, torch.iinfo(ids.dtype).max)).argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device)
                                            .expand_as(order).contiguous())
    return above | (tied & (rank < need))


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
    """Soft labels ``[h, w, K]`` of one frame from the context in ``queue``.

    Queries go in tiles of ``tile = (rows, cols)`` cells (default :data:`TILE`); each tile is scored against the
    keys of its window union in one matmul (:class:`_ContextKeys`). Per query only a few candidates go on: the top
    ``CANDIDATES`` keys of each part, checked to contain every key that can reach the top-k and widened where they
    do not. With ``screen`` the scores are bf16 and the candidates are rescored exactly in fp32
    (:func:`_screened_candidates`); either way the kept set and weights are those of the dense fp32 computation.

    Args:
        query_hwc: ``[h, w, C]`` l2-normalised features of the new frame.
        queue: the context (frame 0 and recent frames) on the same device.
        cfg: window, radius, topk, topk_rule, temperature, window_first.
        screen: pre-screen in bf16 and re-check candidates in fp32 (same result, faster where bf16 is fast).
        stats: if given, ``queries`` and ``rescored`` (queries whose first candidates did not suffice) are added up.
    """
    h, w, c = query_hwc.shape
    keys = _ContextKeys(queue, cfg, screen)
    k, m = int(cfg.topk), max(CANDIDATES, 4 * int(cfg.topk))
    query_err = _bf16_residual(query_hwc) if screen else None  # [h, w]
    out = torch.empty((h, w, keys.num_labels), dtype=torch.float32, device=query_hwc.device)
    rows_t, cols_t = tile or TILE
    for tx0 in range(0, w, cols_t):
        keys.load_stripe(tx0, min(w, tx0 + cols_t))
        for ty0 in range(0, h, rows_t):
            t = keys.tile(ty0, min(h, ty0 + rows_t))
            q32 = query_hwc[t.y0:t.y1, t.x0:t.x1].reshape(-1, c)
            if stats is not None:
                stats["queries"] = stats.get("queries", 0) + q32.shape[0]
            if query_err is not None:
                err = query_err[t.y0:t.y1, t.x0:t.x1].reshape(-1)
                exact, flat = _screened_candidates(keys, t, q32, err, k, m, stats)
            else:
                exact, flat = _exact_candidates(keys, t, q32, None, k, m, stats)
            weights = _topk_weights(exact.float(), k, cfg.temperature, cfg.topk_rule, flat)  # [nq, M]
            labels = torch.bmm(weights.unsqueeze(1), keys.labels_flat[flat]).squeeze(1)  # [nq, K]
            out[t.y0:t.y1, t.x0:t.x1] = labels.view(t.y1 - t.y0, t.x1 - t.x0, keys.num_labels)
    return out


def _exact_candidates(keys: "_ContextKeys", t: "_Tile", q32: torch.Tensor, rows: torch.Tensor | None, k: int,
                      m: int, stats: dict[str, int] | None,
                      widen_all: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 scores of queries ``q32 [n, C]`` (tile rows ``rows``, default all): the top ``m`` candidates per part,
    widened to every key >= the k-th value where ties or a crowded window need it -> ``(scores, flat key ids)``."""
    parts = keys.scores(t, q32, rows, fp32=True)
    decoders = keys.decoders(t)
    vals, flat, ok, kth = _candidates(parts, decoders, None, k, m)
    if bool(ok.all()):
        return vals, flat
    bad = None if widen_all else (~ok).nonzero(as_tuple=True)[0]
    if stats is not None and bad is not None:
        stats["rescored"] = stats.get("rescored", 0) + len(bad)
    sel = (lambda p: p) if bad is None else (lambda p: p[bad])
    need = max(int((sel(p) >= sel(kth)[:, None]).sum(1).max()) for p in parts)
    v2, f2 = _topk_parts(parts, decoders, bad, need)
    return (v2, f2) if bad is None else _merge_rows(vals, flat, bad, v2, f2)


def _screened_candidates(keys: "_ContextKeys", t: "_Tile", q32: torch.Tensor, query_err: torch.Tensor, k: int,
                         m: int, stats: dict[str, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 scores of ``q32 [n, C]``, then every candidate that can reach the exact top-k (see
    :func:`_screen_threshold`) rescored in fp32; queries whose candidates are too many are scored in fp32."""
    parts = keys.scores(t, q32.to(torch.bfloat16), None, fp32=False)
    decoders = keys.decoders(t)
    vals, flat = _topk_parts(parts, decoders, None, m)
    err = keys.key_err + query_err * (1 + keys.key_err) + keys.accumulation_err
    thr = _screen_threshold(vals.float().topk(min(k, vals.shape[1]), dim=1).values[:, -1], err)
    ok = _covers(parts, vals, thr, m)
    exact = _exact_scores(q32, flat, vals, keys.keys32_flat, thr)
    if bool(ok.all()):
        return exact, flat
    bad = (~ok).nonzero(as_tuple=True)[0]
    if stats is not None:
        stats["rescored"] = stats.get("rescored", 0) + len(bad)
    need = max(int((p[bad] >= thr[bad, None]).sum(1).max()) for p in parts)
    if need <= MAX_CANDIDATES_PER_QUERY:
        v2, f2 = _topk_parts(parts, decoders, bad, need)
        e2 = _exact_scores(q32[bad], f2, v2, keys.keys32_flat, thr[bad])
    else:  # features too alike for the screen: score these queries in fp32
        e2, f2 = _exact_candidates(keys, t, q32[bad], bad, k, m, None, widen_all=True)
    return _merge_rows(exact, flat, bad, e2, f2)


@dataclass(frozen=True)
class _Tile:
    """A query tile (rows y0:y1, cols x0:x1) and its window union (rows ry0:ry1 of the current column stripe)."""

    y0: int
    y1: int
    x0: int
    x1: int
    ry0: int
    ry1: int


class _ContextKeys:
    """The context's keys laid out so that a tile's scores are one matmul.

    Windowed slots (``w_slots``) are copied, per column stripe (a tile column plus the radius on each side), into a
    buffer laid out ``[h, n_slots, stripe_w, C]``: the keys of any tile's window union (its rows) are then one
    contiguous matrix, and a cached bias sets keys outside each query's window to -inf. Unwindowed slots
    (``full_slots``: the permanent frames with ``window_first: false``, everything with ``window: none``) are one
    flat matrix.
    """

    def __init__(self, queue: ContextQueue, cfg: PropagationConfig, screen: bool):
        used, fixed = queue.fixed + queue.count, queue.fixed  # slots in use; the permanent ones come first
        if cfg.window == "none":
            self.w_slots, self.full_slots, self.radius = (0, 0), list(range(0, used)), 0
        elif cfg.window_first:
            self.w_slots, self.full_slots, self.radius = (0, used), [], int(cfg.radius)
        else:
            self.w_slots, self.full_slots, self.radius = (fixed, used), list(range(fixed)), int(cfg.radius)
        self.window = cfg.window
        self.queue = queue
        _, self.h, self.w, self.c = queue.keys.shape
        self.hw = self.h * self.w
        self.n_w = self.w_slots[1] - self.w_slots[0]
        self.num_labels = queue.labels.shape[-1]
        self.device = queue.keys.device
        self.keysrc = queue.keys_bf16 if screen else queue.keys  # what the first scores use
        self.keys32_flat = queue.keys.view(-1, self.c)
        self.labels_flat = queue.labels.view(-1, self.num_labels)
        self.fslots = torch.tensor(self.full_slots, dtype=torch.long, device=self.device)
        self.full = {False: self.keysrc[self.fslots].reshape(-1, self.c) if self.full_slots else None}
        screened = self.full_slots and screen
        self.full[True] = queue.keys[self.fslots].reshape(-1, self.c) if screened else self.full[False]
        if screen:
            slots_used = list(range(*self.w_slots)) + self.full_slots
            self.key_err = float(queue.bf16_error[slots_used].max())
            # fp32 accumulation (cuBLAS may reduce in bf16)
            self.accumulation_err = self.c * 2.0**-23 + (BF16_UNIT if self.device.type == "cuda" else 0.0)
        self.screen = screen
        # one buffer for the column stripes (reused: a step allocates no more than this and one tile's scores)
        self._buf = torch.empty(0, dtype=self.keysrc.dtype, device=self.device)
        self.stripe: dict[bool, torch.Tensor | None] = {}

    def load_stripe(self, tx0: int, tx1: int) -> None:
        """Copy the windowed keys of the columns tx0 - r .. tx1 + r (the stripe of tiles in columns tx0:tx1)."""
        self.tx0, self.tx1 = tx0, tx1
        self.rx0, self.rx1 = max(0, tx0 - self.radius), min(self.w, tx1 + self.radius)
        self.sw = self.rx1 - self.rx0
        self.stripe = {}
        if not self.n_w:
            self.stripe = {False: None, True: None}
            return
        size = self.h * self.n_w * self.sw * self.c
        if self._buf.numel() < size:
            self._buf = torch.empty(size, dtype=self.keysrc.dtype, device=self.device)
        stripe = self._buf[:size].view(self.h, self.n_w, self.sw, self.c)
        stripe.copy_(self.keysrc[self.w_slots[0]:self.w_slots[1], :, self.rx0:self.rx1].permute(1, 0, 2, 3))
        self.stripe[not self.screen] = stripe  # fp32 scores use it directly when not screening

    def _stripe(self, fp32: bool) -> torch.Tensor | None:
        if fp32 not in self.stripe:  # the fp32 copy, made only if a tile needs the fp32 fallback
            self.stripe[True] = self.queue.keys[self.w_slots[0]:self.w_slots[1], :, self.rx0:self.rx1].permute(
                1, 0, 2, 3).contiguous()
        return self.stripe[fp32]

    def tile(self, ty0: int, ty1: int) -> _Tile:
        return _Tile(ty0, ty1, self.tx0, self.tx1, max(0, ty0 - self.radius), min(self.h, ty1 + self.radius))

    def decoders(self, t: _Tile) -> list:
        """Per part, a function from a score column to the flat key index ``slot * hw + y * w + x``."""
        decoders = []
        if self.n_w:
            decoders.append(_region_decoder(t.ry0, self.rx0, self.n_w, self.sw, self.w_slots[0], self.w, self.hw))
        if self.full_slots:
            decoders.append(lambda i: self.fslots[i // self.hw] * self.hw + i % self.hw)
        return decoders

    def scores(self, t: _Tile, qm: torch.Tensor, rows: torch.Tensor | None, fp32: bool) -> list[torch.Tensor]:
        """Scores of queries ``qm [n, C]`` (the tile's ``rows``, default all): the window-union part
        ``[n, ry * n_slots * sw]`` (-inf outside each query's window), then the unwindowed part ``[n, Nf * hw]``."""
        parts = []
        stripe = self._stripe(fp32) if self.n_w else None
        if stripe is not None:
            region = stripe[t.ry0:t.ry1].view(-1, self.c)  # [ry*Nw*sw, C], a view of the stripe
            s = qm @ region.T
            geometry = (t.y1 - t.y0, t.x1 - t.x0, t.y0 - t.ry0, t.x0 - self.rx0, t.ry1 - t.ry0, self.sw)
            bias = _window_bias(geometry, self.window, self.radius, self.keysrc.dtype, self.device)
            b = bias if rows is None else bias[rows]
            s.view(qm.shape[0], t.ry1 - t.ry0, self.n_w, self.sw).add_(b.to(s.dtype)[:, :, None, :])
            parts.append(s)
        if self.full[fp32] is not None:
            parts.append(qm @ self.full[fp32].T)
        return parts


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


AFFINITY_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def affinity_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype affinities are computed in: ``fp32``, ``bf16``, ``fp16``, or ``auto`` (fp16 on CUDA, bf16 where
    the CPU has native bf16 (:func:`screening_supported`), fp32 elsewhere)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if screening_supported(device) else torch.float32
    if name not in AFFINITY_DTYPES:
        raise PropagateError(f"propagation.affinity_dtype must be fp32, auto, bf16 or fp16, got {name!r}")
    return AFFINITY_DTYPES[name]


class LabelPropagator:
    """A small stateful propagator fed one frame at a time (it owns its context queue; no I/O).

    >>> prop = LabelPropagator(cfg)
    >>> prop.start(feats0, labels0)          # frame 0: [C, h, w] features, [K, h, w] labels
    >>> soft = prop.step(feats1)              # [K, h, w] soft labels of frame 1, and so on
    >>> prop.add_keyframe(feats5, labels5)    # a later annotated frame joins the permanent context
    """

    def __init__(self, cfg: PropagationConfig, device: str | torch.device | None = None):
        cfg.check()  # checked when made; again here, as a caller may have changed a field since
        self.cfg = cfg
        self.device = resolve_device(device if device is not None else cfg.device)
        if cfg.screen in ("auto",):
            self.screen = screening_supported(self.device)
        else:
            self.screen = cfg.screen in ("on", True)
        # reduced precision for the affinity itself: scores in that dtype, no fp32 re-check (so no screen either)
        self.key_dtype = affinity_dtype(getattr(cfg, "affinity_dtype", "fp32"), self.device)
        if self.key_dtype != torch.float32:
            self.screen = False
        self.queue: ContextQueue | None = None
        self._frames_unscreened = 0  # > 0 while the screen is paused (see SCREEN_GIVE_UP)

    def _hwc(self, feats: torch.Tensor) -> torch.Tensor:
        """``[C, h, w]`` features -> l2-normalised ``[h, w, C]`` keys in the affinity's dtype."""
        keys = F.normalize(feats.float(), dim=0, p=2).permute(1, 2, 0).contiguous()
        return keys if self.key_dtype == torch.float32 else keys.to(self.key_dtype)

    def start(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Frame 0: features ``[C, h, w]`` and labels ``[K, h, w]`` on the same grid."""
        if feats.shape[1:] != labels.shape[1:]:
            raise ValueError(f"features {tuple(feats.shape)} and labels {tuple(labels.shape)} are on different grids")
        c, h, w = feats.shape
        self.queue = ContextQueue(self.cfg.n_last_frames, (h, w, c), labels.shape[0], self.device, self.screen,
                                  self.key_dtype)
        keys, labels_hwk = self._hwc(feats.to(self.device)), labels.to(self.device, torch.float32).permute(1, 2, 0)
        self.queue.set_first(keys, labels_hwk)
        if self.cfg.queue_init == "copies":  # CRW: the recent frames start as copies of frame 0 (module docstring)
            for _ in range(self.cfg.n_last_frames):
                self.queue.push(keys, labels_hwk)

    def add_keyframe(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """A later annotated frame (features ``[C, h, w]``, labels ``[K, h, w]``) joins the permanent context, as
        frame 0 did; the recent predicted frames stay in the queue."""
        if self.queue is None:
            raise RuntimeError("call start() with the first keyframe before add_keyframe()")
        if labels.shape[0] != self.queue.labels.shape[-1] or feats.shape[1:] != labels.shape[1:]:
            raise ValueError(f"keyframe labels {tuple(labels.shape)} do not match the context's "
                             f"{self.queue.labels.shape[-1]} labels on the grid of features {tuple(feats.shape)}")
        self.queue.add_fixed(self._hwc(feats.to(self.device)), labels.to(self.device, torch.float32).permute(1, 2, 0))

    def replay(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Push a frame whose soft labels ``[K, h, w]`` are already known (an earlier :meth:`step` gave them), as
        :meth:`step` would have: the context ends up the same, slot for slot, without propagating."""
        if self.queue is None:
            raise RuntimeError("call start() with frame 0 before replay()")
        self.queue.push(self._hwc(feats.to(self.device)), labels.to(self.device, torch.float32).permute(1, 2, 0))

    def step(self, feats: torch.Tensor, push: bool = True) -> torch.Tensor:
        """Soft labels ``[K, h, w]`` of the next frame from its features ``[C, h, w]``; the frame joins the context
        (``push=False``: it does not; a caller that changes the labels pushes them with :meth:`replay`)."""
        if self.queue is None:
            raise RuntimeError("call start() with frame 0 before step()")
        query = self._hwc(feats.to(self.device))
        if query.shape != self.queue.keys.shape[1:]:
            raise ValueError(f"features {tuple(feats.shape)} do not match frame 0's grid "
                             f"{tuple(self.queue.keys.shape[1:])}")
        screen = self.screen and self._frames_unscreened == 0
        stats: dict[str, int] = {}
        labels = propagate_frame(query, self.queue, self.cfg, screen, stats=stats)
        if screen:
            if stats.get("rescored", 0) > SCREEN_GIVE_UP * stats.get("queries", 1):
                self._frames_unscreened = 1  # features too alike for the bf16 screen: fp32 is faster
        elif self._frames_unscreened:
            self._frames_unscreened = (self._frames_unscreened + 1) % SCREEN_RETRY
        if push:
            self.queue.push(query, labels)
        return labels.permute(2, 0, 1)
