"""`mvq.evaluate`: the evaluation's public names, kept importable from here (the code lives in
:mod:`mvq.evaluation`)."""

from mvq.evaluation import (
    METRICS,
    SAMPLE_METRICS,
    EvalSettings,
    evaluate_checkpoint,
    evaluate_samples,
    format_comparison,
    format_table,
    load_result,
    write_reports,
)

__all__ = [
    "METRICS",
    "SAMPLE_METRICS",
    "EvalSettings",
    "evaluate_checkpoint",
    "evaluate_samples",
    "format_comparison",
    "format_table",
    "load_result",
    "write_reports",
]
