"""The report's figures (matplotlib, Agg): bar charts of image AUROC, ROC curves, score distributions,
heat-map grids and learned support weights; each saved as a PNG."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from medad.io_utils import write_bytes
from medad.report.inputs import HEATMAPS_PER_SIDE, HeatmapSet, ScoreSet, WeightSet, display_name
from medad.report.tables import k_sort, ordered

NORMAL_COLOUR, ABNORMAL_COLOUR = "#1f77b4", "#d62728"
MAX_WEIGHT_QUERIES = 24
#: bar colours of a chart's methods (few, told apart by lightness too), and the text colour that reads on each
BAR_COLOURS = ["#1f4e79", "#a3adb8", "#5b9bd5", "#4d4d4d", "#d9b36c"]
BAR_TEXT = ["white", "black", "black", "white", "black"]
#: the most methods a grouped bar chart shows; more are drawn as a ranked chart
MAX_GROUPED_METHODS = len(BAR_COLOURS)


def pyplot():
    """matplotlib's pyplot on the Agg backend, with the report's font sizes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12, "legend.fontsize": 11,
                         "xtick.labelsize": 11, "ytick.labelsize": 11, "figure.dpi": 100, "savefig.dpi": 100})
    return plt


def _method_colours(methods: list[str]) -> dict[str, Any]:
    """Few methods: the report's bar colours; more (curves of many series): matplotlib's tab10 / tab20."""
    if len(methods) <= len(BAR_COLOURS):
        return dict(zip(methods, BAR_COLOURS, strict=False))
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: palette(i % palette.N) for i, method in enumerate(methods)}


def save(fig, path: Path, quantize: bool = False) -> bytes:
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
    write_bytes(path, data)
    return data


def _draw_bars(ax, groups: list[list[dict[str, Any]]], methods: list[str], colours: dict[str, Any],
               bottom: float) -> None:
    """One bar per method in each group of rows (the rows of one x position), from ``bottom``, ± std; the first
    group's bars carry their method's name (direct labels instead of a legend)."""
    present = [m for m in methods if any(row["method"] == m for group in groups for row in group)]
    width = 0.8 / max(1, len(present))
    text_colour = dict(zip(BAR_COLOURS, BAR_TEXT, strict=True))
    for m, method in enumerate(present):
        xs, means, stds = [], [], []
        for g, group in enumerate(groups):
            match = [row for row in group if row["method"] == method]
            if match:
                xs.append(g - 0.4 + width * (m + 0.5))
                means.append(100 * match[0]["image_auroc_mean"])
                stds.append(100 * match[0]["image_auroc_std"])
        if xs:
            bars = ax.bar(xs, [mean - bottom for mean in means], width * 0.92, bottom=bottom, yerr=stds,
                          capsize=3, color=colours[method], label=method, error_kw={"elinewidth": 1})
            if len(present) * len(groups) <= 16:
                ax.bar_label(bars, labels=[f"{mean:.1f}" for mean in means], padding=2, fontsize=10)
            if len(present) > 1:
                ax.text(xs[0], bottom + 1.5, method, rotation=90, ha="center", va="bottom", fontsize=10,
                        color=text_colour.get(colours[method], "black"), clip_on=True)
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_ylim(bottom, 104)
    ax.set_ylabel("image AUROC (%)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _task_bars(rows: list[dict[str, Any]], title: str, tasks: list, methods: list[str], colours: dict[str, Any],
               bottom: float):
    """One-class results: one axis, a group of bars per task."""
    fig, ax = pyplot().subplots(figsize=(max(6.0, 1.1 * len(tasks) * max(1, len(methods)) + 2), 4.2))
    _draw_bars(ax, [[row for row in rows if row["task"] == task] for task in tasks], methods, colours, bottom)
    ax.set_xticks(range(len(tasks)), tasks, rotation=20 if len(tasks) > 6 else 0)
    ax.set_xlabel("task")
    ax.set_title(title if len(methods) > 1 else f"{title} ({methods[0]})")
    fig.tight_layout()
    return fig


def _fewshot_bars(rows: list[dict[str, Any]], title: str, tasks: list, methods: list[str], colours: dict[str, Any],
                  bottom: float):
    """Few-shot results: an axis per task, a group of bars per K, one legend below."""
    ks = sorted(ordered(row["k"] for row in rows), key=k_sort)
    ncols = min(3, len(tasks))
    nrows = int(np.ceil(len(tasks) / ncols))
    fig, axes = pyplot().subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows + 0.8), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        groups = [[row for row in rows if row["task"] == task and row["k"] == k] for k in ks]
        _draw_bars(ax, groups, methods, colours, bottom)
        ax.set_xticks(range(len(ks)), [("K=" + str(k)) if k is not None else "full" for k in ks])
        ax.set_title(task)
        ax.set_xlabel("support images per query")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.suptitle(title if len(methods) > 1 else f"{title} ({methods[0]})")
    fig.tight_layout()
    return fig


