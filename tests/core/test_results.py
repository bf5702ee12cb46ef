"""The benchmarks' shared helpers: the recorded command line (by which a re-run resumes) and other results."""

from __future__ import annotations

import json

from medad.results import BenchmarkResults, benchmark_command, read_records


def test_the_command_line_is_the_script_and_its_quoted_arguments():
    assert benchmark_command("speed.py", []) == "python benchmarks/speed.py"
    assert benchmark_command("rd4ad_unsupervised.py", ["--tasks", "headct", "a b"]) == \
        "python benchmarks/rd4ad_unsupervised.py --tasks headct 'a b'"
    assert benchmark_command("export_latency.py", ["--threads", "1"], environment="OMP_NUM_THREADS=1") == \
        "OMP_NUM_THREADS=1 python benchmarks/export_latency.py --threads 1"
    # options that only split the work between processes are not part of the command that regenerates it all
    assert benchmark_command("pdd.py", ["--seeds", "2", "1", "--ablation-seeds", "--steps", "5", "--seeds=3"],
                             pieces=("--seeds", "--ablation-seeds")) == "python benchmarks/pdd.py --steps 5"


def test_records_of_another_benchmark(tmp_path):
    assert read_records("missing", tmp_path) == []
    results = BenchmarkResults("done", "python benchmarks/done.py", directory=tmp_path)
    results.add_record({"method": "rd4ad", "task": "headct", "seed": 0, "image_auroc": 0.9})
    assert read_records("done", tmp_path) == [{"method": "rd4ad", "task": "headct", "seed": 0, "image_auroc": 0.9}]
    resumed = BenchmarkResults("done", "python benchmarks/done.py", directory=tmp_path)
    assert resumed.has(method="rd4ad", task="headct", seed=0) and not resumed.has(seed=1)


def test_records_no_longer_current_are_dropped_on_read_and_merge(tmp_path):
    command = "python benchmarks/sel.py"
    old = BenchmarkResults("sel", command, directory=tmp_path)
    for seed in (0, 1):
        old.add_record({"method": "m", "task": "t", "seed": seed, "selection": "a"})
    current = BenchmarkResults("sel", command, directory=tmp_path, keep=lambda r: r["selection"] == "b")
    assert current.records == []
    # another process still holding the old records writes them back; the current run's save drops them again
    old.add_record({"method": "m", "task": "t", "seed": 2, "selection": "a"})
    current.add_record({"method": "m", "task": "t", "seed": 0, "selection": "b"})
    assert current.records == [{"method": "m", "task": "t", "seed": 0, "selection": "b"}]
    assert read_records("sel", tmp_path) == current.records


def test_processes_sharing_a_file_keep_each_others_nested_entries(tmp_path):
    command = "python benchmarks/nested.py"
    first = BenchmarkResults("nested", command, directory=tmp_path)
    second = BenchmarkResults("nested", command, directory=tmp_path)
    first.data["selection"] = {"tasks": {"brainmri": {"a": 0.75}}}
    second.data["selection"] = {"tasks": {"brainmri": {"a": 0.5}}, "chosen": "a"}
    first.save()
    first.data["selection"]["tasks"]["brainmri"]["b"] = 0.8  # added after the other process read the file
    first.save()
    second.save()
    merged = json.loads((tmp_path / "nested.json").read_text())["selection"]
    assert merged == {"tasks": {"brainmri": {"a": 0.5, "b": 0.8}}, "chosen": "a"}  # the saving process wins ties
    first.refresh()  # without saving: learns what the other process wrote, over values it had not changed since
    assert first.data["selection"] == merged
    second.add_record({"method": "m", "task": "t", "seed": 0})
    assert not first.has(method="m")
    first.refresh()
    assert first.has(method="m", seed=0)


def test_an_entry_rewritten_by_one_process_is_not_reverted_by_another_holding_the_old_one(tmp_path):
    command = "python benchmarks/rewrite.py"
    setup = BenchmarkResults("rewrite", command, directory=tmp_path)
    setup.data["scores"] = {"a": {"version": 1}, "b": {"version": 1}}
    setup.save()
    first = BenchmarkResults("rewrite", command, directory=tmp_path)
    second = BenchmarkResults("rewrite", command, directory=tmp_path)
    first.data["scores"]["a"] = {"version": 2}  # each process recomputes its own entry
    second.data["scores"]["b"] = {"version": 2}
    first.save()
    second.save()  # still holds a's old version, which it never changed
    saved = json.loads((tmp_path / "rewrite.json").read_text())
    assert saved["scores"] == {"a": {"version": 2}, "b": {"version": 2}}
    first.refresh()
    assert first.data["scores"] == saved["scores"]
    first.data["scores"]["a"] = {"recomputed": True}  # a whole entry replaced: the keys it lost stay lost
    first.save()
    assert json.loads((tmp_path / "rewrite.json").read_text())["scores"]["a"] == {"recomputed": True}


def test_a_resumed_run_restores_every_section_but_the_header(tmp_path):
    command = "python benchmarks/sections.py"
    first = BenchmarkResults("sections", command, directory=tmp_path)
    first.data.update(seconds_per_fold={"headct": 12.5}, figures={"headct": {"file": "a.png", "caption": "c"}},
                      machine="another machine")
    first.save()
    resumed = BenchmarkResults("sections", command, directory=tmp_path)
    assert resumed.data["seconds_per_fold"] == {"headct": 12.5} and resumed.data["figures"]["headct"]["file"] == "a.png"
    assert resumed.data["machine"] != "another machine" and resumed.data["speed"] == []
    other = BenchmarkResults("sections", "python benchmarks/sections.py --other", directory=tmp_path)
    assert "seconds_per_fold" not in other.data  # another command starts afresh
