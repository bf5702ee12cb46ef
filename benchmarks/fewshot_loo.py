"""Few-shot on unseen tasks, the pre-registered test run: medad's default scorer against PatchCore-K on clean folds.

Regenerate:  OMP_NUM_THREADS=1 python benchmarks/fewshot_loo.py   (``--folds`` splits the work between processes)
Writes benchmarks/results/fewshot_loo.json (+ .md).  Resumable across sessions: records already present are skipped,
each fold's generic students are cached under benchmarks/.cache/fewshot_loo/ and its D²4FAD-NN models train in run
folders under benchmarks/.runs/fewshot_loo/ (continuing from their last finished epoch).  Training seed 0 is run for
every fold first, then seeds 1 and 2.

Protocol.  Each of the five reported tasks is a fold.  Its test split is scored whole, with K normal supports drawn
from its training normals; every task is near-duplicate-clean (``medad.data.near_duplicates``: no test image has a
near-copy in its training split, hence none among the supports).

The default scorer is the one round 10 chose on the development pool (``benchmarks/fewshot_dev_tsd.py``; its
``selection``, committed before this run and recorded as ``selection_commit``; the run refuses to start when the
selection file differs from its last commit): support scoring plus ¼ × a generic student adapted to the supports
(held-out unit), plus, when K ≤ 2, ½ × the teacher→student term of a D²4FAD-NN in units of the most similar
support's (``medad.models.adapted_student``).  Its two learned parts are trained per fold and training seed, as the
development pool's were: the generic student by the selection's recipe on the recipe's sources, the D²4FAD-NN as
the bundled model is on every registered task; both without the fold's own sources (brain_tumor and brainmri count
as one) and without the images that near-copy one of the fold's test images (counts in the JSON).  PatchCore-K uses
the default's teacher and input size and the same supports.

Statistics: image AUROC per (training seed, support draw); mean ± std over them; paired differences default −
PatchCore-K on the same supports, with 95 % bootstrap intervals over training seeds × draws per fold, and over
folds (resampling folds, then draws within each fold).
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from fewshot_dev_learned import trained_model

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.data.near_duplicates import drop_near_duplicates
from medad.data.registry import list_tasks
from medad.data.tasks import load_task
from medad.engine.fewshot import draw_supports
from medad.engine.generic_student import GenericStudentRecipe, train_generic_student_on
from medad.io_utils import atomic_path
from medad.models.adapted_student import AdaptedStudentConfig, AdaptedStudentScoring, teacher_features
from medad.models.d24fad_nn import D24FADNN
from medad.models.support_scoring import SupportScoring
from medad.results import BenchmarkResults, benchmark_command

FOLDS = ["headct", "brainmri", "brain_tumor", "zhanglab", "nih_cxr"]
SELECTION = Path("benchmarks/results/fewshot_dev_tsd.json")
LEAKY = Path("benchmarks/results/fewshot_loo_leaky.json")
#: the earlier pre-registered test runs, each with what it led the next round to change
EARLIER_ROUNDS = {
    1: (Path("benchmarks/results/fewshot_loo_round1.json"),
        "chosen on a development pool without focal lesions. Its losses on the focal folds led to round 2's focal "
        "development tasks and guard"),
    2: (Path("benchmarks/results/fewshot_loo_round2.json"),
        "chosen with round 2's focal development tasks and guard. Its small margin led round 3 to explore, on the "
        "development pool only, the positional normalisation of the map"),
    3: (Path("benchmarks/results/fewshot_loo_round3.json"),
        "training-free, chosen with the positional normalisation. Its losses on the focal folds (headct, brainmri) "
        "led rounds 4 to 10 to learned terms on a development pool widened by synthetic focal lesions"),
}
BASELINE = "patchcore"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="training seeds of the default's learned parts (the support draws are the same for all)")
    parser.add_argument("--folds", nargs="+", default=FOLDS, choices=FOLDS)
    parser.add_argument("--runs", default="benchmarks/.runs/fewshot_loo")
    parser.add_argument("--feature-cache", default="benchmarks/.cache", help="teacher features of training images")
    parser.add_argument("--bootstrap", type=int, default=10000)
    parser.add_argument("--cache", default="benchmarks/.cache/fewshot_loo")
    parser.add_argument("--name", default="fewshot_loo")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the JSON")
    return parser.parse_args()


#: queries scored at once
CHUNK = 64
#: the seed of every support draw (the same supports for every training seed and for PatchCore-K)
DRAW_SEED = 0


def selection_commit() -> str:
    """The commit that last changed the selection file; refuses a selection with uncommitted changes."""
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", str(SELECTION)]).returncode != 0:
        raise SystemExit(f"{SELECTION} has uncommitted changes: commit the selection before the test run")
    out = subprocess.run(["git", "log", "-1", "--format=%H", "--", str(SELECTION)], capture_output=True, text=True)
    if not out.stdout.strip():
        raise SystemExit(f"{SELECTION} is not committed: run and commit benchmarks/fewshot_dev_tsd.py first")
    return out.stdout.strip()


def cross_task_removals(target, names: list[str]) -> dict[str, int]:
    """Per other task: its training images that near-duplicate a test image of ``target``."""
    out = {}
    for name in names:
        if name != target.name:
            _, dropped = drop_near_duplicates(load_task(name).train, target.test, why=f"{target.name} test")
            out[name] = len(dropped)
    return out


def default_config(selection: dict) -> tuple[AdaptedStudentConfig, GenericStudentRecipe]:
    """The default scorer's configuration and its generic students' recipe, from round 10's selection."""
    gate, scorer = selection["gate"], selection["scorer"]
    if selection["term"] != "tsd/nn" or gate["statistic"] != "k" or gate["weight_above"] != 0:
        raise SystemExit("this run implements round 10's selection: the nearest-support T→S term gated by K")
    adapted = scorer["adapted_student"]
    config = AdaptedStudentConfig.from_dict({**adapted, "tsd_weight": gate["weight_below"],
                                             "tsd_max_k": int(2 ** gate["threshold"])})
    recipe = scorer["generic_recipe"]
    return config, GenericStudentRecipe(**{**recipe, "sources": tuple(recipe["sources"])})


