"""Few-shot on unseen tasks, the pre-registered test run: medad's default scorer against PatchCore-K on clean folds.

Regenerate:  python benchmarks/fewshot_loo.py
Writes benchmarks/results/fewshot_loo.json (+ .md).  Resumable (records already present are skipped; teacher
features and generic students cached under benchmarks/.cache/fewshot_loo/); ``--folds`` splits the work between
processes.

Protocol.  Each of the five reported tasks is a fold.  Its test split is scored whole, with K normal supports drawn
from its training normals; every task is near-duplicate-clean (``medad.data.near_duplicates``: no test image has a
near-copy in its training split, hence none among the supports).

The default scorer (round 4) is the one ``benchmarks/fewshot_dev_tta.py`` chose on the development pool by its
pre-stated rule: support scoring plus a generic student adapted to the supports (``medad.models.adapted_student``).
Per fold and training seed, the generic student is trained by the selection's recipe
(``medad.engine.generic_student``) on the training normals of the other tasks, never on the fold's own source, and
without every image that near-copies one of the fold's test images; what each source dropped goes into the JSON.
The choice was committed before this run; the commit is recorded as ``selection_commit``, and the run refuses to
start when the selection file differs from its last commit or the rule was not met.  PatchCore-K uses the default's
teacher and input size.

Statistics: image AUROC per (training seed, draw seed, support draw); mean ± std over them; paired differences
default − PatchCore-K on the same supports, with 95 % bootstrap intervals over training seeds × draws per fold, and
over folds (resampling folds, then pairs within each fold).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.data.near_duplicates import drop_near_duplicates
from medad.data.tasks import Task, load_task
from medad.engine.fewshot import draw_supports
from medad.engine.generic_student import GenericStudentRecipe, train_generic_student_on
from medad.io_utils import atomic_path
from medad.models.adapted_student import AdaptedStudentConfig, AdaptedStudentScoring, teacher_features
from medad.models.support_scoring import SupportScoring
from medad.results import BenchmarkResults, benchmark_command

FOLDS = ["headct", "brainmri", "brain_tumor", "zhanglab", "nih_cxr"]
SELECTION = Path("benchmarks/results/fewshot_dev_tta.json")
LEAKY = Path("benchmarks/results/fewshot_loo_leaky.json")
#: the earlier pre-registered test runs: their file, their selection's file, and what they led the next round to change
EARLIER_ROUNDS = {
    1: (Path("benchmarks/results/fewshot_loo_round1.json"), "fewshot_dev_selection_round1.md",
        "chosen on a development pool without focal lesions. Its losses on the focal folds led to round 2's focal "
        "development tasks and guard"),
    2: (Path("benchmarks/results/fewshot_loo_round2.json"), "fewshot_dev_selection_round2.md",
        "chosen with round 2's focal development tasks and guard. Its small margin led round 3 to explore, on the "
        "development pool only, the positional normalisation of the map"),
    3: (Path("benchmarks/results/fewshot_loo_round3.json"), "fewshot_dev_selection.md",
        "training-free, chosen with the positional normalisation. Its losses on headct and brainmri led round 4 to "
        "widen the development pool with synthetic focal tasks and to adapt a generic student to the supports"),
}
BASELINE = "patchcore"
#: queries scored at once
CHUNK = 64


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="support-draw seeds")
    parser.add_argument("--training-seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds of the generic students (one trained per fold and seed)")
    parser.add_argument("--folds", nargs="+", default=FOLDS, choices=FOLDS)
    parser.add_argument("--bootstrap", type=int, default=10000)
    parser.add_argument("--cache", default="benchmarks/.cache/fewshot_loo")
    parser.add_argument("--name", default="fewshot_loo")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the JSON")
    return parser.parse_args()


def selection_commit() -> str:
    """The commit that last changed the selection file; refuses a selection with uncommitted changes."""
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(SELECTION)]).returncode != 0:
        raise SystemExit(f"{SELECTION} has uncommitted changes: commit the selection before the test run")
    out = subprocess.run(["git", "log", "-1", "--format=%H", "--", str(SELECTION)], capture_output=True, text=True)
    if not out.stdout.strip():
        raise SystemExit(f"{SELECTION} is not committed: run and commit benchmarks/fewshot_dev_tta.py first")
    return out.stdout.strip()


def cross_task_removals(target: Task, names: list[str]) -> dict[str, int]:
    """Per other task: its training images that near-duplicate a test image of ``target``."""
    out = {}
    for name in names:
        if name != target.name:
            _, dropped = drop_near_duplicates(load_task(name).train, target.test, why=f"{target.name} test")
            out[name] = len(dropped)
    return out


def generic_student(task: Task, teacher, recipe: GenericStudentRecipe, seed: int, cache: Path
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """The fold's generic student of one training seed and what it was trained on (module doc), cached."""
    key = hashlib.sha1(json.dumps(recipe.as_dict(), sort_keys=True).encode()).hexdigest()[:10]
    path = cache / f"student_without_{task.name}_seed{seed}_{key}.pt"
    if path.is_file():
        saved = torch.load(path)
        return saved["state"], saved["trained_on"]
    state, trained_on = train_generic_student_on(teacher, recipe, task.name, task.test, seed=seed,
                                                 cache=cache / "sources")
    with atomic_path(path) as tmp:
        torch.save({"state": state, "trained_on": trained_on}, tmp)
    return state, trained_on


