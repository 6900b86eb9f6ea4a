"""`eval spair`: PCK on a synthetic SPair-71k set whose scores are counted by hand, resuming, and the semantic path
with the tiny SD model against a straight re-implementation of DIFT's eval_spair.py steps on the same features."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from propagate.cli import main
from propagate.config import load_config
from propagate.datasets.spair import evaluate_spair, read_pair
from propagate.datasets.synthetic_spair import EXPECTED, make_synthetic_spair
from propagate.features.dift_sd import DiftSDExtractor, DiftSDOptions
from propagate.video import to_tensor


@pytest.fixture(scope="module")
def spair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spair")
    assert make_synthetic_spair(root) == EXPECTED
    return root


def test_synthetic_spair_scores_as_counted_by_hand_and_resumes(spair, tmp_path, capsys):
    args = ["eval", "spair", "--root", spair, "--out", tmp_path / "out", "--features", "baseline"]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "BASELINE features (not DIFT)" in out
    rows = [line.split(",") for line in (tmp_path / "out" / "scores.csv").read_text().splitlines()]
    assert rows[0] == ["category", "pairs", "points", "pck@0.1_per_point", "pck@0.1_per_image"]
    assert rows[1:] == [["hall", "1", "2", "0.00", "0.00"], ["room", "2", "7", "85.71", "83.33"],
                        ["all", "3", "9", "66.67", "55.56"]]
    # the per-pair predictions re-score to the same numbers by anyone's hand
    pairs = json.loads((tmp_path / "out" / "room" / "predictions.json").read_text())["pairs"]
    for pair in pairs:
        distance = np.linalg.norm(np.array(pair["predicted"]) - np.array(pair["truth"]), axis=1)
        assert [bool(d <= 0.1 * pair["threshold"]) for d in distance] == pair["correct"]
    assert [sum(p["correct"]) for p in pairs] == [2, 4]
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["features"] == "baseline" and info["scores"]["pck_point"] == pytest.approx(100 * 6 / 9)
    before = (tmp_path / "out" / "room" / "predictions.json").stat().st_mtime_ns
    assert main([str(a) for a in args]) == 0  # resumed: every category is done
    assert capsys.readouterr().out == out
    assert (tmp_path / "out" / "room" / "predictions.json").stat().st_mtime_ns == before


def test_eval_spair_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "spair", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--features", "baseline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "SPair-71k root" in err and len(err.strip().splitlines()) == 1
    folder = tmp_path / "PairAnnotation" / "test"
    folder.mkdir(parents=True)
    (tmp_path / "JPEGImages").mkdir()
    (folder / "1:cat.json").write_text(json.dumps({"src_imname": "a.jpg"}))
    assert main(["eval", "spair", "--root", str(tmp_path), "--out", str(tmp_path / "o"), "--features", "baseline"]) == 2
    err = capsys.readouterr().err
    assert "lacks trg_imname" in err and "1:cat.json" in err


def _dift_eval_spair_steps(root: Path, features: dict[str, torch.Tensor]) -> dict[str, list[list[list[int]]]]:
    """DIFT's eval_spair.py, step by step, on given features ``[1, C, h, w]`` per image: upsample to the image,
    the source vector at the keypoint, cosine with every target pixel, np.unravel_index of the argmax."""
    predicted: dict[str, list[list[list[int]]]] = {}
    for path in sorted((root / "PairAnnotation" / "test").glob("*.json")):
        data = json.loads(path.read_text())
        src_size = data["src_imsize"][:2][::-1]
        trg_size = data["trg_imsize"][:2][::-1]
        src_ft = torch.nn.Upsample(size=src_size, mode="bilinear")(features[data["src_imname"]])
        trg_ft = torch.nn.Upsample(size=trg_size, mode="bilinear")(features[data["trg_imname"]])
        h, w = trg_ft.shape[-2:]
        points = []
        for src_point in data["src_kps"]:
            num_channel = src_ft.size(1)
            src_vec = src_ft[0, :, src_point[1], src_point[0]].view(1, num_channel)
            trg_vec = trg_ft.view(num_channel, -1).transpose(0, 1)
            src_vec = F.normalize(src_vec).transpose(0, 1)
            trg_vec = F.normalize(trg_vec)
            cos_map = torch.mm(trg_vec, src_vec).view(h, w).cpu().numpy()
            max_yx = np.unravel_index(cos_map.argmax(), cos_map.shape)
            points.append([int(max_yx[1]), int(max_yx[0])])
        predicted.setdefault(data["category"], []).append(points)
    return predicted


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_sd_semantic_path_equals_dift_eval_spair_steps(spair, tiny_sd_dir, tmp_path):
    """`eval spair` with the spair_sd preset (prompt "a photo of a {category}") on the tiny SD model predicts the
    very pixels DIFT's steps predict on features of extractors built with each category's prompt."""
    options = {"model": str(tiny_sd_dir), "ensemble_size": 2, "device": "cpu", "dtype": "fp32", "batch_size": 2}
    config = load_config("spair_sd", {**{f"extractor.{k}": v for k, v in options.items()}, "match.size": [64, 64]})
    result = evaluate_spair(spair, tmp_path / "out", config, progress=False)
    features: dict[str, torch.Tensor] = {}
    for category in ("hall", "room"):
        extractor = DiftSDExtractor(DiftSDOptions(**{**options, "t": 261, "up_ft_index": 1,
                                                     "prompt": f"a photo of a {category}"}))
        for image_path in sorted((spair / "JPEGImages" / category).iterdir()):
            image = np.asarray(Image.open(image_path).convert("RGB"))
            with torch.inference_mode():
                features[image_path.name] = extractor.extract(to_tensor(image, (64, 64))[None], [0]).float()
    expected = _dift_eval_spair_steps(spair, features)
    for category, pairs in expected.items():
        ours = json.loads((tmp_path / "out" / category / "predictions.json").read_text())["pairs"]
        assert [[[int(v) for v in p] for p in pair["predicted"]] for pair in ours] == pairs, category
    correct = total = 0
    per_pair = []
    for path in sorted((spair / "PairAnnotation" / "test").glob("*.json")):
        pair = read_pair(path)
        got = np.array(expected[pair.category][[p.name for p in map(read_pair, sorted(
            (spair / "PairAnnotation" / "test").glob(f"*:{pair.category}.json")))].index(pair.name)])
        hits = np.linalg.norm(got - pair.trg_kps, axis=1) / pair.threshold <= 0.1
        correct, total = correct + int(hits.sum()), total + len(hits)
        per_pair.append(hits.mean())
    assert result["overall"]["pck_point"] == pytest.approx(100 * correct / total)
    assert result["overall"]["pck_image"] == pytest.approx(100 * np.mean(per_pair))
