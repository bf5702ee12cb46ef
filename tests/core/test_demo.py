"""``medad demo``: the default few-shot scorer, PatchCore-K and the bundled D²4FAD-NN on an unseen task in seconds,
saying what it used and where everything is (synthetic phantoms here, and it says so)."""

from __future__ import annotations

import json

import pytest

from medad.cli.main import main
from medad.pretrained import bundled_checkpoint, generic_student_checkpoint

METHODS = ["adapted_student", "patchcore", "d24fad_nn"]


@pytest.mark.slow
def test_demo_scores_with_every_method_and_says_where_things_are(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--synthetic", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert "SYNTHETIC PHANTOM images" in printed.err and "--data-root" in printed.err and "--support" in printed.err
    lines = printed.out.strip().splitlines()
    for method in METHODS:
        assert any(line.split()[:2] == [method, "AUROC"] for line in lines)
    assert lines[-3].startswith(f"adapted_student model: {generic_student_checkpoint()}")
    assert lines[-2].startswith(f"d24fad_nn model: {bundled_checkpoint()}") and lines[-1].startswith(f"outputs: {out}")
    record = json.loads((out / "demo.json").read_text())
    assert list(record["methods"]) == METHODS and record["k"] == 4
    assert record["methods"]["d24fad_nn"]["model"]["name"].startswith("medad bundled")
    assert record["methods"]["adapted_student"]["model"]["name"].startswith("medad bundled generic student")
    assert 0.0 <= record["methods"]["patchcore"]["image_auroc"] <= 1.0 and record["support_caveat"]
    assert len(list((out / "heatmaps").glob("*.png"))) == 16 and (out / "heatmaps" / "index.csv").is_file()
    # the report reads the demo: one record per method
    from medad.report import collect_inputs

    (source,) = collect_inputs([out]).results
    assert [r["method"] for r in source.records] == METHODS
