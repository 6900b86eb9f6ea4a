"""Datasets in their native layouts: reading, scoring and synthetic generators (DAVIS-2017, JHMDB)."""
from propagate.datasets.davis import DavisDataset, evaluate_davis, format_table, score_davis
from propagate.datasets.jhmdb import evaluate_jhmdb, format_pck_table, read_split
from propagate.datasets.synthetic_davis import make_synthetic_davis
from propagate.datasets.synthetic_jhmdb import make_synthetic_jhmdb

__all__ = [
    "DavisDataset", "evaluate_davis", "evaluate_jhmdb", "format_pck_table", "format_table", "make_synthetic_davis",
    "make_synthetic_jhmdb", "read_split", "score_davis",
]
