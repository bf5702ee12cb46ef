"""Speed on this machine (issue 10): training and scoring throughput, memory, start-up, decoder options.

Regenerate:  python benchmarks/speed.py
Writes benchmarks/results/speed.json (+ .md) from this one run (not resumable: every ratio must come from
one run).  Needs anomalib (``pip install -e ".[peers]"``) and, for the accuracy and decoding rows, the
shared data (``--data-root``, ``$MEDAD_DATA_ROOT`` or ``../shared/data``).

* RD4AD vs anomalib's ReverseDistillation, same WideResNet-50 teacher (random weights: ImageNet weights
  are not obtainable offline here and cost the same), 128 px, batch 8: their training steps (anomalib's
  recomputes the teacher, as it trains; medad's reads cached teacher features, as every epoch after the
  first does, and is also measured uncached), the variants the profile led to, and scoring.
* Cached vs uncached training and scoring for RD4AD and both few-shot models (D²4FAD-NN, the default,
  and the paper's D²4FAD) with the offline EfficientNet-Lite0.
* Image decoding in the calling process vs DataLoader workers.
* ``medad --help`` wall time (console script, fresh process each time).
* Image AUROC of RD4AD with each bottleneck option (Lite0, 128 px, the ``rd4ad_unsupervised`` protocol).

Steps compared with each other are timed in turn (A, B, A, B, …; median of ``--repeats``) in one process,
each group in its own process (peak RSS is the group's) computing on ``--threads`` threads (default 1).
Every step has two throughputs: images per second of wall time (``images_per_second``) and images per
second of the process's CPU time (``images_per_cpu_second``). On a CPU shared with other jobs the wall
time mostly measures the wait for a core; the CPU time of a one-thread process measures its own work, so
the ratios are read from it (the wall-time ratios are given beside them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from medad.results import (BenchmarkResults, benchmark_command, interleaved_timings, mean_std, optimiser_step,
                           peak_rss_mib)

AUROC_TASKS = ["headct", "brainmri", "zhanglab"]
BOTTLENECKS = ("lean", "standard")
#: the few-shot models timed: medad's default and the paper's
FEWSHOT_METHODS = ("d24fad_nn", "d24fad")
EXPORT_LATENCY = Path("benchmarks/results/export_latency.json")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9, help="timed repetitions per step (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the measuring processes")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--wrn-batch", type=int, default=8, help="batch of the WideResNet-50 comparison")
    parser.add_argument("--batch", type=int, default=16, help="batch of the EfficientNet-Lite0 rows")
    parser.add_argument("--k", type=int, default=4, help="D²4FAD supports per episode / query")
    parser.add_argument("--auroc-tasks", nargs="*", default=AUROC_TASKS)
    parser.add_argument("--auroc-steps", type=int, default=300, help="optimiser steps per accuracy run")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--name", default="speed")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite the .md from the existing .json (e.g. after export_latency.py ran); measure nothing")
    return parser.parse_args()


def summarise(timings: dict[str, dict[str, list[float]]], n_images: int, cpu: bool = True) -> dict[str, dict]:
    """Per step: median throughputs and the raw step times (``cpu=False`` where worker processes do the work)."""
    summary = {}
    for name, seconds in timings.items():
        summary[name] = {"images_per_second": n_images / statistics.median(seconds["wall"]),
                         "step_seconds": [round(t, 4) for t in seconds["wall"]]}
        if cpu:
            summary[name].update({"images_per_cpu_second": n_images / statistics.median(seconds["cpu"]),
                                  "step_cpu_seconds": [round(t, 4) for t in seconds["cpu"]]})
    return summary


def step_gflop(step, batch: int) -> float:
    """Floating-point operations of one step per image (torch's FLOP counter: convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return round(counter.get_total_flops() / batch / 1e9, 2)


def top_ops(step, rows: int = 6) -> list[dict]:
    """The ops of one step that take the most self CPU time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count} for e in events[:rows]]


# ----- group 1: RD4AD vs anomalib, WideResNet-50 ------------------------------------------------------------------
def wrn_group(image_size: int, batch: int, repeats: int) -> dict:
    from anomalib.models.image.reverse_distillation.loss import ReverseDistillationLoss
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    from medad.backbones import build_teacher
    from medad.engine.training import TrainConfig, adam
    from medad.features import FeatureBank
    from medad.models.rd4ad import RD4AD, RD4ADConfig

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    images = torch.rand(batch, 3, image_size, image_size)
    rows = torch.arange(batch)
    teacher = build_teacher("wide_resnet50_2", weights=None)
    with torch.no_grad():
        bank = FeatureBank(teacher(images), cpu)  # the cache's content from epoch 2 on

    def medad_step(bottleneck: str, channels_last: bool = False, cached: bool = True):
        model = RD4AD(teacher, RD4ADConfig(bottleneck=bottleneck)).train()
        optimizer = adam(model.student.parameters(), TrainConfig(), cpu)
        if channels_last:
            model.student.to(memory_format=torch.channels_last)

        def features() -> list[torch.Tensor]:
            if not cached:
                with torch.no_grad():
                    return teacher(images)
            found = bank[rows]
            return [f.contiguous(memory_format=torch.channels_last) for f in found] if channels_last else found

        return model, optimiser_step(lambda: model.loss(features()), optimizer)

    anomalib = ReverseDistillationModel(backbone="wide_resnet50_2", input_size=(image_size, image_size),
                                        layers=["layer1", "layer2", "layer3"], anomaly_map_mode="add",
                                        pre_trained=False)
    anomalib_loss = ReverseDistillationLoss()
    anomalib_optimizer = torch.optim.Adam([p for p in anomalib.parameters() if p.requires_grad], lr=0.005,
                                          betas=(0.5, 0.999))
    anomalib.train()
    anomalib_train = optimiser_step(lambda: anomalib_loss(*anomalib(images)), anomalib_optimizer)
    lean, lean_step = medad_step("lean")
    standard, standard_step = medad_step("standard")
    steps = {
        "anomalib-rd4ad/train_step": anomalib_train,
        "rd4ad/train_step": lean_step,
        "rd4ad/train_step_no_cache": medad_step("lean", cached=False)[1],
        "rd4ad[bottleneck=standard]/train_step": standard_step,
        "rd4ad[channels_last]/train_step": medad_step("lean", channels_last=True)[1],
    }
    times = interleaved_timings(steps, repeats)
    train_rss = peak_rss_mib()
    profiles = {method: {"gflop_per_image": step_gflop(step, batch), "top_ops": top_ops(step)}
                for method, step in (("rd4ad", lean_step), ("rd4ad[bottleneck=standard]", standard_step))}
    profiles["anomalib-rd4ad"] = {"gflop_per_image": step_gflop(anomalib_train, batch)}
    lean.eval()
    anomalib.eval()

    def anomalib_score():
        with torch.no_grad():
            anomalib(images)

    scores = interleaved_timings({"anomalib-rd4ad/score": anomalib_score,
                                  "rd4ad/score": lambda: lean.predict(images)}, repeats)
    parameters = {"anomalib-rd4ad": sum(p.numel() for p in anomalib.parameters() if p.requires_grad),
                  "rd4ad": sum(p.numel() for p in lean.student.parameters()),
                  "rd4ad[bottleneck=standard]": sum(p.numel() for p in standard.student.parameters())}
    return {"train": summarise(times, batch), "score": summarise(scores, batch), "train_rss": train_rss,
            "rss": peak_rss_mib(), "parameters": parameters, "profiles": profiles}


# ----- groups 2 and 3: cached vs uncached with EfficientNet-Lite0 -------------------------------------------------
def rd4ad_lite_group(image_size: int, batch: int, repeats: int) -> dict:
    from medad.backbones import build_teacher
    from medad.engine.training import TrainConfig, adam
    from medad.features import FeatureBank
    from medad.models.rd4ad import RD4AD

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    images = torch.rand(batch, 3, image_size, image_size)
    model = RD4AD(build_teacher("efficientnet_lite0")).train()
    optimizer = adam(model.student.parameters(), TrainConfig(), cpu)
    with torch.no_grad():
        bank = FeatureBank(model.teacher(images), cpu)
    rows = torch.arange(batch)

    def uncached():
        with torch.no_grad():
            return model.teacher(images)

    times = interleaved_timings({"train_step": optimiser_step(lambda: model.loss(bank[rows]), optimizer),
                                 "train_step_no_cache": optimiser_step(lambda: model.loss(uncached()), optimizer)},
                                repeats)
    model.eval()
    times.update(interleaved_timings({"score": lambda: model.predict(images)}, repeats))
    return {"steps": summarise(times, batch), "rss": peak_rss_mib()}


def fewshot_lite_group(method: str, image_size: int, batch: int, k: int, repeats: int) -> dict:
    from medad.engine.training import TrainConfig, adam
    from medad.features import FeatureBank
    from medad.models.factory import build_model

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    queries, supports = torch.rand(batch, 3, image_size, image_size), torch.rand(k, 3, image_size, image_size)
    model = build_model(method, "efficientnet_lite0").train()
    optimizer = adam([p for p in model.parameters() if p.requires_grad], TrainConfig(), cpu)
    with torch.no_grad():
        bank = FeatureBank(model.teacher(torch.cat([queries, supports])), cpu)
    query_rows, support_rows = torch.arange(batch), torch.arange(batch, batch + k)

    def uncached():
        with torch.no_grad():
            return model.teacher(queries), model.teacher(supports)

    times = interleaved_timings(
        {"train_step": optimiser_step(lambda: model.loss(bank[query_rows], bank[support_rows]), optimizer),
         "train_step_no_cache": optimiser_step(lambda: model.loss(*uncached()), optimizer)}, repeats)
    model.eval()
    prepared = model.prepare_supports(supports)
    times.update(interleaved_timings({"score_query_cached_support": lambda: model.predict(queries, prepared)},
                                     repeats))
    return {"steps": summarise(times, batch), "rss": peak_rss_mib()}


# ----- group 4: decoding -----------------------------------------------------------------------------------------
def decode_group(data_root: str | None, image_size: int, repeats: int) -> dict | None:
    from medad.data.registry import data_root as find_root
    from medad.data.tasks import load_task
    from medad.data.images import default_workers, load_images

    try:
        root = find_root(data_root)
    except FileNotFoundError:
        return None
    samples = load_task("zhanglab", root=root).train[:256]
    workers = max(default_workers(len(samples)), 2)
    times = interleaved_timings({"workers=0": lambda: load_images(samples, image_size, workers=0),
                                 f"workers={workers}": lambda: load_images(samples, image_size, workers=workers)},
                                max(repeats // 2, 3), warmup=0)
    return {"steps": summarise(times, len(samples), cpu=False), "rss": peak_rss_mib(),
            "n_images": len(samples)}


# ----- accuracy of the bottleneck options ------------------------------------------------------------------------
def auroc_records(results: BenchmarkResults, args: argparse.Namespace) -> None:
    from medad.backbones import build_teacher
    from medad.data.tasks import load_task
    from medad.engine.evaluate import evaluate_images
    from medad.data.images import load_images
    from medad.engine.training import TrainConfig, seed_everything
    from medad.engine.unsupervised import train_unsupervised
    from medad.features import FeatureCache
    from medad.models.rd4ad import RD4AD, RD4ADConfig

    teacher = build_teacher("efficientnet_lite0")
    cache = FeatureCache(teacher)
    for task_name in args.auroc_tasks:
        task = load_task(task_name, root=args.data_root)
        train, _ = load_images(task.train, args.image_size)
        test, masks = load_images(task.test, args.image_size)
        labels = [s.label for s in task.test]
        epochs = max(1, round(args.auroc_steps / -(-len(train) // args.batch)))
        for bottleneck in BOTTLENECKS:
            seed_everything(0)
            model = RD4AD(teacher, RD4ADConfig(bottleneck=bottleneck))
            started = time.perf_counter()
            trained = train_unsupervised(model, train, TrainConfig(epochs=epochs, batch_size=args.batch, seed=0),
                                         cache=cache, desc=f"{bottleneck} {task_name}")
            seconds = time.perf_counter() - started
            evaluation = evaluate_images(model.predict, test, labels, masks, batch_size=32)
            results.add_record({"method": "rd4ad" if bottleneck == "lean" else f"rd4ad[bottleneck={bottleneck}]",
                                "task": task_name, "train_tasks": [task_name], "backbone": "efficientnet_lite0",
                                "image_size": args.image_size, "k": None, "seed": 0, "support_draw": None,
                                **evaluation.metrics, "train_seconds": seconds, "epochs": trained.epochs_done})
            print(f"{task_name} bottleneck={bottleneck}: AUROC {evaluation.metrics['image_auroc']:.4f} "
                  f"({seconds:.0f} s)", flush=True)


def cli_help_seconds(runs: int = 5) -> tuple[list[float], str]:
    """Wall times of ``medad --help`` in fresh processes (the console script beside this Python when installed)."""
    script = Path(sys.executable).parent / "medad"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "medad.cli.main"]
    subprocess.run([*command, "--help"], capture_output=True, check=True)  # warm the file cache once
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*command, "--help"], capture_output=True, check=True)
        seconds.append(time.perf_counter() - started)
    return seconds, " ".join([Path(command[0]).name, *command[1:], "--help"])


def _on_threads(threads: int | None, function, *args):
    if threads is not None:
        torch.set_num_threads(threads)
    result = function(*args)
    return result if result is None else {**result, "threads": torch.get_num_threads()}


def in_subprocess(threads: int | None, function, *args):
    """``function(*args)`` in a fresh process computing on ``threads`` torch threads (None: torch's default)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_on_threads, threads, function, *args).result()


def speed_record(what: str, method: str, backbone: str, args, batch: int, measured: dict, group: dict,
                 rss: str = "rss", k: int | None = None, **extra) -> dict:
    return {"what": what, "method": method, "backbone": backbone, "image_size": args.image_size, "k": k,
            "batch_size": batch, **measured, "peak_rss_mib": group[rss], "threads": group["threads"], **extra}


def collect(results: BenchmarkResults, args: argparse.Namespace) -> None:
    wrn = in_subprocess(args.threads, wrn_group, args.image_size, args.wrn_batch, args.repeats)
    backbone = "wide_resnet50_2 (random weights)"
    for key, measured in [*wrn["train"].items(), *wrn["score"].items()]:
        method, what = key.split("/")
        results.add_speed(speed_record(what, method, backbone, args, args.wrn_batch, measured, wrn,
                                       rss="train_rss" if what.startswith("train") else "rss",
                                       trainable_parameters=wrn["parameters"].get(method)))
    results.data["profiles"] = wrn["profiles"]
    lite = in_subprocess(args.threads, rd4ad_lite_group, args.image_size, args.batch, args.repeats)
    for what, measured in lite["steps"].items():
        results.add_speed(speed_record(what, "rd4ad", "efficientnet_lite0", args, args.batch, measured, lite))
    for method in FEWSHOT_METHODS:
        few = in_subprocess(args.threads, fewshot_lite_group, method, args.image_size, args.batch, args.k,
                            args.repeats)
        for what, measured in few["steps"].items():
            results.add_speed(speed_record(what, method, "efficientnet_lite0", args, args.batch, measured, few,
                                           k=args.k))
    decode = in_subprocess(None, decode_group, args.data_root, args.image_size, args.repeats)
    if decode is not None:
        for variant, measured in decode["steps"].items():
            results.add_speed(speed_record("decode_images", f"load_images[{variant}]", "-", args,
                                           decode["n_images"], measured, decode))
    seconds, command = cli_help_seconds()
    results.add_speed({"what": "cli_help_seconds", "method": command, "backbone": None, "image_size": None, "k": None,
                       "batch_size": None, "images_per_second": None, "seconds": statistics.median(seconds),
                       "runs_seconds": [round(s, 3) for s in seconds], "peak_rss_mib": None})
    if decode is not None:  # the shared data is there
        auroc_records(results, args)


def markdown(results: BenchmarkResults, args: argparse.Namespace) -> str:
    data = results.data
    wrn = {(s["method"], s["what"]): s for s in data["speed"] if str(s["backbone"]).startswith("wide_resnet50_2")}
    lite = {(s["method"], s["what"]): s for s in data["speed"] if s["backbone"] == "efficientnet_lite0"}

    def ratio(table: dict, a: tuple[str, str], b: tuple[str, str], clock: str = "images_per_cpu_second") -> float:
        return table[a][clock] / table[b][clock]

    anomalib = ("anomalib-rd4ad", "train_step")
    lines = ["# Speed: training, scoring, memory, start-up (issue 10)", "",
             f"Command: `{data['command']}`  ", f"Machine: {data['machine']}  ", f"Conditions: {data['conditions']}",
             "", f"Median of {args.repeats} steps, each timed in turn with the steps it is compared with, in one "
             "process per group (peak RSS is that process's); float32. **images/CPU-s** = images per second of the "
             "process's CPU time — what the ratios are read from, because on this shared CPU the wall time mostly "
             "measures the wait for a core (the wall-time figures and ratios are beside them).", "",
             f"## RD4AD vs anomalib's ReverseDistillation — WideResNet-50 (random weights), {args.image_size} px, "
             f"batch {args.wrn_batch}", "",
             "| method | what | images/CPU-s | × anomalib train_step | images/s (wall) | × anomalib (wall) "
             "| trainable parameters | peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for key, s in wrn.items():
        params = s.get("trainable_parameters")
        lines.append(f"| {key[0]} | {key[1]} | {s['images_per_cpu_second']:.2f} | {ratio(wrn, key, anomalib):.2f}× | "
                     f"{s['images_per_second']:.2f} | {ratio(wrn, key, anomalib, 'images_per_second'):.2f}× | "
                     f"{f'{params:,}' if params else '—'} | {s['peak_rss_mib']:.0f} |")
    cached = ("rd4ad", "train_step")
    rounds = [a / b for a, b in zip(wrn[anomalib]["step_cpu_seconds"], wrn[cached]["step_cpu_seconds"])]
    lines += ["", f"**medad RD4AD `train_step` = {ratio(wrn, cached, anomalib):.2f}× anomalib's** (CPU time; "
              f"{ratio(wrn, cached, anomalib, 'images_per_second'):.2f}× in wall time; {min(rounds):.2f}–"
              f"{max(rounds):.2f}× within the {len(rounds)} rounds that timed both back to back). Uncached, "
              "recomputing the teacher every step as anomalib does: "
              f"{ratio(wrn, ('rd4ad', 'train_step_no_cache'), anomalib):.2f}×. "
              f"Scoring: {ratio(wrn, ('rd4ad', 'score'), ('anomalib-rd4ad', 'score')):.2f}× anomalib's.", "",
              "anomalib's step is its training step (teacher forward, bottleneck, decoder, its loss, Adam). medad's "
              "`train_step` gathers the batch's cached teacher features and runs bottleneck, decoder, loss and "
              "Adam — what every epoch after the first costs. `rd4ad` is the default (lean bottleneck); "
              "`rd4ad[bottleneck=standard]` is the training step as it was before this issue.", "",
              "### Profile of the cached step", "",
              "FLOPs per image per step (torch's FLOP counter) and the ops with the most self CPU time "
              "(torch.profiler):", ""]
    for method, profile in data["profiles"].items():
        ops = ", ".join(f"{op['op']} {100 * op['share']:.0f} %" for op in profile.get("top_ops", []))
        lines.append(f"* `{method}`: {profile['gflop_per_image']} GFLOP" + (f"; {ops}" if ops else ""))
    lines += ["", "Convolutions (backward, then forward) dominate, most of them in the standard bottleneck's "
              "full-width strided convolutions. The `lean` bottleneck (RD4AD's released fusion: widen stage by "
              "stage, pass the deepest stage through) removes most of those (Adam stays the per-tensor loop on the CPU: "
              "torch's fused CPU Adam with 2 threads left a student untrained); the student already runs once per "
              "step and the losses of all scales come from that one "
              "pass. `channels_last` does not pay on this CPU (row above), so medad uses it on CUDA only.", "",
              f"## Cached vs uncached training, and scoring — EfficientNet-Lite0 (ImageNet), {args.image_size} px",
              "", "| method | what | batch | K | images/CPU-s | cached / uncached | images/s (wall) "
              "| cached / uncached (wall) | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for (method, what), s in lite.items():
        uncached = (method, "train_step_no_cache")
        gains = ((f"{ratio(lite, (method, what), uncached):.2f}×",
                  f"{ratio(lite, (method, what), uncached, 'images_per_second'):.2f}×")
                 if what == "train_step" else ("", ""))
        lines.append(f"| {method} | {what} | {s['batch_size']} | {s['k'] or '—'} | {s['images_per_cpu_second']:.1f} "
                     f"| {gains[0]} | {s['images_per_second']:.1f} | {gains[1]} | {s['peak_rss_mib']:.0f} |")
    decode = [s for s in data["speed"] if s["what"] == "decode_images"]
    if decode:
        lines += ["", f"## Decoding and resizing {decode[0]['batch_size']} ZhangLab images to {args.image_size} px "
                  "(`medad.data.images.load_images`)", "",
                  f"In a process on torch's default {decode[0]['threads']} threads, as `medad` runs; decoding workers "
                  "compute on one thread each.", "", "| loader | images/s (wall) |", "|---|---|"]
        lines += [f"| {s['method']} | {s['images_per_second']:.0f} |" for s in decode]
    help_record = next(s for s in data["speed"] if s["what"] == "cli_help_seconds")
    runs = ", ".join(f"{t:.3f}" for t in help_record["runs_seconds"])
    lines += ["", "## Start-up", "", f"`{help_record['method']}`: median **{help_record['seconds']:.2f} s** over "
              f"{len(help_record['runs_seconds'])} fresh processes ({runs} s); torch and timm are imported only by "
              "the commands that run a model."]
    if results.records:
        lines += ["", f"## Image AUROC (%) of the RD4AD bottleneck options — EfficientNet-Lite0 (ImageNet), "
                  f"{args.image_size} px, {args.auroc_steps} Adam steps of batch {args.batch}, seed 0", "",
                  "| task | " + " | ".join(f"`{b}`" for b in BOTTLENECKS) + " |", "|---|" + "---|" * len(BOTTLENECKS)]
        for task in args.auroc_tasks:
            cells = [mean_std(r["image_auroc"] for r in results.records if r["task"] == task
                              and r["method"] == ("rd4ad" if b == "lean" else f"rd4ad[bottleneck={b}]"))
                     for b in BOTTLENECKS]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        lines.append("\n`standard` was the only bottleneck before issue 10 (the `rd4ad_unsupervised` figures, "
                     "3 seeds); `lean` is the default now. One seed per cell: differences of about a point are "
                     "within the seed-to-seed spread of `rd4ad_unsupervised`.")
    return "\n".join(lines + export_latency_section()) + "\n"


def export_latency_section(path: Path = EXPORT_LATENCY) -> list[str]:
    """The exported graphs' latency rows (issue 14), from their own script's results file when it exists."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    rows = {(s["method"], s["batch_size"], s["what"]): s for s in data["speed"]}
    lines = ["", "## Exported graphs: onnxruntime vs eager scoring (issue 14)", "",
             f"From `{data['command']}` ({data['machine']}, {data['created']}; its own run, so these ratios are not "
             f"compared with the rows above; details in `{path.as_posix()}`). Milliseconds per image, CPU time.", "",
             "| method | batch | eager | onnxruntime | eager / onnxruntime |", "|---|---|---|---|---|"]
    for method, batch, what in sorted(rows):
        if what != "score_eager":
            continue
        eager, onnx = rows[(method, batch, what)], rows.get((method, batch, "score_onnxruntime"))
        if onnx is not None:
            lines.append(f"| {method} | {batch} | {eager['cpu_ms_per_image']:.1f} | {onnx['cpu_ms_per_image']:.1f} | "
                         f"{eager['cpu_ms_per_image'] / onnx['cpu_ms_per_image']:.2f}× |")
    return lines


def main() -> int:
    args = parse_args()
    command = benchmark_command("speed.py", pieces=("--markdown-only",))
    if args.markdown_only:
        results = BenchmarkResults(args.name, command, resume=False)
        saved = json.loads(results.path.read_text()) if results.path.is_file() else {}
        if saved.get("command") != command:
            raise SystemExit(f"{results.path} holds no results of `{command}`: run it first")
        results.data = saved
        results.write_markdown(markdown(results, args))
        return 0
    results = BenchmarkResults(args.name, command, resume=False)
    load = os.getloadavg()
    collect(results, args)
    end = os.getloadavg()
    results.data["conditions"] = (f"{args.threads} torch thread(s) per measuring process; CPU shared with other "
                                  f"jobs (1-min load average {load[0]:.1f} at the start, {end[0]:.1f} at the end)")
    results.save()
    results.write_markdown(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
