"""Round 11 of issue 22: the default few-shot scorer's support and student terms in units of the query's most similar
support instead of the supports' mean, on the widened development pool (no test split of a reported fold is read).

Regenerate:  python benchmarks/fewshot_dev_units.py
Writes benchmarks/results/fewshot_dev_units.json (+ .md) in seconds: every row is computed from the draws rounds 5
and 10 saved (``benchmarks/results/fewshot_dev_gate.json``: the support and student terms, the supports' leave-one-out
and held-out scores; ``benchmarks/results/fewshot_dev_tsd.json``: each query's most similar support and the
teacher→student scores), so the supports, students, queries and round-8 models are those of rounds 5 to 10.

Units of a query's term (``docs/METHODS.md``, round 11, stated before this ran):

* ``support/mean``: its support score over the mean of the supports' leave-one-out scores (the default's);
* ``support/nn``: over the leave-one-out score of its most similar support (cosine of pooled deepest-stage teacher
  features);
* ``student/mean``: its adapted-student score over the mean of the supports' held-out student scores (each support
  scored by a student adapted to the other K − 1; the default's);
* ``student/nn``: over the held-out student score of its most similar support.

Every row adds round 10's teacher→student term as the default does: ½ × T→S/nn when K ≤ 2.  Rows: the default
(``support/mean+student/mean w=0.25``, a check against round 10), ``support/{mean,nn}+student/nn w=W`` for W in
``WEIGHTS``, ``support/nn+student/mean w=0.25``, and ``gate[k]`` on W for both ``student/nn`` families, fitted as in
round 5 on the other nine tasks' draws.  The rule (fixed before the run): the default changes to the best row with no
pool task more than 1 point below PatchCore-K if its mean beats the default's by at least ``MIN_GAIN`` points.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from fewshot_dev_gate import WEIGHTS, _gate_text, describe, fit_gate, gate_table, gate_weight
from fewshot_dev_learned import IMAGE_SIZE, KS
from fewshot_dev_research import POOL, summary
from fewshot_dev_tta import GUARD, TEACHER, guarded_best, pool_table
from sklearn.metrics import roc_auc_score

from medad.results import BenchmarkResults, benchmark_command

#: the default's student weight and teacher→student term (round 10: ½ × T→S/nn when K ≤ 2)
DEFAULT_WEIGHT, TSD_WEIGHT, TSD_MAX_K = 0.25, 0.5, 2
DEFAULT_ROW = f"support/mean+student/mean w={DEFAULT_WEIGHT:g}"
#: points a row's pool mean must beat the default's by for the default to change
MIN_GAIN = 0.5
#: families whose student weight runs over ``WEIGHTS`` (and gets a gate[k] row)
FAMILIES = ("support/mean+student/nn", "support/nn+student/nn")


def saved_draws_parser(description: str, name: str) -> argparse.ArgumentParser:
    """Arguments of the benchmarks computed from the draws rounds 5 and 10 saved: the result name and both files."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default=name)
    parser.add_argument("--gate-results", default="benchmarks/results/fewshot_dev_gate.json")
    parser.add_argument("--tsd-results", default="benchmarks/results/fewshot_dev_tsd.json")
    return parser


def saved_draws(args: argparse.Namespace) -> tuple[dict, dict]:
    """Round 5's saved draws per task (support and student terms) and round 10's (teacher→student scores, each
    query's most similar support)."""
    return (json.loads(Path(args.gate_results).read_text())["draws"],
            json.loads(Path(args.tsd_results).read_text())["tsd"])


def draw_terms(gate_draw: dict, tsd_draw: dict, tsd_queries: np.ndarray) -> dict[str, np.ndarray]:
    """One draw's per-query terms in every unit (module doc) and its teacher→student term as the default adds it."""
    nearest = np.array(tsd_draw["nearest"])
    support_loo, held_out = np.array(gate_draw["support_loo"]), np.array(gate_draw["held_out"])
    support = np.array(gate_draw["support_term"])  # already over the mean of ``support_loo`` (which is in its units)
    student_raw = np.array(gate_draw["student_term"]) * max(float(held_out.mean()), 1e-6)
    tsd = tsd_queries / np.maximum(np.array(tsd_draw["supports"])[nearest], 1e-6)
    return {"support/mean": support, "support/nn": support / np.maximum(support_loo[nearest], 1e-6),
            "student/mean": student_raw / max(float(held_out.mean()), 1e-6),
            "student/nn": student_raw / np.maximum(held_out[nearest], 1e-6),
            "tsd": TSD_WEIGHT * tsd if gate_draw["k"] <= TSD_MAX_K else np.zeros_like(tsd)}


