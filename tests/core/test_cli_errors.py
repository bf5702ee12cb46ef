"""The CLI fails cleanly: bad inputs, one-line errors, exit codes, help texts, quiet output, no progress frames."""

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from medad.cli import errors
from medad.cli.main import build_parser, main
from medad.cli.run_cmd import TRAIN_DEFAULTS


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medad: error: "), err
    return err


def _predict(checkpoint, out, *inputs_and_flags):
    return main(["predict", "--checkpoint", str(checkpoint), "--out", str(out), "--quiet", *map(str, inputs_and_flags)])


def _folder_with(tmp_path, phantom_head, **extra) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("000.png", "001.png"):
        (folder / name).write_bytes((phantom_head.root / "test" / "good" / name).read_bytes())
    for name, content in extra.items():
        path = folder / name.replace("__", ".")
        path.write_bytes(content) if isinstance(content, bytes) else Image.fromarray(content).save(path)
    return folder


def test_unreadable_and_unsupported_files_stop_the_run_or_are_skipped_and_listed(
        rd4ad_checkpoint, phantom_head, tmp_path, capsys):
    """Defects: one unreadable file aborted scoring a folder with a message suggesting the Python-only
    `skip_unreadable=True`; unsupported files in a folder were skipped silently."""
    folder = _folder_with(tmp_path, phantom_head, broken__png=b"\x89PNG\r\n", notes__txt=b"hello")
    assert _predict(rd4ad_checkpoint, tmp_path / "strict", folder) == 2
    err = _error_line(capsys)
    assert "--skip-unreadable" in err and "skip_unreadable=True" not in err
    assert not (tmp_path / "strict").exists()
    assert _predict(rd4ad_checkpoint, tmp_path / "out", folder, "--skip-unreadable") == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.png" in err and "notes.txt" in err
    assert "2 input file(s) skipped" in err
    listed = (tmp_path / "out" / "skipped_files.csv").read_text()
    assert "broken.png" in listed and "notes.txt" in listed
    scored = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert [Path(row["path"]).name for row in scored["images"]] == ["000.png", "001.png"]
    assert len(scored["skipped"]) == 2


def test_tiny_constant_and_nan_images_are_not_scored_without_a_word(rd4ad_checkpoint, tmp_path, capsys):
    """Defect: a 1×1 image and a float TIFF with NaN were scored without a word."""
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tiny)
    assert _predict(rd4ad_checkpoint, tmp_path / "a", tiny) == 2
    assert "only 1×1 pixels" in _error_line(capsys)
    assert _predict(rd4ad_checkpoint, tmp_path / "b", tiny, "--allow-degenerate") == 0
    assert "scored because of --allow-degenerate" in capsys.readouterr().err
    flat = tmp_path / "flat.png"
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(flat)
    assert _predict(rd4ad_checkpoint, tmp_path / "c", flat) == 2
    assert "constant (every pixel is 7)" in _error_line(capsys)
    nan = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    nan[5, 5] = np.nan
    Image.fromarray(nan, mode="F").save(tmp_path / "nan.tif")
    assert _predict(rd4ad_checkpoint, tmp_path / "d", tmp_path / "nan.tif", "--allow-degenerate") == 2
    assert "1 NaN or infinite pixel value" in _error_line(capsys)


def test_edited_checkpoint_metadata_is_refused(rd4ad_checkpoint, phantom_head, tmp_path, capsys):
    """Defect: editing image_size in a checkpoint's metadata (128 → 64) ran silently with other scores."""
    source = rd4ad_checkpoint / "model.safetensors"
    with safe_open(str(source), framework="pt") as handle:
        header = handle.metadata()
    meta = json.loads(header["medad"])
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(source)), str(edited), metadata={**header, "medad": json.dumps({**meta, "image_size": 96})})
    image = phantom_head.root / "test" / "good" / "000.png"
    assert _predict(edited, tmp_path / "out", image) == 2
    assert "no longer matches its weights" in _error_line(capsys)
    foreign = tmp_path / "foreign.safetensors"  # older checkpoint without a digest, teacher swapped
    save_file(load_file(str(source)), str(foreign),
              metadata={"medad": json.dumps({**meta, "teacher": "efficientnet_lite2"})})
    assert _predict(foreign, tmp_path / "out2", image) == 2
    assert "do not fit the rd4ad model its metadata describes (teacher efficientnet_lite2)" in _error_line(capsys)


