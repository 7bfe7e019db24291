"""Every search method on the NAS-Bench-201 space (issue 10; ROBUST-SPEC §3, §5, §7 tests 6-11 and 14).

The NB201 supernet takes the method hooks of ``dartsnas.methods.base``; plain DARTS through them is
bit-identical to the cells fed softmax(α) directly; every method runs two steps with losses near ln 10 and
derives a cell that is a row of the benchmark table; resume after SIGKILL is bit-identical for GDAS and
DARTS-PT; each method has an ``nb201-<method>`` preset.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import run_cli, shared_data_root
from dartsnas.checkpoint import load_checkpoint
from dartsnas.errors import ConfigError
from dartsnas.loops.search import SearchConfig, _search_step, _State
from dartsnas.methods import EpochContext, build_method
from dartsnas.methods.pt import projection_epochs
from dartsnas.methods.variants import BetaDecay, gumbel_hard
from dartsnas.space.nb201 import EDGES, NB201_PRIMITIVES, NB201Genotype
from dartsnas.supernet.nb201 import (
    NB201MixedOp,
    NB201PartialMixedOp,
    NB201SearchCell,
    NB201SearchNetwork,
)
from test_methods import batches, reference_step, synthetic_data
from test_search import _metrics

torch.set_num_threads(1)

ROOT = shared_data_root()
TABLE = None if ROOT is None else ROOT / "nasbench201" / "nb201_accuracies.csv"
needs_table = pytest.mark.skipif(
    TABLE is None or not TABLE.is_file(), reason="shared/data/nasbench201/nb201_accuracies.csv is not present"
)


def nb201_state(method="darts", method_args="", order=1, epochs=2, C=4):
    cfg = SearchConfig.build(
        "tiny",
        space="nb201",
        nb201_cells=1,
        init_channels=C,
        order=order,
        device="cpu",
        method=method,
        method_args=method_args,
        epochs=epochs,
    )
    torch.manual_seed(0)
    st = _State(cfg, synthetic_data(), torch.device("cpu"))
    st.model.train()
    return st


def reference_forward(net, x):
    """The NB201 forward with softmax(α) handed to every cell directly (no hook in between)."""
    w = torch.softmax(net.alphas_cell, dim=-1)
    h = net.stem(x)
    for cell in net.cells:
        h = cell(h, w) if isinstance(cell, NB201SearchCell) else cell(h)
    return net.classifier(net.global_pooling(net.lastact(h)).flatten(1))


# ------------------------------------------------------------------------------------ interface, plain DARTS


def test_default_network_and_darts_options_are_unchanged():
    m = build_method("darts", "nb201")
    assert m.primitives == NB201_PRIMITIVES and m.network_options() == {"primitives": NB201_PRIMITIVES}
    torch.manual_seed(5)
    a = NB201SearchNetwork(C=16, num_cells=5)
    torch.manual_seed(5)
    b = NB201SearchNetwork(C=16, num_cells=5, **m.network_options())
    m.attach(b)
    assert sum(p.numel() for p in b.weights()) == 1_692_826 and sum(p.numel() for p in b.alphas()) == 30
    assert b.arch_parameters() == b.alphas() and b.mixing is None and b.mixing_override is None
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    small = NB201SearchNetwork(C=4, num_cells=1)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(small(x), reference_forward(small, x))
    with pytest.raises(ValueError):
        NB201SearchNetwork(C=4, num_cells=1, primitives=NB201_PRIMITIVES[1:])


@pytest.mark.parametrize("order", [1, 2])
def test_darts_through_the_interface_is_bit_identical_on_nb201(order):
    crit = torch.nn.CrossEntropyLoss()
    hooked, ref = nb201_state(order=order), nb201_state(order=order)
    init = {k: v.clone() for k, v in ref.model.state_dict().items()}
    for step, (x_t, y_t, x_v, y_v) in enumerate(batches(3)):
        lr = 0.025 - 0.005 * step
        for st in (hooked, ref):
            for g in st.w_opt.param_groups:
                g["lr"] = lr
        _search_step(hooked, crit, x_t, y_t, x_v, y_v, lr)
        reference_step(ref, crit, x_t, y_t, x_v, y_v, lr)
        hooked.global_step += 1
        ref.global_step += 1
    moved = False
    for (k, a), b in zip(hooked.model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.equal(a, b), k
        moved |= not torch.equal(a, init[k])
    assert moved and not torch.equal(hooked.model.alphas_cell, init["alphas_cell"])
    x = torch.randn(2, 3, 8, 8)
    hooked.model.eval()
    assert torch.equal(hooked.model(x), reference_forward(hooked.model, x))


# ------------------------------------------------------------------------------------ supernet hooks


def test_partial_channels_k1_is_plain_and_k2_shuffles_a_slice():
    """§7 test 7 on NB201: K = 1 without edge β is the plain mixed op; with K groups channel c moves to
    (c mod C/K)·K + ⌊c/(C/K)⌋, the bypass channels unchanged (stride 1)."""
    torch.manual_seed(1)
    plain = NB201MixedOp(8)
    torch.manual_seed(1)
    k1 = NB201PartialMixedOp(8, 1)
    assert list(plain.state_dict()) == list(k1.state_dict())
    x, w = torch.randn(2, 8, 6, 6), torch.softmax(torch.randn(5), 0)
    assert torch.equal(plain(x, w), k1(x, w))
    torch.manual_seed(1)
    k2 = NB201PartialMixedOp(8, 2)
    assert k2._ops[1][1].weight.shape == (4, 4, 1, 1)  # nor_conv_1x1 built for C/K = 4 channels
    out = k2(x, w)
    mixed = NB201MixedOp.forward(k2, x[:, :4], w)
    for c in range(8):
        src = mixed[:, c] if c < 4 else x[:, c]
        assert torch.equal(out[:, (c % 4) * 2 + c // 4], src)


def test_edge_normalisation_scales_each_nodes_inputs():
    torch.manual_seed(2)
    net = NB201SearchNetwork(C=4, num_cells=1, edge_norm=True)
    assert net.arch_parameters() == [net.alphas_cell, net.betas_cell] and net.betas_cell.shape == (6,)
    assert id(net.betas_cell) not in {id(p) for p in net.weights()}
    with torch.no_grad():
        net.betas_cell.copy_(torch.tensor([0.3, 1.0, -1.0, 0.5, 0.0, 2.0]))
    e = net.edge_weights().double()
    b = net.betas_cell.detach().double()
    ref = torch.cat([torch.ones(1, dtype=torch.float64), torch.softmax(b[1:3], 0), torch.softmax(b[3:6], 0)])
    torch.testing.assert_close(e, ref, rtol=1e-6, atol=1e-7)
    cell = net.cells[0]
    x = torch.randn(2, 4, 6, 6)
    (w,) = net.mixing_weights()
    nodes = [x]
    for i in (1, 2, 3):
        nodes.append(
            sum(e[r].float() * cell.edges[r](nodes[src], w[r]) for r, (to, src) in enumerate(EDGES) if to == i)
        )
    torch.testing.assert_close(cell(x, w, net.edge_weights()), nodes[3])
    # the genotype is the argmax per edge: a positive edge weight cannot change it
    with torch.no_grad():
        net.alphas_cell.normal_()
    assert net.genotype() == NB201SearchNetwork.derive_from_alphas(net, [net.alphas_cell])


def test_aux_skip_on_all_six_edges():
    """§3.2 / §7 test 8 on NB201: β = 0 is exactly DARTS; the identity path adds β·x on every edge and is
    absent from α, the genotype and α's gradient."""
    torch.manual_seed(3)
    plain = NB201SearchNetwork(C=4, num_cells=1)
    torch.manual_seed(3)
    aux = NB201SearchNetwork(C=4, num_cells=1, aux_skip=True)
    assert list(plain.state_dict()) == list(aux.state_dict())
    x = torch.randn(2, 3, 8, 8)
    aux.set_hooks(aux_weight=0.0)
    assert torch.equal(aux(x), plain(x))
    aux.set_hooks(aux_weight=0.7)
    cell, h = aux.cells[0], torch.randn(2, 4, 6, 6)
    (w,) = aux.mixing_weights()
    nodes = [h]
    for i in (1, 2, 3):
        nodes.append(
            sum(cell.edges[r](nodes[src], w[r]) + 0.7 * nodes[src] for r, (to, src) in enumerate(EDGES) if to == i)
        )
    torch.testing.assert_close(cell(h, w), nodes[3])
    assert aux.genotype() == plain.genotype() and aux.arch_parameters() == [aux.alphas_cell]


