"""``medad fewshot train | evaluate | score``: few-shot models on unseen tasks from K normal images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medad import console
from medad.backbones import DEFAULT_TEACHER
from medad.cli.common import (add_device_option, add_input_options, add_quiet_option, add_scorer_options,
                              describe_device, load_chosen_scorer, parse_model_options, percentile_option,
                              run_record, select_run_device, threshold_option, write_run_report)
from medad.cli.errors import CliError
from medad.cli.run_cmd import evaluation_folder, format_metrics
from medad.cli.training_run import (add_run_options, check_image_size, config_record, shared_options,
                                    training_processes, with_method_defaults)
from medad.checkpoints import MODEL_FILE
from medad.engine.run_folder import (PREDICT_OUTPUTS, RunFolder, fewshot_heatmaps_dir,
                                     fewshot_metrics_file, fewshot_outputs, fewshot_scores_file, support_weights_file)
from medad.engine.thresholds import fixed_threshold, heldout_threshold, no_threshold
from medad.models.factory import build_model
from medad.models.registry import MethodChoices
from medad.options import number_type

if TYPE_CHECKING:  # the commands import torch when they run, so that the CLI starts without it
    import torch

    from medad.engine.scorers import ScoringModel


#: method, epochs, batch_size, lr and max_queries_per_task default to the registry's (the default few-shot
#: method, its training budget)
FEWSHOT_TRAIN_DEFAULTS = {"tasks": None, "method": None, "teacher": DEFAULT_TEACHER,
                          "weights": "imagenet", "image_size": 128, "k": [2, 4, 8], "epochs": None,
                          "batch_size": None, "lr": None, "seed": 0, "max_queries_per_task": None,
                          "model_options": {}, "data_root": None, "device": "auto"}
METHOD_DEFAULT = " (default: the method's, see medad.models.registry)"


def _default(key: str) -> str:
    value = FEWSHOT_TRAIN_DEFAULTS[key]
    return f" (default: {' '.join(map(str, value)) if isinstance(value, list) else value})"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    fewshot = subparsers.add_parser("fewshot", help="few-shot anomaly detection (the registry's few-shot methods)")
    sub = fewshot.add_subparsers(dest="fewshot_command", required=True)

    train = sub.add_parser("train", help="train one model on the normal images of several tasks")
    train.add_argument("--tasks", nargs="+", help="registry names or folders of the training tasks (required)")
    train.add_argument("--out", required=True, help="run folder (checkpoint, config, logs)")
    train.add_argument("--method", choices=MethodChoices("few_shot"), metavar="METHOD",
                       help="few-shot model: %(choices)s (default: the first)")
    train.add_argument("--teacher", help="teacher name" + _default("teacher"))
    train.add_argument("--weights", help="teacher weights: 'imagenet' (offline lookup) or a file" + _default("weights"))
    train.add_argument("--image-size", dest="image_size", type=number_type("image_size"),
                       help="model input size in pixels, a multiple of the teacher's stride" + _default("image_size"))
    train.add_argument("--k", nargs="+", type=number_type("k"), help="support sizes drawn per batch" + _default("k"))
    train.add_argument("--epochs", type=number_type("epochs"),
                       help="total epochs (with --resume: up to this many)" + METHOD_DEFAULT)
    train.add_argument("--batch-size", dest="batch_size", type=number_type("batch_size"),
                       help="query images per episode" + METHOD_DEFAULT)
    train.add_argument("--lr", type=number_type("lr"), help="Adam learning rate" + METHOD_DEFAULT)
    train.add_argument("--seed", type=number_type("seed"),
                       help="seed of the splits, the initialisation and the episodes" + _default("seed"))
    train.add_argument("--max-queries-per-task", dest="max_queries_per_task", type=number_type("max_queries_per_task"),
                       help="query images per task and epoch" + METHOD_DEFAULT)
    train.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                       help="model setting, repeatable (default: the method's defaults)")
    train.add_argument("--data-root", dest="data_root",
                       help="folder holding the shared data sets (default: $MEDAD_DATA_ROOT or ../shared/data)")
    train.add_argument("--no-cache", action="store_true", help="recompute the teacher every step")
    add_device_option(train, default=None)
    add_run_options(train)
    train.set_defaults(func=run_train)

    evaluate = sub.add_parser("evaluate", help="K-shot evaluation on an unseen task over random support draws")
    add_scorer_options(evaluate)
    evaluate.add_argument("--task", required=True, help="an unseen task: registry name or folder")
    evaluate.add_argument("--k", nargs="+", type=number_type("k"), default=[2, 4, 8], help="support sizes to evaluate")
    evaluate.add_argument("--draws", type=number_type("draws"), default=5, help="random support draws per K")
    evaluate.add_argument("--seed", type=number_type("seed"), default=0, help="seed of the split and the support draws")
    evaluate.add_argument("--out", help="where metrics go (default: the checkpoint's folder; required without "
                                        "--checkpoint)")
    evaluate.add_argument("--data-root", dest="data_root",
                          help="folder holding the shared data sets (default: $MEDAD_DATA_ROOT or ../shared/data)")
    evaluate.add_argument("--weights", default="imagenet", help="teacher weights: 'imagenet' or a file")
    evaluate.add_argument("--no-report", dest="no_report", action="store_true", help="skip the HTML report")
    evaluate.add_argument("--overwrite", action="store_true", help="replace this task's earlier results in --out")
    evaluate.add_argument("--skip-unreadable", dest="skip_unreadable", action="store_true",
                          help="skip unreadable files of the task with a warning; listed in the metrics JSON")
    add_device_option(evaluate)
    add_quiet_option(evaluate)
    evaluate.set_defaults(func=run_evaluate)

    score = sub.add_parser(
        "score", help="score query images or volumes of a new task against K normal support images",
        description="Score 2-D images, NIfTI/MetaImage volumes and DICOM series (every slice with body content) "
                    "against K normal support images.")
    add_scorer_options(score)
    score.add_argument("--support", nargs="+", required=True, help="normal reference images, or folders of them")
    score.add_argument("--query", nargs="+", required=True,
                       help="image or volume files, or folders (searched recursively), to score")
    score.add_argument("--out", required=True, help="folder for scores.csv / scores.json and anomaly-map volumes")
    score.add_argument("--heatmaps", metavar="DIR", help="folder for heat-map figures (default: none)")
    threshold = score.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=threshold_option,
                           help="'auto' (the highest leave-one-out score of the supports), 'none', or a number "
                                "(default: auto)")
    threshold.add_argument("--threshold-from", dest="threshold_from", metavar="DIR",
                           help="calibrate the threshold on held-out normal images in DIR (see --threshold-percentile)")
    score.add_argument("--threshold-percentile", dest="threshold_percentile", type=percentile_option, default=95.0,
                       help="percentile of the held-out normal scores used as the threshold")
    score.add_argument("--support-cache", dest="support_cache", default=str(Path.home() / ".cache/medad/supports"),
                       help="folder caching the supports' features per model")
    score.add_argument("--weights", default="imagenet", help="teacher weights: 'imagenet' or a file")
    score.add_argument("--overwrite", action="store_true", help="replace earlier scores in --out")
    add_input_options(score)
    add_device_option(score)
    add_quiet_option(score)
    score.set_defaults(func=run_score)


def run_train(args: argparse.Namespace) -> int:
    from medad.data.tasks import load_task
    from medad.device import to_device
    from medad.engine.distributed import rank_device, run_folder
    from medad.engine.fewshot import train_fewshot
    from medad.data.images import load_images
    from medad.engine.training import TrainConfig, seed_everything

    args.model_options = parse_model_options(args.model_option) or None
    with (training_processes() as workers,
          run_folder(args.out, workers).for_training("fewshot train", resume=args.resume,
                                                     overwrite=args.overwrite) as run):
        options = shared_options(run, args, FEWSHOT_TRAIN_DEFAULTS, workers, complete=_complete_fewshot_options)
        if options is None:
            return 0
        device = rank_device(select_run_device(options["device"]), workers)
        seed_everything(options["seed"])
        model = build_model(options["method"], options["teacher"], options["model_options"], options["weights"])
        check_image_size(model, options["image_size"])
        to_device(model, device)
        tasks = [load_task(name, root=options["data_root"], seed=options["seed"], skip_unreadable=args.skip_unreadable)
                 for name in options["tasks"]]
        task_images = {task.name: load_images(task.train, options["image_size"], desc=f"loading {task.name}")[0]
                       for task in tasks}
        config = TrainConfig(epochs=options["epochs"], batch_size=options["batch_size"], lr=options["lr"],
                             seed=options["seed"], use_cache=not args.no_cache)
        run.start(config_record(run, "fewshot train", options, args.resume, model=model.meta(),
                                n_train={name: len(images) for name, images in task_images.items()},
                                device=describe_device(device), processes=workers.world))
        run.write_skipped([(str(s.path), s.reason) for task in tasks for s in task.skipped])
        result = train_fewshot(model, task_images, config, ks=tuple(options["k"]),
                               max_queries_per_task=options["max_queries_per_task"], out_dir=run.path,
                               resume=args.resume, workers=workers)
        run.write_train_log(result.epochs_done, result.history, result.train_seconds, result.log)
    console.info(f"trained {options['method']} on {', '.join(task_images)}: {result.epochs_done} epochs, "
                 f"{result.train_seconds:.1f} s; checkpoint {run.file(MODEL_FILE)}")
    return 0


def _complete_fewshot_options(options: dict) -> dict:
    """The chosen method's training budget where no flag or config set it; --tasks is required."""
    options = with_method_defaults(options, "few_shot")
    if not options["tasks"]:
        raise CliError("medad fewshot train needs --tasks (registry names or folders)")
    return options


