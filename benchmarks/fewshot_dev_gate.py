"""Rounds 5 and 6 of issue 22: the adapted student's weight chosen per support set from the supports alone, by a gate
learned with inner leave-one-task-out on the widened development pool (no test split of a reported fold is read);
round 6, the student term two-sided.

Regenerate:  python benchmarks/fewshot_dev_gate.py                     (rounds 5 and 6, 128 px)
             python benchmarks/fewshot_dev_gate.py --image-size 224    (round 7)
Writes benchmarks/results/fewshot_dev_gate.json (+ .md; ``fewshot_dev_gate_224`` at 224 px).  Resumable per task;
``--tasks`` splits the work between processes.  Pool, draws, features and generic students are those of
``benchmarks/fewshot_dev_tta.py`` (its cache); at another input size the generic students are trained by the same
recipe at that size (cached as ``student_without_<task>@<size>.pt``), and PatchCore-K uses the same size.

Each draw of K supports is scored as round 4b's family does (``AdaptedStudentConfig(steps=50,
student_scale="held_out")``): the support term (views + top-1 %) plus w times the adapted student's term in held-out
units.  Round 4 found the student term worth +5 to +26 points on some tasks and −13 to −17 on others (ACRIMA,
ZhangLab), so a weight common to every task is either small or loses a task.  Here the weight of each draw is a
function of statistics of its K supports only, computed before any query is scored:

* ``generalisation``: log(mean held-out student score / mean in-sample student score) over the supports: how much
  worse a support is rebuilt by a student that did not see it;
* ``adaptation``: log(mean generic student score / mean held-out student score): how much adapting to the other
  K − 1 supports lowered a support's score below the generic student's;
* ``spread``: log(coefficient of variation of the held-out student scores / that of the support term's
  leave-one-out scores): which term scores the task's normals more consistently;
* ``k``: log2 K.

The gate is a stump: a statistic, a threshold and two weights from ``WEIGHTS`` (below / above it), or one constant
weight.  For each pool task it is fitted on the draws of the other nine tasks (``fit_gate``: the best mean image
AUROC over them among the gates with no fitting task more than 1 point below PatchCore-K; all gates when none
passes; ties to the first in a fixed order) and applied to the task's own draws.  Rows:

* ``patchcore``; ``w=W``: every constant weight of ``WEIGHTS`` (w=0 is the support term alone);
* ``gate[constant]``: the constant weight fitted on the other tasks;
* ``gate[S]``: the stump on statistic S fitted on the other tasks; ``gate[any]``: the statistic fitted too;
* round 6, the same rows prefixed ``two-sided``: the student term s replaced by |s − 1|.  s is in held-out units, so
  1 is what a support scores by a student that did not see it, as a normal query does; the two-sided term also
  flags queries the student rebuilds *better* than the task's normals (round 4's student alone scored below 50 on
  ACRIMA and ZhangLab: there it rebuilt the abnormal images better than the normals).  Added after round 5 had been run and read;
  computed from the draws round 5 saved.

The rule for a fourth look at the test folds, written before this benchmark was run (``docs/METHODS.md``, round 5):
the rule of rounds 4 and 4b: some row that uses the supports beats PatchCore-K by at least 3 points of mean image
AUROC over the pool, with no task more than 1 point below it.  The chosen row's gate is then fitted on all ten tasks
(``selection``).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools

import numpy as np
import torch
from fewshot_dev_research import POOL, summary
from fewshot_dev_tta import (GUARD, RECIPE, TEACHER, EncodedTask, apply_rule, encode_task, generic_student,
                             patchcore_scores, pool_arguments, pool_table, run_pending_tasks, support_draws)
from sklearn.metrics import roc_auc_score

from medad.backbones import build_teacher
from medad.engine.generic_student import GenericStudentRecipe
from medad.models.adapted_student import (AdaptedStudentConfig, AdaptedStudentScoring, load_student, student_maps,
                                          teacher_features)
from medad.models.support_scoring import reduce_map
from medad.results import BenchmarkResults, benchmark_command

STEPS, UNIT = 50, "held_out"
WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0)
STATISTICS = ("generalisation", "adaptation", "spread", "k")


def parse_args() -> argparse.Namespace:
    parser = pool_arguments(__doc__)
    parser.add_argument("--name", help="results name (default: fewshot_dev_gate, with _SIZE after it unless 128 px)")
    args = parser.parse_args()
    args.name = args.name or ("fewshot_dev_gate" if args.image_size == RECIPE.image_size
                              else f"fewshot_dev_gate_{args.image_size}")
    return args


def recipe_for(args: argparse.Namespace) -> GenericStudentRecipe:
    """The generic students' recipe (``fewshot_dev_tta.RECIPE``) at the run's input size."""
    return dataclasses.replace(RECIPE, image_size=args.image_size)


def _log_ratio(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.log(max(float(np.mean(a)), 1e-6) / max(float(np.mean(b)), 1e-6)))


def _variation(values: np.ndarray) -> float:
    return float(np.std(values) / max(float(np.mean(values)), 1e-6)) + 1e-6


def support_statistics(held_out: np.ndarray, in_sample: np.ndarray, generic: np.ndarray, support_loo: np.ndarray,
                       k: int) -> dict[str, float]:
    """The gate's statistics (module doc) of one support set, from its supports' scores only."""
    return {"generalisation": _log_ratio(held_out, in_sample), "adaptation": _log_ratio(generic, held_out),
            "spread": float(np.log(_variation(held_out) / _variation(support_loo))), "k": float(np.log2(k))}


def score_draw(scorer: AdaptedStudentScoring, state: dict[str, torch.Tensor], supports: torch.Tensor,
               features: list[torch.Tensor], queries, image_size: tuple[int, int], draw: int) -> dict:
    """One draw's query terms (support term; student term in held-out units) and its supports' statistics."""
    k = len(supports)
    prepared = scorer.prepare_supports(supports, seed=draw)
    support_term = reduce_map(scorer.support_scoring.score_terms(queries, prepared.bank)[0], "top1")
    student_term = reduce_map(student_maps(prepared.model, features, image_size), "top1") / prepared.student_scale
    originals = teacher_features(scorer.teacher, supports)
    in_sample = reduce_map(student_maps(prepared.model, originals, image_size), "top1").numpy()
    generic = reduce_map(student_maps(load_student(scorer.teacher, state), originals, image_size), "top1").numpy()
    support_loo = scorer.leave_one_out_scores(supports, prepared, seed=draw).numpy()  # weight 0: support term only
    held_out = prepared.held_out_student.numpy()
    return {"support_term": support_term.tolist(), "student_term": student_term.tolist(),
            "statistics": support_statistics(held_out, in_sample, generic, support_loo, k),
            "held_out": held_out.tolist(), "in_sample": in_sample.tolist(), "generic": generic.tolist(),
            "support_loo": support_loo.tolist()}


def scored_draw(scorer: AdaptedStudentScoring, state: dict[str, torch.Tensor], encoded: EncodedTask,
                key: tuple[int, int, int], supports: torch.Tensor) -> dict:
    """One draw's saved entry: its (seed, K, draw), PatchCore-K's query scores and :func:`score_draw`'s terms."""
    seed, k, draw = key
    return {"seed": seed, "k": k, "draw": draw,
            "patchcore": patchcore_scores(scorer.teacher, encoded.queries, supports).tolist(),
            **score_draw(scorer, state, supports, encoded.features, encoded.queries, encoded.image_size, draw)}


