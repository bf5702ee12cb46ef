"""``medad report``: one self-contained HTML page from result files and run folders (synthetic inputs)."""

import argparse
import base64
import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from medad.cli import report_cmd
from medad.report import build_report, mean_std_cell

AUROCS = [0.90, 0.92, 0.94]  # mean 92.0, population std 1.63 → "92.0 ± 1.6"


def _results_file(path):
    records = [{"method": "rd4ad", "task": "headct", "backbone": "efficientnet_lite0", "image_size": 128, "k": None,
                "seed": seed, "support_draw": None, "n_test_normal": 40, "n_test_abnormal": 100,
                "image_auroc": auroc, "image_ap": 0.95, "image_f1max": 0.9, "pixel_auroc": None, "pixel_aupro": None}
               for seed, auroc in enumerate(AUROCS)]
    records += [{"method": method, "task": "brain_tumor", "backbone": "efficientnet_lite0", "image_size": 128,
                 "k": k, "seed": 0, "support_draw": draw, "n_test_normal": 20, "n_test_abnormal": 20,
                 "image_auroc": base + 0.01 * draw + 0.02 * k, "image_ap": 0.8, "image_f1max": 0.8,
                 "pixel_auroc": None, "pixel_aupro": None}
                for method, base in (("d24fad", 0.7), ("patchcore", 0.6)) for k in (2, 4) for draw in range(3)]
    path.write_text(json.dumps({"benchmark": "tiny", "command": "python benchmarks/tiny.py", "machine": "test",
                                "created": "2026-01-01", "records": records, "speed": []}))
    return path


def _png(path, value):
    Image.fromarray(np.full((16, 32, 3), value, dtype=np.uint8)).save(path)


def _scores(n=20, seed=0):
    rng = np.random.default_rng(seed)
    labels = [0] * (n // 2) + [1] * (n // 2)
    scores = [float(rng.normal(1.0 + label, 0.3)) for label in labels]
    paths = [f"/data/test/{'lesion' if label else 'good'}/{i:03d}.png" for i, label in enumerate(labels)]
    return paths, labels, scores


def _run_folder(folder):
    """What `medad evaluate --heatmaps` leaves: metrics.json, scores.csv, heatmaps/<stem>.png."""
    folder.mkdir()
    paths, labels, scores = _scores()
    (folder / "metrics.json").write_text(json.dumps({
        "command": "evaluate", "argv": ["/usr/bin/medad", "evaluate", "--task", "phantom"], "task": "phantom",
        "checkpoint": {"method": "rd4ad", "teacher": "efficientnet_lite0", "image_size": 64},
        "n_test_normal": 10, "n_test_abnormal": 10, "image_auroc": 0.875, "image_ap": 0.9, "image_f1max": 0.85,
        "pixel_auroc": 0.8, "pixel_aupro": 0.6}))
    with (folder / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "label"])
        writer.writerows(zip(paths, scores, labels, strict=True))
    (folder / "heatmaps").mkdir()
    for i, path in enumerate(paths):
        stem = path.rsplit("/", 1)[1].removesuffix(".png")
        _png(folder / "heatmaps" / f"{stem}.png", 10 * i)
    return folder, scores, labels


def _fewshot_folder(folder):
    """What `medad fewshot evaluate` leaves: metrics, per-draw scores, support weights, heat maps."""
    folder.mkdir()
    records = []
    for draw in range(2):
        paths, labels, scores = _scores(seed=draw)
        records.append({"k": 2, "support_draw": draw, "support": ["/s/a.png", "/s/b.png"], "n_test_normal": 10,
                        "n_test_abnormal": 10, "image_auroc": 0.8 + 0.1 * draw, "image_ap": 0.8,
                        "image_f1max": 0.8, "pixel_auroc": None, "pixel_aupro": None})
        with (folder / f"scores_phantom_k2_d{draw}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label", "score"])
            writer.writerows(zip(paths, labels, scores, strict=True))
        weights = np.random.default_rng(draw).dirichlet([1, 1], size=len(paths))
        (folder / f"support_weights_phantom_k2_d{draw}.json").write_text(json.dumps({
            "task": "phantom", "k": 2, "support_draw": draw, "support": ["/s/a.png", "/s/b.png"], "queries": paths,
            "labels": labels, "scores": scores, "weights": weights.tolist()}))
    (folder / "fewshot_metrics_phantom.json").write_text(json.dumps({
        "command": "fewshot evaluate", "task": "phantom", "records": records,
        "checkpoint": {"method": "d24fad", "teacher": "efficientnet_lite0", "image_size": 64}}))
    (folder / "heatmaps_phantom_k2").mkdir()
    for i, (path, label) in enumerate(zip(*_scores()[:2], strict=True)):
        stem = path.rsplit("/", 1)[1].removesuffix(".png")
        _png(folder / "heatmaps_phantom_k2" / f"{'abnormal' if label else 'normal'}_{stem}.png", 200 - 5 * i)
    return folder


