"""The 'auto' threshold of the default few-shot scorer (the adapted student), on the development pool.

Regenerate:  python benchmarks/fewshot_dev_auto_threshold.py
Writes benchmarks/results/fewshot_dev_auto_threshold.json (+ .md) in about a minute: the query scores and the
supports' leave-one-out terms come from the draws rounds 5 and 10 saved (as in ``fewshot_dev_units.py``); only each
support's most similar *other* support is computed here (cosine of pooled deepest-stage teacher features of the
support images, as ``AdaptedStudentScoring.leave_one_out_scores`` takes it).

For each of round 10's and round 11's defaults (``DEFAULTS``: the support term in the supports' mean unit or in the
most similar support's), each pool task, K and draw: the default's score of every query
(``fewshot_dev_units.draw_terms``), the K supports' leave-one-out scores as the product computes them (support term,
round 11's over the leave-one-out score of the most similar other support; ¼ × held-out student score over the
held-out mean; at K = 2, ½ × teacher→student score over that of the most similar other support), each candidate
rule's threshold (``medad.engine.thresholds.rule_threshold``), and its false-normal rate (abnormal queries scored ≤
threshold) and false-abnormal rate (normal queries scored above it).  The rule (``docs/METHODS.md``, stated before
this ran): the default's rule changes from ``loo-max`` only to a candidate with a balanced error lower by at least
``MIN_GAIN`` points (mean over the tasks and K); it is applied to the product's default, round 11's unless its
replication (``fewshot_dev_replication.json``) sent the default back to round 10's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from fewshot_dev_learned import IMAGE_SIZE, KS
from fewshot_dev_research import POOL, task_images
from fewshot_dev_tta import TEACHER, pool_arguments
from fewshot_dev_units import DEFAULT_WEIGHT, TSD_MAX_K, TSD_WEIGHT, draw_terms, saved_draws, saved_draws_parser

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.engine.fewshot import draw_supports
from medad.engine.thresholds import rule_threshold
from medad.models.adapted_student import teacher_features
from medad.models.support_scoring import SupportScoring
from medad.results import BenchmarkResults, benchmark_command

RULES = ("loo-max", "mad:1", "mad:2", "mad:3")
#: row → the support term's unit of that default
DEFAULTS = {"round 10 default": "support/mean", "round 11 default": "support/nn"}
REPLICATION = Path("benchmarks/results/fewshot_dev_replication.json")
#: points of balanced error a rule must gain over loo-max to become the default's
MIN_GAIN = 1.0


def nearest_others(pooled: torch.Tensor) -> np.ndarray:
    """Each support's most similar other support (cosine of L2-normalised pooled features)."""
    similarity = pooled @ pooled.T
    similarity.fill_diagonal_(-torch.inf)
    return similarity.argmax(dim=1).numpy()


def leave_one_out(gate_draw: dict, tsd_draw: dict, others: np.ndarray, support_unit: str) -> np.ndarray:
    """The K supports' leave-one-out scores of a default, as ``AdaptedStudentScoring.leave_one_out_scores``."""
    support_loo, held_out = np.array(gate_draw["support_loo"]), np.array(gate_draw["held_out"])
    if support_unit == "support/nn":
        support_loo = support_loo / np.maximum(support_loo[others], 1e-6)
    scores = support_loo + DEFAULT_WEIGHT * held_out / max(float(held_out.mean()), 1e-6)
    if gate_draw["k"] <= TSD_MAX_K:
        tsd = np.array(tsd_draw["supports"])
        scores = scores + TSD_WEIGHT * tsd / np.maximum(tsd[others], 1e-6)
    return scores


def records(gate_data: dict, tsd_data: dict, teacher) -> list[dict]:
    """One record per (task, K, draw, rule): the threshold, the supports' leave-one-out scores and both error rates."""
    args = pool_arguments(__doc__).parse_args([])
    out = []
    for task in POOL:
        pool, _, _ = task_images(task, args, IMAGE_SIZE)
        labels = np.array(gate_data[task]["labels"])
        tsd_queries = np.array(tsd_data[task]["queries"])
        for gate_draw, tsd_draw in zip(gate_data[task]["draws"], tsd_data[task]["draws"], strict=True):
            seed, k, draw = gate_draw["seed"], gate_draw["k"], gate_draw["draw"]
            supports, _ = load_images([pool[i] for i in draw_supports(len(pool), k, draw, seed=seed)], IMAGE_SIZE,
                                      workers=0)
            pooled = SupportScoring.encoding_from_teacher(teacher_features(teacher, supports), (IMAGE_SIZE,) * 2).pooled
            others = nearest_others(pooled)
            terms = draw_terms(gate_draw, tsd_draw, tsd_queries)
            for method, unit in DEFAULTS.items():
                loo = leave_one_out(gate_draw, tsd_draw, others, unit)
                scores = terms[unit] + DEFAULT_WEIGHT * terms["student/mean"] + terms["tsd"]
                for rule in RULES:
                    threshold = rule_threshold(rule, loo)
                    out.append({"method": method, "selection": rule, "task": task, "seed": seed, "k": k,
                                "support_draw": draw, "backbone": TEACHER, "image_size": IMAGE_SIZE,
                                "protocol": "development", "threshold": threshold, "loo_scores": loo.tolist(),
                                "n_test_normal": int((labels == 0).sum()), "n_test_abnormal": int(labels.sum()),
                                "false_normal": float((scores[labels == 1] <= threshold).mean()),
                                "false_abnormal": float((scores[labels == 0] > threshold).mean())})
    return out


