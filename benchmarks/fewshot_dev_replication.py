"""Round 11's default against round 10's on fresh support draws of the widened development pool (issue 22; no test
split of a reported fold is read).

Regenerate:  OMP_NUM_THREADS=1 python benchmarks/fewshot_dev_replication.py
Writes benchmarks/results/fewshot_dev_replication.json (+ .md).  Resumable per task; ``--tasks`` splits the work
between processes.  Needs round 5's generic students (``benchmarks/.cache/fewshot_dev_tta``, made by
``benchmarks/fewshot_dev_tta.py``) and round 8's models (``benchmarks/.runs/fewshot_dev_learned``).

Rounds 5–13 scored the same support draws (draw seed 0).  Here every pool task's queries are scored with draws of
seed ``--seeds`` (default 1) through the product's scorer, ``AdaptedStudentScoring`` with the task's inner
leave-one-task-out generic student and its round-8 D²4FAD-NN as the teacher→student model: PatchCore-K, round 10's
default (support term in the supports' mean unit) and round 11's (the most similar support's unit), both defaults on
one adaptation per draw.  The rule (``docs/METHODS.md``, stated before this ran): if round 11's default scores below
round 10's (mean over the tasks), the product's default goes back to round 10's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fewshot_dev_learned import IMAGE_SIZE
from fewshot_dev_research import POOL, summary
from fewshot_dev_tta import (encode_task, generic_student, patchcore_scores, pool_arguments, pool_results, pool_table,
                             support_draws)
from fewshot_dev_units import development_record, per_k_differences, per_k_table
from sklearn.metrics import roc_auc_score

from medad.models.adapted_student import AdaptedStudentConfig, AdaptedStudentScoring
from medad.models.factory import load_trained_model
from medad.results import BenchmarkResults

#: the two defaults compared (round 10's and round 11's)
ROUND_10 = AdaptedStudentConfig(steps=50, weight=0.25, student_scale="held_out", tsd_weight=0.5, tsd_max_k=2)
ROUND_11 = dataclasses.replace(ROUND_10, support_unit="nearest")
ROWS = {"round 10 default": ROUND_10, "round 11 default": ROUND_11}


def parse_args():
    parser = pool_arguments(__doc__)
    parser.set_defaults(seeds=[1])
    parser.add_argument("--name", default="fewshot_dev_replication")
    parser.add_argument("--runs", default="benchmarks/.runs/fewshot_dev_learned", help="round 8's run folders")
    return parser.parse_args()


def run_task(results: BenchmarkResults, teacher, task: str, args) -> None:
    """Every fresh draw of one pool task: the AUROC of PatchCore-K and of both defaults."""
    state = generic_student(task, teacher, args, {})
    tsd_model, _ = load_trained_model(Path(args.runs) / task, expected_method="d24fad_nn")
    scorers = {row: AdaptedStudentScoring(teacher, state, config, tsd_student=tsd_model.student,
                                          tsd_sigma=tsd_model.config.sigma) for row, config in ROWS.items()}
    encoded = encode_task(teacher, task, args)
    draws = []
    for (seed, k, draw), supports in support_draws(encoded.pool, args):
        prepared = scorers["round 11 default"].prepare_supports(supports, seed=draw)
        scores = {"patchcore": patchcore_scores(teacher, encoded.queries, supports),
                  "round 11 default": scorers["round 11 default"].score_features(encoded.features, prepared,
                                                                                 encoded.image_size)[1],
                  "round 10 default": scorers["round 10 default"].score_features(
                      encoded.features, dataclasses.replace(prepared, support_loo=None), encoded.image_size)[1]}
        draws.append({"seed": seed, "k": k, "draw": draw,
                      "auroc": {row: 100 * roc_auc_score(encoded.labels, s.numpy()) for row, s in scores.items()}})
    results.data["draws"][task] = draws


def records(data: dict) -> list[dict]:
    return [development_record(row, task, (d["seed"], d["k"], d["draw"]), auroc)
            for task, draws in data["draws"].items() for d in draws for row, auroc in d["auroc"].items()]


def decide(found: list[dict]) -> dict:
    """The pre-stated rule (module doc) on the complete pool: whether round 11's default stays the product's."""
    rows = summary(found)[f"lite0@{IMAGE_SIZE}"]
    new, old = rows["round 11 default"]["mean"], rows["round 10 default"]["mean"]
    return {"rule": "the product's default goes back to round 10's if round 11's scores below it",
            "round_11_mean": new, "round_10_mean": old, "patchcore_mean": rows["patchcore"]["mean"],
            "keeps_round_11": new >= old}


def markdown(data: dict, found: list[dict]) -> str:
    done = [t for t in POOL if t in data["draws"]]
    rows = summary(found)[f"lite0@{IMAGE_SIZE}"]
    lines = ["# Round 11's default on fresh support draws (issue 22, development pool)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {sum(data['seconds'].values()) / 60:.1f} min of process time", "",
             "Module doc of `benchmarks/fewshot_dev_replication.py`: the pool of rounds 4–13, EfficientNet-Lite0 at "
             "128 px, K 2/4/8 × 2 draws of draw seed 1 (rounds 5–13 used seed 0), scored by the product's scorer. "
             "Image AUROC (%), mean over K and draws per task; Δ = mean minus PatchCore-K's on the same supports.", ""]
    if len(done) < len(POOL):
        lines += [f"**Incomplete: {len(done)} of {len(POOL)} tasks; the rule is applied once every task is done.**", ""]
    lines += pool_table(rows)
    by_k = per_k_differences(found) if len(done) == len(POOL) else {}
    if by_k:
        lines += per_k_table(by_k, list(ROWS))
        s = decide(found)
        lines += ["", f"Rule (stated before the run): round 11's default {s['round_11_mean']:.2f} against round 10's "
                  f"{s['round_10_mean']:.2f} → " + ("**the default stays round 11's**" if s["keeps_round_11"]
                                                   else "**the default goes back to round 10's**")]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    results = pool_results("fewshot_dev_replication.py", args, run_task, environment="OMP_NUM_THREADS=1")
    results.records[:] = records(results.data)
    if all(task in results.data["draws"] for task in POOL):
        results.data["selection"] = decide(results.records)
    if not args.markdown_only:
        results.save()
    results.write_markdown(markdown(results.data, results.records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
