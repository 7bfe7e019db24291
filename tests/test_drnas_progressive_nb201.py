"""DrNAS's progressive variant on NAS-Bench-201 (ROBUST-SPEC §3.5; §7 test 10; issue 10).

On NB201 the progressive search runs 50 epochs with K = 4 partial channels on all 5 ops, then prunes every edge
to its 3 strongest ops and widens the partial mixed ops to K = 2 by copying channels, for 50 more epochs. The
widening is not function-preserving (§3.5), so what is checked is what it promises: every new channel is a copy
of the channel it names (weights, conv biases, BN statistics, momentum buffers), the optimiser holds the new
parameters, and the parameter count grows by the hand count of §1.3 (a cell holds 6·(10C² + 2C) at C channels).
"""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import run_cli, shared_data_root
from dartsnas.checkpoint import load_checkpoint
from dartsnas.cli import main
from dartsnas.errors import ConfigError
from dartsnas.loops.search import SearchConfig, derive_from_run, run_search
from dartsnas.methods import EpochContext, build_method
from dartsnas.methods.registry import DRNAS_NB201_PROGRESSIVE
from dartsnas.methods.variants import dirichlet_concentration, widen_mixed_op
from dartsnas.space.nb201 import NB201_PRIMITIVES, NB201Genotype
from dartsnas.supernet.nb201 import NB201PartialMixedOp, NB201SearchCell, NB201SearchNetwork
from test_reliability import Kind, _assert_same_run

torch.set_num_threads(1)

ROOT = shared_data_root()
TABLE = None if ROOT is None else ROOT / "nasbench201" / "nb201_accuracies.csv"
needs_table = pytest.mark.skipif(
    TABLE is None or not TABLE.is_file(), reason="shared/data/nasbench201/nb201_accuracies.csv is not present"
)

ARGS = "partial_channels=4,prune_epoch=1,prune_keep=3,widen_to=2"  # §3.5's K and ops, pruned at epoch 1


def progressive(C=8, args=ARGS):
    m = build_method("drnas", "nb201", args)
    torch.manual_seed(0)
    net = NB201SearchNetwork(C=C, num_cells=1, **m.network_options())
    m.attach(net)
    return m, net


def edges(net):
    return [op for cell in net.cells if isinstance(cell, NB201SearchCell) for op in cell.edges]


def cell_weights(C: int) -> int:
    """§1.3 [CALC]: a search cell (conv biases, affine-free BN) holds 6·(10C² + 2C) weights."""
    return 6 * (10 * C * C + 2 * C)


# ------------------------------------------------------------------------------------ configuration and preset


def test_nb201_progressive_preset_and_checks():
    cfg = SearchConfig.build("nb201-drnas-progressive")
    assert (cfg.space, cfg.method, cfg.epochs, cfg.method_args) == ("nb201", "drnas", 100, DRNAS_NB201_PROGRESSIVE)
    base = SearchConfig.build("nb201-drnas")
    assert vars(cfg) == {**vars(base), "method_args": DRNAS_NB201_PROGRESSIVE}
    (c,) = build_method("drnas", "nb201", cfg.method_args, cfg.epochs).components[1:]
    assert (c.prune_epoch, c.prune_keep, c.widen_to) == (50, 3, 2)  # §3.5: K 4 -> 2, 5 -> 3 ops, 50 + 50 epochs
    pc = build_method("drnas", "nb201", cfg.method_args).components[0]
    assert pc.K == 4 and not pc.edge_norm
    with pytest.raises(ConfigError, match="prune_epoch: 50 is never reached in 50 epochs"):
        build_method("drnas", "nb201", cfg.method_args, epochs=50)
    with pytest.raises(ConfigError, match="K=3"):  # the second stage's K must divide every stage's C too
        SearchConfig.build("nb201-proxy", method="drnas", method_args="partial_channels=4,prune_epoch=1,widen_to=3")


# ------------------------------------------------------------------------------------ pruning


