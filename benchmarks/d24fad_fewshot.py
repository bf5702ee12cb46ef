"""D²4FAD few-shot benchmark: leave-one-dataset-out over the shared medical tasks.

Regenerate:  python benchmarks/d24fad_fewshot.py
Writes benchmarks/results/d24fad_fewshot.json (+ .md).  Resumable (records already present are skipped).

For each fold the target task is held out: one D²4FAD model is trained on the normal training images of
the other tasks (episodic, K drawn per batch from {2,4,8}), then the target's test split is scored with K
normal supports drawn at random from the target's *training* normals (``--draws`` draws per K).  The same
supports feed the two K-shot baselines: PatchCore-style nearest-neighbour scoring on the teacher's patch
features, and RD4AD trained on the K supports.  Before a fold runs, a pixel-hash check proves no target
test image appears in the training tasks.  No model selection: the last epoch is used.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import numpy as np
import torch

from medad.backbones import build_teacher
from medad.data.leakage import cross_task_overlap
from medad.data.tasks import load_task
from medad.engine.evaluate import evaluate_images, evaluate_rows
from medad.engine.fewshot import draw_supports, encode_queries, evaluate_fewshot, make_episodes, train_fewshot
from medad.engine.images import load_images
from medad.engine.training import TrainConfig, seed_everything
from medad.engine.unsupervised import train_unsupervised
from medad.features import FeatureCache
from medad.models.d24fad import D24FAD, D24FADConfig
from medad.models.patchcore import PatchCoreKShot
from medad.models.rd4ad import RD4AD
from medad.results import BenchmarkResults, images_per_second, mean_std, optimiser_step, peak_rss_mib

TASKS = ["headct", "brainmri", "brain_tumor", "zhanglab", "nih_cxr"]
#: Table 2 rows: name → config overrides (the full model is the main "d24fad" record)
ABLATIONS = {
    "d24fad[tsd-only]": {"use_ssd": False},
    "d24fad[ssd-only]": {"use_tsd": False, "weighting": "uniform"},
    "d24fad[ssd+tsd]": {"weighting": "uniform"},
    "d24fad[ssd+l2w]": {"use_tsd": False},
}
PAPER_BRAIN_TUMOR = {"d24fad": (95.5, 95.3, 95.5), "patchcore": (64.1, 74.0, 78.1), "rd4ad": (62.2, 74.0, 81.4)}
PAPER_TABLE2_BRAIN_TUMOR = {"d24fad[tsd-only]": (55.5, 73.8, 81.1), "d24fad[ssd-only]": (93.9, 93.6, 94.2),
                            "d24fad[ssd+tsd]": (94.9, 95.3, 96.4), "d24fad[ssd+l2w]": (94.0, 94.2, 94.7),
                            "d24fad": (95.1, 96.3, 96.8)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--k", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-queries-per-task", type=int, default=128)
    parser.add_argument("--rd4ad-steps", type=int, default=100, help="steps of the RD4AD-K-shot baseline")
    parser.add_argument("--ablation-folds", nargs="*", default=["headct", "brain_tumor"])
    parser.add_argument("--per-k-fold", default="headct", help="fold where one-model-per-K is compared")
    parser.add_argument("--name", default="d24fad_fewshot")
    return parser.parse_args()


class Fold:
    """Images of one leave-one-out fold, loaded once."""

    def __init__(self, target: str, tasks: list[str], image_size: int) -> None:
        self.target = load_task(target)
        self.train_tasks = [load_task(name) for name in tasks if name != target]
        train_samples = [s for task in self.train_tasks for s in task.train]
        self.overlap = cross_task_overlap(self.target.test, train_samples)
        if self.overlap:
            raise RuntimeError(f"fold {target}: {len(self.overlap)} target test images appear in training tasks")
        self.train_images = {t.name: load_images(t.train, image_size, desc=f"{t.name} train")[0]
                             for t in self.train_tasks}
        self.normals, _ = load_images(self.target.train, image_size, desc=f"{target} normals")
        self.test_images, self.masks = load_images(self.target.test, image_size, desc=f"{target} test")
        self.labels = [s.label for s in self.target.test]


def base_record(method: str, fold: Fold, args, seed: int, k: int | None, draw: int | None) -> dict:
    return {"method": method, "task": fold.target.name, "train_tasks": list(fold.train_images),
            "backbone": args.teacher, "image_size": args.image_size, "k": k, "seed": seed, "support_draw": draw}


def train_d24fad(fold: Fold, args, seed: int, cache: FeatureCache, overrides: dict, ks: tuple[int, ...]):
    seed_everything(seed)
    model = D24FAD(cache.teacher, D24FADConfig(**overrides))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=seed)
    started = time.perf_counter()
    result = train_fewshot(model, fold.train_images, config, ks=ks,
                           max_queries_per_task=args.max_queries_per_task, cache=cache)
    return model, time.perf_counter() - started, result.epochs_done


def evaluate_d24fad(results, fold, args, seed, model, method, ks, draws, train_seconds, epochs) -> None:
    queries = None
    for k in ks:
        for draw in range(draws):
            if results.has(method=method, task=fold.target.name, seed=seed, k=k, support_draw=draw):
                continue
            queries = queries or encode_queries(model, fold.test_images)
            support = draw_supports(len(fold.normals), k, draw, seed)
            evaluation = evaluate_fewshot(model, fold.normals[support], fold.test_images, fold.labels,
                                          fold.masks, queries=queries)
            results.add_record({**base_record(method, fold, args, seed, k, draw), **evaluation.metrics,
                                "train_seconds": train_seconds, "epochs": epochs})
            print(f"{method} {fold.target.name} K={k} draw {draw}: AUROC {evaluation.metrics['image_auroc']:.4f}",
                  flush=True)


def evaluate_baselines(results, fold, args, seed, cache) -> None:
    patchcore = PatchCoreKShot(cache.teacher)
    features = None
    for k in args.k:
        for draw in range(args.draws):
            support = draw_supports(len(fold.normals), k, draw, seed)
            if not results.has(method="patchcore", task=fold.target.name, seed=seed, k=k, support_draw=draw):
                if features is None:
                    features = torch.cat([patchcore.patch_features(fold.test_images[i:i + 32])
                                          for i in range(0, len(fold.test_images), 32)])
                bank = patchcore.prepare_supports(fold.normals[support])
                size = tuple(fold.test_images.shape[-2:])
                evaluation = evaluate_rows(lambda rows: patchcore.score_features(features[rows], bank, size),
                                           len(fold.test_images), fold.labels, fold.masks, 32)
                results.add_record({**base_record("patchcore", fold, args, seed, k, draw), **evaluation.metrics,
                                    "train_seconds": 0.0, "epochs": 0})
            if not results.has(method="rd4ad", task=fold.target.name, seed=seed, k=k, support_draw=draw):
                seed_everything(seed)
                model = RD4AD(cache.teacher)
                epochs = args.rd4ad_steps
                started = time.perf_counter()
                train_unsupervised(model, fold.normals[support], TrainConfig(epochs=epochs, batch_size=k, seed=seed),
                                   cache=cache, desc=f"rd4ad K={k}")
                train_seconds = time.perf_counter() - started
                evaluation = evaluate_images(model.predict, fold.test_images, fold.labels, fold.masks, 32)
                results.add_record({**base_record("rd4ad", fold, args, seed, k, draw), **evaluation.metrics,
                                    "train_seconds": train_seconds, "epochs": epochs})
            print(f"baselines {fold.target.name} K={k} draw {draw} done", flush=True)


def speed_records(results, fold, args, cache) -> None:
    """Scoring with cached support features vs a plain teacher+student forward; training throughput."""
    model = D24FAD(cache.teacher).eval()
    queries = fold.test_images[:32]
    supports = model.prepare_supports(fold.normals[:4])
    common = {"method": "d24fad", "backbone": args.teacher, "image_size": args.image_size, "k": 4,
              "batch_size": len(queries)}

    def plain_forward():
        with torch.no_grad():
            model.student(model.teacher(queries))

    results.add_speed({"what": "teacher_student_forward", **common,
                       "images_per_second": images_per_second(plain_forward, len(queries)),
                       "peak_rss_mib": peak_rss_mib()})
    results.add_speed({"what": "score_query_cached_support", **common,
                       "images_per_second": images_per_second(lambda: model.predict(queries, supports), len(queries)),
                       "peak_rss_mib": peak_rss_mib()})
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.005, betas=(0.5, 0.999))
    name = next(iter(fold.train_images))
    images = fold.train_images[name]
    episode = make_episodes([len(images)], args.batch_size, (4,), 0, 0)[0]
    cached_q, cached_s = cache.features(images[episode.queries]), cache.features(images[episode.supports])

    def uncached():
        with torch.no_grad():
            return model.teacher(images[episode.queries]), model.teacher(images[episode.supports])

    n = len(episode.queries)
    for what, fetch in (("train_step", lambda: (cached_q, cached_s)), ("train_step_no_cache", uncached)):
        results.add_speed({"what": what, **{**common, "batch_size": n},
                           "images_per_second": images_per_second(optimiser_step(lambda: model.loss(*fetch()),
                                                                                  optimizer), n),
                           "peak_rss_mib": peak_rss_mib()})


def markdown(results: BenchmarkResults, args) -> str:
    records = results.records
    ks = sorted({r["k"] for r in records if r["k"] is not None})
    lines = [f"# D²4FAD few-shot, leave-one-dataset-out — teacher `{args.teacher}` (ImageNet, offline), "
             f"{args.image_size} px", "", f"Command: `{results.data['command']}`  ",
             f"Machine: {results.data['machine']}  ",
             f"D²4FAD: {args.epochs} epochs (≤ {args.max_queries_per_task} queries per task per epoch, batch "
             f"{args.batch_size}, K drawn per batch from {{2,4,8}}), last epoch used. Baselines on the same supports: "
             f"PatchCore K-shot (no training), RD4AD trained {args.rd4ad_steps} steps on the K supports. "
             f"Image AUROC (%), mean ± std over support draws × seeds. The paper uses WideResNet-50 and other "
             f"data sets except Brain Tumor.", "",
             "| task | method | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    main_methods = ["d24fad", "patchcore", "rd4ad"]
    for task in [t for t in args.tasks if any(r["task"] == t for r in records)]:
        for method in main_methods:
            cells = [mean_std(r["image_auroc"] for r in records
                              if r["task"] == task and r["method"] == method and r["k"] == k) for k in ks]
            lines.append(f"| {task} | {method} | " + " | ".join(cells) + " |")
    lines += ["", "Mean over tasks (per task mean first):", "", "| method | " + " | ".join(f"K={k}" for k in ks) + " |",
              "|---|" + "---|" * len(ks)]
    for method in main_methods:
        cells = []
        for k in ks:
            per_task = [np.mean([r["image_auroc"] for r in records if r["task"] == t and r["method"] == method
                                 and r["k"] == k]) for t in args.tasks
                        if any(r["task"] == t and r["method"] == method and r["k"] == k for r in records)]
            cells.append(f"{100 * np.mean(per_task):.1f} ({len(per_task)} tasks)" if per_task else "—")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "Paper, Brain Tumor (Table 1, WRN-50): " + "; ".join(
        f"{m} {'/'.join(map(str, v))}" for m, v in PAPER_BRAIN_TUMOR.items()) + " (K=2/4/8)."]
    ablation = [r for r in records if r["method"].startswith("d24fad[") or r["method"] == "d24fad"]
    if any(r["method"].startswith("d24fad[") for r in ablation):
        lines += ["", "## Table 2 ablation (our folds; paper: Brain Tumor, WRN-50)", "",
                  "| task | variant | " + " | ".join(f"K={k}" for k in ks) + " | paper Brain Tumor |",
                  "|---|---|" + "---|" * (len(ks) + 1)]
        for task in args.ablation_folds:
            for method in [*ABLATIONS, "d24fad"]:
                cells = [mean_std(r["image_auroc"] for r in ablation if r["task"] == task and r["method"] == method
                                  and r["k"] == k and (r["support_draw"] == 0)) for k in ks]
                paper = "/".join(map(str, PAPER_TABLE2_BRAIN_TUMOR[method]))
                lines.append(f"| {task} | {method} | " + " | ".join(cells) + f" | {paper} |")
    per_k = [r for r in records if r["method"].startswith("d24fad[k=")]
    if per_k:
        lines += ["", f"## One model for all K vs one model per K ({args.per_k_fold} fold, same draws)", "",
                  "| model | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
        for method in ["d24fad", *sorted({r["method"] for r in per_k})]:
            cells = [mean_std(r["image_auroc"] for r in records if r["task"] == args.per_k_fold
                              and r["method"] == method and r["k"] == k) for k in ks]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    speed = results.data["speed"]
    if speed:
        lines += ["", "## Speed (same run)", "", "| what | batch | images/s | peak RSS MiB |", "|---|---|---|---|"]
        lines += [f"| {s['what']} | {s['batch_size']} | {s['images_per_second']:.1f} | {s['peak_rss_mib']:.0f} |"
                  for s in speed]
        by = {s["what"]: s["images_per_second"] for s in speed}
        if "teacher_student_forward" in by and "score_query_cached_support" in by:
            lines.append(f"\nScoring latency ratio (cached-support scoring / plain teacher+student forward): "
                         f"**{by['teacher_student_forward'] / by['score_query_cached_support']:.2f}×**")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    command = ("python benchmarks/d24fad_fewshot.py " + shlex.join(sys.argv[1:])).strip()
    results = BenchmarkResults(args.name, command)
    cache = FeatureCache(build_teacher(args.teacher))
    leakage = {}
    for target in args.tasks:
        fold = Fold(target, args.tasks, args.image_size)
        leakage[target] = {"train_tasks": list(fold.train_images), "target_test_images": len(fold.target.test),
                           "pixel_identical_in_training": len(fold.overlap)}
        results.data["leakage_checks"] = leakage
        for seed in args.seeds:
            variants = {"d24fad": ({}, tuple(args.k))}
            if target in args.ablation_folds and seed == args.seeds[0]:
                variants.update({name: (overrides, tuple(args.k)) for name, overrides in ABLATIONS.items()})
            if target == args.per_k_fold and seed == args.seeds[0]:
                variants.update({f"d24fad[k={k}]": ({}, (k,)) for k in args.k})
            for method, (overrides, train_ks) in variants.items():
                eval_ks = train_ks
                draws = args.draws if method in ("d24fad",) or method.startswith("d24fad[k=") else 1
                if all(results.has(method=method, task=target, seed=seed, k=k, support_draw=d)
                       for k in eval_ks for d in range(draws)):
                    continue
                model, seconds, epochs = train_d24fad(fold, args, seed, cache, overrides, train_ks)
                model.eval()
                evaluate_d24fad(results, fold, args, seed, model, method, eval_ks, draws, seconds, epochs)
            evaluate_baselines(results, fold, args, seed, cache)
        results.write_markdown(markdown(results, args))
        if target == args.tasks[-1]:
            speed_records(results, fold, args, cache)
            results.write_markdown(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
