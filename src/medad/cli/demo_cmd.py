"""``medad demo``: the README's main job — few-shot anomaly detection on a task the model never saw, in seconds.

By default it scores the test split of the head-CT task (``headct``, held out of the training of medad's bundled
models, :mod:`medad.pretrained`) from K normal references drawn from its training normals with the default few-shot
scorer (support scoring plus the bundled generic student adapted to the references), beside training-free
PatchCore-K and the bundled D²4FAD-NN on the same references; prints AUROC/AP/F1-max of each and writes the
default's heat maps.  ``--train`` keeps the longer demo: train a D²4FAD-NN model on four shared tasks, then score the
unseen brain-tumour MRI task.  Without the shared data (``--data-root``, ``$MEDAD_DATA_ROOT`` or
``../shared/data``) both run on synthetic phantom tasks, and say so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from medad import console
from medad.backbones import DEFAULT_TEACHER
from medad.cli.common import add_device_option, add_quiet_option, run_record, select_run_device, write_scores
from medad.cli.run_cmd import format_metrics
from medad.engine.run_folder import (DEMO_FILE, DEMO_MODEL_DIR, DEMO_OUTPUTS, DEMO_PHANTOMS_DIR, HEATMAPS_DIR,
                                     SCORES_CSV, RunFolder)
from medad.engine.scorers import DEFAULT_FEWSHOT_METHOD
from medad.options import number_type

#: the bundled model's demo: its held-out task
BUNDLED_TARGET = "headct"
#: the scorers the demo compares, the default first
DEMO_METHODS = (DEFAULT_FEWSHOT_METHOD, "patchcore", "d24fad_nn")
#: the --train demo: training tasks and the unseen target
SHARED_TRAIN = ["headct", "brainmri", "zhanglab", "nih_cxr"]
SHARED_TARGET = "brain_tumor"
#: said beside the result: how the references were drawn, and what that means for the scores
SUPPORT_CAVEAT = ("the K references are drawn at random from the task's training normals; scores are relative to "
                  "them, so a view they do not show (another imaging plane, slice level, position or scanner) scores "
                  "as anomalous: give references that cover the views you score")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="few-shot demo: medad scores an unseen task from K normal references",
        description="Score the head-CT task, which medad's bundled models never saw, from K normal references with "
                    "the default few-shot scorer, beside training-free PatchCore-K and the bundled D²4FAD-NN (under "
                    "a minute); --train trains a model first (minutes).")
    demo.add_argument("--out", default="runs/demo", help="folder for the scores, heat maps and demo.json")
    demo.add_argument("--data-root", dest="data_root",
                      help="folder holding the shared data sets (default: $MEDAD_DATA_ROOT or ../shared/data)")
    demo.add_argument("--synthetic", action="store_true", help="use phantom tasks even if shared data exists")
    demo.add_argument("--k", type=number_type("k"), default=4, help="normal reference images of the unseen task")
    demo.add_argument("--seed", type=number_type("seed"), default=0,
                      help="seed of the splits, the references (and the training)")
    demo.add_argument("--train", action="store_true",
                      help=f"train a model on {', '.join(SHARED_TRAIN)} first and score {SHARED_TARGET} (minutes)")
    demo.add_argument("--epochs", type=number_type("epochs"),
                      help="--train: few-shot training epochs (default: the default few-shot method's budget)")
    demo.add_argument("--image-size", dest="image_size", type=number_type("image_size"), default=128,
                      help="--train: model input size in pixels")
    demo.add_argument("--max-queries-per-task", dest="max_queries_per_task", type=number_type("max_queries_per_task"),
                      help="--train: query images per training task and epoch (default: the method's budget)")
    demo.add_argument("--teacher", default=DEFAULT_TEACHER, help="--train: teacher name")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    add_device_option(demo)
    add_quiet_option(demo)
    demo.set_defaults(func=run_demo)


def _shared_root(args: argparse.Namespace) -> Path | None:
    """The shared data's folder, or None (then says plainly that the demo uses phantoms, and how not to)."""
    from medad.data.registry import data_root

    if not args.synthetic:
        try:
            return data_root(args.data_root)
        except FileNotFoundError as error:
            console.warn(f"{error}.")
    console.warn("this demo uses SYNTHETIC PHANTOM images, which say nothing about medical images. For real ones "
                 "pass --data-root DIR (the folder holding the shared data sets, e.g. headct/), or score your own "
                 "images: medad fewshot score --support NORMALS/ --query IMAGES/ --out OUT")
    return None


