"""One self-contained HTML report of benchmark results and evaluation runs.

``build_report(inputs, out_dir)`` reads any mix of

* benchmark result files (``benchmarks/results/<name>.json``, format of ``../shared/BENCHMARKS.md``) or a
  folder holding them: results table (mean ± std over seeds / support draws) and per-task bar charts;
* ``medad evaluate`` run folders (``metrics.json``, ``scores.csv``, optional ``heatmaps/``);
* ``medad fewshot evaluate`` run folders (``fewshot_metrics_<task>.json``, ``scores_<task>_k<K>_d<draw>.csv``,
  ``support_weights_<task>_k<K>_d<draw>.json``, ``heatmaps_<task>_k<K>/``);
* ``medad demo`` folders (``demo.json``, ``scores.csv``, ``heatmaps/`` named ``normal_*`` / ``abnormal_*``);

and writes ``out_dir/index.html`` with every figure embedded as a base64 PNG (the same PNGs are saved
beside it).  Per-image scores give ROC curves and normal-vs-abnormal score distributions (box + strip, as
D²4FAD Fig. 2); heat-map folders give a grid of the most and least anomalous test images; few-shot support
weights give a queries × supports matrix (D²4FAD Fig. 6).  What the inputs cannot show is said on the page.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medad.engine.run_folder import (DEMO_FILE, FEWSHOT_HEATMAPS, FEWSHOT_METRICS_PREFIX, FEWSHOT_SCORES,
                                     FEWSHOT_WEIGHTS, HEATMAP_INDEX, HEATMAPS_DIR, METRICS_FILE, SCORES_CSV,
                                     fewshot_heatmaps_dir, fewshot_scores_file, support_weights_file)
from medad.io_utils import atomic_path, write_text
from medad.visualize import heatmap_file_stems

METRICS = [("image_auroc", "image AUROC"), ("image_ap", "image AP"), ("image_f1max", "image F1-max"),
           ("pixel_auroc", "pixel AUROC"), ("pixel_aupro", "pixel AUPRO")]
NORMAL_COLOUR, ABNORMAL_COLOUR = "#1f77b4", "#d62728"
HEATMAPS_PER_SIDE = 8
MAX_WEIGHT_QUERIES = 24


# ----- collected inputs ------------------------------------------------------------------------------------------

@dataclass
class ResultSource:
    """Accuracy (and speed) records from one benchmark file or one run folder."""

    name: str
    path: Path
    records: list[dict[str, Any]]
    speed: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreSet:
    """Per-image scores of one model (one K and support draw for few-shot) on one task."""

    source: str
    task: str
    series: str
    paths: list[str]
    labels: np.ndarray | None
    scores: np.ndarray
    draw: int | None = None


@dataclass
class Tile:
    png: Path
    label: int | None
    score: float | None
    name: str


@dataclass
class HeatmapSet:
    source: str
    task: str
    series: str
    tiles: list[Tile]
    ranked: bool


@dataclass
class WeightSet:
    source: str
    task: str
    k: int
    draw: int
    supports: list[str]
    queries: list[str]
    labels: np.ndarray | None
    scores: np.ndarray | None
    weights: np.ndarray  # N×K, mean over the model's scales


@dataclass
class Report:
    """What :func:`build_report` wrote and what it could not show."""

    path: Path
    figures: list[str]
    notes: list[str]
    read: list[str]


@dataclass
class ReportInputs:
    results: list[ResultSource] = field(default_factory=list)
    score_sets: list[ScoreSet] = field(default_factory=list)
    heatmaps: list[HeatmapSet] = field(default_factory=list)
    weights: list[WeightSet] = field(default_factory=list)
    read: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_scores_csv(path: Path) -> tuple[list[str], np.ndarray | None, np.ndarray]:
    """(paths, labels or None, scores) from a ``scores.csv`` (columns path, score[, label])."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError("no rows")
    if "score" not in rows[0] or "path" not in rows[0]:
        raise ValueError("needs the columns 'path' and 'score'")
    scores = np.array([float(row["score"]) for row in rows])
    labels = None
    if "label" in rows[0] and all(row["label"] not in ("", "None", None) for row in rows):
        labels = np.array([int(float(row["label"])) for row in rows])
    return [row["path"] for row in rows], labels, scores


def _display_name(path: str) -> str:
    """'lesion/006.png': the file name with its folder (test images of different kinds share stems)."""
    pure = Path(path)
    return f"{pure.parent.name}/{pure.name}" if pure.parent.name else pure.name


