"""The web app's logic without a browser: the path guard, uploads, the brush layer codec, the confidence strip and
click-to-correspond (named points, a carried sticker) on an image pair with a known shift (the browser test drives
the same code through the page)."""
from __future__ import annotations

import re
import threading
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import damaged_zip, write_clip

from propagate.app.core import (
    MAX_OBJECTS,
    PAINT_ALPHA,
    Correspondence,
    Server,
    best_match,
    carry_edit,
    confidence_strip,
    edited_objects,
    frames_to_check,
    layer_to_mask,
    mask_to_layer,
    open_upload,
    place_sticker,
    resolve_under_root,
    same_image,
)
from propagate.config import load_config
from propagate.correspond import match_points, project
from propagate.demo import _texture
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.labels import DAVIS_PALETTE
from propagate.render import OverlayWriter, point_colours

MB = 2**20


def test_paths_resolve_under_root_only(tmp_path):
    root = tmp_path / "root"
    (root / "clip").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "link").symlink_to(tmp_path / "secret")
    assert resolve_under_root(root, "clip") == (root / "clip").resolve()
    assert resolve_under_root(root, str(root / "clip")) == (root / "clip").resolve()
    for outside in ["../secret", str(tmp_path / "secret"), "/etc", "link", "clip/../../secret"]:
        with pytest.raises(PropagateError, match="outside the server's --root"):
            resolve_under_root(root, outside)
    with pytest.raises(PropagateError, match="does not exist"):
        resolve_under_root(root, "missing.mp4")
    with pytest.raises(PropagateError, match="no path given"):
        resolve_under_root(root, "  ")


def test_uploads_open_or_say_what_is_wrong(tmp_path):
    frames, _, _ = write_clip(tmp_path / "clip", 3)
    good = tmp_path / "frames.zip"
    with zipfile.ZipFile(good, "w") as zf:
        for i, f in enumerate(sorted(frames.iterdir())):
            zf.write(f, f"../../evil/{f.name}" if i == 0 else f"sub/{f.name}")  # traversal names are flattened
        zf.writestr("notes.txt", "ignored")
    source = open_upload(good, tmp_path / "work1", 10 * MB)
    assert len(source) == 3 and (tmp_path / "work1" / "frames").is_dir()
    assert not (tmp_path / "evil").exists()

    video = tmp_path / "clip.mp4"
    with OverlayWriter(video, 10, (64, 48)) as writer:
        for k in range(3):
            writer.write(np.full((48, 64, 3), 40 * k, np.uint8))
    assert len(open_upload(video, tmp_path / "work2", 10 * MB)) == 3

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("readme.txt", "no frames")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (2 * MB))
    for upload, says in [(bad, "upload bad.mp4"), (empty, "upload empty.zip holds no frames"),
                         (other, "neither a video file"), (big, "over the 1 MB limit")]:
        with pytest.raises(PropagateError, match=says) as caught:
            open_upload(upload, tmp_path / f"work-{upload.stem}", 1 * MB)
        assert str(tmp_path) not in str(caught.value)  # named as the user knows it


def test_a_damaged_zip_upload_is_one_line(tmp_path):
    """A zip whose member fails its CRC (stored) or whose compressed data is broken (deflated): one line naming the
    upload, not the exception the unpacking raised."""
    frames, _, _ = write_clip(tmp_path / "clip", 3)
    files = sorted(frames.iterdir())
    for compression, says in [(zipfile.ZIP_STORED, r"Bad CRC-32"), (zipfile.ZIP_DEFLATED, r"")]:
        upload = damaged_zip(tmp_path / f"frames-{compression}.zip", files, compression)
        with pytest.raises(PropagateError, match=rf"upload {upload.name} is a damaged zip: {files[1].name} cannot be "
                                                 rf"unpacked \(.*{says}.*\); zip the frames again") as caught:
            open_upload(upload, tmp_path / f"work-{compression}", 10 * MB)
        assert "\n" not in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_layer_codec_round_trips_every_object():
    mask = np.zeros((20, 30), np.uint8)
    for k in range(1, MAX_OBJECTS + 1):
        mask[k - 1, :k] = k
    layer = mask_to_layer(mask)
    assert layer.shape == (20, 30, 4) and (layer[mask == 0, 3] == 0).all()
    every = range(1, MAX_OBJECTS + 1)
    assert np.array_equal(layer_to_mask(layer, every, mask), mask)
    assert np.array_equal(layer_to_mask(layer, every), mask)  # painted on an empty frame
    # a brush stroke in object 3's colour over object 1, and an erased corner
    layer[5:8, 0:10, :3] = DAVIS_PALETTE[3]
    layer[5:8, 0:10, 3] = PAINT_ALPHA + 1
    layer[0:2, 0:2, 3] = 0
    expected = mask.copy()
    expected[5:8, 0:10] = 3
    expected[0:2, 0:2] = 0
    assert np.array_equal(layer_to_mask(layer, every, mask), expected)


