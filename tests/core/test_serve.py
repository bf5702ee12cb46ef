"""``medad serve``'s app through Flask's test client: scores as the CLI's, validation errors in the page, CSV."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("flask", reason="medad serve needs Flask (pip install -e '.[test,deploy]')")

from medad.cli.main import main  # noqa: E402
from medad.engine.scorers import load_scorer  # noqa: E402
from medad.serve.app import FewShotScorer, create_app  # noqa: E402
from medad.serve.uploads import Limits  # noqa: E402


@pytest.fixture(scope="module")
def app_and_folder(fewshot_checkpoint, tmp_path_factory):
    scorers = {"d24fad_nn": load_scorer(checkpoint=fewshot_checkpoint), "patchcore": load_scorer("patchcore")}
    workdir = tmp_path_factory.mktemp("serve")
    limits = Limits(max_file_bytes=200_000, max_references=4, max_queries=6)
    app = create_app(FewShotScorer(scorers, "d24fad_nn"), workdir, limits)
    return app.test_client(), workdir


def _files(paths):
    return [(io.BytesIO(path.read_bytes()), path.name) for path in paths]


def _post(client, references, queries, threshold="auto", method=""):
    return client.post("/score", data={"references": _files(references), "queries": _files(queries),
                                       "threshold": threshold, "method": method}, content_type="multipart/form-data")


def _page_scores(html: str) -> dict[str, float]:
    rows = re.findall(r'<td class="name">([^<]+)</td>\s*<td class="score" data-score="([^"]+)"', html)
    return {name: float(score) for name, score in rows}


def test_page_scores_verdicts_and_csv_equal_the_cli(app_and_folder, fewshot_checkpoint, phantom_chest, tmp_path):
    client, workdir = app_and_folder
    references = [sample.path for sample in phantom_chest.train[:3]]
    queries = [sample.path for sample in phantom_chest.test[4:9]]  # normal and lesion images
    response = _post(client, references, queries)
    html = response.get_data(as_text=True)
    assert response.status_code == 200, html
    page = _page_scores(html)

    out = tmp_path / "cli"
    assert main(["fewshot", "score", "--checkpoint", str(fewshot_checkpoint), "--support", *map(str, references),
                 "--query", *map(str, queries), "--out", str(out), "--support-cache", str(tmp_path / "cache"),
                 "--quiet"]) == 0
    with open(out / "scores.csv") as handle:
        cli = {row["path"]: row for row in csv.DictReader(handle)}
    assert len(page) == len(queries)
    for path in queries:
        assert page[path.name] == pytest.approx(float(cli[str(path)]["score"]), abs=1e-6)
    threshold = json.loads((out / "scores.json").read_text())["threshold"]
    assert f"{threshold:.6g}" in html and "leave-one-out" in html
    assert "give K ≥ 8 references or a number" in html  # K = 3: the threshold's caveat, in the page's terms
    verdicts = re.findall(r'<td class="verdict">(ABNORMAL|normal)', html)
    assert verdicts == ["ABNORMAL" if cli[str(path)]["abnormal"] == "True" else "normal" for path in queries]

    run_id = re.search(r'href="/runs/([0-9a-f]{32})/scores.csv"', html).group(1)
    download = client.get(f"/runs/{run_id}/scores.csv")
    assert download.status_code == 200 and "attachment" in download.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(download.get_data(as_text=True))))
    assert [row["file"] for row in rows] == [path.name for path in queries]
    assert [float(row["score"]) for row in rows] == [page[path.name] for path in queries]
    heatmaps = re.findall(r'src="(/runs/[0-9a-f]{32}/heatmaps/[^"]+\.png)"', html)
    assert len(heatmaps) == len(queries)
    figure = client.get(heatmaps[0])
    assert figure.status_code == 200 and figure.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(path.is_relative_to(workdir) for path in workdir.rglob("*"))
    assert client.get("/runs/../../etc/passwd").status_code == 404
    assert client.get(f"/runs/{'0' * 32}/scores.csv").status_code == 404


def test_bad_uploads_are_refused_with_the_reason_in_the_page(app_and_folder, phantom_chest, tmp_path):
    client, _ = app_and_folder
    good = [sample.path for sample in phantom_chest.train[:2]]
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = tmp_path / "big.png"
    big.write_bytes(phantom_chest.train[0].path.read_bytes() + b"\0" * 250_000)
    cases = [(good, [text], "query notes.png: not a PNG, JPEG or DICOM file"),
             (good, [big], "query big.png: larger than the limit"),
             (good * 3, good, "at most 4 reference images per request (6 given)"),
             ([], good, "give at least 1 reference image"),
             (good, good, "or a finite number, got &#39;high&#39;")]
    for index, (references, queries, message) in enumerate(cases):
        response = _post(client, references, queries, threshold="high" if index == 4 else "auto")
        html = response.get_data(as_text=True)
        assert response.status_code == 400 and message in html, (message, html[-800:])
        assert 'id="error"' in html and 'id="scores"' not in html
    huge = tmp_path / "huge.png"  # over the request limit (10 files of the per-file limit): refused by Flask
    huge.write_bytes(b"\0" * 2_100_000)
    response = _post(client, good, [huge])
    assert response.status_code == 413 and "larger than the limit of" in response.get_data(as_text=True)


def test_a_fixed_threshold_decides_the_verdicts_and_one_reference_gives_none(app_and_folder, phantom_chest):
    client, _ = app_and_folder
    queries = [sample.path for sample in phantom_chest.test[:4]]
    html = _post(client, [phantom_chest.train[0].path], queries, threshold="-1e9").get_data(as_text=True)
    assert html.count("ABNORMAL (score &gt; threshold -1e+09)") == 4
    assert "fixed threshold" in html and 'id="warning"' not in html
    html = _post(client, [phantom_chest.train[0].path], queries).get_data(as_text=True)
    assert "no automatic threshold from a single reference" in html
    assert html.count('<td class="verdict">—</td>') == 4 and len(_page_scores(html)) == 4


def test_the_page_offers_both_methods_and_patchcore_scores_as_the_cli(app_and_folder, phantom_chest, tmp_path):
    client, _ = app_and_folder
    page = client.get("/").get_data(as_text=True)
    assert 'value="d24fad_nn" checked' in page and 'value="patchcore"' in page and "training-free" in page
    references = [sample.path for sample in phantom_chest.train[:3]]
    queries = [sample.path for sample in phantom_chest.test[4:7]]
    html = _post(client, references, queries, method="patchcore").get_data(as_text=True)
    assert "Scored with PatchCore-K" in html and 'value="patchcore" checked' in html
    out = tmp_path / "cli"
    assert main(["fewshot", "score", "--method", "patchcore", "--support", *map(str, references), "--query",
                 *map(str, queries), "--out", str(out), "--support-cache", str(tmp_path / "cache"), "--quiet"]) == 0
    with open(out / "scores.csv") as handle:
        cli = {Path(row["path"]).name: float(row["score"]) for row in csv.DictReader(handle)}
    assert _page_scores(html) == pytest.approx(cli, abs=1e-5)
    response = _post(client, references, queries, method="rd4ad")
    assert response.status_code == 400 and "method: expected one of d24fad_nn, patchcore" in response.get_data(as_text=True)
