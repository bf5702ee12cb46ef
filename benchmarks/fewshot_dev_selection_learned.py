"""How D²4FAD-NN's score is chosen: every map combination × image score on development sets, no test split.

Regenerate:  python benchmarks/fewshot_dev_selection_learned.py
Writes benchmarks/results/fewshot_dev_selection_learned.json (+ .md), read by benchmarks/fewshot_loo_learned.py.
(The choice of medad's default few-shot scorer is benchmarks/fewshot_dev_selection.py.)  Resumable
(student run folders under benchmarks/.runs/fewshot_dev/, teacher features under benchmarks/.cache/).

A development set is made of *training-split* images only, md5-disjoint from every test split:
* brain_tumor, zhanglab: the last ``--dev-normals`` training normals (held out of the support pool) vs
  ``--dev-abnormals`` images of the set's ``extra_train_abnormal`` folder (never used by any benchmark);
* nih_cxr: its given validation split (normal vs abnormal); supports from the training normals.
For each development task a D²4FAD-NN student is trained, with the benchmark's batch and queries, on the normal
training images of the *other* tasks, for each training length of ``--epochs`` in turn (the model continues from
the previous length; with a constant learning rate and epoch-seeded episodes that equals training that long from
scratch); at each length every candidate (a non-empty subset of the maps × an image score) scores the
development set with K normal supports (the same draws for every candidate).

The rule, fixed before any result was seen: a fold of fewshot_loo_learned uses the candidate (training length, maps,
image score) with the best mean image AUROC over the development tasks other than the fold's target, at
K ∈ {4, 8}; medad's shipped default is the candidate best over all development tasks.  (The training lengths
were added to the candidates after the first selection, which compared scorings at 32 epochs only.)
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import random
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medad.backbones import build_teacher
from medad.data.registry import data_root
from medad.data.tasks import Sample, load_task
from medad.engine.fewshot import draw_supports, encode_queries, train_fewshot
from medad.data.images import load_images
from medad.engine.training import TrainConfig, seed_everything
from medad.features import FeatureCache
from medad.models.d24fad_nn import MAPS, SCORES, D24FADNN, D24FADNNConfig, fused_image_scores
from medad.models.registry import method_info
from medad.results import BenchmarkResults, benchmark_command

TASKS = ["headct", "brainmri", "brain_tumor", "zhanglab", "nih_cxr"]
#: development tasks: (shared-data folder, extra_train_abnormal kinds); None = the task's validation split
DEV_TASKS = {"brain_tumor": ("brain_tumor_mri_nickparvar", ["glioma", "meningioma"]),
             "zhanglab": ("zhanglab_chest_xray", ["pneumonia"]),
             "nih_cxr": None}
SCORINGS = [(maps, score) for r in range(1, len(MAPS) + 1) for maps in itertools.combinations(MAPS, r)
            for score in SCORES]
RULE = ("per (training length, maps, image score): mean image AUROC over the development tasks other than the "
        "fold's target, K ∈ {4, 8}, 5 draws; the shipped default: mean over all development tasks")


def candidate_name(maps: tuple[str, ...], score: str) -> str:
    return f"{'+'.join(maps)}|{score}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--k", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--epochs", nargs="+", type=int, default=[32, 64, 96],
                        help="training lengths compared (each 32 steps per epoch with the benchmark's budget)")
    parser.add_argument("--dev-normals", type=int, default=150)
    parser.add_argument("--dev-abnormals", type=int, default=150)
    parser.add_argument("--runs", default="benchmarks/.runs/fewshot_dev")
    parser.add_argument("--cache", default="benchmarks/.cache")
    parser.add_argument("--name", default="fewshot_dev_selection_learned")
    return parser.parse_args()


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def development_split(name: str, dev_normals: int, dev_abnormals: int) -> tuple[list[Sample], list[Sample]]:
    """(support pool, labelled development samples) of a development task, training-split images only."""
    task = load_task(name)
    source = DEV_TASKS[name]
    if source is None:
        return task.train, task.valid
    folder, kinds = source
    test_hashes = {md5(sample.path) for sample in task.test}
    files = sorted(p for kind in kinds for p in (data_root() / folder / "extra_train_abnormal" / kind).iterdir())
    random.Random(0).shuffle(files)
    abnormals = [Sample(p, 1, "extra_train_abnormal") for p in files if md5(p) not in test_hashes][:dev_abnormals]
    return task.train[:-dev_normals], task.train[-dev_normals:] + abnormals


def main() -> int:
    args = parse_args()
    results = BenchmarkResults(args.name, benchmark_command("fewshot_dev_selection_learned.py"))
    cache = FeatureCache(build_teacher(args.teacher), cache_dir=args.cache)
    teacher = cache.teacher.eval()
    budget = method_info(D24FADNN.method).training.as_dict()
    loaded: dict[str, torch.Tensor] = {}  # each task's training images, decoded once for every development task

    def train_images_of(name: str) -> torch.Tensor:
        if name not in loaded:
            loaded[name] = load_images(load_task(name).train, args.image_size, desc=f"{name} train")[0]
        return loaded[name]

    for dev in DEV_TASKS:
        pending = [epochs for epochs in sorted(args.epochs)
                   if not all(results.has(method=candidate_name(*c), task=dev, epochs=epochs, k=k, support_draw=d)
                              for c in SCORINGS for k in args.k for d in range(args.draws))]
        if not pending:
            continue
        pool, samples = development_split(dev, args.dev_normals, args.dev_abnormals)
        train_images = {name: train_images_of(name) for name in TASKS if name != dev}
        normals, _ = load_images(pool, args.image_size, desc=f"{dev} support pool")
        images, _ = load_images(samples, args.image_size, desc=f"{dev} development set")
        labels = np.array([sample.label for sample in samples])
        for epochs in pending:
            seed_everything(0)
            model = D24FADNN(teacher, D24FADNNConfig(maps=MAPS))
            train_fewshot(model, train_images, TrainConfig(epochs=epochs, batch_size=budget["batch_size"], seed=0),
                          max_queries_per_task=budget["max_queries_per_task"], out_dir=Path(args.runs) / dev,
                          resume=True, cache=cache)
            model.eval()
            score_candidates(results, model, dev, epochs, normals, images, labels, args)
            print(f"{dev} {epochs} epochs done", flush=True)
    results.data["rule"] = RULE
    results.data["selected"], results.data["selected_epochs"] = {}, {}
    for fold in TASKS:
        epochs, maps, score = select(results.records, fold, args.k, args.epochs)
        results.data["selected"][fold] = candidate_name(maps, score)
        results.data["selected_epochs"][fold] = epochs
    epochs, maps, score = select(results.records, None, args.k, args.epochs)
    results.data["default"], results.data["default_epochs"] = candidate_name(maps, score), epochs
    results.save()
    results.write_markdown(markdown(results, args))
    return 0


def score_candidates(results: BenchmarkResults, model: D24FADNN, dev: str, epochs: int, normals: torch.Tensor,
                     images: torch.Tensor, labels: np.ndarray, args: argparse.Namespace) -> None:
    """Every scoring candidate's AUROC on one development set, for each K and support draw."""
    queries = encode_queries(model, images)
    for k in args.k:
        for draw in range(args.draws):
            supports = model.prepare_supports(normals[draw_supports(len(normals), k, draw, seed=0)])
            parts = [model.map_components(queries[i:i + 64], supports)[0] for i in range(0, len(images), 64)]
            maps = {name: torch.cat([part[name] for part in parts]) for name in MAPS}
            for combo, score in SCORINGS:
                fused = torch.stack([maps[name] for name in combo]).sum(0)
                auroc = roc_auc_score(labels, fused_image_scores(fused, score).numpy())
                results.records.append({"method": candidate_name(combo, score), "task": dev, "epochs": epochs,
                                        "k": k, "support_draw": draw, "seed": 0, "backbone": args.teacher,
                                        "image_size": args.image_size, "image_auroc": float(auroc),
                                        "n_dev_normal": int((labels == 0).sum()),
                                        "n_dev_abnormal": int(labels.sum()), "protocol": "development"})
        results.save()