def run_task(results: BenchmarkResults, teacher, task: str, args: argparse.Namespace) -> None:
    """Every draw of one pool task, saved under ``results.data["draws"][task]``."""
    state = generic_student(task, teacher, args, results.data["generic"], recipe_for(args))
    scorer = AdaptedStudentScoring(teacher, state, AdaptedStudentConfig(steps=STEPS, student_scale=UNIT, weight=0.0))
    encoded = encode_task(teacher, task, args, args.image_size)
    draws = [scored_draw(scorer, state, encoded, key, supports)
             for key, supports in support_draws(encoded.pool, args, args.image_size)]
    results.data["draws"][task] = {"labels": encoded.labels.tolist(), "draws": draws}


# --- gates: fitted and applied on the saved draws --------------------------------------------------------------------

#: row prefix → the student term as scored from the saved one (s, in held-out units)
STUDENT_TERMS = {"": lambda s: s, "two-sided ": lambda s: np.abs(s - 1.0)}


def draw_aurocs(data: dict, prefix: str = "") -> dict[str, list[dict]]:
    """Per task: AUROC (%) of PatchCore-K and of every constant weight per draw (the student term of ``prefix``),
    and the draws' statistics."""
    table = {}
    for task, saved in data["draws"].items():
        labels = np.array(saved["labels"])
        rows = []
        for d in saved["draws"]:
            support, student = np.array(d["support_term"]), STUDENT_TERMS[prefix](np.array(d["student_term"]))
            rows.append({"patchcore": 100 * roc_auc_score(labels, d["patchcore"]),
                         "weights": [100 * roc_auc_score(labels, support + w * student) for w in WEIGHTS],
                         "statistics": d["statistics"], "key": (d["seed"], d["k"], d["draw"])})
        table[task] = rows
    return table


