"""Generic students (medad.engine.generic_student): which sources they learn from, what they leave out."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from medad.backbones import build_teacher
from medad.data.phantom import make_phantom_task
from medad.data.samples import Sample
from medad.engine.generic_student import (GenericStudentRecipe, own_sources, source_features, source_samples,
                                          train_generic_student_on)


def test_tasks_made_from_another_tasks_images_share_its_source():
    sources = ("brain_tumor", "brainmri", "headct", "zhanglab")
    assert own_sources("brainmri", sources) == {"brain_tumor", "brainmri"}
    assert own_sources("brain_tumor_pituitary", sources) == {"brain_tumor", "brainmri"}
    assert own_sources("headct_synthetic", sources) == {"headct"}
    assert own_sources("zhanglab", sources) == {"zhanglab"}
    assert own_sources("acrima", sources) == set()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    head = make_phantom_task(root / "head", n_train=6, n_test_normal=1, n_test_abnormal=1, size=64, seed=1)
    chest = make_phantom_task(root / "chest", n_train=6, n_test_normal=1, n_test_abnormal=1, size=64, seed=2,
                              style="chest")
    return root, head, chest


def test_source_samples_are_evenly_spaced_training_normals(sources):
    root, head, _ = sources
    picked = source_samples(str(root / "head"), per_source=3)
    assert [s.path.name for s in picked] == [s.path.name for s in head.train[::2]]


def test_the_target_is_left_out_and_near_copies_of_its_images_dropped(sources, tmp_path):
    root, head, chest = sources
    teacher = build_teacher("efficientnet_lite0", weights=None).eval()
    recipe = GenericStudentRecipe(sources=(str(root / "head"), str(root / "chest")), image_size=32, per_source=6,
                                  steps=2, batch_size=2)
    # an enlarged, JPEG-encoded copy of one chest training image among the images the student will score
    copy = tmp_path / "copy.jpg"
    Image.open(chest.train[3].path).convert("RGB").resize((96, 96)).save(copy, quality=90)
    avoid = [Sample(copy, 0, "good")]
    state, trained_on = train_generic_student_on(teacher, recipe, str(root / "head"), avoid, cache=tmp_path / "c",
                                                 progress=False)
    assert trained_on["sources"] == [str(root / "chest")] and trained_on["left_out"] == [str(root / "head")]
    assert trained_on["dropped_near_copies"] == {str(root / "chest"): 1}
    assert trained_on["images"] == 2 * 5  # five kept images and their flips
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # the features were cached: a second call reads them instead of the images
    cached = source_features(str(root / "chest"), teacher, recipe, tmp_path / "c")
    assert (tmp_path / "c").is_dir() and len(cached[0]) == 2 * 6


def test_no_source_left_is_an_error(sources):
    root, _, _ = sources
    recipe = GenericStudentRecipe(sources=(str(root / "head"),), image_size=32, steps=1)
    teacher = build_teacher("efficientnet_lite0", weights=None).eval()
    with pytest.raises(ValueError, match="no source task is left"):
        train_generic_student_on(teacher, recipe, str(root / "head"), [], progress=False)
