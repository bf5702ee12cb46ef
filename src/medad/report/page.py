"""The report's page: sections (results, ROC curves and score distributions, heat maps, support weights), the
notes on what could not be shown, and ``index.html`` with every figure embedded."""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from medad.io_utils import write_bytes, write_text
from medad.report import figures
from medad.report.figures import MAX_WEIGHT_QUERIES
from medad.report.inputs import ReportInputs, collect_inputs
from medad.report.summary import (HEADLINE_K, family_groups, headline, headline_caption, headline_figure,
                                  named_by_setting, summary_table)
from medad.report.tables import k_sort, ordered, speed_html, summary_rows, table_html

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
figcaption { color: #333; font-size: 16px; margin-top: 4px; max-width: 1100px; }
details { margin: 8px 0 16px; } summary { cursor: pointer; color: #1f4e79; font-weight: 600; }
table.summary { font-size: 15px; } .charts { display: flex; flex-wrap: wrap; gap: 0 28px; }
table.summary td:nth-child(4) { max-width: 26em; overflow-wrap: anywhere; }
.charts figure { flex: 1 1 560px; max-width: 680px; }
.missing { background: #fff6e0; border-left: 4px solid #e0a800; padding: 8px 12px; margin: 8px 0; }
ul.notes li { margin: 3px 0; }
"""


@dataclass
class Report:
    """What :func:`build_report` wrote and what it could not show."""

    path: Path
    figures: list[str]
    notes: list[str]
    read: list[str]


@dataclass
class _Page:
    """The figures written to ``out_dir`` (unique file names) and the 'not available' boxes of a page."""

    out_dir: Path
    figures: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def figure(self, fig, name: str, caption: str, quantize: bool = False) -> str:
        """Save ``fig`` as a PNG beside the page and return it embedded, with its caption."""
        unique = self._unique(name)
        data = figures.save(fig, self.out_dir / f"{unique}.png", quantize)
        figures.pyplot().close(fig)
        return self._embedded(data, unique, caption)

    def png(self, path: Path, name: str, caption: str) -> str:
        """Copy an existing PNG (a benchmark's figure) beside the page and return it embedded, with its caption."""
        unique = self._unique(name)
        data = path.read_bytes()
        write_bytes(self.out_dir / f"{unique}.png", data)
        return self._embedded(data, unique, caption)

    def _unique(self, name: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "figure"
        unique, counter = stem, 1
        while f"{unique}.png" in self.figures:
            counter += 1
            unique = f"{stem}_{counter}"
        self.figures.append(f"{unique}.png")
        return unique

    @staticmethod
    def _embedded(data: bytes, unique: str, caption: str) -> str:
        encoded = base64.b64encode(data).decode("ascii")
        return (f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{encoded}'>"
                f"<figcaption>{html.escape(caption)} <span class='meta'>({unique}.png)</span></figcaption></figure>")

    def not_available(self, text: str) -> str:
        self.missing.append(text)
        return f"<p class='missing'>{html.escape(text)}</p>"


def _summary_section(collected: ReportInputs, page: _Page) -> str:
    """What a reader came for: each source's headline method against its baseline, in a table and small charts."""
    headlines = [h for h in (headline(source) for source in collected.results) if h is not None]
    if not headlines:
        return ""
    charts = [page.figure(headline_figure(h), f"summary_{h.source}", headline_caption(h)) for h in headlines
              if h.baseline or len(h.tasks) > 1]  # one bar would only repeat the table
    return ("<h2>Summary</h2>" + summary_table(headlines) + "<div class='charts'>" + "".join(charts) + "</div>")


def _source_charts(source, page: _Page) -> list[str]:
    """The source's charts, one per method family: grouped bars for a few methods, a ranked chart for many."""
    rows = named_by_setting([row for row in summary_rows(source.records) if row["image_auroc_mean"] is not None])
    if len(rows) < 2:  # one bar would only repeat the table
        return []
    ks = sorted(ordered(row["k"] for row in rows), key=k_sort)
    k = HEADLINE_K if HEADLINE_K in ks else ks[len(ks) // 2]
    charts = []
    for index, (title, methods) in enumerate(family_groups(rows)):
        group = [row for row in rows if row["method"] in methods]
        name = f"bars_{source.name}" if index == 0 else f"bars_{source.name}_{title}"
        if len(methods) <= figures.MAX_GROUPED_METHODS:
            fig = figures.bar_chart(group, f"{source.name}: {title}")
            caption = (f"{source.name}, {title}: image AUROC (%) per task" + (" and K" if ks != [None] else "")
                       + ", mean over runs; error bars ± std; each method's name is on its first bar; dotted line: "
                       "chance.")
        else:
            fig = figures.ranked_chart(group, methods, f"{source.name}: {title}", k, methods[0])
            caption = (f"{source.name}, {title}: image AUROC (%) averaged over the tasks each was run on"
                       + ("" if k is None else f", K = {k}") + f"; {methods[0]} dark, best first.")
        if fig is not None:
            charts.append(page.figure(fig, name, caption))
    return charts


def _results_section(collected: ReportInputs, page: _Page) -> str:
    """Per source: its charts grouped by method family, the full table behind a <details>, speed records."""
    parts = ["<h2>Results</h2>"]
    if not collected.results:
        parts.append(page.not_available("No results: give benchmark result files (benchmarks/results/*.json) or run "
                                        "folders of `medad evaluate` / `medad fewshot evaluate` / `medad demo`."))
    for source in collected.results:
        parts.append(f"<h3>{html.escape(source.name)}</h3>")
        meta = [f"{key}: <code>{html.escape(str(value))}</code>" for key, value in source.info.items() if value]
        parts.append(f"<p class='meta'>source: <code>{html.escape(str(source.path))}</code>"
                     + ("<br>" + "<br>".join(meta) if meta else "") + "</p>")
        parts.extend(_source_charts(source, page))
        table, table_notes = table_html(source)
        rows = len(summary_rows(source.records))
        parts.append(f"<details><summary>table: {rows} row{'s' if rows != 1 else ''}</summary>{table}</details>")
        parts.extend(f"<p class='meta'>{html.escape(note)}</p>" for note in table_notes)
        parts.extend(page.png(path, path.stem, caption) for path, caption in source.figures)
        speed = speed_html(source.speed)
        if speed:
            parts.append(f"<details><summary>speed: {len(source.speed)} records</summary>{speed}</details>")
    return "".join(parts)


def _labelled_score_sets(collected: ReportInputs) -> list:
    """The score sets with both labels (series named by source where several sources score one task); the
    others become notes."""
    usable = [s for s in collected.score_sets if s.labels is not None and len(set(s.labels.tolist())) == 2]
    for task in ordered(s.task for s in usable):
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
    return usable


def _scores_section(collected: ReportInputs, page: _Page) -> str:
    parts = ["<h2>ROC curves and score distributions</h2>"]
    usable = _labelled_score_sets(collected)
    if not usable:
        parts.append(page.not_available(
            "Not available: ROC curves and score distributions need per-image scores with labels (scores.csv of a "
            "`medad evaluate` run, scores_<task>_k<K>_d<draw>.csv of a `medad fewshot evaluate` run). Benchmark "
            "result files hold only summary metrics."))
        return "".join(parts)
    parts.append(page.figure(figures.roc_figure(usable), "roc",
                             "ROC curves per task (image level). Few-shot: bold line = first support draw, "
                             "faint lines = the other draws."))
    first_draws = [s for s in usable if s.draw in (None, min(t.draw for t in usable
                                                            if t.task == s.task and t.series == s.series
                                                            and t.source == s.source))]
    parts.append(page.figure(figures.distribution_figure(first_draws), "score_distributions",
                             "Anomaly scores of normal (blue) and abnormal (red) test images: box = median and "
                             "inter-quartile range, whiskers to 1.5 × IQR, every image a dot (as D²4FAD Fig. 2). "
                             "Less overlap = better separation. Few-shot: first support draw of each K."))
    return "".join(parts)


def _heatmaps_section(collected: ReportInputs, page: _Page) -> str:
    parts = ["<h2>Heat maps</h2>"]
    if not collected.heatmaps:
        parts.append(page.not_available("Not available: no heat-map folders among the inputs (`medad evaluate "
                                        "--heatmaps`, `medad fewshot evaluate` and `medad demo` write them)."))
    for heat in collected.heatmaps:
        parts.append(f"<h3>{html.escape(heat.task)} — {html.escape(heat.series)} "
                     f"<span class='meta'>({html.escape(heat.source)})</span></h3>")
        parts.append(page.figure(figures.heatmap_figure(heat), f"heatmaps_{heat.source}_{heat.task}_{heat.series}",
                                 "Each tile: input image (left) and anomaly map overlay (right; jet colour map, blue = "
                                 "low, red = high, one colour scale for the images of this run). Title: true label "
                                 "(blue normal, red abnormal) and image score.", quantize=True))
    return "".join(parts)


def _weights_section(collected: ReportInputs, page: _Page) -> str:
    """The first support draw of each source × task × K."""
    parts = ["<h2>Learned support weights (few-shot)</h2>"]
    shown = {}
    for weight_set in collected.weights:
        shown.setdefault((weight_set.source, weight_set.task, weight_set.k), weight_set)
    if not shown:
        parts.append(page.not_available("Not available: support weights come from `medad fewshot evaluate` runs "
                                        "(support_weights_<task>_k<K>_d<draw>.json); none among the inputs."))
    for weight_set in shown.values():
        parts.append(page.figure(figures.weights_figure(weight_set),
                                 f"support_weights_{weight_set.source}_{weight_set.task}_k{weight_set.k}",
                                 f"D²4FAD learn-to-weight: weight each query gives each of the K={weight_set.k} "
                                 f"normal support images (softmax over supports, averaged over the scales; support "
                                 f"draw {weight_set.draw}; at most {MAX_WEIGHT_QUERIES} queries shown, spread over "
                                 "the score range of each label). Right: mean weight per support over all normal "
                                 "and all abnormal queries.", quantize=True))
    return "".join(parts)


def _html(title: str | None, read: list[str], sections: list[str], notes: list[str]) -> str:
    notes_html = ("<h2>What this report could not show</h2><ul class='notes'>"
                  + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>") if notes else ""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    heading = title or "medad report"
    read_items = "".join(f"<li><code>{html.escape(p)}</code></li>" for p in read) or "<li>nothing readable</li>"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(heading)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(heading)}</h1>"
            f"<details class='meta'><summary>generated {created} by <code>medad report</code> from {len(read)} "
            f"input{'s' if len(read) != 1 else ''}</summary><ul>{read_items}</ul></details>"
            + "".join(sections) + notes_html + "</body></html>\n")


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
    page = _Page(out_dir)
    sections = [section(collected, page) for section in
                (_summary_section, _results_section, _scores_section, _heatmaps_section, _weights_section)]
    notes = ordered(collected.notes)
    index = out_dir / "index.html"
    write_text(index, _html(title, collected.read, sections, notes))
    for name in [*page.figures, "index.html"]:
        _make_readable(out_dir / name)
    return Report(index, page.figures, notes + page.missing, list(collected.read))