def _embedded_pngs(page):
    return re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)


def test_mean_std_cell():
    assert mean_std_cell(AUROCS) == "92.0 ± 1.6"
    assert mean_std_cell([0.5]) == "50.0"
    assert mean_std_cell([None, None]) == "—"


def test_results_and_runs_give_one_self_contained_page(tmp_path):
    results = _results_file(tmp_path / "tiny.json")
    run, scores, labels = _run_folder(tmp_path / "run")
    fewshot = _fewshot_folder(tmp_path / "fs")
    report = build_report([results, run, fewshot], tmp_path / "report", title="Tiny report")
    page = report.path.read_text()
    assert report.path == tmp_path / "report" / "index.html" and "<title>Tiny report</title>" in page
    # every figure is embedded and also saved beside the page, byte for byte
    embedded = _embedded_pngs(page)
    # summary, bars, ROC, distributions, 2 heat-map grids, weights
    assert len(embedded) == len(report.figures) == 7
    for name, data in zip(report.figures, embedded, strict=True):
        assert base64.b64decode(data) == (tmp_path / "report" / name).read_bytes()
    assert {"summary_tiny.png", "bars_tiny.png", "roc.png", "score_distributions.png"} <= set(report.figures)
    # the page opens with the summary: the headline method against its baseline; long tables are folded away
    assert page.index("<h2>Summary</h2>") < page.index("<h2>Results</h2>")
    assert re.search(r"<td>d24fad</td><td class=num>[\d.]+</td><td>patchcore</td><td class=num>[\d.]+</td>"
                     r"<td class=num>\+10\.0</td><td class=num>1 / 1</td>", page)
    assert page.count("<details><summary>table:") == 3
    assert any(name.startswith("heatmaps_run") for name in report.figures)
    assert any(name.startswith("heatmaps_fs") for name in report.figures)
    assert any(name.startswith("support_weights_fs") for name in report.figures)
    assert "src='file:" not in page and "<img src='" not in page.replace("<img alt=", "")
    # the table: mean ± std over seeds, per task × method (× K)
    assert "92.0 ± 1.6" in page
    d24_k2 = [0.7 + 0.04 + 0.01 * d for d in range(3)]
    assert mean_std_cell(d24_k2) in page and "<b>" + mean_std_cell(d24_k2) + "</b>" in page  # best of K=2
    assert "87.5" in page and "medad evaluate --task phantom" in page  # the run folder's single record
    assert "Not available" not in page


def test_chart_rows_of_several_settings_name_each_setting():
    """A results file run at two image sizes must chart one bar per (method, size): before, the chart drew
    whichever size came first under the bare method name."""
    from medad.report.summary import family_groups, named_by_setting
    rows = [{"method": method, "backbone": "efficientnet_lite0", "image_size": size, "task": "t", "k": 4}
            for size in (128, 224) for method in ("patchcore", "round 2")]
    named = named_by_setting(rows)
    assert [row["method"] for row in named] == [f"{method} · efficientnet_lite0, {size} px"
                                                for size in (128, 224) for method in ("patchcore", "round 2")]
    assert family_groups(named) == [("main methods", [row["method"] for row in named])]
    assert named_by_setting(rows[:2]) == rows[:2]  # one setting: names unchanged
    one_each = [rows[0], {**rows[3], "method": "pdd"}]  # each method in one setting of its own: unchanged
    assert named_by_setting(one_each) == one_each