def two_objects(h=40, w=60):
    """A mask with object 1 (left block) and object 2 (right block), and its layer."""
    mask = np.zeros((h, w), np.uint8)
    mask[10:30, 5:25] = 1
    mask[10:30, 35:55] = 2
    return mask, mask_to_layer(mask)


def test_anti_aliased_edges_and_other_colours_never_make_an_object():
    mask, layer = two_objects()
    stroke = layer.copy()
    # a stroke of object 1 across the gap, with anti-aliased edges: faint red, a darker red, and blends of red and
    # green where it meets object 2 (the colours that used to become objects 3, 8, 10 ...)
    stroke[18:22, 20:40, :3] = DAVIS_PALETTE[1]
    stroke[18:22, 20:40, 3] = 153
    stroke[17, 25:35] = [128, 0, 0, 60]  # a faint edge over the background: not painted
    stroke[22, 25:35] = [64, 0, 0, 153]  # object 8's colour, which does not exist: not painted
    stroke[18:22, 35:37] = [64, 64, 0, 153]  # a red-green blend: no object's colour
    out = layer_to_mask(stroke, [1, 2], mask)
    assert set(np.unique(out)) == {0, 1, 2}
    expected = mask.copy()
    expected[18:22, 20:35] = 1
    expected[18:22, 37:40] = 1
    assert np.array_equal(out, expected)
    # object 3's exact colour paints only once object 3 exists
    stroke[0:4, 0:4] = [*DAVIS_PALETTE[3], 153]
    assert out[0:4, 0:4].max() == 0 and (layer_to_mask(stroke, [1, 2, 3], mask)[0:4, 0:4] == 3).all()


def test_an_untouched_layer_gives_its_mask_back_byte_for_byte_through_a_lossy_transport():
    """The editor's transport may change colours a little (a lossy image format): an untouched layer is still its
    mask, and no colour near an object's becomes another object."""
    rng = np.random.default_rng(0)
    mask, layer = two_objects()
    noisy = layer.copy()
    noise = rng.integers(-24, 25, size=layer[..., :3].shape)
    noisy[..., :3] = np.clip(layer[..., :3].astype(int) + noise, 0, 255).astype(np.uint8)
    assert np.array_equal(layer_to_mask(noisy, range(1, MAX_OBJECTS + 1), mask), mask)
    assert edited_objects(mask, layer_to_mask(noisy, [1, 2], mask)) == []
    # with the labels hidden (an empty layer), unpainted pixels keep the mask; a stroke changes only itself
    empty = mask_to_layer(np.zeros_like(mask))
    assert np.array_equal(layer_to_mask(empty, [1, 2], mask, shown=False), mask)
    empty[0:3, 0:3] = [*DAVIS_PALETTE[2], 153]
    out = layer_to_mask(empty, [1, 2], mask, shown=False)
    assert (out[0:3, 0:3] == 2).all() and edited_objects(mask, out) == [2]


def test_a_layer_of_another_size_is_refused():
    mask, layer = two_objects()
    with pytest.raises(PropagateError, match="reload the page"):
        layer_to_mask(layer[:, :50], [1, 2], mask)


def test_a_save_reads_the_editor_only_once_it_shows_the_frame():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    rgba = np.concatenate([frame, np.full((40, 60, 1), 255, np.uint8)], axis=2)
    assert same_image(rgba, frame) and same_image(frame, frame)
    assert not same_image(other, frame) and not same_image(frame[:, :50], frame)


