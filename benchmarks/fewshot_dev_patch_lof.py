"""Round 12 of issue 22: the support term's local-density correction per patch (a local outlier factor), on the
widened development pool (no test split of a reported fold is read).

Regenerate:  OMP_NUM_THREADS=2 python benchmarks/fewshot_dev_patch_lof.py
Writes benchmarks/results/fewshot_dev_patch_lof.json (+ .md).  The support term is computed anew for every draw of
rounds 5–11 (same pool, queries and supports); the adapted student's and the teacher→student terms come from the draws
rounds 5 and 10 saved (``fewshot_dev_units.draw_terms``).

The patch term (``docs/METHODS.md``, round 12, stated before this ran): the bank holds the patch features of the K
supports and their views (flips and ±10° rotations, as the default's support term); each bank patch p has r(p), its
distance to the nearest patch of the *other* supports' views, floored at ``FLOOR`` times the mean of r over the bank.
A query patch scores its distance to its nearest bank patch p over r(p); the map is upsampled, smoothed and scored by
its top 1 % as PatchCore-K's.  The candidate row adds ¼ × the adapted student's term (held-out mean unit) and, at
K = 2, round 10's ½ × teacher→student term, as the default does; the rule: the default changes to it if no pool task
is more than 1 point below PatchCore-K and its mean beats the default's by at least ``MIN_GAIN`` points.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from fewshot_dev_learned import IMAGE_SIZE
from fewshot_dev_research import POOL, summary, task_images
from fewshot_dev_tta import GUARD, TEACHER, pool_arguments, pool_table
from fewshot_dev_units import (DEFAULT_WEIGHT, MIN_GAIN, development_record, draw_terms, per_k_differences, per_k_table,
                              saved_draws, saved_draws_parser)
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.engine.fewshot import draw_supports
from medad.models.adapted_student import teacher_features
from medad.models.support_scoring import (DISTANCE_BLOCK, QueryEncoding, SupportScoring, SupportScoringConfig,
                                          augment_supports, flatten_patches, reduce_map, squared_distances)
from medad.results import BenchmarkResults, benchmark_command
from medad.scoring import smooth_maps

#: the default's support term: views and image score
SUPPORT = SupportScoringConfig(augment="flip+rotate", score="top1")
#: r(p) is floored at this fraction of its mean over the bank
FLOOR = 0.1
CANDIDATE, ALONE, DEFAULT = "lof+student/mean w=0.25", "lof", "support/nn+student/mean w=0.25"


def nearest(points: torch.Tensor, bank: torch.Tensor, excluded: torch.Tensor | None = None,
            owners: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance of each row of ``points`` to its nearest row of ``bank`` and that row's index; with ``excluded``
    (one owner per point) and ``owners`` (one per bank row), bank rows of the point's own owner are skipped."""
    rows = max(1, DISTANCE_BLOCK // max(1, len(bank)))
    distances, indices = [], []
    for start in range(0, len(points), rows):
        squared = squared_distances(points[start:start + rows], bank)
        if excluded is not None:
            squared[excluded[start:start + rows, None] == owners[None, :]] = torch.inf
        value, index = squared.min(dim=1)
        distances.append(value.clamp_min(0).sqrt())
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


@torch.no_grad()
def patch_lof_scores(queries: QueryEncoding, supports: torch.Tensor, teacher) -> np.ndarray:
    """The patch term's image score of every query against one support set (module doc)."""
    k, image_size = len(supports), queries.image_size
    encoded = SupportScoring.encoding_from_teacher(teacher_features(teacher, augment_supports(supports,
                                                                                             SUPPORT.augment)),
                                                   image_size)
    height, width = encoded.patches.shape[-2:]
    owners = torch.arange(k).repeat(len(encoded) // k).repeat_interleave(height * width)
    bank = flatten_patches(encoded.patches)
    spread, _ = nearest(bank, bank, excluded=owners, owners=owners)
    spread = spread.clamp_min(FLOOR * float(spread.mean()))
    distance, index = nearest(flatten_patches(queries.patches), bank)
    ratio = (distance / spread[index]).view(len(queries), 1, height, width)
    maps = smooth_maps(F.interpolate(ratio, size=image_size, mode="bilinear", align_corners=False)[:, 0], SUPPORT.sigma)
    return reduce_map(maps, SUPPORT.score).numpy()


def run(gate_data: dict, tsd_data: dict, teacher) -> tuple[list[dict], dict]:
    """Records of the rows (module doc) per task and draw, and the patch term's scores per draw (saved)."""
    args = pool_arguments(__doc__).parse_args([])
    records, saved = [], {}
    for task in tqdm(POOL, desc="tasks"):
        pool, images, labels = task_images(task, args, IMAGE_SIZE)
        if labels.tolist() != gate_data[task]["labels"]:
            raise ValueError(f"{task}: round 5 scored other queries")
        queries = SupportScoring.encoding_from_teacher(teacher_features(teacher, images), tuple(images.shape[-2:]))
        tsd_queries = np.array(tsd_data[task]["queries"])
        saved[task] = []
        for gate_draw, tsd_draw in zip(gate_data[task]["draws"], tsd_data[task]["draws"], strict=True):
            seed, k, draw = gate_draw["seed"], gate_draw["k"], gate_draw["draw"]
            supports, _ = load_images([pool[i] for i in draw_supports(len(pool), k, draw, seed=seed)], IMAGE_SIZE,
                                      workers=0)
            lof = patch_lof_scores(queries, supports, teacher)
            saved[task].append({"seed": seed, "k": k, "draw": draw, "lof": lof.tolist()})
            terms = draw_terms(gate_draw, tsd_draw, tsd_queries)
            rows = {"patchcore": np.array(gate_draw["patchcore"]), ALONE: lof,
                    CANDIDATE: lof + DEFAULT_WEIGHT * terms["student/mean"] + terms["tsd"],
                    DEFAULT: terms["support/nn"] + DEFAULT_WEIGHT * terms["student/mean"] + terms["tsd"]}
            for row, scores in rows.items():
                records.append(development_record(row, task, (seed, k, draw), 100 * roc_auc_score(labels, scores)))
    return records, saved


def select(records: list[dict]) -> dict:
    """The pre-stated rule (module doc)."""
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    base, candidate, default = rows["patchcore"], rows[CANDIDATE], rows[DEFAULT]
    worst = min(candidate["tasks"][t] - base["tasks"][t] for t in POOL)
    return {"rule": f"the default changes to `{CANDIDATE}` if no pool task is more than {GUARD:g} point below "
                    f"PatchCore-K and its mean beats the default's by at least {MIN_GAIN:g} point",
            "candidate_mean": candidate["mean"], "default_mean": default["mean"], "worst_task_difference": worst,
            "changes": worst >= -GUARD and candidate["mean"] >= default["mean"] + MIN_GAIN}


def markdown(data: dict, records: list[dict]) -> str:
    rows = summary(records)[f"lite0@{IMAGE_SIZE}"]
    by_k = per_k_differences(records)
    s = data["selection"]
    lines = ["# Round 12: the local-density correction per patch (issue 22, development pool)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {data['seconds'] / 60:.1f} min", "",
             "Module doc of `benchmarks/fewshot_dev_patch_lof.py`: EfficientNet-Lite0 at 128 px, the pool and draws of "
             "`fewshot_dev_tta` (K 2/4/8 × 2 draws, seed 0). `lof` = each query patch's distance to its nearest "
             "support patch over that patch's distance to the other supports (module doc); "
             f"`{DEFAULT}` = the default (round 11). Rows with `student` add ¼ × the adapted student and, at K = 2, "
             "½ × the teacher→student term. Image AUROC (%), mean over K and draws per task; Δ = mean minus "
             f"PatchCore-K's on the same supports; guard ✓ = no task more than {GUARD:g} point below PatchCore-K.", ""]
    lines += pool_table(rows)
    lines += per_k_table(by_k, [CANDIDATE, ALONE, DEFAULT])
    lines += ["", "## The pre-stated rule", "", f"{s['rule']}: candidate {s['candidate_mean']:.2f} (worst task "
              f"{s['worst_task_difference']:+.1f}) against the default's {s['default_mean']:.2f} → "
              + ("**the default changes**" if s["changes"] else "**the default is unchanged**")]
    return "\n".join(lines) + "\n"


def main() -> int:
    import time

    args = saved_draws_parser(__doc__, "fewshot_dev_patch_lof").parse_args()
    started = time.time()
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_dev_patch_lof.py",
                                                                    environment="OMP_NUM_THREADS=2"),
                               keep=lambda record: False)
    gate_data, tsd_data = saved_draws(args)
    records, saved = run(gate_data, tsd_data, build_teacher(TEACHER).eval())
    results.records[:] = records
    results.data.update(lof=saved, selection=select(records), seconds=time.time() - started)
    results.save()
    results.write_markdown(markdown(results.data, records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
