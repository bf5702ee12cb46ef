"""Damaged, diverged, edited and foreign checkpoints, and the guard that keeps NaN scores from becoming verdicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from breakit import assert_clean_error, rewrite_checkpoint

from medad.engine.thresholds import NonFiniteScoreError, Threshold, check_scores, fixed_threshold


def _poison(state: dict[str, torch.Tensor]) -> None:
    name = sorted(name for name, tensor in state.items() if tensor.is_floating_point())[0]
    state[name].view(-1)[0] = float("nan")


def _nudge(state: dict[str, torch.Tensor]) -> None:
    name = sorted(name for name, tensor in state.items() if tensor.is_floating_point())[0]
    state[name].view(-1)[0] += 0.5


def _score(cli, checkpoint, image, out):
    return cli("fewshot", "score", "--checkpoint", checkpoint, "--support", image.parent, "--query", image,
               "--out", out, "--support-cache", out / "cache")


def test_a_checkpoint_whose_weights_hold_nan_is_refused_naming_it(cli, rd4ad_checkpoint, default_fewshot_checkpoint,
                                                                   phantom_head, tmp_path):
    """Row: every score was nan and every image was labelled normal."""
    image = phantom_head.root / "test" / "good" / "000.png"
    diverged = rewrite_checkpoint(rd4ad_checkpoint, tmp_path / "diverged.safetensors", edit=_poison,
                                  keep_header=False)
    outcome = cli("predict", "--checkpoint", diverged, image, "--out", tmp_path / "o", "--threshold", "0.5")
    assert_clean_error(outcome, str(diverged), "NaN or infinite weights", out=tmp_path / "o")
    fewshot = rewrite_checkpoint(default_fewshot_checkpoint, tmp_path / "fs.safetensors", edit=_poison,
                                 keep_header=False)
    outcome = _score(cli, fewshot, image, tmp_path / "s")
    assert_clean_error(outcome, str(fewshot), "NaN or infinite weights", out=tmp_path / "s")
    outcome = cli("serve", "--checkpoint", fewshot, "--port", "0")
    assert_clean_error(outcome, str(fewshot))


@pytest.mark.parametrize("nudge_header", [False, True], ids=["weights edited", "metadata edited"])
def test_an_edited_checkpoint_is_refused(cli, rd4ad_checkpoint, phantom_head, tmp_path, nudge_header):
    """Row: an edit of the weights was scored silently (an edit of the metadata was already caught)."""
    if nudge_header:
        import json

        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        source = rd4ad_checkpoint / "model.safetensors"
        with safe_open(str(source), framework="pt") as handle:
            header = handle.metadata()
        meta = json.loads(header["medad"])
        edited = tmp_path / "edited.safetensors"
        save_file(load_file(str(source)), str(edited), metadata={**header, "medad": json.dumps({**meta, "epochs": 9})})
        expected = "metadata"
    else:
        edited = rewrite_checkpoint(rd4ad_checkpoint, tmp_path / "edited.safetensors", edit=_nudge)
        expected = "weights"
    outcome = cli("predict", "--checkpoint", edited, phantom_head.root / "test" / "good" / "000.png",
                  "--out", tmp_path / "o")
    assert_clean_error(outcome, str(edited), expected, out=tmp_path / "o")


@pytest.mark.parametrize(("make", "named"), [
    (lambda tmp: tmp / "absent.safetensors", "checkpoint not found"),
    (lambda tmp: (tmp / "garbage.safetensors").write_bytes(b"\x00" * 64) and tmp / "garbage.safetensors",
     "damaged or not a safetensors file"),
    (lambda tmp: (tmp / "empty.safetensors").write_bytes(b"") or tmp / "empty.safetensors",
     "damaged or not a safetensors file"),
], ids=["missing", "garbage", "zero bytes"])
def test_missing_and_damaged_checkpoints_are_refused(cli, phantom_head, tmp_path, make, named):
    checkpoint = make(tmp_path)
    outcome = cli("predict", "--checkpoint", checkpoint, phantom_head.root / "test" / "good" / "000.png",
                  "--out", tmp_path / "o")
    assert_clean_error(outcome, named, out=tmp_path / "o")


def test_a_checkpoint_of_the_wrong_kind_is_refused(cli, rd4ad_checkpoint, default_fewshot_checkpoint, phantom_head,
                                                   tmp_path):
    image = phantom_head.root / "test" / "good" / "000.png"
    assert_clean_error(cli("predict", "--checkpoint", default_fewshot_checkpoint, image, "--out", tmp_path / "a"),
                       "fewshot score", out=tmp_path / "a")
    outcome = _score(cli, rd4ad_checkpoint, image, tmp_path / "b")
    assert_clean_error(outcome, "'rd4ad' checkpoint", out=tmp_path / "b")


def test_a_nan_score_never_becomes_a_verdict():
    """Row: a NaN score was labelled "normal (score ≤ threshold …)"."""
    threshold = fixed_threshold(1.0)
    for score in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteScoreError):
            threshold.verdict(score)
        with pytest.raises(NonFiniteScoreError):
            threshold.is_abnormal(score)
    with pytest.raises(NonFiniteScoreError, match="b.png"):
        check_scores(np.array([0.1, np.nan]), ["a.png", "b.png"], "checkpoint x")
    with pytest.raises(NonFiniteScoreError, match="finite"):
        Threshold(float("nan"), "support-leave-one-out", "from supports whose scores were NaN")


def test_nan_scores_from_a_model_end_as_an_error_naming_the_input(cli, rd4ad_checkpoint, phantom_head, tmp_path,
                                                                  monkeypatch):
    """However a model comes to score NaN, the CLI writes no verdict and names the input."""
    from medad.models.rd4ad import RD4AD

    def nan_predict(self, images):
        return torch.full((len(images), *images.shape[-2:]), float("nan")), torch.full((len(images),), float("nan"))

    monkeypatch.setattr(RD4AD, "predict", nan_predict)
    image = phantom_head.root / "test" / "good" / "000.png"
    outcome = cli("predict", "--checkpoint", rd4ad_checkpoint, image, "--out", tmp_path / "o", "--threshold", "1")
    assert_clean_error(outcome, "000.png", "nan score", out=tmp_path / "o")
    assert not (tmp_path / "o" / "scores.csv").exists()


def test_export_refuses_an_unwritable_out_as_the_other_commands_do(cli, rd4ad_checkpoint):
    """Row: a raw "[Errno 2] … '/proc/.medad.onnx.…'" naming the temporary file."""
    outcome = cli("export", "--checkpoint", rd4ad_checkpoint, "--out", "/proc/x.onnx")
    assert_clean_error(outcome, "--out /proc", "cannot be written")
    assert ".medad" not in outcome.err
