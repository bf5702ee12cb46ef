"""Decision thresholds, each with the rule it came from and how far it can be trusted.

* ``fixed``: a number given by the user.
* ``support-leave-one-out`` (the ``auto`` threshold): a rule (:data:`AUTO_RULE`) applied to the K normal
  supports' leave-one-out scores (each support scored against the other K − 1).  The rule was chosen by
  measurement (``benchmarks/fewshot_thresholds.py``; the default scorer's own by
  ``benchmarks/fewshot_dev_auto_threshold.py``; docs/METHODS.md); with K < :data:`MIN_RELIABLE_K` the
  threshold carries a warning saying what the rule cost on the development tasks at that K, and a support
  whose leave-one-out score stands far above the others' is named.
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


#: the 'auto' rule, chosen by benchmarks/fewshot_thresholds.py (lowest balanced error over three development
#: tasks, K = 2, 4, 8, 5 draws): for models whose scores are standardised by the supports' statistics
#: (D²4FAD-NN, measured on it), and for the others (measured on PatchCore-K)
AUTO_RULE = {"standardised": "cut:2", "raw": "loo-max"}
#: what each 'auto' rule cost there, by K: (false-normal rate, false-abnormal rate) — the warnings quote it
AUTO_RULE_COST = {"cut:2": {2: (0.271, 0.652), 4: (0.337, 0.594), 8: (0.216, 0.666)},
                  "loo-max": {2: (0.646, 0.327), 4: (0.827, 0.153), 8: (0.870, 0.103)}}
#: the scorer each rule's cost was measured with (other scorers that use the rule have not been measured)
AUTO_RULE_MEASURED_WITH = {"cut:2": "D²4FAD-NN", "loo-max": "PatchCore-K"}
#: scorers whose own 'auto' rule was measured: method → (rule, its cost by K as in ``AUTO_RULE_COST``, what it was
#: measured with); the adapted student's by benchmarks/fewshot_dev_auto_threshold.py on the development pool
SCORER_AUTO_RULE = {"adapted_student": ("loo-max", {2: (0.682, 0.190), 4: (0.742, 0.210), 8: (0.690, 0.194)},
                                        "the default adapted student on the development pool")}


def auto_rule(standardised: bool, method: str | None = None) -> tuple[str, dict[int, tuple[float, float]], str]:
    """The 'auto' rule for a model whose scores are (or are not) standardised by the supports' statistics, or for
    a scorer (``method``) whose own rule was measured; with what it cost by K and what it was measured with."""
    if method in SCORER_AUTO_RULE:
        return SCORER_AUTO_RULE[method]
    rule = AUTO_RULE["standardised" if standardised else "raw"]
    return rule, AUTO_RULE_COST[rule], AUTO_RULE_MEASURED_WITH[rule]


def describe_rule(rule: str, k: int) -> str:
    family, _, parameter = rule.partition(":")
    if family == "loo-max":
        return f"the highest of the leave-one-out scores of the K={k} normal supports"
    if family == "mad":
        return (f"the median + {parameter}·MAD (scaled to σ) of the leave-one-out scores of the K={k} normal "
                "supports")
    return (f"the fixed cut {parameter} in the model's standardised units (its maps standardised by the "
            f"leave-one-out statistics of the K={k} normal supports)")


#: far above the others: a support's leave-one-out score more than this many robust σ (or tenths of their
#: median) above the median of the others'
OUTLIER_SIGMAS = 3.0


def outlying_support(loo_scores: list[float]) -> int | None:
    """The support (index) whose leave-one-out score stands far above the others' (K ≥ 3), or None."""
    scores = np.asarray(loo_scores, dtype=float)
    if len(scores) < 3:
        return None
    top = int(scores.argmax())
    others = np.delete(scores, top)
    median = float(np.median(others))
    spread = max(MAD_TO_SIGMA * float(np.median(np.abs(others - median))), 0.1 * abs(median), 1e-12)
    return top if scores[top] - median > OUTLIER_SIGMAS * spread else None


def support_threshold(loo_scores: list[float], names: list[str] | None = None, *, standardised: bool = False,
                      method: str | None = None,
                      advice: str = "use K ≥ 8 supports or --threshold-from a folder of held-out normal images"
                      ) -> Threshold:
    """The 'auto' threshold (:func:`auto_rule`) from the K supports' leave-one-out scores; with K < 2 there is none
    (no verdicts, a warning).  ``method``: the scorer's, for its own measured rule; ``names`` name the supports in
    the warnings; ``advice`` says what to do instead (in the caller's terms)."""
    k = len(loo_scores)
    if k < 2:
        return Threshold(None, "none", "no threshold: the 'auto' threshold needs at least 2 supports",
                         warning="no 'auto' threshold from fewer than 2 supports, so no verdicts; give more supports, "
                                 "--threshold NUMBER or --threshold-from a folder of held-out normal images")
    names = names or [f"support {i + 1}" for i in range(k)]
    rule, cost, measured_with = auto_rule(standardised, method)
    value = rule_threshold(rule, loo_scores)
    warnings = []
    outlier = outlying_support(loo_scores)
    if outlier is not None:
        others = np.delete(np.asarray(loo_scores, dtype=float), outlier)
        sets = " and sets the threshold" if value == loo_scores[outlier] else ""
        warnings.append(f"{names[outlier]} stands far from the other supports (leave-one-out score "
                        f"{loo_scores[outlier]:.4g}, the others {others.min():.4g}–{others.max():.4g}){sets}: check "
                        "that it is a typical normal image of this task, or leave it out")
    if k < MIN_RELIABLE_K:
        cost_k = max([known for known in cost if known <= k], default=min(cost))
        missed, false_alarms = cost[cost_k]
        warnings.append(f"the 'auto' threshold rests on only K={k} supports: on the development tasks at K={cost_k} "
                        f"its rule ({rule}, measured with {measured_with}) called {100 * missed:.0f}% of "
                        "abnormal images normal and "
                        f"{100 * false_alarms:.0f}% of normal images abnormal (docs/METHODS.md); {advice}")
    return Threshold(value, "support-leave-one-out",
                     describe_rule(rule, k) + ("" if rule.startswith("cut:") else
                                               f" (each support scored against the other {k - 1})"),
                     {"k": k, "auto_rule": rule, "support_scores": [float(s) for s in loo_scores]},
                     "; ".join(warnings) or None)


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