def run_evaluate(args: argparse.Namespace) -> int:
    from medad.data.tasks import load_task

    if args.out is None and args.checkpoint is None:
        raise CliError("medad fewshot evaluate without --checkpoint needs --out (where the metrics go)")
    run = evaluation_folder(args)
    run.check_writable()
    scorer = load_chosen_scorer(args, select_run_device(args.device))
    task = load_task(args.task, root=args.data_root, seed=args.seed, skip_unreadable=args.skip_unreadable)
    if task.name in scorer.meta.get("train_tasks", []):
        raise CliError(f"--task {task.name} was used to train {scorer.name}; few-shot evaluation needs an unseen task")
    with run.for_outputs("fewshot evaluate", fewshot_outputs(task.name), overwrite=args.overwrite):
        _evaluate_task(args, run, scorer, task)
    return 0


def _evaluate_task(args: argparse.Namespace, run: RunFolder, scorer: ScoringModel, task) -> None:
    import torch

    from medad.data.tasks import load_sample_image
    from medad.device import module_device
    from medad.engine.evaluate import evaluate_rows
    from medad.engine.fewshot import draw_supports, encode_queries
    from medad.data.images import load_images
    from medad.visualize import write_ranked_heatmaps

    model, size = scorer.model, scorer.image_size
    normals, _ = load_images(task.train, size, desc=f"loading {task.name} normals")
    test_images, masks = load_images(task.test, size, desc=f"loading {task.name} test")
    labels = [sample.label for sample in task.test]
    paths = [str(sample.path) + (f"#slice{sample.slice_index}" if sample.slice_index is not None else "")
             for sample in task.test]
    queries = encode_queries(model, test_images)  # the test images' features do not depend on the supports
    records = []
    for k in args.k:
        for draw in range(args.draws):
            indices = draw_supports(len(normals), k, draw, args.seed)
            supports = model.prepare_supports(normals[indices])
            weight_parts: list[torch.Tensor] = []

            def score_rows(rows: slice, supports=supports, weight_parts=weight_parts):
                maps, scores, weights = model.score_encoded(queries[rows], supports)
                if weights:  # one B×K tensor per scale; the report shows their mean
                    weight_parts.append(torch.stack([w.float() for w in weights]).mean(0))
                return maps, scores

            evaluation = evaluate_rows(score_rows, len(test_images), labels, masks, batch_size=32)
            support_paths = [str(task.train[i].path) for i in indices]
            records.append({"k": k, "support_draw": draw, "support": support_paths, **evaluation.metrics})
            console.info(f"K={k} draw {draw}: " + format_metrics(task.name, evaluation.metrics))
            run.write_csv(fewshot_scores_file(task.name, k, draw), ["path", "label", "score"],
                          ((path, label, float(score))
                           for path, label, score in zip(paths, labels, evaluation.scores, strict=True)))
            if weight_parts:
                weights = torch.cat(weight_parts).cpu().numpy()
                run.write_json(support_weights_file(task.name, k, draw),
                               {"task": task.name, "k": k, "support_draw": draw, "support": support_paths,
                                "weights_are": "learned support weights per query (rows) and support (columns), "
                                               "mean over the model's scales",
                                "queries": paths, "labels": labels, "scores": [float(x) for x in evaluation.scores],
                                "weights": np.round(weights, 6).tolist()})
            if draw == 0:  # the 8 least and 8 most anomalous test images, with an index of what each file shows
                write_ranked_heatmaps(run.file(fewshot_heatmaps_dir(task.name, k)), paths, labels, evaluation.maps,
                                      evaluation.scores, lambda i: load_sample_image(task.test[i]))
    summary = {}
    for k in args.k:
        aurocs = [r["image_auroc"] for r in records if r["k"] == k]
        summary[str(k)] = {"image_auroc_mean": float(np.mean(aurocs)), "image_auroc_std": float(np.std(aurocs))}
        console.info(f"{task.name} K={k}: AUROC {np.mean(aurocs):.4f} ± {np.std(aurocs):.4f} over {len(aurocs)} draws")
    options = {key: value for key, value in vars(args).items() if key != "func"}
    run.write_json(fewshot_metrics_file(task.name),
                   {**run_record("fewshot evaluate", options, module_device(model)), "task": task.name,
                    "checkpoint": scorer.record(),
                    "records": records, "summary": summary,
                    "skipped": [{"path": str(s.path), "reason": s.reason} for s in task.skipped]})
    if not args.no_report:
        write_run_report(run.path, f"medad fewshot evaluate: {task.name}")