def _heatmap_set(folder: Path, source: str, task: str, series: str, scored: ScoreSet | None,
                 notes: list[str]) -> HeatmapSet | None:
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        notes.append(f"{folder}: heat-map folder holds no PNG files")
        return None
    by_name: dict[str, tuple[int | None, float, str]] = {}
    by_stem: dict[str, list[tuple[int | None, float, str]]] = defaultdict(list)
    index_file = folder / HEATMAP_INDEX
    if index_file.is_file():  # written beside the PNGs: file, path, label, score (exact, no name matching)
        with index_file.open(newline="") as handle:
            for row in csv.DictReader(handle):
                label = None if row.get("label") in (None, "", "None") else int(float(row["label"]))
                by_name[Path(row["file"]).stem] = (label, float(row["score"]), _display_name(row["path"]))
    elif scored is not None:
        for index, name in enumerate(heatmap_file_stems(scored.paths)):
            label = None if scored.labels is None else int(scored.labels[index])
            entry = (label, float(scored.scores[index]), _display_name(scored.paths[index]))
            by_name[name] = entry
            by_stem[Path(scored.paths[index]).stem.replace(" ", "_")].append(entry)
    tiles = []
    for png in pngs:
        label: int | None = None
        score: float | None = None
        name = png.stem
        prefixed = re.match(r"^(normal|abnormal)_(.+)$", name)
        if name in by_name:
            label, score, name = by_name[name]
        elif prefixed:  # demo / few-shot heat maps: '<label>_<stem>'
            label = int(prefixed.group(1) == "abnormal")
            name = prefixed.group(2)
            candidates = [c for c in by_stem.get(name, []) if c[0] in (None, label)]
            if candidates:
                _, score, name = candidates[0]
        tiles.append(Tile(png, label, score, name))
    ranked = all(tile.score is not None for tile in tiles)
    if ranked:
        order = sorted(tiles, key=lambda t: t.score)
        least, most = order[:HEATMAPS_PER_SIDE], order[-HEATMAPS_PER_SIDE:][::-1]
        most_ids = {id(t) for t in most}
        tiles = most + [t for t in least if id(t) not in most_ids]
    else:
        notes.append(f"{folder}: no per-image scores match these heat maps, so they are shown in file-name "
                     f"order (the first {2 * HEATMAPS_PER_SIDE}), not ranked by score")
        tiles = tiles[:2 * HEATMAPS_PER_SIDE]
    return HeatmapSet(source, task, series, tiles, ranked)


def _record_from_run(metrics: dict[str, Any], method: str, task: str, k: int | None = None,
                     draw: int | None = None) -> dict[str, Any]:
    checkpoint = metrics.get("checkpoint") or {}
    record = {"method": method, "task": task, "backbone": checkpoint.get("teacher"),
              "image_size": checkpoint.get("image_size"), "k": k, "seed": checkpoint.get("seed"),
              "support_draw": draw}
    record.update({key: metrics.get(key) for key, _ in METRICS})
    record.update({key: metrics.get(key) for key in ("n_test_normal", "n_test_abnormal")})
    return record


def _command_line(run: dict[str, Any]) -> str | None:
    """'medad evaluate --checkpoint …' from a run record's argv (or its command name)."""
    argv = run.get("argv") or []
    if len(argv) > 1 and Path(str(argv[0])).name == "medad":
        return " ".join(["medad", *map(str, argv[1:])])
    return f"medad {run['command']}" if run.get("command") else None


def _read_run_folder(folder: Path, inputs: ReportInputs) -> bool:
    """Add what a run folder holds; False when it holds nothing a report can use."""
    found = False
    name = folder.name or str(folder)
    metrics_file = folder / METRICS_FILE
    demo_file = folder / DEMO_FILE
    scores_file = folder / SCORES_CSV
    if metrics_file.is_file() or demo_file.is_file():
        found = True
        is_demo = demo_file.is_file() and not metrics_file.is_file()
        metrics = _read_json(demo_file if is_demo else metrics_file)
        if is_demo:
            k = (metrics.get("options") or {}).get("k")
            task, method, series = metrics.get("target", "?"), "d24fad", f"d24fad K={k}"
            metrics = {**metrics, "checkpoint": {"teacher": (metrics.get("options") or {}).get("teacher"),
                                                 "image_size": (metrics.get("options") or {}).get("image_size")}}
        else:
            k = None
            task = metrics.get("task", "?")
            method = (metrics.get("checkpoint") or {}).get("method", "model")
            series = method
        inputs.results.append(ResultSource(f"run {name}", folder, [_record_from_run(metrics, method, task, k)],
                                           info={"command": _command_line(metrics), "device": metrics.get("device"),
                                                 "created": metrics.get("created")}))
        scored = None
        if scores_file.is_file():
            paths, labels, scores = read_scores_csv(scores_file)
            scored = ScoreSet(name, task, series, paths, labels, scores)
            inputs.score_sets.append(scored)
        else:
            inputs.notes.append(f"{folder}: no scores.csv, so no ROC curve or score distribution for this run")
        if (folder / HEATMAPS_DIR).is_dir():
            heat = _heatmap_set(folder / HEATMAPS_DIR, name, task, series, scored, inputs.notes)
            if heat:
                inputs.heatmaps.append(heat)
        else:
            inputs.notes.append(f"{folder}: no heatmaps/ folder (run `medad evaluate --heatmaps` to get one)")
    for fewshot_file in sorted(folder.glob(f"{FEWSHOT_METRICS_PREFIX}*.json")):
        found = True
        data = _read_json(fewshot_file)
        task = data.get("task") or fewshot_file.stem.removeprefix(FEWSHOT_METRICS_PREFIX)
        checkpoint = data.get("checkpoint") or {}
        records = [_record_from_run({**record, "checkpoint": checkpoint}, checkpoint.get("method", "d24fad"), task,
                                    record.get("k"), record.get("support_draw")) for record in data.get("records", [])]
        inputs.results.append(ResultSource(f"few-shot run {name} · {task}", fewshot_file, records,
                                           info={"command": _command_line(data), "device": data.get("device"),
                                                 "created": data.get("created")}))
        found_scores: dict[int, ScoreSet] = {}
        for path in sorted(folder.glob(fewshot_scores_file(task, "*", "*")), key=_k_draw_key):
            match = FEWSHOT_SCORES.match(path.name)
            if not match or match.group("task") != task:
                continue
            k, draw = int(match.group("k")), int(match.group("draw"))
            paths, labels, scores = read_scores_csv(path)
            score_set = ScoreSet(name, task, f"K={k}", paths, labels, scores, draw)
            inputs.score_sets.append(score_set)
            found_scores.setdefault(k, score_set)
        if not found_scores:
            inputs.notes.append(f"{folder}: no per-image scores for {task} (scores_{task}_k<K>_d<draw>.csv; "
                                "written by `medad fewshot evaluate` since reports exist)")
        for path in sorted(folder.glob(support_weights_file(task, "*", "*")), key=_k_draw_key):
            match = FEWSHOT_WEIGHTS.match(path.name)
            if not match or match.group("task") != task:
                continue
            weights = _read_json(path)
            labels = weights.get("labels")
            scores = weights.get("scores")
            inputs.weights.append(WeightSet(name, task, int(match.group("k")), int(match.group("draw")),
                                            weights["support"], weights["queries"],
                                            None if labels is None else np.asarray(labels, dtype=int),
                                            None if scores is None else np.asarray(scores, dtype=float),
                                            np.asarray(weights["weights"], dtype=float)))
        for heat_dir in sorted(p for p in folder.glob(fewshot_heatmaps_dir(task, "*")) if p.is_dir()):
            match = FEWSHOT_HEATMAPS.match(heat_dir.name)
            if not match or match.group("task") != task:
                continue
            k = int(match.group("k"))
            heat = _heatmap_set(heat_dir, name, task, f"K={k}", found_scores.get(k), inputs.notes)
            if heat:
                inputs.heatmaps.append(heat)
    return found