def test_project_names_stay_inside_the_projects_folder(tmp_path):
    from propagate.app.project import PROJECTS, path_key, project_folder

    key = path_key("clips/a b/../walk.mp4")
    assert re.fullmatch(r"[A-Za-z0-9._-]+-[0-9a-f]{8}", key) and path_key("x/walk.mp4") != path_key("y/walk.mp4")
    assert project_folder(tmp_path, key) == tmp_path / PROJECTS / key
    for bad in ["../etc", "a/b", "", ".hidden", "x\\y"]:
        with pytest.raises(PropagateError, match="is not a project name"):
            project_folder(tmp_path, bad)


def test_strip_marks_the_least_confident_frames_not_keyframes():
    confidence = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.05, 5: 0.7}
    assert frames_to_check(confidence, keyframes=[0, 4]) == [2, 3, 5]
    html = confidence_strip(6, confidence, [0, 4], current=3)
    assert html.count('data-frame="') == 6 and "check first: frame 2, frame 3, frame 5" in html
    assert html.count("▲") == 3 and html.count(">K<") == 2
    # an absent object is named in its frame's tip and marked apart (not as a low confidence)
    html = confidence_strip(6, {1: 0.9, 2: 1.0, 3: 0.95, 4: 0.5, 5: 0.6}, [0], current=0, absent={2: [1]})
    assert "frame 2: confidence 1.00; absent: object 1" in html and html.count("○") == 1


def shifted_pair(size=(256, 128), shift=(24, 16), seed=3):
    """Left and right images where the content at (x, y) on the left is at (x + dx, y + dy) on the right."""
    w, h = size
    dx, dy = shift
    big = _texture(np.random.default_rng(seed), h + dy, w + dx, (120, 110, 100), 10)
    return big[dy:dy + h, dx:dx + w].copy(), big[:h, :w].copy()


