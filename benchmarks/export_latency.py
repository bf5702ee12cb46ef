"""Exported graphs (issue 14): onnxruntime on the CPU vs eager PyTorch, latency per image, and equality on real images.

Regenerate:  OMP_NUM_THREADS=1 python benchmarks/export_latency.py
Writes benchmarks/results/export_latency.json (+ .md).  Needs onnxruntime (``pip install -e ".[deploy]"``) and
the shared data (``--data-root``, ``$MEDAD_DATA_ROOT`` or ``../shared/data``).

* Checkpoints: the script trains small ones into ``benchmarks/.cache/export_latency`` with the CLI (reused
  when there): D²4FAD-NN (the default few-shot model) on head CT + brain MRI, the paper's D²4FAD on the
  same, and RD4AD on head CT, EfficientNet-Lite0, 128 px, ``--epochs`` epochs (default 1).  Latency does not
  depend on how long a model was trained; equality is checked on these trained weights.
* Equality: each checkpoint exported with ``medad export`` (few-shot: K = 4 normal brain-tumour training
  images baked in) and run by onnxruntime on the unseen brain-tumour test images; the largest absolute
  difference to eager scoring (``model.predict``) of the scores and of the anomaly maps.
* Latency: the same graph and the same eager scoring on a batch of 1 and of ``--batch`` images, timed in
  turn (eager, onnxruntime, eager, …; median of ``--repeats``) in this process, both on ``--threads``
  threads (torch's and onnxruntime's intra-op threads).  Wall and process-CPU milliseconds per image.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import numpy as np
import torch

from medad.cli.main import main as medad
from medad.data.tasks import load_task
from medad.data.images import load_images
from medad.export import onnx_session, run_onnx
from medad.models.factory import load_trained_model
from medad.results import BenchmarkResults, benchmark_command, interleaved_timings, peak_rss_mib

TRAIN_TASKS = ["headct", "brainmri"]
TARGET = "brain_tumor"
K = 4


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16, help="the larger batch timed (the other is 1)")
    parser.add_argument("--repeats", type=int, default=9, help="timed repetitions per step (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--epochs", type=int, default=1, help="training epochs of the checkpoints")
    parser.add_argument("--test-images", type=int, default=128,
                        help="test images of the equality check (evenly spaced over the test split)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--work", default="benchmarks/.cache/export_latency", help="checkpoints and graphs")
    return parser.parse_args()


def checkpoint(args: argparse.Namespace, method: str) -> Path:
    """A small trained checkpoint of ``method`` (trained with the CLI the first time)."""
    run = Path(args.work) / method
    if (run / "model.safetensors").is_file():
        return run
    common = ["--out", str(run), "--epochs", str(args.epochs), "--image-size", str(args.image_size),
              "--device", "cpu", "--quiet", "--overwrite"]
    data = ["--data-root", args.data_root] if args.data_root else []
    if method == "rd4ad":
        argv = ["train", "--method", "rd4ad", "--task", TRAIN_TASKS[0], *common, *data]
    else:
        argv = ["fewshot", "train", "--method", method, "--tasks", *TRAIN_TASKS, "--k", str(K), *common, *data]
    if medad(argv) != 0:
        raise SystemExit(f"training {method} failed")
    return run


def export(args: argparse.Namespace, method: str, run: Path, supports: list[str]) -> Path:
    out = Path(args.work) / f"{method}.onnx"
    argv = ["export", "--checkpoint", str(run), "--out", str(out), "--overwrite", "--quiet"]
    if method != "rd4ad":
        argv += ["--support", *supports]
    if medad(argv) != 0:
        raise SystemExit(f"exporting {method} failed")
    return out


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    command = benchmark_command("export_latency.py", environment="OMP_NUM_THREADS=1")
    results = BenchmarkResults("export_latency", command, resume=False)
    task = load_task(TARGET, root=args.data_root)
    supports = [str(sample.path) for sample in task.train[:K]]
    step = max(1, len(task.test) // args.test_images)
    test_images, _ = load_images(task.test[::step][:args.test_images], args.image_size, desc=f"loading {TARGET} test")
    support_images, _ = load_images(task.train[:K], args.image_size)
    equality = {}
    for method in ("d24fad_nn", "d24fad", "rd4ad"):
        run = checkpoint(args, method)
        graph = export(args, method, run, supports)
        model, meta = load_trained_model(run, device="cpu")
        bank = model.prepare_supports(support_images) if method != "rd4ad" else None

        def eager(images: torch.Tensor, model=model, bank=bank):
            with torch.no_grad():
                return model.predict(images, bank) if bank is not None else model.predict(images)

        session = onnx_session(graph, threads=args.threads)
        maps, scores = run_onnx(session, test_images)
        eager_maps, eager_scores = eager(test_images)
        equality[method] = {"images": len(test_images),
                            "max_abs_score_difference": float(np.abs(scores - eager_scores.numpy()).max()),
                            "max_abs_map_difference": float(np.abs(maps - eager_maps.numpy()).max()),
                            "score_range": [float(eager_scores.min()), float(eager_scores.max())]}
        print(method, equality[method], flush=True)
        for batch in (1, args.batch):
            images = test_images[:batch]
            timings = interleaved_timings({"eager": lambda images=images: eager(images),
                                           "onnxruntime": lambda images=images, session=session: run_onnx(session, images)},
                                          repeats=args.repeats)
            for what, seconds in timings.items():
                record = {"what": f"score_{what}", "method": method, "backbone": meta["teacher"],
                          "image_size": args.image_size, "k": K if bank is not None else None, "batch_size": batch,
                          "threads": args.threads,
                          "ms_per_image": 1000 * statistics.median(seconds["wall"]) / batch,
                          "cpu_ms_per_image": 1000 * statistics.median(seconds["cpu"]) / batch,
                          "images_per_second": batch / statistics.median(seconds["wall"]),
                          "step_seconds": [round(t, 4) for t in seconds["wall"]],
                          "peak_rss_mib": peak_rss_mib()}
                results.add_speed(record)
                print(what, method, batch, f"{record['ms_per_image']:.1f} ms/image", flush=True)
    results.data["equality"] = equality
    results.data["settings"] = {"train_tasks": TRAIN_TASKS, "target": TARGET, "k": K, "epochs": args.epochs,
                                "threads": args.threads, "onnx_opset": 17,
                                "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    results.save()
    results.write_markdown(markdown(results.data, args))


def markdown(data: dict, args: argparse.Namespace) -> str:
    rows = {}
    for record in data["speed"]:
        rows.setdefault((record["method"], record["batch_size"]), {})[record["what"]] = record
    lines = [
        "# Exported graphs: onnxruntime (CPU) vs eager PyTorch",
        "",
        f"`{data['command']}` · {data['machine']} · {data['created']} · EfficientNet-Lite0, {args.image_size} px, "
        f"{args.threads} thread(s) for torch and onnxruntime, ONNX opset 17. Few-shot graphs have K = {K} normal "
        f"{TARGET} supports baked in; eager few-shot scoring reuses prepared support features, so both do the "
        "same work.",
        "",
        "## Latency per image (median; wall time, and process CPU time in brackets)",
        "",
        "| method | batch | eager ms/image | onnxruntime ms/image | eager / onnxruntime |",
        "|---|---|---|---|---|",
    ]
    for (method, batch), pair in rows.items():
        eager, ort = pair["score_eager"], pair["score_onnxruntime"]
        lines.append(f"| {method} | {batch} | {eager['ms_per_image']:.1f} ({eager['cpu_ms_per_image']:.1f}) | "
                     f"{ort['ms_per_image']:.1f} ({ort['cpu_ms_per_image']:.1f}) | "
                     f"{eager['cpu_ms_per_image'] / ort['cpu_ms_per_image']:.2f}× (CPU time) |")
    lines += ["", f"## Equality on real images ({TARGET} test images, evenly spaced over the split, normal and "
              "abnormal; few-shot models scored against the baked supports)", "",
              "| method | images | max abs score difference | max abs map difference | score range |",
              "|---|---|---|---|---|"]
    for method, entry in data["equality"].items():
        lines.append(f"| {method} | {entry['images']} | {entry['max_abs_score_difference']:.2e} | "
                     f"{entry['max_abs_map_difference']:.2e} | {entry['score_range'][0]:.4g} – "
                     f"{entry['score_range'][1]:.4g} |")
    lines += ["", "The checkpoints are small (trained for the equality check, "
              f"{data['settings']['epochs']} epoch(s)); their accuracy is not what this file measures.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
