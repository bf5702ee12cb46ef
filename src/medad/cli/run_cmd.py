"""``medad train``, ``medad evaluate`` and ``medad predict`` for one-class methods (RD4AD, PDD)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medad.backbones import DEFAULT_TEACHER
from medad.cli.common import (collect_image_paths, load_paths, parse_model_options, resolve_options, run_record,
                              write_heatmaps, write_run_report, write_scores)
from medad.engine.checkpoint import MODEL_FILE
from medad.engine.evaluate import evaluate_images, predict_batches
from medad.engine.images import load_images
from medad.engine.training import TrainConfig, seed_everything
from medad.engine.unsupervised import train_unsupervised
from medad.features import FeatureCache
from medad.io_utils import write_json
from medad.models.factory import FEWSHOT_METHODS, build_model, load_trained_model

TRAIN_DEFAULTS = {"method": "rd4ad", "task": None, "teacher": DEFAULT_TEACHER, "weights": "imagenet",
                  "image_size": 128, "epochs": 20, "batch_size": 16, "lr": 0.005, "seed": 0,
                  "data_root": None, "cache_dir": None, "model_options": {}}


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train a one-class model on a task's normal images")
    train.add_argument("--method", choices=["rd4ad", "pdd"])
    train.add_argument("--task", help="registry name (headct, brainmri, …) or a folder/CSV in a supported layout")
    train.add_argument("--out", required=True, help="run folder (checkpoint, config, logs)")
    train.add_argument("--teacher", help=f"teacher name, 'a+b' for PDD (default {DEFAULT_TEACHER})")
    train.add_argument("--weights", help="teacher weights file (default: the offline ImageNet lookup)")
    train.add_argument("--image-size", dest="image_size", type=int)
    train.add_argument("--epochs", type=int)
    train.add_argument("--batch-size", dest="batch_size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--data-root", dest="data_root", help="folder holding the shared data sets")
    train.add_argument("--cache-dir", dest="cache_dir", help="persist teacher features here across runs")
    train.add_argument("--no-cache", action="store_true", help="recompute the teacher every step")
    train.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="model setting, repeatable")
    train.add_argument("--config", help="YAML file of options (flags win)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser("evaluate", help="score a task's test split and compute metrics")
    evaluate.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    evaluate.add_argument("--task", required=True)
    evaluate.add_argument("--out", help="where metrics go (default: the checkpoint's folder)")
    evaluate.add_argument("--data-root", dest="data_root")
    evaluate.add_argument("--seed", type=int, default=0, help="split seed for tasks without a fixed split")
    evaluate.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    evaluate.add_argument("--weights", default="imagenet", help="teacher weights file")
    evaluate.add_argument("--heatmaps", action="store_true", help="also write heat-map overlays of the test images")
    evaluate.add_argument("--no-report", dest="no_report", action="store_true",
                          help="skip the HTML report (default: OUT/report/index.html)")
    evaluate.set_defaults(func=run_evaluate)

    predict = subparsers.add_parser("predict", help="score images and write heat-map overlays")
    predict.add_argument("--checkpoint", required=True)
    predict.add_argument("inputs", nargs="+", help="image files or folders")
    predict.add_argument("--out", required=True)
    predict.add_argument("--threshold", type=float, help="flag images whose score exceeds this")
    predict.add_argument("--batch-size", dest="batch_size", type=int, default=16)
    predict.add_argument("--weights", default="imagenet", help="teacher weights file")
    predict.set_defaults(func=run_predict)


def run_train(args: argparse.Namespace) -> int:
    from medad.data.tasks import load_task

    args.model_options = parse_model_options(args.model_option) or None
    options = resolve_options(args, TRAIN_DEFAULTS)
    if not options["task"]:
        raise SystemExit("medad train needs --task (a registry name or a folder)")
    out_dir = Path(args.out)
    seed_everything(options["seed"])
    task = load_task(options["task"], root=options["data_root"], seed=options["seed"])
    model = build_model(options["method"], options["teacher"], options["model_options"], options["weights"])
    images, _ = load_images(task.train, options["image_size"], desc=f"loading {task.name} train")
    config = TrainConfig(epochs=options["epochs"], batch_size=options["batch_size"], lr=options["lr"],
                         seed=options["seed"], use_cache=not args.no_cache,
                         cosine_schedule=options["method"] == "pdd")
    write_json(out_dir / "config.json", {**run_record("train", options), "task": task.name,
                                         "n_train": len(task.train), "model": model.meta()})
    cache = FeatureCache(model.teacher, options["cache_dir"]) if config.use_cache else None
    result = train_unsupervised(model, images, config, out_dir=out_dir, resume=args.resume, cache=cache,
                                desc=f"{options['method']} on {task.name}")
    write_json(out_dir / "train_log.json", {"epochs": result.epochs_done, "loss": result.history,
                                            "train_seconds": result.train_seconds})
    print(f"trained {options['method']} on {task.name}: {result.epochs_done} epochs, "
          f"{result.train_seconds:.1f} s, final loss {result.history[-1]:.4f}; checkpoint {out_dir / MODEL_FILE}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from medad.data.tasks import load_task

    model, meta = load_trained_model(args.checkpoint, args.weights)
    if meta["method"] in FEWSHOT_METHODS:
        raise SystemExit("this is a few-shot checkpoint: use 'medad fewshot evaluate'")
    task = load_task(args.task, root=args.data_root, seed=args.seed)
    images, masks = load_images(task.test, meta["image_size"], desc=f"loading {task.name} test")
    labels = [sample.label for sample in task.test]
    evaluation = evaluate_images(model.predict, images, labels, masks, args.batch_size)
    out_dir = Path(args.out) if args.out else Path(args.checkpoint if Path(args.checkpoint).is_dir()
                                                   else Path(args.checkpoint).parent)
    write_json(out_dir / "metrics.json", {**run_record("evaluate", vars_without_func(args)), "task": task.name,
                                          "checkpoint": meta, **evaluation.metrics})
    paths = [str(sample.path) + (f"#slice{sample.slice_index}" if sample.slice_index is not None else "")
             for sample in task.test]
    write_scores(out_dir, paths, evaluation.scores, labels)
    if args.heatmaps:
        write_heatmaps(out_dir / "heatmaps", paths, images, evaluation.maps)
    print(format_metrics(task.name, evaluation.metrics))
    if not args.no_report:
        write_run_report(out_dir, f"medad evaluate: {meta['method']} on {task.name}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    model, meta = load_trained_model(args.checkpoint, args.weights)
    if meta["method"] in FEWSHOT_METHODS:
        raise SystemExit("this is a few-shot checkpoint: use 'medad fewshot score'")
    paths = collect_image_paths(args.inputs)
    images = load_paths(paths, meta["image_size"])
    maps, scores = predict_batches(lambda rows: model.predict(images[rows]), len(images), args.batch_size)
    out_dir = Path(args.out)
    write_scores(out_dir, [str(p) for p in paths], scores, threshold=args.threshold)
    write_heatmaps(out_dir / "heatmaps", [str(p) for p in paths], images, maps)
    for path, score in zip(paths, scores):
        print(f"{score:.5f}  {path}")
    return 0


def vars_without_func(args: argparse.Namespace) -> dict:
    return {key: value for key, value in vars(args).items() if key != "func"}


def format_metrics(task: str, metrics: dict) -> str:
    parts = [f"{key}={value:.4f}" for key, value in metrics.items() if isinstance(value, float)]
    return f"{task}: {metrics['n_test_normal']} normal + {metrics['n_test_abnormal']} abnormal scored; " + ", ".join(parts)
