"""Which rule should set the 'auto' threshold of ``medad fewshot score``: measured on development tasks.

Regenerate:  nice -n 10 python benchmarks/fewshot_thresholds.py
Writes benchmarks/results/fewshot_thresholds.json (+ .md).  Resumable: the d24fad_nn run folder is under
benchmarks/.runs/fewshot_thresholds/, teacher features under benchmarks/.cache/, and every (method, task, K,
draw)'s query scores under benchmarks/.cache/fewshot_thresholds/ (so a new rule is measured without scoring
again; ``--markdown-only`` rebuilds the tables from them).

Development tasks: three shared folders that no other benchmark and no training uses (acrima glaucoma fundus,
ISIC nevus vs melanoma dermoscopy, MIAS mammography), loaded as folder tasks (``all/normal`` + ``all/<kind>``:
half the normals train, the rest and every abnormal image test).  K normal supports are drawn from the
training split's normals only; the test split is scored.  For each method of ``--methods`` (``patchcore``:
training-free PatchCore-K; ``d24fad_nn``: a student trained here on the five original registry tasks with the
budget of ``--epochs``), K and draw, the supports' leave-one-out scores (each support against the other K − 1,
exactly as the CLI computes them) give each candidate rule's threshold, and the rule's false-normal rate
(abnormal test images scored ≤ threshold) and false-abnormal rate (normal test images scored > threshold) are
recorded.

The selection rule, fixed before any result was seen: the default is the candidate with the lowest balanced
error ((false-normal + false-abnormal) / 2) averaged over the development tasks and K ∈ ``--k``, measured on
the default few-shot method (d24fad_nn); ``cut:C`` rules apply only to models whose scores are standardised by
the supports' statistics, so models without them take the best of the other rules (measured on patchcore).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medad.backbones import build_teacher
from medad.data.images import load_images
from medad.data.registry import data_root
from medad.data.tasks import load_task
from medad.engine.fewshot import draw_supports, leave_one_out_scores, train_fewshot
from medad.engine.thresholds import rule_threshold
from medad.engine.training import TrainConfig, seed_everything
from medad.features import FeatureCache, stack_features
from medad.models.d24fad import QueryFeatures
from medad.models.patchcore import PatchCoreKShot
from medad.models.registry import method_info
from medad.results import BenchmarkResults, benchmark_command

DEV_TASKS = {"acrima": "acrima_glaucoma_fundus", "isic": "isic_nevus_melanoma", "mias": "mias_mammography"}
TRAIN_TASKS = ["headct", "brainmri", "brain_tumor", "zhanglab", "nih_cxr"]
RULES = ["loo-max", "mad:1", "mad:2", "mad:3", "cut:2", "cut:3", "cut:4", "cut:5"]
#: methods whose image scores are in standardised units (the supports' leave-one-out statistics)
STANDARDISED = {"d24fad_nn"}
DEFAULT_METHOD = {"standardised": "d24fad_nn", "raw": "patchcore"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["patchcore", "d24fad_nn"],
                        help="few-shot scorers to measure (patchcore, or a registered few-shot method)")
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--k", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--epochs", type=int, help="training length of trained methods (default: the method's "
                        "shipped budget, with its batch and queries per task)")
    parser.add_argument("--data", default=str(data_root()), help="folder holding the shared data sets")
    parser.add_argument("--runs", default="benchmarks/.runs/fewshot_thresholds")
    parser.add_argument("--cache", default="benchmarks/.cache")
    parser.add_argument("--name", default="fewshot_thresholds")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rebuild the rule records and tables from the cached scores")
    return parser.parse_args()


class Scorer:
    """One few-shot method: query encoding (shared by every draw), scoring, and the CLI's leave-one-out scores."""

    def __init__(self, name: str, cache: FeatureCache, args: argparse.Namespace) -> None:
        self.name, self.cache, self.train_seconds = name, cache, 0.0
        if name == "patchcore":
            self.model = PatchCoreKShot(cache.teacher)
        else:
            self.model = self._trained(name, args)

    def _trained(self, name: str, args: argparse.Namespace):
        info = method_info(name)
        budget = info.training
        train_images = {task: load_images(load_task(task, root=args.data).train, args.image_size,
                                          desc=f"{task} train")[0] for task in TRAIN_TASKS}
        seed_everything(0)
        model = info.model(self.cache.teacher, info.config())
        args.epochs = args.epochs or budget.epochs
        result = train_fewshot(model, train_images, TrainConfig(epochs=args.epochs, batch_size=budget.batch_size,
                                                                lr=budget.lr, seed=0),
                               max_queries_per_task=budget.max_queries_per_task or 256,
                               out_dir=Path(args.runs) / name, resume=True, cache=self.cache)
        self.train_seconds = result.train_seconds
        return model.eval()

    def encode(self, images: torch.Tensor):
        teacher = stack_features(self.cache, images, desc=f"{self.name} queries")
        if isinstance(self.model, PatchCoreKShot):
            return PatchCoreKShot.patch_features_from(teacher), tuple(images.shape[-2:])
        with torch.no_grad():
            parts = [self.model.student([t[i:i + 64] for t in teacher]) for i in range(0, len(images), 64)]
            student = [torch.cat([part[s] for part in parts]) for s in range(len(parts[0]))]
        return QueryFeatures(teacher, student, tuple(images.shape[-2:]))

    @torch.no_grad()
    def scores(self, encoded, support_images: torch.Tensor) -> np.ndarray:
        supports = self.model.prepare_supports(support_images)
        if isinstance(self.model, PatchCoreKShot):
            features, size = encoded
            return torch.cat([self.model.score_features(features[i:i + 64], supports, size)[1]
                              for i in range(0, len(features), 64)]).numpy()
        return torch.cat([self.model.score_encoded(encoded[i:i + 64], supports)[1]
                          for i in range(0, len(encoded.teacher[0]), 64)]).numpy()


