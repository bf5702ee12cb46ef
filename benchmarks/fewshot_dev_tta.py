"""Test-time adaptation toward a fourth round of issue 22: a generic student fine-tuned on the K supports, added to
support scoring, on the widened development pool (no test split of a reported fold is read).

Regenerate:  python benchmarks/fewshot_dev_tta.py
Writes benchmarks/results/fewshot_dev_tta.json (+ .md).  Resumable: teacher features and generic students are cached
under benchmarks/.cache/fewshot_dev_tta/, and each task's records are saved per family of rows (``FAMILIES``);
``--tasks`` splits the work between processes.

The pool, draws and subsamples are those of ``benchmarks/fewshot_dev_research.py`` (its 10 tasks, K ∈ {2, 4, 8},
2 draws of seed 0, at most 100 images per task), at EfficientNet-Lite0, 128 px.

Inner leave-one-task-out.  A generic RD4AD student (``medad.models.adapted_student.train_generic_student``) is
trained for each task of the pool on the training normals of the *other* sources (``RECIPE``: ``per_source`` images
of each, evenly spaced, and their horizontal flips), never on the task's own source; brain_tumor and brainmri count
as one source (brainmri's images are re-processed copies of brain_tumor's).  Every source image with a near-copy
among the task's evaluation images is dropped too (``medad.data.near_duplicates``), and the counts are recorded.

Rows, each compared with PatchCore-K on the same supports:
* ``views+top1``: support scoring with the supports' flips and rotations and the top-1 % score (the support term);
* ``student[S]``: the student alone, fine-tuned for S steps on the support views (S = 0: the generic student, which
  ignores the supports; not a candidate);
* ``views+top1+student[S,w]``: the support term plus w times the student term (``AdaptedStudentScoring``);
* ``student[S,held_out]``, ``views+top1+student[S,w,held_out]``: the same with the student term in held-out units
  (each support scored by a student adapted to the other K − 1; ``student_scale="held_out"``), so that a student
  that does not generalise across a task's normals counts for less.  This family was added after the others had
  been run and read (round 4b, ``docs/METHODS.md``).

The rule for a fourth look at the test folds, written before this benchmark was run (``docs/METHODS.md``): some row
that uses the supports beats PatchCore-K by at least 3 points of mean image AUROC over the pool, with no task more
than 1 point below it.  Once every task is done, the rule is applied (``select``) and its outcome saved as the JSON's
``selection``: the chosen row, its scorer's config and the generic students' recipe, which
``benchmarks/fewshot_loo.py`` reads.
"""

from __future__ import annotations

import argparse
import itertools
import re
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fewshot_dev_research import POOL, SYNTHETIC, summary, task_images
from fewshot_dev_selection import development_split, pool_parser, subsample
from sklearn.metrics import roc_auc_score

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.data.tasks import Sample, load_task
from medad.engine.fewshot import draw_supports
from medad.engine.generic_student import GenericStudentRecipe, train_generic_student_on
from medad.io_utils import atomic_path
from medad.models.adapted_student import (AdaptedStudentConfig, AdaptedStudentScoring, student_maps,
                                          teacher_features)
from medad.models.support_scoring import QueryEncoding, SupportScoring, SupportScoringConfig, reduce_map
from medad.results import BenchmarkResults, benchmark_command

TEACHER, IMAGE_SIZE = "efficientnet_lite0", 128
RECIPE = GenericStudentRecipe(sources=("acrima", "isic", "mias", "zhanglab", "nih_cxr", "brain_tumor", "brats_slices",
                                       "headct", "brainmri"), teacher=TEACHER, image_size=IMAGE_SIZE,
                              per_source=150, steps=1500)
#: (fine-tuning steps, student unit) of each family of rows; the held-out family was added after the others were run
FAMILIES = ((0, "supports"), (50, "supports"), (150, "supports"), (50, "held_out"))
WEIGHTS = (0.25, 0.5, 1.0)
GUARD, MARGIN = 1.0, 3.0
#: rows that do not use the supports
NOT_CANDIDATES = {"patchcore", "student[0]"}


def pool_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments of the benchmarks that score this pool with generic students (this one and
    ``fewshot_dev_gate.py``): its draws, subsample, cache, tasks and the markdown-only switch."""
    parser = pool_parser(description)
    parser.set_defaults(seeds=[0], draws=2, max_images=100, cache="benchmarks/.cache/fewshot_dev_tta")
    parser.add_argument("--tasks", nargs="+", default=POOL, choices=POOL)
    parser.add_argument("--held-out", type=int, default=16, help="training normals per synthetic task")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the JSON")
    return parser


@dataclass
class EncodedTask:
    """One pool task's support pool and queries, the queries encoded once by the teacher."""

    pool: list[Sample]
    images: torch.Tensor
    labels: np.ndarray
    features: list[torch.Tensor]
    queries: QueryEncoding

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])