def _k_draw_key(path: Path) -> tuple[int, int]:
    numbers = re.findall(r"_k(\d+)_d(\d+)", path.name)
    return (int(numbers[-1][0]), int(numbers[-1][1])) if numbers else (0, 0)


def _is_results_file(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("records"), list) and (
        "benchmark" in data or "speed" in data)


def _add_results_file(path: Path, data: dict[str, Any], inputs: ReportInputs) -> None:
    records = [r for r in data.get("records", []) if isinstance(r, dict) and r.get("method") and r.get("task")]
    inputs.results.append(ResultSource(data.get("benchmark") or path.stem, path, records, data.get("speed") or [],
                                       {key: data.get(key) for key in ("command", "machine", "created")}))
    if not records:
        inputs.notes.append(f"{path}: the benchmark has no accuracy records yet")


def collect_inputs(paths: list[str | Path]) -> ReportInputs:
    """Read every input; what cannot be read becomes a note, never an exception."""
    inputs = ReportInputs()
    for item in paths:
        path = Path(item)
        try:
            if path.is_file():
                if path.suffix == ".csv" or path.name in (METRICS_FILE, DEMO_FILE) or \
                        path.name.startswith(FEWSHOT_METRICS_PREFIX):
                    if not _read_run_folder(path.parent, inputs):
                        inputs.notes.append(f"{path}: not a run output medad recognises")
                    else:
                        inputs.read.append(str(path.parent))
                    continue
                data = _read_json(path)
                if _is_results_file(data):
                    _add_results_file(path, data, inputs)
                    inputs.read.append(str(path))
                else:
                    inputs.notes.append(f"{path}: not a benchmark result file (needs 'benchmark' and 'records')")
            elif path.is_dir():
                if _read_run_folder(path, inputs):
                    inputs.read.append(str(path))
                    continue
                result_files = []
                for candidate in sorted(path.glob("*.json")):
                    try:
                        data = _read_json(candidate)
                    except (OSError, ValueError):
                        continue
                    if _is_results_file(data):
                        result_files.append((candidate, data))
                for candidate, data in result_files:
                    _add_results_file(candidate, data, inputs)
                    inputs.read.append(str(candidate))
                runs = [] if result_files else [sub for sub in sorted(path.iterdir())
                                                if sub.is_dir() and _read_run_folder(sub, inputs)]
                inputs.read.extend(str(sub) for sub in runs)
                if not result_files and not runs:
                    inputs.notes.append(f"{path}: holds neither a run (metrics.json, fewshot_metrics_*.json, "
                                        "demo.json), nor run folders, nor benchmark result files")
            else:
                inputs.notes.append(f"{path}: no such file or folder")
        except (OSError, ValueError, KeyError, TypeError) as error:
            inputs.notes.append(f"{path}: could not be read ({type(error).__name__}: {error})")
    return inputs


# ----- tables ----------------------------------------------------------------------------------------------------

