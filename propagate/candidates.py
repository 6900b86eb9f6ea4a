"""Kept top-k candidates, so that a later pass over the same frames costs a gather instead of an affinity.

A frame's top-k keys and their weights depend only on the features of it and of its context frames, never on
labels. :class:`CandidateStore` keeps, per (query frame, context frame, windowed or not), the keys of that context
frame that can reach the top-k of any context the frame is part of: every key scoring >= that frame's own k-th
largest score (ties kept). The top-k over a union of frames lies within the union of each frame's top-k (the k-th
value of the union is >= each part's), so the weights over any context set are those kept scores merged and cut
again by :func:`propagate.propagation._topk_weights` -- for both ``topk_rule``\\ s, since every key tied at the
union's k-th value is kept.

:class:`CachedPropagator` is a :class:`propagate.propagation.LabelPropagator` told which frame each step is: it
scores the (frame, context frame) pairs the store does not hold yet and merges. Every pair is scored alone, by the
same operations on the same shapes whatever the rest of the context (:func:`score_pairs`: its own matmul per query
tile, in the affinity's dtype, and each query's k-th score found from that pair's scores only), so a pair's kept
scores are the same bits in every pass: a pass that reuses them gives exactly the soft labels of a pass from
scratch. (Against :class:`~propagate.propagation.LabelPropagator`, which scores the whole context in one matmul,
results agree to float rounding.)

The store keeps pairs in memory up to a budget, then spills whole query frames to a scratch folder it creates and
removes (:meth:`CandidateStore.close`).
"""
from __future__ import annotations

import functools
import math
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch

from propagate.config import PropagationConfig
from propagate.propagation import ContextQueue, LabelPropagator, _topk_weights, _window_bias

PAIR_TILE = (6, 8)  # query tile (rows, cols) of the pair scoring: small, so little of each matmul is wasted
# outside the windows (measured for radius 10, 36x64 grid)
PAIR_BLOCK = 4  # keys per block of a region row: the k largest block maxima bound where each query's top-k lie
PAIR_SLACK = 2  # keys beyond k taken from those blocks (more ties at the k-th score: that row is cut again, whole)
PAIR_SCORE_BYTES = 64 * 2**20  # scores of the pairs scored together (more pairs: in several rounds)
PAIR_BATCH = 16  # pairs scored together when the frames ahead are prefetched
MERGE_SLACK = 8  # scores beyond the k-th a merge looks at, at least one per context frame (room for the ties
# alike frames give: a still background scores the same in each of them); more ties there: that row, whole
MEMORY_BYTES = 1 * 2**30  # kept candidates held in memory before whole query frames spill to the scratch folder
KEYS_BYTES = 256 * 2**20  # normalised keys of recently used frames kept (beyond it: normalised again when needed)

Pair = tuple[int, bool]  # (context frame, windowed)
Kept = tuple[torch.Tensor, torch.Tensor]  # scores [hw, W] float32 (-inf padding), key ids [hw, W] int32 (y * w + x)


