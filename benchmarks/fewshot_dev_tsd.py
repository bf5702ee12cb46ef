"""Rounds 9 and 10 of issue 22: D²4FAD-NN's teacher→student map added to support scoring (and to the adapted student),
its weight gated per support set from the supports alone, on the widened development pool by inner leave-one-task-out
(no test split of a reported fold is read); round 10, the map's unit taken from the most similar support.

Regenerate:  OMP_NUM_THREADS=1 python benchmarks/fewshot_dev_tsd.py
Writes benchmarks/results/fewshot_dev_tsd.json (+ .md).  Needs round 8's models (``benchmarks/.runs/
fewshot_dev_learned/<task>``, made by ``benchmarks/fewshot_dev_learned.py``) and round 5's saved draws
(``benchmarks/results/fewshot_dev_gate.json``, made by ``benchmarks/fewshot_dev_gate.py``).  Resumable per task;
``--tasks`` splits the work between processes.

Round 8 found D²4FAD-NN's teacher→student map worth +9 to +24 points where abnormal images differ from the task's
normals as a whole (brain_tumor, pituitary, ISIC, NIH, the synthetic head-CT lesions) and −2 to −19 where only the K
supports tell the task's normals apart (BraTS slices, ZhangLab, ACRIMA); its fixed standardisation cannot turn the map
down on such a task.  Here that map becomes a third term with a weight of its own:

* the *T→S term* of a query: the top-1 % score of the teacher→student map of the task's round-8 model (trained on
  the other sources' normals; the model's ``tsd`` map, smoothed as it is there), divided by its mean over the K
  supports.  The model never saw the supports, so the unit is a held-out one, as the adapted student's is;
* the *bases*, round 5's saved terms on the same draws: ``support`` (views + top-1 %, in the supports' leave-one-out
  units) and ``adapted`` (that plus ¼ times the adapted student's term in held-out units: the product's default,
  ``--method adapted_student``);
* a row's score is base + W × T→S term; W from ``WEIGHTS`` (W = 0 reproduces the base);
* round 10 (``tsd/nn`` rows, stated after round 9 had been run and read): the T→S score divided by that of the
  support most similar to the query as a whole (cosine of the pooled deepest teacher features) instead of the
  supports' mean.  Round 9's T→S term ranks BraTS slices below chance: the model rebuilds normal slices unlike
  the tumour slices (the top and bottom of the head) worse than the tumour slices; against a support of the same
  kind, a normal query's ratio is near 1 whatever the slice.

The gate of rounds 5–7 chooses W per support set from statistics of the K supports alone, before any query is
scored:

* ``familiarity``: log(mean T→S score of the supports / the model's reference), the reference being the mean T→S score
  of 16 training normals of each task the model was trained on (evenly spaced): how much less well the model
  rebuilds this task's normals than the normals it learned.  A task whose normals it does not know is where its map
  flags normal variation;
* ``tsd_spread``: log(coefficient of variation of the supports' T→S scores / that of the support term's
  leave-one-out scores): which term scores the task's normals more consistently;
* ``k``: log2 K.

Rows, for each base and T→S term: ``BASE+TERM w=W`` for each W > 0 of ``WEIGHTS``; ``BASE+TERM gate[S]`` for S a
statistic, ``gate[constant]`` and ``gate[any]``: fitted as in ``fewshot_dev_gate.fit_gate`` on the other nine tasks'
draws and applied to the task's own.

The rules, written in ``docs/METHODS.md`` (rounds 9 and 10) before each round was run:
* a fourth look at the test folds: the rule of rounds 4 to 8 (``fewshot_dev_tta.apply_rule``) over these rows;
* the product's default few-shot scorer becomes the best guarded row of this benchmark if its mean beats the adapted
  student's (its gate fitted on all ten tasks, ``selection``); otherwise it stays the adapted student.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from fewshot_dev_gate import WEIGHTS, _gate_text, _variation, describe, fit_gate, gate_table, gate_weight
from fewshot_dev_learned import IMAGE_SIZE, KS, METHOD, SEED
from fewshot_dev_research import POOL, summary, task_images
from fewshot_dev_tta import GUARD, RECIPE, TEACHER, apply_rule, evaluation_samples, pool_arguments, pool_table, run_pending_tasks
from sklearn.metrics import roc_auc_score

from medad.data.images import load_images
from medad.data.near_duplicates import drop_near_duplicates
from medad.data.registry import list_tasks
from medad.engine.fewshot import draw_supports
from medad.engine.generic_student import own_sources, source_samples
from medad.models.adapted_student import AdaptedStudentConfig
from medad.models.d24fad_nn import D24FADNN
from medad.models.factory import load_trained_model
from medad.models.registry import method_info
from medad.models.support_scoring import SupportScoring, reduce_map
from medad.results import BenchmarkResults, benchmark_command
from medad.scoring import anomaly_maps, cosine_distance_map

#: base → weight of round 5's student term in it
BASES = {"support": 0.0, "adapted": 0.25}
#: the adapted student of round 5's terms (its weight is the base's)
ADAPTED_CONFIG = AdaptedStudentConfig(steps=50, student_scale="held_out")
#: T→S term → the unit its query scores are divided by
TERM_UNITS = {"tsd": "supports_mean", "tsd/nn": "nearest_support"}
#: T→S term → its value per query from (the queries' T→S scores, the supports', each query's most similar support):
#: in units of the supports' mean (round 9) or of the most similar support's own score (round 10)
TERMS = {"tsd": lambda queries, supports, nearest: queries / max(float(supports.mean()), 1e-6),
         "tsd/nn": lambda queries, supports, nearest: queries / np.maximum(supports[nearest], 1e-6)}
STATISTICS = ("familiarity", "tsd_spread", "k")
#: gate rows: name → the statistics a gate may use (None: a constant weight)
GATES = {"gate[constant]": (None,), **{f"gate[{s}]": (s,) for s in STATISTICS}, "gate[any]": (None, *STATISTICS)}
#: training normals per training task behind a model's reference T→S level
REFERENCE_PER_TASK = 16
#: images through the model at once
CHUNK = 32


def parse_args() -> argparse.Namespace:
    parser = pool_arguments(__doc__)
    parser.add_argument("--name", default="fewshot_dev_tsd")
    parser.add_argument("--runs", default="benchmarks/.runs/fewshot_dev_learned", help="round 8's run folders")
    parser.add_argument("--gate-results", default="benchmarks/results/fewshot_dev_gate.json",
                        help="round 5's saved draws (the support and student terms)")
    return parser.parse_args()


@torch.no_grad()
def tsd_scores(model: D24FADNN, images: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """The top-1 % score of the model's teacher→student map of each image, and the image's pooled teacher feature
    (its deepest stage averaged and L2-normalised, as support scoring's whole-image term has it)."""
    scores, pooled = [], []
    for i in range(0, len(images), CHUNK):
        q = model.encode_queries(images[i:i + CHUNK])
        maps = anomaly_maps([cosine_distance_map(t, z) for t, z in zip(q.teacher, q.student, strict=True)],
                            q.image_size, model.config.sigma)
        scores.append(reduce_map(maps, "top1"))
        pooled.append(SupportScoring.encoding_from_teacher(q.teacher, q.image_size).pooled)
    return torch.cat(scores).numpy(), torch.cat(pooled)


def reference_level(model: D24FADNN, task: str, args: argparse.Namespace) -> tuple[float, list[str]]:
    """The model's reference T→S level (module doc) and the tasks behind it (those the model was trained on; images
    that near-copy the pool task's evaluation images left out, as in training)."""
    avoid = evaluation_samples(task, args)
    trained_on = sorted(set(list_tasks()) - own_sources(task, list_tasks()))
    scores = []
    for name in trained_on:
        kept, _ = drop_near_duplicates(source_samples(name, REFERENCE_PER_TASK), avoid, why=f"{task} evaluation")
        scores.append(tsd_scores(model, load_images(kept, IMAGE_SIZE, workers=0)[0])[0])
    return float(np.concatenate(scores).mean()), trained_on


def run_task(results: BenchmarkResults, _teacher: None, task: str, args: argparse.Namespace) -> None:
    """The T→S scores of a task's queries and of every draw's supports, each query's most similar support per draw,
    and the model's reference level (each round-8 model carries its own teacher)."""
    model, _ = load_trained_model(Path(args.runs) / task, expected_method="d24fad_nn")
    pool, images, labels = task_images(task, args, IMAGE_SIZE)
    reference, trained_on = reference_level(model, task, args)
    queries, query_pooled = tsd_scores(model, images)
    draws = []
    for seed, k, draw in itertools.product(args.seeds, args.k, range(args.draws)):
        supports, _ = load_images([pool[i] for i in draw_supports(len(pool), k, draw, seed=seed)], IMAGE_SIZE,
                                  workers=0)
        scores, pooled = tsd_scores(model, supports)
        draws.append({"seed": seed, "k": k, "draw": draw, "supports": scores.tolist(),
                      "nearest": (query_pooled @ pooled.T).argmax(dim=1).tolist()})
    results.data["tsd"][task] = {"labels": labels.tolist(), "queries": queries.tolist(), "reference": reference,
                                 "reference_tasks": trained_on, "draws": draws}


def task_done(tsd: dict, task: str) -> bool:
    """Whether a task's scores are saved, round 10's most similar supports included (round 9 ran without them)."""
    return task in tsd and all("nearest" in d for d in tsd[task]["draws"])


# --- rows: computed from the saved scores ------------------------------------------------------------------------


def draw_statistics(tsd_supports: np.ndarray, reference: float, support_loo: np.ndarray, k: int) -> dict[str, float]:
    """The gate's statistics (module doc) of one support set, from its supports' scores only."""
    return {"familiarity": float(np.log(max(float(tsd_supports.mean()), 1e-6) / reference)),
            "tsd_spread": float(np.log(_variation(tsd_supports) / _variation(support_loo))),
            "k": float(np.log2(k))}


def draw_table(tsd: dict, gate_draws: dict, base: str, term: str) -> dict[str, list[dict]]:
    """Per task, per draw: PatchCore-K's AUROC (%), base + W × T→S term's for each W of ``WEIGHTS``, the statistics
    (the table of ``fewshot_dev_gate.fit_gate``)."""
    table = {}
    for task, saved in tsd.items():
        if not task_done(tsd, task):
            continue
        labels, round5 = np.array(saved["labels"]), gate_draws[task]
        if saved["labels"] != round5["labels"]:
            raise ValueError(f"{task}: round 5's queries are not this run's")
        queries = np.array(saved["queries"])
        rows = []
        for mine, theirs in zip(saved["draws"], round5["draws"], strict=True):
            key = (mine["seed"], mine["k"], mine["draw"])
            if key != (theirs["seed"], theirs["k"], theirs["draw"]):
                raise ValueError(f"{task}: round 5's draws are not this run's")
            supports = np.array(mine["supports"])
            values = TERMS[term](queries, supports, np.array(mine["nearest"]))
            scores = np.array(theirs["support_term"]) + BASES[base] * np.array(theirs["student_term"])
            rows.append({"patchcore": 100 * roc_auc_score(labels, theirs["patchcore"]),
                         "weights": [100 * roc_auc_score(labels, scores + w * values) for w in WEIGHTS],
                         "statistics": draw_statistics(supports, saved["reference"], np.array(theirs["support_loo"]),
                                                       mine["k"]),
                         "key": key})
        table[task] = rows
    return table


def records_and_gates(tsd: dict, gate_draws: dict) -> tuple[list[dict], dict[str, dict]]:
    """Records of every row (the gate rows by inner leave-one-task-out) and each gate row's fitted gates."""
    records, fitted = [], {}

    def add(row: str, task: str, key: tuple, auroc: float) -> None:
        records.append({"method": row, "task": task, "seed": key[0], "k": key[1], "support_draw": key[2],
                        "backbone": TEACHER, "image_size": IMAGE_SIZE, "protocol": "development",
                        "features": f"lite0@{IMAGE_SIZE}", "image_auroc": auroc / 100})

    tasks = [t for t in POOL if task_done(tsd, t)]
    for base, term in itertools.product(BASES, TERMS):
        table = draw_table(tsd, gate_draws, base, term)
        for task in tasks:
            for r in table[task]:
                if (base, term) == ("support", "tsd"):
                    add("patchcore", task, r["key"], r["patchcore"])
                if term == "tsd":
                    add(base, task, r["key"], r["weights"][0])
                for w, auroc in zip(WEIGHTS[1:], r["weights"][1:], strict=True):
                    add(f"{base}+{term} w={w:g}", task, r["key"], auroc)
        if len(tasks) < len(POOL):
            continue
        for row, kinds in GATES.items():
            name = f"{base}+{term} {row}"
            fitted[name] = {}
            for task in tasks:
                gate = fit_gate(table, [t for t in tasks if t != task], kinds)
                fitted[name][task] = describe(gate)
                for r in table[task]:
                    add(name, task, r["key"], r["weights"][gate_weight(gate, r["statistics"])])
    return records, fitted


def select(tsd: dict, gate_draws: dict, records: list[dict]) -> dict:
    """The pre-stated rules (module doc): the fourth-look rule over the rows that add the T→S term, and the chosen
    row's gate fitted on all ten tasks; the product rule against the adapted student."""
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    selection = apply_rule(rows, excluded=set(BASES))
    chosen = selection["chosen"]
    if chosen is not None:
        base, rest = chosen.split("+", 1)
        term, row = rest.split(" ", 1)
        selection["base"], selection["term"] = base, term
        selection["gate"] = (describe(fit_gate(draw_table(tsd, gate_draws, base, term), POOL, GATES[row]))
                             if row in GATES
                             else {"statistic": None, "weight": float(row.removeprefix("w="))})
        adapted = rows["adapted"]["mean"]
        selection["product_default"] = {"adapted_student_mean": adapted,
                                        "changes": rows[chosen]["mean"] > adapted}
        selection["scorer"] = {"adapted_student": {**ADAPTED_CONFIG.as_dict(), "weight": BASES[base]},
                               "generic_recipe": RECIPE.as_dict(), "tsd_unit": TERM_UNITS[term],
                               "tsd_model": {"method": METHOD, "epochs": method_info(METHOD).training.epochs,
                                             "ks": list(KS), "image_size": IMAGE_SIZE, "teacher": TEACHER}}
    return selection


def markdown(data: dict, records: list[dict], fitted: dict[str, dict]) -> str:
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    lines = ["# Rounds 9 and 10: D²4FAD-NN's teacher→student map as a gated third term (issue 22, development pool)",
             "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {sum(data['seconds'].values()) / 60:.1f} min of process time recorded per task (scoring only; "
             "the models are round 8's, the support and student terms round 5's)", "",
             "Module doc of `benchmarks/fewshot_dev_tsd.py`: EfficientNet-Lite0 at 128 px, the pool and draws of "
             "`fewshot_dev_tta`. `support` = views + top-1 %; `adapted` = that + ¼ × the adapted student (the "
             "product's default); `+tsd` adds W × the task's round-8 D²4FAD-NN teacher→student term in units of its "
             "mean over the supports (round 9), `+tsd/nn` in units of the query's most similar support's (round 10). "
             "Image AUROC (%), mean over K and draws per task; Δ = mean minus PatchCore-K's "
             f"on the same supports; guard ✓ = no task more than {GUARD:g} point below PatchCore-K. `gate[…]` rows: "
             "each task's gate fitted on the other nine tasks.", ""]
    done = [t for t in POOL if task_done(data["tsd"], t)]
    if len(done) < len(POOL):
        lines += [f"**Incomplete: {len(done)} of {len(POOL)} tasks done; means are over those; the gates are fitted "
                  "and the rules applied once every task is done.**", ""]
    lines += pool_table(rows)
    if fitted:
        lines += gate_table(fitted)
    selection = data.get("selection")
    if selection:
        lines += ["", "## The pre-stated rules", "", f"Fourth look: {selection['rule']}.", ""]
        chosen = selection["chosen"]
        if chosen is None:
            lines.append("No row passes the guard → **not met**: the test folds are not read; the product default "
                         "stays the adapted student.")
        else:
            c, default = selection["candidates"][chosen], selection["product_default"]
            lines += [f"Best guarded row: `{chosen}`, {c['difference']:+.2f} points over PatchCore-K (worst task "
                      f"{c['worst_task_difference']:+.1f}); fitted on all ten tasks: {_gate_text(selection['gate'])} → "
                      + ("**met**: a fourth look at the test folds" if selection["met"]
                         else "**not met**: the test folds are not read"), "",
                      f"Product default: the adapted student's mean is {default['adapted_student_mean']:.2f} → "
                      + ("**the default changes to this row**" if default["changes"]
                         else "**unchanged** (the adapted student)")]
    lines += ["", "Reference T→S level of each task's model (mean over 16 training normals of each training task): "
              + ", ".join(f"{t} {data['tsd'][t]['reference']:.4f}" for t in done)]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_tsd.py",
                                                                    pieces=("--tasks", "--markdown-only")),
                               keep=lambda record: False)
    for key in ("tsd", "seconds"):
        results.data.setdefault(key, {})
    if tuple(args.k) != KS or list(args.seeds) != [SEED]:
        raise SystemExit("round 9 scores round 5's draws: K 2 4 8, seed 0")
    if not args.markdown_only:
        run_pending_tasks(results, None, args, lambda task: task_done(results.data["tsd"], task), run_task)
    results.refresh()  # the tasks another process saved since this one's last save
    gate_draws = json.loads(Path(args.gate_results).read_text())["draws"]
    records, fitted = records_and_gates(results.data["tsd"], gate_draws)
    results.records[:] = records
    if fitted:
        results.data["fitted"] = fitted
        results.data["selection"] = select(results.data["tsd"], gate_draws, records)
    if not args.markdown_only:  # the JSON holds the selection of the test run (fewshot_loo.py): left as committed
        results.save()
    results.write_markdown(markdown(results.data, records, fitted))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
