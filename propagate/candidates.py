"""Kept top-k candidates, so that a later pass over the same frames costs a gather instead of an affinity.

A frame's top-k keys and their weights depend only on the features of it and of its context frames, never on
labels. :class:`CandidateStore` keeps, per (query frame, context frame, windowed or not), the keys of that context
frame that can reach the top-k of any context the frame is part of: every key scoring >= that frame's own k-th
largest score (ties kept). The top-k over a union of frames lies within the union of each frame's top-k (the k-th
value of the union is >= each part's), so the weights over any context set are those kept scores merged and cut
again by :func:`propagate.propagation._topk_weights` -- for both ``topk_rule``\\ s, since every key tied at the
union's k-th value is kept.

:class:`CachedPropagator` is a :class:`propagate.propagation.LabelPropagator` told which frame each step is: it
computes the candidates of the (frame, context frame) pairs the store does not hold yet, one pair at a time, and
merges. Every pair is computed alone, by the same operations on the same shapes whatever the rest of the context,
so a pair's kept scores are the same bits in every pass: a pass that reuses them gives exactly the soft labels of a
pass from scratch. (Against :class:`~propagate.propagation.LabelPropagator`, which scores the whole context in one
matmul, results agree to float rounding.)

The store keeps pairs in memory up to a budget, then spills whole query frames to a scratch folder it creates and
removes (:meth:`CandidateStore.close`).
"""
from __future__ import annotations

import math
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch

import propagate.propagation as propagation
from propagate.config import PropagationConfig
from propagate.propagation import (
    BF16_UNIT, ContextQueue, LabelPropagator, _bf16_residual, _screen_threshold,
    _topk_weights, _window_bias,
)

MAX_CANDIDATES_PER_QUERY = propagation.MAX_CANDIDATES_PER_QUERY  # beyond this, a query is scored in fp32
PAIR_CANDIDATES = 32  # first cut per query and context frame (at least 2 * topk); widened where a query needs more
MEMORY_BYTES = 1 * 2**30  # kept candidates held in memory before whole query frames spill to the scratch folder

Pair = tuple[int, bool]  # (context frame, windowed)
Kept = tuple[torch.Tensor, torch.Tensor]  # scores [hw, W] float32 (-inf padding), key ids [hw, W] int32 (y * w + x)


class CandidateStore:
    """Kept candidates per (query frame, context frame, windowed), in memory up to ``memory_bytes``, then in a
    scratch folder (created under ``scratch_parent``, default the system's temporary folder, and removed by
    :meth:`close`).

    ``computed`` and ``reused`` count the pairs (one frame's affinity to one context frame) scored and taken from
    the store since the last :meth:`reset_counts`.
    """

    def __init__(self, memory_bytes: int = MEMORY_BYTES, scratch_parent: str | Path | None = None):
        self.memory_bytes = memory_bytes
        self.scratch_parent = scratch_parent
        self.scratch: Path | None = None
        self._ram: OrderedDict[int, dict[Pair, Kept]] = OrderedDict()  # query frame -> pairs, least recent first
        self._spilled: set[int] = set()
        self.used = 0
        self.computed = 0
        self.reused = 0

    def reset_counts(self) -> None:
        self.computed = self.reused = 0

    @staticmethod
    def _size(pairs: dict[Pair, Kept]) -> int:
        return sum(s.numel() * s.element_size() + i.numel() * i.element_size() for s, i in pairs.values())

    def _frame(self, frame: int) -> dict[Pair, Kept]:
        if frame in self._ram:
            self._ram.move_to_end(frame)
            return self._ram[frame]
        pairs: dict[Pair, Kept] = {}
        if frame in self._spilled:
            assert self.scratch is not None
            pairs = torch.load(self.scratch / f"{frame}.pt", weights_only=True)
            pairs = {(int(s), bool(w)): kept for (s, w), kept in pairs.items()}
            self._spilled.discard(frame)
            (self.scratch / f"{frame}.pt").unlink()
        self._ram[frame] = pairs
        self.used += self._size(pairs)
        return pairs

    def get(self, frame: int, pair: Pair) -> Kept | None:
        """The kept candidates of ``frame`` in context frame ``pair = (context frame, windowed)``, or None."""
        return self._frame(frame).get(pair)

    def put(self, frame: int, pair: Pair, kept: Kept) -> None:
        pairs = self._frame(frame)
        pairs[pair] = kept
        self.used += self._size({pair: kept})
        self._spill(keep=frame)

    def _spill(self, keep: int) -> None:
        """Move the least recently used query frames (not ``keep``) to the scratch folder until under budget."""
        while self.used > self.memory_bytes and len(self._ram) > 1:
            frame = next(iter(self._ram))
            if frame == keep:
                self._ram.move_to_end(frame)
                frame = next(iter(self._ram))
            pairs = self._ram.pop(frame)
            self.used -= self._size(pairs)
            if self.scratch is None:
                parent = None if self.scratch_parent is None else str(self.scratch_parent)
                self.scratch = Path(tempfile.mkdtemp(prefix="propagate-candidates-", dir=parent))
            torch.save(pairs, self.scratch / f"{frame}.pt")
            self._spilled.add(frame)

    def close(self) -> None:
        """Forget every pair and remove the scratch folder (the one this store created)."""
        self._ram.clear()
        self._spilled.clear()
        self.used = 0
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