class CandidateStore:
    """Kept candidates per (query frame, context frame, windowed), in memory up to ``memory_bytes``, then in a
    scratch folder (created under ``scratch_parent``, default the system's temporary folder, and removed by
    :meth:`close`).

    ``computed`` and ``reused`` count the pairs (one frame's affinity to one context frame) scored and taken from
    the store since the last :meth:`reset_counts`. It also keeps the l2-normalised keys of the frames used last
    (:meth:`keys`, up to ``keys_bytes``), so a later pass does not normalise them again.
    """

    def __init__(self, memory_bytes: int = MEMORY_BYTES, scratch_parent: str | Path | None = None,
                 keys_bytes: int = KEYS_BYTES):
        self.memory_bytes = memory_bytes
        self.keys_bytes = keys_bytes
        self._keys: OrderedDict[int, torch.Tensor] = OrderedDict()  # frame -> keys [h, w, C], least recent first
        self._keys_used = 0
        self.scratch_parent = scratch_parent
        self.scratch: Path | None = None
        self._ram: OrderedDict[int, dict[Pair, Kept]] = OrderedDict()  # query frame -> pairs, least recent first
        self._spilled: set[int] = set()
        self.used = 0
        self.computed = 0
        self.reused = 0

    def reset_counts(self) -> None:
        self.computed = self.reused = 0

    def keys(self, frame: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Frame ``frame``'s normalised keys ``[h, w, C]``: those kept from an earlier call, else ``make()`` (kept
        in turn; the least recently used go beyond ``keys_bytes``). Callers do not modify them."""
        if frame in self._keys:
            self._keys.move_to_end(frame)
            return self._keys[frame]
        keys = make()
        self._keys[frame] = keys
        self._keys_used += keys.numel() * keys.element_size()
        while self._keys_used > self.keys_bytes and len(self._keys) > 1:
            _, old = self._keys.popitem(last=False)
            self._keys_used -= old.numel() * old.element_size()
        return keys

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
        self._keys.clear()
        self._keys_used = 0
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

    There is no bf16 screen here: scores are computed in the affinity's dtype (``propagation.affinity_dtype``) and
    used as they are.
    """

    def __init__(self, cfg: PropagationConfig, store: CandidateStore, device: str | torch.device | None = None):
        super().__init__(cfg, device)
        self.screen = False  # scores in the affinity's dtype, each pair alone (see score_pairs)
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
        keys, labels_hwk = self._keys_of(frame, feats), labels.to(self.device, torch.float32).permute(1, 2, 0)
        self.queue._current = frame
        self.queue.set_first(keys, labels_hwk)
        if self.cfg.queue_init == "copies":
            for _ in range(self.cfg.n_last_frames):
                self.queue.push(keys, labels_hwk)

    def _keys_of(self, frame: int, feats: torch.Tensor | Callable[[], torch.Tensor]) -> torch.Tensor:
        """Frame ``frame``'s keys ``[h, w, C]`` from its features ``[C, h, w]`` (or a function giving them), kept by
        the store (:meth:`CandidateStore.keys`; ``frame`` < 0: not kept)."""
        def make() -> torch.Tensor:
            return self._hwc((feats() if callable(feats) else feats).to(self.device))
        return make() if frame < 0 else self.store.keys(frame, make)

    def add_keyframe(self, feats: torch.Tensor, labels: torch.Tensor, frame: int = -1) -> None:  # type: ignore[override]
        queue = self.queue
        if queue is None:
            raise RuntimeError("call start() with the first keyframe before add_keyframe()")
        if labels.shape[0] != queue.labels.shape[-1] or feats.shape[1:] != labels.shape[1:]:
            raise ValueError(f"keyframe labels {tuple(labels.shape)} do not match the context's "
                             f"{queue.labels.shape[-1]} labels on the grid of features {tuple(feats.shape)}")
        queue._current = frame
        queue.add_fixed(self._keys_of(frame, feats), labels.to(self.device, torch.float32).permute(1, 2, 0))

    def replay(self, feats: torch.Tensor, labels: torch.Tensor, frame: int = -1) -> None:  # type: ignore[override]
        if self.queue is None:
            raise RuntimeError("call start() with frame 0 before replay()")
        self.queue._current = frame
        self.queue.push(self._keys_of(frame, feats), labels.to(self.device, torch.float32).permute(1, 2, 0))

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
        query = self._keys_of(frame, feats)
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
            self._prefetch(frame, ahead, features)
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
        labels_flat = queue.labels.view(-1, queue.labels.shape[-1])
        return _merge(scores, flat, labels_flat, self.cfg, len(pairs)).view(h, w, -1)

    def _pairs(self, query: torch.Tensor, slots: list[int], windowed: bool) -> list[Kept]:
        """The kept candidates of ``query [h, w, C]`` in each of ``slots`` of the queue (all windowed, or none)
        (:func:`score_pairs`)."""
        queue = self.queue
        assert queue is not None
        return score_pairs([query], [queue.keys[slot] for slot in slots], windowed, self.cfg)

    def _prefetch(self, frame: int, ahead: Sequence[int],
                  features: Callable[[int], torch.Tensor]) -> None:
        """Score, in batches, the pairs this frame and the frames ``ahead`` (the next ones to be propagated, in
        order, before any keyframe) will need and the store lacks: the same candidates each step would compute
        alone (:func:`score_pairs` scores every pair alone), with their top-k selected together and the copies of
        frames they share made once. The context ahead is known without labels: the permanent frames stay, and
        each propagated frame joins the recent ones."""
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
        def keys_of(t: int) -> torch.Tensor:  # the store keeps them (this frame's, from its step)
            return self._keys_of(t, lambda: features(t))

        for windowed, pairs in needed.items():
            for b0 in range(0, len(pairs), PAIR_BATCH):
                batch = pairs[b0:b0 + PAIR_BATCH]
                scored = score_pairs([keys_of(t) for t, _ in batch], [keys_of(s) for _, s in batch], windowed,
                                     self.cfg)
                for (t, s), kept in zip(batch, scored):
                    self.store.put(t, (s, windowed), kept)
                    self.store.computed += 1
                    self._fresh.add((t, s, windowed))