def test_an_unwritable_out_fails_before_any_work(rd4ad_checkpoint, phantom_head, tmp_path, capsys):
    """Defect: an unwritable --out failed with a PermissionError traceback after all the scoring was done."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["predict", "--checkpoint", str(rd4ad_checkpoint), str(phantom_head.root / "test"),
                 "--out", str(blocker / "out")]) == 2
    assert "--out" in _error_line(capsys) and capsys.readouterr().out == ""


def test_handled_errors_are_one_prefixed_line_with_exit_code_2(rd4ad_checkpoint, fewshot_checkpoint, phantom_head,
                                                               tmp_path, capsys):
    """Defects: `--threshold banana` said "could not convert string to float"; exit codes mixed 1 and 2
    without documentation; some messages lacked the `medad: error:` prefix."""
    image = str(phantom_head.root / "test" / "good" / "000.png")
    with pytest.raises(SystemExit) as exit_info:
        main(["fewshot", "score", "--checkpoint", str(fewshot_checkpoint), "--support", image, "--query", image,
              "--out", str(tmp_path / "x"), "--threshold", "banana"])
    assert exit_info.value.code == errors.EXIT_ERROR
    assert "argument --threshold: expected 'auto', 'none' or a finite number, got 'banana'" in _error_line(capsys)
    config = tmp_path / "c.yaml"
    config.write_text("epochz: 3\n")
    failing = [
        ["train", "--out", str(tmp_path / "t1")],
        ["train", "--task", str(phantom_head.root), "--out", str(tmp_path / "t2"), "--model-option", "oops"],
        ["train", "--task", str(phantom_head.root), "--out", str(tmp_path / "t3"), "--config", str(config)],
        ["evaluate", "--checkpoint", str(fewshot_checkpoint), "--task", str(phantom_head.root),
         "--out", str(tmp_path / "e")],
        ["predict", "--checkpoint", str(rd4ad_checkpoint), str(tmp_path / "missing"), "--out", str(tmp_path / "p")],
        ["fewshot", "score", "--checkpoint", str(rd4ad_checkpoint), "--support", image, "--query", image,
         "--out", str(tmp_path / "s")],
    ]
    for argv in failing:
        assert main(argv) == errors.EXIT_ERROR, argv
        _error_line(capsys)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = readme[readme.index("Exit codes"):]
    for code in (errors.EXIT_OK, errors.EXIT_FINDINGS, errors.EXIT_ERROR, errors.EXIT_INTERRUPTED):
        assert re.search(rf"^\| `{code}` \|", table, re.M), code


def _leaf_parsers(parser: argparse.ArgumentParser):
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield parser
    for action in subcommands:
        for child in action.choices.values():
            yield from _leaf_parsers(child)


def test_every_flag_has_help_and_shows_its_default():
    """Defect: `train --help` showed no defaults and most `fewshot` flags had no help text."""
    leaves = list(_leaf_parsers(build_parser()))
    assert len(leaves) == 12
    for parser in leaves:
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
            default = TRAIN_DEFAULTS.get(action.dest) if parser.prog == "medad train" else action.default
            if default not in (None, False, {}) and action.option_strings:
                shown = " ".join(map(str, default)) if isinstance(default, list) else str(default)
                assert f"(default: {shown})" in text, f"{parser.prog} {action.option_strings[0]}"


def test_quiet_and_no_progress_frames_when_stderr_is_not_a_terminal(rd4ad_checkpoint, phantom_head, tmp_path,
                                                                   capsys):
    """Defect: progress bars wrote \\r frames into logs when stderr was not a terminal; there was no --quiet."""
    folder = phantom_head.root / "test" / "good"
    assert main(["predict", "--checkpoint", str(rd4ad_checkpoint), str(folder), "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "it/s" not in captured.err and "000.png" in captured.out
    assert main(["predict", "--checkpoint", str(rd4ad_checkpoint), str(folder), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    assert capsys.readouterr().out == ""
