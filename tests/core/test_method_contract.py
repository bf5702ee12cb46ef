"""Every registered method keeps the contract: train one epoch on a phantom, save, load, same maps, and
lesion pixels score above the rest."""

from __future__ import annotations

import pytest
import torch

from medad.backbones import DEFAULT_TEACHER
from medad.data.phantom import make_phantom_task
from medad.engine.fewshot import train_fewshot
from medad.data.images import load_images
from medad.engine.training import TrainConfig, seed_everything
from medad.engine.unsupervised import train_unsupervised
from medad.models.factory import build_model, load_trained_model
from medad.models.registry import methods

SIZE = 64


@pytest.fixture(scope="module")
def images(tmp_path_factory, phantom_chest):
    """A head phantom with enough normal images for one epoch to teach a one-class student."""
    head = make_phantom_task(tmp_path_factory.mktemp("contract"), name="contract_head", n_train=64,
                             n_test_normal=10, n_test_abnormal=10, size=SIZE, seed=5, style="head")
    return {"head_train": load_images(head.train, SIZE)[0], "chest_train": load_images(phantom_chest.train, SIZE)[0],
            "test": load_images(head.test, SIZE)[0], "masks": load_images(head.test, SIZE)[1][:, 0] > 0.5,
            "labels": torch.tensor([s.label for s in head.test])}


def _scores(model, info, images, supports):
    with torch.no_grad():
        if info.kind == "few_shot":
            return model.predict(images["test"], model.prepare_supports(supports))
        return model.predict(images["test"])


#: methods whose lesion check is known to fail, with the reason (a method that starts passing is reported)
KNOWN_FAILURES = {"d24fad": "the paper's model collapses to a constant student (docs/METHODS.md, D²4FAD-NN)"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(methods()))
def test_a_registered_method_trains_saves_loads_and_finds_lesions(name, images, tmp_path):
    info = methods()[name]
    seed_everything(0)
    model = build_model(name, "+".join([DEFAULT_TEACHER] * info.teachers))
    training = info.training
    config = TrainConfig(epochs=1, batch_size=4, lr=training.lr, cosine_schedule=training.cosine_schedule)
    supports = images["head_train"][:4]
    if info.kind == "few_shot":  # trained on another task's normals, scored on an unseen one
        train_fewshot(model, {"phantom_chest": images["chest_train"]}, config, ks=(2,), out_dir=tmp_path)
    else:
        train_unsupervised(model, images["head_train"], config, out_dir=tmp_path)
    model.eval()
    maps, scores = _scores(model, info, images, supports)

    loaded, meta = load_trained_model(tmp_path)
    assert type(loaded) is info.model and meta["method"] == name and meta["image_size"] == SIZE
    loaded_maps, loaded_scores = _scores(loaded, info, images, supports)
    torch.testing.assert_close(loaded_maps, maps)
    torch.testing.assert_close(loaded_scores, scores)

    lesion = images["masks"]
    assert lesion.any()
    assert maps.shape == images["masks"].shape and torch.isfinite(scores).all()
    finds_lesions = bool(maps[lesion].mean() > maps[~lesion].mean())  # lesion pixels score above the rest
    if name in KNOWN_FAILURES:
        assert not finds_lesions, f"{name} now finds the lesions: remove it from KNOWN_FAILURES"
        pytest.xfail(KNOWN_FAILURES[name])
    assert finds_lesions


def test_each_kind_has_one_default_and_every_method_a_budget():
    for kind in ("one_class", "few_shot"):
        registered = methods(kind)
        assert sum(info.default for info in registered.values()) == 1 and next(iter(registered.values())).default
    for info in methods().values():
        assert info.training.epochs > 0 and info.training.batch_size > 0 and info.summary
        assert (info.training.max_queries_per_task is not None) == (info.kind == "few_shot")
