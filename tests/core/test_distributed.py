"""Multi-process training: torchrun with 2 CPU processes (gloo) trains what one process trains with the same
global batch, resumes a run, and leaves one set of files written by rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from medad.cli.main import main
from medad.engine.distributed import Workers

#: largest absolute difference allowed between the weights of the two runs: they differ only in the order of
#: float sums (gradients averaged over ranks instead of summed in one batch); measured 6e-7 (an unweighted
#: average of the ranks' losses: 2e-2)
TOLERANCE = 1e-4


def test_a_rank_weights_its_share_so_the_ranks_average_the_whole_batch():
    values = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0])  # per-row losses of a global batch of 5 rows
    shares = [Workers(rank, 2).share_of(torch.arange(5)) for rank in (0, 1)]
    assert [rows.tolist() for rows, _ in shares] == [[0, 2, 4], [1, 3]]
    averaged = sum(values[rows].mean() * weight for rows, weight in shares) / 2
    assert averaged.item() == pytest.approx(values.mean().item())
    rows, weight = Workers(2, 3).share_of(torch.arange(2))  # a batch shorter than the ranks: rank 2 gets none
    assert rows.tolist() == [0] and weight == 0.0
    assert Workers().share_of(torch.arange(3))[1] == 1.0


@pytest.mark.slow
def test_two_processes_resume_a_run_and_train_what_one_process_trains(phantom_chest, tmp_path):
    # 11 queries per task and epoch in episodes of 5, 5 and 1 query: shares of 3 and 2 rows, and of 1 and none
    common = ["fewshot", "train", "--tasks", str(phantom_chest.root), "--image-size", "64", "--k", "2",
              "--batch-size", "5", "--max-queries-per-task", "11", "--device", "cpu", "--quiet"]
    one, two = tmp_path / "one_process", tmp_path / "two_processes"
    assert main([*common, "--out", str(one), "--epochs", "2"]) == 0
    assert main([*common, "--out", str(two), "--epochs", "1"]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "medad", *common, "--out", str(two), "--epochs", "2", "--resume"],
                              capture_output=True, text=True, env=env, timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]

    single, parallel = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert single.keys() == parallel.keys()
    difference = max((single[name] - parallel[name]).abs().max().item() for name in single)
    assert difference < TOLERANCE
    logs = [json.loads((folder / "train_log.json").read_text()) for folder in (one, two)]
    assert logs[1]["epochs"] == 2 and logs[1]["loss"] == pytest.approx(logs[0]["loss"], abs=1e-5)
    config = json.loads((two / "config.json").read_text())
    assert config["processes"] == 2 and len(config["resumed"]) == 1
    assert sorted(entry.name for entry in two.iterdir()) == ["config.json", "model.safetensors", "train_log.json",
                                                             "training_state.pt"]
