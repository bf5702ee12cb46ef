"""``medad fewshot train | evaluate | score``: few-shot models on unseen tasks from K normal images."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from medad.backbones import DEFAULT_TEACHER
from medad.cli.common import (collect_image_paths, load_paths, parse_model_options, run_record, write_heatmaps,
                              write_run_report, write_scores)
from medad.cli.run_cmd import format_metrics
from medad.engine.checkpoint import MODEL_FILE
from medad.engine.evaluate import evaluate_rows, predict_batches
from medad.engine.fewshot import calibrate_threshold, draw_supports, encode_queries, train_fewshot
from medad.engine.images import load_images
from medad.engine.training import TrainConfig, seed_everything
from medad.features import image_key
from medad.io_utils import atomic_path, write_json, write_text
from medad.models.factory import (DEFAULT_FEWSHOT_METHOD, FEWSHOT_METHODS, FEWSHOT_TRAINING, build_model,
                                  load_trained_model)
from medad.visualize import heatmap_file_stems


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    fewshot = subparsers.add_parser("fewshot", help="few-shot anomaly detection (D²4FAD-NN, D²4FAD)")
    sub = fewshot.add_subparsers(dest="fewshot_command", required=True)

    train = sub.add_parser("train", help="train one model on the normal images of several tasks")
    train.add_argument("--tasks", nargs="+", required=True, help="registry names or folders")
    train.add_argument("--out", required=True)
    train.add_argument("--method", choices=FEWSHOT_METHODS, default=DEFAULT_FEWSHOT_METHOD,
                       help=f"few-shot model (default {DEFAULT_FEWSHOT_METHOD}; d24fad = the paper's model)")
    train.add_argument("--teacher", default=DEFAULT_TEACHER)
    train.add_argument("--weights", default="imagenet")
    train.add_argument("--image-size", dest="image_size", type=int, default=128)
    train.add_argument("--k", nargs="+", type=int, default=[2, 4, 8], help="support sizes drawn per batch")
    train.add_argument("--epochs", type=int, help="default: the method's (d24fad_nn 32, d24fad 10)")
    train.add_argument("--batch-size", dest="batch_size", type=int, help="queries per episode "
                       "(default: the method's, d24fad_nn 8, d24fad 16)")
    train.add_argument("--lr", type=float, default=0.005)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--max-queries-per-task", dest="max_queries_per_task", type=int,
                       help="queries per task and epoch (default: the method's, d24fad_nn 64, d24fad 256)")
    train.add_argument("--model-option", action="append", metavar="KEY=VALUE")
    train.add_argument("--data-root", dest="data_root")
    train.add_argument("--no-cache", action="store_true")
    train.add_argument("--resume", action="store_true")
    train.set_defaults(func=run_train)

    evaluate = sub.add_parser("evaluate", help="K-shot evaluation on an unseen task over random support draws")
    evaluate.add_argument("--checkpoint", required=True)
    evaluate.add_argument("--task", required=True)
    evaluate.add_argument("--k", nargs="+", type=int, default=[2, 4, 8])
    evaluate.add_argument("--draws", type=int, default=5)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--out", help="default: the checkpoint's folder")
    evaluate.add_argument("--data-root", dest="data_root")
    evaluate.add_argument("--weights", default="imagenet")
    evaluate.add_argument("--no-report", dest="no_report", action="store_true", help="skip the HTML report")
    evaluate.set_defaults(func=run_evaluate)

    score = sub.add_parser("score", help="score query images of a new task against K normal support images")
    score.add_argument("--checkpoint", required=True)
    score.add_argument("--support", nargs="+", required=True, help="normal reference images or a folder")
    score.add_argument("--query", nargs="+", required=True, help="images or folders to score")
    score.add_argument("--out", required=True, help="scores.csv / scores.json go here")
    score.add_argument("--heatmaps", help="folder for heat-map overlays")
    score.add_argument("--threshold", default="auto",
                       help="'auto' (calibrated on the supports), 'none', or a number")
    score.add_argument("--support-cache", dest="support_cache", default=str(Path.home() / ".cache/medad/supports"))
    score.add_argument("--weights", default="imagenet")
    score.set_defaults(func=run_score)


def run_train(args: argparse.Namespace) -> int:
    from medad.data.tasks import load_task

    for key, value in FEWSHOT_TRAINING[args.method].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    seed_everything(args.seed)
    model = build_model(args.method, args.teacher, parse_model_options(args.model_option), args.weights)
    tasks = [load_task(name, root=args.data_root, seed=args.seed) for name in args.tasks]
    task_images = {task.name: load_images(task.train, args.image_size, desc=f"loading {task.name}")[0]
                   for task in tasks}
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         use_cache=not args.no_cache)
    out_dir = Path(args.out)
    options = {key: value for key, value in vars(args).items() if key != "func"}
    write_json(out_dir / "config.json", {**run_record("fewshot train", options), "model": model.meta(),
                                         "n_train": {name: len(images) for name, images in task_images.items()}})
    result = train_fewshot(model, task_images, config, ks=tuple(args.k),
                           max_queries_per_task=args.max_queries_per_task, out_dir=out_dir, resume=args.resume)
    write_json(out_dir / "train_log.json", {"epochs": result.epochs_done, "loss": result.history,
                                            "train_seconds": result.train_seconds, "per_epoch": result.log})
    print(f"trained {args.method} on {', '.join(task_images)}: {result.epochs_done} epochs, {result.train_seconds:.1f} s; "
          f"checkpoint {out_dir / MODEL_FILE}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from medad.data.tasks import load_task
    from medad.report import HEATMAP_INDEX

    model, meta = load_trained_model(args.checkpoint, args.weights, expected_method=FEWSHOT_METHODS)
    task = load_task(args.task, root=args.data_root, seed=args.seed)
    if task.name in meta.get("train_tasks", []):
        raise SystemExit(f"task {task.name} was used to train this checkpoint; few-shot evaluation needs an unseen task")
    size = meta["image_size"]
    normals, _ = load_images(task.train, size, desc=f"loading {task.name} normals")
    test_images, masks = load_images(task.test, size, desc=f"loading {task.name} test")
    labels = [sample.label for sample in task.test]
    paths = [str(sample.path) + (f"#slice{sample.slice_index}" if sample.slice_index is not None else "")
             for sample in task.test]
    out_dir = Path(args.out) if args.out else Path(args.checkpoint if Path(args.checkpoint).is_dir()
                                                   else Path(args.checkpoint).parent)
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
            print(f"K={k} draw {draw}: " + format_metrics(task.name, evaluation.metrics))
            table = io.StringIO()
            writer = csv.writer(table)
            writer.writerow(["path", "label", "score"])
            writer.writerows((path, label, float(score)) for path, label, score in zip(paths, labels, evaluation.scores))
            write_text(out_dir / f"scores_{task.name}_k{k}_d{draw}.csv", table.getvalue())
            if weight_parts:
                weights = torch.cat(weight_parts).cpu().numpy()
                write_json(out_dir / f"support_weights_{task.name}_k{k}_d{draw}.json",
                           {"task": task.name, "k": k, "support_draw": draw, "support": support_paths,
                            "weights_are": "learned support weights per query (rows) and support (columns), "
                                           "mean over the model's scales",
                            "queries": paths, "labels": labels, "scores": [float(x) for x in evaluation.scores],
                            "weights": np.round(weights, 6).tolist()})
            if draw == 0:  # the 8 least and 8 most anomalous test images, with an index of what each file shows
                order = np.argsort(evaluation.scores, kind="stable")
                shown = np.concatenate([order[:8], order[-8:]]) if len(order) > 16 else order
                names = [f"{'abnormal' if labels[i] else 'normal'}_{Path(paths[i]).stem}" for i in shown]
                heat_dir = out_dir / f"heatmaps_{task.name}_k{k}"
                write_heatmaps(heat_dir, names, test_images[shown], evaluation.maps[shown])
                table = io.StringIO()
                writer = csv.writer(table)
                writer.writerow(["file", "path", "label", "score"])
                writer.writerows((f"{stem}.png", paths[i], labels[i], float(evaluation.scores[i]))
                                 for stem, i in zip(heatmap_file_stems(names), shown))
                write_text(heat_dir / HEATMAP_INDEX, table.getvalue())
    summary = {}
    for k in args.k:
        aurocs = [r["image_auroc"] for r in records if r["k"] == k]
        summary[str(k)] = {"image_auroc_mean": float(np.mean(aurocs)), "image_auroc_std": float(np.std(aurocs))}
        print(f"{task.name} K={k}: AUROC {np.mean(aurocs):.4f} ± {np.std(aurocs):.4f} over {len(aurocs)} draws")
    options = {key: value for key, value in vars(args).items() if key != "func"}
    write_json(out_dir / f"fewshot_metrics_{task.name}.json",
               {**run_record("fewshot evaluate", options), "task": task.name, "checkpoint": meta,
                "records": records, "summary": summary})
    if not args.no_report:
        write_run_report(out_dir, f"medad fewshot evaluate: {task.name}")
    return 0


def _support_cache_file(cache_dir: Path, checkpoint: Path, images: torch.Tensor) -> Path:
    digest = hashlib.sha1(checkpoint.read_bytes())
    for image in images:
        digest.update(image_key(image).encode())
    return cache_dir / f"{digest.hexdigest()}.safetensors"


def load_or_prepare_supports(model, checkpoint: Path, support_images: torch.Tensor, cache_dir: Path):
    """Support features from the cache when this checkpoint has seen these images, else computed and stored."""
    path = _support_cache_file(cache_dir, checkpoint, support_images)
    if path.is_file():
        return model.supports_from_tensors(load_file(str(path)))
    supports = model.prepare_supports(support_images)
    with atomic_path(path) as tmp:
        save_file(supports.to_tensors(), str(tmp))
    return supports


def run_score(args: argparse.Namespace) -> int:
    checkpoint = Path(args.checkpoint)
    checkpoint_file = checkpoint / MODEL_FILE if checkpoint.is_dir() else checkpoint
    model, meta = load_trained_model(checkpoint_file, args.weights, expected_method=FEWSHOT_METHODS)
    support_paths = collect_image_paths(args.support)
    query_paths = collect_image_paths(args.query)
    size = meta["image_size"]
    support_images = load_paths(support_paths, size)
    query_images = load_paths(query_paths, size)
    supports = load_or_prepare_supports(model, checkpoint_file, support_images, Path(args.support_cache))
    threshold = None
    if args.threshold == "auto":
        threshold = calibrate_threshold(model, support_images) if len(support_images) >= 2 else None
    elif args.threshold != "none":
        threshold = float(args.threshold)
    maps, scores = predict_batches(lambda rows: model.predict(query_images[rows], supports), len(query_images))
    out_dir = Path(args.out)
    write_scores(out_dir, [str(p) for p in query_paths], scores, threshold=threshold)
    if args.heatmaps:
        write_heatmaps(Path(args.heatmaps), [str(p) for p in query_paths], query_images, maps)
    for path, score in zip(query_paths, scores):
        flag = "" if threshold is None else ("  ABNORMAL" if score > threshold else "  normal")
        print(f"{score:.5f}{flag}  {path}")
    if threshold is not None:
        print(f"threshold {threshold:.5f} (calibrated on {len(support_paths)} supports)" if args.threshold == "auto"
              else f"threshold {threshold:.5f}")
    return 0

