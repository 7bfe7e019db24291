"""Collapse diagnostics (ROBUST-SPEC §2; §7 test 12): exact Hessian-vector products against finite differences
and the full matrix, power iteration and its shift rule, entropies, counts, the DARTS-ES rule."""

from __future__ import annotations

import math

import pytest
import torch

from dartsnas.diagnostics import (
    AlphaHessian,
    cell_counts,
    darts_es,
    dominant_eigenvalue,
    edge_entropies,
    epoch_diagnostics,
    hessian_eigenvalue,
    power_iteration,
)
from dartsnas.space.genotype import PUBLISHED
from dartsnas.space.nb201 import parse_arch_str
from dartsnas.supernet.nb201 import NB201SearchNetwork
from dartsnas.supernet.network import SearchNetwork

WD = 1e-3


def _nb201():
    torch.manual_seed(0)
    net = NB201SearchNetwork(C=4, num_cells=1, num_classes=10).double()
    with torch.no_grad():
        net.alphas_cell.normal_(0, 0.7)
    x = torch.randn(8, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    return net, x, y


def _darts():
    torch.manual_seed(1)
    net = SearchNetwork(C=4, num_classes=10, layers=3, num_nodes=2).double()
    with torch.no_grad():
        for a in net.arch_parameters():
            a.normal_(0, 0.7)
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    return net, x, y


SPACES = {"nb201": _nb201, "darts": _darts}


@pytest.mark.parametrize("space", SPACES)
def test_hvp_matches_a_central_difference_of_the_alpha_gradient(space):
    net, x, y = SPACES[space]()
    h = AlphaHessian(net, x, y, WD)
    assert h.size == (30 if space == "nb201" else 2 * 5 * 8)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(h.size, generator=gen, dtype=torch.float64)
    v /= v.norm()
    hv = h.hvp(v)
    eps = 1e-5

    def grad_at(delta):
        with torch.no_grad():
            offset = 0
            for a in net.arch_parameters():
                a.add_(delta[offset : offset + a.numel()].view_as(a))
                offset += a.numel()
        g = AlphaHessian(net, x, y, WD).gradient()
        with torch.no_grad():
            offset = 0
            for a in net.arch_parameters():
                a.sub_(delta[offset : offset + a.numel()].view_as(a))
                offset += a.numel()
        return g

    fd = (grad_at(eps * v) - grad_at(-eps * v)) / (2 * eps)
    assert (hv - fd).norm() <= 1e-5 * hv.norm()
    assert hv.norm() > 10 * WD  # not just the weight-decay term


@pytest.mark.parametrize("space", SPACES)
def test_full_matrix_is_symmetric_and_power_iteration_agrees_with_it(space):
    net, x, y = SPACES[space]()
    h = AlphaHessian(net, x, y, WD)
    m = h.matrix()
    assert (m - m.T).abs().max() <= 1e-8 * m.abs().max()
    assert (m - m.T).abs().max() <= 1e-8
    exact = float(torch.linalg.eigvalsh((m + m.T) / 2).max())
    eig = h.dominant_eigenvalue(seed=0, tol=1e-9, max_iter=20000)
    assert abs(eig.value - exact) <= 1e-6 * abs(exact)
    # the spec's stopping rule (1e-4 relative change, at most 100 products) still lands close
    loose = h.dominant_eigenvalue(seed=0)
    assert loose.iterations <= 200
    assert abs(loose.value - exact) <= 0.05 * abs(exact)
    if space == "nb201":  # "auto" takes the full matrix for 30 entries
        assert hessian_eigenvalue(net, x, y, WD).value == pytest.approx(exact, rel=1e-12)


def test_the_weight_decay_term_adds_wd_times_identity():
    net, x, y = _nb201()
    m0 = AlphaHessian(net, x, y, 0.0).matrix()
    m1 = AlphaHessian(net, x, y, 0.5).matrix()
    torch.testing.assert_close(m1 - m0, 0.5 * torch.eye(30, dtype=torch.float64), atol=1e-12, rtol=0)


def test_hessian_leaves_running_statistics_gradients_and_mode_alone():
    net, x, y = _nb201()
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    hessian_eigenvalue(net, x, y, WD, method="power")
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())
    assert not net.training


def test_power_iteration_and_the_shift_for_negative_eigenvalues():
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))

    def mat(ev):
        a = q @ torch.diag(torch.tensor(ev, dtype=torch.float64)) @ q.T
        return lambda v: a @ v

    e = dominant_eigenvalue(mat([-5.0, 1.0, 2.0, 0.5, -1.0, 0.1]), 6, tol=1e-12, max_iter=5000)
    assert e.shifted and e.value == pytest.approx(2.0, rel=1e-6)
    e = dominant_eigenvalue(mat([3.0, -1.0, 2.0, 0.5, -2.5, 0.1]), 6, tol=1e-12, max_iter=5000)
    assert not e.shifted and e.value == pytest.approx(3.0, rel=1e-6)
    e = dominant_eigenvalue(mat([-3.0, -1.0, -2.0, -0.5, -2.5, -0.1]), 6, tol=1e-12, max_iter=5000)
    assert e.shifted and e.value == pytest.approx(-0.1, abs=1e-6)
    # the stopping rule: at most max_iter products; stops as soon as the quotient settles
    _, n = power_iteration(mat([1.0, 0.999, 0.5, 0.1, 0.0, 0.0]), 6, tol=1e-15, max_iter=7)
    assert n == 7
    # rank one: the 1st product gives (v0·u)², the 2nd the exact 1, the 3rd repeats it and stops
    _, n = power_iteration(mat([1.0, 0.0, 0.0, 0.0, 0.0, 0.0]), 6, tol=1e-4)
    assert n == 3


