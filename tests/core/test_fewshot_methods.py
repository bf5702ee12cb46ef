"""Few-shot commands without a checkpoint: the bundled generic student adapted to the references by default
(``--method adapted_student``), the bundled D²4FAD-NN with ``--method d24fad_nn``, training-free PatchCore-K with
``--method patchcore``, another model with ``--checkpoint`` (a run folder, a demo folder or a file)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from medad.checkpoints import MODEL_FILE
from medad.cli.main import main
from medad.engine.run_folder import DEMO_MODEL_DIR
from medad.engine.scorers import DEFAULT_FEWSHOT_METHOD, checkpoint_file, load_scorer
from medad.pretrained import BUNDLED_NAME, GENERIC_NAME, generic_student_checkpoint


def _score(args: list[str], phantom_chest, out) -> dict[str, float]:
    supports = [str(s.path) for s in phantom_chest.train[:3]]
    queries = [str(s.path) for s in phantom_chest.test[4:9]]
    assert main(["fewshot", "score", *args, "--support", *supports, "--query", *queries, "--out", str(out),
                 "--support-cache", str(out.parent / "cache")]) == 0
    with open(out / "scores.csv") as handle:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}


def test_score_with_d24fad_nn_uses_the_bundled_model_and_says_so(phantom_chest, tmp_path, capsys):
    bundled = _score(["--method", "d24fad_nn"], phantom_chest, tmp_path / "bundled")
    assert BUNDLED_NAME in capsys.readouterr().out
    record = json.loads((tmp_path / "bundled/scores.json").read_text())
    assert record["checkpoint"]["name"].startswith(BUNDLED_NAME)
    patchcore = _score(["--method", "patchcore"], phantom_chest, tmp_path / "patchcore")
    assert "PatchCore-K on efficientnet_lite0 (training-free, no checkpoint)" in capsys.readouterr().out
    assert bundled.keys() == patchcore.keys() and bundled != patchcore
    # the cached supports of one scorer are not served to the other
    assert _score(["--method", "patchcore"], phantom_chest, tmp_path / "again") == pytest.approx(patchcore, abs=1e-6)


def test_checkpoint_accepts_a_run_folder_a_demo_folder_and_a_file(default_fewshot_checkpoint, phantom_chest, tmp_path,
                                                                 capsys):
    demo = tmp_path / "demo"
    (demo / DEMO_MODEL_DIR).mkdir(parents=True)
    shutil.copy(default_fewshot_checkpoint / MODEL_FILE, demo / DEMO_MODEL_DIR / MODEL_FILE)
    assert checkpoint_file(demo) == demo / DEMO_MODEL_DIR / MODEL_FILE
    assert checkpoint_file(default_fewshot_checkpoint) == default_fewshot_checkpoint / MODEL_FILE
    from_run = _score(["--checkpoint", str(default_fewshot_checkpoint)], phantom_chest, tmp_path / "run")
    from_demo = _score(["--checkpoint", str(demo)], phantom_chest, tmp_path / "from_demo")
    assert from_run == from_demo
    assert f"checkpoint {demo / DEMO_MODEL_DIR / MODEL_FILE}" in capsys.readouterr().out
    assert main(["fewshot", "score", "--checkpoint", str(tmp_path), "--support", str(phantom_chest.train[0].path),
                 "--query", str(phantom_chest.test[0].path), "--out", str(tmp_path / "x")]) == 2
    assert "holds no model.safetensors" in capsys.readouterr().err


def test_patchcore_with_a_checkpoint_and_evaluate_without_out_are_refused(default_fewshot_checkpoint, phantom_chest,
                                                                          tmp_path, capsys):
    assert main(["fewshot", "score", "--method", "patchcore", "--checkpoint", str(default_fewshot_checkpoint),
                 "--support", str(phantom_chest.train[0].path), "--query", str(phantom_chest.test[0].path),
                 "--out", str(tmp_path / "x")]) == 2
    assert "--method patchcore is training-free and takes no --checkpoint" in capsys.readouterr().err
    assert main(["fewshot", "evaluate", "--task", str(phantom_chest.root)]) == 2
    assert "needs --out" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown few-shot method"):
        load_scorer("rd4ad")


def test_evaluate_with_patchcore_needs_no_checkpoint(phantom_chest, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["fewshot", "evaluate", "--method", "patchcore", "--task", str(phantom_chest.root), "--k", "2",
                 "--draws", "2", "--out", str(out), "--no-report"]) == 0
    assert "PatchCore-K" in capsys.readouterr().out
    (metrics_file,) = out.glob("fewshot_metrics_*.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["checkpoint"]["method"] == "patchcore" and len(metrics["records"]) == 2
    assert len(list(out.glob("heatmaps_*_k2/index.csv"))) == 1


def test_export_writes_patchcore_by_default_and_scores_as_fewshot_score(phantom_chest, tmp_path):
    pytest.importorskip("onnxruntime")
    from medad.export import onnx_session, run_onnx
    from medad.cli.inputs import load_inputs

    supports = [str(s.path) for s in phantom_chest.train[:3]]
    queries = [str(s.path) for s in phantom_chest.test[4:9]]
    out = tmp_path / "patchcore.onnx"
    assert main(["export", "--support", *supports, "--out", str(out), "--quiet"]) == 0  # the exportable default
    _, scores = run_onnx(onnx_session(out), load_inputs(queries, 128, flag="test").tensor())
    cli = _score(["--method", "patchcore"], phantom_chest, tmp_path / "cli")
    assert scores.tolist() == pytest.approx([cli[q] for q in queries], abs=1e-3)
    description = json.loads((tmp_path / "patchcore.onnx.json").read_text())
    assert description["method"] == "patchcore" and description["verification"]["max_abs_score_difference"] < 1e-3


def test_the_web_app_imports_nothing_from_the_cli():
    code = ("import sys, medad.serve.app, medad.serve.uploads; "
            "print(sorted(m for m in sys.modules if m.startswith('medad.cli')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_the_default_adapts_the_bundled_generic_student_and_caches_its_supports(phantom_chest, tmp_path, capsys):
    assert DEFAULT_FEWSHOT_METHOD == "adapted_student"
    adapted = _score([], phantom_chest, tmp_path / "adapted")
    assert GENERIC_NAME in capsys.readouterr().out
    record = json.loads((tmp_path / "adapted/scores.json").read_text())
    assert record["checkpoint"]["method"] == "adapted_student" and record["checkpoint"]["name"].startswith(GENERIC_NAME)
    patchcore = _score(["--method", "patchcore"], phantom_chest, tmp_path / "patchcore")
    assert adapted.keys() == patchcore.keys() and adapted != patchcore
    # the second run reads the adapted student from the support cache and scores the same
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2
    assert _score(["--method", "adapted_student"], phantom_chest, tmp_path / "again") == pytest.approx(adapted, abs=1e-5)
    # the bundled student's file, given as a checkpoint, is recognised by its method
    assert load_scorer(None, generic_student_checkpoint()).meta["method"] == "adapted_student"
