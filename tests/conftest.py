"""Shared fixtures: small synthetic phantom tasks (deterministic, written once per session)."""

from __future__ import annotations

import shutil

import pytest

from medad.data.phantom import make_phantom_task


@pytest.fixture(scope="session")
def phantom_head(tmp_path_factory):
    return make_phantom_task(tmp_path_factory.mktemp("phantom_head"), name="phantom_head", n_train=12,
                             n_test_normal=6, n_test_abnormal=6, size=64, seed=0, style="head")


@pytest.fixture(scope="session")
def phantom_chest(tmp_path_factory):
    return make_phantom_task(tmp_path_factory.mktemp("phantom_chest"), name="phantom_chest", n_train=12,
                             n_test_normal=6, n_test_abnormal=6, size=64, seed=1, style="chest")


@pytest.fixture(scope="session")
def rd4ad_checkpoint(tmp_path_factory, phantom_head):
    """A 1-epoch RD4AD run folder at 64 px (read-only for the tests)."""
    from medad.cli.main import main

    out = tmp_path_factory.mktemp("rd4ad_checkpoint") / "run"
    assert main(["train", "--task", str(phantom_head.root), "--out", str(out), "--epochs", "1",
                 "--image-size", "64", "--batch-size", "6", "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def default_fewshot_checkpoint(tmp_path_factory, phantom_chest):
    """A 1-epoch run of the default few-shot method with its default scoring, at 64 px: the one test run of
    `medad fewshot train` that the few-shot tests share (read-only)."""
    from medad.cli.main import main

    out = tmp_path_factory.mktemp("fewshot_checkpoint") / "run"
    assert main(["fewshot", "train", "--tasks", str(phantom_chest.root), "--out", str(out), "--epochs", "1",
                 "--image-size", "64", "--k", "2", "--batch-size", "4", "--quiet"]) == 0
    return out


#: every map the default few-shot model can score with (its default leaves the support map out)
ALL_MAPS = ["support", "tsd", "teacher_nn"]


@pytest.fixture(scope="session")
def fewshot_checkpoint(tmp_path_factory, default_fewshot_checkpoint):
    """The shared few-shot run scoring with all three maps, so the tests also see the support map and its
    learned support weights (read-only).

    The maps are a scoring option (training does not depend on them), so this is the shared run with the
    option set in its checkpoint, as `--model-option maps=[support,tsd,teacher_nn]` at training would write it.
    """
    from medad.checkpoints import MODEL_FILE, load_model, save_model

    out = tmp_path_factory.mktemp("fewshot_all_maps") / "run"
    shutil.copytree(default_fewshot_checkpoint, out)
    weights, meta = load_model(out / MODEL_FILE)
    meta["config"]["maps"] = ALL_MAPS
    save_model(out / MODEL_FILE, weights, meta)
    return out
