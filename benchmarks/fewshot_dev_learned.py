"""Round 8 of issue 22: medad's default few-shot model, D²4FAD-NN, on the widened development pool by inner
leave-one-task-out (no test split of a reported fold is read).

Regenerate:  OMP_NUM_THREADS=1 python benchmarks/fewshot_dev_learned.py
Writes benchmarks/results/fewshot_dev_learned.json (+ .md).  Resumable: each task's model trains in
``benchmarks/.runs/fewshot_dev_learned/<task>`` and continues from its last finished epoch; teacher features are
cached under ``benchmarks/.cache``; a task's records are saved once its draws are scored; ``--tasks`` splits the work
between processes.

Until this round D²4FAD-NN, the product's default few-shot scorer, had been measured only on folds that were not
near-duplicate-clean (``fewshot_loo_leaky``) and, as the bundled model, on its held-out task (headct). The issue asks
the product to recommend what beats PatchCore-K on the development pool.  Here, for each task of the pool of
``benchmarks/fewshot_dev_tta.py`` (same images, draws and subsample; Lite0 at 128 px), a D²4FAD-NN is trained as the
bundled model is (``benchmarks/bundled_model.py``: default configuration, 64 epochs, batch 8, at most 64 queries per
task and epoch, K ∈ {2, 4, 8}, seed 0) on the normal training images of every registered task except the pool task's
own sources (``medad.engine.generic_student.own_sources``: brain_tumor and brainmri count as one), each without the
images that near-copy one of the task's evaluation images.  Each draw of K supports is then scored by it and by
PatchCore-K (``patchcore``).

The rules, written in ``docs/METHODS.md`` (round 8) before this benchmark was run:
* a fourth look at the test folds: the rule of rounds 4 to 7 (``fewshot_dev_tta.apply_rule``), D²4FAD-NN the
  candidate;
* the product's default few-shot scorer: among PatchCore-K, round 4b's adapted student (its row and figures in
  ``fewshot_dev_tta.json``, the same draws) and D²4FAD-NN, the best mean image AUROC over the pool of those with no
  task more than 1 point below PatchCore-K (PatchCore-K itself always qualifies) (``product_default``).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from fewshot_dev_research import POOL, summary, task_images
from fewshot_dev_tta import (GUARD, TEACHER, apply_rule, evaluation_samples, pool_arguments, pool_table, record,
                             run_pending_tasks)

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.data.near_duplicates import drop_near_duplicates
from medad.data.registry import list_tasks
from medad.data.tasks import Sample, load_task
from medad.engine.fewshot import draw_supports, train_fewshot
from medad.engine.generic_student import own_sources
from medad.engine.training import TrainConfig, seed_everything
from medad.features import FeatureCache
from medad.models.d24fad_nn import D24FADNN, D24FADNNConfig
from medad.models.registry import method_info
from medad.models.support_scoring import SupportScoring, SupportScoringConfig
from medad.results import BenchmarkResults, benchmark_command

METHOD, IMAGE_SIZE, SEED, KS = "d24fad_nn", 128, 0, (2, 4, 8)
#: round 4b's adapted-student row (``--method adapted_student``), read from fewshot_dev_tta.json
ADAPTED_ROW = "views+top1+student[50,0.25,held_out]"
#: queries scored at once
CHUNK = 32


def parse_args():
    parser = pool_arguments(__doc__)
    parser.add_argument("--name", default="fewshot_dev_learned")
    parser.add_argument("--runs", default="benchmarks/.runs/fewshot_dev_learned")
    parser.add_argument("--feature-cache", default="benchmarks/.cache", help="teacher features of training images")
    parser.add_argument("--tta-results", default="benchmarks/results/fewshot_dev_tta.json",
                        help="round 4's results (the adapted student's row for the product rule)")
    return parser.parse_args()


def training_images(task: str, avoid: list[Sample]) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The training tasks of a model for ``task`` (every registered task but its own sources): their normal
    training images without the near-copies of ``avoid`` (the images it will score), and per task how many images
    it has and how many were dropped."""
    left_out = own_sources(task, list_tasks())
    images, counts = {}, {}
    for name in list_tasks():
        if name in left_out:
            continue
        train, dropped = drop_near_duplicates(load_task(name, seed=SEED).train, avoid, why=f"{task} evaluation")
        images[name] = load_images(train, IMAGE_SIZE, desc=f"loading {name}")[0]
        counts[name] = {"train_images": len(train), "dropped_near_copies": len(dropped)}
    return images, counts


def trained_model(task: str, avoid: list[Sample], teacher, run_dir: Path, feature_cache: str, seed: int = SEED
                  ) -> tuple[D24FADNN, dict]:
    """A D²4FAD-NN for ``task`` trained as the bundled model is (module doc) with ``seed`` on
    :func:`training_images` (or resumed: a finished run is loaded) in ``run_dir``, and what it was trained on."""
    images, counts = training_images(task, avoid)
    budget = method_info(METHOD).training
    seed_everything(seed)
    model = D24FADNN(teacher, D24FADNNConfig())
    config = TrainConfig(epochs=budget.epochs, batch_size=budget.batch_size, lr=budget.lr, seed=seed)
    result = train_fewshot(model, images, config, ks=KS, max_queries_per_task=budget.max_queries_per_task,
                           out_dir=run_dir, resume=True, cache=FeatureCache(teacher, cache_dir=feature_cache))
    return model.eval(), {"tasks": counts, "left_out": sorted(own_sources(task, list_tasks())),
                          "epochs": result.epochs_done, "train_seconds": round(result.train_seconds, 1)}


