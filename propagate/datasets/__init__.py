"""Datasets in their native layouts: reading, scoring and synthetic generators (DAVIS-2017 for now)."""
from propagate.datasets.davis import DavisDataset, evaluate_davis, format_table, score_davis
from propagate.datasets.synthetic_davis import make_synthetic_davis

__all__ = ["DavisDataset", "evaluate_davis", "format_table", "make_synthetic_davis", "score_davis"]
