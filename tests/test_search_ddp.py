"""Data-parallel CNN search (issue 11, item 4): two gloo processes under torchrun against one process.

BatchNorm normalises with the statistics of the batch it sees, so a rank holding 8 of the 16 images of a
global batch computes different activations from one process holding all 16 (SyncBatchNorm exists only on
GPUs). The one-process reference therefore forwards every batch as the same two halves, one after the other
(the same per-half BN statistics) and takes the cross-entropy over the concatenated logits, which for equal
halves is the mean of the two halves' means: the global-batch loss the two ranks average. With that, the
weights and alphas must agree to float rounding, first and second order; without it (the plain one-process
run) they must not, which shows the comparison can fail. BN running statistics are buffers (averaged over
the ranks each epoch, accumulated half by half in the reference), not parameters, and are not compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import SRC
from dartsnas.checkpoint import load_checkpoint
from dartsnas.loops import search_hooks
from dartsnas.loops.search import SearchConfig, run_search

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

SETTINGS = {"epochs": 1, "subset": 32}  # tiny preset: batch 16, two bilevel steps


def _reference(tmp_path, order: int, halves: bool, monkeypatch) -> dict:
    if halves:
        build = search_hooks.build_search_model

        def build_halves(*args, **kwargs):
            net = build(*args, **kwargs)
            forward = net.forward
            net.forward = lambda x: torch.cat([forward(part) for part in x.chunk(2)])
            return net

        monkeypatch.setattr(search_hooks, "build_search_model", build_halves)
    cfg = SearchConfig.build("tiny", {**SETTINGS, "order": order, "progress": False})
    run = tmp_path / f"one-{order}-{halves}"
    run_search(cfg, run_dir=run, log=lambda *a, **k: None)
    monkeypatch.undo()
    return {"ck": load_checkpoint(run / "checkpoint.pt"), "dir": run}


def _two_process(tmp_path, order: int) -> dict:
    run = tmp_path / f"two-{order}"
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("DARTSNAS_FAULT", None)
    sets = [a for k, v in {**SETTINGS, "order": order}.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "dartsnas",
            "search",
            "--preset",
            "tiny",
            *sets,
            "--no-progress",
            "--run-dir",
            str(run),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "device cpu x2" in proc.stdout
    return {"ck": load_checkpoint(run / "checkpoint.pt"), "dir": run}


def _parameters(ck: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ck["model"].items() if "running_" not in k and "num_batches" not in k}


def _max_difference(a: dict, b: dict) -> float:
    pa, pb = _parameters(a["ck"]), _parameters(b["ck"])
    assert pa.keys() == pb.keys()
    return max((pa[k] - pb[k]).abs().max().item() for k in pa)


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 2])
def test_two_gloo_ranks_match_one_process(tmp_path, monkeypatch, order):
    two = _two_process(tmp_path, order)
    one = _reference(tmp_path, order, True, monkeypatch)
    plain = _reference(tmp_path, order, False, monkeypatch)
    a, b = two["ck"], one["ck"]
    assert a["global_step"] == b["global_step"] == 2
    pa, pb = _parameters(a), _parameters(b)
    assert "alphas_normal" in pa and "alphas_reduce" in pa
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-5, atol=1e-6, msg=name)
    # per-half BatchNorm matters far above the tolerance (so the steps moved the parameters, too)
    assert _max_difference(two, plain) > 1e-4
    # the records (sums over the ranks) equal the reference's: global-batch losses, both halves counted
    ra = json.loads((two["dir"] / "metrics.jsonl").read_text().splitlines()[0])
    rb = json.loads((one["dir"] / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("train_loss", "train_acc", "arch_step_val_loss"):
        assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), key
    # rank 0's genotype (every rank's: the search checks that the ranks agree each epoch) is the reference's
    assert ra["genotype"] == rb["genotype"]
    assert json.loads((two["dir"] / "genotype.json").read_text()) == json.loads(
        (one["dir"] / "genotype.json").read_text()
    )


def test_augment_slices_equal_the_whole_batch():
    """Each rank augments only its slice, drawing the random numbers for the whole batch: the slices put
    together are the one-process batch bit for bit (crop, flip, cutout), and the generator ends where the
    whole batch leaves it."""
    from dartsnas.data.images import augment

    x = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    whole_gen = torch.Generator().manual_seed(5)
    whole = augment(x, whole_gen, mean, std, pad=2, cutout=4)
    parts, gens = [], []
    for lo, hi in ((0, 4), (4, 7), (7, 10)):
        gen = torch.Generator().manual_seed(5)
        parts.append(augment(x[lo:hi], gen, mean, std, pad=2, cutout=4, part=(lo, 10)))
        gens.append(gen)
    assert torch.equal(torch.cat(parts), whole)
    for gen in gens:
        assert torch.equal(gen.get_state(), whole_gen.get_state())
    again = augment(x, torch.Generator().manual_seed(6), mean, std, pad=2, cutout=4)
    assert not torch.equal(again, whole)  # the draws matter


def test_distributed_search_refuses_uneven_batches_and_methods():
    from dartsnas.errors import ConfigError
    from dartsnas.loops.search import _check_distributed

    _check_distributed(SearchConfig.build("tiny"), 4)  # 16 images over 4 ranks: fine
    with pytest.raises(ConfigError, match="divisible by the 3 processes"):
        _check_distributed(SearchConfig.build("tiny"), 3)
    with pytest.raises(ConfigError, match="sdarts-rs does not run data-parallel"):
        _check_distributed(SearchConfig.build("tiny", {"method": "sdarts-rs"}), 2)
