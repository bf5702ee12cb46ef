"""PDD with two offline ImageNet teachers on the shared medical sets, next to RD4AD trained here on the same splits
with the same budget, the paper's Table 3/4 ablations and its multi-class setting (Table 2).

Regenerate:  python benchmarks/pdd_unsupervised.py
Writes benchmarks/results/pdd_unsupervised.json (+ .md).  Resumable, so it can run in pieces: re-running the
same command skips the records already written, and a training that was cut off continues from its last finished
epoch (run folders under --runs, teacher features cached under --cache).  Once λ_div and the student input are
chosen, several processes may run the same command (``--parts main ablations multi-class`` beside it, then
``--parts speed`` alone): they share the results file and its rows, each training the next row whose run folder
no other process holds (its lock), in this order: the main rows task by task, the ablations, the multi-class runs.
``--seeds`` / ``--ablation-seeds`` split the rows by hand instead; ``--markdown-only`` rewrites the .md.

Selection, on normal training images only: λ_div (both students converge on a held-out fifth), then PDD's student
input (``unified`` = f_t, the paper's reading, or ``ocbe`` = RD4AD's multi-scale fusion of the InA targets and f_t)
by how well the 2t2s model separates that held-out fifth from the same images with synthetic anomalies pasted in.
PDD records of another student input than the chosen one (earlier runs) stay in the file and are shown as such.

Rows (records; ``method`` names the row):
* ``pdd`` (the 2t2s model) and ``rd4ad`` on every task, --seeds (≥ 3);
* ablations on --ablation-tasks, --ablation-seeds: Table 3 — ``pdd[1t1s]``, ``pdd[2t1s]``, ``pdd[2t1s+mpa]``
  (``pdd`` is 2t2s); Table 4 — ``pdd[s-s-map]`` (M1), ``pdd[s-s-map+no-div]`` (M2), ``pdd[no-div]`` (M3);
* multi-class (Table 2 setting): ``pdd[multi-class]`` and ``rd4ad[multi-class]``, one model per seed trained on the
  union of --multiclass-tasks' normal training images, evaluated on each task's test split.

Teachers: EfficientNet-Lite0 (teacher 1, the CNN role) + EfficientNet-Lite2 (teacher 2); VMamba's ImageNet weights
cannot be had offline.  RD4AD uses teacher 1 alone.  Every setting is fixed before the run (the JSON's
``selection`` says how each was chosen); test labels are only used to compute the reported metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from medad.backbones import build_teacher
from medad.backbones.pair import build_teacher_pair
from medad.data.synthetic import pasted_anomalies
from medad.data.tasks import load_task
from medad.engine.evaluate import evaluate_images
from medad.data.images import load_images
from medad.engine.run_folder import RunFolder, RunFolderError
from medad.engine.training import TrainConfig, TrainResult, seed_everything
from medad.engine.unsupervised import train_unsupervised
from medad.features import FeatureCache, stack_features
from medad.models.factory import load_trained_model
from medad.models.pdd import ABLATIONS, PDD, STUDENT_INPUTS, PDDConfig
from medad.report.figures import comparison_figure, pyplot, save, training_curves_figure
from medad.models.rd4ad import RD4AD
from medad.results import (BenchmarkResults, add_one_class_speed, benchmark_command, group_records, mean_std,
                           speed_table)

TASKS = ["headct", "brainmri", "zhanglab", "brats_slices", "nih_cxr"]
ABLATION_TASKS = ["brainmri", "zhanglab"]
ABLATION_ROWS = ["1t1s", "2t1s", "2t1s+mpa", "s-s-map", "s-s-map+no-div", "no-div"]
MULTICLASS_TASKS = ["headct", "brainmri", "zhanglab"]
DEFAULT_TEACHERS = "efficientnet_lite0+efficientnet_lite2"
PAPER_NAMES = {"headct": "HeadCT", "brainmri": "BrainMRI", "zhanglab": "ZhangLab", "nih_cxr": "NIH CXR (64 px)",
               "brats_slices": "BraTS slices"}
PAPER_PDD = {"headct": 97.5, "zhanglab": 94.0, "brainmri": 96.7}     # PDD Table 1, "Ours" (WRN-50 + VMamba-T, 256 px)
PAPER_RD4AD = {"headct": 74.3, "zhanglab": 87.5, "brainmri": 80.9}   # PDD Table 1, RD4AD row
#: paper ablations, AUROC / AP(AUPR) / F1-max (%): Table 3 on ZhangLab, Table 4 on BrainMRI
PAPER_ABLATIONS = {
    ("zhanglab", "pdd[1t1s]"): "81.5 / 85.5 / 84.8 (T3 M1)",
    ("zhanglab", "pdd[2t1s]"): "90.8 / 95.7 / 89.7 (T3 M3)",
    ("zhanglab", "pdd[2t1s+mpa]"): "92.9 / 96.6 / 90.3 (T3 M4)",
    ("zhanglab", "pdd"): "94.0 / 99.0 / 96.6 (T3 Ours)",
    ("brainmri", "pdd[s-s-map]"): "32.5 / 81.2 / 93.0 (T4 M1)",
    ("brainmri", "pdd[s-s-map+no-div]"): "70.5 / 97.3 / 95.7 (T4 M2)",
    ("brainmri", "pdd[no-div]"): "93.4 / 98.8 / 95.9 (T4 M3)",
    ("brainmri", "pdd"): "96.7 / 99.5 / 97.6 (T4 Ours)",
}
#: epochs of the training log kept in each record (evenly spaced, the last included)
LOG_POINTS = 20
#: options that only split the run between processes sharing the results file (left out of the recorded command)
PIECES = ("--seeds", "--ablation-seeds", "--parts", "--markdown-only")
#: the benchmark's parts, in the order a process runs them
PARTS = ("main", "ablations", "multi-class", "speed")
#: the PDD-vs-RD4AD heat-map figure per task: models of this seed; abnormal and normal test images shown
FIGURE_SEED = 0
FIGURE_IMAGES = {1: 4, 0: 2}
#: the synthetic-anomaly AUROC gain by which another student input must beat the paper's reading to replace it
SELECTION_MARGIN = 0.005
#: PDD's student input as the paper reads it (PDDConfig's default): options, records and run folders without one
PAPER_INPUT = PDDConfig.student_input


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of the main and multi-class rows")
    parser.add_argument("--teachers", default=DEFAULT_TEACHERS, help="'first+second' (teacher 1 = the CNN role)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps per training run (PDD and RD4AD)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3, help="PDD's Adam learning rate (cosine annealing)")
    parser.add_argument("--rd4ad-lr", type=float, default=5e-3, help="RD4AD's Adam learning rate (its benchmark's)")
    parser.add_argument("--ablation-tasks", nargs="*", default=ABLATION_TASKS,
                        help="tasks (among --tasks) that also get the ablation rows; none to skip them")
    parser.add_argument("--ablation-seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--ablations", nargs="*", default=ABLATION_ROWS, choices=sorted(ABLATIONS))
    parser.add_argument("--multiclass-tasks", nargs="*", default=MULTICLASS_TASKS,
                        help="tasks pooled for the multi-class rows; fewer than two to skip them")
    parser.add_argument("--multiclass-steps", type=int, default=None,
                        help="steps of a multi-class run (default: --steps × the number of pooled tasks)")
    parser.add_argument("--lambda-div-grid", nargs="*", type=float, default=[0.5, 0.05, 0.005],
                        help="λ_div candidates (in init units), the paper's first; the largest with which both students "
                             "converge on held-out normal training images is used (none: the configured λ_div)")
    parser.add_argument("--selection-tasks", nargs="*", default=ABLATION_TASKS,
                        help="tasks whose normal training images (4/5 fit, 1/5 held out) select λ_div")
    parser.add_argument("--student-input-grid", nargs="*", default=[PAPER_INPUT, "ocbe"],
                        help="student inputs (PDDConfig.student_input), the paper's reading first; chosen after λ_div by "
                             "synthetic anomalies pasted into held-out normals of --selection-tasks (none: configured)")
    parser.add_argument("--selection-tolerance", type=float, default=1.25,
                        help="a student converged when its held-out relative error ≤ this × its error trained alone")
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="PDDConfig override applied to every PDD row (value parsed as JSON, else a string)")
    parser.add_argument("--speed-teachers", nargs="*", default=None,
                        help="teacher pairs for the speed records (default: --teachers; add "
                             "'wide_resnet50_2+vmamba_tiny' for the paper's pair with random weights)")
    parser.add_argument("--runs", default="benchmarks/.runs/pdd_unsupervised", help="run folders (resume)")
    parser.add_argument("--cache", default="benchmarks/.cache", help="teacher-feature cache")
    parser.add_argument("--results-dir", default="benchmarks/results")
    parser.add_argument("--name", default="pdd_unsupervised")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                        help="what this process runs, in this order: the main rows task by task, the ablations, the "
                             "multi-class runs, the speed records (run speed alone: it times this machine). Processes "
                             "running the same parts share their rows: each trains the next row no other one holds")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite the .md from the .json (e.g. after several processes shared it) and draw the "
                        "figures still missing from trained run folders; train nothing")
    return parser.parse_args()


def model_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"--model-option expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    PDDConfig(**options)  # fail fast on unknown or invalid options
    return options


def selection(args: argparse.Namespace, options: dict) -> dict[str, str]:
    """How each setting was chosen (recorded in the JSON): fixed in advance, or λ_div on held-out normals."""
    config = PDDConfig(**options)
    given = " (given on the command line before the run)" if options else ""
    lambda_div = (f"chosen on held-out NORMAL training images of {', '.join(args.selection_tasks)} (1/5 of each "
                  f"training split, never trained on): the largest of {args.lambda_div_grid} with which Student 1 and "
                  f"Student 2 both reach ≤ {args.selection_tolerance} × the relative error each reaches trained alone "
                  "(2t1s, 2t1s+mpa), see lambda_div_selection" if args.lambda_div_grid else
                  f"fixed in advance: {config.lambda_div}{given}")
    return {
        "lambda_kr, lambda_prp": f"fixed in advance: {config.lambda_kr} / {config.lambda_prp} (the paper's), applied "
        f"to terms in units of their value at initialisation (loss_normalisation={config.loss_normalisation}; "
        f"docs/METHODS.md, PDD){given}",
        "lambda_div": lambda_div,
        "student_input": (f"chosen after λ_div on synthetic anomalies pasted into the same held-out normal training "
                          f"images: {args.student_input_grid[0]} (the paper's reading) unless another of "
                          f"{args.student_input_grid} separates them better by ≥ {SELECTION_MARGIN:.3f} mean image "
                          "AUROC, see student_input_selection" if args.student_input_grid
                          else f"fixed in advance: {config.student_input}{given}"),
        "tau_low, tau_high": f"fixed in advance: {config.tau_low} / {config.tau_high} (the paper's), low = the first "
        f"{config.div_low_layers} stage(s){given}",
        "steps": f"fixed in advance: {args.steps} Adam steps per run, the same for PDD and RD4AD; multi-class runs "
        f"{multiclass_steps(args)}; whether training converged is read from training data only (each record's "
        "loss_flatness and final relative errors)",
        "image_size": f"fixed in advance: {args.image_size} px (2-core CPU; the paper uses 256 px)",
        "lr": f"fixed in advance: PDD {args.lr:g} with cosine annealing (the paper's); RD4AD {args.rd4ad_lr:g} "
        "without schedule (RD4AD's released code, as in rd4ad_unsupervised)",
        "test labels": "used only to compute the reported metrics, never for a choice",
    }


def multiclass_steps(args: argparse.Namespace) -> int:
    return args.multiclass_steps or args.steps * len(args.multiclass_tasks)


def run_slug(method: str) -> str:
    return method.replace("[", "-").replace("]", "")


def shown_rows(labels: list[int]) -> list[int]:
    """Test images of the heat-map figure: per label, evenly spaced positions in the test list (never chosen by
    score), abnormal first."""
    rows = []
    for label, count in FIGURE_IMAGES.items():
        positions = [i for i, value in enumerate(labels) if value == label]
        rows += [positions[round(j)] for j in np.linspace(0, len(positions) - 1, min(count, len(positions)))]
    return rows


@contextmanager
def claimed(run_dir: Path, label: str) -> Iterator[bool]:
    """Hold ``run_dir``'s lock for the block (True), or yield False at once when another live process holds it, so
    that processes running the same command share its rows."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        try:
            held.enter_context(RunFolder(run_dir).locked(f"pdd_unsupervised.py {label}"))
        except RunFolderError:
            yield False
            return
        yield True