def rates(found: list[dict], method: str, rule: str, k: int | None = None) -> tuple[float, float]:
    """Mean over the pool's tasks of the mean false-normal and false-abnormal rates of ``method``'s ``rule`` (at
    ``k``)."""
    per_task = [[r for r in found if r["method"] == method and r["selection"] == rule and r["task"] == t
                 and k in (None, r["k"])] for t in POOL]
    return (float(np.mean([np.mean([r["false_normal"] for r in rs]) for rs in per_task])),
            float(np.mean([np.mean([r["false_abnormal"] for r in rs]) for rs in per_task])))


def choose(found: list[dict], method: str) -> dict:
    """The pre-stated rule (module doc) for one default, and the chosen rule's rates per K (what warnings quote)."""
    balanced = {rule: 100 * float(np.mean(rates(found, method, rule))) for rule in RULES}
    best = min(RULES, key=lambda rule: balanced[rule])
    chosen = best if balanced[best] <= balanced["loo-max"] - MIN_GAIN else "loo-max"
    return {"balanced_error": balanced, "chosen": chosen,
            "cost": {k: [round(v, 3) for v in rates(found, method, chosen, k)] for k in KS}}


def select(found: list[dict]) -> dict:
    """The rule applied to each default; the product default's choice at the top level (what ships)."""
    keeps = json.loads(REPLICATION.read_text())["selection"]["keeps_round_11"]
    product = "round 11 default" if keeps else "round 10 default"
    by_method = {method: choose(found, method) for method in DEFAULTS}
    return {"rule": f"loo-max unless a candidate's balanced error is lower by at least {MIN_GAIN:g} point",
            "product_default": product, **by_method[product], "by_method": by_method}


def markdown(data: dict, found: list[dict]) -> str:
    s = data["selection"]
    lines = ["# The default few-shot scorer's auto threshold (development pool)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             "Module doc of `benchmarks/fewshot_dev_auto_threshold.py`: the adapted student (support term + ¼ adapted "
             "student + ½ teacher→student term at K = 2) with round 10's support unit (the supports' mean, the "
             "product's default) and round 11's (the most similar support), EfficientNet-Lite0 at 128 px, the pool "
             "and draws of `fewshot_dev_tta` (10 tasks, K 2/4/8 × 2 draws, every learned part trained without the "
             "scored task). Each cell: **false-normal % / false-abnormal %** (abnormal images called normal / normal "
             "images called abnormal), mean over the tasks and draws; balanced error = their mean, over K too."]
    for method in DEFAULTS:
        chosen = s["by_method"][method]
        shipped = " (the product's default)" if method == s["product_default"] else ""
        lines += ["", f"## {method}{shipped}", "",
                  "| rule | " + " | ".join(f"K={k}" for k in KS) + " | balanced error |", "|---" * (2 + len(KS)) + "|"]
        for rule in RULES:
            cells = [" / ".join(f"{100 * v:.0f}" for v in rates(found, method, rule, k)) for k in KS]
            mark = " (chosen)" if rule == chosen["chosen"] else ""
            lines.append(f"| `{rule}`{mark} | " + " | ".join(cells) + f" | {chosen['balanced_error'][rule]:.1f} |")
    lines += ["", f"Per task, {s['product_default']}, `{s['chosen']}`, all K:", "",
              "| task | false-normal % | false-abnormal % |", "|---|---|---|"]
    for task in POOL:
        chosen = [r for r in found if r["method"] == s["product_default"] and r["selection"] == s["chosen"]
                  and r["task"] == task]
        lines.append(f"| {task} | {100 * np.mean([r['false_normal'] for r in chosen]):.0f} | "
                     f"{100 * np.mean([r['false_abnormal'] for r in chosen]):.0f} |")
    lines += ["", f"Rule (stated before the run): {s['rule']} → the product's default ({s['product_default']}) "
              f"**`{s['chosen']}`**."]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = saved_draws_parser(__doc__, "fewshot_dev_auto_threshold").parse_args()
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_auto_threshold.py"),
                               keep=lambda record: False)
    gate_data, tsd_data = saved_draws(args)
    teacher = build_teacher(TEACHER).eval()
    found = records(gate_data, tsd_data, teacher)
    results.records[:] = found
    results.data["selection"] = select(found)
    results.save()
    results.write_markdown(markdown(results.data, found))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