def test_features(task: Task, teacher, size: int, cache: Path) -> list[torch.Tensor]:
    """The teacher features of the fold's whole test split (in its order), cached."""
    path = cache / f"{teacher.name}_{size}_{task.name}_test_features.pt"
    if path.is_file():
        return torch.load(path)
    images, _ = load_images(task.test, size, desc=f"{task.name} test")
    features = teacher_features(teacher, images)
    with atomic_path(path) as tmp:
        torch.save(features, tmp)
    return features


def draw_scores(scorer: SupportScoring | AdaptedStudentScoring, supports: torch.Tensor, features: list[torch.Tensor],
                image_size: tuple[int, int], draw: int) -> np.ndarray:
    """Image scores of every query (given by its teacher features) against one support set, ``CHUNK`` at a time."""
    if isinstance(scorer, AdaptedStudentScoring):
        prepared = scorer.prepare_supports(supports, seed=draw)

        def score(f: list[torch.Tensor]) -> torch.Tensor:
            return scorer.score_features(f, prepared, image_size)[1]
    else:
        bank = scorer.prepare_supports(supports)

        def score(f: list[torch.Tensor]) -> torch.Tensor:
            return scorer.score_encoded(SupportScoring.encoding_from_teacher(f, image_size), bank)[1]
    n = len(features[0])
    return torch.cat([score([f[i:i + CHUNK] for f in features]) for i in range(0, n, CHUNK)]).numpy()


def run(args, results: BenchmarkResults, config: AdaptedStudentConfig, recipe: GenericStudentRecipe) -> None:
    teacher = build_teacher(results.data["teacher"])
    size = results.data["image_size"]
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    image_size = (size, size)
    for fold in args.folds:
        task = load_task(fold)
        draws = list(itertools.product(args.seeds, args.k, range(args.draws)))
        wanted = [(BASELINE, None, *d) for d in draws] + [("default", t, *d) for t in args.training_seeds
                                                          for d in draws]
        if all(results.has(task=fold, role=r, training_seed=t, seed=s, k=k, support_draw=d) for r, t, s, k, d in wanted):
            continue
        start = time.time()
        features = test_features(task, teacher, size, cache)
        labels = np.array([s.label for s in task.test])
        results.data.setdefault("folds", {})[fold] = {
            "train_normals": len(task.train), "test_normal": int((labels == 0).sum()),
            "test_abnormal": int((labels == 1).sum()),
            "removed_from_own_train": {"exact": sum("pixel-identical" in r.reason for r in task.removed),
                                       "near": task.meta.get("near_duplicates_removed", 0)},
            "removed_from_other_tasks": cross_task_removals(task, FOLDS)}
        scorers: dict = {(BASELINE, None): SupportScoring(teacher)}
        for seed in args.training_seeds:
            state, trained_on = generic_student(task, teacher, recipe, seed, cache)
            results.data.setdefault("generic", {}).setdefault(fold, {})[str(seed)] = trained_on
            scorers["default", seed] = AdaptedStudentScoring(teacher, state, config)
        for role, training_seed, seed, k, draw in wanted:
            if results.has(task=fold, role=role, training_seed=training_seed, seed=seed, k=k, support_draw=draw):
                continue
            idx = draw_supports(len(task.train), k, draw, seed=seed)
            supports, _ = load_images([task.train[i] for i in idx], size, workers=0)
            scorer = scorers[role, training_seed]
            scores = draw_scores(scorer, supports, features, image_size, draw)
            name = scorer.config.name
            if not np.isfinite(scores).all():
                raise RuntimeError(f"{fold}: non-finite scores from {name}")
            results.records.append({"task": fold, "method": name, "role": role, "training_seed": training_seed,
                                    "seed": seed, "k": k, "support_draw": draw,
                                    "supports": [task.train[i].name for i in idx], "n_scored": len(scores),
                                    "image_auroc": float(roc_auc_score(labels, scores))})
            results.save()
        seconds = results.data.setdefault("seconds", {})
        seconds[fold] = round(seconds.get(fold, 0.0) + time.time() - start, 1)
        results.save()
        print(f"{fold}: {time.time() - start:.0f} s", flush=True)


