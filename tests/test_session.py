"""Keyframes and the session: objects entering late, backward = forward on the reversed video, keyframes written
unchanged, blending by hand, corrections without extraction, confidence where an object is hidden."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from propagate.config import PropagationConfig, load_config
from propagate.demo import _texture
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.labels import read_mask
from propagate.pipeline import Sweep, blend_weights, propagate_keyframes, resolve_direction, run_masks
from propagate.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = {"resize.short_side": 128}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def entering_clip(folder, frames=10, enter=5, size=(192, 128)):
    """Object 1 (a disk) moves right through every frame; object 2 (a square) slides in from the right edge at
    frame ``enter``. Returns the frame folder and the true masks."""
    w, h = size
    rng = np.random.default_rng(4)
    background = _texture(rng, h, w, (90, 120, 90), 6)
    disk_tex, square_tex = _texture(rng, h, w, (200, 60, 50), 12), _texture(rng, h, w, (50, 80, 200), 12)
    yy, xx = np.mgrid[0:h, 0:w]
    folder.mkdir()
    truth = []
    for t in range(frames):
        image, mask = background.copy(), np.zeros((h, w), np.uint8)
        cx, cy = 40 + 4 * t, 50
        disk = (xx - cx) ** 2 + (yy - cy) ** 2 <= 22**2
        image[disk], mask[disk] = disk_tex[(yy - cy) % h, (xx - cx) % w][disk], 1
        if t >= enter:
            sx = w - 20 - 6 * (t - enter)
            square = (np.abs(xx - sx) <= 18) & (np.abs(yy - 90) <= 18)
            image[square], mask[square] = square_tex[(yy - 90) % h, (xx - sx) % w][square], 2
        Image.fromarray(image).save(folder / f"{t:05d}.png")
        truth.append(mask)
    return folder, truth


@pytest.fixture(scope="module")
def baseline():
    return build_extractor("baseline")


def test_an_object_entering_late_is_tracked_from_its_keyframe(tmp_path, baseline):
    frames, truth = entering_clip(tmp_path / "clip")
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, truth[0])
    session.add_mask(5, truth[5])
    results = dict(session.propagate())
    assert sorted(results) == list(range(10))
    for t in range(6, 10):
        assert iou(results[t].mask == 2, truth[t] == 2) > 0.6, f"frame {t}: the late object is lost"
        assert iou(results[t].mask == 1, truth[t] == 1) > 0.6
    for t in range(1, 5):  # before it enters it is (almost) nowhere
        assert (results[t].mask == 2).sum() < 0.2 * (truth[5] == 2).sum()


def test_keyframes_are_written_unchanged_byte_for_byte(tmp_path, baseline):
    frames, truth = entering_clip(tmp_path / "clip")
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    odd = truth[7].copy()
    odd[0:3, 0:3] = 1  # a mask no propagation would give
    for t, mask in ((2, truth[2]), (7, odd)):
        session.add_mask(t, mask)
    results = dict(session.propagate())
    assert np.array_equal(results[2].mask, truth[2]) and np.array_equal(results[7].mask, odd)
    assert results[2].keyframe and results[7].keyframe and not results[0].keyframe
    assert all(results[t].confidence == {1: 1.0, 2: 1.0} for t in (2, 7))


def test_backward_from_a_last_frame_keyframe_equals_forward_on_the_reversed_video(tmp_path, baseline):
    frames, truth = entering_clip(tmp_path / "clip", frames=8, enter=0)
    reversed_dir = tmp_path / "reversed"
    reversed_dir.mkdir()
    for t in range(8):
        (reversed_dir / f"{t:05d}.png").write_bytes((frames / f"{7 - t:05d}.png").read_bytes())
    config = load_config("davis_baseline", CONFIG)
    session = Session(frames, config, extractor=baseline)
    session.add_mask(7, truth[7])
    backward = {t: r.mask for t, r in session.propagate("backward")}
    forward = {t: m for t, (_, m) in enumerate(run_masks(reversed_dir, truth[7], config, baseline, progress=False))}
    for t in range(8):
        assert np.array_equal(backward[t], forward[7 - t]), f"frame {t}"


def test_one_keyframe_on_frame_0_is_exactly_the_single_mask_stream(clip, baseline):
    frames, mask_path, _ = clip
    config = load_config("davis_baseline", CONFIG)
    first = read_mask(mask_path)
    session = Session(frames, config, extractor=baseline)
    session.add_mask(0, first)
    ours = [r.mask for _, r in session.propagate()]
    theirs = [m for _, m in run_masks(frames, first, config, baseline, progress=False)]
    assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))


def test_blend_weights_by_hand():
    assert blend_weights(5, 4, 8) == (0.75, 0.25)  # nearer the earlier keyframe: mostly forward
    assert blend_weights(7, 4, 8) == (0.25, 0.75)
    assert blend_weights(6, 4, 8) == (0.5, 0.5)
    assert blend_weights(5, 4, 8, "nearest") == (1.0, 0.0) and blend_weights(7, 4, 8, "nearest") == (0.0, 1.0)
    with pytest.raises(ValueError):
        blend_weights(4, 4, 8)


def test_propagate_keyframes_blends_the_two_sweeps_on_a_tiny_case():
    """3 frames, keyframes 0 and 2 with labels [1, 0] and [0, 1] everywhere: frame 1's forward sweep sees only frame
    0's labels and its backward sweep only frame 2's, so with weights 1/2 its labels are exactly [0.5, 0.5]."""
    feats = torch.randn(3, 4, 2, 3, generator=torch.Generator().manual_seed(0))
    one, two = torch.zeros(2, 2, 3), torch.zeros(2, 2, 3)
    one[0], two[1] = 1, 1
    cfg = PropagationConfig(temperature=0.1, topk=2, n_last_frames=1, radius=1, device="cpu")
    out = list(propagate_keyframes(lambda t: feats[t], 3, {0: one, 2: two}, cfg))
    assert [(t, key) for t, _, key in out] == [(0, True), (1, False), (2, True)]
    assert torch.equal(out[0][1], one) and torch.equal(out[2][1], two)
    assert torch.allclose(out[1][1], torch.full((2, 2, 3), 0.5))


def test_direction_rules():
    assert resolve_direction("auto", [0], 10) == (True, False)
    assert resolve_direction("auto", [0, 5], 10) == (True, True)
    assert resolve_direction("auto", [3], 10) == (True, True)
    assert resolve_direction("backward", [9], 10) == (False, True)
    with pytest.raises(PropagateError, match="needs a keyframe on the first frame"):
        resolve_direction("forward", [3], 10)
    with pytest.raises(PropagateError, match="needs a keyframe on the last frame"):
        resolve_direction("backward", [3], 10)


def test_a_correction_extracts_nothing_and_recomputes_only_what_can_change(tmp_path, baseline):
    frames, truth = entering_clip(tmp_path / "clip", frames=10)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, truth[0])
    first = {t: r.mask for t, r in session.propagate()}
    assert session.stats["extractor_frames"] == 10 and session.stats["propagated_frames"] == 9
    corrected = np.where(truth[6] == 1, 1, 0).astype(np.uint8)  # a correction of the disk at frame 6
    session.add_mask(6, corrected)
    second = {t: r.mask for t, r in session.propagate()}
    assert session.stats["extractor_frames"] == 10  # no extraction: features were kept
    # forward sweep: frames 1..5 replayed (they cannot change), 7..9 propagated; backward sweep (new): 5..1
    fwd, bwd = session._sweeps
    assert fwd.propagated == 3 and bwd.propagated == 5
    assert np.array_equal(second[6], corrected)
    session.remove(6)  # back to one keyframe: the same results as the first pass
    third = {t: r.mask for t, r in session.propagate()}
    assert all(np.array_equal(first[t], third[t]) for t in range(10))


def test_a_new_object_at_a_correction_is_followed_without_extraction(tmp_path, baseline):
    frames, truth = entering_clip(tmp_path / "clip", frames=10)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, truth[0])
    first = {t: r.mask for t, r in session.propagate()}
    session.add_mask(6, truth[6])  # the square entered at frame 5: a new object id (all frames are recomputed)
    second = {t: r.mask for t, r in session.propagate()}
    assert session.stats["extractor_frames"] == 10
    assert np.array_equal(second[6], truth[6])
    assert iou(second[8] == 2, truth[8] == 2) > 0.6 > iou(first[8] == 2, truth[8] == 2)


def test_image_without_frame_bytes_reads_each_frame_and_keeps_none(tmp_path, baseline):
    frames, _ = entering_clip(tmp_path / "clip", frames=4)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)  # a job that shows no frame
    session.extract()
    assert session._frames is None
    assert all(np.array_equal(session.image(f.index), f.image) for f in session.source)


@pytest.mark.parametrize("frame_bytes", [2**30, 0])  # kept in memory; spilled to the scratch folder
def test_image_gives_the_frames_as_read_and_keeps_them_whole(tmp_path, baseline, frame_bytes):
    frames, _ = entering_clip(tmp_path / "clip", frames=6)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline, frame_bytes=frame_bytes)
    read = [frame.image for frame in session.source]
    assert np.array_equal(session.image(4), read[4])  # before any pass: read by seeking, then kept
    session.extract()
    scratch = session._frames.scratch
    assert (scratch is not None) == (frame_bytes == 0)
    for index, image in enumerate(read):
        shown = session.image(index)
        assert np.array_equal(shown, image)
        shown[:] = 0  # a caller drawing on what it was given cannot change the kept frame
        assert np.array_equal(session.image(index), image)
    session.close()
    assert scratch is None or not scratch.exists()


def test_confidence_falls_where_an_object_is_hidden(clip, baseline):
    frames, mask_path, truth = clip  # the square (object 2) is hidden behind the disk at frame 3
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, read_mask(mask_path))
    results = dict(session.propagate())
    square = {t: results[t].confidence[2] for t in range(1, 6)}
    assert square[3] < min(square[t] for t in (1, 2, 4, 5)), square
    assert session.least_confident(1)[0].index == 3


def test_session_refuses_bad_keyframes(clip, baseline):
    frames, mask_path, truth = clip
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    with pytest.raises(PropagateError, match="no keyframe"):
        list(session.propagate())
    with pytest.raises(PropagateError, match="is not a frame"):
        session.add_mask(99, truth[0])
    with pytest.raises(PropagateError, match="frame's size"):
        session.add_mask(1, np.zeros((5, 5), np.uint8))
    session.add_mask(0, truth[0])
    with pytest.raises(PropagateError, match="masks or points, not both"):
        session.add_points(1, np.array([[1.0, 2.0]]))
    with pytest.raises(PropagateError, match="not a keyframe"):
        session.remove(4)


def test_sweep_replays_unchanged_prefix(baseline):
    feats = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.softmax(torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(2)), 0)
    cfg = PropagationConfig(temperature=0.1, topk=3, n_last_frames=2, radius=1, device="cpu")
    sweep = Sweep(cfg)
    first = dict(sweep.run(range(6), lambda t: feats[t], {0: labels}))
    assert sweep.propagated == 5
    again = dict(sweep.run(range(6), lambda t: feats[t], {0: labels, 4: labels}))
    assert sweep.propagated == 1  # only frame 5 follows the new keyframe
    assert all(torch.equal(first[t], again[t]) for t in range(4))


def test_a_sweep_stopped_midway_is_not_replayed_from():
    """A pass interrupted after overwriting some frames (a cancel in the app) must not be mistaken for the last
    complete pass: the next pass recomputes, and equals a fresh one."""
    feats = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.softmax(torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(2)), 0)
    other = torch.softmax(torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(3)), 0)
    cfg = PropagationConfig(temperature=0.1, topk=3, n_last_frames=2, radius=1, device="cpu")
    sweep = Sweep(cfg)
    list(sweep.run(range(6), lambda t: feats[t], {0: labels}))
    stopped = sweep.run(range(6), lambda t: feats[t], {0: other})
    for _ in range(4):  # frames 0..3 overwritten with the other keyframe's labels, then stopped
        next(stopped)
    stopped.close()
    again = dict(sweep.run(range(6), lambda t: feats[t], {0: labels}))
    assert sweep.propagated == 5  # nothing replayed from the mixed state
    fresh = dict(Sweep(cfg).run(range(6), lambda t: feats[t], {0: labels}))
    assert all(torch.equal(again[t], fresh[t]) for t in range(6))


# ---------------------------------------------------------------------------------------------- input checks (issue 22)


def test_session_checks_masks_as_the_cli_does(clip, baseline):
    """A mask given as an array is checked like a mask file: ids 0..255 (an id of 300 in a uint16 array would wrap
    to 44 in uint8), integers (a float mask is refused), the frame's size. Integer arrays whose ids fit are taken
    as uint8, and a refused mask leaves the session as it was (it may still take points)."""
    frames, _, truth = clip
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    wide = np.where(truth[0] > 0, 300, 0).astype(np.uint16)
    with pytest.raises(PropagateError, match=r"^keyframe 0: the mask holds id 300, outside 0\.\.255"):
        session.add_mask(0, wide)
    with pytest.raises(PropagateError, match=r"^keyframe 0: the mask holds id -1, outside 0\.\.255"):
        session.add_mask(0, truth[0].astype(np.int16) - 1)
    with pytest.raises(PropagateError, match=r"^keyframe 0: the mask is float64: give integer ids"):
        session.add_mask(0, truth[0].astype(np.float64))
    assert session.keyframes == [] and session.kind is None
    session.add_mask(0, truth[0].astype(np.int64))  # ids 0..2 fit: taken as uint8
    session.add_mask(2, truth[2] > 0)  # a bool mask is object 1
    stored = session._annotations
    assert stored[0].dtype == np.uint8 and np.array_equal(stored[0], truth[0])
    assert stored[2].dtype == np.uint8 and np.array_equal(stored[2], (truth[2] > 0).astype(np.uint8))


@pytest.mark.parametrize("xy, words", [
    ([[np.nan, 10.0]], r"point 'p1' is at \(nan, 10\); give finite pixel coordinates"),
    ([[10.0, np.inf]], r"point 'p1' is at \(10, inf\); give finite pixel coordinates"),
    ([[192.0, 10.0]], r"point 'p1' at \(192, 10\) is outside the frame \(192x128; x in 0\.\.191, y in 0\.\.127\)"),
    ([[-0.5, 10.0]], r"point 'p1' at \(-0.5, 10\) is outside the frame"),
    ([[10.0, 128.0]], r"point 'p1' at \(10, 128\) is outside the frame"),
])
def test_session_checks_points_as_the_cli_does(clip, baseline, xy, words):
    """Points must be finite and inside the frame (0 <= x <= W - 1, 0 <= y <= H - 1), as a points file's are; a
    NaN point would come back as NaN tracks, one outside as a point that cannot be propagated."""
    frames, _, _ = clip
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    with pytest.raises(PropagateError, match=rf"^keyframe 1: {words}"):
        session.add_points(1, np.array(xy))
    assert session.keyframes == []
    session.add_points(1, np.array([[0.0, 0.0], [191.0, 127.0]]), names=["a", "b"])  # the corners are inside
    assert session.keyframes == [1] and session.point_names == ["a", "b"]


# ---------------------------------------------------------------------------------------------- per object (issue 18)


def test_a_partial_keyframe_changes_the_other_objects_only_where_its_object_now_lies(tmp_path, baseline):
    """Frame 6 gives object 2 only: its result is the propagated one with object 2's old pixels made background and
    the new object 2 painted, so object 1 changes only where object 2 now lies (and the mask's object 1 is
    ignored)."""
    frames, truth = entering_clip(tmp_path / "clip", frames=10, enter=0)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, truth[0])
    first = {t: r.mask for t, r in session.propagate()}
    given = truth[6].copy()
    given[(given == 2)] = 0
    given[70:115, 40:100] = 2  # object 2 drawn elsewhere, over part of object 1
    given[0:20, 0:20] = 1  # object 1 where it is not: not given, so ignored
    session.add_mask(6, given, objects=[2])
    assert session.keyframes == [0, 6] and session.keyframe_objects(6) == [2] and session.keyframe_objects(0) is None
    assert set(np.unique(session.annotation(6))) == {0, 2}
    second = {t: r for t, r in session.propagate()}
    now = second[6].mask
    new2 = given == 2
    assert second[6].keyframe and np.array_equal(now == 2, new2)
    assert not np.array_equal((now == 1), (first[6] == 1))  # object 1 did change ...
    assert np.array_equal((now == 1) & ~new2, (first[6] == 1) & ~new2)  # ... but only where object 2 now lies
    assert np.array_equal(now[~new2], np.where(first[6] == 2, 0, first[6])[~new2])
    assert second[6].confidence[2] == 1.0 and 0.0 < second[6].confidence[1] <= 1.0
    for t in range(1, 6):  # frames before it still have object 1 from frame 0
        assert iou(second[t].mask == 1, truth[t] == 1) > 0.6


def test_set_absent_leaves_no_pixel_up_to_the_next_keyframe_that_gives_the_object(tmp_path, baseline):
    from propagate.coco import CocoVideoWriter

    frames, truth = entering_clip(tmp_path / "clip", frames=10, enter=0)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, truth[0])
    session.set_absent(4, 2)
    session.add_mask(8, truth[8], objects=[2])
    assert session.absent_marks() == {4: [2]}
    results = dict(session.propagate())
    for t in range(10):
        gone = 4 <= t < 8
        assert (results[t].mask == 2).any() != gone, f"frame {t}"
        assert session.is_absent(t, 2) == gone and (2 in results[t].absent) == gone
        assert (2 in results[t].confidence) != gone  # absent is not a confidence of 0
    assert iou(results[9].mask == 2, truth[9] == 2) > 0.6
    fwd, bwd = session._sweeps  # removed from the labels that join the context, in both sweeps
    for t in range(4, 8):
        assert float(fwd.soft[t][2].abs().max()) == 0.0 and float(bwd.soft[t][2].abs().max()) == 0.0
    # least confident ranks present objects only: frame 5 is not flagged for its absent object
    assert all(r.least_confidence() > 0 for r in results.values() if r.index in range(4, 8))
    coco = CocoVideoWriter("clip", session.native_size, [1, 2])
    for t in range(10):
        coco.add(results[t].name, results[t].mask)
    track = next(a for a in coco.to_json()["annotations"] if a["id"] == 2)
    assert [s is None for s in track["segmentations"]] == [4 <= t < 8 for t in range(10)]
    session.remove(4, objects=[2])  # the mark goes: object 2 is propagated through again
    assert session.absent_marks() == {}
    again = dict(session.propagate())
    assert all((again[t].mask == 2).any() for t in range(10)) and not any(r.absent for r in again.values())


def test_absent_to_the_end_and_the_latest_word_wins(tmp_path, baseline):
    frames, truth = entering_clip(tmp_path / "clip", frames=8, enter=0)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, truth[0])
    session.add_mask(5, truth[5])
    session.set_absent(5, 1)  # on a full keyframe that gives it: it leaves the keyframe, which stays full
    assert session.keyframe_objects(5) is None and not (session.annotation(5) == 1).any()
    results = dict(session.propagate())
    assert all(not (results[t].mask == 1).any() and results[t].absent == {1} for t in range(5, 8))
    session.add_mask(6, truth[6], objects=[1])  # giving it again ends the absence there
    results = dict(session.propagate())
    assert results[5].absent == {1} and not results[6].absent and (results[7].mask == 1).any()
    with pytest.raises(PropagateError, match="neither gives object 2 nor marks it absent"):
        session.remove(6, objects=[2])
    with pytest.raises(PropagateError, match="object 2 has no pixel in the mask"):
        session.add_mask(3, truth[3] * (truth[3] == 1), objects=[2])
    with pytest.raises(PropagateError, match="is not an object id"):
        session.set_absent(3, 0)
    session.remove(6, objects=[1])  # its only object: the keyframe goes
    assert session.keyframes == [0, 5]
    session.set_absent(2, 7)
    with pytest.raises(PropagateError, match="marks object 7 absent, but no keyframe gives it"):
        dict(session.propagate())


def test_removing_an_object_from_a_full_keyframe_leaves_a_partial_one(tmp_path, baseline):
    frames, truth = entering_clip(tmp_path / "clip", frames=6, enter=0)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, truth[0])
    session.add_mask(3, truth[3])
    session.remove(3, objects=[2])
    assert session.keyframe_objects(3) == [1] and np.array_equal(session.annotation(3), (truth[3] == 1) * 1)
    session.add_mask(3, truth[3], objects=[2])  # and back
    assert session.keyframe_objects(3) == [1, 2]


def test_objects_have_names_and_categories(tmp_path, baseline):
    frames, truth = entering_clip(tmp_path / "clip", frames=4, enter=0)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, truth[0])
    from propagate.labels import ObjectInfo

    assert session.objects == {1: ObjectInfo("object 1", "object"), 2: ObjectInfo("object 2", "object")}
    session.name_object(2, "bottle", "bottle")
    session.name_object(2, "green bottle")  # the category stays
    session.name_object(5, "cup", "cup")  # named before it is painted
    assert session.objects[2] == ObjectInfo("green bottle", "bottle") and session.objects[5].name == "cup"
    with pytest.raises(PropagateError, match="give a name"):
        session.name_object(1, " ")


def _steps(truth):
    """Keyframe edits in some order: (method, args)."""
    moved = truth[6].copy()
    moved[moved == 2] = 0
    moved[80:110, 30:70] = 2
    return [("add_mask", (0, truth[0])), ("add_mask", (6, moved, [2])), ("set_absent", (3, 1)),
            ("add_mask", (8, truth[8], [1])), ("add_mask", (9, truth[9])), ("remove", (6,)),
            ("add_mask", (4, truth[4], [2])), ("remove", (8, [1])), ("set_absent", (7, 2)), ("remove", (9,))]


@pytest.mark.parametrize("overrides", [{}, {"propagation.reuse": True}, {"propagation.scope": "segment"},
                                       {"propagation.scope": "segment", "propagation.reuse": True}])
def test_per_object_results_equal_a_fresh_session_whatever_the_order_of_edits(tmp_path, baseline, overrides):
    """After every edit, the kept sweeps (replay, kept candidates) give exactly what a fresh session with the same
    keyframes and marks gives."""
    frames, truth = entering_clip(tmp_path / "clip", frames=10, enter=0)
    config = load_config("davis_baseline", {**CONFIG, **overrides})
    kept = Session(frames, config, extractor=baseline)
    done = []
    for step in _steps(truth):
        done.append(step)
        method, args = step
        getattr(kept, method)(*args)
        if not kept.keyframes:
            continue
        ours = {t: r for t, r in kept.propagate()}
        fresh = Session(frames, config, extractor=baseline)
        for m, a in done:
            getattr(fresh, m)(*a)
        theirs = dict(fresh.propagate())
        assert kept.keyframes == fresh.keyframes and kept.absent_marks() == fresh.absent_marks()
        for t in range(10):
            assert np.array_equal(ours[t].mask, theirs[t].mask), f"after {[m for m, _ in done]}: frame {t}"
            assert ours[t].absent == theirs[t].absent and ours[t].confidence == theirs[t].confidence
    assert kept.stats["propagated_frames"] < fresh.stats["propagated_frames"] * len(done)  # something was reused


def test_marking_the_only_object_of_a_keyframe_absent_removes_the_keyframe_keeps_other_marks(tmp_path, baseline):
    frames, truth = entering_clip(tmp_path / "clip", frames=6, enter=0)
    session = Session(frames, load_config("davis_baseline", CONFIG), extractor=baseline)
    session.add_mask(0, truth[0])
    session.set_absent(3, 1)
    session.add_mask(3, np.where(truth[3] == 2, 2, 0).astype(np.uint8))  # a full keyframe of object 2 alone
    session.set_absent(3, 2)
    assert session.keyframes == [0] and session.absent_marks() == {3: [1, 2]}
    session.add_mask(4, truth[4], objects=[1])
    session.set_absent(4, 1)  # its only object: the partial keyframe goes, the mark stays
    assert session.keyframes == [0] and session.absent_marks() == {3: [1, 2], 4: [1]}
    results = dict(session.propagate())
    assert all(results[t].absent == {1, 2} and not results[t].mask.any() for t in range(3, 6))
