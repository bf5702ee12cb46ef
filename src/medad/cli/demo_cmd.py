"""``medad demo``: the README's main job — medad's default few-shot model on an unseen task in minutes.

With the shared data (``--data-root``, ``$MEDAD_DATA_ROOT`` or ``../shared/data``) it trains one
D²4FAD-NN model on the normal images of head CT, brain MRI, paediatric and adult chest X-ray, then scores
the unseen brain-tumour MRI task from K normal references.  Without it, the same on synthetic phantom
tasks (two training styles, one held-out style).  Prints metrics, writes heat maps.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from medad import console
from medad.backbones import DEFAULT_TEACHER
from medad.cli.common import (add_device_option, add_quiet_option, run_record, select_run_device, write_heatmaps,
                              write_scores)
from medad.cli.run_cmd import format_metrics
from medad.engine.run_folder import (DEMO_FILE, DEMO_MODEL_DIR, DEMO_OUTPUTS, DEMO_PHANTOMS_DIR, HEATMAPS_DIR,
                                     SCORES_CSV, RunFolder)
from medad.models.factory import build_model
from medad.models.registry import default_method, method_info
from medad.options import number_type

SHARED_TRAIN = ["headct", "brainmri", "zhanglab", "nih_cxr"]
SHARED_TARGET = "brain_tumor"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="few-shot demo: train on several tasks, score an unseen one")
    demo.add_argument("--out", default="runs/demo", help="folder for the model, scores, heat maps and demo.json")
    demo.add_argument("--data-root", dest="data_root",
                      help="folder holding the shared data sets (default: $MEDAD_DATA_ROOT or ../shared/data)")
    demo.add_argument("--synthetic", action="store_true", help="use phantom tasks even if shared data exists")
    demo.add_argument("--k", type=number_type("k"), default=4, help="normal reference images of the unseen task")
    demo.add_argument("--epochs", type=number_type("epochs"),
                      help="few-shot training epochs (default: the default few-shot method's budget)")
    demo.add_argument("--image-size", dest="image_size", type=number_type("image_size"), default=128,
                      help="model input size in pixels")
    demo.add_argument("--max-queries-per-task", dest="max_queries_per_task", type=number_type("max_queries_per_task"),
                      help="query images per training task and epoch (default: the method's budget)")
    demo.add_argument("--teacher", default=DEFAULT_TEACHER, help="teacher name")
    demo.add_argument("--seed", type=number_type("seed"), default=0, help="seed of the splits, the training and the supports")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    add_device_option(demo)
    add_quiet_option(demo)
    demo.set_defaults(func=run_demo)


def _tasks(args: argparse.Namespace, out_dir: Path):
    from medad.data.phantom import make_phantom_task
    from medad.data.registry import data_root
    from medad.data.tasks import load_task

    if not args.synthetic:
        try:
            root = data_root(args.data_root)
        except FileNotFoundError as error:
            console.info(f"{error} — running on synthetic phantom tasks instead")
        else:
            train = [load_task(name, root=root, seed=args.seed) for name in SHARED_TRAIN]
            return train, load_task(SHARED_TARGET, root=root, seed=args.seed), f"shared data at {root}"
    phantoms = out_dir / DEMO_PHANTOMS_DIR
    styles = [("phantom_head", "head"), ("phantom_chest", "chest")]
    train = [make_phantom_task(phantoms / name, name=name, n_train=40, n_test_normal=10, n_test_abnormal=10,
                               size=args.image_size, seed=args.seed + i, style=style)
             for i, (name, style) in enumerate(styles)]
    target = make_phantom_task(phantoms / "phantom_target", name="phantom_target", n_train=20, n_test_normal=30,
                               n_test_abnormal=30, size=args.image_size, seed=args.seed + 99, style="head")
    return train, target, "synthetic phantom tasks"


def run_demo(args: argparse.Namespace) -> int:
    from medad.data.tasks import load_sample_image
    from medad.device import to_device
    from medad.engine.fewshot import draw_supports, evaluate_fewshot, train_fewshot
    from medad.data.images import load_images
    from medad.engine.training import TrainConfig, seed_everything

    run = RunFolder(args.out)
    with run.for_outputs("demo", DEMO_OUTPUTS, overwrite=args.overwrite):
        device = select_run_device(args.device)
        seed_everything(args.seed)
        train_tasks, target, source = _tasks(args, run.path)
        method = default_method("few_shot")
        budget = method_info(method).training
        console.info(f"few-shot demo ({method}) on {source}: train on {', '.join(t.name for t in train_tasks)}; "
                     f"unseen target {target.name} with K={args.k} normal references; teacher {args.teacher}")
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
        paths = [str(s.path) for s in target.test]
        write_scores(run, paths, evaluation.scores, labels)
        order = np.argsort(evaluation.scores)
        shown = np.concatenate([order[:8], order[-8:]])
        write_heatmaps(run.file(HEATMAPS_DIR), [f"{'abnormal' if labels[i] else 'normal'}_{Path(paths[i]).stem}"
                                               for i in shown],
                       (load_sample_image(target.test[i]) for i in shown), evaluation.maps[shown],
                       evaluation.scores[shown], titles=[paths[i] for i in shown], labels=[labels[i] for i in shown])
        options = {k: v for k, v in vars(args).items() if k != "func"}
        run.write_json(DEMO_FILE, {**run_record("demo", options, device),
                                   "source": source, "target": target.name, "train_tasks": list(task_images),
                                   "train_seconds": result.train_seconds,
                                   "support": [str(target.train[i].path) for i in supports], **evaluation.metrics})
    console.info(f"trained in {result.train_seconds:.0f} s; heat maps of the 8 least and 8 most anomalous test images "
                 f"in {run.file(HEATMAPS_DIR)}; scores in {run.file(SCORES_CSV)}")
    return 0
