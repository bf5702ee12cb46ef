"""The report's tables: records summarised per task × method × K (mean ± std), as HTML; speed records."""

from __future__ import annotations

import html
from collections import defaultdict
from typing import Any

import numpy as np

from medad.report.inputs import METRICS, ResultSource


def mean_std_cell(values: list[float | None], scale: float = 100.0) -> str:
    """'94.1 ± 0.6' (percent, population std) for several values, '94.1' for one, '—' for none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{scale * values[0]:.1f}"
    return f"{scale * float(np.mean(values)):.1f} ± {scale * float(np.std(values)):.1f}"


def ordered(values) -> list:
    """The distinct values in order of first appearance."""
    seen = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def k_sort(k) -> tuple[int, int]:
    """Sort key of a support size: K ascending, then the full training set (None)."""
    return (1, 0) if k is None else (0, int(k))


def summary_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task × method × K × teacher × size: count and mean ± std of every metric."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[(record.get("task"), record.get("method"), record.get("k"), record.get("backbone"),
                record.get("image_size"))].append(record)
    tasks = ordered(r.get("task") for r in records)
    methods = ordered(r.get("method") for r in records)
    keys = sorted(groups, key=lambda key: (tasks.index(key[0]), k_sort(key[2]), methods.index(key[1]),
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
        n_normal = ordered(r.get("n_test_normal") for r in group)
        n_abnormal = ordered(r.get("n_test_abnormal") for r in group)
        row["n_test"] = (f"{n_normal[0]} / {n_abnormal[0]}" if len(n_normal) == 1 and len(n_abnormal) == 1
                         and n_normal[0] is not None else "—")
        rows.append(row)
    return rows


def _columns(rows: list[dict[str, Any]], fewshot: bool, backbones: list, sizes: list) -> list[tuple[str, str]]:
    """The descriptive columns (key, title): K, teacher and size only where they vary or matter."""
    columns = [("task", "task"), ("method", "method")]
    if fewshot:
        columns.append(("k", "K"))
    if len(backbones) > 1:
        columns.append(("backbone", "teacher"))
    if len(sizes) > 1:
        columns.append(("image_size", "px"))
    return columns + [("n_test", "normal / abnormal"), ("n", "runs")]


def _missing_metrics_note(rows: list[dict[str, Any]]) -> list[str]:
    missing = [title for metric, title in METRICS if not any(row[metric] for row in rows)]
    if not missing:
        return []
    if all("pixel" in m for m in missing):
        return [f"{', '.join(missing)}: not in these records (no pixel masks for these tasks)"]
    return [f"{', '.join(missing)}: not in these records"]


def _best_aurocs(rows: list[dict[str, Any]]) -> tuple[dict[tuple, float], dict[tuple, set]]:
    """The best mean image AUROC per task × K, and the methods of each task × K."""
    best: dict[tuple, float] = {}
    methods_per_key = defaultdict(set)
    for row in rows:
        key = (row["task"], row["k"])
        if row["image_auroc_mean"] is not None:
            best[key] = max(best.get(key, -1.0), row["image_auroc_mean"])
        methods_per_key[key].add(row["method"])
    return best, methods_per_key


def _caption(fewshot: bool, backbones: list, sizes: list, several_methods: bool) -> str:
    bits = []
    if len(backbones) == 1 and backbones[0]:
        bits.append(f"teacher {backbones[0]}")
    if len(sizes) == 1 and sizes[0]:
        bits.append(f"{sizes[0]} px")
    bits.append("mean ± std (population) over " + ("seeds × support draws" if fewshot else "seeds")
                + "; one value = one run"
                + ("; bold = best image AUROC of the task" + (" and K" if fewshot else "") if several_methods else ""))
    return "; ".join(bits)


def table_html(source: ResultSource) -> tuple[str, list[str]]:
    """The HTML table of one source and the notes about it."""
    rows = summary_rows(source.records)
    if not rows:
        return "<p class='missing'>No accuracy records.</p>", []
    fewshot = any(row["k"] is not None for row in rows)
    backbones = ordered(row["backbone"] for row in rows)
    sizes = ordered(row["image_size"] for row in rows)
    columns = _columns(rows, fewshot, backbones, sizes)
    metric_columns = [(metric, title) for metric, title in METRICS if any(row[metric] for row in rows)]
    best, methods_per_key = _best_aurocs(rows)
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    head += "".join(f"<th>{html.escape(title)} (%)</th>" for _, title in metric_columns)
    body = []
    several_per_task = len(rows) > len(ordered(row["task"] for row in rows))
    previous_task = None
    for row in rows:
        cells = [f"<td>{html.escape('—' if row[key] is None else str(row[key]))}</td>" for key, _ in columns]
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
    caption = _caption(fewshot, backbones, sizes, any(len(m) > 1 for m in methods_per_key.values()))
    table = (f"<table><caption>{html.escape(caption)}</caption><thead><tr>{head}</tr></thead>"
             f"<tbody>{''.join(body)}</tbody></table>")
    return table, _missing_metrics_note(rows)


def speed_html(speed: list[dict[str, Any]]) -> str:
    """The speed records of a benchmark file as a table ('' for none)."""
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
