"""``medad data`` — inspect data sets and tasks.

``medad data check PATH_OR_NAME [--against OTHER ...] [--root DIR] [--json OUT] [--seed N] [--dedupe train|none]``
prints per split: counts per label/kind, image sizes and modes, exact and near-duplicate groups, near-copies
in other tasks (``--against``), what
de-duplication removed and unreadable files.  Exit status: 0 = fine, 1 = unreadable files
were found, 2 = the task could not be built (message on stderr).

``medad data list`` prints the registry tasks and the papers' data recipes, present or absent.
"""

from __future__ import annotations

import argparse
import json
import sys

from medad import console
from medad.options import number_type

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``data`` (with ``check`` and ``list``) on an argparse sub-parsers object."""
    p = subparsers.add_parser("data", help="inspect data sets and tasks",
                              description="Inspect data sets and tasks.")
    sub = p.add_subparsers(dest="data_command", metavar="{check,list}")
    c = sub.add_parser("check", help="check a task: counts, sizes, modes, duplicates, "
                                     "unreadable files",
                       description="Build a task (registry name, folder or CSV manifest) and "
                                   "report counts per split, image sizes/modes, duplicate "
                                   "groups, what de-duplication removed and unreadable files.")
    c.add_argument("target", metavar="PATH_OR_NAME",
                   help="registry task name (see 'medad data list'), task folder or CSV "
                        "manifest")
    c.add_argument("--root", default=None,
                   help="data root for registry names (default: $MEDAD_DATA_ROOT or "
                        "../shared/data)")
    c.add_argument("--json", dest="json_out", default=None, metavar="OUT",
                   help="also write the full report as JSON to OUT ('-' for stdout)")
    c.add_argument("--seed", type=number_type("seed"), default=0, help="split seed (unsplit layouts, volumes)")
    c.add_argument("--dedupe", choices=("train", "none"), default="train",
                   help="'train': remove training images duplicated in test/valid; 'none': keep them")
    c.add_argument("--against", nargs="+", default=[], metavar="OTHER",
                   help="also search these tasks (registry names, folders or CSVs) for near-copies "
                        "(resized, re-encoded, cropped) of this task's images")
    c.add_argument("--quiet", action="store_true", help="print nothing; the exit status tells (1: unreadable files)")
    sub.add_parser("list", help="list the registry tasks and the papers' data recipes (present or absent)")
    p.set_defaults(func=run, _data_parser=p)
    return p


def run(args: argparse.Namespace) -> int:
    """Execute ``medad data ...``; returns the exit status."""
    cmd = getattr(args, "data_command", None)
    if cmd == "list":
        list_data()
        return 0
    if cmd != "check":
        parser = getattr(args, "_data_parser", None)
        if parser is not None:
            parser.print_help(sys.stderr)
        return 2

    from medad.data.check import check_task, format_check
    from medad.data.io import ImageReadError
    from medad.data.tasks import TaskLayoutError

    try:
        report = check_task(args.target, root=args.root, against=args.against, seed=args.seed,
                            dedupe=args.dedupe)
    except (TaskLayoutError, ImageReadError, FileNotFoundError, KeyError) as exc:
        print(f"medad: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.json_out == "-":
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        console.info(format_check(report))
        if args.json_out:
            with open(args.json_out, "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=1)
            console.info(f"\nreport written to {args.json_out}")
    return 1 if report["unreadable"] else 0


def list_data() -> None:
    """The registry tasks and the papers' recipes, each marked present or missing under the data root."""
    from medad.data.recipes import RECIPES
    from medad.data.registry import REGISTRY, data_root

    try:
        root = data_root(None)
    except FileNotFoundError:
        root = None
    print(f"registry tasks (data root: {root or 'not found'}):")
    for name, spec in REGISTRY.items():
        mark = "" if root is not None and (root / spec.folder).is_dir() else "  (missing)"
        print(f"{name:<13} {spec.modality:<32} {spec.protocol}{mark}")
    print("paper recipes (the public download unpacked at DATA_ROOT/FOLDER; see docs/DATA.md):")
    for name, recipe in RECIPES.items():
        state = "present" if recipe.present() else "absent"
        print(f"{name:<18} {state:<7} {recipe.paper:<11} {recipe.folder:<42} {recipe.title}")


def main(argv=None) -> int:
    """Stand-alone entry (``python -m medad.cli.data_cmd check NAME``)."""
    parser = argparse.ArgumentParser(prog="medad")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["data", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
