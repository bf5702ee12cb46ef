"""Research rows toward a fourth round of issue 22: teachers, input size, self-contrast and mutual scoring, on the
development pool widened by two synthetic focal tasks (no test split of a reported fold is read).

Regenerate:  python benchmarks/fewshot_dev_research.py
Writes benchmarks/results/fewshot_dev_research.json (+ .md).  Resumable: each (features, task) is saved when done,
and a rerun of the same command skips what the file holds; ``--features`` and ``--tasks`` split the work between processes.

The pool: the eight development tasks of ``benchmarks/fewshot_dev_selection.py`` (same splits and subsamples)
plus ``headct_synthetic`` and ``brainmri_synthetic`` (``benchmarks/fewshot_dev_synthetic.py``: held-out training
normals of headct and brainmri, and the same images with one synthetic lesion each; their normals vary from patient
to patient as the two focal test folds' do, which no other development task offers).  Draws: K ∈ {2, 4, 8}, 2 draws
of seed 0, and at most 100 images per development task (a fixed stratified subsample): this
machine's budget for 224 px.

Rows, each on the features it names (PatchCore-K on the same features is its reference):
* features: EfficientNet-Lite0 at 128 px (the rounds so far), at 224 px, and Lite0 + Lite2 at 128 px (both
  teachers' locally aware patch features concatenated, their pooled features too);
* scorers: PatchCore-K, support views with the top-1 % score, and the scorers of rounds 2 and 3;
* Lite0 at 128 px only: *self-contrast*, the top-1 % score minus ``CONTRAST`` times the median of the query's own
  map (a normal image that matches every support poorly is not more anomalous for it), and *mutual scoring*
  (transductive, an opt-in mode: it reads the other unlabelled queries of the batch): each query patch's distance
  to its nearest patch in every other query image (and, with supports, in every support image), the image score
  the top-1 % of the map of the mean of the smallest ``fraction`` of those distances.  In the synthetic tasks every
  query's twin (the same image with or without its lesion) is among the others, which flatters mutual scoring there.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch
import torch.nn.functional as F
from fewshot_dev_selection import DEV_TASKS, development_split, pool_parser, subsample
from fewshot_dev_synthetic import synthetic_task
from sklearn.metrics import roc_auc_score

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.data.tasks import Sample
from medad.engine.fewshot import draw_supports
from medad.models.support_scoring import (QueryEncoding, SupportScoring, SupportScoringConfig, augment_supports,
                                          flatten_patches, reduce_map, squared_distances)
from medad.results import BenchmarkResults, benchmark_command
from medad.scoring import DEFAULT_SIGMA, smooth_maps

SYNTHETIC = {"headct_synthetic": "headct", "brainmri_synthetic": "brainmri"}
POOL = [*DEV_TASKS, *SYNTHETIC]
#: features label → (teachers, input size)
FEATURES = {"lite0@128": (("efficientnet_lite0",), 128), "lite0@224": (("efficientnet_lite0",), 224),
            "lite0+lite2@128": (("efficientnet_lite0", "efficientnet_lite2"), 128)}
SCORERS = {"patchcore": SupportScoringConfig(),
           "views+top1": SupportScoringConfig(augment="flip+rotate", score="top1"),
           "round 2": SupportScoringConfig(augment="flip+rotate", score="top1", standardize=0.5),
           "round 3": SupportScoringConfig(augment="flip+rotate", global_weight=0.5, score="top1", standardize=0.5,
                                           positional=0.1)}
#: the rows only the reference features get
EXTRA_FEATURES = "lite0@128"
CONTRAST = 0.5
CONTRAST_LABEL = f"self-contrast[{CONTRAST:g}]"
MUTUAL_FRACTIONS = (0.1, 0.3)
#: queries scored at once (the distance matrix of 16 queries at 224 px against 32 support views is ~1 GB)
CHUNK = 16


def parse_args() -> argparse.Namespace:
    parser = pool_parser(__doc__)
    parser.set_defaults(seeds=[0], draws=2, max_images=100)
    parser.add_argument("--features", nargs="+", default=list(FEATURES), choices=list(FEATURES))
    parser.add_argument("--tasks", nargs="+", default=POOL, choices=POOL)
    parser.add_argument("--held-out", type=int, default=16, help="training normals per synthetic task")
    parser.add_argument("--name", default="fewshot_dev_research")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the JSON")
    return parser.parse_args()


class EnsembleEncoder:
    """Patch and pooled features of one or more teachers on the same grid: the patches concatenated, the pooled
    features concatenated and re-normalised (each teacher weighs alike)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.encoders = [SupportScoring(build_teacher(name)) for name in names]

    def encode(self, images: torch.Tensor) -> QueryEncoding:
        parts = [encoder.encode(images) for encoder in self.encoders]
        return QueryEncoding(torch.cat([p.patches for p in parts], dim=1),
                             F.normalize(torch.cat([p.pooled for p in parts], dim=1), dim=1), parts[0].image_size)