def bar_chart(rows: list[dict[str, Any]], title: str):
    """Image AUROC per task (× K for few-shot) and method, with std error bars; None without AUROCs."""
    pyplot()
    rows = [row for row in rows if row["image_auroc_mean"] is not None]
    if not rows:
        return None
    tasks = ordered(row["task"] for row in rows)
    methods = ordered(row["method"] for row in rows)
    lowest = min(100 * (row["image_auroc_mean"] - row["image_auroc_std"]) for row in rows)
    bottom = max(0.0, min(45.0, 10 * np.floor(lowest / 10)))
    fewshot = any(row["k"] is not None for row in rows)
    return (_fewshot_bars if fewshot else _task_bars)(rows, title, tasks, methods, _method_colours(methods), bottom)


def ranked_chart(rows: list[dict[str, Any]], methods: list[str], title: str, k: int | None, highlight: str | None):
    """Many methods in one colour: a horizontal bar per method (best first) of its mean image AUROC over the tasks
    it was run on (at support size ``k``), labelled with the value and the number of tasks; ``highlight`` dark."""
    means = {}
    for method in methods:
        values = [row["image_auroc_mean"] for row in rows if row["method"] == method and row["k"] == k
                  and row["image_auroc_mean"] is not None]
        if values:
            means[method] = (100 * float(np.mean(values)), len(values))
    if not means:
        return None
    order = sorted(means, key=lambda m: -means[m][0])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9.0, 0.42 * len(order) + 1.3))
    colours = [BAR_COLOURS[0] if m == highlight else BAR_COLOURS[1] for m in order]
    bars = ax.barh(range(len(order)), [means[m][0] for m in order], 0.75, color=colours)
    ax.bar_label(bars, labels=[f"{means[m][0]:.1f}  ({means[m][1]} task{'s' if means[m][1] > 1 else ''})"
                               for m in order], padding=3, fontsize=11)
    ax.set_yticks(range(len(order)), order, fontsize=11)
    ax.invert_yaxis()
    lowest = min(value for value, _ in means.values())
    ax.set_xlim(max(0.0, 10 * np.floor(lowest / 10) - 10), 112)
    ax.axvline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("image AUROC (%), mean over tasks" + ("" if k is None else f", K = {k}"))
    ax.spines[["top", "right"]].set_visible(False)
    ax.set_title(title, loc="left")
    fig.tight_layout()
    return fig