def test_heatmap_grid_ranks_by_score(tmp_path):
    import medad.report as report_module

    run, scores, labels = _run_folder(tmp_path / "run")
    inputs = report_module.collect_inputs([run])
    (heat,) = inputs.heatmaps
    assert heat.ranked and len(heat.tiles) == 16
    ranked = sorted(scores, reverse=True)
    assert [t.score for t in heat.tiles[:8]] == pytest.approx(ranked[:8])
    assert [t.score for t in heat.tiles[8:]] == pytest.approx(sorted(scores)[:8])
    assert all(t.label == (1 if "lesion" in t.name else 0) for t in heat.tiles)


def test_records_of_another_protocol_are_left_out_of_the_tables(tmp_path):
    honest = build_report([_results_file(tmp_path / "tiny.json")], tmp_path / "honest").path.read_text()
    path = _results_file(tmp_path / "mixed.json")
    data = json.loads(path.read_text())
    data["records"] += [{**record, "image_auroc": 0.99, "protocol": "released"} for record in data["records"]
                        if record["method"] == "patchcore"]
    path.write_text(json.dumps(data))
    report = build_report([path], tmp_path / "mixed")
    cell = mean_std_cell([0.6 + 0.01 * draw + 0.04 for draw in range(3)])  # patchcore, K=2, honest draws only
    assert cell in honest and cell in report.path.read_text()
    assert any("6 records of another evaluation protocol (released) left out" in note for note in report.notes)


def test_figures_named_by_a_results_file_are_embedded_and_missing_ones_noted(tmp_path):
    from medad.report.figures import comparison_figure, pyplot, save

    path = _results_file(tmp_path / "tiny.json")
    images = np.random.default_rng(0).random((3, 3, 16, 16))
    maps = {"A": np.random.default_rng(1).random((3, 16, 16)), "B": np.zeros((3, 16, 16))}
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[0, 4:8, 4:8] = True
    fig = comparison_figure(images, maps, [1, 0, 0], masks, "tiny")
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "ground truth", "A", "B"] and len(fig.axes) == 12
    save(fig, tmp_path / "tiny_heatmaps_headct.png")
    pyplot().close(fig)
    data = json.loads(path.read_text())
    data["figures"] = {"headct": {"file": "tiny_heatmaps_headct.png", "caption": "A vs B"},
                       "gone": {"file": "absent.png", "caption": "lost"}}
    path.write_text(json.dumps(data))
    report = build_report([path], tmp_path / "out")
    page = report.path.read_text()
    assert "tiny_heatmaps_headct.png" in report.figures and "A vs B" in page
    assert (tmp_path / "out" / "tiny_heatmaps_headct.png").read_bytes() == (
        tmp_path / "tiny_heatmaps_headct.png").read_bytes()
    assert len(_embedded_pngs(page)) == len(report.figures) == 3  # summary, bars, the named figure
    assert any("absent.png" in note and "not found" in note for note in report.notes)


def test_results_alone_say_what_is_missing(tmp_path):
    report = build_report([_results_file(tmp_path / "tiny.json")], tmp_path / "out")
    page = report.path.read_text()
    assert report.figures == ["summary_tiny.png", "bars_tiny.png"] and len(_embedded_pngs(page)) == 2
    assert page.count("class='missing'") == 3
    for text in ("ROC curves and score distributions need per-image scores", "no heat-map folders",
                 "support weights come from `medad fewshot evaluate` runs"):
        assert text in page and any(text in note for note in report.notes)


def test_unreadable_inputs_are_clear_messages(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    empty = tmp_path / "empty"
    empty.mkdir()
    report = build_report([broken, other, empty, tmp_path / "nowhere"], tmp_path / "out")
    notes = "\n".join(report.notes)
    assert "broken.json: could not be read" in notes
    assert "other.json: not a benchmark result file" in notes
    assert "empty: holds neither a run" in notes
    assert "nowhere: no such file or folder" in notes
    assert "No results" in report.path.read_text()

    parser = argparse.ArgumentParser()
    report_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(_results_file(tmp_path / "tiny.json")), "--out", str(tmp_path / "cli")])
    assert args.func(args) == 0 and (tmp_path / "cli" / "index.html").is_file()


