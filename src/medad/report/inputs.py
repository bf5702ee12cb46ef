"""The report's inputs: benchmark result files and run folders read into records, scores, heat maps and
support weights; what cannot be read becomes a note."""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medad.engine.run_folder import (DEMO_FILE, FEWSHOT_HEATMAPS, FEWSHOT_METRICS_PREFIX, FEWSHOT_SCORES,
                                     FEWSHOT_WEIGHTS, HEATMAP_INDEX, HEATMAPS_DIR, METRICS_FILE, SCORES_CSV,
                                     fewshot_heatmaps_dir, fewshot_scores_file, support_weights_file)
from medad.visualize import heatmap_file_stems

#: metric key and title, in table order
METRICS = [("image_auroc", "image AUROC"), ("image_ap", "image AP"), ("image_f1max", "image F1-max"),
           ("pixel_auroc", "pixel AUROC"), ("pixel_aupro", "pixel AUPRO")]
HEATMAPS_PER_SIDE = 8


@dataclass
class ResultSource:
    """Accuracy (and speed) records from one benchmark file or one run folder."""

    name: str
    path: Path
    records: list[dict[str, Any]]
    speed: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    figures: list[tuple[Path, str]] = field(default_factory=list)  # (PNG beside the results file, caption)


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


def display_name(path: str) -> str:
    """'lesion/006.png': the file name with its folder (test images of different kinds share stems)."""
    pure = Path(path)
    return f"{pure.parent.name}/{pure.name}" if pure.parent.name else pure.name


def _tile_entries(folder: Path, scored: ScoreSet | None
                  ) -> tuple[dict[str, tuple[int | None, float, str]], dict[str, list[tuple[int | None, float, str]]]]:
    """(label, score, display name) by PNG stem, and by image stem (for '<label>_<stem>' heat maps)."""
    by_name: dict[str, tuple[int | None, float, str]] = {}
    by_stem: dict[str, list[tuple[int | None, float, str]]] = defaultdict(list)
    index_file = folder / HEATMAP_INDEX
    if index_file.is_file():  # written beside the PNGs: file, path, label, score (exact, no name matching)
        with index_file.open(newline="") as handle:
            for row in csv.DictReader(handle):
                label = None if row.get("label") in (None, "", "None") else int(float(row["label"]))
                by_name[Path(row["file"]).stem] = (label, float(row["score"]), display_name(row["path"]))
    elif scored is not None:
        for index, name in enumerate(heatmap_file_stems(scored.paths)):
            label = None if scored.labels is None else int(scored.labels[index])
            entry = (label, float(scored.scores[index]), display_name(scored.paths[index]))
            by_name[name] = entry
            by_stem[Path(scored.paths[index]).stem.replace(" ", "_")].append(entry)
    return by_name, by_stem


def _heatmap_set(folder: Path, source: str, task: str, series: str, scored: ScoreSet | None,
                 notes: list[str]) -> HeatmapSet | None:
    pngs = sorted(folder.glob("*.png"))
    if not pngs:
        notes.append(f"{folder}: heat-map folder holds no PNG files")
        return None
    by_name, by_stem = _tile_entries(folder, scored)
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


def _run_info(run: dict[str, Any]) -> dict[str, Any]:
    return {"command": _command_line(run), "device": run.get("device"), "created": run.get("created")}


def _default_fewshot_method() -> str:
    """The registry's default few-shot method: what a demo trains, and what older few-shot runs used."""
    from medad.models.registry import default_method

    return default_method("few_shot")


