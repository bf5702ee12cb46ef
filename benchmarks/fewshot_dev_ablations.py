"""Learned patch metrics for K-shot scoring, tried on the development pool only (issue 22's research rows).

Regenerate:  python benchmarks/fewshot_dev_ablations.py
Writes benchmarks/results/fewshot_dev_ablations.json (+ .md).  Reads the development pool, its subsamples and its
feature cache exactly as ``benchmarks/fewshot_dev_selection.py`` does; no test split of a reported fold is used.

Each variant is PatchCore-K (plain supports, top-1 % image score) on patch features mapped by a linear transform
fitted on the *other* development tasks (inner leave-one-task-out; brain_tumor and brain_tumor_pituitary share
their normals, so each leaves both out), then scored on the held-out task with its K supports:

* ``residual_whitening[λ]``: the inverse square root of the second moment of the residuals ``query patch − its
  nearest support patch`` of the other tasks' normal images, shrunk towards the identity by λ times its mean
  eigenvalue (directions in which normal images differ from their supports count less);
* ``learned_channel_weights``: one non-negative weight per channel, fitted by a pairwise ranking loss (a smooth
  AUROC) between the other tasks' abnormal and normal images, within each task and support set, with a penalty
  towards equal weights.

Neither is a candidate of the selection: both were tried as research and are reported here whatever they give.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fewshot_dev_selection import DEV_TASKS, development_split, pool_parser, subsample
from sklearn.metrics import roc_auc_score

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.engine.fewshot import draw_supports
from medad.models.support_scoring import (QueryEncoding, SupportScoring, SupportScoringConfig, flatten_patches,
                                          reduce_map, squared_distances)
from medad.results import BenchmarkResults, benchmark_command

#: development tasks that share images: fitting for one leaves the others out too
RELATED = {"brain_tumor": {"brain_tumor_pituitary"}, "brain_tumor_pituitary": {"brain_tumor"}}
SHRINKAGE = (0.01, 0.1, 1.0)
SCORE = "top1"
#: the image score of the ranking loss: the mean of the highest patches of the 16×16 grid (~1 %)
TOP_PATCHES = 3


def parse_args() -> argparse.Namespace:
    parser = pool_parser(__doc__)
    parser.add_argument("--fit-seed", type=int, default=0, help="the draw seed of the support sets fitting uses")
    parser.add_argument("--steps", type=int, default=80, help="optimiser steps of learned_channel_weights")
    parser.add_argument("--penalty", type=float, default=1.0, help="weight of the equal-weights penalty")
    parser.add_argument("--name", default="fewshot_dev_ablations")
    return parser.parse_args()


def nearest_residuals(queries: torch.Tensor, supports: torch.Tensor) -> torch.Tensor:
    """``N×P×D``: each query patch minus its (Euclidean) nearest support patch."""
    points, bank = flatten_patches(queries), flatten_patches(supports)
    nearest = squared_distances(points, bank).argmin(dim=1)
    return (points - bank[nearest]).view(len(queries), -1, queries.shape[1])


def residual_whitening(normal_residuals: list[torch.Tensor], shrinkage: float) -> torch.Tensor:
    """``(M + λ·mean eigenvalue·I)^(-1/2)``, M the second moment of the residuals ``R×D`` (each set weighs alike)."""
    second_moment = torch.stack([r.T @ r / len(r) for r in normal_residuals]).mean(dim=0)
    dim = second_moment.shape[0]
    shrunk = second_moment + shrinkage * torch.trace(second_moment) / dim * torch.eye(dim)
    values, vectors = torch.linalg.eigh(shrunk)
    return vectors @ torch.diag(values.clamp_min(1e-12) ** -0.5) @ vectors.T


def learned_channel_weights(fit_sets: list[tuple[torch.Tensor, np.ndarray]], steps: int, penalty: float
                            ) -> torch.Tensor:
    """Per-channel weights (the transform ``diag(√w)``) from (squared residuals ``N×P×D``, labels) of the fitting
    tasks."""
    log_weights = torch.zeros(fit_sets[0][0].shape[-1], requires_grad=True)
    optimiser = torch.optim.Adam([log_weights], lr=0.1)
    for _ in range(steps):
        optimiser.zero_grad()
        for squares, labels in fit_sets:
            abnormal = torch.from_numpy(labels == 1)
            scores = (squares @ log_weights.exp()).clamp_min(1e-8).sqrt().topk(TOP_PATCHES, dim=1).values.mean(1)
            scores = scores / scores[~abnormal].mean().detach()
            gaps = scores[abnormal][:, None] - scores[~abnormal][None, :]
            (F.softplus(-10 * gaps).mean() / len(fit_sets)).backward()
        (penalty * (log_weights ** 2).mean()).backward()
        optimiser.step()
    return torch.diag(log_weights.detach().exp().sqrt())


def transformed_auroc(queries: QueryEncoding, supports: QueryEncoding, k: int, labels: np.ndarray,
                      transform: torch.Tensor | None) -> float:
    """Image AUROC (%) of PatchCore-K (top-1 % score) on features mapped by ``transform`` (None: unmapped)."""
    scorer = SupportScoring(None, SupportScoringConfig(score=SCORE))

    def mapped(encoding: QueryEncoding) -> QueryEncoding:
        if transform is None:
            return encoding
        return QueryEncoding(torch.einsum("bdhw,ed->behw", encoding.patches, transform), encoding.pooled,
                             encoding.image_size)

    bank = scorer.bank_from_views(mapped(supports), k)
    scores = torch.cat([reduce_map(scorer.raw_maps(mapped(queries[slice(i, i + 64)]), bank), SCORE)
                        for i in range(0, len(queries), 64)])
    return 100 * roc_auc_score(labels, scores.numpy())


def markdown(data: dict) -> str:
    ab = data["ablations"]
    tasks = list(ab["variants"]["patchcore"]["tasks"])
    lines = [f"# Learned patch metrics for K-shot scoring on the development pool — teacher `{ab['teacher']}`, "
             f"{ab['image_size']} px", "", f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {ab['seconds'] / 60:.1f} min", "",
             "Research rows of issue 22, on the development pool of `fewshot_dev_selection.md` (same images, same "
             f"support draws: K ∈ {ab['k']}, {ab['draws']} draws × draw seeds {ab['seeds']}); no test split of a "
             "reported fold. Every variant is PatchCore-K (top-1 % image score) on patch features mapped by a linear "
             "transform fitted on the other development tasks only (inner leave-one-task-out; module doc of "
             "`benchmarks/fewshot_dev_ablations.py`). Image AUROC (%), mean over K, draws and seeds per task; Δ = "
             "mean minus PatchCore-K's.", "",
             "| variant | mean | Δ | " + " | ".join(tasks) + " |", "|---" * (3 + len(tasks)) + "|"]
    base = ab["variants"]["patchcore"]["mean"]
    for name, v in sorted(ab["variants"].items(), key=lambda kv: -kv[1]["mean"]):
        lines.append(f"| {name} | {v['mean']:.2f} | {v['mean'] - base:+.2f} | "
                     + " | ".join(f"{v['tasks'][t]:.1f}" for t in tasks) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    torch.manual_seed(0)
    teacher = build_teacher(args.teacher)
    encoder = SupportScoring(teacher)
    cache = Path(args.cache) / f"{args.teacher}_{args.image_size}"
    start = time.time()
    queries: dict[str, QueryEncoding] = {}
    labels: dict[str, np.ndarray] = {}
    supports: dict[tuple[str, int, int, int], QueryEncoding] = {}
    for name in DEV_TASKS:
        pool, evaluation = development_split(name, args)
        encoded = encoder.encode_cached(cache / f"{name}.pt", load_images, evaluation, args.image_size, desc=name)
        keep = subsample([s.label for s in evaluation], args.max_images)
        queries[name] = encoded[torch.from_numpy(keep)]
        labels[name] = np.array([evaluation[i].label for i in keep])
        for seed, k, draw in itertools.product(args.seeds, args.k, range(args.draws)):
            images, _ = load_images([pool[i] for i in draw_supports(len(pool), k, draw, seed=seed)],
                                    args.image_size, workers=0)
            supports[name, seed, k, draw] = encoder.encode(images)
        print(f"{name}: encoded, {time.time() - start:.0f} s", flush=True)
    fit_keys = [(args.fit_seed, k, draw) for k in args.k for draw in range(args.draws)]
    residuals = {(name, *key): nearest_residuals(queries[name].patches, supports[name, *key].patches)
                 for name in DEV_TASKS for key in fit_keys}

    def normal_residuals(fit: list[str]) -> list[torch.Tensor]:
        return [residuals[name, *key][torch.from_numpy(labels[name] == 0)].flatten(0, 1)
                for name in fit for key in fit_keys]

    transforms = {"patchcore": lambda fit: None}
    transforms.update({f"residual_whitening[{shrinkage:g}]":
                       lambda fit, shrinkage=shrinkage: residual_whitening(normal_residuals(fit), shrinkage)
                       for shrinkage in SHRINKAGE})
    transforms["learned_channel_weights"] = lambda fit: learned_channel_weights(
        [(residuals[name, *key] ** 2, labels[name]) for name in fit for key in fit_keys], args.steps, args.penalty)
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name in DEV_TASKS:
        fit = [other for other in DEV_TASKS if other != name and other not in RELATED.get(name, set())]
        for variant, make in transforms.items():
            transform = make(fit)
            for seed, k, draw in itertools.product(args.seeds, args.k, range(args.draws)):
                auroc = transformed_auroc(queries[name], supports[name, seed, k, draw], k, labels[name], transform)
                rows.setdefault(variant, {}).setdefault(name, {}).setdefault(str(k), []).append(auroc)
        print(f"{name}: scored, {time.time() - start:.0f} s", flush=True)
    variants = {}
    for variant, per_task in rows.items():
        task_means = {t: float(np.mean([np.mean(v) for v in per_k.values()])) for t, per_k in per_task.items()}
        variants[variant] = {"mean": float(np.mean(list(task_means.values()))), "tasks": task_means}
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_ablations.py"), resume=False)
    results.data.update(ablations={"teacher": args.teacher, "image_size": args.image_size, "k": args.k,
                                   "draws": args.draws, "seeds": args.seeds, "fit_seed": args.fit_seed,
                                   "steps": args.steps, "penalty": args.penalty, "variants": variants, "raw": rows,
                                   "seconds": time.time() - start})
    results.save()
    results.write_markdown(markdown(results.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