def paired(records: list[dict], fold: str, k: int) -> np.ndarray:
    """Per (training seed, draw seed, draw): default − PatchCore-K AUROC (points) on the same supports."""
    by = {(r["role"], r.get("training_seed"), r["seed"], r["support_draw"]): r["image_auroc"] for r in records
          if r["task"] == fold and r["k"] == k}
    keys = sorted((t, s, d) for m, t, s, d in by if m == "default" and (BASELINE, None, s, d) in by)
    return np.array([100 * (by[("default", t, s, d)] - by[(BASELINE, None, s, d)]) for t, s, d in keys])


def bootstrap_fold(diff: np.ndarray, n: int, rng: np.random.Generator) -> tuple[float, float]:
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def bootstrap_folds(diffs: list[np.ndarray], n: int, rng: np.random.Generator) -> tuple[float, float]:
    """Resample folds, then draws within each resampled fold; the statistic is the mean of fold means."""
    stats = np.empty(n)
    for b in range(n):
        picks = rng.integers(0, len(diffs), size=len(diffs))
        stats[b] = np.mean([diffs[i][rng.integers(0, len(diffs[i]), size=len(diffs[i]))].mean() for i in picks])
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def summarise(results: BenchmarkResults, args) -> dict:
    rng = np.random.default_rng(0)
    records = results.records
    out: dict = {"per_fold": {}, "over_folds": {}}
    for k in args.k:
        diffs = []
        for fold in FOLDS:
            d = paired(records, fold, k)
            if not len(d):
                continue
            diffs.append(d)
            row = {}
            for method in ("default", BASELINE):
                a = [100 * r["image_auroc"] for r in records if r["task"] == fold and r["k"] == k
                     and r["role"] == method]
                row[method] = {"mean": float(np.mean(a)), "std": float(np.std(a)), "n": len(a)}
            lo, hi = bootstrap_fold(d, args.bootstrap, rng)
            row["difference"] = {"mean": float(d.mean()), "std": float(d.std()), "ci95": [lo, hi]}
            out["per_fold"].setdefault(fold, {})[str(k)] = row
        if len(diffs) == len(FOLDS):
            lo, hi = bootstrap_folds(diffs, min(args.bootstrap, 4000), rng)
            means = {m: float(np.mean([out["per_fold"][f][str(k)][m]["mean"] for f in FOLDS]))
                     for m in ("default", BASELINE)}
            out["over_folds"][str(k)] = {**means, "difference": means["default"] - means[BASELINE],
                                         "ci95": [lo, hi]}
    return out


def leaky_table() -> dict[str, dict[str, float]]:
    """The last figures of the old benchmark (folds not near-duplicate-clean): fold → method → K=4 mean."""
    if not LEAKY.is_file():
        return {}
    records = [r for r in json.loads(LEAKY.read_text())["records"] if r.get("protocol", "honest") == "honest"
               and r.get("k") == 4 and r["method"] in ("d24fad_nn", "patchcore")]
    table: dict[str, dict[str, float]] = {}
    for r in records:
        table.setdefault(r["task"], {}).setdefault(r["method"], []).append(100 * r["image_auroc"])
    return {t: {m: float(np.mean(v)) for m, v in row.items()} for t, row in table.items()}


def earlier_round_lines() -> list[str]:
    """The earlier pre-registered runs' K=4 figures, each shown once beside this run's."""
    lines = []
    for number, (path, selection_file, why) in EARLIER_ROUNDS.items():
        if not path.is_file():
            continue
        earlier = json.loads(path.read_text())
        lines += ["", f"## An earlier pre-registered run (round {number}, shown once)", "",
                  f"`{path.name}`: `{earlier['default_scorer']}`, {why} (`{selection_file}`, "
                  f"selection `{earlier['selection_commit'][:12]}`); same folds and draws. K=4:", "",
                  f"| task | round-{number} default | patchcore | paired difference |", "|---|---|---|---|"]
        for fold in FOLDS:
            c = earlier["summary"]["per_fold"].get(fold, {}).get("4")
            if c:
                lines.append(f"| {fold} | {c['default']['mean']:.1f} | {c[BASELINE]['mean']:.1f} | "
                             f"{c['difference']['mean']:+.1f} [{c['difference']['ci95'][0]:+.1f}, "
                             f"{c['difference']['ci95'][1]:+.1f}] |")
        o = earlier["summary"]["over_folds"]["4"]
        lines.append(f"| **mean** | {o['default']:.1f} | {o[BASELINE]:.1f} | {o['difference']:+.1f} "
                     f"[{o['ci95'][0]:+.1f}, {o['ci95'][1]:+.1f}] |")
    return lines


