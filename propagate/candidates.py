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
from typing import Callable, Sequence

import torch

from propagate.config import PropagationConfig
from propagate.propagation import (
    BF16_UNIT,
    ContextQueue,
    LabelPropagator,
    _bf16_residual,
    _screen_threshold,
    _topk_weights,
    _window_bias,
)

PAIR_TILE = (6, 8)  # query tile (rows, cols) of the pair scoring: small, so little of each matmul is wasted
# outside the windows; pairs are scored in batches, so more tiles cost little (measured for radius 10, 36x64 grid)
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
        self._fresh: set[tuple[int, int, bool]] = set()  # pairs scored ahead of their frame, not yet used

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

    def step(self, feats: torch.Tensor, push: bool = True, frame: int = -1,  # type: ignore[override]
             ahead: Sequence[int] = (), features: Callable[[int], torch.Tensor] | None = None) -> torch.Tensor:
        """Soft labels ``[K, h, w]`` of frame ``frame`` from its features ``[C, h, w]``; it joins the context
        (unless ``push`` is False: see :meth:`LabelPropagator.step`).

        ``ahead``: the frames to be propagated next, in order, before any keyframe, and ``features(t)`` theirs:
        when this frame needs a pair the store lacks, those frames' missing pairs are scored with it, in batches
        (:meth:`_prefetch`; the results are the same, only faster)."""
        if self.queue is None:
            raise RuntimeError("call start() with the first keyframe before step()")
        if frame < 0:
            raise ValueError("CachedPropagator.step needs the frame's index (frame=)")
        query = self._hwc(feats.to(self.device))
        queue = self.queue
        if query.shape != queue.keys.shape[1:]:
            raise ValueError(f"features {tuple(feats.shape)} do not match the first keyframe's grid "
                             f"{tuple(queue.keys.shape[1:])}")
        labels = self._propagate(query, frame, ahead if features is not None else (), features)
        if push:
            queue._current = frame
            queue.push(query, labels)
        return labels.permute(2, 0, 1)

    def _windowed(self, slot: int) -> bool:
        return self.cfg.window != "none" and (self.cfg.window_first or slot >= self.queue.fixed)  # type: ignore[union-attr]

    def _propagate(self, query: torch.Tensor, frame: int, ahead: Sequence[int] = (),
                   features: Callable[[int], torch.Tensor] | None = None) -> torch.Tensor:
        """``[h, w, K]`` soft labels of ``query [h, w, C]``: each context slot's kept candidates, merged."""
        queue = self.queue
        assert queue is not None
        _, h, w, c = queue.keys.shape
        hw = h * w
        used = queue.fixed + queue.count
        pairs = [(queue.frames[slot], self._windowed(slot)) for slot in range(used)]
        if features is not None and any(self.store.get(frame, pair) is None for pair in pairs):
            self._prefetch(frame, query, ahead, features)
        kept: dict[Pair, Kept] = {}
        missing: dict[Pair, int] = {}  # pair -> a slot holding it (copies of a frame share their pair)
        for slot, pair in enumerate(pairs):
            found = kept.get(pair) if pair in kept else self.store.get(frame, pair)
            if found is not None:
                if pair not in kept and (frame, *pair) in self._fresh:
                    self._fresh.discard((frame, *pair))  # scored ahead for this frame: counted as computed
                else:
                    self.store.reused += 1
                kept[pair] = found
            elif pair not in missing:
                missing[pair] = slot
        for windowed in (True, False):
            group = [(pair, slot) for pair, slot in missing.items() if pair[1] == windowed]
            if group:
                computed = self._pairs(query, [slot for _, slot in group], windowed)
                for (pair, _), result in zip(group, computed):
                    kept[pair] = result
                    self.store.put(frame, pair, result)
                    self.store.computed += 1
        self.store.reused += sum(1 for slot, pair in enumerate(pairs) if pair in missing and missing[pair] != slot)
        scores = torch.cat([kept[pair][0].to(self.device) for pair in pairs], 1)  # [hw, sum W]
        flat = torch.cat([kept[pair][1].to(self.device).long().clamp_(min=0) + slot * hw
                          for slot, pair in enumerate(pairs)], 1)
        weights = _topk_weights(scores, int(self.cfg.topk), self.cfg.temperature, self.cfg.topk_rule, flat)
        labels_flat = queue.labels.view(-1, queue.labels.shape[-1])
        out = torch.bmm(weights.unsqueeze(1), labels_flat[flat]).squeeze(1)  # [hw, K]
        return out.view(h, w, -1)

    def _pairs(self, query: torch.Tensor, slots: list[int], windowed: bool) -> list[Kept]:
        """The kept candidates of ``query [h, w, C]`` in each of ``slots`` of the queue (all windowed, or none)
        (:func:`score_pairs`)."""
        queue = self.queue
        assert queue is not None
        index = torch.tensor(slots, device=query.device)
        screen = self.screen and queue.keys_bf16 is not None
        keys = queue.keys.index_select(0, index)
        chosen = queue.keys_bf16.index_select(0, index) if screen and queue.keys_bf16 is not None else keys
        key_err = queue.bf16_error.index_select(0, index) if screen else None
        return score_pairs(query[None], keys, chosen, key_err, windowed, self.cfg)

    def _prefetch(self, frame: int, query: torch.Tensor, ahead: Sequence[int],
                  features: Callable[[int], torch.Tensor]) -> None:
        """Score, in batches, the pairs this frame and the frames ``ahead`` (the next ones to be propagated, in
        order, before any keyframe) will need and the store lacks: the same candidates each step would compute
        alone, with fewer and larger matmuls. The context ahead is known without labels: the permanent frames
        stay, and each propagated frame joins the recent ones."""
        queue = self.queue
        assert queue is not None
        fixed = queue.frames[:queue.fixed]
        recent = [queue.frames[queue.fixed + (queue.next_slot - queue.fixed - queue.count + i) % queue.n_last]
                  for i in range(queue.count)] if queue.n_last else []
        needed: dict[bool, list[tuple[int, int]]] = {True: [], False: []}  # windowed -> (frame, context frame)
        seen: set[tuple[int, int, bool]] = set()
        for t in [frame, *ahead]:
            for slot, s in enumerate(fixed + recent):
                windowed = self.cfg.window != "none" and (self.cfg.window_first or slot >= len(fixed))
                if (t, s, windowed) not in seen and self.store.get(t, (s, windowed)) is None:
                    seen.add((t, s, windowed))
                    needed[windowed].append((t, s))
            recent = (recent + [t])[-self.cfg.n_last_frames:] if self.cfg.n_last_frames else []
        keys: dict[int, torch.Tensor] = {frame: query}

        def keys_of(t: int) -> torch.Tensor:
            if t not in keys:
                slot = queue.frames.index(t) if t in queue.frames else -1
                keys[t] = queue.keys[slot] if slot >= 0 else self._hwc(features(t).to(self.device))
            return keys[t]

        for windowed, pairs in needed.items():
            for b0 in range(0, len(pairs), PAIR_BATCH):
                batch = pairs[b0:b0 + PAIR_BATCH]
                queries = torch.stack([keys_of(t) for t, _ in batch])
                context = torch.stack([keys_of(s) for _, s in batch])
                chosen, key_err = context, None
                if self.screen:
                    chosen = context.to(torch.bfloat16)
                    key_err = torch.stack([_bf16_residual(c.float()).max() for c in context])
                for (t, s), kept in zip(batch, score_pairs(queries, context, chosen, key_err, windowed, self.cfg)):
                    self.store.put(t, (s, windowed), kept)
                    self.store.computed += 1
                    self._fresh.add((t, s, windowed))


