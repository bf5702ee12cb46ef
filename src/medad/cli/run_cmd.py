"""``medad train``, ``medad evaluate`` and ``medad predict`` for one-class methods (the registry's ``one_class``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medad import console
from medad.backbones import DEFAULT_TEACHER
from medad.cli.common import (add_device_option, add_input_options, add_quiet_option, describe_device,
                              parse_model_options, percentile_option, run_record, select_run_device,
                              write_run_report, write_scores)
from medad.cli.errors import CliError
from medad.cli.training_run import (add_run_options, check_image_size, config_record, shared_options,
                                    training_processes, with_method_defaults)
from medad.checkpoints import MODEL_FILE
from medad.engine.run_folder import (EVALUATE_OUTPUTS, HEATMAPS_DIR, METRICS_FILE, PREDICT_OUTPUTS, RunFolder)
from medad.engine.thresholds import fixed_threshold, heldout_threshold, no_threshold
from medad.models.factory import build_model, load_trained_model
from medad.models.registry import MethodChoices, method_info
from medad.options import number_type

#: method, epochs, batch_size and lr default to the registry's (the default one-class method, its training budget)
TRAIN_DEFAULTS = {"method": None, "task": None, "teacher": DEFAULT_TEACHER, "weights": "imagenet",
                  "image_size": 128, "epochs": None, "batch_size": None, "lr": None, "seed": 0,
                  "data_root": None, "cache_dir": None, "model_options": {}, "device": "auto"}
METHOD_DEFAULT = " (default: the method's, see medad.models.registry)"


def _default(key: str) -> str:
    return f" (default: {TRAIN_DEFAULTS[key]})"


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser("train", help="train a one-class model on a task's normal images",
                                  description="Train RD4AD or PDD on a task's normal images into a run folder. "
                                              "Flags win over --config, which wins over the defaults.")
    train.add_argument("--method", choices=MethodChoices("one_class"), metavar="METHOD",
                       help="one-class method: %(choices)s (default: the first)")
    train.add_argument("--task", nargs="+",
                       help="registry name (headct, brainmri, …) or a folder/CSV in a supported layout; several: "
                            "one model on the union of their normal training images (multi-class), evaluated per "
                            "task with medad evaluate")
    train.add_argument("--out", required=True, help="run folder (checkpoint, config, logs)")
    train.add_argument("--teacher", help="teacher name, 'a+b' for PDD" + _default("teacher"))
    train.add_argument("--weights", help="teacher weights: 'imagenet' (offline lookup) or a file" + _default("weights"))
    train.add_argument("--image-size", dest="image_size", type=number_type("image_size"),
                       help="model input size in pixels, a multiple of the teacher's stride" + _default("image_size"))
    train.add_argument("--epochs", type=number_type("epochs"),
                       help="total epochs (with --resume: up to this many)" + METHOD_DEFAULT)
    train.add_argument("--batch-size", dest="batch_size", type=number_type("batch_size"), help="images per step" + METHOD_DEFAULT)
    train.add_argument("--lr", type=number_type("lr"), help="Adam learning rate" + METHOD_DEFAULT)
    train.add_argument("--seed", type=number_type("seed"),
                       help="seed of the split, the initialisation and the order" + _default("seed"))
    train.add_argument("--data-root", dest="data_root",
                       help="folder holding the shared data sets (default: $MEDAD_DATA_ROOT or ../shared/data)")
    train.add_argument("--cache-dir", dest="cache_dir",
                       help="persist teacher features here across runs (default: in memory only)")
    train.add_argument("--no-cache", action="store_true", help="recompute the teacher every step")
    train.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                       help="model setting, repeatable (default: the method's defaults)")
    train.add_argument("--config", help="YAML file of options (flags win)")
    add_device_option(train, default=None)
    add_run_options(train)
    train.set_defaults(func=run_train)

    evaluate = subparsers.add_parser("evaluate", help="score a task's test split and compute metrics")
    evaluate.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    evaluate.add_argument("--task", required=True, help="registry name or a folder/CSV in a supported layout")
    evaluate.add_argument("--out", help="where metrics go (default: the checkpoint's folder)")
    evaluate.add_argument("--data-root", dest="data_root",
                          help="folder holding the shared data sets (default: $MEDAD_DATA_ROOT or ../shared/data)")
    evaluate.add_argument("--seed", type=number_type("seed"), default=0, help="split seed for tasks without a fixed split")
    evaluate.add_argument("--batch-size", dest="batch_size", type=number_type("batch_size"), default=16,
                          help="images per forward pass")
    evaluate.add_argument("--weights", default="imagenet", help="teacher weights: 'imagenet' or a file")
    evaluate.add_argument("--heatmaps", action="store_true", help="also write heat-map figures of the test images")
    evaluate.add_argument("--no-report", dest="no_report", action="store_true",
                          help="skip the HTML report (default: OUT/report/index.html)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace earlier metrics and scores in --out")
    evaluate.add_argument("--skip-unreadable", dest="skip_unreadable", action="store_true",
                          help="skip unreadable files of the task with a warning; listed in OUT/skipped_files.csv")
    add_device_option(evaluate)
    add_quiet_option(evaluate)
    evaluate.set_defaults(func=run_evaluate)

    predict = subparsers.add_parser(
        "predict", help="score images and volumes, write scores and heat maps",
        description="Score 2-D images, NIfTI/MetaImage volumes and DICOM series (every slice with body content) "
                    "with a one-class checkpoint.")
    predict.add_argument("--checkpoint", required=True, help="run folder or model.safetensors")
    predict.add_argument("inputs", nargs="+", help="image or volume files, or folders (searched recursively)")
    predict.add_argument("--out", required=True, help="folder for scores, heat maps and anomaly-map volumes")
    threshold = predict.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=number_type("threshold"),
                           help="flag inputs whose score exceeds this (default: none)")
    threshold.add_argument("--threshold-from", dest="threshold_from", metavar="DIR",
                           help="calibrate the threshold on held-out normal images in DIR (see --threshold-percentile)")
    predict.add_argument("--threshold-percentile", dest="threshold_percentile", type=percentile_option, default=95.0,
                         help="percentile of the held-out normal scores used as the threshold")
    predict.add_argument("--batch-size", dest="batch_size", type=number_type("batch_size"), default=16,
                         help="images per forward pass")
    predict.add_argument("--weights", default="imagenet", help="teacher weights: 'imagenet' or a file")
    predict.add_argument("--overwrite", action="store_true", help="replace earlier predictions in --out")
    add_input_options(predict)
    add_device_option(predict)
    add_quiet_option(predict)
    predict.set_defaults(func=run_predict)


def check_distinct_tasks(tasks: list) -> None:
    """Tasks pooled into one training set must be different tasks."""
    names = [task.name for task in tasks]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CliError(f"--task names {', '.join(repeated)} more than once; give each task once")


def run_train(args: argparse.Namespace) -> int:
    import torch

    from medad.data.tasks import load_task
    from medad.device import to_device
    from medad.engine.distributed import rank_device, run_folder
    from medad.data.images import load_images
    from medad.engine.training import TrainConfig, seed_everything
    from medad.engine.unsupervised import train_unsupervised
    from medad.features import FeatureCache

    args.model_options = parse_model_options(args.model_option) or None
    if args.task is not None and len(args.task) == 1:
        args.task = args.task[0]  # one task is recorded as a name, as before multi-class training
    with (training_processes() as workers,
          run_folder(args.out, workers).for_training("train", resume=args.resume, overwrite=args.overwrite) as run):
        options = shared_options(run, args, TRAIN_DEFAULTS, workers, complete=_complete_train_options)
        if options is None:
            return 0
        device = rank_device(select_run_device(options["device"]), workers)
        seed_everything(options["seed"])
        model = build_model(options["method"], options["teacher"], options["model_options"], options["weights"])
        check_image_size(model, options["image_size"])
        to_device(model, device)
        names = options["task"] if isinstance(options["task"], list) else [options["task"]]
        tasks = [load_task(name, root=options["data_root"], seed=options["seed"], skip_unreadable=args.skip_unreadable)
                 for name in names]
        check_distinct_tasks(tasks)
        images = torch.cat([load_images(task.train, options["image_size"], desc=f"loading {task.name} train")[0]
                            for task in tasks])
        trained_on = "+".join(task.name for task in tasks)
        config = TrainConfig(epochs=options["epochs"], batch_size=options["batch_size"], lr=options["lr"],
                             seed=options["seed"], use_cache=not args.no_cache,
                             cosine_schedule=method_info(options["method"]).training.cosine_schedule)
        run.start(config_record(run, "train", options, args.resume, task=trained_on, train_tasks=[t.name for t in tasks],
                                n_train=len(images), model=model.meta(), device=describe_device(device),
                                processes=workers.world))
        run.write_skipped([(str(s.path), s.reason) for task in tasks for s in task.skipped])
        cache = FeatureCache(model.teacher, options["cache_dir"]) if config.use_cache else None
        result = train_unsupervised(model, images, config, out_dir=run.path, resume=args.resume, cache=cache,
                                    desc=f"{options['method']} on {trained_on}", train_tasks=[t.name for t in tasks],
                                    workers=workers)
        run.write_train_log(result.epochs_done, result.history, result.train_seconds, result.log)
    console.info(f"trained {options['method']} on {trained_on}: {result.epochs_done} epochs, "
                 f"{result.train_seconds:.1f} s, final loss {result.history[-1]:.4f}; checkpoint {run.file(MODEL_FILE)}")
    return 0


def _complete_train_options(options: dict) -> dict:
    """The chosen method's training defaults where no flag or config set them; --task is required."""
    options = with_method_defaults(options, "one_class")
    if not options["task"]:
        raise CliError("medad train needs --task (a registry name or a folder)")
    return options