def _merge(scores: torch.Tensor, flat: torch.Tensor, labels: torch.Tensor, cfg: PropagationConfig,
           slots: int = 1) -> torch.Tensor:
    """Soft labels ``[hw, K]`` from the kept candidates of every context frame, side by side: ``scores [hw, n]``
    (-inf padding) of ``slots`` context frames, their keys' rows ``flat [hw, n]`` in ``labels [slots * hw, K]``.

    Per query, the top-k scores and a softmax over them, by :func:`propagate.propagation._topk_weights`'s rules,
    weighing and gathering only the ``k + max(`` :data:`MERGE_SLACK` ``, slots)`` largest scores: where more keys
    tie at the k-th, that query takes its whole row."""
    k = min(int(cfg.topk), scores.shape[1])
    m = min(k + max(MERGE_SLACK, slots), scores.shape[1])
    vals, at = torch.topk(scores, m, dim=1)  # [hw, m], largest first
    ids = flat.gather(1, at)
    weights = _topk_weights(vals, k, cfg.temperature, cfg.topk_rule, ids, ordered=True)
    out = torch.bmm(weights.unsqueeze(1), labels[ids]).squeeze(1)  # [hw, K]
    if m < scores.shape[1]:
        rest = (torch.isfinite(vals[:, -1]) & (vals[:, -1] >= vals[:, k - 1])).nonzero(as_tuple=True)[0]
        if len(rest):  # keys tied at the k-th value may lie beyond the m looked at
            row_scores, row_flat = scores[rest], flat[rest]
            row_weights = _topk_weights(row_scores, k, cfg.temperature, cfg.topk_rule, row_flat)
            out[rest] = torch.bmm(row_weights.unsqueeze(1), labels[row_flat]).squeeze(1)
    return out


