"""The report's opening summary: per result source, its headline method against its baseline (mean image AUROC
over tasks, tasks won), with one small chart each; and the method families the detailed charts are grouped by.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from medad.engine.scorers import DEFAULT_FEWSHOT_METHOD
from medad.report.inputs import ResultSource
from medad.report.tables import k_sort, ordered, summary_rows

#: (headline method, its baseline), first match wins: the default few-shot scorer, then medad's learned few-shot model,
#: against training-free PatchCore-K, PDD against RD4AD (its paper's baseline), the paper's few-shot model against
#: PatchCore-K
PAIRS = [(DEFAULT_FEWSHOT_METHOD, "patchcore"), ("d24fad_nn", "patchcore"), ("pdd", "rd4ad"), ("d24fad", "patchcore")]
#: the support size the few-shot summary shows (the demo's and the papers' middle K)
HEADLINE_K = 4
HEADLINE_COLOUR, BASELINE_COLOUR = "#1f4e79", "#a3adb8"


def family(method: str) -> str:
    """A method's family: its name without a variant (``d24fad_nn[tsd-map]`` → ``d24fad_nn``,
    ``pdd (unified input)`` → ``pdd``)."""
    return re.split(r"\[| \(", method, maxsplit=1)[0]


@dataclass
class Headline:
    """One source's headline comparison at one K (None: one-class) over the tasks both methods have."""

    source: str
    method: str
    baseline: str | None
    k: int | None
    tasks: list[str]
    method_auroc: list[float]  # per task, mean over runs
    baseline_auroc: list[float] | None

    @property
    def wins(self) -> int:
        return sum(a >= b for a, b in zip(self.method_auroc, self.baseline_auroc or [], strict=False))


def _role_pair(records: list[dict]) -> tuple[str, str] | None:
    """(the method of role ``default``, the method of role ``patchcore``): a pre-registered test's comparison."""
    roles = {r["role"]: r["method"] for r in records if r.get("role")}
    return (roles["default"], roles["patchcore"]) if {"default", "patchcore"} <= roles.keys() else None


