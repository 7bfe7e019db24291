"""The fused search-cell forward (supernet/fused.py) against the plain one: same parameters, same numbers.

float64, tiny networks; outputs, weight gradients, alpha gradients and BN running statistics must agree
within 1e-10, in training and eval mode, stride 1 and 2 (reduction cells), odd spatial sizes, and through
the Architect (first and second order, where the virtual network runs under functional_call).
"""

from __future__ import annotations

import copy

import pytest
import torch

from dartsnas.architect import Architect, make_loss_fn
from dartsnas.supernet.network import SearchNetwork

torch.set_num_threads(1)
TOL = 1e-10


def _pair(C=4, layers=3, nodes=4, seed=0):
    torch.manual_seed(seed)
    plain = SearchNetwork(C, 10, layers, nodes).double()
    fused = copy.deepcopy(plain).set_fused(True)
    return plain, fused


def _close(a, b, what):
    assert a.shape == b.shape, what
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= TOL, f"{what}: max abs diff {err}"


def _compare_state(plain, fused):
    sp, sf = plain.state_dict(), fused.state_dict()
    assert list(sp) == list(sf)
    for k in sp:
        if sp[k].dtype == torch.long:
            assert torch.equal(sp[k], sf[k]), k
        else:
            _close(sp[k], sf[k], k)


def test_parameters_unchanged():
    a = SearchNetwork()
    b = SearchNetwork(fused=True)
    n = sum(p.numel() for p in b.weights())
    assert n == sum(p.numel() for p in a.weights()) == 1_930_618
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]


@pytest.mark.parametrize("size", [8, 7])
def test_forward_backward_and_running_stats(size):
    plain, fused = _pair()
    x = torch.randn(3, 3, size, size, dtype=torch.float64)
    y = torch.randint(0, 10, (3,))
    for step in range(2):
        outs = []
        for net in (plain, fused):
            net.train()
            net.zero_grad(set_to_none=True)
            out = net(x)
            torch.nn.functional.cross_entropy(out, y).backward()
            outs.append(out)
        _close(outs[0], outs[1], f"logits step {step}")
        for (name, p), (_, q) in zip(plain.named_parameters(), fused.named_parameters()):
            assert (p.grad is None) == (q.grad is None), name
            if p.grad is not None:
                _close(p.grad, q.grad, f"grad {name}")
        _compare_state(plain, fused)
    plain.eval(), fused.eval()
    with torch.no_grad():
        _close(plain(x), fused(x), "eval logits")
    _compare_state(plain, fused)


def test_reduction_cells_and_two_nodes():
    plain, fused = _pair(C=6, layers=5, nodes=2, seed=1)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    for net in (plain, fused):
        net(x).square().sum().backward()
    for (name, p), (_, q) in zip(plain.named_parameters(), fused.named_parameters()):
        _close(p.grad, q.grad, name)
    _compare_state(plain, fused)


@pytest.mark.parametrize("order", [1, 2])
def test_architect_step_matches(order):
    plain, fused = _pair(seed=3)
    x_t, x_v = torch.randn(2, 4, 3, 8, 8, dtype=torch.float64)
    y_t, y_v = torch.randint(0, 10, (2, 4))
    crit = torch.nn.CrossEntropyLoss()
    results = []
    for net in (plain, fused):
        a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
        w_opt = torch.optim.SGD(net.weights(), lr=0.025, momentum=0.9, weight_decay=3e-4)
        arch = Architect(net, a_opt, order=order)
        for step in range(2):
            arch.step(make_loss_fn(net, x_t, y_t, crit), make_loss_fn(net, x_v, y_v, crit), 0.025, w_opt, step)
            w_opt.zero_grad(set_to_none=True)
            crit(net(x_t), y_t).backward()
            torch.nn.utils.clip_grad_norm_(net.weights(), 5.0)
            w_opt.step()
        results.append(net)
    _compare_state(*results)


