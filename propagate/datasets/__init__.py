"""Datasets in their native layouts: reading, scoring and synthetic generators (DAVIS-2017, JHMDB).

Each name is imported from its module on first use: scoring DAVIS results (:func:`score_davis`) loads no torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from propagate.lazy import lazy_exports

if TYPE_CHECKING:
    from propagate.datasets.davis import DavisDataset, evaluate_davis, format_table, score_davis
    from propagate.datasets.jhmdb import evaluate_jhmdb, format_pck_table, read_split
    from propagate.datasets.synthetic_davis import make_synthetic_davis
    from propagate.datasets.synthetic_jhmdb import make_synthetic_jhmdb

_HOMES = {  # public name -> the module of this package that defines it
    "DavisDataset": "davis", "evaluate_davis": "davis", "format_table": "davis", "score_davis": "davis",
    "evaluate_jhmdb": "jhmdb", "format_pck_table": "jhmdb", "read_split": "jhmdb",
    "make_synthetic_davis": "synthetic_davis", "make_synthetic_jhmdb": "synthetic_jhmdb",
}

__all__ = [
    "DavisDataset", "evaluate_davis", "evaluate_jhmdb", "format_pck_table", "format_table", "make_synthetic_davis",
    "make_synthetic_jhmdb", "read_split", "score_davis",
]


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