def family_table(gate_data: dict, tsd_data: dict) -> dict[str, dict[str, list[dict]]]:
    """family → task → per draw: PatchCore-K's AUROC (%), the family's AUROC at each weight of ``WEIGHTS`` and at
    the default's, and the draw's statistics (log2 K, the gate's only one): ``fewshot_dev_gate.fit_gate``'s table."""
    tables: dict[str, dict[str, list[dict]]] = {}
    for task in POOL:
        saved, tsd = gate_data[task], tsd_data[task]
        if saved["labels"] != tsd["labels"]:
            raise ValueError(f"{task}: rounds 5 and 10 scored different queries")
        labels, tsd_queries = np.array(saved["labels"]), np.array(tsd["queries"])
        for gate_draw, tsd_draw in zip(saved["draws"], tsd["draws"], strict=True):
            key = (gate_draw["seed"], gate_draw["k"], gate_draw["draw"])
            if key != (tsd_draw["seed"], tsd_draw["k"], tsd_draw["draw"]):
                raise ValueError(f"{task}: rounds 5 and 10 drew different supports")
            terms = draw_terms(gate_draw, tsd_draw, tsd_queries)
            for family in (*FAMILIES, "support/nn+student/mean", "support/mean+student/mean"):
                support_unit, student_unit = family.split("+")
                auroc = [100 * roc_auc_score(labels, terms[support_unit] + w * terms[student_unit] + terms["tsd"])
                         for w in (*WEIGHTS, DEFAULT_WEIGHT)]
                tables.setdefault(family, {}).setdefault(task, []).append(
                    {"patchcore": 100 * roc_auc_score(labels, gate_draw["patchcore"]), "weights": auroc[:-1],
                     "default_weight": auroc[-1], "statistics": {"k": float(np.log2(key[1]))}, "key": key})
    return tables


def development_record(row: str, task: str, key: tuple[int, int, int], auroc: float) -> dict:
    """The record of one row's AUROC (%) on one draw (seed, K, draw) of a pool task."""
    return {"method": row, "task": task, "seed": key[0], "k": key[1], "support_draw": key[2], "backbone": TEACHER,
            "image_size": IMAGE_SIZE, "protocol": "development", "features": f"lite0@{IMAGE_SIZE}",
            "image_auroc": auroc / 100}


def k_gated_records(tables: dict[str, dict[str, list[dict]]], families: tuple[str, ...]
                    ) -> tuple[list[dict], dict[str, dict]]:
    """Each family's ``gate[k]`` row: every pool task's gate on K fitted on the other nine tasks' draws (round 5's
    ``fit_gate``) and applied to its own; the records and the gates."""
    records, fitted = [], {}
    for family in families:
        row = f"{family} gate[k]"
        fitted[row] = {}
        for task in POOL:
            gate = fit_gate(tables[family], [t for t in POOL if t != task], ("k",))
            fitted[row][task] = describe(gate)
            records += [development_record(row, task, r["key"], r["weights"][gate_weight(gate, r["statistics"])])
                        for r in tables[family][task]]
    return records, fitted


def records_and_gates(tables: dict[str, dict[str, list[dict]]]) -> tuple[list[dict], dict[str, dict]]:
    """Records of every row (the gate rows by inner leave-one-task-out) and the gates fitted without each task."""
    records = []

    def add(row: str, task: str, key: tuple, auroc: float) -> None:
        records.append(development_record(row, task, key, auroc))

    for task in POOL:
        for r in tables[FAMILIES[0]][task]:
            add("patchcore", task, r["key"], r["patchcore"])
        for family in ("support/mean+student/mean", "support/nn+student/mean"):
            for r in tables[family][task]:
                add(f"{family} w={DEFAULT_WEIGHT:g}", task, r["key"], r["default_weight"])
        for family in FAMILIES:
            for r in tables[family][task]:
                for w, auroc in zip(WEIGHTS[1:], r["weights"][1:], strict=True):
                    add(f"{family} w={w:g}", task, r["key"], auroc)
    gated, fitted = k_gated_records(tables, FAMILIES)
    return records + gated, fitted


def per_k_differences(records: list[dict]) -> dict[str, dict[int, float]]:
    """row → K → mean over the pool's tasks of (the row's mean AUROC at K − PatchCore-K's), in points."""
    means: dict[tuple[str, int, str], list[float]] = {}
    for r in records:
        means.setdefault((r["method"], r["k"], r["task"]), []).append(100 * r["image_auroc"])
    rows = sorted({row for row, _, _ in means})
    return {row: {k: float(np.mean([np.mean(means[(row, k, t)]) - np.mean(means[("patchcore", k, t)])
                                    for t in POOL])) for k in KS} for row in rows}


#: the per-K table's caption; ``RULE_OVER_ALL_K`` where a round's rule is over the mean of all K
PER_K_CAPTION = "Δ against PatchCore-K per K (mean over the ten tasks):"
RULE_OVER_ALL_K = "Δ against PatchCore-K per K (mean over the ten tasks; for information, the rule is over all K):"