PAIR_BATCH = 16  # pairs scored together when the frames ahead are prefetched


def score_pairs(queries: torch.Tensor, keys: torch.Tensor, chosen: torch.Tensor, key_err: torch.Tensor | None,
                windowed: bool, cfg: PropagationConfig) -> list[Kept]:
    """The kept candidates of pairs ``j`` = (query frame ``queries[j]``, context frame ``keys[j]``): per query,
    every key scoring >= that pair's k-th largest -> per pair scores ``[hw, W]`` (-inf padding) and key ids
    ``[hw, W]`` (``y * w + x``, -1 padding), ids ascending.

    ``queries [n or 1, h, w, C]`` (one frame: shared by every pair), ``keys [n, h, w, C]`` l2-normalised;
    ``chosen`` the keys the selection scores use (a bf16 copy when screening, with ``key_err [n]`` the largest
    norm of a key's bf16 rounding residual per frame; else ``keys`` and None). The pairs are scored together (one
    matmul per tile), which only selects candidates: every key that can reach a pair's top-k under the selection's
    rounding is rescored alone (one dot product, :func:`_dots`), and the kept set and its scores come from those.
    So a pair's result does not depend on which other pairs were scored with it.
    """
    n, h, w, c = keys.shape
    n_q = queries.shape[0]
    hw, k = h * w, int(cfg.topk)
    radius = int(cfg.radius) if windowed else max(h, w)
    screen = key_err is not None
    device = keys.device
    keys_flat = keys.reshape(n * hw, c)
    query_err = _bf16_residual(queries.float()) if screen else None  # [n_q, h, w]
    unit = {torch.float16: 2.0**-11, torch.bfloat16: BF16_UNIT}.get(keys.dtype, 0.0)
    dots_err = c * 2.0**-24 * 1.01 + unit  # bound on |a selection score or a rescored one - the exact dot|
    rows_t, cols_t = PAIR_TILE
    tiles: list[tuple[tuple[int, int, int, int], torch.Tensor, torch.Tensor]] = []
    widths = torch.ones(n, dtype=torch.long, device=device)  # per pair, the most keys a query keeps
    for tx0 in range(0, w, cols_t):
        tx1 = min(w, tx0 + cols_t)
        rx0, rx1 = max(0, tx0 - radius), min(w, tx1 + radius)
        sw = rx1 - rx0
        stripe = chosen[:, :, rx0:rx1].contiguous()  # [n, h, sw, C]
        for ty0 in range(0, h, rows_t):
            ty1 = min(h, ty0 + rows_t)
            ry0, ry1 = max(0, ty0 - radius), min(h, ty1 + radius)
            ry = ry1 - ry0
            q = queries[:, ty0:ty1, tx0:tx1].reshape(n_q, -1, c)  # [n_q, nq, C]
            nq = q.shape[1]
            region = stripe[:, ry0:ry1].reshape(n, ry * sw, c)  # a view: rows of each frame are contiguous
            scores = torch.matmul(q.to(torch.bfloat16) if screen else q, region.transpose(1, 2))  # [n, nq, L]
            if windowed:
                geometry = (ty1 - ty0, tx1 - tx0, ty0 - ry0, tx0 - rx0, ry, sw)
                bias = _window_bias(geometry, cfg.window, radius, scores.dtype, device)
                scores.view(n, nq, ry, sw).add_(bias[None])
            per_pair = scores.view(n * nq, ry * sw)  # row j * nq + q: query q of pair j
            m = min(max(PAIR_CANDIDATES, 2 * k), per_pair.shape[1])
            vals, cols = torch.topk(per_pair, m, dim=1)
            kth = vals[:, min(k, m) - 1].float()
            if screen:
                assert query_err is not None and key_err is not None
                key_e = key_err.repeat_interleave(nq)
                q_e = query_err[:, ty0:ty1, tx0:tx1].reshape(n_q, -1)
                q_e = q_e.expand(n, -1).reshape(-1) if n_q == 1 else q_e.reshape(-1)
                acc = c * 2.0**-23 + (BF16_UNIT if device.type == "cuda" else 0.0)
                thr = _screen_threshold(kth, key_e + q_e * (1 + key_e) + acc + 2 * dots_err)
            else:
                thr = kth - 4 * dots_err - 1e-7
            last = vals[:, m - 1].float()
            if m < per_pair.shape[1]:
                bad = ((last >= thr) & torch.isfinite(last)).nonzero(as_tuple=True)[0]
                if len(bad):  # the first cut may miss keys that can reach the top-k: widen those rows
                    need = int((per_pair[bad].float() >= thr[bad, None]).sum(1).max())
                    v2, c2 = torch.topk(per_pair[bad], need, dim=1)
                    vals, cols = _widen(vals, cols, bad, v2, c2)
            cand_rows, cand_cols = ((vals.float() >= thr[:, None]) & torch.isfinite(vals)).nonzero(as_tuple=True)
            col = cols[cand_rows, cand_cols]
            local = (ry0 + col // sw) * w + rx0 + col % sw
            pair_of = torch.div(cand_rows, nq, rounding_mode="floor")
            q_rows = q.reshape(n_q * nq, c).index_select(0, cand_rows % nq if n_q == 1 else cand_rows)
            exact = torch.full(vals.shape, -math.inf, dtype=torch.float32, device=device)
            exact[cand_rows, cand_cols] = _dots(keys_flat.index_select(0, pair_of * hw + local), q_rows)
            ids = torch.full(vals.shape, hw, dtype=torch.long, device=device)
            ids[cand_rows, cand_cols] = local
            s_kept, i_kept, count = _cut_by_id(exact, ids, k, hw)
            widths = torch.maximum(widths, count.view(n, nq).max(1).values)
            tiles.append(((ty0, ty1, tx0, tx1), s_kept.view(n, nq, -1), i_kept.view(n, nq, -1)))
    results = []
    for j, width in enumerate(widths.tolist()):
        scores_out = torch.full((h, w, width), -math.inf, dtype=torch.float32, device=device)
        ids_out = torch.full((h, w, width), -1, dtype=torch.int32, device=device)
        for (ty0, ty1, tx0, tx1), s_t, i_t in tiles:
            part = min(width, s_t.shape[2])
            scores_out[ty0:ty1, tx0:tx1, :part] = s_t[j, :, :part].reshape(ty1 - ty0, tx1 - tx0, part)
            ids_out[ty0:ty1, tx0:tx1, :part] = i_t[j, :, :part].reshape(ty1 - ty0, tx1 - tx0, part)
        results.append((scores_out.view(hw, width).cpu(), ids_out.view(hw, width).cpu()))
    return results


DOT_CHUNK = 256  # channels per batched dot product: small enough for torch's plain loop kernel (under 400 products)


def _dots(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``[n]`` float32 dot products of ``keys [n, C]`` and ``queries [n, C]``, each computed alone: chunks of
    :data:`DOT_CHUNK` channels, each one sequential sum (torch's loop kernel for small batched matmuls, not a BLAS
    that may split or reorder by batch size), the chunks added in order -- the same bits whatever else is computed
    with it."""
    total = None
    for c0 in range(0, keys.shape[1], DOT_CHUNK):
        part = torch.bmm(keys[:, None, c0:c0 + DOT_CHUNK], queries[:, c0:c0 + DOT_CHUNK, None]).view(-1).float()
        total = part if total is None else total + part
    assert total is not None
    return total


def _widen(vals: torch.Tensor, cols: torch.Tensor, rows: torch.Tensor, v2: torch.Tensor,
           c2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``rows`` of the first cut ``(vals, cols) [R, m]`` replaced by wider ones ``[len(rows), need]``."""
    width = max(vals.shape[1], v2.shape[1])

    def pad(a: torch.Tensor, value: float) -> torch.Tensor:
        return torch.cat([a, a.new_full((a.shape[0], width - a.shape[1]), value)], 1) if a.shape[1] < width else a

    vals, cols = pad(vals, -math.inf).clone(), pad(cols, 0).clone()
    vals[rows], cols[rows] = pad(v2, -math.inf), pad(c2, 0)
    return vals, cols


def _cut_by_id(exact: torch.Tensor, ids: torch.Tensor, k: int,
               sentinel: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row keep the scores >= the k-th largest finite one (every finite one if fewer than k), ordered by key id
    -> scores ``[R, W]`` (-inf padding), ids ``[R, W]`` (-1 padding) and the count kept ``[R]``."""
    kth = torch.topk(exact, min(k, exact.shape[1]), dim=1).values[:, -1:]
    keep = (exact >= kth) & torch.isfinite(exact)
    count = keep.sum(1)
    width = max(1, int(count.max()))
    order = torch.where(keep, ids, torch.full_like(ids, sentinel)).argsort(dim=1)[:, :width]
    kept = keep.gather(1, order)
    s = torch.where(kept, exact.gather(1, order), torch.full((), -math.inf, device=exact.device))
    i = torch.where(kept, ids.gather(1, order), torch.full((), -1, dtype=ids.dtype, device=ids.device))
    return s, i.to(torch.int32), count