def test_sampled_forward_runs_one_op_and_reaches_every_alpha():
    torch.manual_seed(4)
    op = NB201MixedOp(4)
    x = torch.randn(2, 4, 5, 5)
    alpha = torch.zeros(5, requires_grad=True)
    w = gumbel_hard(alpha, 1.0)
    k = int(w.argmax())
    out = op.forward_sampled(x, w)
    expected = torch.zeros_like(x) if k == 0 else op._ops[op.columns.index(k)](x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert alpha.grad is not None and bool((alpha.grad != 0).any())
    none = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])  # a sampled `none` gives zeros
    assert torch.equal(op.forward_sampled(x, none), torch.zeros_like(x))


def test_beta_decay_regulariser_on_the_nb201_alpha():
    """§7 test 6 with the NB201 shapes, through the network's ``alphas()``."""
    net = NB201SearchNetwork(C=4, num_cells=1)
    term = BetaDecay()
    term.lam = 1.0
    with torch.no_grad():
        net.alphas_cell.zero_()
    assert term.alpha_loss(net).item() == pytest.approx(math.log(5), abs=1e-7)
    with torch.no_grad():
        net.alphas_cell[0] = torch.tensor([1.0, 0, 0, 0, 0])
        net.alphas_cell[1] = torch.tensor([2.0, 1, 0, -1, -2])
    r = term.alpha_loss(net)
    assert r.item() == pytest.approx(1.7990831, abs=1e-6)
    r.backward()
    torch.testing.assert_close(net.alphas_cell.grad[0], torch.tensor([0.067435] + [0.024808] * 4), atol=2e-6, rtol=0)


