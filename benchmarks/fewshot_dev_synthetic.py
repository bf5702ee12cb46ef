"""Would a synthetic focal proxy have warned? The chosen few-shot scorers on synthetic lesions in held-out training
normals of headct and brainmri (research toward a fourth round of issue 22; no test image is read).

Regenerate:  python benchmarks/fewshot_dev_synthetic.py
Writes benchmarks/results/fewshot_dev_synthetic.json (+ .md).

Per task: the last ``--held-out`` training normals (near-duplicate-clean split) are kept out of the support pool;
the evaluation set is those normals plus each of them with one synthetic lesion (``medad.data.synthetic``: a
foreign-tissue patch or a local brightening/darkening inside the foreground, alternately).  Supports come from the
rest of the training normals.  The candidates are PatchCore-K and the three scorers the pre-registered rounds
chose (``fewshot_loo_round1``, ``_round2`` and ``fewshot_loo``), plus round 3's positional option without the
whole-image term.  These tasks were designed after the round-3 test figures were read (its focal folds lost), so
they are reported as research, not as a selection.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.data.synthetic import pasted_anomalies
from medad.data.tasks import Sample, load_task
from medad.engine.fewshot import draw_supports
from medad.models.support_scoring import SupportScoring, SupportScoringConfig, augment_supports
from medad.results import BenchmarkResults, benchmark_command

TASKS = ["headct", "brainmri"]
CANDIDATES = {
    "patchcore": SupportScoringConfig(),
    "round 1": SupportScoringConfig(augment="flip+rotate", global_weight=1.0, score="top1"),
    "round 2": SupportScoringConfig(augment="flip+rotate", score="top1", standardize=0.5),
    "round 3": SupportScoringConfig(augment="flip+rotate", global_weight=0.5, score="top1", standardize=0.5,
                                    positional=0.1),
    "round 3 without the whole-image term": SupportScoringConfig(augment="flip+rotate", score="top1",
                                                                 standardize=0.5, positional=0.1),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--k", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--held-out", type=int, default=16, help="training normals per task kept out of the pool")
    parser.add_argument("--name", default="fewshot_dev_synthetic")
    return parser.parse_args()


def synthetic_task(name: str, image_size: int, held_out: int) -> tuple[list[Sample], torch.Tensor, np.ndarray]:
    """(support pool, query images, labels) of one synthetic focal task: the last ``held_out`` training normals of
    ``name`` and the same images with one synthetic lesion each; the pool is the other training normals."""
    train = load_task(name).train
    pool, normals = train[:-held_out], train[-held_out:]
    images, _ = load_images(normals, image_size, desc=f"{name} held-out normals")
    lesions, _, _ = pasted_anomalies(images, seed=0)
    return pool, torch.cat([images, lesions]), np.r_[np.zeros(len(images)), np.ones(len(lesions))].astype(int)


def markdown(data: dict) -> str:
    syn = data["synthetic"]
    lines = ["# Chosen few-shot scorers on synthetic lesions in held-out training normals (research)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ", f"Time: {syn['seconds'] / 60:.1f} min",
             "", f"Teacher `{syn['teacher']}` (ImageNet, offline), {syn['image_size']} px. Per task: "
             + ", ".join(f"{t} {v['held_out']} held-out training normals + the same with one synthetic lesion each, "
                         f"support pool {v['support_pool']}" for t, v in syn["tasks"].items())
             + f". K ∈ {syn['k']}, {syn['draws']} support draws; image AUROC (%), mean over draws (and over K in the "
             "last column). Designed after round 3's test figures were read: research, not a selection "
             "(module doc of `benchmarks/fewshot_dev_synthetic.py`).", "",
             "| candidate | scorer | " + " | ".join(f"{t} K={k}" for t in syn["tasks"] for k in syn["k"])
             + " | mean |", "|---" * (3 + len(syn["tasks"]) * len(syn["k"])) + "|"]
    for label, row in syn["candidates"].items():
        cells = [f"{np.mean(row['auroc'][t][str(k)]):.1f}" for t in syn["tasks"] for k in syn["k"]]
        lines.append(f"| {label} | `{row['name']}` | " + " | ".join(cells) + f" | {row['mean']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    torch.manual_seed(0)
    teacher = build_teacher(args.teacher)
    encoder = SupportScoring(teacher)
    start = time.time()
    auroc = {label: {t: {str(k): [] for k in args.k} for t in TASKS} for label in CANDIDATES}
    sizes = {}
    for name in TASKS:
        pool, queries, labels = synthetic_task(name, args.image_size, args.held_out)
        sizes[name] = {"held_out": len(labels) // 2, "support_pool": len(pool)}
        encoded = encoder.encode(queries)
        for k, draw in itertools.product(args.k, range(args.draws)):
            supports, _ = load_images([pool[i] for i in draw_supports(len(pool), k, draw)], args.image_size,
                                      workers=0)
            # each set of support views is encoded once, for every candidate that uses it
            views = {augment: encoder.encode(augment_supports(supports, augment))
                     for augment in {config.augment for config in CANDIDATES.values()}}
            for label, config in CANDIDATES.items():
                scorer = SupportScoring(teacher, config)
                _, scores = scorer.score_encoded(encoded, scorer.bank_from_views(views[config.augment], k))
                auroc[label][name][str(k)].append(100 * roc_auc_score(labels, scores.numpy()))
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
    candidates = {label: {"name": config.name, "config": config.as_dict(), "auroc": auroc[label],
                          "mean": float(np.mean([np.mean(v) for per_k in auroc[label].values()
                                                 for v in per_k.values()]))}
                  for label, config in CANDIDATES.items()}
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_synthetic.py"), resume=False)
    results.data.update(synthetic={"teacher": args.teacher, "image_size": args.image_size, "k": args.k,
                                   "draws": args.draws, "tasks": sizes, "candidates": candidates,
                                   "seconds": time.time() - start})
    results.save()
    results.write_markdown(markdown(results.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
