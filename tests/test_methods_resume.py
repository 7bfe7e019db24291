"""Resume after SIGKILL is bit-identical for the methods that keep state or schedules (issue 10):
GDAS's τ and Gumbel draws, DrNAS's pruning masks and widening, PC-DARTS's warm-up, DARTS-PT's projections.

The killed run is a subprocess (the SIGKILL is the point); the reference, the resume and the derive's search
run in this process (no interpreter start-up; the same thread count, see conftest.cli_main)."""

from __future__ import annotations

import pytest
import torch

from conftest import run_cli
from dartsnas.checkpoint import load_checkpoint
from test_search import _metrics

TINY = ["--preset", "tiny", "--no-progress", "--set", "epochs=3"]
CASES = {
    "gdas": [],
    "drnas": ["--set", "method_args=prune_epoch=1,prune_keep=3"],
    "pc-darts": ["--set", "method_args=K=2,warmup_epochs=1"],
    "darts-pt": ["--set", "method_args=tune_epochs=2,interval=1,seed=4"],
    # progressive DrNAS: prune and widen K 4 -> 2 at the start of epoch 1; killed in epoch 2 (step 10), so the
    # resume starts from a widened checkpoint
    "drnas-progressive": [
        "--set",
        "method_args=partial_channels=4,prune_epoch=1,prune_keep=3,widen_to=2",
        "--set",
        "init_channels=8",
    ],
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_resume_after_kill_is_bit_identical(method, tmp_path, cli_main):
    args = [*TINY, "--method", method.removesuffix("-progressive"), *CASES[method]]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert cli_main("search", *args, "--run-dir", str(ref)).returncode == 0
    step = 10 if method == "drnas-progressive" else 6
    first = run_cli("search", *args, "--run-dir", str(run), env={"DARTSNAS_FAULT": f"kill_at_step:{step}"})
    assert first.returncode == -9  # killed mid-epoch, after the previous epoch's checkpoint
    second = cli_main("search", "--resume", str(run), "--no-progress")
    assert second.returncode == 0, second.stderr
    a = load_checkpoint(ref / "checkpoint.pt", expect_kind="cnn-search")
    b = load_checkpoint(run / "checkpoint.pt", expect_kind="cnn-search")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert repr(a["method"]) == repr(b["method"])
    assert (run / "genotype.json").read_text() == (ref / "genotype.json").read_text()
    assert _metrics(run) == _metrics(ref)


@pytest.mark.parametrize("method,extra", [("beta-darts", []), ("pc-darts", CASES["pc-darts"])])
def test_derive_rebuilds_the_method_selection(method, extra, tmp_path, cli_main):
    import json

    run = tmp_path / "run"
    assert cli_main("search", *TINY, "--method", method, *extra, "--run-dir", str(run)).returncode == 0
    res = cli_main("derive", str(run))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == json.loads((run / "genotype.json").read_text())
