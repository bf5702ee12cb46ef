"""`medad train --task a b …`: one model on the union of several tasks' normal images (multi-class), per-task evaluation."""

import json

import pytest
from safetensors.torch import load_file

from medad.cli.main import main
from medad.checkpoints import read_meta

PAIR = "efficientnet_lite0+efficientnet_lite2"


def _train(out, tasks, *extra):
    return main(["train", "--task", *[str(t.root) for t in tasks], "--out", str(out), "--image-size", "64",
                 "--batch-size", "6", "--quiet", *extra])


@pytest.mark.parametrize("method", ["rd4ad", pytest.param("pdd", marks=pytest.mark.slow)])
def test_one_model_trains_on_the_union_and_is_evaluated_per_task(tmp_path, phantom_head, phantom_chest, method):
    out = tmp_path / "run"
    extra = ["--method", method, "--epochs", "1"] + (["--teacher", PAIR] if method == "pdd" else [])
    assert _train(out, [phantom_head, phantom_chest], *extra) == 0
    names = [t.root.name for t in (phantom_head, phantom_chest)]  # a folder task is named after its folder
    config = json.loads((out / "config.json").read_text())
    assert config["train_tasks"] == names and config["task"] == "+".join(names)
    assert config["n_train"] == len(phantom_head.train) + len(phantom_chest.train)
    assert read_meta(out / "model.safetensors")["train_tasks"] == names
    log = json.loads((out / "train_log.json").read_text())
    if method == "pdd":  # every term of Eq. 9 and both students' relative errors, per epoch
        entry = log["per_epoch"][0]
        assert {"loss_kr", "loss_prp", "loss_div"} <= set(entry) and set(entry["relative_error"]) == {"s1", "s2"}
    for task in (phantom_head, phantom_chest):
        metrics_dir = tmp_path / f"eval_{task.name}"
        assert main(["evaluate", "--checkpoint", str(out), "--task", str(task.root), "--out", str(metrics_dir),
                     "--no-report", "--quiet"]) == 0
        metrics = json.loads((metrics_dir / "metrics.json").read_text())
        assert metrics["task"] == task.root.name and metrics["n_test_abnormal"] == len([s for s in task.test if s.label])
    # --resume accepts the same task list and trains on
    weights = load_file(out / "model.safetensors")
    assert _train(out, [phantom_head, phantom_chest], "--epochs", "2", "--resume") == 0
    assert json.loads((out / "train_log.json").read_text())["epochs"] == 2
    assert any((weights[key] != value).any() for key, value in load_file(out / "model.safetensors").items())


def test_a_task_given_twice_and_a_changed_task_list_on_resume_are_refused(tmp_path, phantom_head, phantom_chest, capsys):
    assert _train(tmp_path / "twice", [phantom_head, phantom_head], "--epochs", "1") == 2
    assert f"{phantom_head.root.name} more than once" in capsys.readouterr().err
    assert not (tmp_path / "twice").exists()
    out = tmp_path / "run"
    assert _train(out, [phantom_head, phantom_chest], "--epochs", "1") == 0
    assert _train(out, [phantom_head], "--epochs", "2", "--resume") == 2
    assert "--task" in capsys.readouterr().err
