"""The default few-shot scorer's paired margin over PatchCore-K on the widened development pool, per K, with 95 %
bootstrap intervals, on every draw set scored so far (issue 22; no test split of a reported fold is read).

Regenerate:  OMP_NUM_THREADS=1 python benchmarks/fewshot_dev_margin.py
Writes benchmarks/results/fewshot_dev_margin.json (+ .md).  Resumable per task; ``--tasks`` splits the work between
processes.  Needs what ``fewshot_dev_replication.py`` needs.

A measurement, not a selection: nothing is chosen by it.  It scores fresh draws (draw seed 2, 3 per K, that no round
has scored) with the same students, models and queries as rounds 5 and 10, and saves every draw's per-query terms as
those rounds saved theirs (``fewshot_dev_gate.score_draw``, ``fewshot_dev_tsd.tsd_scores``; plus the generic student's
query scores of round 14), so that a later round can be checked on fresh draws from this file in seconds.  Round 10's
default is computed from the terms (``fewshot_dev_units.draw_terms``; the product's scorer reproduces it exactly, see
``fewshot_dev_replication``).  The paired per-draw differences (the default − PatchCore-K on the same supports) of
three draw sets are reported: seed 0 (the draws rounds 5–14 chose on, ``fewshot_dev_units.json``), seed 1
(``fewshot_dev_replication.json``) and seed 2 (here).  The intervals resample tasks, then draws within each task, as
``fewshot_loo.py`` does over folds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from fewshot_dev_gate import STEPS, UNIT, scored_draw
from fewshot_dev_learned import KS
from fewshot_dev_research import POOL
from fewshot_dev_tsd import tsd_scores
from fewshot_dev_tta import encode_task, generic_student, pool_arguments, pool_results, support_draws
from fewshot_dev_units import DEFAULT_ROW, DEFAULT_WEIGHT, development_record, draw_terms
from fewshot_loo import bootstrap_fold, bootstrap_folds
from sklearn.metrics import roc_auc_score

from medad.models.adapted_student import (AdaptedStudentConfig, AdaptedStudentScoring, load_student, student_maps)
from medad.models.factory import load_trained_model
from medad.models.support_scoring import reduce_map
from medad.results import BenchmarkResults

BASELINE = "patchcore"
#: draw set → (results file, the default's row name in it); the fresh set is this benchmark's own
EARLIER = {"seed 0 (chosen on)": ("benchmarks/results/fewshot_dev_units.json", DEFAULT_ROW),
           "seed 1 (fresh)": ("benchmarks/results/fewshot_dev_replication.json", "round 10 default")}
BOOTSTRAP = 10_000


def parse_args():
    parser = pool_arguments(__doc__)
    parser.set_defaults(seeds=[2], draws=3)
    parser.add_argument("--name", default="fewshot_dev_margin")
    parser.add_argument("--runs", default="benchmarks/.runs/fewshot_dev_learned", help="round 8's run folders")
    return parser.parse_args()


def run_task(results: BenchmarkResults, teacher, task: str, args) -> None:
    """Every fresh draw of one pool task: PatchCore-K's scores and the default's terms (module doc) per query."""
    state = generic_student(task, teacher, args, {})
    scorer = AdaptedStudentScoring(teacher, state, AdaptedStudentConfig(steps=STEPS, student_scale=UNIT, weight=0.0))
    tsd_model, _ = load_trained_model(Path(args.runs) / task, expected_method="d24fad_nn")
    encoded = encode_task(teacher, task, args)
    tsd_queries, query_pooled = tsd_scores(tsd_model, encoded.images)
    with torch.no_grad():
        generic_queries = reduce_map(student_maps(load_student(teacher, state), encoded.features, encoded.image_size),
                                     "top1")
    draws = []
    for key, supports in support_draws(encoded.pool, args):
        entry = scored_draw(scorer, state, encoded, key, supports)
        tsd_supports, pooled = tsd_scores(tsd_model, supports)
        entry.update(supports=tsd_supports.tolist(), nearest=(query_pooled @ pooled.T).argmax(dim=1).tolist())
        draws.append(entry)
    results.data["draws"][task] = {"labels": encoded.labels.tolist(), "tsd_queries": tsd_queries.tolist(),
                                   "generic_queries": generic_queries.tolist(), "draws": draws}


#: a draw's further rows: (draw, its terms of ``fewshot_dev_units.draw_terms``, the task's generic query scores) →
#: row → query scores
ExtraRows = Callable[[dict, dict[str, np.ndarray], np.ndarray], dict[str, np.ndarray]]


def bank_records(bank: dict[str, dict], extra_rows: ExtraRows | None = None) -> list[dict]:
    """PatchCore-K's and the default's AUROC (%) on every draw of a bank in this benchmark's layout (the default
    from its terms), and those of ``extra_rows``."""
    found = []
    for task, saved in bank.items():
        labels, tsd_queries = np.array(saved["labels"]), np.array(saved["tsd_queries"])
        generic = np.array(saved["generic_queries"])
        for d in saved["draws"]:
            terms = draw_terms(d, d, tsd_queries)
            scores = {BASELINE: np.array(d["patchcore"]),
                      DEFAULT_ROW: terms["support/mean"] + DEFAULT_WEIGHT * terms["student/mean"] + terms["tsd"],
                      **(extra_rows(d, terms, generic) if extra_rows else {})}
            key = (d["seed"], d["k"], d["draw"])
            found += [development_record(row, task, key, 100 * roc_auc_score(labels, s)) for row, s in scores.items()]
    return found


def paired_differences(found: list[dict], row: str) -> dict[int, dict[str, np.ndarray]]:
    """K → task → per draw (seed, draw): ``row`` − PatchCore-K AUROC in points, on the same supports."""
    by = {(r["method"], r["task"], r["k"], r["seed"], r["support_draw"]): 100 * r["image_auroc"] for r in found}
    out: dict[int, dict[str, np.ndarray]] = {}
    for k in KS:
        for task in POOL:
            keys = sorted((s, d) for m, t, kk, s, d in by if m == row and t == task and kk == k)
            out.setdefault(k, {})[task] = np.array([by[(row, task, k, s, d)] - by[(BASELINE, task, k, s, d)]
                                                    for s, d in keys])
    return out


def margins(differences: dict[int, dict[str, np.ndarray]]) -> dict[int, dict]:
    """Per K: the mean over tasks of each task's mean difference, its interval, the worst task and its interval."""
    rng = np.random.default_rng(0)
    out = {}
    for k, per_task in differences.items():
        diffs = [d for d in per_task.values() if len(d)]
        means = {task: float(d.mean()) for task, d in per_task.items() if len(d)}
        worst = min(means, key=means.get)
        out[k] = {"mean": float(np.mean(list(means.values()))), "interval": bootstrap_folds(diffs, BOOTSTRAP, rng),
                  "draws_per_task": len(diffs[0]), "tasks": means, "worst_task": worst,
                  "worst_interval": bootstrap_fold(per_task[worst], BOOTSTRAP, rng)}
    return out