# ------------------------------------------------------------------------------------ §7 test 14 on NB201

SMOKE = {
    "darts": "",
    "pc-darts": "K=2,warmup_epochs=0",
    "darts-minus": "",
    "beta-darts": "",
    "sdarts-rs": "",
    "sdarts-adv": "attack_steps=2",
    "drnas": "",
    "gdas": "",
    "darts-pt": "tune_epochs=2,interval=1,seed=3",
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_two_steps_of_every_method_on_nb201(name):
    epochs = 3 if name == "darts-pt" else 50
    st = nb201_state(name, SMOKE[name], epochs=epochs)
    model = st.model
    crit = torch.nn.CrossEntropyLoss()
    accuracy = []

    def probe():  # DARTS-PT's accuracy: a fixed batch through the supernet under the current masks
        gen = torch.Generator().manual_seed(7)
        x, y = torch.randn(8, 3, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        with torch.no_grad():
            acc = float((model(x).argmax(1) == y).double().mean())
        accuracy.append(acc)
        return acc

    # β-DARTS: λ_0 = 0, so take epoch 40 of 50, where the term is active; DARTS-PT: the first tuning epoch.
    epoch = {"beta-darts": 40, "darts-pt": 1}.get(name, 0)
    st.method.on_epoch_start(model, epoch, EpochContext(epochs, st.w_opt, accuracy=probe))
    before = [a.detach().clone() for a in model.arch_parameters()]
    totals: dict[str, float] = {}
    for x_t, y_t, x_v, y_v in batches(2, batch=8):
        for k, v in _search_step(st, crit, x_t, y_t, x_v, y_v, 0.025).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        st.global_step += 1
    train_loss, val_loss = totals["loss"] / totals["count"], totals["arch_step_val_loss"] / 2
    assert math.isfinite(train_loss) and abs(train_loss - math.log(10)) < 0.5, train_loss
    if name == "beta-darts":  # the α-step loss includes λ·R(α), R ≈ ln 5 while α ≈ 0
        val_loss -= 20.0 * math.log(5)
    assert math.isfinite(val_loss) and abs(val_loss - math.log(10)) < 0.5, val_loss
    assert all(not torch.equal(b, a) for b, a in zip(before, model.arch_parameters()))
    if name == "darts-pt":  # tuning epoch 1 of 2: the six projections are due (0, 1, 1, 1, 1, 1)
        st.method.on_epoch_start(model, 2, EpochContext(epochs, st.w_opt, accuracy=probe))
        pt = st.method.components[0]
        assert pt.done == 6 and sorted(pt.decided[0]) == list(range(6)) and len(accuracy) == 6 * 5
    g = st.method.genotype(model)
    assert isinstance(g, NB201Genotype) and len(g.edges) == 6
    if name == "darts-pt":
        assert [op for op, _ in g.edges] == [NB201_PRIMITIVES[pt.decided[0][r]] for r in range(6)]
    if TABLE is not None and TABLE.is_file():
        from dartsnas.space.lookup import lookup

        row = lookup(g, TABLE)
        assert row.arch_str == g.arch_str() and 0 <= row.index < 15_625


def test_sdarts_keeps_alpha_and_gdas_runs_one_op_per_edge_on_nb201():
    st = nb201_state("sdarts-rs")
    st.method.on_epoch_start(st.model, 10, EpochContext(50, st.w_opt))
    alpha = st.model.alphas_cell.detach().clone()
    seen = []
    with st.method.weight_step(st.model, *next(batches(1))[:2], torch.nn.CrossEntropyLoss()):
        (bar,) = st.model.mixing_weights()
        seen.append(bar)
    base = torch.softmax(alpha, -1)
    assert bool((seen[0] >= 0).all()) and torch.allclose(seen[0].sum(-1), torch.ones(6))
    assert float((seen[0] - base).abs().max()) <= st.method.components[0].eps * 2 + 1e-6
    assert torch.equal(st.model.alphas_cell, alpha)
    g = nb201_state("gdas")
    calls = []
    cells = [cell for cell in g.model.cells if isinstance(cell, NB201SearchCell)]
    for cell in cells:
        for edge in cell.edges:
            for op in edge._ops:
                op.register_forward_hook(lambda *_: calls.append(1))
    g.model(torch.randn(2, 3, 8, 8))
    assert 0 < len(calls) <= 6 * len(cells)  # one op per edge at most (a sampled `none` runs nothing)


# ------------------------------------------------------------------------------------ config and presets


def test_nb201_method_defaults_presets_and_refusals():
    pt = build_method("darts-pt", "nb201").components[0]
    assert (pt.tune_epochs_arg, pt.cosine, pt.topology) == (25, False, False)
    assert projection_epochs(6, 25) == [0, 5, 10, 15, 20, 24]
    assert build_method("darts-pt", "nb201", "tune_epochs=10").components[0].tune_epochs_arg == 10
    assert build_method("darts-pt", "darts-7").components[0].topology  # the DARTS spaces keep theirs
    for bad in ("topology=true",):
        with pytest.raises(ConfigError, match="topology"):
            build_method("darts-pt", "nb201", bad)
    build_method("drnas", "nb201", "partial_channels=4,prune_epoch=1,widen_to=2")  # test_drnas_progressive_nb201.py
    for name, epochs in [
        ("pc-darts", 100),
        ("darts-minus", 50),
        ("beta-darts", 100),
        ("sdarts-rs", 100),
        ("sdarts-adv", 100),
        ("drnas", 100),
        ("gdas", 250),
        ("darts-pt", 125),
    ]:
        cfg = SearchConfig.build(f"nb201-{name}")
        assert (cfg.space, cfg.method, cfg.epochs) == ("nb201", name, epochs)
    assert SearchConfig.build("nb201-gdas").nesterov and SearchConfig.build("nb201-darts-pt").weight_decay == 3e-4
    with pytest.raises(ConfigError, match="epochs"):  # DARTS-PT's 25 tuning epochs need a supernet phase
        SearchConfig.build("nb201-proxy", method="darts-pt")
    with pytest.raises(ConfigError, match="K=3"):
        SearchConfig.build("nb201-proxy", method="pc-darts", method_args="K=3")
    SearchConfig.build("nb201-proxy", method="pc-darts", method_args="K=8")  # C/K odd is fine at stride 1


# ------------------------------------------------------------------------------------ resume after SIGKILL

TINY = ["--preset", "tiny", "--space", "nb201", "--no-progress", "--set", "nb201_cells=1", "--set", "epochs=3"]
RESUME = {"gdas": [], "darts-pt": ["--set", "method_args=tune_epochs=2,interval=1,seed=4"]}


@pytest.mark.parametrize("method", sorted(RESUME))
def test_nb201_method_resume_after_kill_is_bit_identical(method, tmp_path):
    args = [*TINY, "--method", method, *RESUME[method]]
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = run_cli("search", *args, "--run-dir", str(ref))
    assert done.returncode == 0, done.stderr
    first = run_cli("search", *args, "--run-dir", str(run), env={"DARTSNAS_FAULT": "kill_at_step:6"})
    assert first.returncode == -9  # killed mid-epoch 2, after epoch 1's checkpoint
    second = run_cli("search", "--resume", str(run), "--no-progress")
    assert second.returncode == 0, second.stderr
    a = load_checkpoint(ref / "checkpoint.pt", expect_kind="cnn-search")
    b = load_checkpoint(run / "checkpoint.pt", expect_kind="cnn-search")
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert repr(a["method"]) == repr(b["method"])
    assert (run / "genotype.json").read_text() == (ref / "genotype.json").read_text()
    assert _metrics(run) == _metrics(ref)
    derived = run_cli("derive", str(run))
    assert derived.returncode == 0, derived.stderr
    assert json.loads(derived.stdout) == json.loads((run / "genotype.json").read_text())
    if method == "darts-pt":  # the run ended with all six edges decided, and the genotype follows them
        assert a["method"]["components"][0]["done"] == 6


def test_diagnostics_leave_a_sampling_search_unchanged(tmp_path):
    """λ_max runs DrNAS's forward, which draws a Dirichlet sample: the diagnostics must not shift the draws."""
    from dartsnas.loops.search import run_search

    def run(name, hessian):
        cfg = SearchConfig.build(
            "tiny",
            space="nb201",
            nb201_cells=1,
            epochs=2,
            subset=32,
            method="drnas",
            hessian=hessian,
            hessian_batch=8,
            progress=False,
            device="cpu",
        )
        return run_search(cfg, tmp_path / name, log=lambda *_: None)

    on, off = run("on", True), run("off", False)
    assert "hessian_eig" in on.history[-1] and "hessian_eig" not in off.history[-1]
    a = load_checkpoint(tmp_path / "on" / "checkpoint.pt", expect_kind="cnn-search")["model"]
    b = load_checkpoint(tmp_path / "off" / "checkpoint.pt", expect_kind="cnn-search")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