def test_power_iteration_is_seeded():
    a = torch.diag(torch.tensor([2.0, 1.9, 1.0], dtype=torch.float64))
    r1 = power_iteration(lambda v: a @ v, 3, seed=5)
    r2 = power_iteration(lambda v: a @ v, 3, seed=5)
    assert r1 == r2


def test_entropies_and_counts():
    a = torch.zeros(6, 5)
    a[0] = torch.tensor([100.0, 0, 0, 0, 0])
    ent = edge_entropies([a])
    assert ent[0][0] == pytest.approx(0.0, abs=1e-12)
    assert ent[0][1] == pytest.approx(math.log(5))
    g = parse_arch_str("|skip_connect~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_3x3~1|none~2|")
    assert cell_counts(g) == {"skip_count": 2, "none_count": 2, "param_free_count": 5}
    # DARTS V1's normal cell: 3 skip_connect pairs, no pooling
    assert cell_counts(PUBLISHED["DARTS_V1"]) == {"skip_count": 3, "param_free_count": 3}
    assert cell_counts(PUBLISHED["DARTS_V2"]) == {"skip_count": 2, "param_free_count": 2}


def test_epoch_diagnostics_record():
    net, x, y = _darts()
    rec = epoch_diagnostics(net, net.genotype(), (x, y), WD, seed=0)
    assert len(rec["alpha_entropy"]) == 2 and len(rec["alpha_entropy"][0]) == 5
    assert math.isfinite(rec["hessian_eig"]) and rec["hessian_products"] >= 2
    assert "skip_count" in rec
    rec = epoch_diagnostics(net, net.genotype(), None, WD)
    assert "hessian_eig" not in rec


# ------------------------------------------------------------------------------------------ DARTS-ES


def _first_stop(seq):
    for e in range(len(seq)):
        r = darts_es(seq[: e + 1])
        if r is not None:
            return e, r
    return None


def test_darts_es_fires_exactly_as_specified():
    # flat at 1.0 for 20 epochs, then 2.0: local average (window 5) at e is 1 + (e - 19)/5 for e = 20..24;
    # it exceeds 1.3 x the average 4 evaluations earlier (1.0) first at e = 21 (1.4 > 1.3), returning 17.
    seq = [1.0] * 20 + [2.0] * 10
    assert _first_stop(seq) == (21, 17)
    # equal to 1.3 x is not "exceeds": 1.0 then 2.5 at e = 20 gives 1.3 exactly at e = 20 (1 + 1.5/5)
    seq = [1.0] * 20 + [2.5] + [1.0] * 10
    assert _first_stop(seq) is None
    # the earlier evaluation must be at epoch >= 10: a jump at epoch 12 would fire at e = 12 against
    # epoch 8 (average 1.8 > 1.3); it fires only at e = 14 against epoch 10 (3.4 > 1.3)
    seq = [1.0] * 12 + [5.0] * 30
    assert _first_stop(seq) == (14, 10) and _expected(seq, _first_stop(seq))
    assert darts_es(seq[:13], start_epoch=0) == 8
    # a jump already inside the window of epoch 10 never fires
    assert _first_stop([1.0] * 6 + [5.0] * 30) is None
    # a slow rise (1 % per epoch) never fires
    assert _first_stop([1.01**e for e in range(50)]) is None
    # too short to have a full window 4 evaluations before epoch 10
    assert darts_es([1.0] * 13 + [100.0]) is None


def _expected(seq, stop):
    """Independent scan of the rule for the jump case, written out longhand."""
    for e in range(len(seq)):
        b = e - 4
        if b < 10:
            continue
        new = sum(seq[e - 4 : e + 1]) / 5
        old = sum(seq[b - 4 : b + 1]) / 5
        if new > 1.3 * old:
            return stop == (e, b)
    return stop is None


def test_darts_es_window_and_factor_are_parameters():
    seq = [1.0] * 12 + [1.25] * 10
    assert _first_stop(seq) is None
    assert darts_es(seq[:15], factor=1.1) == 10  # window 5: 1.15 > 1.1 x 1.0
    assert darts_es(seq[:15], factor=1.2) is None  # 1.15 < 1.2
    assert darts_es(seq[:15], window=2, factor=1.2) == 10  # window 2: 1.25 > 1.2
