"""DAVIS dataset reading, end-to-end scoring of synthetic datasets, bad-result errors, and the eval protocol."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from propagate.config import Config
from propagate.datasets.davis import DavisDataset, evaluate_davis, format_table, score_davis
from propagate.datasets.synthetic_davis import make_synthetic_davis
from propagate.errors import PropagateError
from propagate.features.base import FeatureExtractor
from propagate.labels import VOID, read_mask, write_mask
from propagate.results import STAGING_MARK, ResultsFolder

NUM_FRAMES = 12  # 10 scored frames per sequence: decay bins (0, 2), (2, 5), (5, 7), (7, 9)


@pytest.fixture(scope="module")
def davis_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("davis")
    make_synthetic_davis(root, num_sequences=3, num_frames=NUM_FRAMES, size=(160, 96), seed=0)
    return root


def write_gt_as_results(root: Path, out: Path) -> None:
    """Copy every annotation as a result, void mapped to background (results hold object indices only)."""
    dataset = DavisDataset(root)
    for seq in dataset.sequences:
        gt, names = dataset.read_annotations(seq)
        for mask, name in zip(gt, names):
            write_mask(out / seq / f"{name}.png", np.where(mask == VOID, 0, mask))


@pytest.fixture()
def gt_results(davis_root, tmp_path) -> Path:
    out = tmp_path / "results"
    write_gt_as_results(davis_root, out)
    return out


# ---------------------------------------------------------------- the synthetic generator


def test_synthetic_dataset_has_what_the_tests_rely_on(davis_root):
    dataset = DavisDataset(davis_root)
    assert dataset.sequences == ["synth-00", "synth-01", "synth-02"]
    total = 0
    for seq in dataset.sequences:
        gt, names = dataset.read_annotations(seq)
        assert gt.shape == (NUM_FRAMES, 96, 160)
        assert names == [f"{t:05d}" for t in range(NUM_FRAMES)]
        assert len(list(dataset.image_dir(seq).glob("*.jpg"))) == NUM_FRAMES
        objects = [v for v in np.unique(gt[0]) if v not in (0, VOID)]
        assert objects == list(range(1, len(objects) + 1)) and len(objects) >= 2  # all visible in frame 0
        total += len(objects)
        assert all((m == VOID).any() for m in gt)  # a void region in every annotation
        area1 = (gt == 1).sum(axis=(1, 2))
        assert area1.min() < 0.9 * area1.max()  # object 1 is partly hidden behind object 2 at some point
        area2 = (gt == 2).sum(axis=(1, 2))
        assert area2[0] > 0 and area2[-2] == 0 and area2[-1] == 0  # object 2 leaves the frame
    assert total >= 5


def test_synthetic_dataset_is_reproducible(tmp_path):
    make_synthetic_davis(tmp_path / "a", num_sequences=1, num_frames=5, seed=3)
    make_synthetic_davis(tmp_path / "b", num_sequences=1, num_frames=5, seed=3)
    for sub in ("Annotations/480p/synth-00/00004.png", "JPEGImages/480p/synth-00/00004.jpg"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()


# ---------------------------------------------------------------- scoring end to end


def test_ground_truth_as_results_scores_one_everywhere(davis_root, gt_results):
    scores = score_davis(davis_root, gt_results, "val", progress=False)
    assert scores["global"] == {"J&F-Mean": 1.0, "J-Mean": 1.0, "J-Recall": 1.0, "J-Decay": 0.0,
                                "F-Mean": 1.0, "F-Recall": 1.0, "F-Decay": 0.0}
    assert len(scores["per_object"]) == 9  # objects 2 + 3 + 4
    assert (gt_results / "global_results-val.csv").read_text() == (
        "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n"
        "1.000,1.000,1.000,0.000,1.000,1.000,0.000\n")
    rows = (gt_results / "per-sequence_results-val.csv").read_text().splitlines()
    assert rows[0] == "Sequence,J-Mean,F-Mean"
    assert rows[1:4] == ["synth-00_1,1.000,1.000", "synth-00_2,1.000,1.000", "synth-01_1,1.000,1.000"]
    assert len(rows) == 10
    text = format_table(scores)
    assert "Global results for val" in text and "J&F-Mean" in text and "synth-02_4" in text


def test_one_deleted_object_mask_gives_the_known_numbers(davis_root, gt_results):
    # Object 1 of synth-00 erased from frame 1, the first scored frame: J = F = 0 there, 1 elsewhere.
    path = gt_results / "synth-00" / "00001.png"
    mask = read_mask(path)
    mask[mask == 1] = 0
    write_mask(path, mask)
    scores = score_davis(davis_root, gt_results, "val", progress=False)
    first = scores["per_object"][0]
    assert first["Sequence"] == "synth-00_1"
    for m in "JF":
        assert first[f"{m}-Mean"] == pytest.approx(0.9)
        assert first[f"{m}-Recall"] == pytest.approx(0.9)
        assert first[f"{m}-Decay"] == pytest.approx(2 / 3 - 1.0)  # first bin (frames 0..2) 2/3, last bin 1
    for other in scores["per_object"][1:]:
        assert other["J-Mean"] == 1.0 and other["F-Mean"] == 1.0
    g = scores["global"]
    assert g["J-Mean"] == pytest.approx(8.9 / 9)
    assert g["F-Recall"] == pytest.approx(8.9 / 9)
    assert g["J-Decay"] == pytest.approx(-1 / 27)
    assert g["J&F-Mean"] == pytest.approx(8.9 / 9)
    assert (gt_results / "global_results-val.csv").read_text().splitlines()[1] == \
        "0.989,0.989,0.989,-0.037,0.989,0.989,-0.037"
    assert (gt_results / "per-sequence_results-val.csv").read_text().splitlines()[1] == "synth-00_1,0.900,0.900"


def test_frames_outside_the_scored_range_are_not_read(davis_root, gt_results):
    for seq in ("synth-00", "synth-01", "synth-02"):
        (gt_results / seq / "00000.png").unlink()
        (gt_results / seq / f"{NUM_FRAMES - 1:05d}.png").unlink()
    assert score_davis(davis_root, gt_results, progress=False)["global"]["J&F-Mean"] == 1.0


def test_a_subset_of_sequences(davis_root, gt_results):
    scores = score_davis(davis_root, gt_results, sequences="synth-01", progress=False)
    assert [o["Sequence"] for o in scores["per_object"]] == ["synth-01_1", "synth-01_2", "synth-01_3"]


def test_stale_csvs_are_never_read_replaced_when_whole_and_kept_on_failure(davis_root, gt_results):
    for name in ("global_results-val.csv", "per-sequence_results-val.csv"):
        (gt_results / name).write_text("stale\n")
    score_davis(davis_root, gt_results, progress=False)
    good = (gt_results / "global_results-val.csv").read_text()
    assert good.startswith("J&F-Mean")
    (gt_results / "synth-02" / "00005.png").unlink()
    with pytest.raises(PropagateError):
        score_davis(davis_root, gt_results, progress=False)
    assert (gt_results / "global_results-val.csv").read_text() == good  # a failed scoring touches nothing


# ---------------------------------------------------------------- bad results: errors name sequence and frame


def _expect_error(root, results, *words):
    with pytest.raises(PropagateError) as info:
        score_davis(root, results, progress=False)
    for word in words:
        assert word in str(info.value)
    return str(info.value)


def test_missing_frame(davis_root, gt_results):
    (gt_results / "synth-01" / "00004.png").unlink()
    _expect_error(davis_root, gt_results, "synth-01", "00004", "missing")


def test_missing_sequence_folder(davis_root, gt_results):
    shutil.rmtree(gt_results / "synth-02")
    _expect_error(davis_root, gt_results, "synth-02")


def test_wrong_size(davis_root, gt_results):
    write_mask(gt_results / "synth-00" / "00003.png", np.zeros((48, 80), dtype=np.uint8))
    _expect_error(davis_root, gt_results, "synth-00", "00003", "80x48", "160x96")


def test_rgb_result_png(davis_root, gt_results):
    Image.fromarray(np.zeros((96, 160, 3), dtype=np.uint8)).save(gt_results / "synth-00" / "00002.png")
    _expect_error(davis_root, gt_results, "synth-00", "00002", "RGB")


def test_unknown_object_index(davis_root, gt_results):
    mask = np.zeros((96, 160), dtype=np.uint8)
    mask[10, 10] = 3  # synth-00 has objects 1 and 2 only
    write_mask(gt_results / "synth-00" / "00006.png", mask)
    _expect_error(davis_root, gt_results, "synth-00", "00006", "index 3", "2 object")


def test_void_in_results_is_refused(davis_root, gt_results):
    mask = read_mask(gt_results / "synth-01" / "00007.png")
    mask[0, 0] = VOID
    write_mask(gt_results / "synth-01" / "00007.png", mask)
    _expect_error(davis_root, gt_results, "synth-01", "00007", "255")


def test_dataset_errors(davis_root, tmp_path):
    with pytest.raises(PropagateError, match="does not exist"):
        DavisDataset(tmp_path / "nowhere")
    with pytest.raises(PropagateError, match="train.txt"):
        DavisDataset(davis_root, split="train")
    with pytest.raises(PropagateError, match="bogus"):
        DavisDataset(davis_root).select("synth-00,bogus")
    with pytest.raises(PropagateError, match="results folder"):
        score_davis(davis_root, tmp_path / "no-results", progress=False)


# ---------------------------------------------------------------- the eval protocol (resume, run_info)


class StubExtractor(FeatureExtractor):
    name = "stub"
    stride = 8

    def __init__(self, tag: str = "a"):
        self.tag = tag

    def extract(self, images, frame_ids):
        raise AssertionError("the oracle pipeline never extracts")

    def settings(self):
        return {"tag": self.tag}

    def describe(self):
        return f"stub ({self.tag})"


@pytest.fixture()
def oracle_pipeline(monkeypatch, davis_root):
    """A stand-in for the pipeline's stream (as the run job calls it) that yields the ground truth (void as
    background)."""
    from propagate.kinds import FrameResult
    from propagate.video import open_video

    calls: list[str] = []

    def iter_results(video, kind, first, config, *args, **kwargs):
        source = open_video(video) if isinstance(video, (str, Path)) else video
        seq = Path(source.path).name
        calls.append(seq)
        for frame in source:
            mask = read_mask(davis_root / "Annotations" / "480p" / seq / f"{frame.name}.png")
            yield frame, FrameResult(frame.index, frame.name, frame.index == 0, mask=np.where(mask == VOID, 0, mask))

    monkeypatch.setattr("propagate.runs.iter_results", iter_results)
    return calls


def test_evaluate_writes_results_run_info_and_scores(davis_root, tmp_path, oracle_pipeline):
    out = tmp_path / "eval"
    scores = evaluate_davis(davis_root, out, Config(), extractor=StubExtractor(), progress=False,
                            preset="davis_sd", command="propagate eval davis")
    assert scores["global"]["J&F-Mean"] == 1.0
    assert oracle_pipeline == ["synth-00", "synth-01", "synth-02"]
    for seq in oracle_pipeline:
        assert ResultsFolder.is_complete(out / seq)
        assert len(list((out / seq).glob("*.png"))) == NUM_FRAMES
    info = json.loads((out / "run_info.json").read_text())
    assert info["preset"] == "davis_sd"
    assert info["command"] == "propagate eval davis"
    assert info["extractor"] == {"tag": "a"}
    assert info["config"]["propagation"]["topk"] == 15
    assert "torch" in info["versions"] and "numpy" in info["versions"]
    assert info["scores"]["J&F-Mean"] == 1.0
    assert (out / "global_results-val.csv").is_file()


def test_evaluate_resumes_per_sequence(davis_root, tmp_path, oracle_pipeline):
    out = tmp_path / "eval"
    evaluate_davis(davis_root, out, Config(), sequences=["synth-00", "synth-01"], extractor=StubExtractor(),
                   progress=False)
    # A sequence interrupted by a kill: its staging folder (ours, marked, its process gone) beside the results.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    staging = out / ".synth-02.propagate-0000"
    staging.mkdir()
    (staging / "00000.png").write_bytes(b"partial")
    (staging / STAGING_MARK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    oracle_pipeline.clear()
    scores = evaluate_davis(davis_root, out, Config(), extractor=StubExtractor(), progress=False)
    assert oracle_pipeline == ["synth-02"]  # finished ones skipped, the unfinished one redone
    assert not staging.exists() and len(scores["per_object"]) == 9


def test_evaluate_refuses_a_sequence_folder_it_did_not_write_and_empties_nothing(davis_root, tmp_path,
                                                                              oracle_pipeline):
    out = tmp_path / "eval"
    (out / "synth-01").mkdir(parents=True)
    (out / "synth-01" / "notes.txt").write_text("mine")
    with pytest.raises(PropagateError, match="synth-01 holds files propagate did not write"):
        evaluate_davis(davis_root, out, Config(), extractor=StubExtractor(), progress=False)
    assert (out / "synth-01" / "notes.txt").read_text() == "mine" and oracle_pipeline == []


def test_evaluate_refuses_an_output_inside_the_dataset(davis_root, oracle_pipeline):
    with pytest.raises(PropagateError, match="lies inside the input"):
        evaluate_davis(davis_root, davis_root / "Annotations" / "480p", Config(), extractor=StubExtractor(),
                       progress=False)
    assert oracle_pipeline == []


def test_evaluate_refuses_to_mix_settings(davis_root, tmp_path, oracle_pipeline):
    out = tmp_path / "eval"
    evaluate_davis(davis_root, out, Config(), sequences="synth-00", extractor=StubExtractor("a"), progress=False)
    with pytest.raises(PropagateError, match="other extractor settings"):
        evaluate_davis(davis_root, out, Config(), extractor=StubExtractor("b"), progress=False)
    other = Config()
    other.propagation.topk = 5
    with pytest.raises(PropagateError, match="other settings"):
        evaluate_davis(davis_root, out, other, extractor=StubExtractor("a"), progress=False)
    faster = Config()
    faster.batch_frames = 1  # speed-only options may change
    evaluate_davis(davis_root, out, faster, sequences="synth-00", extractor=StubExtractor("a"), progress=False)


def test_evaluate_end_to_end_with_the_real_pipeline(tmp_path):
    """Baseline (weight-free) features through the lead's pipeline on a small synthetic dataset."""
    from propagate.config import load_config

    root = tmp_path / "davis"
    make_synthetic_davis(root, num_sequences=2, num_frames=6, size=(160, 96), seed=1)
    config = load_config("davis_baseline", {"resize.short_side": 96})
    out = tmp_path / "eval"
    scores = evaluate_davis(root, out, config, progress=False)
    for seq in ("synth-00", "synth-01"):
        assert sorted(p.name for p in (out / seq).glob("*.png")) == [f"{t:05d}.png" for t in range(6)]
        np.testing.assert_array_equal(read_mask(out / seq / "00000.png"),
                                      read_mask(root / "Annotations" / "480p" / seq / "00000.png"))
    again = score_davis(root, out, progress=False)
    assert again["global"] == scores["global"]
    assert all(0.0 <= v <= 1.0 for k, v in scores["global"].items() if "Decay" not in k)
    info = json.loads((out / "run_info.json").read_text())
    assert info["features"] == "baseline" and info["scores"] == scores["global"]