def scores_file(args: argparse.Namespace, method: str, task: str, k: int, draw: int) -> Path:
    return Path(args.cache) / args.name / method / f"{task}_k{k}_draw{draw}.npz"


def measure(args: argparse.Namespace, results: BenchmarkResults) -> None:
    """Query and leave-one-out scores of every method, task, K and draw not cached yet."""
    cache = FeatureCache(build_teacher(args.teacher), cache_dir=args.cache)
    cache.teacher.eval()
    tasks = {name: load_task(Path(args.data) / folder, seed=0) for name, folder in DEV_TASKS.items()}
    for method in args.methods:
        pending = [(task, k, draw) for task in tasks for k in args.k for draw in range(args.draws)
                   if not scores_file(args, method, task, k, draw).is_file()]
        if not pending:
            continue
        scorer = Scorer(method, cache, args)
        results.data.setdefault("train_seconds", {})[method] = scorer.train_seconds
        if method != "patchcore":
            results.data["epochs"] = args.epochs
        for task_name, task in tasks.items():
            normals = load_images(task.train, args.image_size, desc=f"{task_name} supports")[0]
            queries = load_images(task.test, args.image_size, desc=f"{task_name} test")[0]
            labels = np.array([sample.label for sample in task.test])
            encoded = None
            for k in args.k:
                for draw in range(args.draws):
                    path = scores_file(args, method, task_name, k, draw)
                    if path.is_file():
                        continue
                    encoded = encoded if encoded is not None else scorer.encode(queries)
                    indices = draw_supports(len(normals), k, draw, seed=0)
                    loo = leave_one_out_scores(scorer.model, normals[indices])
                    path.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(path, scores=scorer.scores(encoded, normals[indices]), labels=labels,
                             loo=np.array(loo), supports=np.array([str(task.train[i].path) for i in indices]))
                    print(f"{method} {task_name} K={k} draw {draw} done", flush=True)


def rule_records(args: argparse.Namespace, results: BenchmarkResults) -> list[dict]:
    """One record per (method, task, K, draw, rule) from the cached scores."""
    records = []
    for method in args.methods:
        for task in DEV_TASKS:
            for k in args.k:
                for draw in range(args.draws):
                    path = scores_file(args, method, task, k, draw)
                    if not path.is_file():
                        continue
                    saved = np.load(path)
                    scores, labels = saved["scores"], saved["labels"]
                    for rule in RULES:
                        if rule.startswith("cut:") and method not in STANDARDISED:
                            continue
                        threshold = rule_threshold(rule, saved["loo"])
                        records.append({
                            "method": method, "task": task, "k": k, "support_draw": draw, "seed": 0,
                            "selection": rule, "backbone": args.teacher, "image_size": args.image_size,
                            "protocol": "development",
                            "epochs": None if method == "patchcore" else results.data.get("epochs"),
                            "threshold": threshold, "loo_scores": [float(s) for s in saved["loo"]],
                            "n_test_normal": int((labels == 0).sum()), "n_test_abnormal": int(labels.sum()),
                            "false_normal": float((scores[labels == 1] <= threshold).mean()),
                            "false_abnormal": float((scores[labels == 0] > threshold).mean())})
    return records


def balanced_error(records: list[dict], method: str, rule: str) -> float:
    chosen = [r for r in records if r["method"] == method and r["selection"] == rule]
    return float(np.mean([(r["false_normal"] + r["false_abnormal"]) / 2 for r in chosen])) if chosen else np.inf


def select(records: list[dict], methods: list[str]) -> dict[str, str]:
    """The rule: lowest mean balanced error, per kind of score unit (see the module docstring)."""
    chosen = {}
    for unit, method in DEFAULT_METHOD.items():
        if method in methods:
            rules = [r for r in RULES if unit == "standardised" or not r.startswith("cut:")]
            chosen[unit] = min(rules, key=lambda rule: balanced_error(records, method, rule))
    return chosen