def gates(statistic: str | None, thresholds: list[float]) -> list[tuple]:
    """Every gate of one kind, in the fixed order ties go by: (statistic, threshold, weight below, weight above)."""
    constant = [(None, np.inf, w, w) for w in range(len(WEIGHTS))]
    if statistic is None:
        return constant
    return [(statistic, t, lo, hi) for t in thresholds for lo in range(len(WEIGHTS)) for hi in range(len(WEIGHTS))
            if lo != hi]


def gate_weight(gate: tuple, statistics: dict[str, float]) -> int:
    """The index in ``WEIGHTS`` a gate gives a draw."""
    statistic, threshold, below, above = gate
    return below if statistic is None or statistics[statistic] <= threshold else above


def task_differences(gate: tuple, table: dict[str, list[dict]], tasks: list[str]) -> np.ndarray:
    """Per task: the gate's mean AUROC over its draws minus PatchCore-K's."""
    return np.array([np.mean([r["weights"][gate_weight(gate, r["statistics"])] - r["patchcore"] for r in table[t]])
                     for t in tasks])


def fit_gate(table: dict[str, list[dict]], tasks: list[str], kinds: tuple) -> tuple:
    """The best gate of ``kinds`` (statistics; None = constant) on ``tasks`` (module doc)."""
    candidates = []
    for kind in kinds:
        values = sorted({r["statistics"][kind] for t in tasks for r in table[t]}) if kind else []
        thresholds = [(a + b) / 2 for a, b in itertools.pairwise(values)]
        candidates += gates(kind, thresholds)
    scored = [(gate, task_differences(gate, table, tasks)) for gate in candidates]
    guarded = [(gate, d) for gate, d in scored if d.min() >= -GUARD] or scored
    return max(guarded, key=lambda gd: gd[1].mean())[0]  # max keeps the first of equals


ROWS = {"gate[constant]": (None,), **{f"gate[{s}]": (s,) for s in STATISTICS},
        "gate[any]": (None, *STATISTICS)}


def records_and_gates(data: dict) -> tuple[list[dict], dict[str, dict]]:
    """Records of every row (the gate rows by inner leave-one-task-out) and each gate row's fitted gates."""
    records, fitted, size = [], {}, data["image_size"]
    def add(row: str, task: str, key: tuple, auroc: float) -> None:
        records.append({"method": row, "task": task, "seed": key[0], "k": key[1], "support_draw": key[2],
                        "backbone": TEACHER, "image_size": size, "protocol": "development",
                        "features": f"lite0@{size}", "image_auroc": auroc / 100})
    # round 6's two-sided term was stated at 128 px only; round 7 (another size) is the one-sided term
    for prefix in STUDENT_TERMS if size == RECIPE.image_size else [""]:
        table = draw_aurocs(data, prefix)
        tasks = [t for t in POOL if t in table]
        for task in tasks:
            for r in table[task]:
                if not prefix:
                    add("patchcore", task, r["key"], r["patchcore"])
                for w, auroc in zip(WEIGHTS, r["weights"], strict=True):
                    if w or not prefix:  # w = 0 is the support term alone, whatever the student term
                        add(f"{prefix}w={w:g}", task, r["key"], auroc)
        if len(tasks) < len(POOL):
            continue
        for row, kinds in ROWS.items():
            fitted[prefix + row] = {}
            for task in tasks:
                gate = fit_gate(table, [t for t in tasks if t != task], kinds)
                fitted[prefix + row][task] = describe(gate)
                for r in table[task]:
                    add(prefix + row, task, r["key"], r["weights"][gate_weight(gate, r["statistics"])])
    return records, fitted


def split_row(row: str) -> tuple[str, str]:
    """(student-term prefix, row) of a row name."""
    prefix = next(p for p in sorted(STUDENT_TERMS, key=len, reverse=True) if row.startswith(p))
    return prefix, row[len(prefix):]


def describe(gate: tuple) -> dict:
    statistic, threshold, below, above = gate
    if statistic is None:
        return {"statistic": None, "weight": WEIGHTS[below]}
    return {"statistic": statistic, "threshold": threshold, "weight_below": WEIGHTS[below],
            "weight_above": WEIGHTS[above]}