def row_name(method: str, student_input: str | None, chosen_input: str) -> str:
    """A row's name: the method, with the student input appended for PDD rows of another input than the chosen one
    (earlier runs, kept for comparison); a name that has it already is returned as is."""
    suffix = f" ({student_input} input)"
    return method if student_input in (None, chosen_input) or method.endswith(suffix) else method + suffix


def label_other_inputs(results: BenchmarkResults, chosen_input: str) -> None:
    """Rename the PDD records of another student input than the chosen one (earlier runs) after :func:`row_name`, so
    that every reader of the file (this markdown, ``medad report``) keeps them apart from the current rows."""
    for record in results.records:
        record["method"] = row_name(record["method"], input_of(record), chosen_input)
    # what other processes still hold under the old names is dropped when merged in (they hold the renamed copies)
    results.keep = lambda record: record["method"] == row_name(record["method"], input_of(record), chosen_input)


def student_input_of(options: dict) -> str:
    """The student input PDD runs with under these model options."""
    return options.get("student_input", PAPER_INPUT)


def input_of(record: dict) -> str | None:
    """A record's PDD student input (None for RD4AD)."""
    return record["config"].get("student_input", PAPER_INPUT) if record["method"].startswith("pdd") else None


def convergence(log: list[dict]) -> dict:
    """Training-data figures of convergence: final terms and relative errors, and how flat the loss ended.

    ``loss_flatness``: relative drop of the mean loss from the second-to-last to the last tenth of the epochs
    (≈ 0: flat).  ``curve``: the log at up to :data:`LOG_POINTS` evenly spaced epochs.
    """
    losses = np.array([entry["loss"] for entry in log])
    window = max(1, len(losses) // 10)
    summary: dict = {"curve": [log[i] for i in sorted({round(x) for x in np.linspace(0, len(log) - 1, LOG_POINTS)})]}
    if len(losses) >= 2 * window:
        last, before = losses[-window:].mean(), losses[-2 * window:-window].mean()
        summary["loss_flatness"] = float((before - last) / max(abs(last), 1e-12))
    final = log[-1]
    summary.update({key: value for key, value in final.items() if key.startswith("loss_") or key == "relative_error"})
    return summary


class Benchmark:
    """Trains (or resumes) one model per record and writes the records."""

    def __init__(self, args: argparse.Namespace, results: BenchmarkResults, options: dict) -> None:
        self.args = args
        self.results = results
        self.options = options
        self.pdd_cache = FeatureCache(build_teacher_pair(args.teachers, num_stages=4), cache_dir=args.cache)
        self.first_cache = FeatureCache(self.pdd_cache.teacher.first, cache_dir=args.cache)  # 1t1s rows
        self.rd4ad_cache = FeatureCache(build_teacher(args.teachers.split("+")[0]), cache_dir=args.cache)
        self.data: dict[str, tuple] = {}

    def task_data(self, name: str) -> tuple:
        """(train images, test images, labels, masks) of a task, loaded once."""
        if name not in self.data:
            task = load_task(name)
            train, _ = load_images(task.train, self.args.image_size, desc=f"{name} train")
            test, masks = load_images(task.test, self.args.image_size, desc=f"{name} test")
            self.data[name] = (train, test, [s.label for s in task.test], masks)
        return self.data[name]

    def build(self, method: str) -> tuple[torch.nn.Module, FeatureCache, TrainConfig, str]:
        """A fresh model for a row, its feature cache, its training settings (epochs set later) and backbone name."""
        args = self.args
        if method.startswith("rd4ad"):
            return (RD4AD(self.rd4ad_cache.teacher), self.rd4ad_cache,
                    TrainConfig(batch_size=args.batch_size, lr=args.rd4ad_lr), self.rd4ad_cache.teacher.name)
        config = self.pdd_config(method)
        cache = self.pdd_cache if config.dual_teacher else self.first_cache
        model = PDD(cache.teacher, config)
        return model, cache, TrainConfig(batch_size=args.batch_size, lr=args.lr, cosine_schedule=True), model.meta()["teacher"]

    def pdd_config(self, method: str) -> PDDConfig:
        row = method[len("pdd["):-1] if method.startswith("pdd[") and method != "pdd[multi-class]" else "2t2s"
        return PDDConfig.ablation(row, **self.options)

    def training_twin(self, method: str) -> str | None:
        """The main or ablation row trained exactly like ``method`` (same seed, same config but the score map, which
        acts only at inference), whose weights ``method`` is scored with; None if there is none."""
        if not method.startswith("pdd[") or method == "pdd[multi-class]":
            return None
        trained_like = {**asdict(self.pdd_config(method)), "score_map": PDDConfig.score_map}
        return next((other for other in ["pdd", *(f"pdd[{row}]" for row in ABLATIONS)]
                     if other != method and asdict(self.pdd_config(other)) == trained_like), None)

    def heldout_model(self, task: str, row: str, overrides: dict, steps: int) -> tuple[PDD, torch.Tensor]:
        """Train ``row`` on 4/5 of ``task``'s normal training images (seed 0, resumable); return it (in eval mode)
        with the other 1/5, never trained on."""
        train = self.task_data(task)[0]
        heldout = torch.arange(len(train)) % 5 == 4
        seed_everything(0)
        options = {**self.options, **overrides}
        config = PDDConfig.ablation(row, **options)
        model = PDD(self.pdd_cache.teacher, config)
        train_config = TrainConfig(batch_size=self.args.batch_size, lr=self.args.lr, cosine_schedule=True, seed=0)
        train_config.epochs = max(1, round(steps / -(-int((~heldout).sum()) // train_config.batch_size)))
        defaults = asdict(PDDConfig())
        label = row + "".join(f"-{k}={v}" for k, v in sorted(options.items()) if v != defaults[k])
        train_unsupervised(model, train[~heldout], train_config, cache=self.pdd_cache, resume=True,
                           out_dir=Path(self.args.runs) / "selection" / Path(task).name / label, desc=f"select {label}")
        return model.eval(), train[heldout]

    def heldout_errors(self, task: str, row: str, overrides: dict, steps: int) -> dict[str, float]:
        """Each student's relative error on ``task``'s held-out normals (:meth:`heldout_model`), mean over stages."""
        model, heldout = self.heldout_model(task, row, overrides, steps)
        features = stack_features(self.pdd_cache, heldout)
        return {name: float(np.mean(values)) for name, values in model.relative_errors(features).items()}

    def synthetic_metrics(self, task: str, overrides: dict, steps: int) -> dict[str, float]:
        """Image and pixel AUROC of the 2t2s model (:meth:`heldout_model`) separating ``task``'s held-out normals
        from the same images with one synthetic anomaly each (``medad.data.synthetic``); no test image is used."""
        model, heldout = self.heldout_model(task, "2t2s", overrides, steps)
        anomalous, masks, _ = pasted_anomalies(heldout, seed=0)
        images = torch.cat([heldout, anomalous])
        evaluation = evaluate_images(model.predict, images, [0] * len(heldout) + [1] * len(heldout),
                                     torch.cat([torch.zeros_like(masks), masks]), batch_size=32)
        return {"image_auroc": evaluation.metrics["image_auroc"], "pixel_auroc": evaluation.metrics["pixel_auroc"],
                "n_heldout": len(heldout)}

    def select_student_input(self) -> str | None:
        """The student input (``student_input``) of the grid whose 2t2s model, at the chosen λ_div, best separates
        held-out normals from synthetic anomalies on the selection tasks (mean image AUROC); a candidate must beat
        the first (the paper's reading) by :data:`SELECTION_MARGIN` to replace it.  None when the grid is empty."""
        args = self.args
        if not args.student_input_grid:
            return None
        report = self.results.data.setdefault("student_input_selection", {"tasks": {}})
        means = {}
        for candidate in args.student_input_grid:
            for task in args.selection_tasks:
                entry = report["tasks"].setdefault(task, {})
                if candidate not in entry:
                    entry[candidate] = self.synthetic_metrics(task, {"student_input": candidate}, args.steps)
                    self.results.save()
            means[candidate] = float(np.mean([report["tasks"][t][candidate]["image_auroc"] for t in args.selection_tasks]))
        first = args.student_input_grid[0]
        best = max(means, key=means.get)
        chosen = best if means[best] >= means[first] + SELECTION_MARGIN else first
        report.update(mean_image_auroc=means, chosen=chosen,
                      rule=f"highest mean synthetic-anomaly image AUROC over {', '.join(args.selection_tasks)}; "
                      f"{first} unless another beats it by ≥ {SELECTION_MARGIN:.3f}")
        self.results.save()
        return chosen

    def select_lambda_div(self) -> float | None:
        """The largest λ_div of the grid with which both students converge on every selection task's held-out
        normals (None when the grid is empty; the smallest candidate when none passes, recorded as such)."""
        args = self.args
        if not args.lambda_div_grid:
            return None
        report = self.results.data.setdefault("lambda_div_selection", {"tasks": {}})
        for candidate in args.lambda_div_grid:
            passed = True
            for task in args.selection_tasks:
                entry = report["tasks"].setdefault(task, {})
                if "alone" not in entry:
                    entry["alone"] = {"s1": self.heldout_errors(task, "2t1s", {}, args.steps)["s1"],
                                      "s2": self.heldout_errors(task, "2t1s+mpa", {}, args.steps)["s2"]}
                key = f"{candidate:g}"
                if key not in entry.setdefault("candidates", {}):
                    entry["candidates"][key] = self.heldout_errors(task, "2t2s", {"lambda_div": candidate}, args.steps)
                self.results.save()
                passed &= all(entry["candidates"][key][s] <= args.selection_tolerance * entry["alone"][s]
                              for s in ("s1", "s2"))
            if passed:
                report.update(chosen=candidate, rule="largest candidate with which both students converged")
                return candidate
        report.update(chosen=args.lambda_div_grid[-1], rule="no candidate converged: the smallest is used")
        return args.lambda_div_grid[-1]

    def done(self, method: str, task: str, seed: int, steps: int) -> bool:
        """Whether ``method`` trained with this seed, image size and step budget (and, for PDD, student input) has a
        record on ``task`` (a record of another budget or input, e.g. an earlier run's, is not reused)."""
        key = {"method": method, "task": task, "seed": seed, "image_size": self.args.image_size, "steps": steps}
        return any(all(record.get(k) == v for k, v in key.items()) and input_of(record) == self.input_for(method)
                   for record in self.results.records)

    def run(self, method: str, train_tasks: list[str], eval_tasks: list[str], seed: int, steps: int) -> bool:
        """Train ``method`` on the union of ``train_tasks`` (resuming its run folder) and record each eval task.

        False when another process holds the run folder (it trains and records this row; this one goes on)."""
        self.results.refresh()  # rows other processes recorded meanwhile
        if all(self.done(method, task, seed, steps) for task in eval_tasks):
            return True
        twin = self.training_twin(method)
        if twin is not None and not self.run(twin, train_tasks, eval_tasks, seed, steps):
            return False  # the twin (whose weights this row scores with its own map) is still being trained
        run_dir = self.run_dir(twin or method, train_tasks, seed)
        with claimed(run_dir, f"{method} {'+'.join(train_tasks)} seed {seed}") as mine:
            if not mine:
                return False
            images = torch.cat([self.task_data(task)[0] for task in train_tasks])
            seed_everything(seed)
            model, cache, config, backbone = self.build(method)
            config.seed = seed
            config.epochs = max(1, round(steps / -(-len(images) // config.batch_size)))
            started = time.perf_counter()
            trained = train_unsupervised(model, images, config, out_dir=run_dir, resume=True, cache=cache,
                                         desc=f"{method} {'+'.join(train_tasks)} s{seed}", train_tasks=train_tasks)
            RunFolder(run_dir).write_train_log(trained.epochs_done, trained.history, trained.train_seconds, trained.log)
            self.results.refresh()  # another process may have recorded rows meanwhile
            for task in eval_tasks:
                if not self.done(method, task, seed, steps):
                    self.record(method, task, train_tasks, seed, model, trained, backbone, len(images), steps,
                                time.perf_counter() - started, weights_of=twin)
        return True

    def run_dir(self, method: str, train_tasks: list[str], seed: int) -> Path:
        """A row's run folder; a PDD row with another student input than the paper's reading gets its own."""
        suffix = "" if self.input_for(method) in (None, PAPER_INPUT) else f"-{self.input_for(method)}"
        return (Path(self.args.runs) / "+".join(Path(task).name for task in train_tasks)
                / f"{run_slug(method)}-seed{seed}{suffix}")

    def figures(self, task: str) -> None:
        """Figures of ``task``'s seed-:data:`FIGURE_SEED` models, as PNGs beside the results file named in its
        ``figures`` section: PDD's and RD4AD's heat maps on the same test images (the paper's Fig. 4–5) and PDD's
        per-term training curves.  Skipped when present or a model is not trained yet."""
        runs = {method: self.run_dir(method, [task], FIGURE_SEED) for method in ("pdd", "rd4ad")}
        if not all(self.done(method, task, FIGURE_SEED, self.args.steps) for method in runs):
            return
        curves = Path(self.args.results_dir) / f"{self.args.name}_curves_{task}.png"
        if not self.figure_current(f"{task}-curves", curves):
            per_epoch = json.loads((runs["pdd"] / "train_log.json").read_text())["per_epoch"]
            self.save_figure(f"{task}-curves", curves, training_curves_figure(per_epoch, f"{task}: PDD seed {FIGURE_SEED}"),
                             f"{task}: PDD (2t2s) training, seed {FIGURE_SEED}: each loss term in units of its value at "
                             "initialisation (the weighted total dashed) and each student's relative error per stage on "
                             "a fixed batch of training images")
        heatmaps = Path(self.args.results_dir) / f"{self.args.name}_heatmaps_{task}.png"
        if self.figure_current(task, heatmaps):
            return
        _, test, labels, masks = self.task_data(task)
        rows = shown_rows(labels)
        maps = {}
        for method, run_dir in runs.items():
            model, _ = load_trained_model(run_dir, expected_method=method)
            with torch.no_grad():
                maps[method.upper()] = model.predict(test[rows])[0].numpy()
        has_masks = bool(masks[rows].any())
        fig = comparison_figure(test[rows].numpy(), maps, [labels[i] for i in rows],
                                masks[rows, 0].numpy() if has_masks else None, f"{task}: PDD vs RD4AD, seed {FIGURE_SEED}")
        self.save_figure(task, heatmaps, fig, f"{task}: heat maps of PDD (2t2s) and RD4AD, seed {FIGURE_SEED}, on the "
                         f"same test images ({FIGURE_IMAGES[1]} abnormal, {FIGURE_IMAGES[0]} normal, evenly spaced in the "
                         "test list, not chosen by score); one colour scale per model (its 1st–99th percentile over "
                         "these images)" + ("; ground truth: the tumour mask" if has_masks else ""))

    def student_input(self) -> str:
        """The student input of this benchmark's PDD rows (chosen, or configured)."""
        return student_input_of(self.options)

    def input_for(self, method: str) -> str | None:
        """The student input of ``method``'s runs (None for RD4AD)."""
        return self.student_input() if method.startswith("pdd") else None

    def figure_current(self, key: str, path: Path) -> bool:
        """Whether figure ``key`` exists and shows PDD with the current student input."""
        entry = self.results.data.get("figures", {}).get(key, {})
        return path.is_file() and entry.get("student_input", PAPER_INPUT) == self.student_input()

    def save_figure(self, key: str, path: Path, fig, caption: str) -> None:
        save(fig, path, quantize=True)
        pyplot().close(fig)
        caption += f"; PDD's student input: {self.student_input()}"
        self.results.data.setdefault("figures", {})[key] = {"file": path.name, "caption": caption,
                                                            "student_input": self.student_input()}
        self.results.save()

    def record(self, method: str, task: str, train_tasks: list[str], seed: int, model: torch.nn.Module,
               trained: TrainResult, backbone: str, n_train: int, steps: int, seconds: float,
               weights_of: str | None = None) -> None:
        _, test, labels, masks = self.task_data(task)
        evaluation = evaluate_images(model.predict, test, labels, masks, batch_size=32)
        self.results.add_record({
            "method": method, "task": task, "train_tasks": train_tasks, "backbone": backbone,
            "image_size": self.args.image_size, "k": None, "seed": seed, "support_draw": None, **evaluation.metrics,
            "train_seconds": trained.train_seconds, "wall_seconds": seconds, "epochs": trained.epochs_done,
            "steps": steps, "n_train": n_train, "final_loss": trained.history[-1], "config": model.meta().get("config"),
            "convergence": convergence(trained.log), **({"weights_of": weights_of} if weights_of else {}),
            # part of the record's identity (medad.results.RECORD_KEY): rows of two student inputs are kept apart
            **({"selection": f"student_input={self.input_for(method)}"} if self.input_for(method) else {})})
        print(f"{method} {task} seed {seed}: AUROC {evaluation.metrics['image_auroc']:.4f} "
              f"({trained.epochs_done} epochs, {trained.train_seconds:.0f} s)", flush=True)


def speed_records(results: BenchmarkResults, images: torch.Tensor, args: argparse.Namespace, options: dict) -> None:
    """Cached vs uncached training throughput and teacher+students inference, same process, same batch."""
    for teachers in args.speed_teachers if args.speed_teachers is not None else [args.teachers]:
        random_weights = "vmamba" in teachers or "wide_resnet" in teachers  # no offline ImageNet weights here
        pair = build_teacher_pair(teachers, weights=None if random_weights else "imagenet")
        torch.manual_seed(0)
        model = PDD(pair, PDDConfig(**options))
        batch = images[: args.batch_size]
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                     betas=(0.5, 0.999))
        common = {"method": "pdd", "backbone": teachers + (" (random weights)" if random_weights else ""),
                  "image_size": args.image_size, "k": None, "batch_size": len(batch)}
        add_one_class_speed(results, model, optimizer, batch, common)


def metric_cells(records: list[dict], keys: tuple[str, ...]) -> str:
    return " | ".join(mean_std(r.get(key) for r in records) for key in keys)


def errors_cell(records: list[dict], student: str) -> str:
    """Mean final relative error per stage of one student over the records, e.g. '0.41 / 0.32 / 0.20'."""
    values = [r["convergence"]["relative_error"][student] for r in records
              if student in r.get("convergence", {}).get("relative_error", {})]
    return " / ".join(f"{v:.2f}" for v in np.mean(values, axis=0)) if values else "—"


def figure_and_speed_lines(results: BenchmarkResults) -> list[str]:
    """The markdown's heat-map figures and speed table."""
    lines: list[str] = []
    shown = results.data.get("figures", {})
    if shown:
        lines += ["", "## Figures: PDD vs RD4AD heat maps (the paper's Fig. 4–5) and PDD's training curves", ""]
        for entry in shown.values():
            lines += [f"![{entry['caption']}]({entry['file']})", "", entry["caption"] + ".", ""]
    return lines + speed_table(results.data["speed"])


def selection_lines(results: BenchmarkResults, args: argparse.Namespace) -> list[str]:
    """The markdown's sections on the settings chosen on held-out normals: λ_div, then the student input."""
    lines: list[str] = []
    chosen = results.data.get("lambda_div_selection", {})
    if chosen.get("tasks"):
        lines += ["", f"## λ_div chosen on held-out normal training images: **{chosen.get('chosen', '—')}** "
                  f"({chosen.get('rule', 'in progress')})", "",
                  "Mean relative error (over stages) of each student on the held-out fifth of the training normals.", "",
                  "| task | Student 1 alone | Student 2 alone | "
                  + " | ".join(f"λ_div = {c:g}: S1 / S2" for c in args.lambda_div_grid) + " |",
                  "|---|---|---|" + "---|" * len(args.lambda_div_grid)]
        for task, entry in chosen["tasks"].items():
            alone = entry.get("alone", {})
            cells = [" / ".join(f"{entry['candidates'][f'{c:g}'][s]:.3f}" for s in ("s1", "s2"))
                     if f"{c:g}" in entry.get("candidates", {}) else "—" for c in args.lambda_div_grid]
            lines.append(f"| {PAPER_NAMES.get(task, task)} | {alone.get('s1', float('nan')):.3f} | "
                         f"{alone.get('s2', float('nan')):.3f} | " + " | ".join(cells) + " |")
    inputs = results.data.get("student_input_selection", {})
    if inputs.get("tasks"):
        lines += ["", f"## Student input chosen on synthetic anomalies in held-out normals: **{inputs.get('chosen', '—')}**",
                  "", f"Rule: {inputs.get('rule', 'in progress')}. Each candidate is the 2t2s model at the chosen λ_div "
                  "trained on 4/5 of the task's normal training images (seed 0, the λ_div selection's runs); it scores "
                  "the held-out fifth and the same images with one synthetic anomaly each (`medad.data.synthetic`: "
                  "a region of another held-out normal pasted in, or a local brightening/darkening, alternately). "
                  "Image AUROC / pixel AUROC:", "",
                  "| task | held-out normals | " + " | ".join(args.student_input_grid) + " |",
                  "|---|---|" + "---|" * len(args.student_input_grid)]
        for task, entry in inputs["tasks"].items():
            count = next((value["n_heldout"] for value in entry.values()), "—")
            cells = [f"{100 * entry[c]['image_auroc']:.1f} / {100 * entry[c]['pixel_auroc']:.1f}" if c in entry else "—"
                     for c in args.student_input_grid]
            lines.append(f"| {PAPER_NAMES.get(task, task)} | {count} | " + " | ".join(cells) + " |")
        if "mean_image_auroc" in inputs:
            lines.append("| mean image AUROC | | " + " | ".join(f"{100 * inputs['mean_image_auroc'][c]:.1f}"
                                                          for c in args.student_input_grid) + " |")
    return lines


def markdown(results: BenchmarkResults, args: argparse.Namespace, options: dict) -> str:
    first, second = args.teachers.split("+")
    chosen_input = student_input_of(options)
    groups = group_records(results.records, ("method", "task"))
    variants = [chosen_input, *(x for x in STUDENT_INPUTS if x != chosen_input)]
    image = ("image_auroc", "image_ap", "image_f1max")
    lines = [f"# PDD vs RD4AD, unsupervised — teachers `{first}` (teacher 1) + `{second}` (teacher 2), ImageNet, "
             f"offline, {args.image_size} px", "",
             f"Command: `{results.data['command']}`  ", f"Machine: {results.data['machine']}  ",
             f"Training: {args.steps} Adam steps per run for both methods (batch {args.batch_size}); PDD lr {args.lr:g} "
             f"with cosine annealing, loss Eq. 9 with each term in units of its value at initialisation; RD4AD "
             f"(teacher `{first}`) lr {args.rd4ad_lr:g}. Image score = max of the σ=4 smoothed map. Mean ± std over "
             "seeds." + (f" PDD model options: `{json.dumps(options)}`." if options else ""), "",
             "How each setting was chosen (no test label was used): "
             + "; ".join(f"**{k}**: {v}" for k, v in results.data["selection"].items()), "",
             "| task | n normal / abnormal | method | seeds | epochs | AUROC | AP | F1-max | pixel AUROC | pixel AUPRO "
             "| paper AUROC |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for task in args.tasks:
        for name in [*(row_name("pdd", x, chosen_input) for x in variants), "rd4ad"]:
            records = groups.get((name, task))
            if records:
                paper = PAPER_PDD if name.startswith("pdd") else PAPER_RD4AD
                lines.append(f"| {PAPER_NAMES.get(task, task)} | {records[0]['n_test_normal']} / "
                             f"{records[0]['n_test_abnormal']} | {name} | {len(records)} | {records[0]['epochs']} | "
                             f"{metric_cells(records, image + ('pixel_auroc', 'pixel_aupro'))} | "
                             f"{paper.get(task, '—')} |")
    lines += selection_lines(results, args)
    multiclass = [t for t in args.multiclass_tasks
                  if groups.get(("pdd[multi-class]", t)) or groups.get(("rd4ad[multi-class]", t))]
    if multiclass:
        lines += ["", f"## Multi-class (one model trained on {' + '.join(args.multiclass_tasks)}, evaluated per task)",
                  "", "| task | method | seeds | AUROC / AP / F1-max, one model | same, per-task model |",
                  "|---|---|---|---|---|"]
        for task in multiclass:
            for method, student_input in [*(("pdd", x) for x in variants), ("rd4ad", None)]:
                records = groups.get((row_name(f"{method}[multi-class]", student_input, chosen_input), task), [])
                per_task = groups.get((row_name(method, student_input, chosen_input), task), [])
                if records or student_input in (None, chosen_input):
                    lines.append(f"| {PAPER_NAMES.get(task, task)} | {row_name(method, student_input, chosen_input)} | "
                                 f"{len(records)} | {' / '.join(mean_std(r[k] for r in records) for k in image)} | "
                                 f"{' / '.join(mean_std(r[k] for r in per_task) for k in image)} |")
    ablation_tasks = [t for t in args.tasks if t in (args.ablation_tasks or [])]
    if ablation_tasks and args.ablations:
        lines += ["", "## Ablations (Table 3: distillation paradigm; Table 4: anomaly map and L_div)", "",
                  "Final relative error = error energy / target energy of each student on a fixed batch of training "
                  "images, per stage (stride 4 / 8 / 16): a student trained with the others should reach the level it "
                  "reaches alone (1t1s/2t1s for Student 1, 2t1s+mpa for Student 2).", "",
                  "| task | row | seeds | AUROC | AP | F1-max | S1 rel. error | S2 rel. error | loss flatness "
                  "| paper AUROC / AP / F1-max |", "|---|---|---|---|---|---|---|---|---|---|"]
        for task, student_input, row in ((t, x, r) for t in ablation_tasks for x in variants
                                         for r in ["2t2s", *args.ablations]):
            method = "pdd" if row == "2t2s" else f"pdd[{row}]"
            records = [r for r in groups.get((row_name(method, student_input, chosen_input), task), [])
                       if r["seed"] in args.ablation_seeds]
            if records:
                flatness = [r["convergence"]["loss_flatness"] for r in records if "loss_flatness" in r["convergence"]]
                shown = row_name("full (2t2s)" if row == "2t2s" else row, student_input, chosen_input)
                lines.append(f"| {PAPER_NAMES.get(task, task)} | {shown} | "
                             f"{len(records)} | {metric_cells(records, image)} | {errors_cell(records, 's1')} | "
                             f"{errors_cell(records, 's2')} | {f'{np.mean(flatness):+.3f}' if flatness else '—'} | "
                             f"{PAPER_ABLATIONS.get((task, method), '—')} |")
    if any(r["task"] == "brats_slices" for r in results.records):
        lines += ["", "BraTS slices: the normal slices lie below the tumour in the one volume, so the image AUROC "
                  "measures slice position more than tumour; the pixel metrics are this task's localisation figures."]
    lines += figure_and_speed_lines(results)
    return "\n".join(lines) + "\n"


def main() -> int:
    args = parse_args()
    options = model_options(args.model_option)
    results = BenchmarkResults(args.name, benchmark_command("pdd_unsupervised.py", pieces=PIECES), directory=args.results_dir)
    results.data["selection"] = selection(args, options)
    bench = Benchmark(args, results, options)
    if args.markdown_only:
        recorded = {"lambda_div": results.data.get("lambda_div_selection", {}).get("chosen"),
                    "student_input": results.data.get("student_input_selection", {}).get("chosen")}
        bench.options = options = {**options, **{key: value for key, value in recorded.items() if value is not None}}
        label_other_inputs(results, bench.student_input())
        for task in args.tasks:
            bench.figures(task)
        results.save()
        results.write_markdown(markdown(results, args, options))
        return 0
    chosen = bench.select_lambda_div()
    if chosen is not None:
        bench.options = options = {**options, "lambda_div": chosen}
    student_input = bench.select_student_input()
    if student_input is not None:
        bench.options = options = {**options, "student_input": student_input}
        label_other_inputs(results, student_input)
        results.save()

    def save() -> None:
        results.save()
        results.write_markdown(markdown(results, args, options))

    pooled = args.multiclass_tasks if len(args.multiclass_tasks) >= 2 else []
    for task, seed in ((t, s) for t in args.tasks for s in args.seeds if "main" in args.parts):
        for method in ("pdd", "rd4ad"):
            bench.run(method, [task], [task], seed, args.steps)
        bench.figures(task)
        save()
    for seed, task in ((s, t) for s in args.seeds if s in args.ablation_seeds and "ablations" in args.parts
                       for t in args.tasks):
        for row in args.ablations if task in (args.ablation_tasks or []) else ():
            bench.run(f"pdd[{row}]", [task], [task], seed, args.steps)
        save()
    for seed in args.seeds if pooled and "multi-class" in args.parts else ():
        for method in ("pdd[multi-class]", "rd4ad[multi-class]"):
            bench.run(method, pooled, pooled, seed, multiclass_steps(args))
            save()
    if args.tasks and "speed" in args.parts:
        speed_records(results, bench.task_data(args.tasks[-1])[0], args, options)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