def learned_parts(fold: str, test: list, seed: int, teacher, recipe: GenericStudentRecipe, args
                  ) -> tuple[dict[str, torch.Tensor], D24FADNN, dict]:
    """The fold's generic student and D²4FAD-NN of one training seed (cached / resumed), and what they saw."""
    cache = Path(args.cache)
    path = cache / f"generic_student_without_{fold}_seed{seed}.pt"
    if path.is_file():
        saved = torch.load(path)
        state, generic = saved["state"], saved["trained_on"]
    else:
        state, generic = train_generic_student_on(teacher, recipe, fold, test, seed=seed, cache=cache)
        with atomic_path(path) as tmp:
            torch.save({"state": state, "trained_on": generic}, tmp)
    model, d24fad = trained_model(fold, test, teacher, Path(args.runs) / f"{fold}_seed{seed}", args.feature_cache,
                                  seed=seed)
    return state, model, {"generic_student": generic, "d24fad_nn": d24fad}


def run(args, results: BenchmarkResults, config: AdaptedStudentConfig, recipe: GenericStudentRecipe) -> None:
    teacher = build_teacher(results.data["teacher"])
    size = results.data["image_size"]
    baseline = SupportScoring(teacher)
    draws = list(itertools.product(args.k, range(args.draws)))
    for seed, fold in itertools.product(args.seeds, args.folds):
        if all(results.has(task=fold, role=r, seed=s, k=k, support_draw=d)
               for r, s in (("default", seed), (BASELINE, DRAW_SEED)) for k, d in draws):
            continue
        start = time.time()
        task = load_task(fold)
        features = cached_test_features(teacher, task, size, Path(args.cache))
        labels = np.array([s.label for s in task.test])
        folds = results.data.setdefault("folds", {})
        if fold not in folds:
            folds[fold] = {"train_normals": len(task.train), "test_normal": int((labels == 0).sum()),
                           "test_abnormal": int((labels == 1).sum()),
                           "removed_from_own_train": {"exact": sum("pixel-identical" in r.reason for r in task.removed),
                                                      "near": task.meta.get("near_duplicates_removed", 0)},
                           "removed_from_other_tasks": cross_task_removals(task, list_tasks()), "trained_on": {}}
        state, model, trained_on = learned_parts(fold, task.test, seed, teacher, recipe, args)
        folds[fold]["trained_on"][str(seed)] = trained_on
        scorer = AdaptedStudentScoring(teacher, state, config, tsd_student=model.student, tsd_sigma=model.config.sigma)
        queries = SupportScoring.encoding_from_teacher(features, (size, size))
        for k, draw in draws:
            idx = draw_supports(len(task.train), k, draw, seed=DRAW_SEED)
            supports, _ = load_images([task.train[i] for i in idx], size, workers=0)
            for role, record_seed in (("default", seed), (BASELINE, DRAW_SEED)):
                if results.has(task=fold, role=role, seed=record_seed, k=k, support_draw=draw):
                    continue
                chunks = [slice(i, i + CHUNK) for i in range(0, len(labels), CHUNK)]
                with torch.no_grad():
                    if role == "default":
                        prepared = scorer.prepare_supports(supports, seed=draw)
                        parts = [scorer.score_features([f[rows] for f in features], prepared, (size, size))[1]
                                 for rows in chunks]
                    else:
                        bank = baseline.prepare_supports(supports)
                        parts = [baseline.score_encoded(queries[rows], bank)[1] for rows in chunks]
                scores = torch.cat(parts).numpy()
                if not np.isfinite(scores).all():
                    raise RuntimeError(f"{fold}: non-finite scores from the {role} scorer")
                results.records.append({"task": fold, "method": config.name if role == "default" else "patchcore",
                                        "role": role, "seed": record_seed, "k": k, "support_draw": draw,
                                        "supports": [task.train[i].name for i in idx], "n_scored": len(scores),
                                        "image_auroc": float(roc_auc_score(labels, scores))})
        results.data.setdefault("seconds", {})[f"{fold}/seed{seed}"] = round(time.time() - start, 1)
        results.save()
        print(f"{fold} seed {seed}: {time.time() - start:.0f} s", flush=True)


