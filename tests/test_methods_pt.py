"""ROBUST-SPEC §7 test 11: DARTS-PT (projection by masking, schedule, tuning learning rate), and composition."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from dartsnas.methods import EpochContext, build_method
from dartsnas.methods.pt import (
    PerturbationSelection,
    default_tune_epochs,
    projection_epochs,
    tuning_lr,
)
from dartsnas.supernet.network import SearchNetwork

torch.set_num_threads(1)


class Toy(nn.Module):
    """One edge, three ops: ``skip`` (a constant, uninformative logit), ``decisive`` (the true classifier),
    ``zero``. The interface of a space (methods/base.py): alphas(), mixing_weights(), mixing, primitives."""

    primitives = ("skip_connect", "decisive", "zero")
    num_nodes = 0

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor([[5.0, 0.0, 0.0]]))  # α strongly prefers skip
        self.mixing = None
        self.mixing_override = None

    def alphas(self):
        return [self.alpha]

    def arch_parameters(self):
        return [self.alpha]

    def mixing_weights(self):
        if self.mixing_override is not None:
            return self.mixing_override
        return self.mixing(self.alphas()) if self.mixing is not None else [torch.softmax(self.alpha, -1)]

    def forward(self, x):
        w = self.mixing_weights()[0][0]
        skip = torch.tensor([0.1, 0.0]).expand(len(x), 2)
        decisive = torch.stack([-10 * x[:, 0], 10 * x[:, 0]], 1)
        return w[0] * skip + w[1] * decisive + w[2] * torch.zeros_like(skip)


def toy_accuracy(model, x, y):
    def acc():
        with torch.no_grad():
            return (model(x).argmax(1) == y).double().mean().item()

    return acc


def test_pt_picks_the_decisive_op_although_alpha_prefers_skip():
    torch.manual_seed(0)
    x = torch.randn(2000, 1)
    y = (x[:, 0] > 0).long()
    toy = Toy()
    m = build_method("darts-pt", args="topology=false,tune_epochs=1,seed=3")
    m.attach(toy)
    pt = m.components[0]
    assert toy.alpha.argmax().item() == 0
    measured = {}
    acc = toy_accuracy(toy, x, y)
    for col in range(3):  # the accuracies PT compares: masking skip keeps it high, masking decisive ruins it
        measured[col] = pt._measure((0, 0, col), acc)
    assert measured[1] < measured[2] < measured[0] == 1.0
    m.on_epoch_start(toy, 1, EpochContext(2, accuracy=acc))
    assert pt.decided == [{0: 1}]
    # the decided edge is one-hot on the chosen op, and stays so when α moves
    assert toy.mixing_weights()[0].tolist() == [[0.0, 1.0, 0.0]]
    with torch.no_grad():
        toy.alpha.copy_(torch.tensor([[9.0, -3.0, 1.0]]))
    assert toy.mixing_weights()[0].tolist() == [[0.0, 1.0, 0.0]]


def test_projection_epochs():
    assert projection_epochs(6, 25) == [0, 5, 10, 15, 20, 24]  # NB201: 6 projections in 25 tuning epochs
    assert default_tune_epochs(18) == 86
    assert projection_epochs(18, 86) == list(range(0, 86, 5))  # DARTS space: 14 op + 4 node choices


def test_darts_space_schedule_through_the_epoch_hook():
    """18 projections, at tuning epochs 0, 5, ..., 85 after a 50-epoch supernet phase; lr 0.0025 in tuning."""
    m = build_method("darts-pt", args="seed=1")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 4, **m.network_options())
    m.attach(net)
    pt = m.components[0]
    assert pt.n_projections() == 18 and pt.tune_epochs() == 86
    opt = torch.optim.SGD(net.weights(), lr=0.025, momentum=0.9)
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(0)
    calls = []

    def accuracy():
        calls.append(1)
        return torch.rand((), generator=gen).item()

    seen, lrs = [], {}
    for epoch in range(50 + 86):
        before = pt.done
        ctx = EpochContext(136, opt, accuracy=accuracy)
        m.on_epoch_start(net, epoch, ctx)
        assert ctx.epochs == 50 and ctx.total_epochs == 136
        if epoch < 50:
            assert ctx.lr is None and len(opt.state) > 0
        else:
            lrs[epoch - 50] = ctx.lr
        if pt.done > before:
            seen.append((epoch - 50, pt.done - before))
        m.on_epoch_start(net, epoch, EpochContext(136, opt, accuracy=accuracy))  # a resume repeats nothing
    assert seen == [(t, 1) for t in range(0, 86, 5)]
    assert lrs[0] == 0.0025 and lrs[85] == pytest.approx(tuning_lr(85, 86)) and lrs[85] > 0.001
    assert len(opt.state) == 0  # the weight SGD was re-created for tuning
    assert all(len(d) == 14 for d in pt.decided)
    # each op choice measures 7 ops; topology: node i has i+2 inputs, i removals of i+2, i+1, ... candidates
    topo = sum(sum(range(3, n + 1)) for n in (2, 3, 4, 5))
    assert len(calls) == 2 * (14 * 7 + topo)
    g = m.genotype(net)
    for cell, t in ((g.normal, 0), (g.reduce, 1)):
        assert [j for _, j in cell][::2] != [] and len(cell) == 8
        start = 0
        for node in range(4):
            pairs = cell[2 * node : 2 * node + 2]
            assert len({j for _, j in pairs}) == 2 and all(j < node + 2 for _, j in pairs)
            for op, j in pairs:
                assert op == net.primitives[pt.decided[t][start + j]]
            start += node + 2


def test_topology_removes_the_least_harmful_edge():
    m = build_method("darts-pt", args="seed=0")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(net)
    pt = m.components[0]
    # Scripted accuracy: zeroing edge r of node 3 (rows 2, 3, 4) leaves accuracy 0.1·r; edge 4 goes first.
    assert pt.project_node(0, 1, lambda: 0.1 * pt.probe[1]) == [2, 3]
    assert pt.removed[0] == {4}
    assert pt.project_node(0, 0, lambda: 0.0) == [0, 1]  # two inputs already: nothing to remove


def test_pt_state_round_trip():
    m = build_method("darts-pt", args="seed=5")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(net)
    pt = m.components[0]
    for _ in range(6):
        pt.project_next(lambda: float(torch.rand(())))
    state = copy.deepcopy(m.state_dict())
    m2 = build_method("darts-pt", args="seed=5")
    m2.attach(net)
    m2.load_state_dict(state)
    p2 = m2.components[0]
    assert (p2.decided, p2.removed, p2.done) == (pt.decided, pt.removed, pt.done)
    pt.project_next(lambda: 0.5)
    p2.project_next(lambda: 0.5)
    assert (p2.decided, p2.removed) == (pt.decided, pt.removed)


def test_compositions():
    m = build_method("sdarts-rs+darts-pt")
    assert [type(c).__name__ for c in m.components] == ["Perturb", "PerturbationSelection"]
    assert m.space == "darts-7"
    b = build_method("blank+darts-pt")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **b.network_options())
    b.attach(net)
    assert all(torch.equal(a, torch.zeros_like(a)) for a in net.alphas())
    assert not b.updates_alpha(0) and not b.updates_alpha(100)
    assert isinstance(b.components[1], PerturbationSelection)


def test_darts_pt_search_end_to_end(tmp_path):
    """A whole (tiny) run: 1 supernet epoch, 3 tuning epochs holding all 7 projections (clamped)."""
    from dartsnas.loops.search import SearchConfig, run_search

    cfg = SearchConfig.build(
        "tiny", epochs=4, method="darts-pt", method_args="tune_epochs=3,interval=1,seed=2", progress=False, device="cpu"
    )
    res = run_search(cfg, run_dir=tmp_path / "run", log=lambda *a: None)
    hist = res.history
    assert [h["pt_projections"] for h in hist] == [0, 1, 2, 7]  # schedule [0, 1, 2, 2, 2, 2, 2]
    assert [h["lr"] for h in hist][1] == 0.0025
    geno = json.loads((tmp_path / "run" / "genotype.json").read_text())
    assert len(geno["normal"]) == 4
    for cell in ("normal", "reduce"):
        inputs = [pair["input"] for pair in geno[cell]]
        assert inputs[0] != inputs[1] and inputs[2] != inputs[3]