def draw_sets(fresh: list[dict]) -> dict[str, dict[int, dict[str, np.ndarray]]]:
    """Each draw set's paired differences, and the fresh sets pooled."""
    sets = {name: paired_differences(json.loads(Path(file).read_text())["records"], row)
            for name, (file, row) in EARLIER.items()}
    sets["seed 2 (fresh)"] = paired_differences(fresh, DEFAULT_ROW)
    sets["seeds 1 + 2 (fresh, pooled)"] = {k: {t: np.concatenate([sets["seed 1 (fresh)"][k][t],
                                                                    sets["seed 2 (fresh)"][k][t]]) for t in POOL}
                                           for k in KS}
    return sets


def markdown(data: dict) -> str:
    lines = ["# The default's margin over PatchCore-K on the development pool, per draw set (issue 22)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {sum(data['seconds'].values()) / 60:.1f} min of process time (seed 2's draws)", "",
             "Module doc of `benchmarks/fewshot_dev_margin.py`: round 10's default (the product's) minus PatchCore-K on "
             "the same supports, image AUROC points, EfficientNet-Lite0 at 128 px, the 10 pool tasks. Mean over tasks "
             "of each task's mean paired difference; 95 % bootstrap interval over tasks and draws within them; the "
             "worst task with its interval over draws. A measurement: nothing is chosen by it.", "",
             "| draw set | draws per task and K | " + " | ".join(f"K = {k}" for k in KS) + " | worst task at K = 4 |",
             "|---|---|" + "---|" * len(KS) + "---|"]
    for name, per_k in data["margins"].items():
        cells = [f"{m['mean']:+.1f} [{m['interval'][0]:+.1f}, {m['interval'][1]:+.1f}]"
                 for m in (per_k[str(k)] for k in KS)]
        w = per_k["4"]
        lines.append(f"| {name} | {w['draws_per_task']} | " + " | ".join(cells) +
                     f" | {w['worst_task']} {w['tasks'][w['worst_task']]:+.1f} "
                     f"[{w['worst_interval'][0]:+.1f}, {w['worst_interval'][1]:+.1f}] |")
    fresh = data["margins"]["seeds 1 + 2 (fresh, pooled)"]
    lines += ["", "Per task on the pooled fresh draws (mean paired difference, points):", "",
              "| K | " + " | ".join(POOL) + " |", "|---" * (1 + len(POOL)) + "|",
              *[f"| {k} | " + " | ".join(f"{fresh[str(k)]['tasks'][t]:+.1f}" for t in POOL) + " |" for k in KS]]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    results = pool_results("fewshot_dev_margin.py", args, run_task, environment="OMP_NUM_THREADS=1")
    results.records[:] = bank_records(results.data["draws"])
    if all(task in results.data["draws"] for task in POOL):
        results.data["margins"] = {name: {str(k): m for k, m in margins(sets).items()}
                                   for name, sets in draw_sets(results.records).items()}
        results.write_markdown(markdown(results.data))
    results.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