def cell(records: list[dict], method: str, rule: str, task: str | None, k: int) -> str:
    chosen = [r for r in records if r["method"] == method and r["selection"] == rule and r["k"] == k
              and (task is None or r["task"] == task)]
    if not chosen:
        return "—"
    fn = 100 * np.mean([r["false_normal"] for r in chosen])
    fa = 100 * np.mean([r["false_abnormal"] for r in chosen])
    return f"{fn:.0f} / {fa:.0f}"


def mean_auroc(args: argparse.Namespace, method: str, k: int, task: str | None = None) -> float:
    """Image AUROC of the cached scores (mean over draws and, without ``task``, over tasks): what any threshold
    can at best exploit."""
    values = []
    for name in ([task] if task else DEV_TASKS):
        for draw in range(args.draws):
            path = scores_file(args, method, name, k, draw)
            if path.is_file():
                saved = np.load(path)
                values.append(roc_auc_score(saved["labels"], saved["scores"]))
    return float(np.mean(values)) if values else float("nan")


def markdown(results: BenchmarkResults, args: argparse.Namespace) -> str:
    records, default = results.records, results.data["default"]
    train = results.data.get("train_seconds", {})
    lines = ["# The 'auto' threshold rule, measured on development tasks", "",
             f"Command: `{results.data['command']}`  ", f"Machine: {results.data['machine']}  ",
             f"Teacher `{args.teacher}` (ImageNet, offline), {args.image_size} px; {args.draws} support draws per K "
             "from the training split's normals. Development tasks (folder tasks of `../shared/data`, half the "
             "normals train, the rest and every abnormal image test): " +
             ", ".join(f"`{folder}`" for folder in DEV_TASKS.values()) + ".  ",
             "Methods: `patchcore` = training-free PatchCore-K; `d24fad_nn` = medad's default model trained on "
             f"{', '.join(TRAIN_TASKS)} (normal training images) for {results.data.get('epochs')} epochs with the method's "
             "batch and queries per task" +
             (f" ({train['d24fad_nn'] / 60:.0f} min on this machine, `nice`d)" if train.get("d24fad_nn") else "") +
             ".", "",
             "Each cell: **false-normal % / false-abnormal %** (abnormal test images called normal / normal test "
             "images called abnormal), mean over the development tasks and draws. Rules: `loo-max` = the highest "
             "leave-one-out support score (the rule before this benchmark); `mad:C` = median + C·1.4826·MAD of the "
             "leave-one-out scores; `cut:C` = the fixed value C in the standardised units of d24fad_nn's score.", "",
             "Selection (fixed in advance): lowest balanced error, mean over tasks and K. "
             f"**Default: `{default.get('standardised')}` for models with standardised scores (d24fad_nn), "
             f"`{default.get('raw')}` for the others.**", ""]
    for method in args.methods:
        lines += [f"## {method}", "", "Image AUROC of the scores (what any threshold can at best exploit): " + "; ".join(
            f"K={k} {100 * mean_auroc(args, method, k):.1f} (" + ", ".join(
                f"{task} {100 * mean_auroc(args, method, k, task):.1f}" for task in DEV_TASKS) + ")" for k in args.k)
            + ".", "", "| rule | " + " | ".join(f"K={k}" for k in args.k) + " | balanced error |",
                  "|---|" + "---|" * (len(args.k) + 1)]
        for rule in RULES:
            error = balanced_error(records, method, rule)
            if np.isfinite(error):
                mark = " (default)" if rule in (default.get("standardised") if method in STANDARDISED
                                                  else default.get("raw"),) else ""
                lines.append(f"| `{rule}`{mark} | " + " | ".join(cell(records, method, rule, None, k) for k in args.k)
                             + f" | {100 * error:.1f} |")
        lines += ["", "Per task (K: " + ", ".join(map(str, args.k)) + "):", "",
                  "| rule | " + " | ".join(DEV_TASKS) + " |", "|---|" + "---|" * len(DEV_TASKS)]
        for rule in RULES:
            if np.isfinite(balanced_error(records, method, rule)):
                lines.append(f"| `{rule}` | " + " | ".join(
                    "; ".join(cell(records, method, rule, task, k) for k in args.k) for task in DEV_TASKS) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(1)
    results = BenchmarkResults(args.name, benchmark_command("fewshot_thresholds.py", pieces=("--markdown-only",)))
    if not args.markdown_only:
        measure(args, results)
    results.data["records"] = rule_records(args, results)
    results.data["rules"] = RULES
    results.data["default"] = select(results.records, args.methods)
    results.save()
    results.write_markdown(markdown(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
