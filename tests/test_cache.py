"""Feature cache: round trips (fp16 copies, no extraction on reuse), resumable extraction, refusal of mismatches."""
from __future__ import annotations

import json
from typing import Sequence

import numpy as np
import pytest
import torch
from PIL import Image

from propagate.cache import FeatureCache, extract_to_cache
from propagate.config import Config, ResizeConfig
from propagate.errors import PropagateError
from propagate.features.base import FeatureExtractor
from propagate.features.stream import iter_features
from propagate.video import open_video


class CountingExtractor(FeatureExtractor):
    """Deterministic features (a random projection of 8x8 pixel blocks) that counts the frames it extracts."""

    name = "counting"
    stride = 8

    def __init__(self, model: str = "m1", t: int = 51):
        self.model, self.t, self.calls = model, t, 0
        self.proj = torch.randn(5, 3 * 64, generator=torch.Generator().manual_seed(t))

    def settings(self) -> dict[str, object]:
        return {"features": self.name, "model": self.model, "t": self.t}

    def extract(self, images: torch.Tensor, frame_ids: Sequence[int]) -> torch.Tensor:
        self.calls += images.shape[0]
        b, _, h, w = images.shape
        blocks = torch.nn.functional.unfold(images, 8, stride=8)  # [B, 3*64, cells]
        return (self.proj @ blocks).reshape(b, 5, h // 8, w // 8) * 3.14159  # values that fp16 must round


def make_video(folder, n=5, size=(48, 32)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def config(**resize) -> Config:
    return Config(features="counting", resize=ResizeConfig(**resize) if resize else ResizeConfig(size=[48, 32]),
                  batch_frames=2)


def stream(source, extractor, cfg, cache=None):
    return iter_features(source, extractor, cfg.resize, cfg.batch_frames, cache)


def checked(folder, extractor, cfg) -> FeatureCache:
    cache = FeatureCache(folder)
    cache.check(extractor, cfg.resize)
    return cache


def test_round_trip_and_no_extraction_on_reuse(tmp_path):
    source = open_video(make_video(tmp_path / "clip"))
    cfg, ext = config(), CountingExtractor()
    direct = [f.clone() for _, f in stream(source, ext, cfg)]
    assert ext.calls == 5

    first = checked(tmp_path / "cache", ext, cfg)
    list(stream(source, ext, cfg, first))
    assert ext.calls == 10
    assert json.loads((tmp_path / "cache" / "settings.json").read_text())["extractor"]["model"] == "m1"

    reuse = CountingExtractor()
    cache = checked(tmp_path / "cache", reuse, cfg)
    cached = [f for _, f in stream(source, reuse, cfg, cache)]
    assert reuse.calls == 0
    for a, b in zip(cached, direct):
        assert a.shape == b.shape == (5, 4, 6)
        assert torch.equal(a, b.half().float())
    stored = torch.load(tmp_path / "cache" / "clip" / "00003.pt", weights_only=True)
    assert stored.dtype == torch.float16
    assert torch.equal(cache.put(source, next(iter(source)), direct[0]), direct[0].half().float())


def test_extract_to_cache_is_resumable_and_serves_each_sequence(tmp_path):
    root = tmp_path / "davis"
    videos = [make_video(root / "JPEGImages" / "480p" / "seqA", n=3),
              make_video(root / "JPEGImages" / "480p" / "seqB", n=4)]
    cfg, ext = config(), CountingExtractor()
    summary = extract_to_cache(videos, tmp_path / "cache", cfg, extractor=ext, progress=False)
    assert summary["frames"] == 7 and summary["extracted"] == 7 and ext.calls == 7
    (tmp_path / "cache" / "seqB" / "00002.pt").unlink()  # an interrupted run
    summary = extract_to_cache(videos, tmp_path / "cache", cfg, extractor=ext, progress=False)
    assert summary["frames"] == 7 and summary["extracted"] == 1 and ext.calls == 8
    # a run on one sequence reuses the dataset's cache
    reuse = CountingExtractor()
    cache = checked(tmp_path / "cache", reuse, cfg)
    list(stream(open_video(root / "JPEGImages" / "480p" / "seqA"), reuse, cfg, cache))
    assert reuse.calls == 0


@pytest.mark.parametrize(
    "other, wanted",
    [
        (lambda: (CountingExtractor(t=101), config()), "extractor.t"),
        (lambda: (CountingExtractor(model="m2"), config()), "extractor.model"),
        (lambda: (CountingExtractor(), config(size=[64, 32])), "resize.size"),
    ],
)
def test_mismatched_cache_is_refused(tmp_path, other, wanted):
    source = open_video(make_video(tmp_path / "clip", n=2))
    cfg, ext = config(), CountingExtractor()
    list(stream(source, ext, cfg, checked(tmp_path / "cache", ext, cfg)))
    ext2, cfg2 = other()
    with pytest.raises(PropagateError, match=wanted.replace(".", r"\.")) as info:
        checked(tmp_path / "cache", ext2, cfg2)
    assert "other feature settings" in str(info.value) and str(tmp_path / "cache") in str(info.value)


def test_other_video_with_same_name_is_refused(tmp_path):
    cfg, ext = config(), CountingExtractor()
    cache = checked(tmp_path / "cache", ext, cfg)
    list(stream(open_video(make_video(tmp_path / "a" / "clip", n=3)), ext, cfg, cache))
    other = open_video(make_video(tmp_path / "b" / "clip", n=4))
    with pytest.raises(PropagateError, match="another video"):
        list(stream(other, ext, cfg, checked(tmp_path / "cache", ext, cfg)))


def test_unchecked_cache_cannot_be_used_and_the_pipeline_checks_it(tmp_path):
    source = open_video(make_video(tmp_path / "clip", n=2))
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="check"):
        cache.get(source, next(iter(source)))
    # iter_features checks the cache against its extractor and config before using it
    extractor = CountingExtractor()
    assert len(list(stream(source, extractor, config(), cache))) == 2
    assert (tmp_path / "cache" / "settings.json").is_file() and extractor.calls == 2  # frames extracted