def headline(source: ResultSource) -> Headline | None:
    """The source's headline method vs baseline, or its only method; None when it has no such comparison, or when
    the source is an earlier round that a newer file supersedes (``superseded_by``)."""
    if source.info.get("superseded_by"):
        return None
    rows = [row for row in summary_rows(source.records) if row["image_auroc_mean"] is not None]
    methods = ordered(row["method"] for row in rows)
    pair = _role_pair(source.records) or next(((m, b) for m, b in PAIRS if m in methods and b in methods), None)
    if pair is None:
        if len(methods) != 1:
            return None
        pair = (methods[0], None)
    ks = sorted(ordered(row["k"] for row in rows if row["method"] == pair[0]), key=k_sort)
    k = HEADLINE_K if HEADLINE_K in ks else ks[len(ks) // 2]
    means: dict[tuple[str, str], float] = {}
    for row in rows:
        if row["k"] == k and row["method"] in pair:
            means.setdefault((row["method"], row["task"]), row["image_auroc_mean"])
    tasks = [t for t in ordered(row["task"] for row in rows)
             if all((m, t) in means for m in pair if m is not None)]
    if not tasks:
        return None
    return Headline(source.name, pair[0], pair[1], k, tasks, [means[(pair[0], t)] for t in tasks],
                    [means[(pair[1], t)] for t in tasks] if pair[1] else None)


def summary_table(headlines: list[Headline]) -> str:
    """One row per source: mean image AUROC of the headline method and the baseline, the difference, tasks won."""
    head = ("<tr><th>results</th><th>setting</th><th>tasks</th><th>method</th><th>image AUROC (%)</th>"
            "<th>baseline</th><th>image AUROC (%)</th><th>difference</th><th>tasks ≥ baseline</th></tr>")
    body = []
    for h in headlines:
        mean = 100 * float(np.mean(h.method_auroc))
        cells = [h.source, "one-class" if h.k is None else f"K = {h.k}", str(len(h.tasks)), h.method, f"{mean:.1f}"]
        if h.baseline_auroc is not None:
            base = 100 * float(np.mean(h.baseline_auroc))
            cells += [h.baseline, f"{base:.1f}", f"{mean - base:+.1f}", f"{h.wins} / {len(h.tasks)}"]
        else:
            cells += ["—", "—", "—", "—"]
        body.append("<tr>" + "".join(f"<td{' class=num' if c[:1].isdigit() or c[:1] in '+-' else ''}>"
                                     f"{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (f"<table class='summary'><caption>Mean over the tasks of each task's mean image AUROC (over seeds and "
            f"support draws); few-shot at K = {HEADLINE_K}. The charts below show each task.</caption>"
            f"<thead>{head}</thead><tbody>{''.join(body)}</tbody></table>")


def headline_figure(h: Headline):
    """Horizontal bars per task: the headline method (dark) and its baseline (grey), each labelled directly."""
    from medad.report.figures import pyplot

    plt = pyplot()
    tasks = [*h.tasks, "mean"]
    values = {h.method: [*h.method_auroc, float(np.mean(h.method_auroc))]}
    if h.baseline_auroc is not None:
        values[h.baseline] = [*h.baseline_auroc, float(np.mean(h.baseline_auroc))]
    height = 0.8 / len(values)
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(tasks) * len(values) + 1.0))
    for i, (method, colour) in enumerate(zip(values, (HEADLINE_COLOUR, BASELINE_COLOUR), strict=False)):
        ys = np.arange(len(tasks)) + (i - (len(values) - 1) / 2) * height
        bars = ax.barh(ys, [100 * v for v in values[method]], height * 0.9, color=colour)
        ax.bar_label(bars, labels=[f"{method}  {100 * v:.1f}" for v in values[method]], padding=3, fontsize=11)
    ax.set_yticks(range(len(tasks)), tasks, fontsize=12)
    ax.invert_yaxis()
    ax.axvline(50, color="grey", linestyle=":", linewidth=1)
    low = min(40, 10 * int(np.floor(10 * min(min(v) for v in values.values()))))
    ax.set_xlim(low, 125)
    ax.set_xticks(range(low, 101, 10))
    ax.set_xlabel("image AUROC (%)", fontsize=12)
    ax.spines[["top", "right"]].set_visible(False)
    setting = "" if h.k is None else f", K = {h.k}"
    ax.set_title(f"{h.source}{setting}", fontsize=13, loc="left")
    fig.tight_layout()
    return fig


def headline_caption(h: Headline) -> str:
    versus = f" against {h.baseline} (grey)" if h.baseline else ""
    setting = "" if h.k is None else f" with K = {h.k} normal references"
    return (f"{h.source}: {h.method} (dark){versus}{setting}; image AUROC (%) per task, mean over runs, and the "
            "mean over tasks; dotted line: chance.")


def named_by_setting(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where a method ran with several (teacher, image size) settings, every method renamed ``method · teacher, S
    px``, so that a chart never lets one setting's bar stand for another's; otherwise the rows as they are."""
    settings: dict[str, set] = {}
    for row in rows:
        settings.setdefault(row["method"], set()).add((row["backbone"], row["image_size"]))
    if all(len(each) < 2 for each in settings.values()):
        return rows
    return [{**row, "method": f"{row['method']} · {row['backbone']}, {row['image_size']} px"} for row in rows]


def family_groups(rows: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The detailed charts' groups: the main methods (names without a variant) together, then each family that
    has variants, with its main method first."""
    methods = ordered(row["method"] for row in rows)
    main = [m for m in methods if family(m) == m]
    groups = [("main methods", main)] if main else []
    for name in ordered(family(m) for m in methods):
        variants = [m for m in methods if family(m) == name and m != name]
        if variants:
            groups.append((f"{name} variants", ([name] if name in methods else []) + variants))
    return groups
