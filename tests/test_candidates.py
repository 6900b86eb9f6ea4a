"""Kept candidates: a pass that reuses them gives exactly a fresh pass's soft labels, and both the dense reference's."""
from __future__ import annotations

import math

import pytest
import torch
from test_propagation import dense_reference, smooth_frames

import propagate.candidates as candidates
import propagate.propagation as propagation
from propagate.candidates import CachedPropagator, CandidateStore
from propagate.config import PropagationConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sweep(frames: torch.Tensor, keyframes: dict[int, torch.Tensor], cfg: PropagationConfig,
          store: CandidateStore) -> list[torch.Tensor]:
    """A forward pass from frame 0: keyframes join the permanent context, other frames are propagated."""
    prop = CachedPropagator(cfg, store, device="cpu")
    out = []
    for t in range(len(frames)):
        if t == 0:
            prop.start(frames[0], keyframes[0], frame=0)
        elif t in keyframes:
            prop.add_keyframe(frames[t], keyframes[t], frame=t)
            out.append(keyframes[t])
        else:
            out.append(prop.step(frames[t], frame=t))
    return out


def soft(g: torch.Generator, shape: tuple[int, int, int]) -> torch.Tensor:
    return torch.softmax(torch.randn(*shape, generator=g) * 3, 0)


CASES = [("square", True, "first", "ties"), ("square", True, "first", "exact"), ("disk", False, "first", "ties"),
         ("open_disk", False, "copies", "exact"), ("none", True, "first", "ties"), ("none", True, "first", "exact")]


@pytest.mark.parametrize("window, window_first, queue_init, rule", CASES)
@pytest.mark.parametrize("screen", ["on", "off"])
def test_reused_candidates_equal_a_fresh_pass_and_the_dense_reference(window, window_first, queue_init, rule, screen,
                                                                        monkeypatch):
    monkeypatch.setattr(candidates, "PAIR_TILE", (4, 5))  # several tiles, partial ones at the edges
    h, w, c = 11, 13, 16
    frames = smooth_frames(10, c, h, w, seed=CASES.index((window, window_first, queue_init, rule)))
    g = torch.Generator().manual_seed(4)
    first = {0: soft(g, (3, h, w))}
    corrected = {**first, 5: soft(g, (3, h, w))}  # a correction at mid-clip
    cfg = PropagationConfig(temperature=0.1, topk=5, n_last_frames=3, radius=3, window=window,
                            window_first=window_first, queue_init=queue_init, topk_rule=rule, screen=screen)
    kept = CandidateStore()
    sweep(frames, first, cfg, kept)
    computed_first = kept.computed
    kept.reset_counts()
    again = sweep(frames, corrected, cfg, kept)
    fresh_store = CandidateStore()
    fresh = sweep(frames, corrected, cfg, fresh_store)
    assert all(torch.equal(a, b) for a, b in zip(again, fresh))
    # frames 1..4 and each later frame's pairs with frames it saw before are reused; new: the keyframe's pair with
    # frames 9.. (it left their recent frames) and the frame that enters each of frames 6..8's recent ones
    assert kept.reused > 0 and kept.computed < computed_first / 3
    assert kept.computed + kept.reused == fresh_store.computed + fresh_store.reused
    expected = dense_reference(frames, first[0], cfg, {5: corrected[5]})
    for a, b in zip(again, expected):
        assert torch.equal(a.argmax(0), b.argmax(0))
        assert (a - b).abs().max() < 1e-5


def test_kept_candidates_spill_to_a_scratch_folder_and_come_back_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(candidates, "PAIR_TILE", (4, 5))
    frames = smooth_frames(8, 8, 9, 10, seed=5)
    g = torch.Generator().manual_seed(2)
    keyframes = {0: soft(g, (2, 9, 10)), 4: soft(g, (2, 9, 10))}
    cfg = PropagationConfig(temperature=0.1, topk=4, n_last_frames=2, radius=2, screen="off")
    roomy = CandidateStore()
    expected = sweep(frames, keyframes, cfg, roomy)
    tight = CandidateStore(memory_bytes=1, scratch_parent=tmp_path)  # every frame but the current one spills
    sweep(frames, {0: keyframes[0]}, cfg, tight)
    assert tight.scratch is not None and len(list(tight.scratch.iterdir())) > 0
    tight.reset_counts()
    assert all(torch.equal(a, b) for a, b in zip(sweep(frames, keyframes, cfg, tight), expected))
    assert tight.reused > 0
    tight.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("block, slack", [(2, 0), (2, 1), (4, 4)])