def cached_test_features(teacher, task, size: int, cache: Path) -> list[torch.Tensor]:
    """The teacher's features of a fold's test images (cached per teacher, size and fold)."""
    path = cache / f"{teacher.name}_{size}_{task.name}_test_features.pt"
    if path.is_file():
        return torch.load(path)
    images, _ = load_images(task.test, size, desc=f"{task.name} test")
    features = teacher_features(teacher, images)
    with atomic_path(path) as tmp:
        torch.save(features, tmp)
    return features


def paired(records: list[dict], fold: str, k: int) -> np.ndarray:
    """Per (training seed, draw): default − PatchCore-K AUROC (points) on the same supports."""
    by = {(r["role"], r["seed"], r["support_draw"]): r["image_auroc"] for r in records
          if r["task"] == fold and r["k"] == k}
    keys = sorted((s, d) for m, s, d in by if m == "default" and (BASELINE, DRAW_SEED, d) in by)
    return np.array([100 * (by[("default", s, d)] - by[(BASELINE, DRAW_SEED, d)]) for s, d in keys])


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
    for number, (path, why) in EARLIER_ROUNDS.items():
        if not path.is_file():
            continue
        earlier = json.loads(path.read_text())
        lines += ["", f"## An earlier pre-registered run (round {number}, shown once)", "",
                  f"`{path.name}`: `{earlier['default_scorer']}`, {why} (`fewshot_dev_selection_round{number}.md`, "
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


def markdown(results: BenchmarkResults, args) -> str:
    d = results.data
    s = d["summary"]
    lines = [f"# Few-shot on unseen tasks — pre-registered test run, teacher `{d['teacher']}` (ImageNet, offline), "
             f"{d['image_size']} px", "",
             f"Command: `{d['command']}`  ", f"Machine: {d['machine']}  ",
             f"Selection: `{d['default_scorer']}` chosen by `benchmarks/fewshot_dev_tsd.py` (round 10) on the "
             f"development pool, committed in `{d['selection_commit'][:12]}` before this run  ",
             f"Time: {sum(d.get('seconds', {}).values()) / 60:.1f} min of process time (training and feature "
             "extraction included)",
             "", "Every fold's test split is scored whole; supports are K normals drawn from its near-duplicate-clean "
             "training split (no test image has an exact or near copy among them). Image AUROC (%), mean ± std over "
             f"{len(args.seeds)} training seeds × {args.draws} support draws for `default` and over the "
             f"{args.draws} draws for `patchcore`; both see the same supports. `default`'s generic student and "
             "D²4FAD-NN are trained per fold and seed on other tasks' normal training images, without the fold's "
             "own sources and without near-copies of its test images (counts below); `patchcore` is PatchCore-K on "
             "the same teacher and input size.", ""]
    done = {fold: sorted({r["seed"] for r in d["records"] if r["task"] == fold and r["role"] == "default"})
            for fold in FOLDS}
    if any(len(seeds) < len(args.seeds) for seeds in done.values()):
        lines += ["**Incomplete run** (resumable): training seeds scored so far per fold: "
                  + "; ".join(f"{fold} {', '.join(map(str, seeds)) or 'none'}" for fold, seeds in done.items())
                  + ". The figures below are over what is done; the bar is judged on the complete run.", ""]
    lines += ["## Main table", "", "| task | method | K=2 | K=4 | K=8 |", "|---|---|---|---|---|"]
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
    lines += ["", "Intervals: 95 % bootstrap over training seeds × draws per fold; over folds, folds resampled and draws "
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
              "near-copy its test images | dropped from the learned parts' training (D²4FAD-NN / generic student; "
              "training sources left out) |", "|---|---|---|---|---|"]
    for fold in FOLDS:
        f = d.get("folds", {}).get(fold)
        if f:
            other = ", ".join(f"{t} {n}" for t, n in f["removed_from_other_tasks"].items() if n) or "none"
            trained = next(iter(f.get("trained_on", {}).values()), None)
            learned = (f"{sum(c['dropped_near_copies'] for c in trained['d24fad_nn']['tasks'].values())} / "
                       f"{sum(trained['generic_student']['dropped_near_copies'].values())}; "
                       f"{', '.join(trained['d24fad_nn']['left_out'])}" if trained else "—")
            lines.append(f"| {fold} | {f['train_normals']} | {f['removed_from_own_train']['exact']} / "
                         f"{f['removed_from_own_train']['near']} | {other} | {learned} |")
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
              "D²4FAD scores with a student trained on other medical tasks and K supports; medad's default adds "
              "three terms: support matching, a generic student fine-tuned on the K supports, and (K ≤ 2) a "
              "D²4FAD-NN's teacher→student map in units of the most similar support's (`docs/METHODS.md`, rounds "
              "4 to 10). The paper's teacher is WideResNet-50 (no weights offline here); these "
              "figures use EfficientNet-Lite0. The paper's Brain Tumor figures use the released code's "
              "best-epoch-on-test selection and a test split with duplicates of training images.", ""]
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    selection = json.loads(SELECTION.read_text())["selection"]
    results = BenchmarkResults(args.name, command=benchmark_command("fewshot_loo.py",
                                                                    pieces=("--folds", "--markdown-only")))
    if not args.markdown_only:
        commit = selection_commit()
        if results.data.get("selection_commit") not in (None, commit):
            raise SystemExit(f"{results.path} holds records of selection {results.data['selection_commit']}; "
                             "move it away to run the new selection")
        config, recipe = default_config(selection)
        results.data.update(selection_commit=commit, default_scorer=config.name, default_config=config.as_dict(),
                            generic_recipe=recipe.as_dict(), tsd_model=selection["scorer"]["tsd_model"],
                            teacher=recipe.teacher, image_size=recipe.image_size)
        run(args, results, config, recipe)
    results.refresh()  # what another process (other folds) saved meanwhile
    # the scorer the rows of role "default" come from, under the key every few-shot results file uses
    results.data["default_method"] = results.data["default_scorer"]
    results.data["summary"] = summarise(results, args)
    results.save()
    results.write_markdown(markdown(results, args))
    print(json.dumps(results.data["summary"]["over_folds"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