def encode_task(teacher, task: str, args: argparse.Namespace, image_size: int = IMAGE_SIZE) -> EncodedTask:
    """A pool task's support pool, query images and labels, and the queries' teacher features and encoding."""
    pool, images, labels = task_images(task, args, image_size)
    features = teacher_features(teacher, images)
    return EncodedTask(pool, images, labels, features,
                       SupportScoring.encoding_from_teacher(features, tuple(images.shape[-2:])))


def support_draws(pool: list[Sample], args: argparse.Namespace, image_size: int = IMAGE_SIZE
                  ) -> Iterator[tuple[tuple[int, int, int], torch.Tensor]]:
    """Every (draw seed, K, draw) of ``args`` and its K support images from ``pool``."""
    for key in itertools.product(args.seeds, args.k, range(args.draws)):
        seed, k, draw = key
        supports, _ = load_images([pool[i] for i in draw_supports(len(pool), k, draw, seed=seed)], image_size,
                                  workers=0)
        yield key, supports


def patchcore_scores(teacher, queries: QueryEncoding, supports: torch.Tensor) -> torch.Tensor:
    """PatchCore-K's image scores of the encoded queries against ``supports``."""
    patchcore = SupportScoring(teacher, SupportScoringConfig())
    return patchcore.score_encoded(queries, patchcore.prepare_supports(supports))[1]


def pool_results(script: str, args: argparse.Namespace, run_task: Callable[..., None], store: str = "draws",
                 environment: str = "") -> BenchmarkResults:
    """The results file of a benchmark that scores the pool task by task into ``results.data[store]``: every task
    of ``args.tasks`` not stored yet is scored (unless ``--markdown-only``), and what other processes saved is read
    back.  Its records are the caller's to derive from the stored data."""
    results = BenchmarkResults(args.name, command=benchmark_command(script, environment=environment,
                                                                    pieces=("--tasks", "--markdown-only")),
                               keep=lambda record: False)
    for key in (store, "seconds"):
        results.data.setdefault(key, {})
    if not args.markdown_only:
        torch.manual_seed(0)
        run_pending_tasks(results, build_teacher(TEACHER).eval(), args, lambda task: task in results.data[store],
                          run_task)
    results.refresh()  # the tasks another process saved since this one's last save
    return results


def run_pending_tasks(results: BenchmarkResults, teacher, args: argparse.Namespace,
                      done: Callable[[str], bool], run_task: Callable[..., None]) -> None:
    """``run_task(results, teacher, task, args)`` for each of ``args.tasks`` not ``done``; its time goes into
    ``results.data["seconds"]`` and the file is saved after each task (the benchmarks that score this pool with
    their own rows: ``fewshot_dev_gate.py``, ``fewshot_dev_learned.py``)."""
    for task in args.tasks:
        if done(task):
            continue
        start = time.time()
        run_task(results, teacher, task, args)
        results.data["seconds"][task] = time.time() - start
        results.save()
        print(f"{task}: done", flush=True)


def parse_args() -> argparse.Namespace:
    parser = pool_arguments(__doc__)
    parser.add_argument("--name", default="fewshot_dev_tta")
    return parser.parse_args()


def evaluation_samples(task: str, args: argparse.Namespace) -> list[Sample]:
    """The images a pool task scores (their originals, for the synthetic tasks)."""
    if task in SYNTHETIC:
        return load_task(SYNTHETIC[task]).train[-args.held_out:]
    _, evaluation = development_split(task, args)
    return [evaluation[i] for i in subsample([s.label for s in evaluation], args.max_images)]


def generic_student(task: str, teacher, args: argparse.Namespace, generic: dict[str, dict],
                    recipe: GenericStudentRecipe = RECIPE) -> dict[str, torch.Tensor]:
    """The generic student of a pool task (module doc; by ``recipe``), cached; when it is trained, the images it saw
    and the near-copies dropped go into ``generic[task]``."""
    size = "" if recipe.image_size == IMAGE_SIZE else f"@{recipe.image_size}"
    path = Path(args.cache) / f"student_without_{task}{size}.pt"
    if path.is_file():
        return torch.load(path)
    state, trained_on = train_generic_student_on(teacher, recipe, task, evaluation_samples(task, args), seed=0,
                                                 cache=Path(args.cache))
    generic[task] = {"images": trained_on["images"], "dropped_near_copies": trained_on["dropped_near_copies"]}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return state


