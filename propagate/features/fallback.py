"""DIFT if its weights can be had, else the weight-free baseline, said so: what the demo and the app run when the
user chose no features."""
from __future__ import annotations

from propagate.config import Config, load_config
from propagate.errors import PropagateError
from propagate.features import build_extractor
from propagate.features.base import FeatureExtractor

BASELINE_LABEL = "BASELINE features (DIFT weights unavailable)"


def dift_or_baseline(config: Config, doing: str = "running") -> tuple[Config, FeatureExtractor, str | None]:
    """``config``'s extractor; where DIFT weights cannot be had, one line says so and the weight-free baseline preset
    (with the same resize; ``davis_baseline_interactive`` for an interactive config, one that keeps candidates) is
    used instead. Returns the config in use, the extractor and, for the baseline, the label that says so on videos
    and pages (None for DIFT)."""
    try:
        return config, build_extractor(config.features, config.extractor), None
    except PropagateError as exc:
        print(f"DIFT weights unavailable ({exc}); {doing} the weight-free BASELINE features instead (not DIFT)",
              flush=True)
        preset = "davis_baseline_interactive" if config.propagation.reuse else "davis_baseline"  # the app's kind
        config = load_config(preset, {"resize": config.to_dict()["resize"]})
        extractor = build_extractor(config.features, config.extractor)
        extractor.stands_in = True  # said on every overlay (overlay_label)
        return config, extractor, BASELINE_LABEL


def overlay_label(extractor: FeatureExtractor) -> str:
    """The caption of result overlays, the same in ``run``, ``demo`` and the app's export: the extractor's
    description, saying so where the baseline stands in for DIFT (:func:`dift_or_baseline`)."""
    text = extractor.describe()
    return f"{text}; {BASELINE_LABEL}" if extractor.stands_in else text