def roc_figure(score_sets: list[ScoreSet]):
    """ROC curves per task, one colour per series; few-shot draws after the first as faint lines."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    by_task: dict[str, list[ScoreSet]] = defaultdict(list)
    for score_set in score_sets:
        by_task[score_set.task].append(score_set)
    tasks = list(by_task)
    ncols = min(3, len(tasks))
    nrows = int(np.ceil(len(tasks) / ncols))
    legend_lines = 1 + max(len(ordered(s.series for s in members)) for members in by_task.values())
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, (4.7 + 0.2 * legend_lines) * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        series = ordered(s.series for s in by_task[task])
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


def distribution_figure(score_sets: list[ScoreSet]):
    """Box (median, IQR, whiskers 1.5 IQR) + jittered points of normal and abnormal scores, per task × series."""
    plt = pyplot()
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


def heatmap_figure(heat: HeatmapSet):
    """A grid of heat-map tiles: the most and least anomalous when ranked, else in file-name order."""
    from PIL import Image

    plt = pyplot()
    if heat.ranked:
        n_most = min(HEATMAPS_PER_SIDE, len(heat.tiles))
        sections = [("most anomalous (highest scores first)", heat.tiles[:n_most]),
                    ("least anomalous (lowest scores first)", sorted(heat.tiles[n_most:], key=lambda t: t.score))]
        sections = [s for s in sections if s[1]]
    else:
        sections = [("heat maps (not ranked: no scores)", heat.tiles)]
    ncols = 4
    row_height, header = 2.55, 1.0  # a 2:1 tile 3.7 in wide is 1.85 in tall, plus its two-line title
    row_counts = [int(np.ceil(len(tiles) / ncols)) for _, tiles in sections]
    heights = [row_height * r + header for r in row_counts]
    fig = plt.figure(figsize=(15, sum(heights)))
    subfigs = fig.subfigures(len(sections), 1, height_ratios=heights, squeeze=False)
    for subfig, (title, tiles), rows, height in zip(subfigs.flat, sections, row_counts, heights, strict=False):
        subfig.suptitle(title, fontsize=16, fontweight="bold", x=0.005, y=1 - 0.05 / height, ha="left", va="top")
        axes = subfig.subplots(rows, ncols, squeeze=False,
                               gridspec_kw={"left": 0.005, "right": 0.995, "bottom": 0.01,
                                            "top": 1 - header / height, "wspace": 0.04, "hspace": 0.34})
        for ax in axes.flat:
            ax.axis("off")
        for ax, tile in zip(axes.flat, tiles, strict=False):
            with Image.open(tile.png) as image:
                ax.imshow(np.asarray(image.convert("RGB")), interpolation="nearest")
            ax.axis("off")
            label = {None: "label ?", 0: "normal", 1: "ABNORMAL"}[tile.label]
            colour = {None: "black", 0: NORMAL_COLOUR, 1: ABNORMAL_COLOUR}[tile.label]
            score = "" if tile.score is None else f" · score {tile.score:.4g}"
            ax.set_title(f"{label}{score}\n{_short(tile.name, 30)}", fontsize=14, color=colour)
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


def weights_figure(weight_set: WeightSet):
    """Learned support weights (mean over scales) of selected queries × the K supports, with thumbnails."""
    plt = pyplot()
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
        row_labels.append(f"{_short(display_name(weight_set.queries[i]), 22)} · {tag}{score}")
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


def comparison_figure(images: np.ndarray, maps: dict[str, np.ndarray], labels: list[int],
                      masks: np.ndarray | None = None, title: str = ""):
    """Heat maps of several models on the same images (PDD's Fig. 4–5): one row per image; columns: the image,
    its ground-truth mask (when given), then each model's map over the image.

    ``images``: N×3×H×W in [0, 1]; ``maps``: model name → N×H×W; ``masks``: N×H×W or None.  Each model has one
    colour scale for all its rows (its 1st to 99th percentile over the images shown), since the models' maps are
    in different units.
    """
    from matplotlib import colormaps

    plt = pyplot()
    columns = ["image", *(["ground truth"] if masks is not None else []), *maps]
    fig, axes = plt.subplots(len(images), len(columns), figsize=(2.2 * len(columns), 2.3 * len(images) + 0.4),
                             squeeze=False)
    scales = {name: np.percentile(values, [1, 99]) for name, values in maps.items()}
    for row, image in enumerate(images):
        picture = np.clip(np.transpose(image, (1, 2, 0)), 0, 1)
        tiles = [picture]
        if masks is not None:
            inside = masks[row].astype(bool)[..., None]
            tiles.append(np.where(inside, 0.5 * picture + 0.5 * np.array([1.0, 0.1, 0.1]), picture))
        for name, values in maps.items():
            low, high = scales[name]
            heat = colormaps["jet"](np.clip((values[row] - low) / max(high - low, 1e-12), 0, 1))[..., :3]
            tiles.append(0.55 * picture + 0.45 * heat)
        for column, (ax, tile) in enumerate(zip(axes[row], tiles, strict=True)):
            ax.imshow(np.clip(tile, 0, 1), interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[column], fontsize=11)
        label = {0: "normal", 1: "abnormal"}.get(labels[row], "?")
        axes[row][0].set_ylabel(label, color=ABNORMAL_COLOUR if labels[row] else NORMAL_COLOUR, fontsize=11)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def training_curves_figure(per_epoch: list[dict[str, Any]], title: str = ""):
    """Per-term loss curves and each student's relative error per epoch, from a training log's ``per_epoch``
    entries (``loss_<term>`` with ``loss_units``, ``relative_error``: student → per-stage values)."""
    plt = pyplot()
    epochs = [entry["epoch"] for entry in per_epoch]
    units = per_epoch[0].get("loss_units", {})
    fig, (terms, errors) = plt.subplots(1, 2, figsize=(11, 3.8))
    for key in sorted(k for k in per_epoch[0] if k.startswith("loss_") and k not in ("loss_units", "loss_total")):
        unit = units.get(key[len("loss_"):], 1.0)
        terms.plot(epochs, [entry[key] / unit for entry in per_epoch], label=key[len("loss_"):])
    if "loss_total" in per_epoch[0]:
        terms.plot(epochs, [entry["loss_total"] for entry in per_epoch], "k--", label="total (Eq. 9, weighted)")
    terms.set(xlabel="epoch", ylabel="term / its unit" if units else "loss", yscale="log", title="loss terms")
    terms.legend()
    for student in per_epoch[0].get("relative_error", {}):
        values = np.array([entry["relative_error"][student] for entry in per_epoch])
        for stage in range(values.shape[1]):
            errors.plot(epochs, values[:, stage], label=f"{student} stage {stage + 1}",
                        linestyle=("-", "--", ":")[stage % 3], color="C0" if student == "s1" else "C3")
    errors.set(xlabel="epoch", ylabel="error energy / target energy", ylim=(0, None), title="relative error")
    errors.legend(fontsize=8, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
