"""medad.data.registry without the shared data: root resolution and a miniature headct."""

from __future__ import annotations

import numpy as np
import pytest

from datahelpers import save_png
from medad.data import registry
from medad.data.tasks import TaskLayoutError, load_task


def _mini_headct(root):
    rng = np.random.default_rng(0)
    for i in range(100):
        save_png(root / "headct" / "all" / "normal" / f"{i:03d}.png",
                 rng.integers(0, 256, (8, 8), dtype=np.uint8))
    for i in range(5):
        save_png(root / "headct" / "all" / "hemorrhage" / f"{100 + i}.png",
                 rng.integers(0, 256, (8, 8), dtype=np.uint8))
    return root


def test_root_argument_env_var_and_errors(tmp_path, monkeypatch):
    root = _mini_headct(tmp_path / "my data")
    monkeypatch.setenv(registry.ENV_VAR, str(root))
    assert registry.data_root() == root
    t = load_task("headct")
    assert len(t.train) == 60 and t.counts()["test"]["normal"] == 40
    assert t.counts()["test"]["abnormal"] == 5 and t.meta["protocol"].startswith("seeded")
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="MEDAD_DATA_ROOT"):
        registry.data_root()
    assert registry.data_root(root) == root  # the argument wins over the variable
    with pytest.raises(TaskLayoutError, match="brainmri_yesno does not exist"):
        load_task("brainmri", root=root)


def test_cwd_relative_default(tmp_path, monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    _mini_headct(tmp_path / "shared" / "data")
    (tmp_path / "repo").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    assert registry.data_root().resolve() == (tmp_path / "shared" / "data").resolve()


def test_seeded_protocol_split_is_stable(tmp_path):
    root = _mini_headct(tmp_path)
    a = load_task("headct", root=root, seed=0)
    b = load_task("headct", root=root, seed=0)
    c = load_task("headct", root=root, seed=1)
    assert [s.path for s in a.train] == [s.path for s in b.train]
    assert {s.path for s in a.train} != {s.path for s in c.train}
    assert len(c.train) == 60


def test_list_and_info():
    assert registry.list_tasks() == ["headct", "brainmri", "brain_tumor", "zhanglab",
                                     "nih_cxr", "brats_slices", "acrima", "isic", "mias"]
    info = registry.task_info("brain_tumor")
    assert info["folder"] == "brain_tumor_mri_nickparvar"
    assert info["options"] == {"include_pituitary": False}
    with pytest.raises(KeyError, match="unknown task 'mvtec'"):
        registry.task_info("mvtec")