def per_k_table(by_k: dict[str, dict[int, float]], rows: list[str], caption: str = PER_K_CAPTION) -> list[str]:
    """Markdown lines: ``rows``' differences from PatchCore-K per K (:func:`per_k_differences`)."""
    return ["", caption, "", "| row | " + " | ".join(f"K = {k}" for k in KS) + " |", "|---" * (1 + len(KS)) + "|",
            *[f"| {row} | " + " | ".join(f"{by_k[row][k]:+.2f}" for k in KS) + " |" for row in rows]]


def row_tables(rows: dict[str, dict], by_k: dict[str, dict[int, float]], fitted: dict[str, dict] | None = None,
               caption: str = RULE_OVER_ALL_K) -> list[str]:
    """Markdown lines of a round's rows: the pool table, the per-K table (best mean first) and, with ``fitted``, the
    gates fitted without each task."""
    ordered = [row for row in sorted(by_k, key=lambda row: -rows[row]["mean"]) if row != "patchcore"]
    return [*pool_table(rows), *per_k_table(by_k, ordered, caption), *(gate_table(fitted) if fitted else [])]


def select(records: list[dict], tables: dict[str, dict[str, list[dict]]]) -> dict:
    """The pre-stated rule (module doc), and the chosen row's gate fitted on all ten tasks."""
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    base = rows["patchcore"]
    candidates, chosen = guarded_best(rows, (DEFAULT_ROW,))
    default_mean = rows[DEFAULT_ROW]["mean"]
    selection = {"rule": f"among rows with no pool task more than {GUARD:g} point below PatchCore-K, the best mean; "
                         f"the default changes to it if it beats the default's mean by at least {MIN_GAIN:g} point",
                 "patchcore_mean": base["mean"], "default_mean": default_mean, "candidates": candidates,
                 "chosen": chosen,
                 "changes": chosen is not None and candidates[chosen]["mean"] >= default_mean + MIN_GAIN}
    if chosen is not None:
        family, row = chosen.split(" ", 1)
        selection["gate"] = (describe(fit_gate(tables[family], POOL, ("k",))) if row == "gate[k]"
                             else {"statistic": None, "weight": float(row.removeprefix("w="))})
    return selection


def markdown(data: dict, records: list[dict], fitted: dict[str, dict]) -> str:
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    by_k = per_k_differences(records)
    lines = ["# Round 11: the support and student terms against the most similar support (issue 22, development pool)",
             "", f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             "Time: seconds (computed from the draws rounds 5 and 10 saved; no new scoring)", "",
             "Module doc of `benchmarks/fewshot_dev_units.py`: EfficientNet-Lite0 at 128 px, the pool and draws of "
             "`fewshot_dev_tta` (K 2/4/8 × 2 draws, seed 0). `/mean` = a term over its mean over the supports "
             "(leave-one-out or held-out), `/nn` = over the same term of the query's most similar support; W = the "
             "student term's weight. Every row adds round 10's ½ × T→S/nn term at K = 2, as the default "
             f"(`{DEFAULT_ROW}`) does. Image AUROC (%), mean over K and draws per task; Δ = mean minus PatchCore-K's "
             f"on the same supports; guard ✓ = no task more than {GUARD:g} point below PatchCore-K. `gate[k]` rows: "
             "each task's gate fitted on the other nine tasks.", ""]
    lines += row_tables(rows, by_k, fitted)
    s = data["selection"]
    lines += ["", "## The pre-stated rule", "", f"{s['rule']}.", ""]
    if s["chosen"] is None:
        lines.append("No row passes the guard → **the default is unchanged**.")
    else:
        c = s["candidates"][s["chosen"]]
        lines.append(f"Best guarded row: `{s['chosen']}` ({_gate_text(s['gate'])} when fitted on all ten tasks), "
                     f"{c['mean']:.2f} ({c['difference']:+.2f} over PatchCore-K, worst task "
                     f"{c['worst_task_difference']:+.1f}) against the default's {s['default_mean']:.2f} → "
                     + ("**the default changes to this row**" if s["changes"] else "**the default is unchanged**"))
    return "\n".join(lines) + "\n"


def main() -> int:
    args = saved_draws_parser(__doc__, "fewshot_dev_units").parse_args()
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_units.py"),
                               keep=lambda record: False)
    gate_data, tsd_data = saved_draws(args)
    tables = family_table(gate_data, tsd_data)
    records, fitted = records_and_gates(tables)
    results.records[:] = records
    results.data.update(fitted=fitted, selection=select(records, tables), per_k=per_k_differences(records))
    results.save()
    results.write_markdown(markdown(results.data, records, fitted))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
