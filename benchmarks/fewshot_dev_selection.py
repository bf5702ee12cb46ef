"""The pre-registered choice of medad's default few-shot scorer, on the development pool only.

Regenerate:  python benchmarks/fewshot_dev_selection.py
Writes benchmarks/results/fewshot_dev_selection.json (+ .md); benchmarks/fewshot_loo.py reads the choice.
Teacher features are cached under benchmarks/.cache/fewshot_dev/ (rerunning is quick).

Development pool (no split here is a test split of a reported fold):
* acrima (fundus), isic (dermoscopy), mias (mammography): the three development tasks, their test splits;
* brain_tumor, zhanglab: the last ``--dev-normals`` training normals (kept out of the support pool) vs
  ``--dev-abnormals`` images of the set's ``extra_train_abnormal`` folder (brain_tumor: glioma and meningioma);
* brain_tumor_pituitary: the same held-out brain_tumor normals vs pituitary tumours of ``extra_train_abnormal``
  (small, focal lesions; added in round 2);
* brats_slices: its test split, FLAIR slices of one BraTS volume with and without tumour (focal; round 2);
* nih_cxr: its validation split.
Each development task is scored on a fixed stratified subsample of at most ``--max-images`` of these images (the CPU
budget of this machine).
Supports come from each task's near-duplicate-clean training normals (``medad.data.near_duplicates``).

Candidates: training-free scorings that all use the supports (``medad.models.support_scoring``): PatchCore-K
and its options (support views, a whole-image term, the image score, per-channel standardisation of strength
0 or ½, and the positional normalisation of the map by the supports' leave-one-out maps with floor β).  Round 2
dropped round 1's flip-only views, which flip+rotate beat on every development task; round 3 adds the positional
option (explored beforehand on this pool only, docs/METHODS.md) and drops standardisation of strength 1, which failed
round 2's guard in every combination.  The learned
D²4FAD-NN variants are not candidates (their inner leave-one-task-out training does not fit this machine's
budget; docs/METHODS.md).  Without training, inner leave-one-task-out reduces to scoring each development task
with nothing fitted on it.

The rule (round 2, kept for round 3; fixed before this run): among the candidates that are no more than 1 point below
PatchCore-K on any development task (mean image AUROC over K ∈ {2, 4, 8}, ``--draws`` support draws ×
``--seeds`` draw seeds), the one with the best mean over the development tasks; it becomes the default only if that
mean beats PatchCore-K's; otherwise PatchCore-K stays the default.  Round 1 (results kept as
``fewshot_dev_selection_round1``) chose by the mean alone over a pool without focal lesions; its choice lost up to
11 points on the focal test folds, hence the guard and the two focal development tasks.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.data.near_duplicates import drop_near_duplicates
from medad.data.registry import data_root
from medad.data.tasks import Sample, load_task
from medad.engine.fewshot import draw_supports
from medad.models.support_scoring import (SupportScoring, SupportScoringConfig, augment_supports,
                                          global_distance, reduce_map)
from medad.results import BenchmarkResults, benchmark_command

DEV_TASKS = ["acrima", "isic", "mias", "brain_tumor", "brain_tumor_pituitary", "zhanglab", "nih_cxr", "brats_slices"]
#: development task → (its registered task, the shared folder of its extra abnormal images, their kinds)
EXTRA_ABNORMAL = {"brain_tumor": ("brain_tumor", "brain_tumor_mri_nickparvar", ["glioma", "meningioma"]),
                  "brain_tumor_pituitary": ("brain_tumor", "brain_tumor_mri_nickparvar", ["pituitary"]),
                  "zhanglab": ("zhanglab", "zhanglab_chest_xray", ["pneumonia"])}
AUGMENTS = ("none", "flip+rotate")
SCORES = ("max", "top1")
GLOBAL_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
STANDARDIZE = (0.0, 0.5)
POSITIONAL = (0.0, 0.1, 0.25, 0.5, 1.0)
CANDIDATES = [SupportScoringConfig(augment=a, global_weight=g, score=s, standardize=z, positional=b)
              for a, g, s, z, b in itertools.product(AUGMENTS, GLOBAL_WEIGHTS, SCORES, STANDARDIZE, POSITIONAL)]
#: the most a candidate may lose to PatchCore-K on any development task (points of mean image AUROC)
GUARD = 1.0
RULE = (f"among candidates no more than {GUARD:g} point below PatchCore-K on any development task, the best mean "
        "image AUROC over the development tasks and K ∈ {2, 4, 8} (draws × draw seeds); the default only if above "
        "PatchCore-K's mean, else PatchCore-K")


def pool_parser(description: str) -> argparse.ArgumentParser:
    """The arguments that define the development pool, its draws and its feature cache (shared by the benchmarks
    that read the pool: this one and ``fewshot_dev_ablations.py``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--k", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--max-images", type=int, default=200,
                        help="evaluation images per development task (a fixed stratified subsample; CPU budget)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--dev-normals", type=int, default=150)
    parser.add_argument("--dev-abnormals", type=int, default=150)
    parser.add_argument("--cache", default="benchmarks/.cache/fewshot_dev")
    return parser


