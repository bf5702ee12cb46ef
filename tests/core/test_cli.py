"""End-to-end CLI runs on synthetic phantom tasks (seconds each) and the CLI's bad-input errors."""

import json
import shutil

import pytest
from sklearn.metrics import roc_auc_score

from medad.cli.main import main


@pytest.fixture(scope="module")
def rd4ad_run(tmp_path_factory, rd4ad_checkpoint):
    """A copy of the session's 1-epoch RD4AD run that these tests may extend."""
    out = tmp_path_factory.mktemp("rd4ad_run") / "run"
    shutil.copytree(rd4ad_checkpoint, out)
    return out


def test_train_writes_checkpoint_config_and_log(rd4ad_run):
    config = json.loads((rd4ad_run / "config.json").read_text())
    assert config["options"]["image_size"] == 64 and config["versions"]["torch"]
    assert json.loads((rd4ad_run / "train_log.json").read_text())["epochs"] == 1
    assert (rd4ad_run / "model.safetensors").is_file() and (rd4ad_run / "training_state.pt").is_file()


def test_evaluate_scores_every_test_image(rd4ad_run, phantom_head, tmp_path):
    assert main(["evaluate", "--checkpoint", str(rd4ad_run), "--task", str(phantom_head.root),
                 "--out", str(tmp_path), "--heatmaps"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_test_normal"] + metrics["n_test_abnormal"] == len(phantom_head.test)
    rows = json.loads((tmp_path / "scores.json").read_text())["images"]
    expected = roc_auc_score([row["label"] for row in rows], [row["score"] for row in rows])
    assert metrics["image_auroc"] == pytest.approx(expected) and metrics["pixel_aupro"] is not None
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == len(phantom_head.test)


def test_predict_a_folder_writes_scores_and_overlays(rd4ad_run, phantom_head, tmp_path):
    folder = phantom_head.root / "test" / "lesion"
    assert main(["predict", "--checkpoint", str(rd4ad_run), str(folder), "--out", str(tmp_path),
                 "--threshold", "0.5"]) == 0
    rows = json.loads((tmp_path / "scores.json").read_text())["images"]
    assert len(rows) == len(list(folder.iterdir())) and all("abnormal" in row for row in rows)
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == len(rows)


def test_resume_after_interruption_continues_epochs(rd4ad_run, phantom_head):
    assert main(["train", "--method", "rd4ad", "--task", str(phantom_head.root), "--out", str(rd4ad_run),
                 "--epochs", "2", "--image-size", "64", "--batch-size", "6", "--resume"]) == 0
    log = json.loads((rd4ad_run / "train_log.json").read_text())
    assert log["epochs"] == 2 and len(log["loss"]) == 2


def test_damaged_or_foreign_checkpoints_are_clear_errors(rd4ad_run, phantom_head, tmp_path, capsys):
    damaged = tmp_path / "model.safetensors"
    damaged.write_bytes((rd4ad_run / "model.safetensors").read_bytes()[:100])
    assert main(["evaluate", "--checkpoint", str(damaged), "--task", str(phantom_head.root)]) == 2
    assert "damaged" in capsys.readouterr().err
    assert main(["fewshot", "score", "--checkpoint", str(rd4ad_run), "--support", str(phantom_head.root / "train"),
                 "--query", str(phantom_head.root / "test"), "--out", str(tmp_path)]) == 2
    assert "is a 'rd4ad' checkpoint, not 'd24fad_nn' or 'd24fad'" in capsys.readouterr().err


@pytest.mark.slow
def test_fewshot_train_evaluate_score(tmp_path, phantom_head, phantom_chest, fewshot_checkpoint, capsys):
    model_dir = fewshot_checkpoint  # trained by `medad fewshot train` (tests/conftest.py)
    evaluated = tmp_path / "evaluated"
    assert main(["fewshot", "evaluate", "--checkpoint", str(model_dir), "--task", str(phantom_head.root),
                 "--k", "2", "4", "--draws", "2", "--out", str(evaluated), "--no-report"]) == 0
    (report_file,) = evaluated.glob("fewshot_metrics_*.json")
    report = json.loads(report_file.read_text())
    assert len(report["records"]) == 4 and set(report["summary"]) == {"2", "4"}
    cache = tmp_path / "support_cache"
    args = ["fewshot", "score", "--checkpoint", str(model_dir), "--support", str(phantom_head.root / "train" / "good"),
            "--query", str(phantom_head.root / "test"), "--out", str(tmp_path / "scored"),
            "--heatmaps", str(tmp_path / "maps"), "--support-cache", str(cache)]
    assert main(args) == 0
    first = json.loads((tmp_path / "scored" / "scores.json").read_text())
    assert first["threshold"] is not None and len(first["images"]) == len(phantom_head.test)
    assert len(list(cache.glob("*.safetensors"))) == 1
    assert main([*args, "--overwrite"]) == 0  # second call reuses the cached support features
    second = json.loads((tmp_path / "scored" / "scores.json").read_text())
    assert [r["score"] for r in first["images"]] == pytest.approx([r["score"] for r in second["images"]], abs=1e-5)
    capsys.readouterr()
    assert main(["fewshot", "evaluate", "--checkpoint", str(model_dir), "--task", str(phantom_chest.root),
                 "--k", "2"]) == 2
    assert "was used to train" in capsys.readouterr().err
    assert main(["fewshot", "evaluate", "--checkpoint", str(model_dir), "--task", str(phantom_head.root),
                 "--k", "64", "--draws", "1", "--out", str(evaluated), "--overwrite"]) == 2
    assert "K=64 support images requested but only 12" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fewshot", "score", "--checkpoint", str(model_dir), "--support", str(phantom_head.root / "train"),
                 "--query", str(empty), "--out", str(tmp_path / "x")]) == 2
    assert "--query" in capsys.readouterr().err and not (tmp_path / "x").exists()