def mean_std_cell(values: list[float | None], scale: float = 100.0) -> str:
    """'94.1 ± 0.6' (percent, population std) for several values, '94.1' for one, '—' for none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{scale * values[0]:.1f}"
    return f"{scale * float(np.mean(values)):.1f} ± {scale * float(np.std(values)):.1f}"


def _ordered(values) -> list:
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _k_sort(k) -> tuple[int, int]:
    return (1, 0) if k is None else (0, int(k))


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task × method × K × teacher × size: count and mean ± std of every metric."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record.get("task"), record.get("method"), record.get("k"), record.get("backbone"),
                record.get("image_size"))].append(record)
    tasks = _ordered(r.get("task") for r in records)
    methods = _ordered(r.get("method") for r in records)
    keys = sorted(groups, key=lambda key: (tasks.index(key[0]), _k_sort(key[2]), methods.index(key[1]),
                                           str(key[3]), key[4] or 0))
    rows = []
    for key in keys:
        group = groups[key]
        row = {"task": key[0], "method": key[1], "k": key[2], "backbone": key[3], "image_size": key[4],
               "n": len(group), "seeds": len({r.get("seed") for r in group}),
               "draws": len({(r.get("seed"), r.get("support_draw")) for r in group})}
        for metric, _ in METRICS:
            values = [r.get(metric) for r in group if r.get(metric) is not None]
            row[metric] = values
            row[metric + "_cell"] = mean_std_cell(values)
            row[metric + "_mean"] = float(np.mean(values)) if values else None
            row[metric + "_std"] = float(np.std(values)) if values else None
        n_normal = _ordered(r.get("n_test_normal") for r in group)
        n_abnormal = _ordered(r.get("n_test_abnormal") for r in group)
        row["n_test"] = (f"{n_normal[0]} / {n_abnormal[0]}" if len(n_normal) == 1 and len(n_abnormal) == 1
                         and n_normal[0] is not None else "—")
        rows.append(row)
    return rows


def _table_html(source: ResultSource) -> tuple[str, list[str]]:
    """The HTML table of one source and the notes about it."""
    rows = summary_rows(source.records)
    notes = []
    if not rows:
        return "<p class='missing'>No accuracy records.</p>", notes
    fewshot = any(row["k"] is not None for row in rows)
    backbones = _ordered(row["backbone"] for row in rows)
    sizes = _ordered(row["image_size"] for row in rows)
    columns = [("task", "task"), ("method", "method")]
    if fewshot:
        columns.append(("k", "K"))
    if len(backbones) > 1:
        columns.append(("backbone", "teacher"))
    if len(sizes) > 1:
        columns.append(("image_size", "px"))
    columns += [("n_test", "normal / abnormal"), ("n", "runs")]
    metric_columns = [(metric, title) for metric, title in METRICS if any(row[metric] for row in rows)]
    missing_metrics = [title for metric, title in METRICS if not any(row[metric] for row in rows)]
    if missing_metrics:
        notes.append(f"{', '.join(missing_metrics)}: not in these records (no pixel masks for these tasks)"
                     if all("pixel" in m for m in missing_metrics) else
                     f"{', '.join(missing_metrics)}: not in these records")
    best: dict[tuple, float] = {}
    for row in rows:
        key = (row["task"], row["k"])
        if row["image_auroc_mean"] is not None:
            best[key] = max(best.get(key, -1.0), row["image_auroc_mean"])
    methods_per_key = defaultdict(set)
    for row in rows:
        methods_per_key[(row["task"], row["k"])].add(row["method"])
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    head += "".join(f"<th>{html.escape(title)} (%)</th>" for _, title in metric_columns)
    body = []
    several_per_task = len(rows) > len(_ordered(row["task"] for row in rows))
    previous_task = None
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row[key]
            text = "—" if value is None else str(value)
            cells.append(f"<td>{html.escape(text)}</td>")
        for metric, _ in metric_columns:
            text = html.escape(row[metric + "_cell"])
            is_best = (metric == "image_auroc" and row["image_auroc_mean"] is not None
                       and len(methods_per_key[(row["task"], row["k"])]) > 1
                       and row["image_auroc_mean"] == best[(row["task"], row["k"])])
            cells.append(f"<td class='num'>{'<b>' + text + '</b>' if is_best else text}</td>")
        css = " class='group'" if (several_per_task and previous_task is not None
                                   and row["task"] != previous_task) else ""
        previous_task = row["task"]
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    caption_bits = []
    if len(backbones) == 1 and backbones[0]:
        caption_bits.append(f"teacher {backbones[0]}")
    if len(sizes) == 1 and sizes[0]:
        caption_bits.append(f"{sizes[0]} px")
    caption_bits.append("mean ± std (population) over "
                        + ("seeds × support draws" if fewshot else "seeds") + "; one value = one run"
                        + ("; bold = best image AUROC of the task" + (" and K" if fewshot else "")
                           if any(len(m) > 1 for m in methods_per_key.values()) else ""))
    table = (f"<table><caption>{html.escape('; '.join(caption_bits))}</caption><thead><tr>{head}</tr></thead>"
             f"<tbody>{''.join(body)}</tbody></table>")
    return table, notes


def _speed_html(speed: list[dict[str, Any]]) -> str:
    if not speed:
        return ""
    keys = ["what", "method", "backbone", "image_size", "k", "batch_size", "images_per_second", "seconds",
            "peak_rss_mib"]
    titles = ["what", "method", "teacher", "px", "K", "batch", "images / s", "seconds", "peak RSS (MiB)"]
    body = []
    for record in speed:
        cells = []
        for key in keys:
            value = record.get(key)
            if isinstance(value, float):
                value = f"{value:.1f}"
            cells.append(f"<td>{html.escape('—' if value is None else str(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{t}</th>" for t in titles)
    return f"<h3>Speed</h3><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ----- figures ---------------------------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
                         "figure.dpi": 100, "savefig.dpi": 100})
    return plt


def _method_colours(methods: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: palette(i % palette.N) for i, method in enumerate(methods)}


def _save(fig, path: Path, quantize: bool = False) -> bytes:
    """PNG bytes of ``fig``, also written to ``path``; ``quantize`` (image-heavy figures) dithers to 256 colours,
    which halves the size of photographic grids with no visible change at page scale."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    if quantize:
        from PIL import Image

        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
        palette = image.quantize(256, method=Image.Quantize.FASTOCTREE)
        buffer = io.BytesIO()
        image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(buffer, format="PNG", optimize=True)
    data = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return data


