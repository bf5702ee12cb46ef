"""Decision thresholds, each with the rule it came from and how far it can be trusted.

* ``fixed``: a number given by the user.
* ``support-leave-one-out``: the highest of the K normal supports' leave-one-out scores (each support scored
  against the other K − 1).  With K < :data:`MIN_RELIABLE_K` this is the maximum of a handful of scores and
  carries a warning.
* ``held-out-percentile``: a stated percentile of the scores of held-out normal images (fewer than
  :data:`MIN_RELIABLE_HELDOUT` carry a warning).

Every prediction file records :meth:`Threshold.record`.  A NaN or infinite score never becomes a verdict:
:func:`check_scores` refuses such scores (naming the first input), and :class:`Threshold` refuses a non-finite
value and, as the last guard, a non-finite score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MIN_RELIABLE_K = 8
MIN_RELIABLE_HELDOUT = 20


class NonFiniteScoreError(ValueError):
    """A score (or threshold) that is NaN or infinite: no verdict can be drawn from it."""


def check_scores(scores, names: list[str], source: str) -> None:
    """Refuse NaN or infinite ``scores`` (one per name in ``names``), naming the first such input and ``source``
    (the model or checkpoint that produced them)."""
    values = np.asarray(scores, dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
        raise NonFiniteScoreError(
            f"{source} gave a {values[bad[0]]} score for {names[bad[0]]} ({len(bad)} of {len(values)} inputs): a "
            "non-finite score cannot become a verdict; the checkpoint's weights or the input are damaged")


@dataclass
class Threshold:
    """A threshold value (None: no verdicts) and where it came from."""

    value: float | None
    rule: str
    description: str
    details: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None

    def __post_init__(self) -> None:
        if self.value is not None and not np.isfinite(self.value):
            raise NonFiniteScoreError(f"the {self.rule} threshold is {self.value}: a threshold must be a finite number")

    def is_abnormal(self, score: float) -> bool | None:
        if self.value is None:
            return None
        _finite(score)
        return bool(score > self.value)

    def verdict(self, score: float) -> str:
        """'ABNORMAL (score > threshold 0.12)', 'normal (score ≤ threshold 0.12)' or '' without a threshold."""
        if self.value is None:
            return ""
        if _finite(score) > self.value:
            return f"ABNORMAL (score > threshold {self.value:.4g})"
        return f"normal (score ≤ threshold {self.value:.4g})"

    def record(self) -> dict[str, Any]:
        return {"value": self.value, "rule": self.rule, "description": self.description, **self.details,
                "warning": self.warning}


#: the candidate rules for the 'auto' threshold from the supports' leave-one-out scores, compared in
#: benchmarks/fewshot_thresholds.py: "loo-max" (the highest), "mad:C" (median + C·MAD, the MAD scaled by
#: 1.4826 to a normal σ) and "cut:C" (the fixed value C, for models whose scores are standardised by the
#: supports' statistics)
RULE_FAMILIES = ("loo-max", "mad", "cut")
MAD_TO_SIGMA = 1.4826


def rule_threshold(rule: str, loo_scores: list[float] | np.ndarray) -> float:
    """The threshold ``rule`` (see :data:`RULE_FAMILIES`) gives for K ≥ 2 leave-one-out support scores."""
    scores = np.asarray(loo_scores, dtype=float)
    if len(scores) < 2:
        raise ValueError("a threshold rule needs at least 2 leave-one-out support scores")
    family, _, parameter = rule.partition(":")
    if family == "loo-max" and not parameter:
        return float(scores.max())
    if family in ("mad", "cut") and parameter:
        c = float(parameter)
        if family == "cut":
            return c
        median = float(np.median(scores))
        return median + c * MAD_TO_SIGMA * float(np.median(np.abs(scores - median)))
    raise ValueError(f"unknown threshold rule {rule!r}; use loo-max, mad:C or cut:C")


def _finite(score: float) -> float:
    if not np.isfinite(score):
        raise NonFiniteScoreError(f"a score of {score} cannot become a verdict")
    return float(score)


def no_threshold() -> Threshold:
    return Threshold(None, "none", "no threshold: scores only, no verdicts")


def fixed_threshold(value: float) -> Threshold:
    return Threshold(float(value), "fixed", f"the fixed threshold {value:g} given with --threshold")


def support_threshold(loo_scores: list[float]) -> Threshold:
    """The highest leave-one-out score of the K supports; with K < 2 there is none (no verdicts, a warning)."""
    k = len(loo_scores)
    if k < 2:
        return Threshold(None, "none", "no threshold: the 'auto' threshold needs at least 2 supports",
                         warning="no 'auto' threshold from fewer than 2 supports, so no verdicts; give more supports, "
                                 "--threshold NUMBER or --threshold-from a folder of held-out normal images")
    warning = None
    if k < MIN_RELIABLE_K:
        warning = (f"the 'auto' threshold is the highest of only K={k} leave-one-out support scores, so it is "
                   f"uncertain (expect false alarms or misses); use K ≥ {MIN_RELIABLE_K} supports or --threshold-from "
                   "a folder of held-out normal images")
    return Threshold(float(max(loo_scores)), "support-leave-one-out",
                     f"the highest of the leave-one-out scores of the K={k} normal supports (each support scored "
                     f"against the other {k - 1})", {"k": k, "support_scores": [float(s) for s in loo_scores]},
                     warning)


def heldout_threshold(scores: np.ndarray, percentile: float, source: str) -> Threshold:
    """The ``percentile``-th percentile (linear interpolation) of held-out normal scores."""
    n = len(scores)
    if n == 0:
        raise ValueError(f"--threshold-from {source}: no held-out normal images were scored")
    warning = None
    if n < MIN_RELIABLE_HELDOUT:
        warning = (f"the threshold is the {percentile:g}th percentile of only {n} held-out normal scores, so it is "
                   f"uncertain; use at least {MIN_RELIABLE_HELDOUT} held-out normal images")
    return Threshold(float(np.percentile(scores, percentile)), "held-out-percentile",
                     f"the {percentile:g}th percentile (linear interpolation) of the scores of {n} held-out normal "
                     f"images in {source}",
                     {"percentile": percentile, "source": source, "n_heldout": n,
                      "heldout_scores": [float(s) for s in scores]}, warning)
