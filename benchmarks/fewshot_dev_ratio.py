"""Round 14 of issue 22: the adapted student's score over the generic student's, a likelihood ratio against a
background model, on the widened development pool (no test split of a reported fold is read).

Regenerate:  OMP_NUM_THREADS=1 python benchmarks/fewshot_dev_ratio.py
Writes benchmarks/results/fewshot_dev_ratio.json (+ .md).  The only new scoring is one pass of each pool task's
generic student (round 5's, ``benchmarks/.cache/fewshot_dev_tta``) over the task's queries, a few seconds per task and
resumable; every row is then computed from the draws rounds 5 and 10 saved, so the supports, adapted students, queries
and round-8 models are those of rounds 5 to 13.

The term (``docs/METHODS.md``, round 14, stated before this ran): for a query q, ``a(q) / g(q)`` in units of the mean
over the supports of ``a_held_out(s) / g(s)``, where ``a`` is the adapted student's top-1 % score, ``g`` the generic
student's and ``a_held_out(s)`` a support's score by the student adapted to the other K − 1.  Rows, each with round
10's teacher→student term as the default adds it (½ × T→S/nn at K ≤ 2): ``ratio`` (support/mean + W × ratio) and
``student+ratio`` (the default's support/mean + ¼ × student/mean, plus W × ratio) for W in ``WEIGHTS``, ``gate[k]`` on
W for both (round 5's inner leave-one-task-out fit), and the default (a check against round 10's 62.29).  The rule: the
best row with no pool task more than 1 point below PatchCore-K is a candidate if its mean beats the default's by at
least ``MIN_GAIN`` points; a candidate changes the default only after it also wins on fresh draws (a replication).
"""

from __future__ import annotations

import numpy as np
import torch
from fewshot_dev_gate import WEIGHTS, describe, fit_gate
from fewshot_dev_learned import IMAGE_SIZE
from fewshot_dev_research import POOL, summary, task_images
from fewshot_dev_tta import GUARD, generic_student, guarded_best, pool_arguments, pool_results
from fewshot_dev_units import (DEFAULT_WEIGHT, MIN_GAIN, development_record, draw_terms,
                               k_gated_records, per_k_differences, row_tables, saved_draws)
from sklearn.metrics import roc_auc_score

from medad.models.adapted_student import load_student, student_maps, teacher_features
from medad.models.support_scoring import reduce_map
from medad.results import BenchmarkResults

DEFAULT = "default"
FAMILIES = ("ratio", "student+ratio")


def parse_args():
    parser = pool_arguments(__doc__)
    parser.add_argument("--name", default="fewshot_dev_ratio")
    parser.add_argument("--gate-results", default="benchmarks/results/fewshot_dev_gate.json")
    parser.add_argument("--tsd-results", default="benchmarks/results/fewshot_dev_tsd.json")
    return parser.parse_args()


def generic_query_scores(results: BenchmarkResults, teacher, task: str, args) -> None:
    """The top-1 % score of the task's generic (unadapted) student on each of its queries."""
    model = load_student(teacher, generic_student(task, teacher, args, {}))
    _, images, labels = task_images(task, args, IMAGE_SIZE)
    with torch.no_grad():
        scores = reduce_map(student_maps(model, teacher_features(teacher, images), tuple(images.shape[-2:])), "top1")
    results.data["generic_queries"][task] = {"labels": labels.tolist(), "scores": scores.tolist()}