def parse_args() -> argparse.Namespace:
    parser = pool_parser(__doc__)
    parser.add_argument("--name", default="fewshot_dev_selection")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the JSON")
    return parser.parse_args()


def development_split(name: str, args) -> tuple[list[Sample], list[Sample]]:
    """(support pool, evaluation samples) of one development task."""
    if name in EXTRA_ABNORMAL:
        registered, folder, kinds = EXTRA_ABNORMAL[name]
        task = load_task(registered)
        normals = task.train[-args.dev_normals:]
        pool = task.train[:-args.dev_normals]
        root = data_root() / folder / "extra_train_abnormal"
        abnormal = [Sample(p, 1, kind) for kind in kinds for p in sorted((root / kind).iterdir())]
        abnormal = abnormal[::max(1, len(abnormal) // args.dev_abnormals)][:args.dev_abnormals]
        evaluation = normals + abnormal
        pool, _ = drop_near_duplicates(pool, evaluation, why="development")
        return pool, evaluation
    task = load_task(name)
    if name == "nih_cxr":
        return task.train, task.valid
    return task.train, task.test


def subsample(labels: list[int], n: int) -> np.ndarray:
    """Indices of at most ``n`` images, each label in its own proportion (seeded, sorted)."""
    labels = np.asarray(labels)
    if len(labels) <= n:
        return np.arange(len(labels))
    rng = np.random.default_rng(0)
    picked = [rng.choice(np.flatnonzero(labels == lab), size=round(n * np.mean(labels == lab)), replace=False)
              for lab in (0, 1)]
    return np.sort(np.concatenate(picked))


def markdown(data: dict) -> str:
    """The selection table: every candidate's mean AUROC per development task and K, the chosen one marked."""
    sel = data["selection"]
    cands = sorted(sel["candidates"].items(), key=lambda kv: -kv[1]["mean"])
    tasks = list(cands[0][1]["tasks"])
    lines = [f"# Few-shot default scorer chosen on the development pool — teacher `{sel['teacher']}`, "
             f"{sel['image_size']} px", "", f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {sel['seconds'] / 60:.1f} min", "",
             f"Development pool: {', '.join(tasks)} (module doc of `benchmarks/fewshot_dev_selection.py`: the three "
             "development tasks' test splits; brain_tumor and zhanglab held-out training normals vs their "
             "extra_train_abnormal images; nih_cxr's validation split). No test split of a reported fold is used. "
             "Images scored per task (normal + abnormal; support pool): " + ", ".join(
                 f"{t} {v['normal']} + {v['abnormal']} ({v['support_pool']})"
                 for t, v in sel["evaluation_images"].items()) + ". "
             f"K ∈ {sel['k']}, {sel['draws']} draws × draw seeds {sel['seeds']}. Candidates are training-free and "
             "all use the supports (`medad.models.support_scoring`).", "",
             f"Rule (fixed before the run): {sel['rule']}.", "",
             f"**Chosen: `{sel['chosen']}`** ({sel['candidates'][sel['chosen']]['mean']:.2f} vs PatchCore-K "
             f"{sel['candidates']['patchcore']['mean']:.2f}).", "",
             "Image AUROC (%), mean over K, draws and seeds per task:", "",
             f"Guard: ✓ = no development task more than {GUARD:g} point below PatchCore-K (only those may be chosen).",
             "",
             "| candidate | guard | mean | " + " | ".join(tasks) + " | " + " | ".join(f"K={k}" for k in sel["k"])
             + " |", "|---" * (3 + len(tasks) + len(sel["k"])) + "|"]
    for name, c in cands:
        mark = "**" if name == sel["chosen"] else ""
        guard = "✓" if c["eligible"] else "✗"
        lines.append(f"| {mark}{name}{mark} | {guard} | {c['mean']:.2f} | "
                     + " | ".join(f"{c['tasks'][t]:.1f}" for t in tasks) + " | "
                     + " | ".join(f"{c['per_k'][str(k)]:.1f}" for k in sel["k"]) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    if args.markdown_only:
        results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_selection.py",
                                                                        pieces=("--markdown-only",)))
        results.write_markdown(markdown(results.data))
        return 0
    torch.manual_seed(0)
    teacher = build_teacher(args.teacher)
    cache = Path(args.cache) / f"{args.teacher}_{args.image_size}"
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_selection.py",
                                                                    pieces=("--markdown-only",)), resume=False)
    base = SupportScoring(teacher)
    rows: dict[str, dict] = {}
    sizes: dict[str, dict] = {}
    start = time.time()
    for name in DEV_TASKS:
        pool, evaluation = development_split(name, args)
        encoded = base.encode_cached(cache / f"{name}.pt", load_images, evaluation, args.image_size, desc=name)
        keep = subsample([s.label for s in evaluation], args.max_images)
        labels = np.array([evaluation[i].label for i in keep])
        queries = encoded[torch.from_numpy(keep)]
        sizes[name] = {"normal": int((labels == 0).sum()), "abnormal": int((labels == 1).sum()),
                       "support_pool": len(pool)}
        print(f"{name}: {len(labels)} of {len(evaluation)} images, {time.time() - start:.0f} s", flush=True)
        for seed, k, draw in itertools.product(args.seeds, args.k, range(args.draws)):
            idx = draw_supports(len(pool), k, draw, seed=seed)
            supports, _ = load_images([pool[i] for i in idx], args.image_size, workers=0)
            for augment, standardize in itertools.product(AUGMENTS, STANDARDIZE):
                # the plain maps depend on neither the image score nor the positional floor: compute them once
                views = base.encode(augment_supports(supports, augment))
                banks = {(score, floor): SupportScoring(teacher, SupportScoringConfig(
                    augment=augment, score=score, standardize=standardize, positional=floor)).bank_from_views(views, k)
                    for score, floor in itertools.product(SCORES, POSITIONAL)}
                plain = banks["max", 0.0]
                terms = {key: [] for key in banks}
                glob = []
                for i in range(0, len(labels), 64):
                    chunk = queries[slice(i, i + 64)]
                    maps = base.raw_maps(chunk, plain)
                    for (score, floor), bank in banks.items():
                        terms[score, floor].append(reduce_map(bank.positioned(maps), score) / bank.patch_scale)
                    glob.append(global_distance(chunk, plain) / plain.global_scale)
                glob_term = torch.cat(glob).numpy()
                for score, floor, weight in itertools.product(SCORES, POSITIONAL, GLOBAL_WEIGHTS):
                    candidate = SupportScoringConfig(augment=augment, global_weight=weight, score=score,
                                                     standardize=standardize, positional=floor).name
                    auroc = 100 * roc_auc_score(labels, torch.cat(terms[score, floor]).numpy() + weight * glob_term)
                    rows.setdefault(candidate, {}).setdefault(name, {}).setdefault(str(k), []).append(auroc)
        print(f"{name}: scored, {time.time() - start:.0f} s", flush=True)
    summary = {}
    for cand, per_task in rows.items():
        task_means = {t: float(np.mean([np.mean(v) for v in per_k.values()])) for t, per_k in per_task.items()}
        summary[cand] = {"mean": float(np.mean(list(task_means.values()))), "tasks": task_means,
                         "per_k": {str(k): float(np.mean([np.mean(per_task[t][str(k)]) for t in per_task]))
                                   for k in args.k}}
    baseline = summary["patchcore"]
    eligible = [c for c in summary
                if all(summary[c]["tasks"][t] >= baseline["tasks"][t] - GUARD for t in baseline["tasks"])]
    best = max(eligible, key=lambda c: summary[c]["mean"])
    chosen = best if summary[best]["mean"] > baseline["mean"] else "patchcore"
    for cand in summary:
        summary[cand]["eligible"] = cand in eligible
    config = next(c for c in CANDIDATES if c.name == chosen)
    results.data.update(selection={"rule": RULE, "chosen": chosen, "config": config.as_dict(),
                                   "teacher": args.teacher, "image_size": args.image_size, "k": args.k,
                                   "draws": args.draws, "seeds": args.seeds, "evaluation_images": sizes,
                                   "candidates": summary, "raw": rows, "seconds": time.time() - start})
    results.save()
    results.write_markdown(markdown(results.data))
    print(f"chosen: {chosen} ({summary[chosen]['mean']:.2f} vs PatchCore-K {summary['patchcore']['mean']:.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