class _FrameQueue(ContextQueue):
    """A :class:`ContextQueue` that also knows which frame each slot holds (``frames``)."""

    def __init__(self, n_last: int, hwc: tuple[int, int, int], num_labels: int, device: torch.device,
                 keep_bf16: bool, key_dtype: torch.dtype):
        super().__init__(n_last, hwc, num_labels, device, keep_bf16, key_dtype)
        self.frames: list[int] = [-1] * (1 + n_last)
        self._current = -1

    def _store(self, slot: int, keys_hwc: torch.Tensor, labels_hwk: torch.Tensor) -> None:
        super()._store(slot, keys_hwc, labels_hwk)
        self.frames[slot] = self._current

    def add_fixed(self, keys_hwc: torch.Tensor, labels_hwk: torch.Tensor) -> None:
        self.frames.insert(self.fixed, -1)  # the slots from here on move up by one, as the buffers do
        super().add_fixed(keys_hwc, labels_hwk)


class CachedPropagator(LabelPropagator):
    """A :class:`LabelPropagator` that keeps each (frame, context frame) pair's candidates in ``store`` and reuses
    them (see the module docstring). Every call names its frame (``frame=``): the index the store files it under.

    The bf16 screen, where it is used, is used on every frame (no pause when features are too alike for it:
    a pair's candidates must not depend on the frames before it).
    """

    def __init__(self, cfg: PropagationConfig, store: CandidateStore, device: str | torch.device | None = None):
        super().__init__(cfg, device)
        self.store = store
        self.queue: _FrameQueue | None = None

    def start(self, feats: torch.Tensor, labels: torch.Tensor, frame: int = 0) -> None:  # type: ignore[override]
        """Frame ``frame`` (the first keyframe): features ``[C, h, w]`` and labels ``[K, h, w]``."""
        if feats.shape[1:] != labels.shape[1:]:
            raise ValueError(f"features {tuple(feats.shape)} and labels {tuple(labels.shape)} are on different grids")
        c, h, w = feats.shape
        self.queue = _FrameQueue(self.cfg.n_last_frames, (h, w, c), labels.shape[0], self.device, self.screen,
                                 self.key_dtype)
        keys, labels_hwk = self._hwc(feats.to(self.device)), labels.to(self.device, torch.float32).permute(1, 2, 0)
        self.queue._current = frame
        self.queue.set_first(keys, labels_hwk)
        if self.cfg.queue_init == "copies":
            for _ in range(self.cfg.n_last_frames):
                self.queue.push(keys, labels_hwk)

    def add_keyframe(self, feats: torch.Tensor, labels: torch.Tensor, frame: int = -1) -> None:  # type: ignore[override]
        if self.queue is not None:
            self.queue._current = frame
        super().add_keyframe(feats, labels)

    def replay(self, feats: torch.Tensor, labels: torch.Tensor, frame: int = -1) -> None:  # type: ignore[override]
        if self.queue is not None:
            self.queue._current = frame
        super().replay(feats, labels)

    def step(self, feats: torch.Tensor, frame: int = -1) -> torch.Tensor:  # type: ignore[override]
        """Soft labels ``[K, h, w]`` of frame ``frame`` from its features ``[C, h, w]``; it joins the context."""
        if self.queue is None:
            raise RuntimeError("call start() with the first keyframe before step()")
        if frame < 0:
            raise ValueError("CachedPropagator.step needs the frame's index (frame=)")
        query = self._hwc(feats.to(self.device))
        queue = self.queue
        if query.shape != queue.keys.shape[1:]:
            raise ValueError(f"features {tuple(feats.shape)} do not match the first keyframe's grid "
                             f"{tuple(queue.keys.shape[1:])}")
        labels = self._propagate(query, frame)
        queue._current = frame
        queue.push(query, labels)
        return labels.permute(2, 0, 1)

    def _windowed(self, slot: int) -> bool:
        return self.cfg.window != "none" and (self.cfg.window_first or slot >= self.queue.fixed)  # type: ignore[union-attr]

    def _propagate(self, query: torch.Tensor, frame: int) -> torch.Tensor:
        """``[h, w, K]`` soft labels of ``query [h, w, C]``: each context slot's kept candidates, merged."""
        queue = self.queue
        assert queue is not None
        _, h, w, c = queue.keys.shape
        hw = h * w
        used = queue.fixed + queue.count
        scores, ids = [], []
        query_err = _bf16_residual(query) if self.screen else None
        for slot in range(used):
            pair = (queue.frames[slot], self._windowed(slot))
            kept = self.store.get(frame, pair)
            if kept is None:
                kept = self._pair(query, query_err, slot, pair[1])
                self.store.put(frame, pair, kept)
                self.store.computed += 1
            else:
                self.store.reused += 1
            s, i = kept
            scores.append(s.to(self.device))
            ids.append(i.to(self.device).long().clamp_(min=0) + slot * hw)
        scores_all, flat = torch.cat(scores, 1), torch.cat(ids, 1)  # [hw, sum W]
        weights = _topk_weights(scores_all, int(self.cfg.topk), self.cfg.temperature, self.cfg.topk_rule, flat)
        labels_flat = queue.labels.view(-1, queue.labels.shape[-1])
        out = torch.bmm(weights.unsqueeze(1), labels_flat[flat]).squeeze(1)  # [hw, K]
        return out.view(h, w, -1)

    def _pair(self, query: torch.Tensor, query_err: torch.Tensor | None, slot: int, windowed: bool) -> Kept:
        """The kept candidates of ``query [h, w, C]`` in context slot ``slot``: per query, every key scoring >= the
        slot's k-th largest (window applied if ``windowed``) -> scores ``[hw, W]``, ids ``[hw, W]`` (-1: padding)."""
        queue = self.queue
        assert queue is not None
        _, h, w, c = queue.keys.shape
        radius = int(self.cfg.radius) if windowed else max(h, w)
        rows_t, cols_t = propagation.TILE
        tiles: list[tuple[int, int, int, int, torch.Tensor, torch.Tensor]] = []
        for ty0 in range(0, h, rows_t):
            for tx0 in range(0, w, cols_t):
                ty1, tx1 = min(h, ty0 + rows_t), min(w, tx0 + cols_t)
                s, i = self._pair_tile(query, query_err, slot, windowed, radius, (ty0, ty1, tx0, tx1))
                tiles.append((ty0, ty1, tx0, tx1, s, i))
        width = max(s.shape[1] for *_, s, _ in tiles)
        scores = torch.full((h, w, width), -math.inf, dtype=torch.float32, device=query.device)
        ids = torch.full((h, w, width), -1, dtype=torch.int32, device=query.device)
        for ty0, ty1, tx0, tx1, s, i in tiles:
            scores[ty0:ty1, tx0:tx1, :s.shape[1]] = s.view(ty1 - ty0, tx1 - tx0, -1)
            ids[ty0:ty1, tx0:tx1, :s.shape[1]] = i.view(ty1 - ty0, tx1 - tx0, -1)
        return scores.view(h * w, width).cpu(), ids.view(h * w, width).cpu()

    def _pair_tile(self, query: torch.Tensor, query_err: torch.Tensor | None, slot: int, windowed: bool,
                   radius: int, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One tile's kept candidates in one slot: scores ``[nq, W]`` (-inf padding), ids ``[nq, W]`` int32."""
        queue = self.queue
        assert queue is not None
        _, h, w, c = queue.keys.shape
        ty0, ty1, tx0, tx1 = box
        ry0, ry1 = max(0, ty0 - radius), min(h, ty1 + radius)
        rx0, rx1 = max(0, tx0 - radius), min(w, tx1 + radius)
        sw = rx1 - rx0
        k = int(self.cfg.topk)
        q32 = query[ty0:ty1, tx0:tx1].reshape(-1, c)
        region32 = queue.keys[slot, ry0:ry1, rx0:rx1].reshape(-1, c)
        bias = None
        if windowed:
            geometry = (ty1 - ty0, tx1 - tx0, ty0 - ry0, tx0 - rx0, ry1 - ry0, sw)
            bias = _window_bias(geometry, self.cfg.window, radius, torch.float32, query.device).view(q32.shape[0], -1)

        def decode(i: torch.Tensor) -> torch.Tensor:
            return ((ry0 + i // sw) * w + rx0 + i % sw).to(torch.int32)

        if self.screen and query_err is not None and queue.keys_bf16 is not None:
            region = queue.keys_bf16[slot, ry0:ry1, rx0:rx1].reshape(-1, c)
            scores = q32.to(torch.bfloat16) @ region.T
            if bias is not None:
                scores += bias.to(scores.dtype)
            err = float(queue.bf16_error[slot])
            acc = c * 2.0**-23 + (BF16_UNIT if query.device.type == "cuda" else 0.0)
            qerr = query_err[ty0:ty1, tx0:tx1].reshape(-1)
            return self._screened(scores, q32, region32, bias, err + qerr * (1 + err) + acc, k, decode)
        scores = q32 @ region32.T  # fp32, or the reduced affinity dtype (no re-check)
        if bias is not None:
            scores += bias.to(scores.dtype)
        return _kept_exact(scores, k, decode)

    def _screened(self, scores: torch.Tensor, q32: torch.Tensor, region32: torch.Tensor, bias: torch.Tensor | None,
                  err: torch.Tensor, k: int, decode) -> tuple[torch.Tensor, torch.Tensor]:
        """bf16 ``scores [nq, L]`` -> every key that can reach the slot's fp32 top-k, rescored in fp32, cut at the
        fp32 k-th value (ties kept). Queries that would need too many candidates are scored in fp32 instead."""
        n = scores.shape[1]
        m = min(max(PAIR_CANDIDATES, 2 * k), n)
        vals, idx = torch.topk(scores, m, dim=1)
        thr = _screen_threshold(vals[:, min(k, m) - 1].float(), err)
        last = vals[:, m - 1].float()
        bad = ((last >= thr) & torch.isfinite(last)).nonzero(as_tuple=True)[0] if m < n else idx.new_empty(0)
        out_s, out_i = _rescore_keep(vals, idx, thr, q32, region32, k)
        if len(bad) == 0:
            return out_s, decode(out_i)
        need = int((scores[bad] >= thr[bad, None]).sum(1).max())
        if need <= MAX_CANDIDATES_PER_QUERY:
            v2, i2 = torch.topk(scores[bad], need, dim=1)
            s2, j2 = _rescore_keep(v2, i2, thr[bad], q32[bad], region32, k)
        else:  # features too alike for the screen: these queries are scored in fp32
            exact = q32[bad] @ region32.T
            if bias is not None:
                exact += bias[bad]
            s2, j2 = _kept_exact_rows(exact, k)
        return _replace_rows(out_s, out_i, bad, s2, j2, decode)


def _rescore_keep(vals: torch.Tensor, idx: torch.Tensor, thr: torch.Tensor, q32: torch.Tensor,
                  region32: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates ``idx [nq, M]`` with screened ``vals`` >= ``thr [nq]`` rescored in fp32 (one dot product each),
    then cut at the fp32 k-th value, ties kept -> scores ``[nq, W]`` (-inf padding), region columns ``[nq, W]``."""
    screened = vals.float()
    rows, cols = ((screened >= thr[:, None]) & torch.isfinite(screened)).nonzero(as_tuple=True)
    exact = torch.full(vals.shape, -math.inf, dtype=torch.float32, device=vals.device)
    keys = region32.index_select(0, idx[rows, cols])
    exact[rows, cols] = torch.bmm(keys.unsqueeze(1), q32.index_select(0, rows).unsqueeze(2)).view(-1)
    return _cut(exact, idx, k)


def _kept_exact(scores: torch.Tensor, k: int, decode) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``scores [nq, L]`` (-inf outside the window) -> every key >= the k-th value, decoded ids."""
    s, i = _kept_exact_rows(scores, k)
    return s, decode(i)


def _kept_exact_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = scores.shape[1]
    m = min(max(PAIR_CANDIDATES, 2 * k), n)
    vals, idx = torch.topk(scores, m, dim=1)
    kth = vals[:, min(k, m) - 1]
    last = vals[:, m - 1]
    if m < n and bool(((last >= kth) & torch.isfinite(last)).any()):  # ties beyond the first cut: widen
        need = int((scores >= kth[:, None]).sum(1).max())
        vals, idx = torch.topk(scores, need, dim=1)
    return _cut(vals, idx, k)


def _cut(exact: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row keep the scores >= the k-th largest finite one (all finite ones if fewer than k), moved to the
    front in their order -> ``[nq, W]`` scores (-inf padding) and the matching ``idx`` (0 padding)."""
    kth = torch.topk(exact, min(k, exact.shape[1]), dim=1).values[:, -1:]
    keep = (exact >= kth) & torch.isfinite(exact)
    width = max(1, int(keep.sum(1).max()))
    order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :width]
    kept = keep.gather(1, order)
    s = torch.where(kept, exact.gather(1, order), torch.full((), -math.inf, device=exact.device))
    i = torch.where(kept, idx.gather(1, order), torch.zeros((), dtype=idx.dtype, device=idx.device))
    return s, i


def _replace_rows(s: torch.Tensor, i: torch.Tensor, rows: torch.Tensor, s2: torch.Tensor, i2: torch.Tensor,
                  decode) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``rows`` of (scores, region columns) replaced by wider ones; both decoded to key ids."""
    width = max(s.shape[1], s2.shape[1])

    def pad(a: torch.Tensor, value: float) -> torch.Tensor:
        return torch.cat([a, a.new_full((a.shape[0], width - a.shape[1]), value)], 1) if a.shape[1] < width else a

    s, i, s2, i2 = pad(s, -math.inf), pad(i, 0), pad(s2, -math.inf), pad(i2, 0)
    s, i = s.clone(), i.clone()
    s[rows], i[rows] = s2, i2
    return s, decode(i)
