"""``medad data check``: what a task contains and what is wrong with it.

:func:`check_task` builds the task with ``skip_unreadable=True`` (unreadable files are
reported, not raised) and the default de-duplication, then reports per split: counts per
label and kind, image sizes (min / max / number of distinct sizes), modes and formats, files
whose content format differs from their suffix, masks, duplicate groups inside the split; and
for the task: duplicate groups across splits (found before and remaining after
de-duplication), what de-duplication removed, unreadable and ignored files.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

from .io import ImageReadError, image_info
from .leakage import cross_split_duplicates, find_duplicates, pixel_hash
from .near_duplicates import near_duplicate_groups, near_duplicate_pairs
from .tasks import Sample, Task, load_task

__all__ = ["check_task", "report_task", "report_against", "format_check"]

_FMT_SUFFIX = {"JPEG": {".jpg", ".jpeg"}, "PNG": {".png"}, "BMP": {".bmp"},
               "TIFF": {".tif", ".tiff"}, "GIF": {".gif"}, "WEBP": {".webp"}}


def _name(s: Sample) -> str:
    return str(s.path) if s.slice_index is None else f"{s.path}[z={s.slice_index}]"


def _split_report(samples: list[Sample]) -> dict:
    kinds = Counter(s.kind for s in samples)
    modes, formats = Counter(), Counter()
    sizes: Counter = Counter()
    mismatch = []
    vol_cache: dict = {}
    for s in samples:
        if s.slice_index is not None:
            from .volumes import read_volume

            key = str(s.path)
            if key not in vol_cache:
                v = read_volume(s.path)
                vol_cache[key] = (tuple(v.shape[1:]), f"volume {v.dtype}")
            hw, mode = vol_cache[key]
            sizes[hw] += 1
            modes[mode] += 1
            formats["volume slice"] += 1
            continue
        try:
            info = image_info(s.path)
        except ImageReadError:  # pragma: no cover - validated while building
            modes["unreadable"] += 1
            continue
        sizes[tuple(info["size"])] += 1
        modes[info["mode"]] += 1
        formats[info["format"]] += 1
        allowed = _FMT_SUFFIX.get(info["format"])
        if allowed is not None and s.path.suffix.lower() not in allowed:
            mismatch.append(str(s.path))
    groups = find_duplicates(samples)
    near = near_duplicate_groups(samples)
    hs = [h for h, _ in sizes.items()]
    return {
        "n": len(samples),
        "normal": sum(s.label == 0 for s in samples),
        "abnormal": sum(s.label == 1 for s in samples),
        "kinds": dict(sorted(kinds.items())),
        "with_mask": sum(s.mask_path is not None for s in samples),
        "sizes": {"min_hw": [min(h for h, _ in hs), min(w for _, w in hs)] if hs else None,
                  "max_hw": [max(h for h, _ in hs), max(w for _, w in hs)] if hs else None,
                  "distinct": len(sizes)},
        "modes": dict(modes.most_common()),
        "formats": dict(formats.most_common()),
        "suffix_mismatch": mismatch,
        "duplicate_groups": [[_name(s) for s in g] for g in groups],
        "n_duplicate_groups": len(groups),
        "n_duplicate_files": sum(len(g) for g in groups),
        "near_duplicate_groups": [[_name(s) for s in g] for g in near],
        "n_near_duplicate_groups": len(near),
    }


def report_task(task: Task) -> dict:
    """The check report of an already built task."""
    splits = {k: v for k, v in task.splits.items() if v or k != "valid"}
    before = dict(splits)
    before["train"] = list(task.train) + [r.sample for r in task.removed]
    found = cross_split_duplicates(before)
    remaining = cross_split_duplicates(splits)

    def fmt_group(g):
        return {sp: [_name(s) for s in ss] for sp, ss in g.items()}

    removed_hashes = {pixel_hash(r.sample) for r in task.removed}
    near_remaining = near_duplicate_pairs([s for k, v in splits.items() if k != "train" for s in v],
                                          list(task.train))
    return {
        "task": task.name,
        "root": str(task.root) if task.root else None,
        "description": task.description,
        "protocol": task.meta.get("protocol"),
        "layout": task.meta.get("layout"),
        "dedupe": task.meta.get("dedupe"),
        "splits": {k: _split_report(v) for k, v in splits.items()},
        "cross_split_duplicates_found": [fmt_group(g) for g in found],
        "cross_split_duplicates_remaining": [fmt_group(g) for g in remaining],
        "removed": [{"path": _name(r.sample), "reason": r.reason,
                     "duplicate_of": [_name(d) for d in r.duplicate_of]} for r in task.removed],
        "n_removed": len(task.removed),
        "n_removed_distinct": len(removed_hashes),
        "n_removed_near_duplicates": task.meta.get("near_duplicates_removed", 0),
        "near_duplicates_across_splits_remaining": [
            {"evaluation": _name(m.query), "train": _name(m.match), "similarity": round(m.similarity, 4)}
            for m in near_remaining],
        "unreadable": [{"path": str(s.path), "reason": s.reason} for s in task.skipped],
        "ignored": task.meta.get("ignored", 0),
        "meta": {k: v for k, v in task.meta.items()
                 if k in ("seed", "n_normal", "unused_normal", "split_shortfall",
                          "missing_masks", "slice_split", "train_slices")},
    }


def _all_images(task: Task) -> list[Sample]:
    return [*task.train, *task.valid, *task.test, *(r.sample for r in task.removed)]


def report_against(task: Task, other: Task) -> dict:
    """Near-duplicates of ``task``'s images among every image of ``other`` (all splits, removed ones too).

    Per split of ``task`` and label: how many images have a near-copy in ``other``, with the pairs.
    """
    pool = _all_images(other)
    where = {id(s): split for split, ss in other.splits.items() for s in ss}
    where.update({id(r.sample): "removed" for r in other.removed})
    out: dict = {"against": other.name, "root": str(other.root) if other.root else None, "splits": {}}
    for split, samples in task.splits.items():
        if not samples:
            continue
        pairs = near_duplicate_pairs(samples, pool)
        best: dict[int, object] = {}
        for m in pairs:
            best.setdefault(id(m.query), m)
        row = {}
        for label, what in ((0, "normal"), (1, "abnormal")):
            members = [s for s in samples if s.label == label]
            if not members:
                continue
            hits = [best[id(s)] for s in members if id(s) in best]
            row[what] = {"n": len(members), "near_duplicates": len(hits),
                         "pairs": [{"image": _name(m.query), "copy": _name(m.match),
                                    "copy_split": where.get(id(m.match)), "similarity": round(m.similarity, 4)}
                                   for m in hits]}
        out["splits"][split] = row
    return out


def check_task(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None,
               against: list[str] | tuple[str, ...] = (), **options) -> dict:
    """Build a task (registry name, folder or CSV) and return its check report (a dict).

    ``against`` names other tasks (registry names, folders or CSVs) to search for near-copies of this
    task's images (:func:`report_against`).
    """
    options.setdefault("skip_unreadable", True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = load_task(name_or_path, root=root, **options)
        others = [load_task(o, root=root, **options) for o in against]
    report = report_task(task)
    report["against"] = [report_against(task, other) for other in others]
    report["warnings"] = sorted({str(w.message) for w in caught})
    return report


def _hw(v):
    return "-" if v is None else f"{v[0]}x{v[1]}"


def _split_table(report: dict) -> list[str]:
    lines = [f"task {report['task']}  ({report.get('layout')} layout, root {report['root']})"]
    if report.get("description"):
        lines.append(f"  {report['description']}")
    if report.get("protocol"):
        lines.append(f"  protocol: {report['protocol']}")
    lines.append("")
    lines.append(f"  {'split':<6} {'images':>6} {'normal':>6} {'abn.':>6}  kinds")
    for split, r in report["splits"].items():
        kinds = ", ".join(f"{k} {v}" for k, v in r["kinds"].items())
        lines.append(f"  {split:<6} {r['n']:>6} {r['normal']:>6} {r['abnormal']:>6}  {kinds}")
    return lines


def _split_details(report: dict, max_list: int) -> list[str]:
    """Sizes, modes, formats and duplicates inside each split."""
    lines = []
    for split, r in report["splits"].items():
        s = r["sizes"]
        modes = ", ".join(f"{k} {v}" for k, v in r["modes"].items())
        fmts = ", ".join(f"{k} {v}" for k, v in r["formats"].items())
        lines.append(f"  {split}: sizes {_hw(s['min_hw'])} .. {_hw(s['max_hw'])} "
                     f"({s['distinct']} distinct); modes {modes}; formats {fmts}"
                     + (f"; masks {r['with_mask']}" if r["with_mask"] else ""))
        if r["suffix_mismatch"]:
            lines.append(f"    {len(r['suffix_mismatch'])} file(s) whose content format "
                         f"differs from the suffix, e.g. {r['suffix_mismatch'][0]}")
        for what, key in (("duplicate", "duplicate_groups"), ("near-duplicate", "near_duplicate_groups")):
            groups = r[key]
            lines.append(f"    {what} groups inside {split}: {len(groups)} "
                         f"({sum(len(g) for g in groups)} files)")
            for g in groups[:max_list]:
                lines.append("      = " + " | ".join(Path(p).name for p in g))
            if len(groups) > max_list:
                lines.append(f"      ... {len(groups) - max_list} more")
    return lines


def _cross_split(report: dict, max_list: int) -> list[str]:
    """Duplicates across splits, what de-duplication removed, unreadable and ignored files."""
    found, rem = report["cross_split_duplicates_found"], report["cross_split_duplicates_remaining"]
    lines = [f"  duplicate groups across splits: {len(found)} found, {len(rem)} remaining "
             f"after de-duplication (dedupe={report.get('dedupe')})"]
    for g in rem[:max_list]:
        lines.append("      = " + " | ".join(f"{sp}: " + ", ".join(Path(p).name for p in ps)
                                             for sp, ps in g.items()))
    if len(rem) > max_list:
        lines.append(f"      ... {len(rem) - max_list} more")
    lines.append(f"  removed from train: {report['n_removed']} file(s) "
                 f"({report['n_removed_distinct']} distinct images) duplicated in test/valid, "
                 f"{report.get('n_removed_near_duplicates', 0)} of them near-duplicates "
                 "(resized, re-encoded or cropped copies)")
    near = report.get("near_duplicates_across_splits_remaining", [])
    lines.append(f"  near-duplicates of evaluation images left in train: {len(near)}")
    for r in report["removed"][:max_list]:
        lines.append(f"      - {Path(r['path']).name}: {r['reason']}")
    if report["n_removed"] > max_list:
        lines.append(f"      ... {report['n_removed'] - max_list} more")
    lines.append(f"  unreadable files: {len(report['unreadable'])}")
    for u in report["unreadable"]:  # every one: each is a file to fix
        lines.append(f"      ! {u['path']}: {u['reason']}")
    if report.get("ignored"):
        lines.append(f"  ignored hidden/OS files: {report['ignored']}")
    return lines


def _layout_notes(report: dict) -> list[str]:
    """What the layout reader recorded (masks, the split of normals, volume slices) and the warnings."""
    lines = []
    meta = report.get("meta") or {}
    if meta.get("missing_masks"):
        lines.append(f"  abnormal images without a mask: {meta['missing_masks']}")
    if "n_normal" in meta:
        lines.append(f"  split of {meta['n_normal']} normals (seed {meta.get('seed')}): "
                     f"{meta.get('unused_normal', 0)} unused, shortfall "
                     f"{meta.get('split_shortfall', 0)}")
    if "train_slices" in meta:
        ts = meta["train_slices"]
        contiguous = bool(ts) and ts == list(range(ts[0], ts[0] + len(ts)))
        where = (f"z = {ts[0]}..{ts[-1]}" if contiguous else
                 "z = " + ", ".join(map(str, ts[:8])) + (", ..." if len(ts) > 8 else ""))
        lines.append(f"  train slices ({meta.get('slice_split')}): {len(ts)}, {where}")
    for w in report.get("warnings", []):
        lines.append(f"  warning: {w}")
    return lines


def _against(report: dict, max_list: int) -> list[str]:
    """Near-copies of this task's images in other tasks (``--against``)."""
    lines = []
    for other in report.get("against", []):
        lines.append(f"  near-duplicates in task {other['against']} (all its images):")
        for split, row in other["splits"].items():
            for what, r in row.items():
                lines.append(f"    {split} {what}: {r['near_duplicates']} of {r['n']}")
                for pair in r["pairs"][:max_list]:
                    lines.append(f"      ~ {Path(pair['image']).name} ≈ {Path(pair['copy']).name} "
                                 f"({pair['copy_split']}, {pair['similarity']:.3f})")
                if len(r["pairs"]) > max_list:
                    lines.append(f"      ... {len(r['pairs']) - max_list} more")
    return lines


def format_check(report: dict, *, max_list: int = 5) -> str:
    """Human-readable text of a :func:`check_task` report."""
    lines = [*_split_table(report), "", *_split_details(report, max_list), "", *_cross_split(report, max_list),
             *_against(report, max_list), *_layout_notes(report)]
    return "\n".join(lines)