def _read_evaluation_run(folder: Path, name: str, inputs: ReportInputs) -> None:
    """A ``medad evaluate`` or ``medad demo`` folder: its record, scores and heat maps."""
    metrics_file = folder / METRICS_FILE
    demo_file = folder / DEMO_FILE
    is_demo = demo_file.is_file() and not metrics_file.is_file()
    metrics = _read_json(demo_file if is_demo else metrics_file)
    if is_demo and "methods" in metrics:  # the bundled model's demo: one record per method, scores of the first
        k, task = metrics.get("k"), metrics.get("target", "?")
        records = [_record_from_run({**values, "checkpoint": values.get("model") or {}}, method, task, k)
                   for method, values in metrics["methods"].items()]
        method = next(iter(metrics["methods"]))
        series = f"{method} K={k}"
    elif is_demo:  # medad demo --train
        options = metrics.get("options") or {}
        k, task, method = options.get("k"), metrics.get("target", "?"), _default_fewshot_method()
        series = f"{method} K={k}"
        records = [_record_from_run({**metrics, "checkpoint": {"teacher": options.get("teacher"),
                                                               "image_size": options.get("image_size")}},
                                    method, task, k)]
    else:
        k, task = None, metrics.get("task", "?")
        method = series = (metrics.get("checkpoint") or {}).get("method", "model")
        records = [_record_from_run(metrics, method, task, k)]
    inputs.results.append(ResultSource(f"run {name}", folder, records, info=_run_info(metrics)))
    scored = None
    if (folder / SCORES_CSV).is_file():
        paths, labels, scores = read_scores_csv(folder / SCORES_CSV)
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


def _task_files(folder: Path, pattern: str, name_pattern: re.Pattern, task: str) -> list[tuple[Path, re.Match]]:
    """The files of ``task`` matching a run folder's glob ``pattern`` and name pattern, by K then draw."""
    found = []
    for path in sorted(folder.glob(pattern), key=_k_draw_key):
        match = name_pattern.match(path.name)
        if match and match.group("task") == task:
            found.append((path, match))
    return found


def _read_fewshot_task(folder: Path, name: str, fewshot_file: Path, inputs: ReportInputs) -> None:
    """One task of a ``medad fewshot evaluate`` folder: records, scores per K × draw, support weights, heat maps."""
    data = _read_json(fewshot_file)
    task = data.get("task") or fewshot_file.stem.removeprefix(FEWSHOT_METRICS_PREFIX)
    checkpoint = data.get("checkpoint") or {}
    method = checkpoint.get("method") or _default_fewshot_method()
    records = [_record_from_run({**record, "checkpoint": checkpoint}, method, task, record.get("k"),
                                record.get("support_draw")) for record in data.get("records", [])]
    inputs.results.append(ResultSource(f"few-shot run {name} · {task}", fewshot_file, records, info=_run_info(data)))
    found_scores: dict[int, ScoreSet] = {}
    for path, match in _task_files(folder, fewshot_scores_file(task, "*", "*"), FEWSHOT_SCORES, task):
        k, draw = int(match.group("k")), int(match.group("draw"))
        paths, labels, scores = read_scores_csv(path)
        score_set = ScoreSet(name, task, f"K={k}", paths, labels, scores, draw)
        inputs.score_sets.append(score_set)
        found_scores.setdefault(k, score_set)
    if not found_scores:
        inputs.notes.append(f"{folder}: no per-image scores for {task} (scores_{task}_k<K>_d<draw>.csv; "
                            "written by `medad fewshot evaluate` since reports exist)")
    for path, match in _task_files(folder, support_weights_file(task, "*", "*"), FEWSHOT_WEIGHTS, task):
        weights = _read_json(path)
        labels, scores = weights.get("labels"), weights.get("scores")
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


def _read_run_folder(folder: Path, inputs: ReportInputs) -> bool:
    """Add what a run folder holds; False when it holds nothing a report can use."""
    found = False
    name = folder.name or str(folder)
    if (folder / METRICS_FILE).is_file() or (folder / DEMO_FILE).is_file():
        found = True
        _read_evaluation_run(folder, name, inputs)
    for fewshot_file in sorted(folder.glob(f"{FEWSHOT_METRICS_PREFIX}*.json")):
        found = True
        _read_fewshot_task(folder, name, fewshot_file, inputs)
    return found


def _k_draw_key(path: Path) -> tuple[int, int]:
    numbers = re.findall(r"_k(\d+)_d(\d+)", path.name)
    return (int(numbers[-1][0]), int(numbers[-1][1])) if numbers else (0, 0)