def record(results: BenchmarkResults, row: str, task: str, key: tuple[int, int, int], labels: np.ndarray,
           scores: torch.Tensor) -> None:
    seed, k, draw = key
    results.records.append({"method": row, "task": task, "seed": seed, "k": k, "support_draw": draw,
                            "backbone": TEACHER, "image_size": IMAGE_SIZE, "protocol": "development",
                            "features": f"lite0@{IMAGE_SIZE}", "image_auroc": float(roc_auc_score(labels, scores.numpy()))})


def row_tag(steps: int, unit: str, weight: float | None = None) -> str:
    """``S[,w][,held_out]``: the steps, the student term's weight when given, and the student unit unless "supports"
    of a row."""
    return ",".join([f"{steps}", *([f"{weight:g}"] if weight is not None else []), *([unit] if unit != "supports" else [])])


def family_done(results: BenchmarkResults, task: str, steps: int, unit: str) -> bool:
    return results.has(task=task, method=f"student[{row_tag(steps, unit)}]")


def run_task(results: BenchmarkResults, teacher, task: str, args: argparse.Namespace) -> None:
    """The rows of one pool task that ``results`` lacks (by family: ``FAMILIES``), added to it."""
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    state = generic_student(task, teacher, args, results.data["tta"]["generic"])
    scorers = {(steps, unit): AdaptedStudentScoring(teacher, state, AdaptedStudentConfig(steps=steps,
                                                                                         student_scale=unit))
               for steps, unit in FAMILIES if not family_done(results, task, steps, unit)}
    with_baselines = not results.has(task=task, method="patchcore")
    encoded = encode_task(teacher, task, args)
    labels = encoded.labels
    for key, supports in support_draws(encoded.pool, args):
        if with_baselines:
            record(results, "patchcore", task, key, labels, patchcore_scores(teacher, encoded.queries, supports))
        support_term = None
        for (steps, unit), scorer in scorers.items():
            prepared = scorer.prepare_supports(supports, seed=key[2])
            if support_term is None:
                support_term = reduce_map(scorer.support_scoring.score_terms(encoded.queries, prepared.bank)[0],
                                          scorer.config.support.score)
                if with_baselines:
                    record(results, "views+top1", task, key, labels, support_term)
            student_term = reduce_map(student_maps(prepared.model, encoded.features, encoded.image_size)
                                      / prepared.student_scale, scorer.config.score)
            record(results, f"student[{row_tag(steps, unit)}]", task, key, labels, student_term)
            for weight in WEIGHTS:
                record(results, f"views+top1+student[{row_tag(steps, unit, weight)}]", task, key, labels,
                       support_term + weight * student_term)


def row_config(row: str) -> AdaptedStudentConfig:
    """The scorer a candidate row stands for."""
    if row == "views+top1":
        return AdaptedStudentConfig(steps=0, weight=0.0)
    match = re.fullmatch(r"views\+top1\+student\[(\d+),([\d.]+)(,held_out)?\]", row)
    if match is None:
        raise ValueError(f"row {row} has no support term: medad has no scorer for it")
    return AdaptedStudentConfig(steps=int(match[1]), weight=float(match[2]),
                                student_scale="held_out" if match[3] else "supports")


def guarded_best(rows: dict[str, dict], excluded: Collection[str] = ()) -> tuple[dict[str, dict], str | None]:
    """Every row's mean, its difference from PatchCore-K's and its worst task's (the rows of
    :func:`fewshot_dev_research.summary` but PatchCore-K and ``excluded``), and the best mean among those with no task
    more than ``GUARD`` points below PatchCore-K."""
    base = rows["patchcore"]
    candidates = {row: {"mean": r["mean"], "difference": r["mean"] - base["mean"],
                        "worst_task_difference": min(r["tasks"][t] - base["tasks"][t] for t in POOL)}
                  for row, r in rows.items() if row != "patchcore" and row not in excluded}
    guarded = [row for row, c in candidates.items() if c["worst_task_difference"] >= -GUARD]
    return candidates, (max(guarded, key=lambda row: candidates[row]["mean"]) if guarded else None)


def apply_rule(rows: dict[str, dict], excluded: set[str] = frozenset()) -> dict:
    """The pre-stated rule (module doc) over the rows of :func:`fewshot_dev_research.summary` (all but PatchCore-K and
    ``excluded`` are candidates): each candidate's difference from PatchCore-K, the best guarded one, and whether it
    beats PatchCore-K by ``MARGIN`` points."""
    candidates, chosen = guarded_best(rows, excluded)
    return {"rule": f"among rows using the supports with no pool task more than {GUARD:g} point below PatchCore-K, "
                    f"the best mean image AUROC; a fourth look at the test folds only if it beats PatchCore-K's mean "
                    f"by at least {MARGIN:g} points",
            "patchcore_mean": rows["patchcore"]["mean"], "candidates": candidates, "chosen": chosen,
            "met": chosen is not None and candidates[chosen]["difference"] >= MARGIN}