def run_score(args: argparse.Namespace) -> int:
    from medad.cli.inputs import drop_duplicate_supports, load_inputs
    from medad.cli.predictions import print_predictions, score_inputs, write_predictions
    from medad.device import module_device
    from medad.engine.fewshot import auto_threshold
    from medad.engine.scorers import load_or_prepare_supports

    run = RunFolder(args.out)
    heatmaps = RunFolder(args.heatmaps, flag="--heatmaps") if args.heatmaps else None
    with run.for_outputs("fewshot score", PREDICT_OUTPUTS, overwrite=args.overwrite):
        if heatmaps is not None:
            heatmaps.check_writable()
        scorer = load_chosen_scorer(args, select_run_device(args.device))
        model, size = scorer.model, scorer.image_size
        read = {"skip_unreadable": args.skip_unreadable, "allow_degenerate": args.allow_degenerate}
        support = load_inputs(args.support, size, flag="--support", **read)
        if support.volumes:
            raise CliError(f"--support: {support.volumes[0].source} is a volume; give normal 2-D reference images")
        support = drop_duplicate_supports(support, "--support")
        queries = load_inputs(args.query, size, flag="--query", **read)
        support_images = support.tensor()
        supports = load_or_prepare_supports(scorer, support_images, Path(args.support_cache))

        def predict(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return model.predict(images, supports)

        if args.threshold_from:
            heldout = load_inputs([args.threshold_from], size, flag="--threshold-from", **read)
            queries.skipped += heldout.skipped
            threshold = heldout_threshold(score_inputs(heldout, predict, scorer.name).unit_scores(),
                                          args.threshold_percentile, args.threshold_from)
        elif args.threshold in (None, "auto"):
            threshold = auto_threshold(model, support_images, [str(image.path) for image in support.images], supports)
        elif args.threshold == "none":
            threshold = no_threshold()
        else:
            threshold = fixed_threshold(args.threshold)
        queries.skipped += support.skipped
        scored = score_inputs(queries, predict, scorer.name)
        record = {**run_record("fewshot score", {k: v for k, v in vars(args).items() if k != "func"},
                               module_device(model)),
                  "checkpoint": scorer.record(), "support": [str(image.path) for image in support.images]}
        write_predictions(run, scored, threshold, heatmaps.path if heatmaps else None, record)
    print_predictions(scored, threshold)
    return 0
