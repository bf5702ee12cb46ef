"""``medad demo``: the bundled model and PatchCore-K on an unseen task in seconds, saying what it used and where
everything is (synthetic phantoms here, and it says so)."""

from __future__ import annotations

import json

import pytest

from medad.cli.main import main
from medad.pretrained import bundled_checkpoint


@pytest.mark.slow
def test_demo_scores_with_both_methods_and_says_where_things_are(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--synthetic", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert "SYNTHETIC PHANTOM images" in printed.err and "--data-root" in printed.err and "--support" in printed.err
    lines = printed.out.strip().splitlines()
    assert any(line.split()[:2] == ["d24fad_nn", "AUROC"] for line in lines)
    assert any(line.split()[:2] == ["patchcore", "AUROC"] for line in lines)
    assert lines[-2].startswith(f"model: {bundled_checkpoint()}") and lines[-1].startswith(f"outputs: {out}")
    record = json.loads((out / "demo.json").read_text())
    assert list(record["methods"]) == ["d24fad_nn", "patchcore"] and record["k"] == 4
    assert record["methods"]["d24fad_nn"]["model"]["name"].startswith("medad bundled")
    assert 0.0 <= record["methods"]["patchcore"]["image_auroc"] <= 1.0 and record["support_caveat"]
    assert len(list((out / "heatmaps").glob("*.png"))) == 16 and (out / "heatmaps" / "index.csv").is_file()
    # the report reads the demo: one record per method
    from medad.report import collect_inputs

    (source,) = collect_inputs([out]).results
    assert [r["method"] for r in source.records] == ["d24fad_nn", "patchcore"]
