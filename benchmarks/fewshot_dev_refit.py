"""Round 13 of issue 22: the default's student and teacher→student weights fitted again, by K, on round 11's support
unit (the query's most similar support), on the widened development pool (no test split of a reported fold is read).

Regenerate:  python benchmarks/fewshot_dev_refit.py
Writes benchmarks/results/fewshot_dev_refit.json (+ .md) in seconds, from the draws rounds 5 and 10 saved
(``fewshot_dev_units.draw_terms``).  Families (``docs/METHODS.md``, round 13, stated before this ran), each a weight
W from ``fewshot_dev_gate.WEIGHTS`` gated on K by round 5's inner leave-one-task-out fit, the other weight at the
default's value:

* ``student``: support/nn + W × student/mean + ½ × T→S/nn at K ≤ 2;
* ``tsd``: support/nn + ¼ × student/mean + W × T→S/nn (at every K).

The rule: the default changes to the better gated row if no pool task is more than 1 point below PatchCore-K and its
mean beats the default's by at least ``fewshot_dev_units.MIN_GAIN`` points; its gate is then fitted on all ten tasks.
"""

from __future__ import annotations


import numpy as np
from fewshot_dev_gate import WEIGHTS, describe, fit_gate
from fewshot_dev_learned import IMAGE_SIZE
from fewshot_dev_research import POOL, summary
from fewshot_dev_tta import GUARD
from fewshot_dev_units import (DEFAULT_WEIGHT, MIN_GAIN, PER_K_CAPTION, TSD_WEIGHT, development_record, draw_terms,
                               k_gated_records, per_k_differences, row_tables, saved_draws, saved_draws_parser)
from sklearn.metrics import roc_auc_score

from medad.results import BenchmarkResults, benchmark_command

DEFAULT = "default"
FAMILIES = ("student", "tsd")


def family_scores(terms: dict[str, np.ndarray], family: str, weight: float) -> np.ndarray:
    """A family's scores with its weight at ``weight`` (module doc): ``terms["tsd"]`` is the default's T→S term
    (½ at K ≤ 2), ``terms["tsd_all"]`` the unweighted T→S/nn term at every K."""
    if family == "student":
        return terms["support/nn"] + weight * terms["student/mean"] + terms["tsd"]
    return terms["support/nn"] + DEFAULT_WEIGHT * terms["student/mean"] + weight * terms["tsd_all"]


def tables(gate_data: dict, tsd_data: dict) -> tuple[dict[str, dict[str, list[dict]]], list[dict]]:
    """family → task → per draw (``fewshot_dev_gate.fit_gate``'s table), and the records of PatchCore-K, the
    default and every constant weight."""
    out: dict[str, dict[str, list[dict]]] = {family: {} for family in FAMILIES}
    records = []

    def add(row: str, task: str, key: tuple, auroc: float) -> None:
        records.append(development_record(row, task, key, auroc))

    for task in POOL:
        labels, tsd_queries = np.array(gate_data[task]["labels"]), np.array(tsd_data[task]["queries"])
        for gate_draw, tsd_draw in zip(gate_data[task]["draws"], tsd_data[task]["draws"], strict=True):
            key = (gate_draw["seed"], gate_draw["k"], gate_draw["draw"])
            terms = draw_terms(gate_draw, tsd_draw, tsd_queries)
            nearest = np.array(tsd_draw["nearest"])
            terms["tsd_all"] = tsd_queries / np.maximum(np.array(tsd_draw["supports"])[nearest], 1e-6)
            patchcore = 100 * roc_auc_score(labels, gate_draw["patchcore"])
            add("patchcore", task, key, patchcore)
            add(DEFAULT, task, key, 100 * roc_auc_score(labels, family_scores(terms, "student", DEFAULT_WEIGHT)))
            for family in FAMILIES:
                aurocs = [100 * roc_auc_score(labels, family_scores(terms, family, w)) for w in WEIGHTS]
                out[family].setdefault(task, []).append({"patchcore": patchcore, "weights": aurocs, "key": key,
                                                         "statistics": {"k": float(np.log2(key[1]))}})
                for w, auroc in zip(WEIGHTS, aurocs, strict=True):
                    add(f"{family} w={w:g}", task, key, auroc)
    return out, records


def select(records: list[dict], table: dict[str, dict[str, list[dict]]]) -> dict:
    """The pre-stated rule (module doc)."""
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    base, default = rows["patchcore"], rows[DEFAULT]
    candidates = {f"{f} gate[k]": {"mean": rows[f"{f} gate[k]"]["mean"],
                                   "worst_task_difference": min(rows[f"{f} gate[k]"]["tasks"][t] - base["tasks"][t]
                                                                for t in POOL)} for f in FAMILIES}
    best = max(candidates, key=lambda row: candidates[row]["mean"])
    changes = (candidates[best]["worst_task_difference"] >= -GUARD
               and candidates[best]["mean"] >= default["mean"] + MIN_GAIN)
    selection = {"rule": f"the better gated row, if no pool task is more than {GUARD:g} point below PatchCore-K and "
                         f"its mean beats the default's by at least {MIN_GAIN:g} point",
                 "default_mean": default["mean"], "candidates": candidates, "best": best, "changes": changes}
    if changes:
        selection["gate"] = describe(fit_gate(table[best.split(" ")[0]], POOL, ("k",)))
    return selection


def markdown(data: dict, records: list[dict], fitted: dict[str, dict]) -> str:
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    by_k = per_k_differences(records)
    s = data["selection"]
    lines = ["# Round 13: the default's weights fitted again on round 11's support unit (issue 22, development pool)",
             "", f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             "Time: seconds (from the draws rounds 5 and 10 saved)", "",
             "Module doc of `benchmarks/fewshot_dev_refit.py`: EfficientNet-Lite0 at 128 px, the pool and draws of "
             f"`fewshot_dev_tta`. `student w=W` = support/nn + W × student/mean + {TSD_WEIGHT:g} × T→S/nn at K = 2; "
             f"`tsd w=W` = support/nn + {DEFAULT_WEIGHT:g} × student/mean + W × T→S/nn at every K; `default` = round "
             "11's. Image AUROC (%), mean over K and draws per task; Δ = mean minus PatchCore-K's; guard ✓ = no task "
             f"more than {GUARD:g} point below PatchCore-K. `gate[k]` rows: each task's gate fitted on the other nine.",
             ""]
    lines += row_tables(rows, by_k, fitted, PER_K_CAPTION)
    best = s["candidates"][s["best"]]
    lines += ["", "## The pre-stated rule", "", f"{s['rule']}: best `{s['best']}` {best['mean']:.2f} (worst task "
              f"{best['worst_task_difference']:+.1f}) against the default's {s['default_mean']:.2f} → "
              + ("**the default changes**" if s["changes"] else "**the default is unchanged**")]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = saved_draws_parser(__doc__, "fewshot_dev_refit").parse_args()
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_refit.py"), keep=lambda record: False)
    gate_data, tsd_data = saved_draws(args)
    table, records = tables(gate_data, tsd_data)
    gate_records, fitted = k_gated_records(table, FAMILIES)
    records += gate_records
    results.records[:] = records
    results.data.update(fitted=fitted, selection=select(records, table))
    results.save()
    results.write_markdown(markdown(results.data, records, fitted))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