def select(data: dict, records: list[dict]) -> dict:
    """The pre-stated rule (module doc) over the rows, and the chosen row's gate fitted on all ten tasks."""
    selection = {**apply_rule(summary(records)[f"lite0@{data['image_size']}"]),
                 "recipe": dataclasses.replace(RECIPE, image_size=data["image_size"]).as_dict()}
    if selection["chosen"] is not None:
        prefix, row = split_row(selection["chosen"])
        selection["student_term"] = prefix.strip() or "one-sided"
        selection["gate"] = (describe(fit_gate(draw_aurocs(data, prefix), POOL, ROWS[row])) if row in ROWS
                             else {"statistic": None, "weight": float(row.removeprefix("w="))})
    return selection


def markdown(data: dict, records: list[dict], fitted: dict[str, dict]) -> str:
    size = data["image_size"]
    rows = summary(records)[f"lite0@{size}"]
    title = ("Rounds 5 and 6: the adapted student's weight gated per support set, its term one- or two-sided"
             if size == RECIPE.image_size else
             f"Round 7: the adapted student's weight gated per support set, at {size} px")
    lines = [f"# {title} (issue 22, development pool)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {sum(data['seconds'].values()) / 60:.1f} min of process time recorded per task", "",
             f"Module doc of `benchmarks/fewshot_dev_gate.py`: EfficientNet-Lite0 at {size} px, the pool of "
             f"`fewshot_dev_tta` and its generic students' recipe at {size} px, the student adapted 50 steps, its "
             "term in held-out units. Image AUROC (%), mean over K and draws per task; Δ = mean minus PatchCore-K's "
             "on the same supports; "
             f"guard ✓ = no task more than {GUARD:g} point below PatchCore-K. `gate[…]` rows: each task's gate "
             "fitted on the other nine tasks.", "",
             *pool_table(rows)]
    done = [t for t in POOL if t in data["draws"]]
    if len(done) < len(POOL):
        lines[-len(rows) - 2:-len(rows) - 2] = [f"**Incomplete: {len(done)} of {len(POOL)} tasks done; means are over "
                                                "those; the gates are fitted and the rule applied once every task is "
                                                "done.**", ""]
    if fitted:
        lines += gate_table(fitted)
    selection = data.get("selection")
    if selection:
        chosen = selection["chosen"]
        lines += ["", "## The pre-stated rule", "", f"Rule: {selection['rule']}.", ""]
        if chosen is None:
            lines.append("No candidate passes the guard → **not met**: the test folds are not read")
        else:
            c = selection["candidates"][chosen]
            lines.append(f"Chosen: `{chosen}`, {c['difference']:+.2f} points over PatchCore-K (worst task "
                         f"{c['worst_task_difference']:+.1f}); fitted on all ten tasks: "
                         f"{_gate_text(selection['gate'])} → "
                         + ("**met**: a fourth look at the test folds" if selection["met"]
                            else "**not met**: the test folds are not read"))
    return "\n".join(lines) + "\n"


def gate_table(fitted: dict[str, dict]) -> list[str]:
    """Markdown lines: each gate row's gate fitted without each pool task."""
    return ["", "Gates fitted without each task (statistic: threshold, weight below → above):", "",
            "| row | " + " | ".join(POOL) + " |", "|---" * (1 + len(POOL)) + "|",
            *[f"| {row} | " + " | ".join(_gate_text(per_task[t]) for t in POOL) + " |"
              for row, per_task in fitted.items()]]


def _gate_text(gate: dict) -> str:
    if gate["statistic"] is None:
        return f"w={gate['weight']:g}"
    return f"{gate['statistic']}: {gate['threshold']:.3g}, {gate['weight_below']:g} → {gate['weight_above']:g}"


def main() -> int:
    args = parse_args()
    # the records derive from the saved draws and are recomputed whole below: none is kept from the file
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_gate.py",
                                                                    pieces=("--tasks", "--markdown-only")),
                               keep=lambda record: False)
    for key in ("draws", "generic", "seconds"):
        results.data.setdefault(key, {})
    results.data.setdefault("image_size", args.image_size)
    if not args.markdown_only:
        torch.manual_seed(0)
        run_pending_tasks(results, build_teacher(TEACHER), args, lambda task: task in results.data["draws"], run_task)
    results.refresh()  # the draws another process saved since this one's last save
    records, fitted = records_and_gates(results.data)
    results.records[:] = records
    if fitted:
        results.data["fitted"] = fitted
        results.data["selection"] = select(results.data, records)
    results.save()
    results.write_markdown(markdown(results.data, records, fitted))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