def test_pruned_ops_get_weight_zero_and_the_sample_renormalises_over_survivors():
    m, net = progressive()
    drnas = m.components[1]
    with torch.no_grad():
        net.alphas_cell.copy_(torch.randn(6, 5, generator=torch.Generator().manual_seed(1)))
    m.on_epoch_start(net, 0, EpochContext(4))
    assert drnas.masks is None and bool((net.mixing_weights()[0] > 0).all())
    m.on_epoch_start(net, 1, EpochContext(4))
    (mask,) = drnas.masks
    # the survivors: the 3 largest α of each row, found here by sorting
    order = net.alphas_cell.detach().argsort(dim=-1, descending=True)
    assert torch.equal(mask, torch.zeros(6, 5, dtype=torch.bool).scatter_(-1, order[:, :3], True))
    torch.manual_seed(7)
    (w,) = net.mixing_weights()
    assert bool((w[~mask] == 0).all()) and bool((w[mask] > 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones(6))
    # the same Dirichlet draw, renormalised over the survivors by hand in float64
    torch.manual_seed(7)
    theta = torch.distributions.Dirichlet(dirichlet_concentration(net.alphas_cell.detach())).sample().double()
    ref = torch.where(mask, theta, 0.0)
    ref = ref / ref.sum(-1, keepdim=True)
    torch.testing.assert_close(w.detach().double(), ref, rtol=1e-5, atol=1e-7)
    # selection stays among the survivors even when a pruned op's α is the largest
    with torch.no_grad():
        net.alphas_cell[~mask] = 10.0
    g = m.genotype(net)
    assert all(mask[r, NB201_PRIMITIVES.index(op)] for r, (op, _) in enumerate(g.edges))


# ------------------------------------------------------------------------------------ widening


def test_nb201_widening_copies_every_channel_with_its_bias_statistics_and_momentum():
    """§7 test 10 on an NB201 edge: after widening, every new channel equals the channel it copies."""
    torch.manual_seed(0)
    op = NB201PartialMixedOp(16, 4)  # 4 channels through the ops
    with torch.no_grad():
        for mod in op.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2)
                mod.num_batches_tracked.fill_(17)
    momentum = {p: torch.randn_like(p) for p in op.parameters()}
    new, maps, new_mom = widen_mixed_op(op, 2, NB201_PRIMITIVES, torch.Generator().manual_seed(3), momentum)
    assert isinstance(new, NB201PartialMixedOp) and (new.K, new.part) == (2, 8)
    cmap = maps[4]
    assert torch.equal(cmap[:4], torch.arange(4)) and len(cmap) == 8 and int(cmap.max()) < 4
    convs = [(a, b) for a, b in zip(op.modules(), new.modules()) if isinstance(a, torch.nn.Conv2d)]
    bns = [(a, b) for a, b in zip(op.modules(), new.modules()) if isinstance(a, torch.nn.BatchNorm2d)]
    assert len(convs) == len(bns) == 2  # nor_conv_1x1 and nor_conv_3x3; skip and the pooling have no weights
    for a, b in convs:
        assert b.bias is not None and b.weight.shape[:2] == (8, 8)
        for i in range(8):
            assert torch.equal(b.bias[i], a.bias[cmap[i]])
            assert torch.equal(new_mom[b.bias][i], momentum[a.bias][cmap[i]])
            for j in range(8):
                assert torch.equal(b.weight[i, j], a.weight[cmap[i], cmap[j]])
                assert torch.equal(new_mom[b.weight][i, j], momentum[a.weight][cmap[i], cmap[j]])
    for a, b in bns:
        assert torch.equal(b.running_mean, a.running_mean[cmap]) and torch.equal(b.running_var, a.running_var[cmap])
        assert int(b.num_batches_tracked) == 17
    x, w = torch.randn(2, 16, 6, 6), torch.softmax(torch.randn(5), 0)
    assert new(x, w).shape == (2, 16, 6, 6)