def pool_table(rows: dict[str, dict]) -> list[str]:
    """Markdown table of the rows of :func:`fewshot_dev_research.summary`, best mean first, with the guard column."""
    base = rows["patchcore"]
    lines = ["| row | guard | mean | Δ | " + " | ".join(POOL) + " |", "|---" * (4 + len(POOL)) + "|"]
    for method, row in sorted(rows.items(), key=lambda kv: -kv[1]["mean"]):
        guard = "✓" if all(row["tasks"][t] >= base["tasks"][t] - GUARD for t in base["tasks"]) else "✗"
        lines.append(f"| {method} | {guard} | {row['mean']:.2f} | {row['mean'] - base['mean']:+.2f} | "
                     + " | ".join(f"{row['tasks'][t]:.1f}" if t in row["tasks"] else "—" for t in POOL) + " |")
    return lines


def select(records: list[dict]) -> dict:
    """The pre-stated rule applied to the complete pool (:func:`apply_rule`), with the chosen row's scorer."""
    selection = {**apply_rule(summary(records)[f"lite0@{IMAGE_SIZE}"], NOT_CANDIDATES),
                 "teacher": TEACHER, "image_size": IMAGE_SIZE, "recipe": RECIPE.as_dict()}
    chosen = selection["chosen"]
    if chosen is not None:
        selection["config"] = row_config(chosen).as_dict()
        selection["scorer"] = row_config(chosen).name
    return selection


def markdown(data: dict) -> str:
    tta = data["tta"]
    rows = summary(data["records"])[f"lite0@{IMAGE_SIZE}"]
    lines = ["# Test-time adaptation of a generic student on the widened development pool (issue 22, round 4)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ",
             f"Time: {sum(tta['seconds'].values()) / 60:.1f} min of process time recorded per task, generic students "
             "included (a lower bound: where two processes saved at once, one's stale figure for a task the other had "
             "just run could win)", "",
             f"Module doc of `benchmarks/fewshot_dev_tta.py`: EfficientNet-Lite0 at {IMAGE_SIZE} px; the pool of "
             "`fewshot_dev_research.md` (same images and draws); each task's generic student trained on the other "
             "sources only (inner leave-one-task-out). Image AUROC (%), mean over K and draws per task; Δ = mean "
             f"minus PatchCore-K's on the same supports; guard ✓ = no task more than {GUARD:g} point below PatchCore-K. "
             "`student[0]` ignores the supports and is not a candidate.", "", *pool_table(rows)]
    selection = data.get("selection")
    if selection:
        chosen = selection["chosen"]
        lines += ["", "## The pre-stated rule", "", f"Rule: {selection['rule']}.", "",
                  (f"Chosen: `{chosen}`, {selection['candidates'][chosen]['difference']:+.2f} points over PatchCore-K "
                   f"(worst task {selection['candidates'][chosen]['worst_task_difference']:+.1f}) → "
                   + ("**met**: the fourth look at the test folds is `benchmarks/fewshot_loo.py` with "
                      f"`{selection['scorer']}`" if selection["met"] else
                      "**not met**: the test folds are not read; the chosen row is what `--method adapted_student` "
                      "scores with (`benchmarks/bundled_generic_student.py`), an option beside the default")
                   if chosen else "No candidate passes the guard → **not met**: the test folds are not read")]
    lines += ["", "Generic students (images seen, near-copies of the task's evaluation images dropped per source):", ""]
    lines += [f"- {task}: {g['images']} images; dropped "
              + (", ".join(f"{s} {n}" for s, n in g["dropped_near_copies"].items() if n) or "none")
              for task, g in tta["generic"].items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    command = benchmark_command("fewshot_dev_tta.py", pieces=("--tasks", "--markdown-only"))
    results = BenchmarkResults(args.name, command=command)
    if not args.markdown_only:
        torch.manual_seed(0)
        results.data.setdefault("tta", {"k": args.k, "draws": args.draws, "seeds": args.seeds,
                                        "generic_steps": RECIPE.steps, "per_source": RECIPE.per_source,
                                        "weights": list(WEIGHTS), "generic": {}, "seconds": {}})
        results.data["tta"]["families"] = [list(family) for family in FAMILIES]
        teacher = build_teacher(TEACHER)
        for task in args.tasks:
            if all(family_done(results, task, steps, unit) for steps, unit in FAMILIES):
                continue
            start = time.time()
            run_task(results, teacher, task, args)
            seconds = results.data["tta"]["seconds"]
            seconds[task] = seconds.get(task, 0.0) + time.time() - start
            results.save()
            print(f"{task}: done", flush=True)
    if all(family_done(results, task, steps, unit) for task in POOL for steps, unit in FAMILIES):
        results.data["selection"] = select(results.records)
        results.save()
    results.write_markdown(markdown(results.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