def _bar_chart(rows: list[dict[str, Any]], title: str):
    """Image AUROC per task (× K for few-shot) and method, with std error bars."""
    plt = _pyplot()
    rows = [row for row in rows if row["image_auroc_mean"] is not None]
    if not rows:
        return None
    tasks = _ordered(row["task"] for row in rows)
    methods = _ordered(row["method"] for row in rows)
    colours = _method_colours(methods)
    fewshot = any(row["k"] is not None for row in rows)
    lowest = min(100 * (row["image_auroc_mean"] - row["image_auroc_std"]) for row in rows)
    bottom = max(0.0, min(45.0, 10 * np.floor(lowest / 10)))

    def draw(ax, groups: list, rows_of_group) -> None:
        present = [m for m in methods if any(row["method"] == m for group in groups for row in rows_of_group(group))]
        width = 0.8 / max(1, len(present))
        for m, method in enumerate(present):
            xs, means, stds = [], [], []
            for g, group in enumerate(groups):
                match = [row for row in rows_of_group(group) if row["method"] == method]
                if match:
                    xs.append(g - 0.4 + width * (m + 0.5))
                    means.append(100 * match[0]["image_auroc_mean"])
                    stds.append(100 * match[0]["image_auroc_std"])
            if xs:
                bars = ax.bar(xs, [mean - bottom for mean in means], width * 0.92, bottom=bottom, yerr=stds,
                              capsize=3, color=colours[method], label=method, error_kw={"elinewidth": 1})
                if len(present) * len(groups) <= 16:
                    ax.bar_label(bars, labels=[f"{mean:.1f}" for mean in means], padding=2, fontsize=8)
        ax.axhline(50, color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_ylim(bottom, 104)
        ax.set_ylabel("image AUROC (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)

    if not fewshot:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(tasks) * max(1, len(methods)) + 2), 4.2))
        draw(ax, tasks, lambda task: [row for row in rows if row["task"] == task])
        ax.set_xticks(range(len(tasks)), tasks, rotation=20 if len(tasks) > 6 else 0)
        ax.set_xlabel("task")
        ax.set_title(title if len(methods) > 1 else f"{title} ({methods[0]})")
        if len(methods) > 1:
            ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        fig.tight_layout()
        return fig
    ks = sorted(_ordered(row["k"] for row in rows), key=_k_sort)
    ncols = min(3, len(tasks))
    nrows = int(np.ceil(len(tasks) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows + 0.8), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        draw(ax, ks, lambda k: [row for row in rows if row["task"] == task and row["k"] == k])
        ax.set_xticks(range(len(ks)), [("K=" + str(k)) if k is not None else "full" for k in ks])
        ax.set_title(task)
        ax.set_xlabel("support images per query")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if len(methods) == 1:
        fig.suptitle(f"{title} ({methods[0]})")
        fig.tight_layout()
        return fig
    fig.suptitle(title)
    legend_inches = 0.45 + 0.25 * int(np.ceil(len(labels) / 5))
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    fig.legend(handles, labels, title="method", loc="lower center", ncol=min(5, len(labels)), frameon=False)
    return fig


def _roc_figure(score_sets: list[ScoreSet]):
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    by_task: dict[str, list[ScoreSet]] = defaultdict(list)
    for score_set in score_sets:
        by_task[score_set.task].append(score_set)
    tasks = list(by_task)
    ncols = min(3, len(tasks))
    nrows = int(np.ceil(len(tasks) / ncols))
    legend_lines = 1 + max(len(_ordered(s.series for s in members)) for members in by_task.values())
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, (4.7 + 0.2 * legend_lines) * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        series = _ordered(s.series for s in by_task[task])
        colours = _method_colours(series)
        for name in series:
            members = [s for s in by_task[task] if s.series == name]
            aurocs = []
            for index, member in enumerate(members):
                fpr, tpr, _ = roc_curve(member.labels, member.scores)
                auroc = roc_auc_score(member.labels, member.scores)
                aurocs.append(auroc)
                if index == 0:
                    first = (fpr, tpr)
                else:
                    ax.plot(fpr, tpr, color=colours[name], alpha=0.25, linewidth=1)
            text = f"{name}: AUROC {aurocs[0]:.3f}"
            if len(aurocs) > 1:
                text += f" (draw {members[0].draw}; {np.mean(aurocs):.3f} ± {np.std(aurocs):.3f} over {len(aurocs)})"
            ax.plot(*first, color=colours[name], linewidth=2, label=text)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
        ax.set_aspect("equal")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=9, frameon=False)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _distribution_figure(score_sets: list[ScoreSet]):
    """Box (median, IQR, whiskers 1.5 IQR) + jittered points of normal and abnormal scores, per task × series."""
    plt = _pyplot()
    ncols = min(4, len(score_sets))
    nrows = int(np.ceil(len(score_sets) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 4.2 * nrows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, score_set in zip(axes.flat, score_sets, strict=False):
        groups = [score_set.scores[score_set.labels == 0], score_set.scores[score_set.labels == 1]]
        box = ax.boxplot(groups, positions=[0, 1], widths=0.5, showfliers=False, patch_artist=True,
                         medianprops={"color": "black"})
        for patch, colour in zip(box["boxes"], (NORMAL_COLOUR, ABNORMAL_COLOUR), strict=True):
            patch.set_facecolor(colour)
            patch.set_alpha(0.25)
        for position, values, colour in zip((0, 1), groups, (NORMAL_COLOUR, ABNORMAL_COLOUR), strict=True):
            jitter = rng.uniform(-0.17, 0.17, size=len(values))
            ax.scatter(position + jitter, values, s=9, color=colour, alpha=0.6, linewidths=0)
        ax.set_xticks([0, 1], [f"normal\n(n={len(groups[0])})", f"abnormal\n(n={len(groups[1])})"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylabel("anomaly score")
        draw_text = f", draw {score_set.draw}" if score_set.draw is not None else ""
        ax.set_title(f"{score_set.task}\n{score_set.series}{draw_text}", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    for ax in list(axes.flat)[len(score_sets):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _heatmap_figure(heat: HeatmapSet):
    from PIL import Image

    plt = _pyplot()
    if heat.ranked:
        n_most = min(HEATMAPS_PER_SIDE, len(heat.tiles))
        sections = [("most anomalous (highest scores first)", heat.tiles[:n_most]),
                    ("least anomalous (lowest scores first)", sorted(heat.tiles[n_most:], key=lambda t: t.score))]
        sections = [s for s in sections if s[1]]
    else:
        sections = [("heat maps (not ranked: no scores)", heat.tiles)]
    ncols = 4
    row_height, header = 2.3, 0.55  # a 2:1 tile 3.7 in wide is 1.85 in tall, plus its two-line title
    row_counts = [int(np.ceil(len(tiles) / ncols)) for _, tiles in sections]
    heights = [row_height * r + header for r in row_counts]
    fig = plt.figure(figsize=(15, sum(heights)))
    subfigs = fig.subfigures(len(sections), 1, height_ratios=heights, squeeze=False)
    for subfig, (title, tiles), rows, height in zip(subfigs.flat, sections, row_counts, heights, strict=False):
        subfig.suptitle(title, fontsize=13, fontweight="bold", x=0.005, y=1 - 0.05 / height, ha="left", va="top")
        axes = subfig.subplots(rows, ncols, squeeze=False,
                               gridspec_kw={"left": 0.005, "right": 0.995, "bottom": 0.01,
                                            "top": 1 - header / height, "wspace": 0.04, "hspace": 0.24})
        for ax in axes.flat:
            ax.axis("off")
        for ax, tile in zip(axes.flat, tiles, strict=False):
            with Image.open(tile.png) as image:
                ax.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
            ax.axis("off")
            label = {None: "label ?", 0: "normal", 1: "ABNORMAL"}[tile.label]
            colour = {None: "black", 0: NORMAL_COLOUR, 1: ABNORMAL_COLOUR}[tile.label]
            score = "" if tile.score is None else f" · score {tile.score:.4g}"
            ax.set_title(f"{label}{score}\n{_short(tile.name, 34)}", fontsize=10, color=colour)
    return fig


def _thumbnail(path: str, size: int = 96) -> np.ndarray | None:
    try:
        from PIL import Image

        from medad.data.io import read_image

        array = (read_image(path).permute(1, 2, 0).numpy() * 255).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(array)
        image.thumbnail((size, size))
        return np.asarray(image)
    except Exception:  # noqa: BLE001 - a thumbnail is decoration: any unreadable file is just left out
        return None


def _weights_figure(weight_set: WeightSet):
    """Learned support weights (mean over scales) of selected queries × the K supports, with thumbnails."""
    plt = _pyplot()
    weights = weight_set.weights
    n, k = weights.shape
    rows = np.arange(n)
    labels = weight_set.labels if weight_set.labels is not None else np.full(n, -1)
    scores = weight_set.scores if weight_set.scores is not None else np.zeros(n)
    if n > MAX_WEIGHT_QUERIES:
        half = MAX_WEIGHT_QUERIES // 2
        picked = []
        for label in (0, 1):
            members = rows[labels == label]
            members = members[np.argsort(scores[members])]
            take = min(len(members), half)
            picked.extend(members[np.linspace(0, len(members) - 1, take).round().astype(int)] if take else [])
        rows = np.array(sorted(set(picked), key=lambda i: (labels[i], scores[i]))) if picked else rows[:MAX_WEIGHT_QUERIES]
    else:
        rows = np.array(sorted(rows, key=lambda i: (labels[i], scores[i])))
    matrix = weights[rows]
    thumbs = [_thumbnail(path) for path in weight_set.supports] if k <= 12 else [None] * k
    have_thumbs = any(t is not None for t in thumbs)
    cell = 1.0 if k <= 8 else 0.6
    matrix_height = 0.34 * len(rows)
    thumb_height = min(1.2, cell) if have_thumbs else 0.0
    fig = plt.figure(figsize=(cell * k + 7.8, matrix_height + thumb_height + 2.2))
    # columns: matrix | colour bar | gap for the bar chart's tick labels | bar chart
    grid = fig.add_gridspec(2 if have_thumbs else 1, 4, height_ratios=[thumb_height, matrix_height] if have_thumbs
                            else [matrix_height], width_ratios=[cell * k, 0.22, 0.9, 3.0], hspace=0.04, wspace=0.04,
                            left=2.6 / (cell * k + 7.8), right=0.98, top=1 - 0.7 / (matrix_height + thumb_height + 2.2),
                            bottom=1.0 / (matrix_height + thumb_height + 2.2))
    if have_thumbs:
        thumb_grid = grid[0, 0].subgridspec(1, k, wspace=0.06)
        for j, thumb in enumerate(thumbs):
            ax = fig.add_subplot(thumb_grid[0, j])
            ax.axis("off")
            if thumb is not None:
                ax.imshow(thumb, cmap="gray")
            ax.set_title(f"S{j + 1}", fontsize=10)
    ax = fig.add_subplot(grid[-1, 0])
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(float(weights.max()), 1e-6))
    if k <= 8 and len(rows) <= MAX_WEIGHT_QUERIES:
        for i in range(len(rows)):
            for j in range(k):
                value = matrix[i, j]
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if value < 0.6 * weights.max() else "black")
    ax.set_xticks(range(k), [f"S{j + 1}" for j in range(k)])
    ax.set_xlabel(f"support image (K={k}, draw {weight_set.draw})")
    row_labels = []
    for i in rows:
        tag = {0: "normal", 1: "abnormal", -1: "query"}[int(labels[i])]
        score = f" {scores[i]:.3g}" if weight_set.scores is not None else ""
        row_labels.append(f"{_short(_display_name(weight_set.queries[i]), 22)} · {tag}{score}")
    ax.set_yticks(range(len(rows)), row_labels, fontsize=8)
    for tick, i in zip(ax.get_yticklabels(), rows, strict=True):
        tick.set_color({0: NORMAL_COLOUR, 1: ABNORMAL_COLOUR}.get(int(labels[i]), "black"))
    ax.set_ylabel("query (sorted by label, then score)")
    cax = fig.add_subplot(grid[-1, 1])
    fig.colorbar(image, cax=cax, label="weight (mean over scales)")
    side = fig.add_subplot(grid[-1, 3])
    positions = np.arange(k)
    for offset, label, colour, name in ((-0.2, 0, NORMAL_COLOUR, "normal queries"),
                                        (0.2, 1, ABNORMAL_COLOUR, "abnormal queries")):
        members = weights[labels == label]
        if len(members):
            side.barh(positions + offset, members.mean(0), height=0.38, color=colour, alpha=0.8,
                      label=f"{name} (n={len(members)})")
    side.axvline(1.0 / k, color="grey", linestyle=":", linewidth=1, label=f"uniform 1/K = {1 / k:.2f}")
    side.set_yticks(positions, [f"S{j + 1}" for j in range(k)])
    side.set_ylim(k - 0.5, -0.5)
    side.set_xlabel("mean weight over all queries")
    side.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), fontsize=8, frameon=False)
    side.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{weight_set.task}: learned support weights per query (K={k})", y=0.995, fontsize=13)
    return fig


# ----- the page --------------------------------------------------------------------------------------------------

CSS = """
body { font-family: -apple-system, 'Segoe UI', 'DejaVu Sans', Arial, sans-serif; margin: 24px auto; max-width: 1400px;
       padding: 0 20px; color: #222; line-height: 1.45; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
h3 { margin-top: 24px; } .meta { color: #555; font-size: 14px; } code { background: #f3f3f3; padding: 1px 4px; }
table { border-collapse: collapse; margin: 10px 0 18px; font-size: 14px; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: 13px; padding-top: 6px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; } th { background: #f0f3f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.group td { border-top: 2px solid #888; }
figure { margin: 12px 0 28px; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 14px; margin-top: 4px; max-width: 1100px; }
.missing { background: #fff6e0; border-left: 4px solid #e0a800; padding: 8px 12px; margin: 8px 0; }
ul.notes li { margin: 3px 0; }
"""


def _make_readable(path: Path) -> None:
    """Atomic writes create owner-only files; a report is for reading (umask respected)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def build_report(inputs: list[str | Path], out_dir: str | Path, title: str | None = None) -> Report:
    """Write ``out_dir/index.html`` (+ the PNGs it embeds) from benchmark results and/or run folders."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    collected = collect_inputs(list(inputs))
    plt = _pyplot()
    sections: list[str] = []
    figures: list[str] = []
    used_names: set[str] = set()

    def figure_html(fig, name: str, caption: str, quantize: bool = False) -> str:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
        unique, counter = stem, 1
        while unique in used_names:
            counter += 1
            unique = f"{stem}_{counter}"
        used_names.add(unique)
        data = _save(fig, out_dir / f"{unique}.png", quantize)
        plt.close(fig)
        figures.append(f"{unique}.png")
        encoded = base64.b64encode(data).decode("ascii")
        return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{encoded}'>"
                f"<figcaption>{html.escape(caption)} <span class='meta'>({unique}.png)</span></figcaption></figure>")

    missing_pieces: list[str] = []

    def missing(text: str) -> str:
        missing_pieces.append(text)
        return f"<p class='missing'>{html.escape(text)}</p>"

    # results tables
    parts = ["<h2>Results</h2>"]
    if not collected.results:
        parts.append(missing("No results: give benchmark result files (benchmarks/results/*.json) or run folders "
                             "of `medad evaluate` / `medad fewshot evaluate` / `medad demo`."))
    for index, source in enumerate(collected.results):
        parts.append(f"<h3>{html.escape(source.name)}</h3>")
        meta = [f"{key}: <code>{html.escape(str(value))}</code>" for key, value in source.info.items() if value]
        parts.append(f"<p class='meta'>source: <code>{html.escape(str(source.path))}</code>"
                     + ("<br>" + "<br>".join(meta) if meta else "") + "</p>")
        table, table_notes = _table_html(source)
        parts.append(table)
        for note in table_notes:
            parts.append(f"<p class='meta'>{html.escape(note)}</p>")
        rows = summary_rows(source.records)
        if sum(row["image_auroc_mean"] is not None for row in rows) > 1:  # one bar would only repeat the table
            fig = _bar_chart(rows, f"{source.name}: image AUROC")
            if fig is not None:
                parts.append(figure_html(fig, f"bars_{source.name}",
                                         "Image AUROC (%) per task and method, mean over runs; error bars: ± std; "
                                         "dotted line: chance (50 %)."))
        parts.append(_speed_html(source.speed))
    sections.append("".join(parts))

    # ROC + distributions
    parts = ["<h2>ROC curves and score distributions</h2>"]
    usable = [s for s in collected.score_sets if s.labels is not None and len(set(s.labels.tolist())) == 2]
    for task in _ordered(s.task for s in usable):
        members = [s for s in usable if s.task == task]
        if len({s.source for s in members}) > 1:
            for member in members:
                if not member.series.startswith(member.source + ": "):
                    member.series = f"{member.source}: {member.series}"
    usable_ids = {id(s) for s in usable}
    for score_set in collected.score_sets:
        if id(score_set) not in usable_ids:
            collected.notes.append(f"{score_set.source} ({score_set.task}, {score_set.series}): scores without both "
                                   "normal and abnormal labels: no ROC curve or distribution")
    if not usable:
        parts.append(missing("Not available: ROC curves and score distributions need per-image scores with labels "
                             "(scores.csv of a `medad evaluate` run, scores_<task>_k<K>_d<draw>.csv of a "
                             "`medad fewshot evaluate` run). Benchmark result files hold only summary metrics."))
    else:
        parts.append(figure_html(_roc_figure(usable), "roc",
                                 "ROC curves per task (image level). Few-shot: bold line = first support draw, "
                                 "faint lines = the other draws."))
        first_draws = [s for s in usable if s.draw in (None, min(t.draw for t in usable
                                                                if t.task == s.task and t.series == s.series
                                                                and t.source == s.source))]
        parts.append(figure_html(_distribution_figure(first_draws), "score_distributions",
                                 "Anomaly scores of normal (blue) and abnormal (red) test images: box = median and "
                                 "inter-quartile range, whiskers to 1.5 × IQR, every image a dot (as D²4FAD Fig. 2). "
                                 "Less overlap = better separation. Few-shot: first support draw of each K."))
    sections.append("".join(parts))

    # heat maps
    parts = ["<h2>Heat maps</h2>"]
    if not collected.heatmaps:
        parts.append(missing("Not available: no heat-map folders among the inputs (`medad evaluate --heatmaps`, "
                             "`medad fewshot evaluate` and `medad demo` write them)."))
    for heat in collected.heatmaps:
        parts.append(f"<h3>{html.escape(heat.task)} — {html.escape(heat.series)} "
                     f"<span class='meta'>({html.escape(heat.source)})</span></h3>")
        parts.append(figure_html(_heatmap_figure(heat), f"heatmaps_{heat.source}_{heat.task}_{heat.series}",
                                 "Each tile: input image (left) and anomaly map overlay (right; jet colour map, blue = "
                                 "low, red = high, one colour scale for the images of this run). Title: true label "
                                 "(blue normal, red abnormal) and image score.", quantize=True))
    sections.append("".join(parts))

    # support weights
    parts = ["<h2>Learned support weights (few-shot)</h2>"]
    shown = {}
    for weight_set in collected.weights:
        shown.setdefault((weight_set.source, weight_set.task, weight_set.k), weight_set)
    if not shown:
        parts.append(missing("Not available: support weights come from `medad fewshot evaluate` runs "
                             "(support_weights_<task>_k<K>_d<draw>.json); none among the inputs."))
    for weight_set in shown.values():
        parts.append(figure_html(_weights_figure(weight_set),
                                 f"support_weights_{weight_set.source}_{weight_set.task}_k{weight_set.k}",
                                 f"D²4FAD learn-to-weight: weight each query gives each of the K={weight_set.k} "
                                 f"normal support images (softmax over supports, averaged over the scales; support "
                                 f"draw {weight_set.draw}; at most {MAX_WEIGHT_QUERIES} queries shown, spread over "
                                 "the score range of each label). Right: mean weight per support over all normal "
                                 "and all abnormal queries.", quantize=True))
    sections.append("".join(parts))

    notes = _ordered(collected.notes)
    notes_html = ("<h2>What this report could not show</h2><ul class='notes'>"
                  + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes else ""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    heading = title or "medad report"
    read = "".join(f"<li><code>{html.escape(p)}</code></li>" for p in collected.read) or "<li>nothing readable</li>"
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(heading)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(heading)}</h1>"
            f"<p class='meta'>generated {created} by <code>medad report</code> from:</p><ul class='meta'>{read}</ul>"
            + "".join(sections) + notes_html + "</body></html>\n")
    index = out_dir / "index.html"
    write_text(index, page)
    for name in [*figures, "index.html"]:
        _make_readable(out_dir / name)
    return Report(index, figures, notes + missing_pieces, list(collected.read))