def test_evaluate_with_two_keyframes_writes_them_and_records_them(tmp_path):
    from propagate.config import load_config

    root = tmp_path / "davis"
    make_synthetic_davis(root, num_sequences=1, num_frames=6, size=(160, 96), seed=2)
    config = load_config("davis_baseline", {"resize.short_side": 96})
    scores = evaluate_davis(root, tmp_path / "eval", config, progress=False, keyframes=(0, 3))
    truth = read_mask(root / "Annotations" / "480p" / "synth-00" / "00003.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "eval" / "synth-00" / "00003.png"),
                                  np.where(truth == VOID, 0, truth))
    info = json.loads((tmp_path / "eval" / "run_info.json").read_text())
    assert info["keyframes"] == [0, 3] and info["settings"]["keyframes"] == [0, 3]
    assert 0 <= scores["global"]["J&F-Mean"] <= 1
    with pytest.raises(PropagateError, match="keyframe\\(s\\) 9 do not exist"):
        evaluate_davis(root, tmp_path / "eval2", config, progress=False, keyframes=(0, 9))


def test_per_sequence_override_is_applied_recorded_and_checked_on_resume(tmp_path):
    """A sequence named ``shooting`` runs with its override (DIFT caps its context: min(n_last_frames, cap)); the
    others with the run's config; run_info.json records its effective config; resuming with other overrides is
    refused."""
    from propagate.config import load_config

    root = tmp_path / "davis"
    make_synthetic_davis(root, num_sequences=2, num_frames=6, size=(160, 96), seed=1)
    for top in ("JPEGImages", "Annotations"):
        (root / top / "480p" / "synth-01").rename(root / top / "480p" / "shooting")
    (root / "ImageSets" / "2017" / "val.txt").write_text("synth-00\nshooting\n")
    base = {"resize.short_side": 96, "propagation.n_last_frames": 3}
    config = load_config("davis_baseline",
                         {**base, "overrides": {"shooting": {"propagation.n_last_frames": {"at_most": 1}}}})
    out = tmp_path / "eval"
    evaluate_davis(root, out, config, progress=False)
    info = json.loads((out / "run_info.json").read_text())
    assert info["config"]["overrides"] == {"shooting": {"propagation.n_last_frames": {"at_most": 1}}}
    assert info["sequence_configs"]["shooting"]["propagation"]["n_last_frames"] == 1
    assert list(info["sequence_configs"]) == ["shooting"]
    assert json.loads((out / "shooting" / "run_info.json").read_text())["config"]["propagation"]["n_last_frames"] == 1
    assert json.loads((out / "synth-00" / "run_info.json").read_text())["config"]["propagation"]["n_last_frames"] == 3
    # the masks are those of a run with the capped context
    plain = tmp_path / "plain"
    evaluate_davis(root, plain, load_config("davis_baseline", {**base, "propagation.n_last_frames": 1}),
                   sequences=["shooting"], progress=False)
    for png in sorted((plain / "shooting").glob("*.png")):
        np.testing.assert_array_equal(read_mask(png), read_mask(out / "shooting" / png.name))
    with pytest.raises(PropagateError, match="other settings"):
        evaluate_davis(root, out, load_config("davis_baseline", base), progress=False)
