"""The statistics of a report's comparisons, and the verdict words read from them.

Each comparison sets one metric of a row (its seeds' values) against the same metric of the row
it is compared with. The figures come from scipy.stats: Welch's t test (unequal variances) for
the p value and the 95% confidence interval of the difference of means; Benjamini-Hochberg over
all comparisons of one report for the q value; two one-sided Welch tests (TOST) against a
margin of ``MARGIN`` of the compared-with row's mean for equivalence. The verdict:

- "ahead" / "behind" (in the metric's better direction) where q < ``ALPHA``;
- otherwise "equivalent" where the TOST passes (its p, BH-adjusted over the report the same way,
  below ``ALPHA``): the 90% interval of the difference lies inside ± the margin;
- otherwise "unresolved": the seeds do not tell; "unresolved (n=1)" where a side has one seed
  (no test), "unresolved (no spread)" where neither side varies.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass

from mvq.evaluation.metrics_table import BY_KEY
from mvq.runtime.extras import missing

ALPHA = 0.05  # the false discovery rate of a report's ahead / behind verdicts
MARGIN = 0.05  # equivalence: the difference within ± 5% of the compared-with row's mean
RULE = (f"Verdicts: Welch's t test of each metric's seed values (95% CI of the difference); "
        f"ahead / behind where its p, Benjamini-Hochberg adjusted over this report's "
        f"comparisons (q), is below {ALPHA:g}; equivalent where two one-sided Welch tests "
        f"(TOST, BH-adjusted the same way) put the difference within ±{MARGIN:.0%} of the "
        f"compared-with row's mean; unresolved otherwise (n=1: a side with one seed, no test).")


@dataclass
class Comparison:
    """One metric of row ``a`` against the same metric of row ``b`` (``a`` minus ``b``)."""

    metric: str
    a: list[float]
    b: list[float]
    ci95: tuple[float, float] | None = None
    p: float | None = None
    q: float | None = None
    tost_p: float | None = None
    tost_q: float | None = None
    verdict: str = "unresolved"

    @property
    def diff(self) -> float:
        return statistics.fmean(self.a) - statistics.fmean(self.b)

    @property
    def change(self) -> float:
        """The difference relative to ``b``'s mean."""
        return self.diff / abs(statistics.fmean(self.b))

    @property
    def testable(self) -> bool:
        return len(self.a) > 1 and len(self.b) > 1

    def to_json(self) -> dict:
        return {"metric": self.metric, "n": [len(self.a), len(self.b)],
                "mean": [statistics.fmean(self.a), statistics.fmean(self.b)],
                "sd": [_sd(self.a), _sd(self.b)], "diff": self.diff, "change": self.change,
                "ci95": list(self.ci95) if self.ci95 else None, "p": self.p, "q": self.q,
                "tost_p": self.tost_p, "tost_q": self.tost_q, "margin": MARGIN,
                "verdict": self.verdict}


def _sd(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _scipy_stats():
    try:
        from scipy import stats  # an optional dependency, as the metrics' are
    except ImportError:
        raise missing("scipy") from None
    return stats


def welch(c: Comparison) -> None:
    """Fill ``c``'s 95% CI, Welch p and TOST p (left None where a side has one value, or where
    neither side varies and the test is undefined)."""
    stats = _scipy_stats()
    if not c.testable or (_sd(c.a) == 0 and _sd(c.b) == 0):
        return
    with warnings.catch_warnings():  # near-constant samples: scipy warns, the figures stand
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_ind(c.a, c.b, equal_var=False)
        ci = test.confidence_interval(0.95)
        m = MARGIN * abs(statistics.fmean(c.b))
        above = stats.ttest_ind(c.a, [x - m for x in c.b], equal_var=False, alternative="greater")
        below = stats.ttest_ind(c.a, [x + m for x in c.b], equal_var=False, alternative="less")
    c.p = _finite(test.pvalue)
    c.ci95 = (float(ci.low), float(ci.high)) if c.p is not None else None
    tost = max(float(above.pvalue), float(below.pvalue))
    c.tost_p = tost if math.isfinite(tost) else None


def adjust(found: list[Comparison]) -> None:
    """Welch-test every comparison of one report, BH-adjust their p and TOST p values over
    the report, and write each verdict."""
    stats = _scipy_stats()
    for c in found:
        welch(c)
    for p_of, q_to in (("p", "q"), ("tost_p", "tost_q")):
        tested = [c for c in found if getattr(c, p_of) is not None]
        if tested:
            qs = stats.false_discovery_control([getattr(c, p_of) for c in tested], method="bh")
            for c, q in zip(tested, qs):
                setattr(c, q_to, float(q))
    for c in found:
        c.verdict = verdict(c)


def verdict(c: Comparison) -> str:
    """The verdict word of one adjusted comparison (see the module's doc)."""
    if not c.testable:
        return "unresolved (n=1)"
    if c.p is None:
        return "unresolved (no spread)"
    if c.q is not None and c.q < ALPHA:
        better = BY_KEY[c.metric].better if c.metric in BY_KEY else ""
        if not better:
            return "higher" if c.diff > 0 else "lower"
        return "ahead" if (c.diff < 0) == (better == "lower") else "behind"
    if c.tost_q is not None and c.tost_q < ALPHA:
        return "equivalent"
    return "unresolved"


def p_text(p: float | None) -> str:
    """p or q to 3 decimals; to 4 where 3 would round it onto the 0.05 threshold (q = 0.0496
    is 'ahead' / 'behind', and '0.050' would read as not)."""
    if p is None:
        return "n/a"
    if p < 0.001:
        return "<0.001"
    return f"{p:.4f}" if f"{p:.3f}" == "0.050" and p != 0.05 else f"{p:.3f}"
