"""medad.data.check and the ``medad data`` command."""

from __future__ import annotations

import argparse
import json
import shutil

from datahelpers import make_mvtec
from medad.cli import data_cmd
from medad.data.check import check_task, format_check


def _parse(argv):
    parser = argparse.ArgumentParser(prog="medad")
    sub = parser.add_subparsers(dest="command")
    data_cmd.add_parser(sub)
    return parser.parse_args(argv)


def _messy_task(tmp_path):
    root = make_mvtec(tmp_path / "messy task")
    shutil.copy(root / "test" / "good" / "001.png", root / "train" / "good" / "leak.png")
    shutil.copy(root / "test" / "tumor" / "000.png", root / "test" / "tumor" / "dup.png")
    (root / "test" / "tumor" / "broken.png").write_bytes(b"\x89PNG\r\n")
    return root


def test_check_report(tmp_path):
    root = _messy_task(tmp_path)
    r = check_task(root)
    tr, te = r["splits"]["train"], r["splits"]["test"]
    assert (tr["n"], tr["normal"], tr["abnormal"]) == (4, 4, 0)
    assert (te["normal"], te["abnormal"]) == (3, 4)
    assert te["kinds"] == {"good": 3, "tumor": 4}
    assert te["n_duplicate_groups"] == 1 and te["n_duplicate_files"] == 2
    assert tr["sizes"] == {"min_hw": [24, 32], "max_hw": [24, 32], "distinct": 1}
    assert tr["modes"] == {"L": 4} and tr["formats"] == {"PNG": 4}
    assert r["n_removed"] == 1 and r["removed"][0]["path"].endswith("leak.png")
    assert len(r["cross_split_duplicates_found"]) == 1
    assert r["cross_split_duplicates_remaining"] == []
    assert [u["path"] for u in r["unreadable"]] == [str(root / "test" / "tumor" / "broken.png")]
    assert te["with_mask"] == 3  # dup.png has no mask file
    assert r["meta"]["missing_masks"] == {"test/tumor": 1}
    text = format_check(r)
    assert "removed from train: 1 file(s) (1 distinct images)" in text
    assert "unreadable files: 1" in text and "broken.png" in text
    assert "duplicate groups inside test: 1 (2 files)" in text


def test_cli_check_exit_codes_and_json(tmp_path, capsys):
    root = _messy_task(tmp_path)
    out = tmp_path / "report.json"
    args = _parse(["data", "check", str(root), "--json", str(out)])
    assert args.func is data_cmd.run
    assert args.func(args) == 1  # unreadable file found
    printed = capsys.readouterr().out
    assert "task messy task" in printed and "report written to" in printed
    report = json.loads(out.read_text())
    assert report["splits"]["train"]["n"] == 4
    (root / "test" / "tumor" / "broken.png").unlink()
    assert data_cmd.run(_parse(["data", "check", str(root)])) == 0
    assert data_cmd.run(_parse(["data", "check", str(tmp_path / "nope")])) == 2
    assert "neither a registry task" in capsys.readouterr().err
    assert data_cmd.run(_parse(["data", "check", str(root), "--dedupe", "none"])) == 0
    assert "removed from train: 0 file(s)" in capsys.readouterr().out


def test_cli_list_and_no_subcommand(capsys):
    assert data_cmd.run(_parse(["data", "list"])) == 0
    out = capsys.readouterr().out
    for name in ["headct", "brainmri", "brain_tumor", "zhanglab", "nih_cxr", "brats_slices"]:
        assert name in out
    assert data_cmd.run(_parse(["data"])) == 2


def test_check_lists_every_unreadable_file(tmp_path, capsys):
    """Defect: `data check` said "unreadable files: 6" and listed 5."""
    root = _messy_task(tmp_path)
    for index in range(6):
        (root / "test" / "tumor" / f"broken{index}.png").write_bytes(b"\x89PNG\r\n")
    assert data_cmd.run(_parse(["data", "check", str(root)])) == 1
    printed = capsys.readouterr().out
    assert "unreadable files: 7" in printed
    assert sum(line.strip().startswith("! ") for line in printed.splitlines()) == 7
