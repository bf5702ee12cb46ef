"""Numeric options are checked in one place: every command refuses a bad number with one line naming the flag."""

from __future__ import annotations

import pytest

from breakit import assert_clean_error

#: (argv with {task}, {fewshot}, {rd4ad} and {image} filled in, the flag the message must name)
BAD_NUMBERS = [
    # rows of issue 23's table (these failed before: accepted, a traceback, NaN metrics or an unnamed flag)
    (["fewshot", "score", "--checkpoint", "{fewshot}", "--support", "{image}", "--query", "{image}", "--out", "o",
      "--threshold", "nan"], "--threshold"),
    (["train", "--task", "{task}", "--out", "o", "--epochs", "0"], "--epochs"),
    (["fewshot", "evaluate", "--checkpoint", "{fewshot}", "--task", "{task}", "--draws", "0"], "--draws"),
    (["fewshot", "evaluate", "--checkpoint", "{fewshot}", "--task", "{task}", "--k", "-1"], "--k"),
    (["demo", "--synthetic", "--out", "o", "--k", "0"], "--k"),
    (["predict", "--checkpoint", "{rd4ad}", "{image}", "--out", "o", "--threshold", "inf"], "--threshold"),
    (["fewshot", "train", "--tasks", "{task}", "--out", "o", "--epochs", "0"], "--epochs"),
    (["train", "--task", "{task}", "--out", "o", "--lr", "nan"], "--lr"),
    (["train", "--task", "{task}", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["fewshot", "train", "--tasks", "{task}", "--out", "o", "--k", "0"], "--k"),
    (["serve", "--checkpoint", "{fewshot}", "--max-queries", "0"], "--max-queries"),
    (["serve", "--checkpoint", "{fewshot}", "--port", "70000"], "--port"),
    # cases that already behaved
    (["train", "--task", "{task}", "--out", "o", "--epochs", "two"], "--epochs"),
    (["fewshot", "score", "--checkpoint", "{fewshot}", "--support", "{image}", "--query", "{image}", "--out", "o",
      "--threshold", "banana"], "--threshold"),
    (["predict", "--checkpoint", "{rd4ad}", "{image}", "--out", "o", "--threshold-percentile", "0"],
     "--threshold-percentile"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_NUMBERS, ids=lambda value: value if isinstance(value, str) else
                         " ".join(value[:2] + value[-2:]))
def test_a_bad_number_is_refused_naming_its_flag(cli, argv, flag, phantom_head, rd4ad_checkpoint,
                                                 default_fewshot_checkpoint, tmp_path):
    values = {"task": phantom_head.root, "fewshot": default_fewshot_checkpoint, "rd4ad": rd4ad_checkpoint,
              "image": phantom_head.root / "test" / "good" / "000.png"}
    outcome = cli(*[part.format(**values) for part in argv])
    assert_clean_error(outcome, flag)
    assert not (tmp_path / "o").exists()


def test_a_bad_number_in_a_config_file_is_refused_naming_its_flag(cli, phantom_head, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("epochs: 0\n")
    outcome = cli("train", "--task", phantom_head.root, "--out", tmp_path / "o", "--config", config)
    assert_clean_error(outcome, "--epochs must be an integer ≥ 1, got 0")
    assert not (tmp_path / "o").exists()