def score_pairs(queries: Sequence[torch.Tensor], keys: Sequence[torch.Tensor], windowed: bool,
                cfg: PropagationConfig) -> list[Kept]:
    """The kept candidates of pairs ``j`` = (query frame ``queries[j]``, context frame ``keys[j]``): per query,
    every key scoring >= that pair's k-th largest score -> per pair scores ``[hw, W]`` float32 (-inf padding) and
    key ids ``[hw, W]`` int32 (``y * w + x``, -1 padding), ids ascending.

    ``queries``: ``n`` frames ``[h, w, C]``, or one shared by every pair; ``keys``: ``n`` frames ``[h, w, C]``, all
    l2-normalised, in the affinity's dtype (the scores are computed and compared in it). Each pair's scores come
    from its own matmuls (one per query tile, on copies made for it: the same call on the same shapes in every
    pass), and each query's k-th score from them alone (:func:`_kept_in_rows`, row by row), so a pair's result does
    not depend on which other pairs were scored with it. Tiles whose regions have the same shape are laid out
    together, so that the selection runs as a few large operations.
    """
    n = len(keys)
    h, w, c = keys[0].shape
    hw, k = h * w, int(cfg.topk)
    radius = int(cfg.radius) if windowed else max(h, w)
    device, dtype = keys[0].device, keys[0].dtype
    layout = _layout(h, w, radius, PAIR_TILE, PAIR_BLOCK)
    chunk = max(1, PAIR_SCORE_BYTES // (hw * max(g.length for g in layout.groups) * 4))
    buffers = []  # per group of tiles: [pairs, tiles, nq, ry * sw_blocks], -inf where no key
    for g in layout.groups:
        buffer = torch.empty((min(n, chunk), len(g.tiles), g.nq, g.length), dtype=dtype, device=device)
        if g.sw_blocks > g.sw:
            buffer.view(*buffer.shape[:3], -1, g.sw_blocks)[..., g.sw:].fill_(-math.inf)
        buffers.append(buffer)
    place = {ti: (gi, at) for gi, g in enumerate(layout.groups) for at, ti in enumerate(g.tiles)}
    where = [g.qpos.to(device) for g in layout.groups]  # per group, the query cell of each of a pair's rows
    results: list[Kept] = []
    for j0 in range(0, n, chunk):
        part = range(j0, min(n, j0 + chunk))
        stripes: dict[int, torch.Tensor] = {}
        stripe_at = (-1, -1)
        # pairs that share a query frame (or a context frame) share its copies
        query_of = [_first_same(queries, 0 if len(queries) == 1 else j) for j in part]
        key_of = [_first_same(keys, j) for j in part]
        for ti, (ty0, ty1, tx0, tx1, ry0, ry1, rx0, rx1) in enumerate(layout.tiles):
            if (rx0, rx1) != stripe_at:  # tiles come column by column: one stripe of keys at a time
                stripes = {f: _fresh(keys[f][:, rx0:rx1]) for f in dict.fromkeys(key_of)}  # [h, sw, C] each
                stripe_at = (rx0, rx1)
            ry, sw, nq = ry1 - ry0, rx1 - rx0, (ty1 - ty0) * (tx1 - tx0)
            tile = {f: _fresh(queries[f][ty0:ty1, tx0:tx1]).view(nq, c) for f in dict.fromkeys(query_of)}
            bias = (_window_bias((ty1 - ty0, tx1 - tx0, ty0 - ry0, tx0 - rx0, ry, sw), cfg.window, radius, dtype,
                                 device) if windowed else None)  # [nq, ry, sw]
            gi, at = place[ti]
            dest = buffers[gi][:, at].view(-1, nq, ry, layout.groups[gi].sw_blocks)[..., :sw]
            for i in range(len(part)):
                region = stripes[key_of[i]][ry0:ry1].view(ry * sw, c)
                dots = torch.mm(tile[query_of[i]], region.t()).view(nq, ry, sw)
                if bias is None:
                    dest[i].copy_(dots)
                else:
                    torch.add(dots, bias, out=dest[i])
        kept = []  # per group: scores [pairs, rows, W], ids [pairs, rows, W], count [pairs]
        for g, buffer in zip(layout.groups, buffers):
            vals, cols, keep = _kept_in_rows(buffer[:len(part)].view(-1, g.length), k)
            row_y0, row_x0 = g.ry0.to(device).repeat(len(part)), g.rx0.to(device).repeat(len(part))
            ids = (row_y0[:, None] + cols // g.sw_blocks) * w + row_x0[:, None] + cols % g.sw_blocks
            s_kept, i_kept, count = _compact(vals, ids, keep, hw)
            kept.append((s_kept.view(len(part), -1, s_kept.shape[1]), i_kept.view(len(part), -1, i_kept.shape[1]),
                         count.view(len(part), -1).max(1).values))
        widths = torch.stack([most for _, _, most in kept]).max(0).values.clamp(min=1).tolist()
        for i, width in enumerate(widths):
            scores_out = torch.full((hw, width), -math.inf, dtype=torch.float32, device=device)
            ids_out = torch.full((hw, width), -1, dtype=torch.int32, device=device)
            for qpos, (s_kept, i_kept, _) in zip(where, kept):
                cut = min(width, s_kept.shape[2])
                scores_out[qpos, :cut] = s_kept[i, :, :cut]
                ids_out[qpos, :cut] = i_kept[i, :, :cut]
            results.append((scores_out.cpu(), ids_out.cpu()))
    return results


class _Group(NamedTuple):
    """Query tiles whose regions have the same shape (:func:`_layout`)."""

    tiles: list[int]  # indices into the layout's tiles
    nq: int  # queries per tile
    sw: int  # region width, and padded to whole blocks (a block never spans two region rows)
    sw_blocks: int
    length: int  # scores per query: region rows * sw_blocks
    qpos: torch.Tensor  # [tiles * nq] int64: row -> query cell y * w + x
    ry0: torch.Tensor  # [tiles * nq] int64: row -> its region's first row, first column
    rx0: torch.Tensor


class _Layout(NamedTuple):
    """Where a grid's query tiles and their key regions lie (:func:`_layout`)."""

    tiles: list[tuple[int, int, int, int, int, int, int, int]]  # ty0 ty1 tx0 tx1 ry0 ry1 rx0 rx1, column by column
    groups: list[_Group]


@functools.lru_cache(maxsize=16)
def _layout(h: int, w: int, radius: int, tile: tuple[int, int], block: int) -> _Layout:
    """The query tiles of an ``h x w`` grid (column by column), the region of keys each one's windows cover, and
    the tiles grouped by the shape of their scores."""
    rows_t, cols_t = tile
    tiles = []
    for tx0 in range(0, w, cols_t):
        tx1 = min(w, tx0 + cols_t)
        rx0, rx1 = max(0, tx0 - radius), min(w, tx1 + radius)
        for ty0 in range(0, h, rows_t):
            ty1 = min(h, ty0 + rows_t)
            ry0, ry1 = max(0, ty0 - radius), min(h, ty1 + radius)
            tiles.append((ty0, ty1, tx0, tx1, ry0, ry1, rx0, rx1))
    shapes: dict[tuple[int, int, int], list[int]] = {}
    for ti, (ty0, ty1, tx0, tx1, ry0, ry1, rx0, rx1) in enumerate(tiles):
        shapes.setdefault(((ty1 - ty0) * (tx1 - tx0), ry1 - ry0, rx1 - rx0), []).append(ti)
    groups = []
    for (nq, ry, sw), members in shapes.items():
        sw_blocks = -(-sw // block) * block
        qpos = []
        for ti in members:
            ty0, ty1, tx0, tx1 = tiles[ti][:4]
            ys, xs = torch.meshgrid(torch.arange(ty0, ty1), torch.arange(tx0, tx1), indexing="ij")
            qpos.append((ys * w + xs).reshape(-1))
        ry0 = torch.tensor([tiles[ti][4] for ti in members]).repeat_interleave(nq)
        rx0 = torch.tensor([tiles[ti][6] for ti in members]).repeat_interleave(nq)
        groups.append(_Group(members, nq, sw, sw_blocks, ry * sw_blocks, torch.cat(qpos), ry0, rx0))
    return _Layout(tiles, groups)


def _first_same(frames: Sequence[torch.Tensor], j: int) -> int:
    """The first index of ``frames`` holding the very tensor ``frames[j]``."""
    return next(i for i in range(j + 1) if frames[i] is frames[j])


def _fresh(x: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``x`` in its own allocation (so a matmul on it sees the same alignment every pass)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)


def _kept_in_rows(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row of ``scores [R, L]`` (-inf: no key; ``L`` a multiple of :data:`PAIR_BLOCK`), the scores >= its k-th
    largest finite one (every finite one if fewer than k): ``(values [R, m], columns [R, m], kept [R, m] bool)``.

    Exact, and cheaper than a top-k over the whole row (:func:`_block_bound`): the k-th largest block maximum is a
    lower bound of the row's k-th score (k keys reach it), so every key that reaches the k-th score lies in the k
    blocks with the largest maxima, unless another block's maximum ties the k-th. Rows where one does, or where keys
    tied at the k-th value run past the :data:`PAIR_SLACK` looked at, take a top-k over the whole row.
    """
    rows, length = scores.shape
    blocks = scores.view(rows, length // PAIR_BLOCK, PAIR_BLOCK).amax(2)  # [R, nb]
    vals, cols, kth, redo = _block_bound(scores, blocks, k)
    again = redo.nonzero(as_tuple=True)[0]
    if len(again):
        vals, cols, kth = _put_rows((vals, cols, kth), again, _whole_row(scores[again], k))
    keep = (vals >= kth[:, None]) & torch.isfinite(vals)
    return vals, cols, keep


def _block_bound(scores: torch.Tensor, blocks: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k of each row of ``scores [R, L]`` looked for in the k blocks (``blocks [R, L / PAIR_BLOCK]``, their
    maxima) with the largest maxima: ``(values [R, m], columns [R, m], k-th [R], redo [R] bool)``, ``redo`` where
    that cannot be vouched for (see :func:`_kept_in_rows`)."""
    rows = scores.shape[0]
    if blocks.shape[1] <= k:
        return (scores[:, :0], torch.zeros((rows, 0), dtype=torch.long, device=scores.device), scores[:, 0],
                torch.ones(rows, dtype=torch.bool, device=scores.device))
    block_vals, block_ids = torch.topk(blocks, k + 1, dim=1)
    bound = block_vals[:, k - 1]
    cols = (block_ids[:, :k, None] * PAIR_BLOCK + torch.arange(PAIR_BLOCK, device=scores.device)).view(rows, -1)
    width = cols.shape[1]
    m = min(k + PAIR_SLACK, width)
    vals, at = torch.topk(scores.gather(1, cols), m, dim=1)
    cols = cols.gather(1, at)
    kth = vals[:, k - 1]
    redo = block_vals[:, k] >= bound
    if m < width:
        redo |= vals[:, m - 1] >= kth
    return vals, cols, kth, redo


def _whole_row(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-k of each row of ``scores [R, L]``, every key tied at the k-th kept: ``(values [R, m], columns
    [R, m], k-th [R])``."""
    low = torch.topk(scores, min(k, scores.shape[1]), dim=1).values[:, -1:]
    need = int(((scores >= low) & torch.isfinite(scores)).sum(1).max())
    vals, cols = torch.topk(scores, max(need, 1), dim=1)
    return vals, cols, low[:, 0]


def _put_rows(into: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rows: torch.Tensor,
              part: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor,
                                                                               torch.Tensor]:
    """``into`` = (values [R, m], columns [R, m], k-th [R]) with rows ``rows`` replaced by ``part``'s (widened to
    the wider of the two, -inf padding)."""
    vals, cols, kth = into
    width = max(vals.shape[1], part[0].shape[1])
    vals, cols = _pad(vals, width, -math.inf).clone(), _pad(cols, width, 0).clone()
    vals[rows], cols[rows] = _pad(part[0], width, -math.inf), _pad(part[1], width, 0)
    kth = kth.clone()
    kth[rows] = part[2]
    return vals, cols, kth


def _pad(a: torch.Tensor, width: int, value: float) -> torch.Tensor:
    """``a [R, W]`` padded with ``value`` to ``[R, width]``."""
    return torch.cat([a, a.new_full((a.shape[0], width - a.shape[1]), value)], 1) if a.shape[1] < width else a


def _compact(vals: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor,
             sentinel: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The kept ``vals`` and their key ``ids`` (``[R, m]`` each), ordered by id -> scores ``[R, W]`` float32 (-inf
    padding), ids ``[R, W]`` int32 (-1 padding) and the count kept ``[R]``."""
    count = keep.sum(1)
    width = max(1, int(count.max()))
    order = torch.where(keep, ids, torch.full_like(ids, sentinel)).argsort(dim=1)[:, :width]
    kept = keep.gather(1, order)
    s = torch.where(kept, vals.gather(1, order).float(), torch.full((), -math.inf, device=vals.device))
    i = torch.where(kept, ids.gather(1, order), torch.full((), -1, dtype=ids.dtype, device=ids.device))
    return s, i.to(torch.int32), count