def test_best_match_on_a_known_shift_lands_within_one_cell():
    config = load_config("davis_baseline", {"resize.short_side": 128, "resize.multiple": 8})
    corr = Correspondence(build_extractor(config.features, config.extractor), config.resize)
    left, right = shifted_pair()
    lf, rf = corr.features(left), corr.features(right)
    assert corr.features(left) is lf  # computed once per image
    cell = 8  # 256x128 is processed at its own size, stride 8
    rng = np.random.default_rng(0)
    for x, y in rng.integers([30, 20], [220, 100], size=(10, 2)):
        m = best_match(lf, rf, (float(x), float(y)), (256, 128), (256, 128))
        assert abs(m.xy[0] - (x + 24)) <= cell and abs(m.xy[1] - (y + 16)) <= cell, (x, y, m.xy)
        assert m.heatmap.shape == (128, 256) and m.cell == (x // 8, y // 8)


def test_best_match_is_the_cosine_argmax():
    """On hand-made features: the match is the cell whose feature points the same way as the clicked one."""
    left = torch.zeros(3, 2, 2)
    left[:, 1, 0] = torch.tensor([1.0, 2.0, 0.0])  # clicked cell (column 0, row 1)
    right = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.1
    right[2] += 1.0  # every other cell points elsewhere (cosine with the clicked feature < 0.2)
    right[:, 2, 3] = torch.tensor([10.0, 20.0, 0.0])  # same direction, other length
    m = best_match(left, right, (3.0, 12.0), (16, 16), (32, 32))
    assert m.cell == (0, 1) and abs(m.score - 1.0) < 1e-5
    assert 24 <= m.xy[0] < 32 and 16 <= m.xy[1] < 24  # inside right cell (3, 2) of 8 px


def test_image_of_a_size_the_extractor_cannot_take_is_refused_in_one_line():
    config = load_config("davis_baseline", {"resize.size": [100, 60]})
    corr = Correspondence(build_extractor(config.features, config.extractor), config.resize)
    with pytest.raises(PropagateError, match="not a multiple of 8"):
        corr.features(np.zeros((60, 100, 3), np.uint8))


def correspond_handlers(tmp_path, left, right):
    """The page's handlers over the baseline, with the pair loaded as the left and right images (no browser)."""
    pytest.importorskip("gradio")
    from propagate.app import features_label
    from propagate.app.handlers import Handlers

    config = load_config("davis_baseline", {"resize.short_side": 128, "resize.multiple": 8})
    extractor = build_extractor(config.features, config.extractor)
    server = Server(config=config, extractor=extractor, root=tmp_path, work=tmp_path,
                    features_label=features_label(extractor), max_upload_bytes=MB)
    h = Handlers(server, None)
    c = h.set_image("left", left, None)[1]
    c = h.set_image("right", right, c)[1]
    return h, c


def click(h, c, x, y, mode="points", name="", sticker=None):
    return h.click(c, mode, name, sticker, SimpleNamespace(index=(x, y)))


def test_named_points_are_matched_at_once_where_match_points_says(tmp_path):
    left, right = shifted_pair()
    h, c = correspond_handlers(tmp_path, left, right)
    clicks = [(40, 30, ""), (200, 90, "nose"), (120, 60, "")]
    for x, y, name in clicks:
        text, c, left_img, right_img = click(h, c, x, y, name=name)
    names = [n for n, _ in c["points"]]
    assert names == ["p1", "nose", "p3"]  # unnamed clicks count up; a typed name is kept
    xy = np.array([p for _, p in c["points"]])
    (_, lf), (_, rf) = c["left"], c["right"]
    want, similarity = match_points(lf, rf, xy, (256, 128), (256, 128))
    assert np.abs(want - (xy + [24, 16])).max() <= 8  # within one feature cell of the known shift
    mx, my = (float(v) for v in re.search(r"<span id='match-xy'>([\d.]+), ([\d.]+)</span>", text).groups())
    assert (mx, my) == tuple(np.round(want[2]))  # the last clicked point
    for j, (px, py) in enumerate(want):  # each point drawn in its own colour where it matched
        assert tuple(right_img[int(py), int(px)]) == point_colours(3)[j], (j, px, py)
        assert f"{names[j]} -> ({px:.0f}, {py:.0f}) {similarity[j]:.3f}" in text
    assert tuple(left_img[60, 120]) == point_colours(3)[2]
    assert text.startswith("**BASELINE features, not DIFT**")  # the baseline says so on every result
    assert (right_img[2, 2] == 0).all()  # the BASELINE caption's dark band on the right picture

    text, c, _, _ = click(h, c, 60, 40, name="nose")  # a taken name moves its point and keeps its colour
    assert [n for n, _ in c["points"]] == ["p1", "nose", "p3"] and c["points"][1][1] == (60.0, 40.0)
    text, c, left_view, right_view = h.clear_points(c)
    assert c["points"] == [] and left_view is c["left"][0] and "cleared" in text
    text, c, _, _ = click(h, c, 40, 30)
    assert [n for n, _ in c["points"]] == ["p1"]


def test_place_sticker_puts_its_centre_at_the_click_and_cuts_it_at_the_border():
    sticker = np.zeros((10, 20, 4), np.uint8)
    sticker[..., 0], sticker[..., 3] = 200, 255
    edit = place_sticker(sticker, (50, 30), (100, 60))
    ys, xs = np.nonzero(edit[..., 3])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (40, 59, 25, 34) and (edit[ys, xs, 0] == 200).all()
    edit = place_sticker(sticker[..., :3], (2, 2), (100, 60))  # RGB counts as opaque; cut at the corner
    ys, xs = np.nonzero(edit[..., 3])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (0, 11, 0, 6)
    with pytest.raises(PropagateError, match="transparent everywhere"):
        place_sticker(np.zeros((4, 4, 4), np.uint8), (50, 30), (100, 60))


def sticker_of(size=24):
    """An opaque sticker: a green square with a magenta cross (nothing like the texture)."""
    sticker = np.zeros((size, size, 4), np.uint8)
    sticker[..., 1], sticker[..., 3] = 220, 255
    sticker[size // 2 - 2:size // 2 + 2, :, :3] = (255, 0, 255)
    sticker[:, size // 2 - 2:size // 2 + 2, :3] = (255, 0, 255)
    return sticker


def sticker_box(image):
    """The box (x0, y0, x1, y1) of the sticker's green pixels in ``image``."""
    green = (image[..., 1] > 200) & (image[..., 0] < 30) & (image[..., 2] < 30)
    ys, xs = np.nonzero(green)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()])


def test_edit_mode_carries_the_sticker_to_the_same_place_on_identical_images(tmp_path):
    left, _ = shifted_pair()
    h, c = correspond_handlers(tmp_path, left, left.copy())
    text, c, left_img, right_img = click(h, c, 120, 60, mode="edit", sticker=sticker_of())
    assert "carried by a homography" in text and text.startswith("**BASELINE features, not DIFT**")
    assert np.abs(sticker_box(right_img) - sticker_box(left_img)).max() <= 2
    assert np.abs(sticker_box(left_img) - [108, 48, 131, 71]).max() == 0  # its centre at the click
    assert c["points"] == []  # edit mode places no point


def test_edit_mode_follows_a_known_shift():
    left, right = shifted_pair()
    config = load_config("davis_baseline", {"resize.short_side": 128, "resize.multiple": 8})
    corr = Correspondence(build_extractor(config.features, config.extractor), config.resize)
    edit = place_sticker(sticker_of(32), (120, 60), (256, 128))
    left_img, right_img, homography, inliers, samples = carry_edit(left, corr.features(left), right,
                                                                   corr.features(right), edit, config.match)
    assert homography is not None and inliers > samples // 2
    corners = np.array([[104.0, 44.0], [135.0, 44.0], [135.0, 75.0], [104.0, 75.0]])
    assert np.abs(project(homography, corners) - (corners + [24, 16])).max() <= 3
    assert np.abs(sticker_box(right_img) - (sticker_box(left_img) + [24, 16, 24, 16])).max() <= 3
    with pytest.raises(PropagateError, match="outside the left image"):
        place_sticker(sticker_of(), (-100, -100), (256, 128))


# ---------------------------------------------------------------------------------------------- the workspace


def small_config():
    return load_config("davis_baseline", {"resize.short_side": 128, "resize.multiple": 8})


def test_workspace_masks_then_a_correction_reuses_features(tmp_path):
    from propagate.app.workspace import Workspace
    from propagate.labels import read_mask
    from propagate.video import open_video

    frames, _, masks = write_clip(tmp_path / "clip", 5, (192, 128))
    config = small_config()
    (tmp_path / "ws").mkdir()
    ws = Workspace(open_video(frames), config, build_extractor(config.features, config.extractor), tmp_path / "ws")
    with pytest.raises(PropagateError, match="no keyframe yet"):
        next(ws.propagate())
    with pytest.raises(PropagateError, match="nothing is painted"):
        ws.set_mask(0, np.zeros_like(masks[0]))
    assert ws.set_mask(0, masks[0]) == [1, 2] and sorted(ws.objects) == [1, 2]
    assert [r.index for r in ws.propagate()] == [0, 1, 2, 3, 4]
    assert set(ws.confidence()) == {1, 2, 3, 4}
    ws.set_mask(3, masks[3])
    list(ws.propagate())
    assert ws.session.stats["extractor_frames"] == 5  # the correction extracted nothing
    assert np.array_equal(ws.mask(3), masks[3]) and ws.overlay(2).shape == (128, 192, 3)
    files = ws.export()
    assert [f.name for f in files] == ["frames_masks.zip", "frames_annotations.xml", "frames_coco.json",
                                       "frames_confidence.csv", "frames_overlay.mp4", "frames_run_info.json"]
    with zipfile.ZipFile(files[0]) as zf:
        assert sorted(zf.namelist()) == [f"{i:05d}.png" for i in range(5)]
    assert np.array_equal(read_mask(tmp_path / "ws" / "export-1" / "files" / "00003.png"), masks[3])
    ws.remove(3)
    assert ws.keyframes == [0]
    ws.close()
    assert not (tmp_path / "ws").exists()


def propagated_workspace(tmp_path, project=None, frames=6):
    """A workspace over the synthetic clip (object 1 a disk, object 2 a square, known masks) with a keyframe on
    frame 0, propagated."""
    from propagate.app.workspace import Workspace
    from propagate.video import open_video

    clip, _, masks = write_clip(tmp_path / "clip", frames, (192, 128))
    config = small_config()
    folder = tmp_path / f"ws-{len(list(tmp_path.glob('ws-*')))}"
    folder.mkdir()
    ws = Workspace(open_video(clip), config, build_extractor(config.features, config.extractor), folder,
                   project=project, video="clip/frames")
    ws.set_mask(0, masks[0])
    list(ws.propagate())
    return ws, masks


def test_saving_an_untouched_propagated_frame_keeps_its_mask_and_makes_no_object(tmp_path):
    ws, _ = propagated_workspace(tmp_path)
    for index in (2, 4):
        propagated = ws.results[index].mask.copy()
        sent = ws.editor_mask(index)
        assert np.array_equal(sent, propagated)
        layer = mask_to_layer(sent)
        layer[..., :3] = np.clip(layer[..., :3].astype(int) + 20 * (layer[..., 3:] > 0), 0, 255)  # lossy transport
        text = ws.save_layer(index, layer)
        assert text == f"frame {index} is a keyframe: objects 1, 2", text
        assert ws.session.keyframe_objects(index) is None
        assert ws.session.annotation(index).tobytes() == propagated.tobytes()
    assert sorted(ws.objects) == [1, 2] and sorted(ws.session.objects) == [1, 2]
    ws.close()


def test_correcting_one_object_leaves_the_others_pixels(tmp_path):
    ws, masks = propagated_workspace(tmp_path)
    index = 4
    before = ws.results[index].mask.copy()
    layer = mask_to_layer(ws.editor_mask(index))
    truth2 = masks[index] == 2
    layer[before == 2] = 0  # erase object 2 where it was propagated
    layer[truth2] = [*DAVIS_PALETTE[2], 153]  # paint it where it truly is
    text = ws.save_layer(index, layer)
    assert "keyframe of objects 2" in text and ws.session.keyframe_objects(index) == [2]
    list(ws.propagate())
    after = ws.results[index].mask
    assert np.array_equal(after == 2, truth2)
    outside = ~truth2
    assert np.array_equal(after[outside] == 1, before[outside] == 1)  # object 1 untouched outside object 2
    ws.close()


def test_absent_undo_redo_and_deleting_an_object(tmp_path):
    ws, _ = propagated_workspace(tmp_path)
    ws.mark_absent(3, 2)
    list(ws.propagate())
    assert all(not (ws.results[i].mask == 2).any() and 2 in ws.results[i].absent for i in (3, 4, 5))
    assert (ws.results[2].mask == 2).any() and ws.absent() == {3: [2], 4: [2], 5: [2]}
    assert ws.undo() == "undone: object 2 absent from frame 3"
    assert ws.session.absent_marks() == {}
    assert ws.redo() == "redone: object 2 absent from frame 3"
    assert ws.session.absent_marks() == {3: [2]}
    first = np.array(ws.session.annotation(0))
    ws.add_object("cup", "tableware")
    assert ws.objects[3] == ("cup", "tableware")
    ws.delete_object(2)
    assert sorted(ws.objects) == [1, 3] and not (ws.session.annotation(0) == 2).any()
    assert ws.session.keyframe_objects(0) is None  # a full keyframe stays full
    assert not (ws.mask(2) == 2).any() and (ws.results[2].mask == 2).any()  # not shown before propagating again
    assert ws.session.absent_marks() == {}
    ws.undo()  # the deletion
    assert sorted(ws.objects) == [1, 2, 3] and np.array_equal(ws.session.annotation(0), first)
    assert ws.session.absent_marks() == {3: [2]}
    ws.undo(), ws.undo(), ws.undo()  # the object added, the absence, the keyframe
    assert ws.keyframes == [] and ws.session.absent_marks() == {}
    with pytest.raises(PropagateError, match="nothing to undo"):
        ws.undo()
    ws.redo()
    assert ws.keyframes == [0] and np.array_equal(ws.session.annotation(0), first)
    ws.close()


def test_the_project_folder_brings_back_keyframes_names_absences_and_results(tmp_path):
    from propagate.app.project import load_project
    from propagate.app.workspace import Workspace
    from propagate.video import open_video

    project = tmp_path / "root" / "propagate-projects" / "clip-1"
    ws, masks = propagated_workspace(tmp_path, project)
    ws.rename_object(1, "disk", "ball")
    corrected = mask_to_layer(ws.editor_mask(4))
    corrected[masks[4] == 2] = [*DAVIS_PALETTE[2], 153]
    ws.save_layer(4, corrected)
    ws.mark_absent(5, 1)
    list(ws.propagate())
    ws.settings["frame"] = 4
    ws.autosave()
    kept = {i: r.mask.copy() for i, r in ws.results.items()}
    assert sorted(p.name for p in project.iterdir()) == ["keyframes", "project.json", "results", "results.json"]
    assert not [p for p in project.rglob("*") if ".tmp" in p.name]  # written beside, then moved into place
    config = small_config()
    (tmp_path / "again").mkdir()
    again = Workspace(open_video(tmp_path / "clip" / "frames"), config,
                      build_extractor(config.features, config.extractor), tmp_path / "again", project=project)
    assert again.restore() == "restored 2 keyframes, 2 objects, results of 6 frames"
    assert again.objects == {1: ("disk", "ball"), 2: ("object 2", "object")} and again.settings["frame"] == 4
    assert again.keyframes == [0, 4] and again.session.keyframe_objects(4) == [2]
    assert again.session.absent_marks() == {5: [1]}
    assert all(np.array_equal(again.mask(i), kept[i]) for i in range(6))  # read back, not recomputed
    assert again.absent() == {5: [1]} and not again.results
    list(again.propagate())  # recomputed from the restored keyframes: the same results
    assert all(np.array_equal(again.results[i].mask, kept[i]) for i in range(6))
    # a project of other frames is refused in one line
    with pytest.raises(PropagateError, match="saved for other frames"):
        load_project(project, ["a", "b"])
    ws.close()
    again.close()


def test_a_reload_reopens_a_path_or_an_upload_with_its_project(tmp_path):
    """What the browser remembers (``path:...`` or ``upload:<project>``) opens the video again with its keyframes;
    a remembered path outside the root is refused like a typed one."""
    pytest.importorskip("gradio")
    from propagate.app.handlers import Handlers

    root = tmp_path / "root"
    frames, _, masks = write_clip(root / "clip", 3, (192, 128))
    upload = tmp_path / "uploads" / "walk.zip"
    upload.parent.mkdir()
    with zipfile.ZipFile(upload, "w") as zf:
        for f in sorted(frames.iterdir()):
            zf.write(f, f.name)
    config = small_config()
    (tmp_path / "work").mkdir()
    server = Server(config=config, extractor=build_extractor(config.features, config.extractor), root=root,
                    work=tmp_path / "work", features_label="baseline", max_upload_bytes=10 * MB)
    h = Handlers(server, SimpleNamespace(opened=[None] * 9, view=[None] * 3))
    for opened in (h.open_path("clip/frames", None), h.open_uploaded(str(upload), None)):
        ws, remembered = opened[1], opened[-1]
        ws.set_mask(1, masks[1])
        again = h.reopen(remembered, None)
        assert again[0].endswith("; restored 1 keyframe, 2 objects"), again[0]
        assert again[1].keyframes == [1] and np.array_equal(again[1].session.annotation(1), masks[1])
        ws.close(), again[1].close()
    assert remembered.startswith("upload:upload-walk-") and (root / "propagate-projects" / remembered[7:]).is_dir()
    assert sorted(p.name for p in (root / "propagate-projects" / remembered[7:]).iterdir()) == [
        "keyframes", "project.json", "upload.zip"]
    with pytest.raises(PropagateError, match="outside the server's --root"):
        h.reopen("path:../uploads", None)
    with pytest.raises(PropagateError, match="is not a project name"):
        h.reopen("upload:../../etc", None)
    assert h.reopen("", None) == (gr_skip(),) * 9


def gr_skip():
    import gradio as gr

    return gr.skip()


def test_workspace_points_are_placed_moved_and_propagated(tmp_path):
    from propagate.app.workspace import Workspace
    from propagate.video import open_video

    frames, _, _ = write_clip(tmp_path / "clip", 4, (192, 128))
    config = load_config("jhmdb_baseline", {"resize.size": [192, 128]})
    (tmp_path / "ws").mkdir()
    ws = Workspace(open_video(frames), config, build_extractor(config.features, config.extractor), tmp_path / "ws")
    with pytest.raises(PropagateError, match="needs a name"):
        ws.place_point(0, " ", (10, 10))
    ws.place_point(0, "disk", (20, 20))
    ws.place_point(0, "square", (144, 33))
    ws.place_point(0, "disk", (33, 65))  # moved
    assert ws.points[0] == {"disk": (33.0, 65.0), "square": (144.0, 33.0)}
    assert ws.set_points(0) == ["disk", "square"]
    results = list(ws.propagate())
    assert len(results) == 4 and results[0].keyframe and np.allclose(results[0].xy, [[33, 65], [144, 33]])
    assert results[3].xy.shape == (2, 2) and ws.overlay(3).shape == (128, 192, 3)
    with pytest.raises(PropagateError, match="points are not exported"):
        ws.export()
    ws.close()


# ---------------------------------------------------------------------------------------------- the command


def test_serve_refuses_a_video_outside_root_and_a_missing_root(tmp_path, capsys):
    from propagate.cli import main

    frames, _, _ = write_clip(tmp_path / "clip", 2)
    (tmp_path / "root").mkdir()
    assert main(["serve", str(frames), "--root", str(tmp_path / "root"), "--features", "baseline"]) == 2
    assert "outside --root" in capsys.readouterr().err
    assert main(["serve", "--root", str(tmp_path / "nowhere"), "--features", "baseline"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def keyframed_workspaces(tmp_path, names: tuple[str, ...]) -> list:
    """One workspace per name over the same 6-frame clip, each with keyframes on frames 0 and 5."""
    from propagate.app.workspace import Workspace
    from propagate.video import open_video

    frames, _, masks = write_clip(tmp_path / "clip", 6, (192, 128))
    config = small_config()
    extractor = build_extractor(config.features, config.extractor)
    spaces = []
    for name in names:
        (tmp_path / name).mkdir()
        ws = Workspace(open_video(frames), config, extractor, tmp_path / name)
        ws.set_mask(0, masks[0])
        ws.set_mask(5, masks[5])
        spaces.append(ws)
    return spaces


def test_a_cancelled_propagation_then_a_full_one_equals_a_clean_run(tmp_path):
    """Cancel in the page closes the result stream mid-way; the next propagation must not depend on it."""
    spaces = keyframed_workspaces(tmp_path, ("cancelled", "clean"))
    stream = spaces[0].propagate()
    next(stream), next(stream), next(stream)
    stream.close()  # what cancelling does to the generator
    assert len(spaces[0].results) == 3
    final = [{r.index: r.mask for r in ws.propagate()} for ws in spaces]
    assert final[0].keys() == final[1].keys() == set(range(6))
    assert all(np.array_equal(final[0][i], final[1][i]) for i in range(6))


def test_a_propagation_in_a_thread_reports_the_backward_sweep_and_stops_when_closed(tmp_path):
    """The page's status line has something to say while the backward sweep runs whole (ticks, with the phase the
    callback last told); closing the stream (cancel) stops the run there, and a full run afterwards equals a
    clean one."""
    spaces = keyframed_workspaces(tmp_path, ("threaded", "clean"))
    clean = {r.index: r.mask for r in spaces[1].propagate()}
    told: list[str] = []
    go = threading.Event()

    def held(phase: str, done: int, total: int) -> None:  # the backward sweep waits until the test says go
        told.append(phase)
        if phase == "backward":
            go.wait(10)

    stream = spaces[0].propagate_in_thread(held, tick=0.02)
    assert next(stream) is None  # no result while the backward sweep runs: a tick, for the status line
    go.set()
    stream.close()
    assert not spaces[0].running
    told.clear()
    got = list(spaces[0].propagate_in_thread(lambda phase, done, total: told.append(phase), tick=0.02))
    results = [r for r in got if r is not None]
    assert [r.index for r in results] == list(range(6))
    assert all(np.array_equal(r.mask, clean[r.index]) for r in results)
    assert "backward" in told and told.index("backward") < told.index("forward")


def test_cancel_clearing_running_stops_a_threaded_propagation(tmp_path):
    """The page's cancel clears ``running``: the worker stops at its next frame, even before the stream is closed."""
    from propagate.app.handlers import Handlers

    ws = keyframed_workspaces(tmp_path, ("halted",))[0]
    go = threading.Event()

    def held(phase: str, done: int, total: int) -> None:
        if phase == "backward":
            go.wait(10)

    stream = ws.propagate_in_thread(held, tick=0.02)
    assert next(stream) is None
    assert ws.running
    Handlers.cancelled(ws)
    go.set()
    assert [r for r in stream if r is not None] == []  # stopped in the backward sweep: no result streamed
    assert not ws.running and ws.results == {}
