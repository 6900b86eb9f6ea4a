"""Keypoints: points files, heatmap labels, decoding, the CRW propagation variant against a dense reference, and
the ``run --points`` job on a synthetic clip."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from propagate.config import KeypointConfig, PropagationConfig, load_config
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.io import is_complete
from propagate.keypoints import (
    KeypointTracker,
    check_points_inside,
    decode_keypoints,
    draw_points,
    grid_to_pixels,
    keypoint_heatmaps,
    pixels_to_grid,
    read_points,
    run_points,
)

# ------------------------------------------------------------------------------------------------ points files


def test_read_points_json_and_csv(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"points": [{"name": "head", "x": 120.5, "y": 40}, {"name": "neck", "x": 118, "y": 62}],
                                "edges": [["head", "neck"]]}))
    points = read_points(path)
    assert points.names == ["head", "neck"]
    np.testing.assert_array_equal(points.xy, [[120.5, 40], [118, 62]])
    assert points.edges == [(0, 1)] and points.edge_names() == [["head", "neck"]]

    mapping = tmp_path / "m.json"
    mapping.write_text(json.dumps({"points": {"a": [1, 2], "b": [3.5, 4]}}))
    assert read_points(mapping).names == ["a", "b"]

    unnamed = tmp_path / "u.json"
    unnamed.write_text(json.dumps([{"x": 1, "y": 2}, {"x": 3, "y": 4}]))
    assert read_points(unnamed).names == ["p1", "p2"]

    table = tmp_path / "p.csv"
    table.write_text("# first frame\nname,x,y\nhead,120.5,40\nneck, 118 , 62\n\n")
    points = read_points(table)
    assert points.names == ["head", "neck"] and points.edges == []
    np.testing.assert_array_equal(points.xy, [[120.5, 40], [118, 62]])


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("empty.json", '{"points": []}', "no points"),
        ("nokey.json", '{"pts": []}', '"points"'),
        ("dup.json", '{"points": [{"name": "a", "x": 1, "y": 1}, {"name": "a", "x": 2, "y": 2}]}', "used twice"),
        ("edge.json", '{"points": [{"name": "a", "x": 1, "y": 1}], "edges": [["a", "b"]]}', "'b'"),
        ("nan.json", '{"points": [{"name": "a", "x": "left", "y": 1}]}', "not a number"),
        ("short.csv", "a,1\n", "not name,x,y"),
        ("empty.csv", "name,x,y\n", "no points"),
        ("points.txt", "a,1,2\n", "unknown format"),
    ],
)
def test_read_points_errors_name_the_file(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(PropagateError, match=message) as info:
        read_points(path)
    assert str(path) in str(info.value)


def test_points_outside_the_first_frame_are_an_error(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"points": [{"name": "ok", "x": 0, "y": 0}, {"name": "far", "x": 320, "y": 5}]}))
    with pytest.raises(PropagateError, match="'far'.*outside the first frame"):
        check_points_inside(read_points(path), (320, 240), path)
    with pytest.raises(PropagateError, match="does not exist"):
        read_points(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------ labels, decoding


def test_grid_mapping_round_trip_and_conventions():
    xy = np.array([[0.0, 0.0], [3.5, 3.5], [319.0, 239.0], [100.25, 7.0]])
    for convention in ("centre", "crw"):
        uv = pixels_to_grid(xy, (320, 240), (40, 40), convention)
        np.testing.assert_allclose(grid_to_pixels(uv, (320, 240), (40, 40), convention), xy, atol=1e-12)
    # centre: cell 0 of an 8-pixel stride is the centre of pixels 0..7; crw: its corner
    np.testing.assert_allclose(pixels_to_grid([[3.5, 3.5]], (320, 320), (40, 40), "centre"), [[0.0, 0.0]])
    np.testing.assert_allclose(pixels_to_grid([[8.0, 16.0]], (320, 320), (40, 40), "crw"), [[1.0, 2.0]])


def test_heatmaps_peak_spread_and_background():
    maps = keypoint_heatmaps(np.array([[5.4, 2.6], [0.0, 0.0], [np.nan, 1.0], [-9.0, 3.0]]), (8, 10), sigma=0.5)
    assert maps.shape == (5, 8, 10)
    first = maps[1]
    assert first[3, 5] == 1.0  # rounded (5.4, 2.6) -> column 5, row 3
    assert first[3, 4] == pytest.approx(math.exp(-2)) and first[2, 5] == pytest.approx(math.exp(-2))
    assert first[2, 4] == pytest.approx(math.exp(-4))
    assert (first > 0).sum() == 9  # floor(3 sigma) = 1 cell around the peak
    assert maps[2][0, 0] == 1.0 and (maps[2] > 0).sum() == 4  # corner: clipped to the grid
    assert maps[3].sum() == 0 and maps[4].sum() == 0  # NaN point, point far off the grid: empty
    joints = maps[1:].sum(0)
    assert torch.equal(maps[0], (joints == 0).float())


def test_decode_heatmaps_gives_the_peak_cell():
    h, w = 40, 40
    uv = np.array([[10.0, 20.0], [17.0, 5.0], [0.0, 39.0], [39.0, 0.0]])
    xy, confidence = decode_keypoints(keypoint_heatmaps(uv, (h, w)), (320, 240), topk=3)
    expected = grid_to_pixels(uv, (320, 240), (h, w))
    # inside: the 4 neighbours tie for 3rd place and are all kept, so the mean is the peak exactly
    np.testing.assert_allclose(xy[:2], expected[:2], atol=1e-9)
    # in a corner the clipped map pulls the mean inwards, by less than a cell
    assert (np.abs(xy[2:] - expected[2:]) < [8, 6]).all()
    np.testing.assert_allclose(confidence, 1.0)


def test_decode_top3_weighted_mean_and_lost_points():
    soft = torch.zeros(3, 4, 5, dtype=torch.float64)
    soft[1, 1, 1], soft[1, 1, 2], soft[1, 3, 4], soft[1, 0, 0] = 0.5, 0.3, 0.2, 0.1  # 4th is dropped
    xy, confidence = decode_keypoints(soft, (5, 4), topk=3, convention="crw")  # grid = pixels here
    expected_u = (0.5 * 1 + 0.3 * 2 + 0.2 * 4) / 1.0
    expected_v = (0.5 * 1 + 0.3 * 1 + 0.2 * 3) / 1.0
    np.testing.assert_allclose(xy[0], [expected_u, expected_v])
    assert confidence[0] == pytest.approx(0.5)
    assert np.isnan(xy[1]).all() and confidence[1] == 0.0  # an all-zero map is a lost point


# ------------------------------------------------------------------------------------------------ CRW propagation


def crw_dense_reference(frames, points_xy, native_wh, cfg: PropagationConfig, kp: KeypointConfig):
    """The CRW keypoint variant written densely: returns decoded ``[T-1, J, 2]`` and top-k cell indices.

    Labels: Gaussian heatmaps + background; affinity logits q.k / T against every key of frame 0 (never windowed)
    and of the last n frames (keys outside a disk of radius r around the query masked out); top-k over all keys
    together; softmax over the kept logits; labels = weighted sum; decode = top-3 weighted mean.
    """
    t_all, c, h, w = frames.shape
    feats = F.normalize(frames.double(), dim=1).reshape(t_all, c, h * w)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    disk = (ys[None, :] - ys[:, None]) ** 2 + (xs[None, :] - xs[:, None]) ** 2 <= cfg.radius**2  # [query, key]
    scale = np.array([w / native_wh[0], h / native_wh[1]])
    uv = (np.asarray(points_xy) + 0.5) * scale - 0.5
    labels0 = torch.zeros(1 + len(uv), h, w, dtype=torch.float64)
    for j, (u, v) in enumerate(uv):
        cu, cv = math.floor(u + 0.5), math.floor(v + 0.5)
        for y in range(h):
            for x in range(w):
                if abs(y - cv) <= 1 and abs(x - cu) <= 1:
                    labels0[1 + j, y, x] = math.exp(-((y - cv) ** 2 + (x - cu) ** 2) / (2 * kp.sigma**2))
    labels0[0] = (labels0[1:].sum(0) == 0).double()
    memory = [(feats[0], labels0.reshape(1 + len(uv), -1), False)]  # (keys, labels, windowed)
    decoded, cells = [], []
    for t in range(1, t_all):
        context = [memory[0]] + memory[1:][-cfg.n_last_frames:] if cfg.n_last_frames else [memory[0]]
        logits = torch.cat([
            torch.where(win_mask, feats[t].T @ keys, torch.tensor(-math.inf, dtype=torch.float64))
            for keys, _, windowed in context
            for win_mask in [disk if windowed else torch.ones_like(disk)]
        ], dim=1) / cfg.temperature  # [query, n_ctx * hw]
        labs = torch.cat([lab for _, lab, _ in context], dim=1)  # [K, n_ctx * hw]
        top, idx = torch.topk(logits, cfg.topk, dim=1)
        weights = torch.softmax(top, dim=1)
        new = (labs[:, idx] * weights[None]).sum(-1)  # [K, hw]
        memory.append((feats[t], new, True))
        joint = new[1:]
        vals, ids = torch.topk(joint, kp.decode_topk, dim=1)
        wts = vals / vals.sum(1, keepdim=True)
        u = (wts * (ids % w)).sum(1).numpy()
        v = (wts * (ids // w)).sum(1).numpy()
        decoded.append(np.stack([(u + 0.5) / scale[0] - 0.5, (v + 0.5) / scale[1] - 0.5], axis=1))
        cells.append(torch.sort(ids, dim=1).values)
    return np.stack(decoded), cells


@pytest.mark.parametrize("radius, n_last, topk", [(3, 2, 5), (2, 3, 10), (4, 0, 7)])
def test_crw_variant_matches_dense_reference(radius, n_last, topk):
    gen = torch.Generator().manual_seed(radius * 10 + n_last)
    t_all, c, h, w = 7, 12, 10, 11
    base = torch.randn(c, h, w, generator=gen)
    frames = torch.stack([torch.roll(base, shifts=(t // 2, t), dims=(1, 2)) + 0.6 * torch.randn(c, h, w, generator=gen)
                          for t in range(t_all)])
    native = (88, 60)
    points = np.array([[10.0, 12.0], [40.5, 30.0], [80.0, 55.0], [0.0, 0.0]])
    cfg = PropagationConfig(temperature=0.07, topk=topk, n_last_frames=n_last, radius=radius, window="disk",
                            window_first=False, screen="off", device="cpu")
    kp = KeypointConfig(sigma=0.5, decode_topk=3)
    expected, expected_cells = crw_dense_reference(frames, points, native, cfg, kp)

    tracker = KeypointTracker(cfg, kp, native, device="cpu")
    tracker.start(frames[0], points)
    for t in range(1, t_all):
        xy, _ = tracker.step(frames[t])
        joint = tracker.labels[1:].reshape(len(points), -1).double()
        cells = torch.sort(torch.topk(joint, 3, dim=1).indices, dim=1).values
        assert torch.equal(cells, expected_cells[t - 1]), f"frame {t}: different top-3 cells"
        np.testing.assert_allclose(xy, expected[t - 1], atol=1e-4, err_msg=f"frame {t}")


# ------------------------------------------------------------------------------------------------ drawing, the job


def test_draw_points_marks_points_and_skips_lost_ones():
    image = np.zeros((60, 80, 3), np.uint8)
    xy = np.array([[20.0, 30.0], [60.0, 30.0], [np.nan, np.nan]])
    out = draw_points(image, xy, ["a", "b", "c"], [(0, 1), (1, 2)], np.array([1.0, 0.05, 0.0]))
    assert out.shape == image.shape and image.sum() == 0  # input untouched
    assert out[30, 20].any() and out[30, 40].any()  # point a, and the edge a-b through the middle


def _moving_clip(folder, frames=6, size=(96, 64), step=(2, 1)):
    """A textured square translating by ``step`` pixels per frame over a static textured background."""
    rng = np.random.default_rng(0)
    background = np.full((size[1], size[0], 3), 90, np.uint8) + rng.integers(0, 20, (size[1], size[0], 3), dtype=np.uint8)
    blocks = rng.integers(0, 255, (3, 3, 3), dtype=np.uint8)  # 3x3 blocks of 8 px, each its own colour
    patch = np.kron(blocks, np.ones((8, 8, 1), np.uint8))
    folder.mkdir()
    for t in range(frames):
        image = background.copy()
        x0, y0 = 20 + step[0] * t, 16 + step[1] * t
        image[y0:y0 + 24, x0:x0 + 24] = patch
        Image.fromarray(image).save(folder / f"{t:05d}.png")
    return folder


def test_run_points_writes_json_overlay_and_mark(tmp_path):
    clip = _moving_clip(tmp_path / "clip")
    points = tmp_path / "points.json"
    points.write_text(json.dumps({"points": [{"name": "tl", "x": 24, "y": 20}, {"name": "c", "x": 32, "y": 28}],
                                  "edges": [["tl", "c"]]}))
    config = load_config("jhmdb_baseline", ["resize.size=[96,64]"])
    summary = run_points(clip, points, tmp_path / "out", config, progress=False)
    assert summary["frames"] == 6 and summary["points"] == 2
    out = tmp_path / "out"
    assert is_complete(out) and (out / "overlay.mp4").stat().st_size > 0
    data = json.loads((out / "points.json").read_text())
    assert data["names"] == ["tl", "c"] and data["edges"] == [["tl", "c"]]
    assert [f["name"] for f in data["frames"]] == [f"{t:05d}" for t in range(6)]
    assert data["frames"][0]["points"]["tl"] == {"x": 24.0, "y": 20.0, "confidence": 1.0}
    last = data["frames"][-1]["points"]["c"]
    assert set(last) == {"x", "y", "confidence"} and 0 < last["confidence"] <= 1
    # the square moved by (10, 5): the centre point follows it to within a cell
    assert abs(last["x"] - 42) <= 8 and abs(last["y"] - 33) <= 8

    with pytest.raises(PropagateError, match="already holds results"):
        run_points(clip, points, out, config, progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"points": [{"name": "x", "x": 500, "y": 1}]}))
    with pytest.raises(PropagateError, match="outside the first frame"):
        run_points(clip, bad, tmp_path / "out2", config, progress=False)
    assert not (tmp_path / "out2").exists()  # nothing written for bad input


def test_run_points_on_a_video_file_without_render(tmp_path):
    import imageio.v2 as imageio

    clip = _moving_clip(tmp_path / "clip", frames=4)
    video = tmp_path / "clip.mp4"
    with imageio.get_writer(str(video), fps=10, codec="libx264", macro_block_size=1, ffmpeg_log_level="error") as writer:
        for file in sorted(clip.iterdir()):
            writer.append_data(np.array(Image.open(file)))
    points = tmp_path / "points.csv"
    points.write_text("name,x,y\ncentre,32,28\n")
    config = load_config("jhmdb_baseline", ["resize.size=[96,64]"])
    summary = run_points(video, points, tmp_path / "out", config, extractor=build_extractor("baseline"),
                         render=False, progress=False)
    assert summary["frames"] == 4 and not (tmp_path / "out" / "overlay.mp4").exists()
