"""Shared fixtures: small synthetic phantom tasks (deterministic, written once per session)."""

from __future__ import annotations

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
def fewshot_checkpoint(tmp_path_factory, phantom_chest):
    """A 1-epoch few-shot run folder at 64 px (read-only for the tests).

    It scores with all three maps, so the tests also see the support map and its learned support weights
    (the default leaves that map out).
    """
    from medad.cli.main import main

    out = tmp_path_factory.mktemp("fewshot_checkpoint") / "run"
    assert main(["fewshot", "train", "--tasks", str(phantom_chest.root), "--out", str(out), "--epochs", "1",
                 "--image-size", "64", "--k", "2", "--batch-size", "4", "--quiet",
                 "--model-option", "maps=[support,tsd,teacher_nn]"]) == 0
    return out