def test_toggle_routes_every_cell_and_back(monkeypatch):
    """set_fused(True) sends every cell through the fused forward (same output to rounding); set_fused(False)
    restores the plain path exactly (bit-identical output, no fused call)."""
    import dartsnas.supernet.fused as fused_mod

    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        plain = net(x)
    calls = []
    real = fused_mod.fused_cell_forward
    monkeypatch.setattr(fused_mod, "fused_cell_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        fused = net.set_fused(True)(x)
        assert len(calls) == len(net.cells) == 3
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
        back = net.set_fused(False)(x)
    assert len(calls) == 3 and torch.equal(back, plain)


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("fused", [False, True])
def test_graph_step_body_matches_eager_step(order, fused):
    """The arithmetic of the CUDA-graph step (loops/graphed.py), run uncaptured on CPU, equals _search_step."""
    from dartsnas.data.images import ImageData
    from dartsnas.loops.graphed import GraphedSearchStep
    from dartsnas.loops.search import SUMS, SearchConfig, _search_step, _State
    from dartsnas.loops.state import Sums

    torch.set_default_dtype(torch.float64)
    try:
        cfg = SearchConfig.build("tiny", order=order, fused_ops=fused, device="cpu")
        z = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
        data = ImageData(
            "synthetic",
            z,
            torch.zeros(2, dtype=torch.long),
            z,
            torch.zeros(2, dtype=torch.long),
            (0.5,) * 3,
            (0.25,) * 3,
            10,
        )
        states = []
        for graphed in (False, True):
            torch.manual_seed(0)
            st = _State(cfg, data, torch.device("cpu"))
            st.model.train()
            crit = torch.nn.CrossEntropyLoss()
            runner = GraphedSearchStep(st, crit, eager=True) if graphed else None
            sums = Sums(SUMS, torch.device("cpu"))
            gen = torch.Generator().manual_seed(1)
            for step in range(3):
                x_t, x_v = torch.randn(2, 4, 3, 8, 8, generator=gen)
                y_t, y_v = torch.randint(0, 10, (2, 4), generator=gen)
                if runner is None:
                    for group in st.w_opt.param_groups:  # as run_search sets it
                        group["lr"] = 0.025 - 0.005 * step
                    sums.add(_search_step(st, crit, x_t, y_t, x_v, y_v, 0.025 - 0.005 * step))
                else:
                    sums.add(runner.step(x_t, y_t, x_v, y_v, 0.025 - 0.005 * step))
                st.global_step += 1
            if runner is not None:
                runner.check()
            states.append((st, sums.data))
        (a, sums_a), (b, sums_b) = states
        _compare_state(a.model, b.model)
        _close(sums_a, sums_b, "sums")
        bufs_a = [a.w_opt.state[p]["momentum_buffer"] for p in a.model.weights()]
        bufs_b = [b.w_opt.state[p]["momentum_buffer"] for p in b.model.weights()]
        for x, y in zip(bufs_a, bufs_b):
            _close(x, y, "momentum buffer")
        for pa, pb in zip(a.model.arch_parameters(), b.model.arch_parameters()):
            for k in ("exp_avg", "exp_avg_sq"):
                _close(a.a_opt.state[pa][k], b.a_opt.state[pb][k], k)
            assert float(a.a_opt.state[pa]["step"]) == float(b.a_opt.state[pb]["step"]) == 3
    finally:
        torch.set_default_dtype(torch.float32)


def test_graph_step_flags_non_finite_after_the_fact():
    from dartsnas.data.images import ImageData
    from dartsnas.errors import NonFiniteError
    from dartsnas.loops.graphed import GraphedSearchStep
    from dartsnas.loops.search import SearchConfig, _State

    cfg = SearchConfig.build("tiny", device="cpu")
    z = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    data = ImageData(
        "s", z, torch.zeros(2, dtype=torch.long), z, torch.zeros(2, dtype=torch.long), (0.5,) * 3, (0.25,) * 3, 10
    )
    st = _State(cfg, data, torch.device("cpu"))
    runner = GraphedSearchStep(st, torch.nn.CrossEntropyLoss(), eager=True)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    runner.step(x, y, x, y, 0.025)
    runner.check()
    st.global_step = 1
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    runner.step(x, y, bad, y, 0.025)
    st.global_step = 2
    runner.step(x, y, x, y, 0.025)
    with pytest.raises(NonFiniteError) as e:
        runner.check()
    assert e.value.step == 1 and e.value.phase == "architecture"
    assert e.value.steps_after == 1  # step 2 ran after the bad step 1
    assert "1 more after it" in str(e.value) and "no optimizer step was taken" not in str(e.value)


@pytest.mark.parametrize("nodes", [1, 3, 5])
def test_source_grouping_for_other_node_counts_channels_last(nodes):
    """Every source has K = nodes or fewer outgoing edges; K = 1 and K > 4 take the same grouped path."""
    plain, fused = _pair(C=4, layers=3, nodes=nodes, seed=5)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    fused_cl = fused.to(memory_format=torch.channels_last)
    for step in range(2):
        outs = []
        for net, inp in ((plain, x), (fused_cl, x.contiguous(memory_format=torch.channels_last))):
            net.train()
            net.zero_grad(set_to_none=True)
            out = net(inp)
            out.square().sum().backward()
            outs.append(out)
        _close(outs[0], outs[1], f"logits step {step}")
        for (name, p), (_, q) in zip(plain.named_parameters(), fused_cl.named_parameters()):
            _close(p.grad, q.grad, f"grad {name}")
        _compare_state(plain, fused_cl)
    plain.eval(), fused_cl.eval()
    with torch.no_grad():
        _close(plain(x), fused_cl(x.contiguous(memory_format=torch.channels_last)), "eval logits")


def test_fused_forward_launches_far_fewer_operations():
    """The point of the fused path: count the ATen operations of one training forward + backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += not func.is_view  # views launch no kernel
            return func(*args, **(kwargs or {}))

    counts = []
    for fused in (False, True):
        torch.manual_seed(0)
        net = SearchNetwork(4, 10, 3, 4, fused=fused)
        x = torch.randn(2, 3, 8, 8)
        Count.n = 0
        with Count():
            net(x).sum().backward()
        counts.append(Count.n)
    plain, fused = counts
    # 4.7x here (3.1x before the mixing matrices were gathered and the first-unit kernels stacked in place);
    # 4.8x at the paper's network (benchmarks/results/op-count-2026-12-01.json)
    assert fused * 4 < plain, counts


@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_mixing_matrices_hold_each_weight_once(reduction, training):
    """The gathered mixing matrices against the layout written out by hand from the edge list: every
    (edge, operation) weight but ``none`` in exactly one entry, in the row of its edge and the column of its
    block, every other entry an exact zero; the gradient reaching each weight is that entry's alone."""
    from dartsnas.space.ops import PRIMITIVES
    from dartsnas.supernet.fused import AVG, DIL3, DIL5, MAX, SEP3, SEP5, SKIP, CellPlan

    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 4)
    cell = next(c for c in net.cells if c.reduction == reduction)
    plan = CellPlan(cell)
    E, P = len(cell._ops), len(PRIMITIVES)
    weights = (torch.arange(E * P, dtype=torch.float64) + 1).reshape(E, P).requires_grad_()
    mats = plan.mixing_matrices(weights, training)
    seen = []
    for src, (m_dil, m_sep, m_pool, m_skip) in zip(plan.sources, mats, strict=True):
        K = len(src.edges)
        expect = {"dil": torch.zeros(K, 2 * K), "sep": torch.zeros(K, 2 * K)}
        expect["pool"] = torch.zeros(K, 2) if training else torch.zeros(K, 2 * K)
        expect["skip"] = torch.zeros(K, 1) if src.stride == 1 else torch.zeros(K, K)
        for t, e in enumerate(src.edges):
            w = weights[e].detach()
            expect["dil"][t, t], expect["dil"][t, K + t] = w[1 + DIL3], w[1 + DIL5]
            expect["sep"][t, 2 * t], expect["sep"][t, 2 * t + 1] = w[1 + SEP3], w[1 + SEP5]
            c = 0 if training else 2 * t
            expect["pool"][t, c], expect["pool"][t, c + 1] = w[1 + MAX], w[1 + AVG]
            expect["skip"][t, 0 if src.stride == 1 else t] = w[1 + SKIP]
            seen.append(e)
        for name, m in zip(("dil", "sep", "pool", "skip"), (m_dil, m_sep, m_pool, m_skip), strict=True):
            assert torch.equal(m.detach(), expect[name].double()), (src.state, name)
    assert sorted(seen) == list(range(E))  # every edge leaves exactly one source
    assert [s.stride for s in plan.sources[:2]] == [2 if reduction else 1] * 2  # only the inputs reduce
    # gradient: entry (i) gets the upstream value i + 0.5; each weight must receive its entry's value alone
    flat = torch.cat([m.reshape(-1) for ms in mats for m in ms])
    upstream = torch.arange(flat.numel(), dtype=torch.float64) + 0.5
    (flat * upstream).sum().backward()
    g = weights.grad
    assert torch.equal(g[:, 0], torch.zeros(E, dtype=torch.float64))  # ``none`` is never mixed
    values = weights.detach().reshape(-1)
    for e in range(E):
        for k in range(1, P):
            where = (flat.detach() == values[e * P + k]).nonzero().reshape(-1)
            assert where.numel() == 1, (e, k)
            assert g[e, k].item() == upstream[where].item(), (e, k)


def test_mixing_matrices_reject_wrong_weight_shape():
    from dartsnas.supernet.fused import CellPlan

    net = SearchNetwork(4, 10, 3, 4)
    plan = CellPlan(net.cells[0])
    with pytest.raises(ValueError, match="weights of shape"):
        plan.mixing_matrices(torch.zeros(13, 8), True)