def run_task(results: BenchmarkResults, teacher, task: str, args) -> None:
    """Train the task's model and score every draw with it and with PatchCore-K."""
    model, trained_on = trained_model(task, evaluation_samples(task, args), teacher, Path(args.runs) / task,
                                      args.feature_cache)
    results.data["trained_on"][task] = trained_on
    pool, images, labels = task_images(task, args, IMAGE_SIZE)
    patchcore = SupportScoring(teacher, SupportScoringConfig())
    with torch.no_grad():
        queries = [model.encode_queries(images[i:i + CHUNK]) for i in range(0, len(images), CHUNK)]
        plain = SupportScoring.encoding_from_teacher(teacher(images), tuple(images.shape[-2:]))
        for key in itertools.product(args.seeds, args.k, range(args.draws)):
            seed, k, draw = key
            supports, _ = load_images([pool[i] for i in draw_supports(len(pool), k, draw, seed=seed)], IMAGE_SIZE,
                                      workers=0)
            bank = model.prepare_supports(supports)
            record(results, METHOD, task, key, labels, torch.cat([model.score_encoded(q, bank)[1] for q in queries]))
            record(results, "patchcore", task, key, labels,
                   patchcore.score_encoded(plain, patchcore.prepare_supports(supports))[1])


def product_default(rows: dict[str, dict], tta_rows: dict[str, dict]) -> dict:
    """The product rule (module doc): the best guarded mean among PatchCore-K, the adapted student and D²4FAD-NN."""
    base = rows["patchcore"]
    contenders = {"patchcore": base, "adapted_student": tta_rows[ADAPTED_ROW], METHOD: rows[METHOD]}
    if any(abs(tta_rows["patchcore"]["tasks"][t] - base["tasks"][t]) > 1e-9 for t in POOL):
        raise ValueError("fewshot_dev_tta's PatchCore-K differs from this run's: the draws are not the same")
    figures = {name: {"mean": r["mean"], "difference": r["mean"] - base["mean"],
                      "worst_task_difference": min(r["tasks"][t] - base["tasks"][t] for t in POOL)}
               for name, r in contenders.items()}
    guarded = [name for name, f in figures.items() if f["worst_task_difference"] >= -GUARD]
    return {"contenders": figures, "chosen": max(guarded, key=lambda name: figures[name]["mean"])}


def tta_rows(path: str) -> dict[str, dict]:
    """The rows of round 4's results (``fewshot_dev_tta.json``)."""
    return summary(json.loads(Path(path).read_text())["records"])[f"lite0@{IMAGE_SIZE}"]


def markdown(data: dict, records: list[dict]) -> str:
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    done = [t for t in POOL if t in data["trained_on"]]
    lines = ["# Round 8: D²4FAD-NN on the widened development pool (issue 22)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {sum(data['seconds'].values()) / 60:.1f} min of process time recorded per task (training "
             "included)", "",
             "Module doc of `benchmarks/fewshot_dev_learned.py`: for each pool task a D²4FAD-NN (default configuration, "
             "the bundled model's training) trained on the other registered tasks' normal training images "
             "(inner leave-one-task-out), scored on the draws of `fewshot_dev_tta`; EfficientNet-Lite0 at 128 px. "
             "Image AUROC (%), mean over K and draws per task; Δ = mean minus PatchCore-K's on the same supports; "
             f"guard ✓ = no task more than {GUARD:g} point below PatchCore-K.", ""]
    if len(done) < len(POOL):
        lines += [f"**Incomplete: {len(done)} of {len(POOL)} tasks done; means are over those; the rules are applied "
                  "once every task is done.**", ""]
    lines += pool_table(rows)
    selection, default = data.get("selection"), data.get("product_default")
    if selection:
        chosen = selection["chosen"]
        c = selection["candidates"][METHOD]
        lines += ["", "## The pre-stated rules", "", f"Fourth look: {selection['rule']}. D²4FAD-NN: "
                  f"{c['difference']:+.2f} points (worst task {c['worst_task_difference']:+.1f}) → "
                  + ("**met**" if selection["met"] else "**not met**: the test folds are not read")
                  + ("" if chosen else " (it does not pass the guard)"), ""]
    if default:
        lines += ["Product default (the best guarded mean among these, same draws):", "",
                  "| scorer | mean | Δ | worst task Δ |", "|---|---|---|---|"]
        lines += [f"| {name} | {f['mean']:.2f} | {f['difference']:+.2f} | {f['worst_task_difference']:+.1f} |"
                  for name, f in default["contenders"].items()]
        lines += ["", f"→ **{default['chosen']}**"]
    lines += ["", "Training sets (normal training images; near-copies of the task's evaluation images dropped):", ""]
    lines += [f"- {task} (left out: {', '.join(t['left_out'])}; {t['epochs']} epochs, {t['train_seconds'] / 60:.0f} "
              "min): " + ", ".join(f"{name} {c['train_images']}" + (f" (−{c['dropped_near_copies']})"
                                                                     if c["dropped_near_copies"] else "")
                                   for name, c in t["tasks"].items())
              for task, t in data["trained_on"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_learned.py",
                                                                    pieces=("--tasks", "--markdown-only")))
    for key in ("trained_on", "seconds"):
        results.data.setdefault(key, {})
    if not args.markdown_only:
        run_pending_tasks(results, build_teacher(TEACHER), args, lambda task: results.has(task=task, method=METHOD),
                          run_task)
    results.refresh()  # the tasks another process saved since this one's last save
    if all(results.has(task=task, method=METHOD) for task in POOL):
        rows = summary(results.records)[f"lite0@{IMAGE_SIZE}"]
        results.data["selection"] = apply_rule({row: rows[row] for row in ("patchcore", METHOD)})
        results.data["product_default"] = product_default(rows, tta_rows(args.tta_results))
        results.save()
    results.write_markdown(markdown(results.data, results.records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
