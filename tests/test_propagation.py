"""Windowed propagation against a plain dense reference written here (DINO/DIFT and CRW formulations)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import propagate.propagation as propagation
from propagate.config import PropagationConfig
from propagate.propagation import LabelPropagator


def dense_reference(frames: torch.Tensor, labels0: torch.Tensor, cfg: PropagationConfig,
                    keyframes: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The dense formulation, as the reference scripts write it.

    frames ``[T, C, h, w]``, labels0 ``[K, h, w]`` -> soft labels ``[K, h, w]`` for frames 1..T-1. Affinity
    exp(q.k / T) over every key of every context frame, multiplied by the window mask (frame 0 included only if
    window_first), top-k threshold over all context keys together (keep >= the k-th value; ``topk_rule: exact``:
    exactly k, as torch.topk), normalise, mix labels. ``queue_init: copies``: the queue starts with n_last_frames
    copies of frame 0 (CRW's padded video). ``keyframes`` ``{t: labels}`` (t > 0): frame t takes those labels and
    joins frame 0 in the permanent context.
    """
    keyframes = keyframes or {}
    t_all, c, h, w = frames.shape
    feats = F.normalize(frames.double(), dim=1).reshape(t_all, c, h * w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy, dx = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]  # [query, key]
    if cfg.window == "square":
        win = (dy.abs() <= cfg.radius) & (dx.abs() <= cfg.radius)
    elif cfg.window == "disk":
        win = dy * dy + dx * dx <= cfg.radius**2
    elif cfg.window == "open_disk":
        win = dy * dy + dx * dx < cfg.radius**2
    else:
        win = torch.ones_like(dy, dtype=torch.bool)
    fixed = [(feats[0], labels0.double().reshape(labels0.shape[0], -1))]
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []
    if cfg.queue_init == "copies":
        queue = [fixed[0]] * cfg.n_last_frames
    outputs = []
    for t in range(1, t_all):
        if t in keyframes:
            fixed.append((feats[t], keyframes[t].double().reshape(labels0.shape[0], -1)))
            outputs.append(keyframes[t].float())
            continue
        ctx_feats = [f for f, _ in fixed] + [f for f, _ in queue]
        ctx_labs = [l for _, l in fixed] + [l for _, l in queue]
        aff = torch.stack([torch.exp(feats[t].T @ k / cfg.temperature) for k in ctx_feats])  # [n, q, k]
        masks = [win if (i >= len(fixed) or cfg.window_first) else torch.ones_like(win) for i in range(len(ctx_feats))]
        aff = aff * torch.stack(masks).double()
        aff = aff.permute(0, 2, 1).reshape(-1, h * w)  # [n*k, q]
        top = torch.topk(aff, k=min(cfg.topk, aff.shape[0]), dim=0)
        if cfg.topk_rule == "exact":
            aff = torch.zeros_like(aff).scatter_(0, top.indices, top.values)
        else:
            aff[aff < top.values.min(dim=0).values] = 0
        aff = aff / aff.sum(0, keepdim=True)
        labs = torch.cat([l.T for l in ctx_labs])  # [n*k, K]
        out = (labs.T @ aff)  # [K, q]
        outputs.append(out.reshape(-1, h, w).float())
        if cfg.n_last_frames:
            if len(queue) == cfg.n_last_frames:
                queue.pop(0)
            queue.append((feats[t], out))
    return outputs


def run_windowed(frames, labels0, cfg):
    prop = LabelPropagator(cfg, device="cpu")
    prop.start(frames[0], labels0)
    return [prop.step(f) for f in frames[1:]]