def generic_lines(generic: dict) -> list[str]:
    """The table of what each fold's generic students were trained on (the same for every training seed)."""
    if not generic:
        return []
    lines = ["", "## Generic students per fold", "",
             "| task | trained on (per source: near-copies of the fold's test images dropped) | images with flips |",
             "|---|---|---|"]
    for fold in FOLDS:
        if fold in generic:
            g = next(iter(generic[fold].values()))
            lines.append(f"| {fold} | " + ", ".join(f"{src} {g['dropped_near_copies'][src]}" for src in g["sources"])
                         + f" | {g['images']} |")
    return lines


def markdown(results: BenchmarkResults, args) -> str:
    d = results.data
    s = d["summary"]
    lines = [f"# Few-shot on unseen tasks — pre-registered test run, teacher `{d['teacher']}` (ImageNet, offline), "
             f"{d['image_size']} px", "",
             f"Command: `{d['command']}`  ", f"Machine: {d['machine']}  ",
             f"Selection: `{d['default_scorer']}` chosen by the pre-stated rule of `benchmarks/fewshot_dev_tta.py` on "
             f"the development pool, committed in `{d['selection_commit'][:12]}` before this run  ",
             f"Time: {sum(d.get('seconds', {}).values()) / 60:.1f} min of process time (feature extraction included)",
             "", "Every fold's test split is scored whole; supports are K normals drawn from its near-duplicate-clean "
             "training split (no test image has an exact or near copy among them). Image AUROC (%), mean ± std over "
             f"{len(d['training_seeds'])} training seeds × {len(args.seeds)} draw seeds × {args.draws} support draws "
             f"for the default, {len(args.seeds)} × {args.draws} for PatchCore-K; both see the same supports. "
             "`default` adds to support scoring a generic student, trained per fold and seed on the other tasks' "
             "training normals (never the fold's own source, never an image that near-copies one of its test "
             "images; table below) and adapted to the supports; `patchcore` is PatchCore-K on the same teacher and "
             "input size.", "",
             "## Main table", "", "| task | method | K=2 | K=4 | K=8 |", "|---|---|---|---|---|"]
    for fold in FOLDS:
        for method in ("default", BASELINE):
            cells = [(f"{c[method]['mean']:.1f} ± {c[method]['std']:.1f}" if (c := s['per_fold'].get(fold, {})
                                                                               .get(str(k))) else "—")
                     for k in args.k]
            label = f"default `{d['default_scorer']}`" if method == "default" else "patchcore (PatchCore-K)"
            lines.append(f"| {fold} | {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired difference default − PatchCore-K (points, same supports)", "",
              "| task | K=2 | K=4 | K=8 |", "|---|---|---|---|"]
    for fold in FOLDS:
        cells = []
        for k in args.k:
            c = s["per_fold"].get(fold, {}).get(str(k))
            cells.append(f"{c['difference']['mean']:+.1f} (std {c['difference']['std']:.1f}; 95 % "
                         f"[{c['difference']['ci95'][0]:+.1f}, {c['difference']['ci95'][1]:+.1f}])" if c else "—")
        lines.append(f"| {fold} | " + " | ".join(cells) + " |")
    cells = [(f"**{o['difference']:+.1f}** ([{o['ci95'][0]:+.1f}, {o['ci95'][1]:+.1f}]); {o['default']:.1f} vs "
              f"{o[BASELINE]:.1f}" if (o := s["over_folds"].get(str(k))) else "—") for k in args.k]
    lines.append("| **mean over folds** | " + " | ".join(cells) + " |")
    lines += ["", "Intervals: 95 % bootstrap over seeds × draws per fold; over folds, folds resampled and draws "
              "within them.", "", "## The issue's bar", ""]
    o4 = s["over_folds"].get("4")
    if o4:
        met = o4["difference"] >= 3 and o4["ci95"][0] > 0
        lines.append(f"- K=4 mean over folds: default {o4['default']:.1f} vs PatchCore-K {o4[BASELINE]:.1f}: "
                     f"{o4['difference']:+.1f} points (bar: ≥ +3, interval above 0: "
                     f"{'yes' if o4['ci95'][0] > 0 else 'no'}) → **{'met' if met else 'not met'}**")
    for k in (4, 8):
        worst = [(f, s["per_fold"][f][str(k)]["difference"]["mean"]) for f in FOLDS
                 if str(k) in s["per_fold"].get(f, {})]
        if worst:
            f, v = min(worst, key=lambda x: x[1])
            lines.append(f"- K={k}: every fold ≥ PatchCore-K − 1? worst fold {f} {v:+.1f} → "
                         f"**{'met' if v >= -1 else 'not met'}**")
    lines += ["", "## Near-duplicate cleaning per fold", "",
              "| task | train normals | removed from its train: exact / near | other tasks' training images that "
              "near-copy its test images |", "|---|---|---|---|"]
    for fold in FOLDS:
        f = d.get("folds", {}).get(fold)
        if f:
            other = ", ".join(f"{t} {n}" for t, n in f["removed_from_other_tasks"].items())
            lines.append(f"| {fold} | {f['train_normals']} | {f['removed_from_own_train']['exact']} / "
                         f"{f['removed_from_own_train']['near']} | {other} |")
    lines += generic_lines(d.get("generic", {}))
    leaky = leaky_table()
    if leaky:
        lines += ["", "## What leakage was worth (shown once)", "",
                  "The last figures of the old benchmark (`fewshot_loo_leaky.json`: learned D²4FAD-NN, folds not "
                  "near-duplicate-clean; brainmri's test normals were copies of a training task's images) beside "
                  "today's clean figures, K=4:", "",
                  "| task | old d24fad_nn | old patchcore | old margin | clean default | clean patchcore | clean margin |",
                  "|---|---|---|---|---|---|---|"]
        for fold in FOLDS:
            old = leaky.get(fold, {})
            new = s["per_fold"].get(fold, {}).get("4")
            if old and new:
                lines.append(f"| {fold} | {old['d24fad_nn']:.1f} | {old['patchcore']:.1f} | "
                             f"{old['d24fad_nn'] - old['patchcore']:+.1f} | {new['default']['mean']:.1f} | "
                             f"{new[BASELINE]['mean']:.1f} | {new['difference']['mean']:+.1f} |")
    lines += earlier_round_lines()
    lines += ["", "## What differs from the paper", "",
              "D²4FAD trains a student decoder on other medical tasks with episodes of K supports, and scores by "
              "teacher→student distillation plus student self-distillation against the supports with learned "
              "weights; medad's default trains a plain RD4AD student on the other tasks' normals, fine-tunes a copy on "
              "the K supports' views at test time, and adds its map to nearest-neighbour support scoring (the "
              "development pool chose it, `fewshot_dev_tta.md`). The paper's teacher is WideResNet-50 (no weights "
              "offline here); these figures use EfficientNet-Lite0. The paper's Brain Tumor figures use the released "
              "code's best-epoch-on-test selection and a test split with duplicates of training images.", ""]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    selection = json.loads(SELECTION.read_text()).get("selection")
    if not selection or not selection["met"]:
        raise SystemExit(f"{SELECTION}: the development rule was not met (or not yet applied): no test run")
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_loo.py",
                                                                    pieces=("--folds", "--markdown-only")))
    if not args.markdown_only:
        commit = selection_commit()
        if results.data.get("selection_commit") not in (None, commit):
            raise SystemExit(f"{results.path} holds records of selection {results.data['selection_commit']}; "
                             "move it away to run the new selection")
        config = AdaptedStudentConfig.from_dict(selection["config"])
        recipe = GenericStudentRecipe(**{**selection["recipe"], "sources": tuple(selection["recipe"]["sources"])})
        results.data.update(selection_commit=commit, default_scorer=config.name, default_config=config.as_dict(),
                            recipe=recipe.as_dict(), teacher=selection["teacher"], image_size=selection["image_size"],
                            training_seeds=args.training_seeds)
        run(args, results, config, recipe)
    # the scorer the rows of role "default" come from, under the key every few-shot results file uses
    results.data["default_method"] = results.data["default_scorer"]
    results.data["summary"] = summarise(results, args)
    results.save()
    results.write_markdown(markdown(results, args))
    print(json.dumps(results.data["summary"]["over_folds"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