def evaluation_folder(args: argparse.Namespace) -> RunFolder:
    """Where evaluation results go: ``--out``, by default the checkpoint's folder."""
    if args.out:
        return RunFolder(args.out)
    path = Path(args.checkpoint)
    return RunFolder(path if path.is_dir() else path.parent, flag="--out (default: the checkpoint's folder)")


def run_evaluate(args: argparse.Namespace) -> int:
    from medad.data.tasks import load_sample_image, load_task
    from medad.engine.evaluate import evaluate_images
    from medad.data.images import load_images

    run = evaluation_folder(args)
    with run.for_outputs("evaluate", EVALUATE_OUTPUTS, overwrite=args.overwrite):
        device = select_run_device(args.device)
        model, meta = load_trained_model(args.checkpoint, args.weights, device=device)
        if method_info(meta["method"]).kind == "few_shot":
            raise CliError(f"--checkpoint {args.checkpoint} is a few-shot checkpoint: use 'medad fewshot evaluate'")
        task = load_task(args.task, root=args.data_root, seed=args.seed, skip_unreadable=args.skip_unreadable)
        images, masks = load_images(task.test, meta["image_size"], desc=f"loading {task.name} test")
        labels = [sample.label for sample in task.test]
        evaluation = evaluate_images(model.predict, images, labels, masks, args.batch_size)
        run.write_json(METRICS_FILE, {**run_record("evaluate", vars_without_func(args), device), "task": task.name,
                                      "checkpoint": meta, **evaluation.metrics})
        paths = [str(sample.path) + (f"#slice{sample.slice_index}" if sample.slice_index is not None else "")
                 for sample in task.test]
        write_scores(run, paths, evaluation.scores, labels)
        run.write_skipped([(str(s.path), s.reason) for s in task.skipped])
        if args.heatmaps:
            from medad.visualize import write_heatmaps

            write_heatmaps(run.file(HEATMAPS_DIR), paths, (load_sample_image(s) for s in task.test), evaluation.maps,
                           evaluation.scores, labels=labels)
        console.info(format_metrics(task.name, evaluation.metrics))
        if not args.no_report:
            write_run_report(run.path, f"medad evaluate: {meta['method']} on {task.name}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from medad.cli.inputs import load_inputs
    from medad.cli.predictions import print_predictions, score_inputs, write_predictions

    run = RunFolder(args.out)
    with run.for_outputs("predict", PREDICT_OUTPUTS, overwrite=args.overwrite):
        device = select_run_device(args.device)
        model, meta = load_trained_model(args.checkpoint, args.weights, device=device)
        if method_info(meta["method"]).kind == "few_shot":
            raise CliError(f"--checkpoint {args.checkpoint} is a few-shot checkpoint: use 'medad fewshot score'")
        read = {"skip_unreadable": args.skip_unreadable, "allow_degenerate": args.allow_degenerate}
        inputs = load_inputs(args.inputs, meta["image_size"], flag="inputs", **read)
        threshold = no_threshold() if args.threshold is None else fixed_threshold(args.threshold)
        if args.threshold_from:
            heldout = load_inputs([args.threshold_from], meta["image_size"], flag="--threshold-from", **read)
            scored = score_inputs(heldout, model.predict, args.checkpoint, args.batch_size)
            inputs.skipped += heldout.skipped
            threshold = heldout_threshold(scored.unit_scores(), args.threshold_percentile, args.threshold_from)
        scored = score_inputs(inputs, model.predict, args.checkpoint, args.batch_size)
        record = {**run_record("predict", vars_without_func(args), device), "checkpoint": meta}
        write_predictions(run, scored, threshold, run.file(HEATMAPS_DIR), record)
    print_predictions(scored, threshold)
    return 0


def vars_without_func(args: argparse.Namespace) -> dict:
    return {key: value for key, value in vars(args).items() if key != "func"}


def format_metrics(task: str, metrics: dict) -> str:
    parts = [f"{key}={value:.4f}" for key, value in metrics.items() if isinstance(value, float)]
    return f"{task}: {metrics['n_test_normal']} normal + {metrics['n_test_abnormal']} abnormal scored; " + ", ".join(parts)
