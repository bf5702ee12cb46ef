"""RD4AD with an offline ImageNet teacher on the shared medical sets (issue: RD4AD baseline).

Regenerate:  python benchmarks/rd4ad_unsupervised.py
Writes benchmarks/results/rd4ad_unsupervised.json (+ .md).  Resumable: re-running the same command
skips the (task, seed) records already written; ``--tasks`` / ``--seeds`` (re)run a part into the same file (delete a
task's records to regenerate it).  Speed is measured once (``--remeasure-speed`` to redo it).

Training length is set in optimiser steps, not epochs, so that the 1341-image ZhangLab set and the
60-image HeadCT set get comparable optimisation: epochs = max(1, round(steps / batches_per_epoch)).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from medad.backbones import build_teacher
from medad.data.tasks import load_task
from medad.engine.evaluate import evaluate_images
from medad.data.images import load_images
from medad.engine.training import TrainConfig, seed_everything
from medad.engine.unsupervised import train_unsupervised
from medad.features import FeatureCache
from medad.models.rd4ad import RD4AD
from medad.results import (BenchmarkResults, add_one_class_speed, benchmark_command, group_records, mean_std,
                           speed_table)

TASKS = ["headct", "brainmri", "zhanglab", "nih_cxr", "brats_slices"]
PAPER_RD4AD = {"headct": 74.3, "zhanglab": 87.5, "brainmri": 80.9}  # PDD Table 1, RD4AD row (WRN-50, 256 px)
PAPER_NAMES = {"headct": "HeadCT", "brainmri": "BrainMRI", "zhanglab": "ZhangLab", "nih_cxr": "NIH CXR (64 px source, upsampled)",
               "brats_slices": "BraTS slices"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per training run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--name", default="rd4ad_unsupervised")
    parser.add_argument("--remeasure-speed", action="store_true", help="redo the speed records already present")
    return parser.parse_args()


def speed_records(results: BenchmarkResults, images: torch.Tensor, args: argparse.Namespace) -> None:
    """Cached vs uncached training throughput (and teacher+student inference), same process, same batch."""
    for backbone, weights in ((args.teacher, "imagenet"), ("wide_resnet50_2", None)):
        teacher = build_teacher(backbone, weights=weights)
        model = RD4AD(teacher)
        batch = images[: args.batch_size]
        optimizer = torch.optim.Adam(model.student.parameters(), lr=0.005, betas=(0.5, 0.999))
        common = {"method": "rd4ad", "backbone": backbone + ("" if weights else " (random weights)"),
                  "image_size": args.image_size, "k": None, "batch_size": len(batch)}
        add_one_class_speed(results, model, optimizer, batch, common)


def markdown(results: BenchmarkResults, args: argparse.Namespace) -> str:
    lines = [f"# RD4AD, unsupervised — teacher `{args.teacher}` (ImageNet, offline), {args.image_size} px",
             "", f"Command: `{results.data['command']}`  ", f"Machine: {results.data['machine']}  ",
             f"Training: {args.steps} Adam steps per run (batch {args.batch_size}, lr 0.005, β=(0.5, 0.999)), "
             f"cached teacher features; image score = max of the σ=4 smoothed map. Mean ± std over seeds.",
             "", "| task | n normal / abnormal | seeds | epochs | AUROC | AP | F1-max | pixel AUROC | pixel AUPRO "
             "| paper RD4AD AUROC (WRN-50, 256 px) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for (task,), records in group_records(results.records, ("task",)).items():
        first = records[0]
        paper = PAPER_RD4AD.get(task)
        lines.append(
            f"| {PAPER_NAMES.get(task, task)} | {first['n_test_normal']} / {first['n_test_abnormal']} | "
            f"{len(records)} | {first['epochs']} | {mean_std(r['image_auroc'] for r in records)} | "
            f"{mean_std(r['image_ap'] for r in records)} | {mean_std(r['image_f1max'] for r in records)} | "
            f"{mean_std(r['pixel_auroc'] for r in records)} | {mean_std(r['pixel_aupro'] for r in records)} | "
            f"{paper if paper is not None else '—'} |")
    if any(r["task"] == "brats_slices" for r in results.records):
        lines += ["", "BraTS slices: all 64 normal slices of the one volume lie *below* the tumour (z 8–70, tumour z 71–150); "
                  "training takes z 8–39 and the test normals are z 40–70, so the image AUROC measures slice position "
                  "more than tumour (here it is inverted). The pixel metrics on the tumour slices are the meaningful "
                  "figures for this task."]
    speed = results.data["speed"]
    lines += speed_table(speed)
    if speed:
        by = {(s["what"], s["backbone"]): s["images_per_second"] for s in speed}
        for backbone in sorted({s["backbone"] for s in speed}):
            if ("train_step", backbone) in by and ("train_step_no_cache", backbone) in by:
                ratio = by[("train_step", backbone)] / by[("train_step_no_cache", backbone)]
                lines.append(f"\nCached / uncached training throughput with {backbone}: **{ratio:.2f}×**")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    results = BenchmarkResults(args.name, benchmark_command("rd4ad_unsupervised.py", pieces=("--tasks", "--seeds")))
    teacher = build_teacher(args.teacher)
    cache = FeatureCache(teacher)
    for task_name in args.tasks:
        task = load_task(task_name)
        train_images, _ = load_images(task.train, args.image_size, desc=f"{task_name} train")
        test_images, masks = load_images(task.test, args.image_size, desc=f"{task_name} test")
        labels = [s.label for s in task.test]
        batches_per_epoch = -(-len(train_images) // args.batch_size)
        epochs = max(1, round(args.steps / batches_per_epoch))
        for seed in args.seeds:
            if results.has(method="rd4ad", task=task_name, seed=seed, backbone=args.teacher,
                           image_size=args.image_size):
                continue
            seed_everything(seed)
            model = RD4AD(teacher)
            config = TrainConfig(epochs=epochs, batch_size=args.batch_size, seed=seed)
            started = time.perf_counter()
            trained = train_unsupervised(model, train_images, config, cache=cache, desc=f"rd4ad {task_name} s{seed}")
            train_seconds = time.perf_counter() - started
            evaluation = evaluate_images(model.predict, test_images, labels, masks, batch_size=32)
            results.add_record({"method": "rd4ad", "task": task_name, "train_tasks": [task_name],
                                "backbone": args.teacher, "image_size": args.image_size, "k": None, "seed": seed,
                                "support_draw": None, **evaluation.metrics, "train_seconds": train_seconds,
                                "epochs": trained.epochs_done, "n_train": len(train_images)})
            print(f"{task_name} seed {seed}: AUROC {evaluation.metrics['image_auroc']:.4f} "
                  f"({trained.epochs_done} epochs, {train_seconds:.0f} s)", flush=True)
        results.write_markdown(markdown(results, args))
    if args.remeasure_speed or not results.data.get("speed"):
        speed_records(results, train_images, args)
    results.write_markdown(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