def test_progressive_nb201_network_widens_every_edge_and_keeps_training():
    m, net = progressive(C=8)
    blocks = [id(p) for cell in net.cells if not isinstance(cell, NB201SearchCell) for p in cell.parameters()]
    opt = torch.optim.SGD(net.weights(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 4])
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    n0 = sum(p.numel() for p in net.weights())
    m.on_epoch_start(net, 1, EpochContext(2, opt))
    assert m.components[1].widened and all(op.K == 2 for op in edges(net))
    # stages C = 8, 16, 32: the ops see C/4 channels before and C/2 after
    grown = sum(cell_weights(C // 2) - cell_weights(C // 4) for C in (8, 16, 32))
    assert sum(p.numel() for p in net.weights()) - n0 == grown
    assert [id(p) for cell in net.cells if not isinstance(cell, NB201SearchCell) for p in cell.parameters()] == blocks
    assert [id(p) for g in opt.param_groups for p in g["params"]] == [id(p) for p in net.weights()]
    assert all("momentum_buffer" in opt.state[p] for op in edges(net) for p in op.parameters())
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(p.grad is not None for op in edges(net) for p in op.parameters())
    # resume: a fresh network rebuilt from the method state takes the widened state_dict and optimiser state
    state = copy.deepcopy(m.state_dict())
    m2, net2 = progressive(C=8)
    opt2 = torch.optim.SGD(net2.weights(), lr=0.1, momentum=0.9)
    m2.load_state_dict(state)
    m2.restore(net2, opt2)
    net2.load_state_dict(net.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert [id(p) for g in opt2.param_groups for p in g["params"]] == [id(p) for p in net2.weights()]
    net.eval()
    net2.eval()
    with torch.no_grad():  # the pruned mixing is a Dirichlet draw: same draw, same output
        torch.manual_seed(3)
        a = net(x)
        torch.manual_seed(3)
        assert torch.equal(net2(x), a)


# ------------------------------------------------------------------------------------ a tiny search


def tiny_cfg(**over):
    sets = {
        "space": "nb201",
        "nb201_cells": 1,
        "init_channels": 8,
        "epochs": 3,
        "method": "drnas",
        "method_args": ARGS,
        "progress": False,
        "device": "cpu",
        "data_dir": None if TABLE is None or not TABLE.is_file() else str(ROOT),  # the table only; data: builtin
        **over,
    }
    return SearchConfig.build("tiny", sets)


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory):
    run = tmp_path_factory.mktemp("drnas-nb201") / "run"
    return run, run_search(tiny_cfg(), run, log=lambda *_: None)


def test_tiny_progressive_search_crosses_the_prune_epoch(tiny_search):
    run, res = tiny_search
    assert isinstance(res.genotype, NB201Genotype) and len(res.history) == 3
    ck = load_checkpoint(run / "checkpoint.pt", expect_kind="cnn-search")
    (drnas,) = ck["method"]["components"][1:]
    assert drnas["widened"] is True
    (mask,) = drnas["masks"]
    assert mask.shape == (6, 5) and mask.sum(-1).tolist() == [3] * 6
    assert all(mask[r, NB201_PRIMITIVES.index(op)] for r, (op, _) in enumerate(res.genotype.edges))
    # the widened supernet: the 3×3 conv of edge 0 in the first cell (C = 8) sees C/2 = 4 channels
    assert ck["model"]["cells.0.edges.0._ops.2.1.weight"].shape == (4, 4, 3, 3)
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in res.history)
    assert derive_from_run(run) == res.genotype  # derive rebuilds the widened supernet from the method state


@needs_table
def test_tiny_progressive_search_ends_in_a_table_row(tiny_search):
    import json

    from dartsnas.space.lookup import lookup

    run, res = tiny_search
    results = json.loads((run / "results.json").read_text())
    row = lookup(res.genotype, TABLE)
    assert results["arch_str"] == res.genotype.arch_str() == row.arch_str
    assert results["table"]["row"] == row.index == res.history[-1]["table_row"] and 0 <= row.index < 15_625


# ------------------------------------------------------------------------------------ resume after SIGKILL

CLI = [
    "search",
    "--preset",
    "tiny",
    "--space",
    "nb201",
    "--no-progress",
    "--method",
    "drnas",
    "--set",
    "nb201_cells=1",
    "--set",
    "init_channels=8",
    "--set",
    "epochs=3",
    "--set",
    f"method_args={ARGS}",
]
# 4 steps per epoch (64 images, batch 16); the widening is at the start of epoch 2 (index 1, steps 5-8).
# Killed at step 6 the run resumes from epoch 1's checkpoint, before the widening, and widens after the resume;
# killed at step 10 it resumes from a widened checkpoint.
KIND = Kind("cnn-search", CLI, ["search"], 6, 0, "", "")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in this process (one thread, as the subprocesses); the tests only read it."""
    ref = tmp_path_factory.mktemp("drnas-nb201-ref") / "ref"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.delenv("DARTSNAS_FAULT", raising=False)
        assert main([*CLI, "--run-dir", str(ref)]) == 0
    return ref


@pytest.mark.parametrize("kill_step", [6, 10], ids=["before-widening", "after-widening"])
def test_resume_across_the_widening_is_bit_identical(kill_step, reference, tmp_path, cli_main):
    run = tmp_path / "run"
    first = run_cli(*CLI, "--run-dir", str(run), env={"DARTSNAS_FAULT": f"kill_at_step:{kill_step}"})
    assert first.returncode == -9, first.stderr
    killed = load_checkpoint(run / "checkpoint.pt", expect_kind="cnn-search")
    assert killed["method"]["components"][1]["widened"] is (kill_step == 10)
    second = cli_main("search", "--resume", str(run), "--no-progress")  # the kill above is a real process
    assert second.returncode == 0, second.stderr
    _assert_same_run(reference, run, KIND)