def _phantom(folder: Path, name: str, style: str, seed: int, n_train: int, n_test: int, size: int):
    from medad.data.phantom import make_phantom_task

    return make_phantom_task(folder / name, name=name, n_train=n_train, n_test_normal=n_test,
                             n_test_abnormal=n_test, size=size, seed=seed, style=style)


def run_demo(args: argparse.Namespace) -> int:
    run = RunFolder(args.out)
    with run.for_outputs("demo", DEMO_OUTPUTS, overwrite=args.overwrite):
        device = select_run_device(args.device)
        root = _shared_root(args)
        (_train_demo if args.train else _bundled_demo)(args, run, device, root)
    return 0


def _bundled_demo(args: argparse.Namespace, run: RunFolder, device, root: Path | None) -> None:
    import torch

    from medad.data.images import load_images
    from medad.data.tasks import load_task
    from medad.engine.fewshot import draw_supports, evaluate_fewshot
    from medad.engine.scorers import load_scorer
    from medad.pretrained import CARD_MD, GENERIC_CARD_MD, GENERIC_METHOD

    started = time.perf_counter()
    target = (load_task(BUNDLED_TARGET, root=root, seed=args.seed) if root is not None else
              _phantom(run.file(DEMO_PHANTOMS_DIR), "phantom_target", "head", args.seed + 99, 20, 30, 128))
    methods = list(DEMO_METHODS)
    scorers = {method: load_scorer(method, None, "imagenet", device) for method in methods}
    for method, scorer in scorers.items():
        console.info(f"method {method}: {scorer.name}")
    size = scorers[methods[0]].image_size
    if any(scorer.image_size != size for scorer in scorers.values()):
        raise ValueError("the demo's scorers take different input sizes")
    chosen = draw_supports(len(target.train), args.k, draw=0, seed=args.seed)
    support_images, _ = load_images([target.train[i] for i in chosen], size, desc="loading references", workers=0)
    test_images, masks = load_images(target.test, size, desc=f"loading {target.name} test")
    labels = [s.label for s in target.test]
    console.info(f"unseen task {target.name}: {len(target.test)} test images scored from K={args.k} normal references "
                 f"({', '.join(Path(target.train[i].path).name for i in chosen)})")
    with torch.no_grad():
        queries = _shared_queries(scorers, test_images)
        evaluations = {method: evaluate_fewshot(scorer.model, support_images, test_images, labels, masks,
                                                queries=queries[method]) for method, scorer in scorers.items()}
    for method, evaluation in evaluations.items():
        metrics = evaluation.metrics
        console.info(f"  {method:<10} AUROC {metrics['image_auroc']:.3f}  AP {metrics['image_ap']:.3f}  "
                     f"F1-max {metrics['image_f1max']:.3f}")
    console.info(f"note: {SUPPORT_CAVEAT}")
    default = evaluations[methods[0]]
    paths = [str(s.path) for s in target.test]
    write_scores(run, paths, default.scores, labels)
    _write_heatmaps(run, target, paths, labels, default)
    seconds = time.perf_counter() - started
    options = {k: v for k, v in vars(args).items() if k != "func"}
    run.write_json(DEMO_FILE, {**run_record("demo", options, device), "source": str(root) if root else "phantoms",
                               "target": target.name, "k": args.k,
                               "support": [str(target.train[i].path) for i in chosen], "support_caveat": SUPPORT_CAVEAT,
                               "methods": {method: {"model": scorers[method].record(), **evaluations[method].metrics}
                                           for method in methods}, "seconds": seconds})
    console.info(f"done in {seconds:.0f} s")
    for method in methods:
        if scorers[method].checkpoint is not None:
            card = GENERIC_CARD_MD if method == GENERIC_METHOD else CARD_MD
            console.info(f"{method} model: {scorers[method].checkpoint} (model card: "
                         f"{scorers[method].checkpoint.with_name(card)})")
    console.info(f"outputs: {run.path}: heat maps of the 8 least and 8 most anomalous test images ({methods[0]}) in "
                 f"{run.file(HEATMAPS_DIR)}, scores in {run.file(SCORES_CSV)} ({methods[0]}), every method's "
                 f"metrics in {run.file(DEMO_FILE)}")