def mean_auroc(records: list[dict], name: str, epochs: int, tasks: list[str], ks: list[int]) -> float:
    """Mean over ``tasks`` of each task's mean AUROC of one candidate at K ∈ ``ks``."""
    return float(np.mean([np.mean([r["image_auroc"] for r in records if r["method"] == name and r["task"] == dev
                                   and r["epochs"] == epochs and r["k"] in ks]) for dev in tasks]))


def select(records: list[dict], target: str | None, ks: list[int], lengths: list[int]
           ) -> tuple[int, tuple[str, ...], str]:
    """The rule: the (epochs, maps, score) with the best mean AUROC over the development tasks other than ``target``."""
    tasks = [dev for dev in DEV_TASKS if dev != target]
    return max(((epochs, maps, score) for epochs in sorted(lengths) for maps, score in SCORINGS),
               key=lambda c: mean_auroc(records, candidate_name(c[1], c[2]), c[0], tasks, ks))


def markdown(results: BenchmarkResults, args) -> str:
    records = results.records
    header = ("| epochs | candidate | " + " | ".join(f"{dev} K={k}" for dev in DEV_TASKS for k in args.k) +
              " | mean |")
    selected = results.data["selected"]
    lines = ["# D²4FAD-NN training length and score selection on development sets (no test split)", "",
             f"Command: `{results.data['command']}`  ", f"Machine: {results.data['machine']}  ",
             f"Teacher `{args.teacher}` (ImageNet, offline), {args.image_size} px; students trained on the other "
             "tasks' normal training images (32 steps per epoch). Image AUROC (%), mean over "
             f"{args.draws} support draws. Rule: {RULE}.", "",
             "Selected per fold of `fewshot_loo_learned`: " + "; ".join(
                 f"{fold} → {results.data['selected_epochs'][fold]} epochs, `{name}`" for fold, name in
                 selected.items()) +
             f". Shipped default: {results.data['default_epochs']} epochs, `{results.data['default']}`.", "",
             header, "|---|---|" + "---|" * (len(DEV_TASKS) * len(args.k) + 1)]
    rows = []
    for epochs in sorted(args.epochs):
        for combo, score in SCORINGS:
            name = candidate_name(combo, score)
            cells = [np.mean([r["image_auroc"] for r in records if r["method"] == name and r["task"] == dev
                              and r["epochs"] == epochs and r["k"] == k]) for dev in DEV_TASKS for k in args.k]
            rows.append((float(np.mean(cells)), epochs, name, cells))
    for mean, epochs, name, cells in sorted(rows, reverse=True):
        lines.append(f"| {epochs} | `{name}` | " + " | ".join(f"{100 * c:.1f}" for c in cells) +
                     f" | {100 * mean:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