def test_alike_features_and_ties_take_the_whole_row(block, slack, monkeypatch):
    # near-equal scores, with rows cut again whole (slack 0: every row) or not: the dense reference's result
    monkeypatch.setattr(candidates, "PAIR_BLOCK", block)
    monkeypatch.setattr(candidates, "PAIR_SLACK", slack)
    monkeypatch.setattr(candidates, "PAIR_TILE", (5, 4))
    h, w, c = 9, 11, 16
    g = torch.Generator().manual_seed(11)
    frames = torch.randn(c, 1, 1, generator=g) + 0.2 * smooth_frames(6, c, h, w, seed=4)
    keyframes = {0: torch.rand(3, h, w, generator=g), 3: torch.rand(3, h, w, generator=g)}
    cfg = PropagationConfig(temperature=0.01, topk=5, n_last_frames=2, radius=3)
    got = sweep(frames, keyframes, cfg, CandidateStore())
    for a, b in zip(got, dense_reference(frames, keyframes[0], cfg, {3: keyframes[3]})):
        assert torch.equal(a.argmax(0), b.argmax(0))
        assert (a - b).abs().max() < 1e-5


@pytest.mark.parametrize("block, slack", [(2, 0), (2, 1), (4, 4), (8, 2)])
def test_kept_in_rows_keeps_every_score_tied_at_the_kth(block, slack, monkeypatch):
    # small integer scores: many exact ties, at the k-th value and among block maxima; -inf: keys outside a window
    monkeypatch.setattr(candidates, "PAIR_BLOCK", block)
    monkeypatch.setattr(candidates, "PAIR_SLACK", slack)
    g = torch.Generator().manual_seed(block * 10 + slack)
    scores = torch.randint(0, 6, (200, 48), generator=g).float()
    scores[torch.rand(200, 48, generator=g) < 0.3] = -math.inf
    scores[:5, 7:] = -math.inf  # fewer than k keys: every finite one is kept
    k = 5
    vals, cols, keep = candidates._kept_in_rows(scores, k)
    for row in range(200):
        finite = scores[row][torch.isfinite(scores[row])]
        kth = finite.sort(descending=True).values[k - 1] if len(finite) >= k else -math.inf
        expected = {c for c in range(48) if math.isfinite(scores[row, c]) and scores[row, c] >= kth}
        got = cols[row][keep[row]].tolist()
        assert len(got) == len(set(got)) and set(got) == expected
        assert torch.equal(vals[row][keep[row]], scores[row, cols[row][keep[row]]])


@pytest.mark.parametrize("windowed", [True, False])
def test_a_pair_scores_the_same_alone_or_with_others_and_keeps_its_window_top_k(windowed, monkeypatch):
    # the store's exactness rests on this: a pair's kept candidates are the same bits whatever it is scored with
    monkeypatch.setattr(candidates, "PAIR_TILE", (4, 5))
    h, w, c, k, radius = 11, 13, 16, 5, 3
    frames = [f.permute(1, 2, 0).contiguous() for f in smooth_frames(6, c, h, w, seed=12)]
    frames = [torch.nn.functional.normalize(f, dim=-1) for f in frames]
    cfg = PropagationConfig(temperature=0.1, topk=k, n_last_frames=2, radius=radius, window="square")
    alone = candidates.score_pairs([frames[5]], [frames[2]], windowed, cfg)[0]
    crowd = candidates.score_pairs([frames[5], frames[5], frames[1], frames[5]], [frames[0], frames[2], frames[2],
                                                                              frames[2]], windowed, cfg)
    for kept in (crowd[1], crowd[3]):
        assert torch.equal(kept[0], alone[0]) and torch.equal(kept[1], alone[1])
    # known answer: per query, the keys of its window scoring >= its k-th, by a dense product (well-separated
    # random features: no near ties for rounding to move)
    dense = frames[5].view(-1, c) @ frames[2].view(-1, c).T  # [hw, hw]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    inside = ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)
    dense = torch.where(inside | (not windowed), dense, -math.inf)
    kth = dense.topk(k, dim=1).values[:, -1:]
    for q in range(h * w):
        expected = (dense[q] >= kth[q]).nonzero().view(-1).tolist()
        ids = alone[1][q][alone[1][q] >= 0].tolist()
        assert ids == expected  # ascending
        assert torch.allclose(alone[0][q][:len(ids)], dense[q, ids], atol=1e-6)