def _shared_queries(scorers: dict, test_images) -> dict:
    """Each scorer's query features; when the learned model (d24fad_nn) is among them, the others reuse its teacher
    features if they use the same frozen teacher (the test images go through the teacher once)."""
    from medad.engine.fewshot import encode_queries

    learned = scorers.get("d24fad_nn")
    if learned is None:
        return {method: encode_queries(scorer.model, test_images) for method, scorer in scorers.items()}
    encoded = encode_queries(learned.model, test_images)
    queries = {"d24fad_nn": encoded}
    for method, scorer in scorers.items():
        if method != "d24fad_nn":
            queries[method] = (scorer.model.queries_from_teacher(encoded.teacher, encoded.image_size)
                               if scorer.meta["teacher"] == learned.meta["teacher"]
                               else encode_queries(scorer.model, test_images))
    return queries


def _write_heatmaps(run: RunFolder, target, paths: list[str], labels: list[int], evaluation) -> None:
    from medad.data.tasks import load_sample_image
    from medad.visualize import write_ranked_heatmaps

    write_ranked_heatmaps(run.file(HEATMAPS_DIR), paths, labels, evaluation.maps, evaluation.scores,
                          lambda i: load_sample_image(target.test[i]))


def _train_demo(args: argparse.Namespace, run: RunFolder, device, root: Path | None) -> None:
    from medad.data.images import load_images
    from medad.data.tasks import load_task
    from medad.device import to_device
    from medad.engine.fewshot import draw_supports, evaluate_fewshot, train_fewshot
    from medad.engine.training import TrainConfig, seed_everything
    from medad.models.factory import build_model
    from medad.models.registry import default_method, method_info

    seed_everything(args.seed)
    if root is not None:
        train_tasks = [load_task(name, root=root, seed=args.seed) for name in SHARED_TRAIN]
        target = load_task(SHARED_TARGET, root=root, seed=args.seed)
    else:
        phantoms = run.file(DEMO_PHANTOMS_DIR)
        train_tasks = [_phantom(phantoms, name, style, args.seed + i, 40, 10, args.image_size)
                       for i, (name, style) in enumerate([("phantom_head", "head"), ("phantom_chest", "chest")])]
        target = _phantom(phantoms, "phantom_target", "head", args.seed + 99, 20, 30, args.image_size)
    method = default_method("few_shot")
    budget = method_info(method).training
    console.info(f"few-shot demo ({method}): train on {', '.join(t.name for t in train_tasks)}; unseen target "
                 f"{target.name} with K={args.k} normal references; teacher {args.teacher}")
    model = to_device(build_model(method, args.teacher), device)
    task_images = {t.name: load_images(t.train, args.image_size, desc=f"loading {t.name}")[0] for t in train_tasks}
    config = TrainConfig(epochs=args.epochs or budget.epochs, batch_size=budget.batch_size, lr=budget.lr,
                         seed=args.seed)
    result = train_fewshot(model, task_images, config,
                           max_queries_per_task=args.max_queries_per_task or budget.max_queries_per_task,
                           out_dir=run.file(DEMO_MODEL_DIR))
    supports = draw_supports(len(target.train), args.k, draw=0, seed=args.seed)
    support_images, _ = load_images([target.train[i] for i in supports], args.image_size, desc="loading supports")
    test_images, masks = load_images(target.test, args.image_size, desc=f"loading {target.name} test")
    labels = [s.label for s in target.test]
    evaluation = evaluate_fewshot(model, support_images, test_images, labels, masks)
    console.info(format_metrics(target.name, evaluation.metrics))
    console.info(f"note: {SUPPORT_CAVEAT}")
    paths = [str(s.path) for s in target.test]
    write_scores(run, paths, evaluation.scores, labels)
    _write_heatmaps(run, target, paths, labels, evaluation)
    options = {k: v for k, v in vars(args).items() if k != "func"}
    run.write_json(DEMO_FILE, {**run_record("demo", options, device), "source": str(root) if root else "phantoms",
                               "target": target.name, "train_tasks": list(task_images),
                               "train_seconds": result.train_seconds, "support_caveat": SUPPORT_CAVEAT,
                               "support": [str(target.train[i].path) for i in supports], **evaluation.metrics})
    console.info(f"trained in {result.train_seconds:.0f} s")
    console.info(f"model: {run.file(DEMO_MODEL_DIR)} (use it with --checkpoint {run.path})")
    console.info(f"outputs: {run.path}: heat maps of the 8 least and 8 most anomalous test images in "
                 f"{run.file(HEATMAPS_DIR)}, scores in {run.file(SCORES_CSV)}, metrics in {run.file(DEMO_FILE)}")