def task_images(name: str, args: argparse.Namespace, image_size: int) -> tuple[list[Sample], torch.Tensor, np.ndarray]:
    """(support pool, query images, labels) of one task of the widened pool."""
    if name in SYNTHETIC:
        return synthetic_task(SYNTHETIC[name], image_size, args.held_out)
    pool, evaluation = development_split(name, args)
    keep = subsample([s.label for s in evaluation], args.max_images)
    images, _ = load_images([evaluation[i] for i in keep], image_size, desc=name)
    return pool, images, np.array([evaluation[i].label for i in keep])


def scorer_scores(queries: QueryEncoding, views: dict[str, QueryEncoding], k: int, contrast: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Image scores of every scorer of ``SCORERS`` (and, with ``contrast``, of self-contrast: the top-1 % score minus
    ``CONTRAST`` times the median of the query's own map against the support views); the plain maps are computed
    once per (support views, standardisation) and shared by the scorers that differ only in the image score,
    positional floor or whole-image term, and by self-contrast."""
    groups: dict[tuple[str, float], list[str]] = {}
    for label, config in SCORERS.items():
        groups.setdefault((config.augment, config.standardize), []).append(label)
    contrast_group = ("flip+rotate", 0.0) if contrast else None
    scores: dict[str, list[torch.Tensor]] = {label: [] for label in SCORERS}
    if contrast:
        scores[CONTRAST_LABEL] = []
    for (augment, standardize), labels in groups.items():
        plain = SupportScoring(None, SupportScoringConfig(augment=augment, standardize=standardize))
        plain_bank = plain.bank_from_views(views[augment], k)
        scorers = {label: SupportScoring(None, SCORERS[label]) for label in labels}
        banks = {label: scorer.bank_from_views(views[augment], k) for label, scorer in scorers.items()}
        for i in range(0, len(queries), CHUNK):
            chunk = queries[slice(i, i + CHUNK)]
            maps = plain.raw_maps(chunk, plain_bank)
            for label, scorer in scorers.items():
                scores[label].append(scorer.score_encoded(chunk, banks[label], banks[label].positioned(maps))[1])
            if (augment, standardize) == contrast_group:
                scores[CONTRAST_LABEL].append(reduce_map(maps, "top1")
                                              - CONTRAST * maps.flatten(1).median(dim=1).values)
    return {label: torch.cat(parts) for label, parts in scores.items()}


def nearest_by_image(queries: QueryEncoding, references: QueryEncoding) -> torch.Tensor:
    """``B×P×R``: the squared distance of each of the B queries' P patches to its nearest patch in each of the R
    reference images."""
    per_reference = references.patches.shape[2] * references.patches.shape[3]
    rows = flatten_patches(references.patches)
    return torch.stack([squared_distances(flatten_patches(queries.patches[i:i + 1]), rows)
                        .view(-1, len(references), per_reference).amin(dim=2) for i in range(len(queries))])


def mutual_scores(among_queries: torch.Tensor, fraction: float, queries: QueryEncoding,
                  to_supports: torch.Tensor | None = None) -> torch.Tensor:
    """Image scores of mutual scoring (module doc) from :func:`nearest_by_image` of the queries against themselves
    (and against the support images, when given): every other query image and every support image is a reference;
    a patch scores the mean of its smallest ``fraction`` of nearest-patch distances to them."""
    batch, _, height, width = queries.patches.shape
    nearest = among_queries.clone()
    nearest[torch.arange(batch), :, torch.arange(batch)] = float("inf")  # a query is not its own reference
    if to_supports is not None:
        nearest = torch.cat([nearest, to_supports], dim=2)
    references = nearest.shape[2] - 1
    smallest = nearest.topk(max(1, round(fraction * references)), dim=2, largest=False).values
    patch_maps = smallest.clamp_min(0).sqrt().mean(dim=2).view(batch, 1, height, width)
    image_maps = F.interpolate(patch_maps, size=queries.image_size, mode="bilinear", align_corners=False)[:, 0]
    return reduce_map(smooth_maps(image_maps, DEFAULT_SIGMA), "top1")


def record(results: BenchmarkResults, features: str, scorer: str, task: str, key: tuple[int, int, int] | None,
           labels: np.ndarray, scores: torch.Tensor) -> None:
    teachers, size = FEATURES[features]
    seed, k, draw = key if key is not None else (None, 0, None)
    results.records.append({"method": scorer, "task": task, "seed": seed, "k": k, "support_draw": draw,
                            "backbone": "+".join(teachers), "image_size": size, "protocol": "development",
                            "features": features, "image_auroc": float(roc_auc_score(labels, scores.numpy()))})


def run_task(results: BenchmarkResults, features: str, encoder: EnsembleEncoder, task: str,
             args: argparse.Namespace) -> None:
    """Every row of one (features, task) pair, added to ``results``."""
    pool, images, labels = task_images(task, args, FEATURES[features][1])
    queries = encoder.encode(images)
    extras = features == EXTRA_FEATURES
    if extras:  # the queries' distances to each other do not depend on the supports: computed once per task
        among_queries = nearest_by_image(queries, queries)
        for fraction in MUTUAL_FRACTIONS:
            record(results, features, f"mutual[{fraction:g}] (transductive)", task, None, labels,
                   mutual_scores(among_queries, fraction, queries))
    for key in itertools.product(args.seeds, args.k, range(args.draws)):
        seed, k, draw = key
        supports, _ = load_images([pool[i] for i in draw_supports(len(pool), k, draw, seed=seed)],
                                  FEATURES[features][1], workers=0)
        views = {augment: encoder.encode(augment_supports(supports, augment)) for augment in ("none", "flip+rotate")}
        for label, scores in scorer_scores(queries, views, k, contrast=extras).items():
            record(results, features, label, task, key, labels, scores)
        if extras:
            record(results, features, f"mutual[{MUTUAL_FRACTIONS[0]:g}]+supports (transductive)", task, key, labels,
                   mutual_scores(among_queries, MUTUAL_FRACTIONS[0], queries, nearest_by_image(queries, views["none"])))


def summary(records: list[dict]) -> dict[str, dict[str, dict]]:
    """features → row → {"tasks": mean AUROC (%) per task, "mean": over tasks} (K, draws and seeds averaged)."""
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for r in records:
        rows.setdefault((r["features"], r["method"]), {}).setdefault(r["task"], []).append(100 * r["image_auroc"])
    out: dict[str, dict[str, dict]] = {}
    for (features, method), per_task in rows.items():
        tasks = {t: float(np.mean(per_task[t])) for t in POOL if t in per_task}
        out.setdefault(features, {})[method] = {"tasks": tasks, "mean": float(np.mean(list(tasks.values())))}
    return out


def markdown(data: dict) -> str:
    research = data["research"]
    table = summary(data["records"])
    lines = ["# Research rows on the development pool widened by two synthetic focal tasks (issue 22, round 4)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             "Time: " + ", ".join(f"{f} {sum(s.values()) / 60:.1f} min" for f, s in research["seconds"].items()), "",
             "Module doc of `benchmarks/fewshot_dev_research.py`: the eight development tasks of "
             "`fewshot_dev_selection.md` (same images) plus `headct_synthetic` and `brainmri_synthetic` (held-out "
             f"training normals of those folds ± one synthetic lesion each); K ∈ {research['k']}, {research['draws']} "
             f"draws × draw seeds {research['seeds']}. No test split of a reported fold is read. Image AUROC (%), mean "
             "over K and draws per task; Δ = mean minus PatchCore-K's on the same features; guard ✓ = no task more "
             "than 1 point below PatchCore-K on the same features. Rows marked *transductive* read the other "
             "unlabelled queries (an opt-in mode, not a candidate for the default).", ""]
    for features, rows in table.items():
        base = rows["patchcore"]
        lines += [f"## {features}", "", "| row | guard | mean | Δ | " + " | ".join(POOL) + " |",
                  "|---" * (4 + len(POOL)) + "|"]
        for method, row in sorted(rows.items(), key=lambda kv: -kv[1]["mean"]):
            guard = "✓" if all(row["tasks"][t] >= base["tasks"][t] - 1 for t in base["tasks"]) else "✗"
            lines.append(f"| {method} | {guard} | {row['mean']:.2f} | {row['mean'] - base['mean']:+.2f} | "
                         + " | ".join(f"{row['tasks'][t]:.1f}" if t in row["tasks"] else "—" for t in POOL) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    command = benchmark_command("fewshot_dev_research.py", pieces=("--features", "--tasks", "--markdown-only"))
    results = BenchmarkResults(args.name, command=command)
    if not args.markdown_only:
        torch.manual_seed(0)
        results.data.setdefault("research", {"k": args.k, "draws": args.draws, "seeds": args.seeds,
                                             "held_out": args.held_out, "seconds": {}})
        for features in args.features:
            encoder = EnsembleEncoder(FEATURES[features][0])
            for task in args.tasks:
                if results.has(features=features, task=task):
                    continue
                start = time.time()
                run_task(results, features, encoder, task, args)
                # one entry per (features, task), each written by one process: processes sharing the file merge
                results.data["research"]["seconds"].setdefault(features, {})[task] = time.time() - start
                results.save()
                print(f"{features} {task}: done", flush=True)
    results.write_markdown(markdown(results.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
