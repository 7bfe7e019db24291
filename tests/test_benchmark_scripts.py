"""The benchmark scripts run (tiny settings, CPU): a broken script would otherwise first fail in scarce GPU
time. (The training benchmark had stopped running when the loop's data source gained the per-rank slice.)
No timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, tmp: Path) -> dict:
    out = tmp / "out.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--device", "cpu", *args, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("graph", ["off", "on"])
def test_train_step_benchmark_runs(tmp_path, graph):
    tiny = ["--init-channels", "4", "--layers", "3", "--batch-size", "8", "--steps", "1", "--warmup", "1"]
    d = _run("train_step.py", *tiny, "--cuda-graph", graph, tmp=tmp_path)
    assert d["steps_per_s"] > 0 and d["switches"]["cuda_graph"] == (graph == "on")
    assert d["switches"]["graph_captured"] is False  # no capture on a CPU


def test_rnn_step_benchmark_runs(tmp_path):
    tiny = ["--search-nhid", "16", "--train-nhid", "16", "--search-batch", "4", "--train-batch", "4"]
    d = _run("rnn_step.py", *tiny, "--ntoken", "100", "--rows", "60", "--steps", "1", "--warmup", "1", tmp=tmp_path)
    assert d["results"] and all(r["steps_per_s"] > 0 for r in d["results"].values())