def test_report_of_a_missing_path_is_an_error_and_writes_nothing(tmp_path, capsys):
    """Defect: `medad report nothere` wrote an index.html and never said the path was missing."""
    from medad.cli.main import main

    assert main(["report", str(tmp_path / "nothere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medad: error: RUN_OR_RESULTS") and "nothere: no such file or folder" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_fewshot_evaluate_writes_scores_weights_heatmaps_and_report(tmp_path, phantom_head, fewshot_checkpoint):
    from medad.cli.main import main

    model_dir = tmp_path / "fs"
    assert main(["fewshot", "evaluate", "--checkpoint", str(fewshot_checkpoint), "--task", str(phantom_head.root),
                 "--k", "2", "--draws", "2", "--out", str(model_dir)]) == 0
    task = json.loads(next(model_dir.glob("fewshot_metrics_*.json")).read_text())["task"]
    for draw in range(2):
        with (model_dir / f"scores_{task}_k2_d{draw}.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["path", "label", "score"] and len(rows) == len(phantom_head.test)
        weights = json.loads((model_dir / f"support_weights_{task}_k2_d{draw}.json").read_text())
        matrix = np.array(weights["weights"])
        assert matrix.shape == (len(phantom_head.test), 2) and len(weights["support"]) == 2
        assert np.allclose(matrix.sum(1), 1.0, atol=1e-3)  # softmax over the supports, averaged over scales
    heat_dir = model_dir / f"heatmaps_{task}_k2"
    assert len(list(heat_dir.glob("*.png"))) == min(16, len(phantom_head.test))
    with (heat_dir / "index.csv").open() as handle:  # which image, label and score each heat map shows
        index = list(csv.DictReader(handle))
    assert {row["file"] for row in index} == {p.name for p in heat_dir.glob("*.png")}
    with (model_dir / f"scores_{task}_k2_d0.csv").open() as handle:
        scores = {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}
    assert all(float(row["score"]) == pytest.approx(scores[row["path"]]) for row in index)
    page = (model_dir / "report" / "index.html").read_text()
    assert "Not available" not in page and len(_embedded_pngs(page)) == 4  # ROC, distributions, heat maps, weights

    out = tmp_path / "no_report"
    assert main(["fewshot", "evaluate", "--checkpoint", str(fewshot_checkpoint), "--task", str(phantom_head.root),
                 "--k", "2", "--draws", "1", "--out", str(out), "--no-report"]) == 0
    assert (out / f"scores_{task}_k2_d0.csv").is_file() and not (out / "report").exists()


def test_summary_compares_a_preregistered_default_and_leaves_out_superseded_rounds(tmp_path):
    def fewshot_file(name, default_method, base, **extra):
        records = [{"method": method, "role": role, "task": task, "k": 4, "seed": 0, "support_draw": draw,
                    "image_auroc": value + 0.01 * draw}
                   for task in ("headct", "zhanglab") for draw in range(3)
                   for method, role, value in ((default_method, "default", base), ("patchcore", "patchcore", 0.7))]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"benchmark": "fewshot_loo", "command": "c", "machine": "m", "created": "d",
                                    "records": records, **extra}))
        return path

    current = fewshot_file("fewshot_loo", "patchcore[std=0.5]", 0.75)
    earlier = fewshot_file("fewshot_loo_round1", "patchcore[global=1]", 0.6, superseded_by="fewshot_loo")
    page = build_report([current, earlier], tmp_path / "report").path.read_text()
    summary = page[page.index("<h2>Summary</h2>"):page.index("<h2>Results</h2>")]
    assert re.search(r"<td>fewshot_loo</td>.*?<td>patchcore\[std=0\.5\]</td>.*?<td>patchcore</td>.*?"
                     r"<td class=num>\+5\.0</td><td class=num>2 / 2</td>", summary)
    assert "fewshot_loo_round1" not in summary and "patchcore[global=1]" not in summary
    assert "fewshot_loo_round1" in page  # its tables are still in the page, under its own name
