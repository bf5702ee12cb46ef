"""The web app's upload endpoint under the same cases: a 400 page naming the file or field, no traceback, nothing
written outside the app's folder, and no verdict from a NaN."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from breakit import files_under
from PIL import Image
from test_images import png_bomb

pytest.importorskip("flask", reason="medad serve needs Flask (pip install -e '.[test,deploy]')")

from medad.engine.scorers import load_scorer  # noqa: E402
from medad.serve.app import FewShotScorer, create_app  # noqa: E402
from medad.serve.uploads import Limits, PixelBudget  # noqa: E402


@pytest.fixture(scope="module")
def served(default_fewshot_checkpoint, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("serve")
    scorer = FewShotScorer({"d24fad_nn": load_scorer(checkpoint=default_fewshot_checkpoint)}, "d24fad_nn")
    app = create_app(scorer, workdir, Limits(max_file_bytes=2_000_000, max_references=4, max_queries=4))
    return app.test_client(), workdir, scorer


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _post(client, references: list[tuple[bytes, str]], queries: list[tuple[bytes, str]], threshold="auto"):
    return client.post("/score", data={"references": [(io.BytesIO(data), name) for data, name in references],
                                       "queries": [(io.BytesIO(data), name) for data, name in queries],
                                       "threshold": threshold}, content_type="multipart/form-data")


def _good(phantom_chest, n: int, split="train") -> list[tuple[bytes, str]]:
    samples = getattr(phantom_chest, split)[:n]
    return [(sample.path.read_bytes(), sample.path.name) for sample in samples]


def _bomb_bytes(tmp_path) -> bytes:
    return png_bomb(tmp_path / "bomb.png", 13000).read_bytes()


BAD_QUERIES = {
    "text_as.png": (lambda tmp: b"\x89PNG\r\n\x1a\nnot really", "text_as.png"),
    "notes.txt": (lambda tmp: b"hello", "not a PNG, JPEG or DICOM"),
    "one_pixel.png": (lambda tmp: _png(np.zeros((1, 1), np.uint8)), "1×1"),
    "constant.png": (lambda tmp: _png(np.full((64, 64), 9, np.uint8)), "constant"),
    "bomb.png": (_bomb_bytes, "budget"),
    "truncated.dcm": (lambda tmp: b"\x00" * 128 + b"DICM\x02\x00", "truncated.dcm"),
}


@pytest.mark.parametrize("name", list(BAD_QUERIES))
def test_a_bad_upload_is_refused_naming_it(served, phantom_chest, tmp_path, name):
    client, workdir, _ = served
    make, expected = BAD_QUERIES[name]
    before = files_under(tmp_path)
    response = _post(client, _good(phantom_chest, 3), [(make(tmp_path), name)])
    html = response.get_data(as_text=True)
    assert response.status_code == 400, html
    assert expected in html and "Traceback" not in html
    assert files_under(tmp_path) - before <= {tmp_path / "bomb.png"}


@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf", "banana"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(served, phantom_chest, threshold):
    """Row: a threshold of nan was accepted and every image labelled "normal (score ≤ threshold nan)"."""
    client, _, _ = served
    response = _post(client, _good(phantom_chest, 3), _good(phantom_chest, 1, "test"), threshold=threshold)
    html = response.get_data(as_text=True)
    assert response.status_code == 400 and "threshold" in html and "finite number" in html
    assert "ABNORMAL" not in html and "normal (score" not in html


def test_nan_scores_give_an_error_page_and_no_verdict(served, phantom_chest, monkeypatch):
    client, _, scorer = served

    def nan_predict(images, supports):
        return torch.full((len(images), *images.shape[-2:]), float("nan")), torch.full((len(images),), float("nan"))

    monkeypatch.setattr(scorer.scorers["d24fad_nn"].model, "predict", nan_predict)
    response = _post(client, _good(phantom_chest, 3), _good(phantom_chest, 1, "test"), threshold="1")
    html = response.get_data(as_text=True)
    assert response.status_code == 500 and "cannot become a verdict" in html
    assert "ABNORMAL" not in html and "normal (score" not in html


def test_repeated_references_are_dropped_and_said_so(served, phantom_chest):
    client, _, _ = served
    references = _good(phantom_chest, 2) + [_good(phantom_chest, 1)[0]]
    response = _post(client, references, _good(phantom_chest, 1, "test"))
    html = response.get_data(as_text=True)
    assert response.status_code == 200, html
    assert "is a duplicate of" in html and "dropped" in html


def test_pixels_in_flight_are_bounded():
    """Row: three concurrent 13000² uploads reached 6.3 GB; decoding now waits while the budget is used."""
    budget = PixelBudget(100)
    order: list[str] = []

    def second():
        with budget.hold(80):
            order.append("second")

    with budget.hold(60):
        worker = threading.Thread(target=second)
        worker.start()
        time.sleep(0.2)
        order.append("first done")
        assert budget.in_flight == 60
    worker.join(timeout=5)
    assert order == ["first done", "second"] and budget.in_flight == 0