def test_merge_weighs_the_top_k_of_the_union_as_the_dense_rule_does():
    g = torch.Generator().manual_seed(3)
    hw, n, slots, labels_k = 50, 30, 3, 4
    scores = torch.randint(0, 8, (hw, n), generator=g).float() / 8  # many ties, at the k-th value too
    scores[:20] = torch.randint(0, 2, (20, n), generator=g).float()  # more tied at the k-th than the merge looks at
    scores[torch.rand(hw, n, generator=g) < 0.2] = -math.inf
    flat = torch.stack([torch.randperm(slots * hw, generator=g)[:n] for _ in range(hw)])
    labels = torch.rand(slots * hw, labels_k, generator=g)
    for rule in ("ties", "exact"):
        cfg = PropagationConfig(temperature=0.2, topk=6, topk_rule=rule)
        weights = propagation._topk_weights(scores, 6, 0.2, rule, flat)
        expected = torch.bmm(weights.unsqueeze(1), labels[flat]).squeeze(1)
        assert torch.allclose(candidates._merge(scores, flat, labels, cfg), expected, atol=1e-6)


def test_reduced_precision_affinity_is_close_to_fp32_and_reused_exactly(monkeypatch):
    # bf16 affinities (forced: this runs on any CPU, emulated where bf16 is not native) move a few top-k neighbours,
    # so the soft labels stay close to fp32's, not equal; the kept candidates still give a fresh pass's bits.
    monkeypatch.setattr(candidates, "PAIR_TILE", (4, 5))
    h, w, c = 11, 13, 16
    frames = smooth_frames(8, c, h, w, seed=9)
    g = torch.Generator().manual_seed(6)
    keyframes = {0: soft(g, (3, h, w)), 4: soft(g, (3, h, w))}
    base = dict(temperature=0.1, topk=5, n_last_frames=3, radius=3, screen="off")
    cfg = PropagationConfig(**base, affinity_dtype="bf16")
    exact = dense_reference(frames, keyframes[0], PropagationConfig(**base), {4: keyframes[4]})
    plain = propagation.LabelPropagator(cfg, device="cpu")
    plain.start(frames[0], keyframes[0])
    kept = CandidateStore()
    sweep(frames, {0: keyframes[0]}, cfg, kept)
    cached = sweep(frames, keyframes, cfg, kept)
    assert all(torch.equal(a, b) for a, b in zip(cached, sweep(frames, keyframes, cfg, CandidateStore())))
    for t in range(1, 8):
        if t == 4:
            plain.add_keyframe(frames[4], keyframes[4])
            continue
        got = plain.step(frames[t])
        assert plain.queue.keys.dtype == torch.bfloat16
        for a in (got, cached[t - 1]):
            assert (a - exact[t - 1]).abs().mean() < 0.02
            assert (a.argmax(0) == exact[t - 1].argmax(0)).float().mean() > 0.9


def keyframe_pass(frames, keyframes, cfg, sweeps, direction="both"):
    from propagate.pipeline import propagate_keyframes

    return [soft for _, soft, _ in propagate_keyframes(lambda t: frames[t], len(frames), keyframes, cfg, direction,
                                                       "linear", sweeps)]