def ratio_term(gate_draw: dict, generic_queries: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Each query's adapted score over its generic score to the ``power``, in units of the supports' mean held-out
    score over their generic score to the same power (``power`` 1: round 14's ratio; round 15 tries less)."""
    held_out = np.array(gate_draw["held_out"])
    adapted = np.array(gate_draw["student_term"]) * max(float(held_out.mean()), 1e-6)
    unit = float(np.mean(held_out / np.maximum(np.array(gate_draw["generic"]), 1e-6) ** power))
    return adapted / np.maximum(generic_queries, 1e-6) ** power / max(unit, 1e-6)


def family_scores(terms: dict[str, np.ndarray], family: str, weight: float) -> np.ndarray:
    base = terms["support/mean"] + terms["tsd"]
    if family == "student+ratio":
        base = base + DEFAULT_WEIGHT * terms["student/mean"]
    return base + weight * terms["ratio"]


def tables(data: dict, gate_data: dict, tsd_data: dict) -> tuple[dict[str, dict[str, list[dict]]], list[dict]]:
    """family → task → per draw (``fewshot_dev_gate.fit_gate``'s table), and the records of PatchCore-K, the
    default and every constant weight."""
    out: dict[str, dict[str, list[dict]]] = {family: {} for family in FAMILIES}
    records = []
    for task in POOL:
        labels, tsd_queries = np.array(gate_data[task]["labels"]), np.array(tsd_data[task]["queries"])
        generic = data["generic_queries"][task]
        if generic["labels"] != gate_data[task]["labels"] or tsd_data[task]["labels"] != gate_data[task]["labels"]:
            raise ValueError(f"{task}: the saved rounds and the generic pass scored different queries")
        for gate_draw, tsd_draw in zip(gate_data[task]["draws"], tsd_data[task]["draws"], strict=True):
            key = (gate_draw["seed"], gate_draw["k"], gate_draw["draw"])
            terms = draw_terms(gate_draw, tsd_draw, tsd_queries)
            terms["ratio"] = ratio_term(gate_draw, np.array(generic["scores"]))
            patchcore = 100 * roc_auc_score(labels, gate_draw["patchcore"])
            records.append(development_record("patchcore", task, key, patchcore))
            default = terms["support/mean"] + DEFAULT_WEIGHT * terms["student/mean"] + terms["tsd"]
            records.append(development_record(DEFAULT, task, key, 100 * roc_auc_score(labels, default)))
            for family in FAMILIES:
                aurocs = [100 * roc_auc_score(labels, family_scores(terms, family, w)) for w in WEIGHTS]
                out[family].setdefault(task, []).append({"patchcore": patchcore, "weights": aurocs, "key": key,
                                                         "statistics": {"k": float(np.log2(key[1]))}})
                records += [development_record(f"{family} w={w:g}", task, key, auroc)
                            for w, auroc in zip(WEIGHTS[1:], aurocs[1:], strict=True)]
    return out, records


def select(records: list[dict], table: dict[str, dict[str, list[dict]]]) -> dict:
    """The pre-stated rule (module doc): the candidate for a replication, if any."""
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    base, default_mean = rows["patchcore"], rows[DEFAULT]["mean"]
    candidates, chosen = guarded_best(rows, (DEFAULT,))
    selection = {"rule": f"among rows with no pool task more than {GUARD:g} point below PatchCore-K, the best mean; a "
                         f"candidate for a replication on fresh draws if it beats the default's by at least "
                         f"{MIN_GAIN:g} point", "patchcore_mean": base["mean"], "default_mean": default_mean,
                 "candidates": candidates, "chosen": chosen,
                 "candidate": chosen is not None and candidates[chosen]["mean"] >= default_mean + MIN_GAIN}
    if chosen is not None:
        family, row = chosen.split(" ", 1)
        selection["gate"] = (describe(fit_gate(table[family], POOL, ("k",))) if row == "gate[k]"
                             else {"statistic": None, "weight": float(row.removeprefix("w="))})
    return selection


def markdown(data: dict, records: list[dict], fitted: dict[str, dict]) -> str:
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    by_k = per_k_differences(records)
    seconds = sum(data["seconds"].values())
    lines = ["# Round 14: the adapted student over the generic student, a likelihood ratio (issue 22, development pool)",
             "", f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {seconds / 60:.1f} min of process time (one generic-student pass per task; the rest from the "
             "draws rounds 5 and 10 saved)", "",
             "Module doc of `benchmarks/fewshot_dev_ratio.py`: EfficientNet-Lite0 at 128 px, the pool and draws of "
             "`fewshot_dev_tta` (K 2/4/8 × 2 draws, seed 0). `ratio` = a query's adapted-student score over its "
             "generic-student score, in units of the supports' mean held-out-over-generic score; W = its weight. "
             "Every row adds round 10's ½ × T→S/nn term at K = 2, as the default "
             f"(`{DEFAULT}`: support/mean + ¼ × student/mean) does. Image AUROC (%), mean over K and draws per task; "
             f"Δ = mean minus PatchCore-K's on the same supports; guard ✓ = no task more than {GUARD:g} point below "
             "PatchCore-K. `gate[k]` rows: each task's gate fitted on the other nine tasks.", ""]
    lines += row_tables(rows, by_k, fitted)
    s = data["selection"]
    lines += ["", "## The pre-stated rule", "", f"{s['rule']}.", ""]
    if s["chosen"] is None:
        lines.append("No row passes the guard → **no candidate; the default is unchanged**.")
    else:
        c = s["candidates"][s["chosen"]]
        lines.append(f"Best guarded row: `{s['chosen']}`, {c['mean']:.2f} ({c['difference']:+.2f} over PatchCore-K, "
                     f"worst task {c['worst_task_difference']:+.1f}) against the default's {s['default_mean']:.2f} → "
                     + ("**a candidate: it goes to a replication on fresh draws**" if s["candidate"]
                        else "**no candidate; the default is unchanged**"))
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    results = pool_results("fewshot_dev_ratio.py", args, generic_query_scores, store="generic_queries")
    if any(task not in results.data["generic_queries"] for task in POOL):
        return 0
    gate_data, tsd_data = saved_draws(args)
    table, records = tables(results.data, gate_data, tsd_data)
    gated, fitted = k_gated_records(table, FAMILIES)
    records += gated
    results.records[:] = records
    results.data.update(fitted=fitted, selection=select(records, table), per_k=per_k_differences(records))
    results.save()
    results.write_markdown(markdown(results.data, records, fitted))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