def _is_results_file(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("records"), list) and (
        "benchmark" in data or "speed" in data)


#: records of another evaluation protocol than the benchmark's own (e.g. ``fewshot_loo``'s emulation of a paper's
#: released code): left out of the report's tables and charts, which would otherwise pool them with the rest
OTHER_PROTOCOLS = ("released",)


def _result_figures(path: Path, data: dict[str, Any], inputs: ReportInputs) -> list[tuple[Path, str]]:
    """The PNG figures a results file names (``"figures": {key: {"file", "caption"}}``, files beside it)."""
    found = []
    for entry in (data.get("figures") or {}).values():
        figure = path.parent / str(entry.get("file", "")) if isinstance(entry, dict) else None
        if figure is not None and figure.suffix == ".png" and figure.is_file():
            found.append((figure, str(entry.get("caption", ""))))
        else:
            inputs.notes.append(f"{path}: figure {entry!r} not found beside the results file")
    return found


def _add_results_file(path: Path, data: dict[str, Any], inputs: ReportInputs) -> None:
    records = [r for r in data.get("records", []) if isinstance(r, dict) and r.get("method") and r.get("task")]
    other = [r for r in records if r.get("protocol") in OTHER_PROTOCOLS]
    if other:
        records = [r for r in records if r.get("protocol") not in OTHER_PROTOCOLS]
        inputs.notes.append(f"{path}: {len(other)} records of another evaluation protocol "
                            f"({', '.join(sorted({r['protocol'] for r in other}))}) left out; see the benchmark's .md")
    # named by the file: earlier rounds of a benchmark kept beside it (``fewshot_loo_round1``) stay apart from it
    inputs.results.append(ResultSource(path.stem, path, records, data.get("speed") or [],
                                       {key: data.get(key) for key in ("command", "machine", "created",
                                                                       "superseded_by")},
                                       _result_figures(path, data, inputs)))
    if not records:
        inputs.notes.append(f"{path}: the benchmark has no accuracy records yet")


def _read_file(path: Path, inputs: ReportInputs) -> None:
    """A run output (its folder is read) or a benchmark result file."""
    if path.suffix == ".csv" or path.name in (METRICS_FILE, DEMO_FILE) or path.name.startswith(FEWSHOT_METRICS_PREFIX):
        if not _read_run_folder(path.parent, inputs):
            inputs.notes.append(f"{path}: not a run output medad recognises")
        else:
            inputs.read.append(str(path.parent))
        return
    data = _read_json(path)
    if _is_results_file(data):
        _add_results_file(path, data, inputs)
        inputs.read.append(str(path))
    else:
        inputs.notes.append(f"{path}: not a benchmark result file (needs 'benchmark' and 'records')")


def _read_folder(path: Path, inputs: ReportInputs) -> None:
    """A run folder, a folder of benchmark result files, or a folder of run folders."""
    if _read_run_folder(path, inputs):
        inputs.read.append(str(path))
        return
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
    runs = [] if result_files else [sub for sub in sorted(path.iterdir()) if sub.is_dir() and _read_run_folder(sub, inputs)]
    inputs.read.extend(str(sub) for sub in runs)
    if not result_files and not runs:
        inputs.notes.append(f"{path}: holds neither a run (metrics.json, fewshot_metrics_*.json, "
                            "demo.json), nor run folders, nor benchmark result files")


def collect_inputs(paths: list[str | Path]) -> ReportInputs:
    """Read every input; what cannot be read becomes a note, never an exception."""
    inputs = ReportInputs()
    for item in paths:
        path = Path(item)
        try:
            if path.is_file():
                _read_file(path, inputs)
            elif path.is_dir():
                _read_folder(path, inputs)
            else:
                inputs.notes.append(f"{path}: no such file or folder")
        except (OSError, ValueError, KeyError, TypeError) as error:
            inputs.notes.append(f"{path}: could not be read ({type(error).__name__}: {error})")
    return inputs