def smooth_frames(t, c, h, w, seed):
    """Random features with spatial structure (so the window matters)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, c, h // 2 + 1, w // 2 + 1, generator=g)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x + 0.3 * torch.randn(t, c, h, w, generator=g)


@pytest.mark.parametrize("window", ["square", "disk", "none"])
@pytest.mark.parametrize("window_first", [True, False])  # False with disk: the CRW variant
@pytest.mark.parametrize("screen", ["on", "off"])
def test_windowed_equals_dense(window, window_first, screen, monkeypatch):
    monkeypatch.setattr(propagation, "TILE", (4, 5))  # several tiles and stripes, with partial ones at the edges
    h, w, c = 13, 19, 24
    frames = smooth_frames(6, c, h, w, seed=("square", "disk", "none").index(window) * 2 + window_first)
    ids0 = torch.randint(0, 3, (h, w), generator=torch.Generator().manual_seed(1))
    labels0 = F.one_hot(ids0, 3).permute(2, 0, 1).float()
    cfg = PropagationConfig(temperature=0.1, topk=7, n_last_frames=3, radius=4, window=window,
                            window_first=window_first, screen=screen)
    ours = run_windowed(frames, labels0, cfg)
    ref = dense_reference(frames, labels0, cfg)
    for a, b in zip(ours, ref):
        assert torch.equal(a.argmax(0), b.argmax(0))
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("window, window_first, queue_init", [
    ("open_disk", False, "copies"),  # CRW's keypoint mode
    ("open_disk", False, "first"),
    ("square", True, "copies"),
])
@pytest.mark.parametrize("screen", ["on", "off"])
def test_exact_topk_and_queue_of_copies_equal_dense(window, window_first, queue_init, screen, monkeypatch):
    monkeypatch.setattr(propagation, "TILE", (4, 5))
    h, w, c = 11, 14, 16
    frames = smooth_frames(6, c, h, w, seed=7 + window_first + 2 * (queue_init == "copies"))
    labels0 = torch.rand(3, h, w, generator=torch.Generator().manual_seed(2))
    cfg = PropagationConfig(temperature=0.1, topk=7, n_last_frames=3, radius=4, window=window,
                            window_first=window_first, screen=screen, topk_rule="exact", queue_init=queue_init)
    ours = run_windowed(frames, labels0, cfg)
    ref = dense_reference(frames, labels0, cfg)
    for a, b in zip(ours, ref):
        assert torch.equal(a.argmax(0), b.argmax(0))
        assert (a - b).abs().max() < 1e-5
    ties = run_windowed(frames, labels0, PropagationConfig(**{**cfg.__dict__, "topk_rule": "ties"}))
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(ours, ties)) == (queue_init == "copies")


def test_exact_rule_keeps_exactly_k_lowest_key_ids_among_ties():
    scores = torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, -math.inf],
                           [1.0, 1.0, 1.0, 1.0, -math.inf, -math.inf],
                           [0.5, -math.inf, -math.inf, -math.inf, -math.inf, -math.inf]])
    ids = torch.tensor([[0, 1, 9, 4, 7, 2], [5, 3, 8, 1, 0, 2], [4, 0, 1, 2, 3, 5]])
    exact = propagation._topk_weights(scores, 3, 1.0, "exact", ids)
    kept = exact > 0
    assert kept.tolist() == [[True, False, False, True, True, False],  # 3.0, then the tied 2.0s with ids 4 and 7
                             [True, True, False, True, False, False],  # ids 1, 3 and 5 of the four tied 1.0s
                             [True, False, False, False, False, False]]  # fewer finite keys than k: all kept
    ties = propagation._topk_weights(scores, 3, 1.0, "ties", ids) > 0
    assert ties[0].tolist() == [True, False, True, True, True, False] and ties[1].sum() == 4

@pytest.mark.parametrize("candidates, max_candidates", [(1, 0), (1, 10_000), (64, 256)])
@pytest.mark.parametrize("screen", ["on", "off"])
def test_candidate_widening_and_fp32_fallback(candidates, max_candidates, screen, monkeypatch):
    # Nearly identical features (as a low-discrimination extractor gives): the bf16 screen cannot separate keys,
    # so queries need more candidates than the first cut (widened), or are rescored in fp32 (fallback).
    monkeypatch.setattr(propagation, "CANDIDATES", candidates)
    monkeypatch.setattr(propagation, "MAX_CANDIDATES_PER_QUERY", max_candidates)
    monkeypatch.setattr(propagation, "TILE", (5, 4))
    merges = []
    merge = propagation._merge_rows
    monkeypatch.setattr(propagation, "_merge_rows", lambda *a: merges.append(len(a[2])) or merge(*a))
    h, w, c = 9, 11, 16
    g = torch.Generator().manual_seed(11)
    base = torch.randn(c, 1, 1, generator=g)
    # alike, but not so alike that fp32 rounding itself decides the top-k (then no two fp32 codes could agree)
    frames = base + 0.2 * smooth_frames(5, c, h, w, seed=4)
    labels0 = torch.rand(3, h, w, generator=g)
    cfg = PropagationConfig(temperature=0.01, topk=5, n_last_frames=2, radius=3, window="square", screen=screen)
    for a, b in zip(run_windowed(frames, labels0, cfg), dense_reference(frames, labels0, cfg)):
        assert torch.equal(a.argmax(0), b.argmax(0))
        assert (a - b).abs().max() < 1e-5
    if candidates == 1 and screen == "on":
        assert merges  # some queries did need more candidates than the first cut


def test_ties_in_topk_keep_every_tied_key():
    # Identical key vectors make exact ties at the k-th value: every tied key is kept, by both formulations.
    h, w, c = 6, 7, 8
    g = torch.Generator().manual_seed(3)
    base = torch.randn(c, h, w, generator=g)
    frames = torch.stack([base, base.clone(), base.clone(), base.clone()])
    frames[:, :, :, 3:] = frames[:, :, :, :1].expand(-1, -1, -1, w - 3)  # many equal columns -> ties
    labels0 = torch.rand(4, h, w, generator=g)
    for screen in ("on", "off"):
        cfg = PropagationConfig(temperature=0.2, topk=5, n_last_frames=2, radius=2, window="square", screen=screen)
        for a, b in zip(run_windowed(frames, labels0, cfg), dense_reference(frames, labels0, cfg)):
            assert (a - b).abs().max() < 1e-5


def test_fewer_keys_than_topk_keeps_all_window_keys():
    h, w, c = 3, 3, 4
    frames = torch.randn(3, c, h, w, generator=torch.Generator().manual_seed(5))
    labels0 = torch.rand(2, h, w)
    cfg = PropagationConfig(temperature=0.5, topk=12, n_last_frames=1, radius=1, screen="off")  # corner windows: 8 keys
    for a, b in zip(run_windowed(frames, labels0, cfg), dense_reference(frames, labels0, cfg)):
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("window, window_first", [("square", True), ("disk", False), ("none", True)])
@pytest.mark.parametrize("screen", ["on", "off"])
def test_keyframes_join_the_permanent_context_as_the_dense_reference_says(window, window_first, screen, monkeypatch):
    monkeypatch.setattr(propagation, "TILE", (4, 5))
    frames = smooth_frames(9, 16, 11, 13, seed=7)
    g = torch.Generator().manual_seed(3)
    labels0 = torch.softmax(torch.randn(3, 11, 13, generator=g) * 3, 0)
    keyframes = {3: torch.softmax(torch.randn(3, 11, 13, generator=g) * 3, 0),
                 6: torch.softmax(torch.randn(3, 11, 13, generator=g) * 3, 0)}
    cfg = PropagationConfig(temperature=0.1, topk=5, n_last_frames=2, radius=3, window=window,
                            window_first=window_first, screen=screen, device="cpu")
    expected = dense_reference(frames, labels0, cfg, keyframes)
    prop = LabelPropagator(cfg, device="cpu")
    prop.start(frames[0], labels0)
    for t in range(1, 9):
        if t in keyframes:
            prop.add_keyframe(frames[t], keyframes[t])
            continue
        got = prop.step(frames[t])
        assert torch.allclose(got, expected[t - 1], atol=1e-5), f"frame {t}"
        assert torch.equal(got.argmax(0), expected[t - 1].argmax(0))


def test_replay_rebuilds_the_same_context_slot_for_slot():
    frames = smooth_frames(7, 8, 9, 10, seed=2)
    labels0 = torch.softmax(torch.randn(2, 9, 10, generator=torch.Generator().manual_seed(1)), 0)
    cfg = PropagationConfig(temperature=0.1, topk=4, n_last_frames=3, radius=2, device="cpu")
    first = LabelPropagator(cfg, device="cpu")
    first.start(frames[0], labels0)
    soft = [first.step(f) for f in frames[1:]]
    again = LabelPropagator(cfg, device="cpu")
    again.start(frames[0], labels0)
    for f, s in zip(frames[1:5], soft[:4]):
        again.replay(f, s)
    assert [torch.equal(again.step(f), s) for f, s in zip(frames[5:], soft[4:])] == [True, True]
