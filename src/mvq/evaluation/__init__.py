"""Evaluation of tokenizers and priors: one metric table (`metrics_table`), reconstructions
(`evaluate_checkpoint`), a prior's samples (`evaluate_samples`) and their reports."""

from mvq.evaluation.common import EvalSettings
from mvq.evaluation.metrics_table import METRICS, SAMPLE_METRICS, TABLE, Metric
from mvq.evaluation.reconstructions import evaluate_checkpoint
from mvq.evaluation.reports import format_comparison, format_table, load_result, write_reports
from mvq.evaluation.samples import evaluate_samples

__all__ = [
    "METRICS",
    "SAMPLE_METRICS",
    "TABLE",
    "EvalSettings",
    "Metric",
    "evaluate_checkpoint",
    "evaluate_samples",
    "format_comparison",
    "format_table",
    "load_result",
    "write_reports",
]
