"""PDD with two offline ImageNet teachers on the shared medical sets (issue: PDD), plus the Table 3/4 ablations.

Regenerate:  python benchmarks/pdd_unsupervised.py
Writes benchmarks/results/pdd_unsupervised.json (+ .md).  Resumable: re-running the same command skips the
(method, task, seed) records already written.

The paper's teachers are WideResNet-50 + VMamba-Tiny; VMamba's ImageNet weights cannot be obtained offline
here, so the default pair is EfficientNet-Lite0 (teacher 1, the CNN role) + EfficientNet-Lite2 (teacher 2),
both with their ImageNet weights, at 128 px (the paper: 256 px).  Same tasks and splits as
benchmarks/rd4ad_unsupervised.py; training length is set in optimiser steps, epochs =
max(1, round(steps / batches_per_epoch)): 200 steps (RD4AD's benchmark uses 300; a PDD step costs about
twice as much, and 3 seeds + 10 ablation runs must fit the time box).  Main rows: 3 seeds; ablation rows:
the first seed.  Adam lr 2e-3 (paper, Sec. 4.1) with cosine annealing over the
epochs; β = (0.5, 0.999) (the project's Adam default; the paper does not state β).

Ablation rows (on --ablation-tasks, default brainmri and zhanglab), recorded as method ``pdd[<row>]``:
Table 3 — ``1t1s`` (teacher 1 only, Student 1), ``2t1s`` (both teachers + InA/MMU, Student 1),
``2t1s+mpa`` (Student 2 only); the full model (``pdd``) is the 2t2s row.  Table 4 — ``s-s-map``
(score = student–student map, L_div on) and ``no-div`` (teacher–student map, L_div off).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from medad.backbones.pair import build_teacher_pair
from medad.data.tasks import load_task
from medad.engine.evaluate import evaluate_images
from medad.engine.images import load_images
from medad.engine.training import TrainConfig, seed_everything
from medad.engine.unsupervised import train_unsupervised
from medad.features import FeatureCache
from medad.models.pdd import ABLATIONS, PDD, PDDConfig
from medad.results import (
    BenchmarkResults,
    add_one_class_speed,
    group_records,
    mean_std,
)

TASKS = ["headct", "brainmri", "zhanglab", "nih_cxr", "brats_slices"]
ABLATION_TASKS = ["brainmri", "zhanglab"]
ABLATION_ROWS = ["1t1s", "2t1s", "2t1s+mpa", "s-s-map", "no-div"]
DEFAULT_TEACHERS = "efficientnet_lite0+efficientnet_lite2"
PAPER_NAMES = {"headct": "HeadCT", "brainmri": "BrainMRI", "zhanglab": "ZhangLab", "nih_cxr": "NIH CXR (64 px)",
               "brats_slices": "BraTS slices"}
PAPER_PDD = {"headct": 97.5, "zhanglab": 94.0, "brainmri": 96.7}     # PDD Table 1, "Ours" (WRN-50 + VMamba-T, 256 px)
PAPER_RD4AD = {"headct": 74.3, "zhanglab": 87.5, "brainmri": 80.9}   # PDD Table 1, RD4AD row
#: paper ablations, AUROC / AP(AUPR) / F1-max (%): Table 3 on ZhangLab, Table 4 on BrainMRI
PAPER_ABLATIONS = {
    ("zhanglab", "pdd[1t1s]"): "81.5 / 85.5 / 84.8 (T3 M1)",
    ("zhanglab", "pdd[2t1s]"): "90.8 / 95.7 / 89.7 (T3 M3)",
    ("zhanglab", "pdd[2t1s+mpa]"): "92.9 / 96.6 / 90.3 (T3 M4)",
    ("zhanglab", "pdd"): "94.0 / 99.0 / 96.6 (T3 Ours)",
    ("brainmri", "pdd[s-s-map]"): "32.5 / 81.2 / 93.0 (T4 M1)",
    ("brainmri", "pdd[no-div]"): "93.4 / 98.8 / 95.9 (T4 M3)",
    ("brainmri", "pdd"): "96.7 / 99.5 / 97.6 (T4 Ours)",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the main rows; ablation rows use the first")
    parser.add_argument("--teachers", default=DEFAULT_TEACHERS, help="'first+second' (teacher 1 = the CNN role)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps per training run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ablation-tasks", nargs="*", default=ABLATION_TASKS,
                        help="tasks (among --tasks) that also get the ablation rows; none to skip them")
    parser.add_argument("--ablations", nargs="*", default=ABLATION_ROWS, choices=sorted(ABLATIONS))
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="PDDConfig override applied to every row (value parsed as JSON, else a string)")
    parser.add_argument("--speed-teachers", nargs="*", default=None,
                        help="teacher pairs for the speed records (default: --teachers; add "
                             "'wide_resnet50_2+vmamba_tiny' for the paper's pair with random weights)")
    parser.add_argument("--rd4ad-results", default="benchmarks/results/rd4ad_unsupervised.json")
    parser.add_argument("--name", default="pdd_unsupervised")
    return parser.parse_args()


def model_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--model-option expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    PDDConfig(**options)  # fail fast on unknown or invalid options
    return options


def method_name(row: str) -> str:
    return "pdd" if row == "2t2s" else f"pdd[{row}]"


def speed_records(results: BenchmarkResults, images: torch.Tensor, args: argparse.Namespace,
                  options: dict) -> None:
    """Cached vs uncached training throughput and teacher+students inference, same process, same batch."""
    for teachers in args.speed_teachers if args.speed_teachers is not None else [args.teachers]:
        random_weights = "vmamba" in teachers or "wide_resnet" in teachers  # no offline ImageNet weights here
        pair = build_teacher_pair(teachers, weights=None if random_weights else "imagenet")
        torch.manual_seed(0)
        model = PDD(pair, PDDConfig(**options))
        batch = images[: args.batch_size]
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                     betas=(0.5, 0.999))
        common = {"method": "pdd", "backbone": teachers + (" (random weights)" if random_weights else ""),
                  "image_size": args.image_size, "k": None, "batch_size": len(batch)}
        add_one_class_speed(results, model, optimizer, batch, common)


def our_rd4ad(path: str, image_size: int) -> dict[str, list[dict]]:
    """AUROCs of our RD4AD benchmark (same tasks and splits) by task, if its results exist."""
    file = Path(path)
    if not file.is_file():
        return {}
    data = json.loads(file.read_text())
    by_task: dict[str, list[dict]] = {}
    for record in data.get("records", []):
        if record.get("method") == "rd4ad" and record.get("image_size") == image_size:
            by_task.setdefault(record["task"], []).append(record)
    return by_task


def markdown(results: BenchmarkResults, args: argparse.Namespace, options: dict) -> str:
    rd4ad = our_rd4ad(args.rd4ad_results, args.image_size)
    rd4ad_teacher = sorted({r["backbone"] for records in rd4ad.values() for r in records})
    first, second = args.teachers.split("+")
    lines = [f"# PDD, unsupervised — teachers `{first}` (teacher 1) + `{second}` (teacher 2), ImageNet, offline, "
             f"{args.image_size} px", "",
             f"Command: `{results.data['command']}`  ", f"Machine: {results.data['machine']}  ",
             f"Training: {args.steps} Adam steps per run (batch {args.batch_size}, lr {args.lr:g}, β=(0.5, 0.999), "
             f"cosine annealing over the epochs), cached teacher features; loss Eq. 9 with λ_kr = λ_prp = 0.02, "
             f"λ_div = 0.5, τ_low = 0.30, τ_high = 0.75; image score = max of the σ=4 smoothed map "
             f"Σ(1 − cos(f_b, s1)) + (1 − cos(f_b, s2)). Mean ± std over seeds."
             + (f" Model options: `{json.dumps(options)}`." if options else ""),
             "", "The paper's figures use WideResNet-50 + VMamba-Tiny at 256 px; VMamba's weights are not available "
             "offline here, so these rows use the EfficientNet-Lite pair (not the paper's teachers).", "",
             "| task | n normal / abnormal | seeds | epochs | AUROC | AP | F1-max | pixel AUROC | pixel AUPRO "
             "| paper PDD AUROC | our RD4AD AUROC" + (f" ({', '.join(rd4ad_teacher)})" if rd4ad_teacher else "")
             + " | paper RD4AD AUROC |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups = group_records(results.records, ("method", "task"))
    for task in args.tasks:
        records = groups.get(("pdd", task))
        if not records:
            continue
        first_record = records[0]
        ours = rd4ad.get(task, [])
        lines.append(
            f"| {PAPER_NAMES.get(task, task)} | {first_record['n_test_normal']} / {first_record['n_test_abnormal']} | "
            f"{len(records)} | {first_record['epochs']} | {mean_std(r['image_auroc'] for r in records)} | "
            f"{mean_std(r['image_ap'] for r in records)} | {mean_std(r['image_f1max'] for r in records)} | "
            f"{mean_std(r['pixel_auroc'] for r in records)} | {mean_std(r['pixel_aupro'] for r in records)} | "
            f"{PAPER_PDD.get(task, '—')} | {mean_std(r['image_auroc'] for r in ours)} | "
            f"{PAPER_RD4AD.get(task, '—')} |")
    ablation_tasks = [t for t in args.tasks if t in (args.ablation_tasks or [])]
    if ablation_tasks and args.ablations:
        lines += ["", "## Ablations (Table 3: distillation paradigm; Table 4: anomaly map and L_div)", "",
                  "| task | row | seeds | AUROC | AP | F1-max | paper AUROC / AP / F1-max |", "|---|---|---|---|---|---|---|"]
        for task in ablation_tasks:
            for row in ["2t2s", *args.ablations]:
                method = method_name(row)
                records = groups.get((method, task))
                if not records:
                    continue
                label = "full (2t2s, t–s map, L_div)" if row == "2t2s" else row
                lines.append(f"| {PAPER_NAMES.get(task, task)} | {label} | {len(records)} | "
                             f"{mean_std(r['image_auroc'] for r in records)} | "
                             f"{mean_std(r['image_ap'] for r in records)} | "
                             f"{mean_std(r['image_f1max'] for r in records)} | "
                             f"{PAPER_ABLATIONS.get((task, method), '—')} |")
    speed = results.data["speed"]
    if speed:
        lines += ["", "## Speed (same run)", "", "| what | backbone | batch | images/s | peak RSS MiB |",
                  "|---|---|---|---|---|"]
        lines += [f"| {s['what']} | {s['backbone']} | {s['batch_size']} | {s['images_per_second']:.1f} | "
                  f"{s['peak_rss_mib']:.0f} |" for s in speed]
        by = {(s["what"], s["backbone"]): s["images_per_second"] for s in speed}
        for backbone in sorted({s["backbone"] for s in speed}):
            if ("train_step", backbone) in by and ("train_step_no_cache", backbone) in by:
                ratio = by[("train_step", backbone)] / by[("train_step_no_cache", backbone)]
                lines.append(f"\nCached / uncached training throughput with {backbone}: **{ratio:.2f}×**")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    options = model_options(args.model_option)
    command = "python benchmarks/pdd_unsupervised.py " + shlex.join(sys.argv[1:])
    results = BenchmarkResults(args.name, command.strip())
    pair = build_teacher_pair(args.teachers, num_stages=4)
    cache = FeatureCache(pair)
    train_images = None
    for task_name in args.tasks:
        task = load_task(task_name)
        train_images, _ = load_images(task.train, args.image_size, desc=f"{task_name} train")
        test_images, masks = load_images(task.test, args.image_size, desc=f"{task_name} test")
        labels = [s.label for s in task.test]
        batches_per_epoch = -(-len(train_images) // args.batch_size)
        epochs = max(1, round(args.steps / batches_per_epoch))
        rows = ["2t2s", *(args.ablations if task_name in (args.ablation_tasks or []) else [])]
        for row in rows:
            method = method_name(row)
            config = PDDConfig.ablation(row, **options)
            backbone = args.teachers if config.dual_teacher else pair.first.name
            for seed in (args.seeds if row == "2t2s" else args.seeds[:1]):  # ablation rows: first seed only
                if results.has(method=method, task=task_name, seed=seed, backbone=backbone,
                               image_size=args.image_size):
                    continue
                seed_everything(seed)
                model = PDD(pair, config)
                train_config = TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                                           cosine_schedule=True)
                started = time.perf_counter()
                trained = train_unsupervised(model, train_images, train_config, cache=cache,
                                             desc=f"{method} {task_name} s{seed}")
                train_seconds = time.perf_counter() - started
                evaluation = evaluate_images(model.predict, test_images, labels, masks, batch_size=32)
                results.add_record({"method": method, "task": task_name, "train_tasks": [task_name],
                                    "backbone": backbone, "image_size": args.image_size, "k": None, "seed": seed,
                                    "support_draw": None, **evaluation.metrics, "train_seconds": train_seconds,
                                    "epochs": trained.epochs_done, "n_train": len(train_images),
                                    "final_loss": trained.history[-1], "config": model.meta()["config"]})
                print(f"{method} {task_name} seed {seed}: AUROC {evaluation.metrics['image_auroc']:.4f} "
                      f"({trained.epochs_done} epochs, {train_seconds:.0f} s)", flush=True)
            results.write_markdown(markdown(results, args, options))
    if train_images is not None:
        speed_records(results, train_images, args, options)
    results.write_markdown(markdown(results, args, options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
