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
