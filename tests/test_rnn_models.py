"""Recurrent search and evaluation models (spec §7.1–7.4, §10, §12.10). CPU, tiny sizes except the counts."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from dartsnas.errors import GenotypeError
from dartsnas.evalnet.rnn import RNNEvalModel
from dartsnas.lm import tar_penalty
from dartsnas.space.genotype import PUBLISHED, RNN_PRIMITIVES, RNNGenotype
from dartsnas.supernet.rnn import RNNSearchModel


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these forwards are tiny, and OpenMP spin-waits badly on a loaded 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


ACT = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda h: h}


def _count(params) -> int:
    return sum(p.numel() for p in params)


# ------------------------------------------------------------------------------------------ counts


def test_search_model_count_ptb():
    torch.manual_seed(0)
    m = RNNSearchModel(10_000, n=300)
    assert _count(m.weights()) == 4_810_000
    assert _count(m.arch_parameters()) == 180 and m.alphas.shape == (36, 5)
    names = [n for n, _ in m.named_weights()]
    assert "alphas" not in names and len(names) == len(m.weights())
    assert {id(p) for p in m.weights()} | {id(m.alphas)} == {id(p) for p in m.parameters()}
    assert m.alphas.abs().max() < 1e-2  # 1e-3 · N(0, 1)


def test_eval_model_counts():
    g = PUBLISHED["RNN_DARTS_V2"]
    assert _count(RNNEvalModel(10_000, g, n=850).parameters()) == 22_960_000
    assert _count(RNNEvalModel.for_corpus("wikitext2", 33_278, g).weights()) == 33_127_878
    enas = RNNEvalModel(10_000, PUBLISHED["RNN_ENAS"], n=850)
    assert len(enas.cell.Ws) == 11
    assert _count(enas.parameters()) == 8_500_000 + 2_890_000 + 11 * 1_445_000 + 10_000


# ------------------------------------------------------------------------------------------ structure


def test_search_bn_single_affine_free():
    m = RNNSearchModel(50, n=8)
    bns = [mod for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == 1 and bns[0] is m.cell.bn
    assert not bns[0].affine and bns[0].weight is None and bns[0].bias is None
    assert not any("bn" in n for n, _ in m.named_parameters())
    m.train()
    tokens = torch.randint(0, 50, (5, 3))
    m(tokens)
    assert m.cell.bn.num_batches_tracked.item() == 5 * 9  # s0 and 8 nodes, every step, one BN


def test_eval_model_has_no_bn():
    m = RNNEvalModel(50, PUBLISHED["RNN_DARTS_V2"], n=8)
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules())


@pytest.mark.parametrize("kind", ["search", "eval"])
def test_decoder_tied(kind):
    m = RNNSearchModel(30, n=8) if kind == "search" else RNNEvalModel(30, PUBLISHED["RNN_DARTS"], n=8)
    assert m.decoder.weight is m.encoder.weight
    assert torch.count_nonzero(m.decoder.bias) == 0
    assert m.encoder.weight.abs().max() <= 0.04 and m.cell.W0.abs().max() <= 0.04
    assert "decoder.weight" not in dict(m.named_parameters())  # counted once


# ------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("kind", ["search", "eval"])
def test_masks_drawn_once_and_shared_over_time(kind):
    torch.manual_seed(1)
    B, n, T = 4, 8, 6
    m = RNNSearchModel(40, n=n) if kind == "search" else RNNEvalModel(40, PUBLISHED["RNN_DARTS"], n=n)
    cell = m.cell
    drawn, seen = [], []
    orig_masks, orig_step = cell.sample_masks, cell.step

    def rec_masks(*a, **k):
        out = orig_masks(*a, **k)
        drawn.append(out)
        return out

    def rec_step(x_proj, h, m_h, *rest):
        seen.append(m_h)
        return orig_step(x_proj, h, m_h, *rest)

    cell.sample_masks, cell.step = rec_masks, rec_step
    m.train()
    m(torch.randint(0, 40, (T, B)))
    assert len(drawn) == 1
    m_x, m_h = drawn[0]
    assert m_x.shape == (B, n) and m_h.shape == (B, n)
    assert set(torch.unique(m_x).tolist()) <= {0.0, 4.0}  # keep 0.25 → scaled by 4
    assert set(torch.unique(m_h).tolist()) <= {0.0, torch.tensor(1.0 / 0.75).item()}
    assert len(seen) == T and all(s is m_h for s in seen)  # the same B × n mask at every step
    m(torch.randint(0, 40, (T, B)))
    assert len(drawn) == 2 and not torch.equal(drawn[1][1], m_h)  # a new forward draws new masks
    m.eval()
    assert cell.sample_masks(B, m_h) == (None, None)


# ------------------------------------------------------------------------------------------ against the spec, literally


def _naive_search(cell, x, h, m_x, m_h, P):
    n, outs = cell.n, []
    for t in range(x.size(0)):
        ch0 = torch.cat([x[t] * m_x, h * m_h], dim=-1) @ cell.W0
        c0, h0 = ch0[:, :n], ch0[:, n:]
        states = [cell.bn(h + torch.sigmoid(c0) * (torch.tanh(h0) - h))]
        r = 0
        for i in range(1, cell.num_nodes + 1):
            acc = 0
            for j in range(i):
                ch = (states[j] * m_h) @ cell.Ws[i - 1]
                c, hh = torch.sigmoid(ch[:, :n]), ch[:, n:]
                for k, op in enumerate(RNN_PRIMITIVES):
                    if op != "none":
                        acc = acc + P[r + j, k] * (states[j] + c * (ACT[op](hh) - states[j]))
            r += i
            states.append(cell.bn(acc))
        h = torch.stack(states[1:]).mean(0)
        outs.append(h)
    return torch.stack(outs), h


def _naive_eval(cell, x, h, m_x, m_h, g):
    n, outs = cell.n, []
    for t in range(x.size(0)):
        ch0 = torch.cat([x[t] * m_x, h * m_h], dim=-1) @ cell.W0
        states = [h + torch.sigmoid(ch0[:, :n]) * (torch.tanh(ch0[:, n:]) - h)]
        for i, (op, p) in enumerate(g.recurrent, start=1):
            ch = (states[p] * m_h) @ cell.Ws[i - 1]
            states.append(states[p] + torch.sigmoid(ch[:, :n]) * (ACT[op](ch[:, n:]) - states[p]))
        h = torch.stack([states[i] for i in g.concat]).mean(0)
        outs.append(h)
    return torch.stack(outs), h


def test_search_cell_matches_spec():
    torch.manual_seed(2)
    T, B, n = 4, 5, 6
    m = RNNSearchModel(20, n=n).double().train()
    with torch.no_grad():
        m.alphas.normal_()  # away from uniform
    cell, P = m.cell, torch.softmax(m.alphas, -1)
    x, h = torch.randn(T, B, n, dtype=torch.float64), torch.randn(B, n, dtype=torch.float64)
    masks = cell.sample_masks(B, x)
    cell.sample_masks = lambda *a, **k: masks
    out, last = cell(x, h, P)
    ref, ref_last = _naive_search(cell, x, h, *masks, P)
    assert out.shape == (T, B, n) and last.shape == (B, n)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["RNN_DARTS_V2", "RNN_DARTS_V1", "RNN_ENAS"])
def test_eval_cell_matches_spec(name):
    torch.manual_seed(3)
    g = PUBLISHED[name]
    T, B, n = 4, 3, 5
    m = RNNEvalModel(20, g, n=n).double().train()
    cell = m.cell
    x, h = torch.randn(T, B, n, dtype=torch.float64), torch.randn(B, n, dtype=torch.float64)
    masks = cell.sample_masks(B, x)
    cell.sample_masks = lambda *a, **k: masks
    out, last = cell(x, h)
    ref, ref_last = _naive_eval(cell, x, h, *masks, g)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(last, ref_last, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------ forward / loss


@pytest.mark.parametrize("kind", ["search", "eval", "enas"])
def test_forward_shapes_and_initial_loss(kind):
    torch.manual_seed(4)
    V, n, T, B = 200, 32, 10, 6
    m = {
        "search": lambda: RNNSearchModel(V, n=n),
        "eval": lambda: RNNEvalModel(V, PUBLISHED["RNN_DARTS"], n=n),
        "enas": lambda: RNNEvalModel(V, PUBLISHED["RNN_ENAS"], n=n),
    }[kind]()
    tokens, targets = torch.randint(0, V, (T, B)), torch.randint(0, V, (T, B))
    for training in (True, False):
        m.train(training)
        out = m(tokens, None, targets)
        assert out.log_probs is None and out.hidden.shape == (B, n) and out.raw_output.shape == (T, B, n)
        assert torch.isfinite(out.nll) and abs(out.nll.item() - math.log(V)) < 0.2
        assert torch.isfinite(tar_penalty(out.raw_output))
    out = m(tokens, m.init_hidden(B))
    assert out.nll is None and out.log_probs.shape == (T, B, V)
    torch.testing.assert_close(out.log_probs.exp().sum(-1), torch.ones(T, B))
    out2 = m(tokens, out.hidden.detach(), targets, return_log_probs=True)  # carried hidden state
    torch.testing.assert_close(out2.nll, -out2.log_probs.gather(-1, targets.unsqueeze(-1)).mean())
    assert torch.equal(m(tokens, out.hidden, targets).nll, out2.nll)  # eval mode is deterministic


def test_training_loss_backward_reaches_alphas_and_weights():
    torch.manual_seed(5)
    m = RNNSearchModel(30, n=8).train()
    tokens = torch.randint(0, 30, (7, 4))
    out = m(tokens, None, tokens)
    (out.nll + tar_penalty(out.raw_output, 1e-3)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert m.alphas.grad.abs().sum() > 0


def test_tar_penalty_value():
    raw = torch.tensor([[[0.0]], [[1.0]], [[3.0]]])
    assert tar_penalty(raw, 1e-3).item() == pytest.approx(1e-3 * (1 + 4) / 2)
    assert tar_penalty(raw, 0.0).item() == 0.0


# ------------------------------------------------------------------------------------------ derivation


def test_genotype_one_predecessor_per_node():
    torch.manual_seed(6)
    m = RNNSearchModel(20, n=4)
    g = m.genotype()
    assert isinstance(g, RNNGenotype) and g.num_nodes == 8 and g.concat == tuple(range(1, 9))
    assert all(0 <= p < i for i, (_, p) in enumerate(g.recurrent, start=1))
    with torch.no_grad():  # hand-built: node i ← i−1 with relu, none dominant
        m.alphas.zero_()
        r = 0
        for i in range(1, 9):
            m.alphas[r : r + i, 0] = 10.0
            m.alphas[r + i - 1, RNN_PRIMITIVES.index("relu")] = 3.0
            r += i
    assert m.genotype().recurrent == tuple(("relu", i - 1) for i in range(1, 9))


# ------------------------------------------------------------------------------------------ functional_call


def test_functional_call_with_overridden_weights():
    torch.manual_seed(7)
    m = RNNSearchModel(25, n=6).double().eval()
    tokens = torch.randint(0, 25, (5, 3))
    before = m(tokens, None, tokens).nll
    new = {name: torch.randn_like(p) * 0.1 for name, p in m.named_weights()}
    out = functional_call(m, new, (tokens, None, tokens), strict=False)
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        for name, p in m2.named_weights():
            p.copy_(new[name])
    torch.testing.assert_close(out.nll, m2(tokens, None, tokens).nll, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out.nll, before)
    torch.testing.assert_close(m(tokens, None, tokens).nll, before, rtol=0, atol=0)  # real weights untouched

    # alphas as an override tensor: the gradient flows to it, not to the module's parameter
    m.train()
    a = m.alphas.detach().clone().requires_grad_(True)
    loss = functional_call(m, {"alphas": a, **new}, (tokens, None, tokens), strict=False).nll
    (ga,) = torch.autograd.grad(loss, [a])
    assert torch.isfinite(ga).all() and ga.abs().sum() > 0 and m.alphas.grad is None


def test_bad_genotype_refused():
    with pytest.raises(GenotypeError):
        RNNEvalModel(20, PUBLISHED["DARTS_V2"], n=4)  # a CNN genotype
    with pytest.raises(GenotypeError):
        RNNEvalModel(20, RNNGenotype((("tanh", 0), ("gelu", 1)), (1, 2)), n=4)


def test_architect_second_order_step_on_search_model():
    """The generic architect drives the recurrent search model (§7.5 knobs: clip, no momentum, tied w)."""
    from dartsnas.architect import Architect
    from dartsnas.supernet.rnn import TIED_EMBEDDING

    torch.manual_seed(8)
    m = RNNSearchModel(40, n=8).train()
    tx, ty, vx, vy = (torch.randint(0, 40, (6, 4)) for _ in range(4))

    def loss_fn(x, y):
        def f(overrides=None):
            out = m(x, None, y) if overrides is None else functional_call(m, overrides, (x, None, y), strict=False)
            return out.nll

        return f

    w_opt = torch.optim.SGD(m.weights(), lr=20)
    a_opt = torch.optim.Adam(m.arch_parameters(), lr=3e-3, betas=(0.9, 0.999), weight_decay=1e-3)
    arch = Architect(
        m, a_opt, 2, weight_decay=5e-7, virtual_clip=0.25, use_momentum=False, frozen_in_virtual_step=(TIED_EMBEDDING,)
    )
    before = [p.detach().clone() for p in m.weights()]
    alphas = m.alphas.detach().clone()
    out = arch.step(loss_fn(tx, ty), loss_fn(vx, vy), 20.0, w_opt, 0)
    assert torch.isfinite(out["val_loss"]) and not torch.equal(m.alphas, alphas)
    assert all(torch.equal(p, b) for p, b in zip(m.weights(), before))