@pytest.mark.parametrize("rule", ["ties", "exact"])
def test_a_correction_in_a_session_sweep_equals_sweeps_from_scratch(rule, monkeypatch):
    from propagate.pipeline import Sweep

    monkeypatch.setattr(candidates, "PAIR_TILE", (4, 5))
    h, w = 9, 11
    frames = smooth_frames(12, 8, h, w, seed=3)
    g = torch.Generator().manual_seed(8)
    first = {0: soft(g, (2, h, w))}
    corrected = {**first, 6: soft(g, (2, h, w))}
    cfg = PropagationConfig(temperature=0.1, topk=4, n_last_frames=3, radius=2, topk_rule=rule, screen="off")
    store = CandidateStore()
    sweeps = (Sweep(cfg, store=store), Sweep(cfg, store=store))
    keyframe_pass(frames, first, cfg, sweeps, "forward")
    store.reset_counts()
    forward = keyframe_pass(frames, corrected, cfg, sweeps, "forward")
    computed_forward = store.computed
    fresh = keyframe_pass(frames, corrected, cfg, (Sweep(cfg, store=CandidateStore()),) * 2, "forward")
    assert all(torch.equal(a, b) for a, b in zip(forward, fresh))
    assert sweeps[0].propagated == 5 and computed_forward == 5  # frames 7..11: one new context frame each
    plain = keyframe_pass(frames, corrected, cfg, (Sweep(cfg), Sweep(cfg)), "forward")
    assert all((a - b).abs().max() < 1e-5 and torch.equal(a.argmax(0), b.argmax(0)) for a, b in zip(forward, plain))
    both = keyframe_pass(frames, corrected, cfg, sweeps, "both")
    assert all(torch.equal(a, b) for a, b in zip(both, keyframe_pass(
        frames, corrected, cfg, (Sweep(cfg, store=CandidateStore()), Sweep(cfg, store=CandidateStore())), "both")))


def test_segment_scope_draws_only_on_the_two_keyframes_around_a_frame(monkeypatch):
    from propagate.pipeline import Sweep

    monkeypatch.setattr(candidates, "PAIR_TILE", (4, 5))
    h, w = 9, 11
    frames = smooth_frames(14, 8, h, w, seed=6)
    g = torch.Generator().manual_seed(9)
    keys = {t: soft(g, (2, h, w)) for t in (0, 5, 10)}
    cfg = PropagationConfig(temperature=0.1, topk=4, n_last_frames=2, radius=2, screen="off", scope="segment")
    # by construction: frames 6..9 forward draw on keyframes 5 and 10 and the frames between them only
    prop = propagation.LabelPropagator(cfg, device="cpu")
    prop.start(frames[5], keys[5])
    prop.add_keyframe(frames[10], keys[10])
    expected = {t: prop.step(frames[t]) for t in range(6, 10)}
    for store in (None, CandidateStore()):
        fwd = Sweep(cfg, store=store)
        got = dict(fwd.run(range(0, 14), lambda t: frames[t], keys))
        assert all(torch.allclose(got[t], expected[t], atol=1e-6) for t in range(6, 10))
        assert fwd.propagated == 4 + 4 + 3
        # a correction at frame 2 changes the segment 0..5 only: the others are replayed
        got2 = dict(fwd.run(range(0, 14), lambda t: frames[t], {**keys, 2: soft(g, (2, h, w))}))
        assert fwd.propagated == 1 + 2 and all(torch.equal(got2[t], got[t]) for t in range(5, 14))


@pytest.mark.parametrize("scope", ["global", "segment"])
def test_a_session_correction_reuses_candidates_and_equals_a_session_from_scratch(tmp_path, scope):
    import numpy as np
    from conftest import write_clip

    from propagate.config import load_config
    from propagate.features import build_extractor
    from propagate.session import Session

    frames, _, truth = write_clip(tmp_path, num_frames=10, size=(128, 96))
    config = load_config("davis_baseline_interactive", {"resize.short_side": 96, "propagation.scope": scope})
    extractor = build_extractor("baseline")
    fixed = truth[5].copy()
    fixed[truth[5] == 1] = 0
    fixed[np.roll(truth[5] == 1, 3, axis=1)] = 1  # object 1 moved: a one-object correction at mid-clip
    with Session(frames, config, extractor=extractor) as session:
        session.add_mask(0, truth[0])
        list(session.propagate())
        first = session.stats["affinities"]
        session.add_mask(5, fixed)
        corrected = {i: r.mask for i, r in session.propagate("forward")}
        assert session.stats["affinities_reused"] > 0 and session.stats["affinities"] - first < first / 3
        scratch = session._candidates
    assert scratch is not None and scratch.scratch is None  # closed
    with Session(frames, config, extractor=extractor) as fresh:
        fresh.add_mask(0, truth[0])
        fresh.add_mask(5, fixed)
        assert all(np.array_equal(r.mask, corrected[i]) for i, r in fresh.propagate("forward"))
