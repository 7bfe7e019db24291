"""The alpha step (spec §3.4, §3.5, §7.5; acceptance tests §12.5-12.7), float64, tiny networks, CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dartsnas.architect import (
    Architect,
    arch_parameter_names,
    exact_hvp,
    finite_difference_hvp,
    global_norm,
    hypergradient,
    make_loss_fn,
    momentum_buffers,
    virtual_weights,
)
from dartsnas.errors import NonFiniteError
from dartsnas.supernet.network import SearchNetwork

MU, LAMBDA = 0.9, 3e-4
CE = nn.CrossEntropyLoss()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny float64 networks: intra-op threads only add contention (and are very slow on a loaded machine).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_net(seed: int = 0) -> SearchNetwork:
    torch.manual_seed(seed)
    # layers=3: one normal cell, then reductions at 1 and 2 (8x8 -> 4x4 -> 2x2).
    net = SearchNetwork(C=4, num_classes=3, layers=3, num_nodes=2, multiplier=2).double()
    with torch.no_grad():  # alphas away from uniform so that the second-order term is not tiny
        for a in net.arch_parameters():
            a.normal_(0.0, 0.5)
    return net


def batch(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def sgd(net: SearchNetwork, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(net.weights(), lr=lr, momentum=MU, weight_decay=LAMBDA)


def adam(net: nn.Module, lr: float = 3e-4) -> torch.optim.Adam:
    return torch.optim.Adam(net.arch_parameters(), lr=lr, betas=(0.5, 0.999), eps=1e-8)


def real_sgd_step(net: SearchNetwork, opt: torch.optim.Optimizer, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    CE(net(x), y).backward()
    opt.step()


def rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return (global_norm([x - y for x, y in zip(a, b)]) / global_norm(b)).item()


def weights_of(net) -> list[torch.Tensor]:
    return [p for _, p in net.named_weights()]


def snapshot(tensors) -> list[torch.Tensor]:
    return [t.detach().clone() for t in tensors]


def assert_bit_exact(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def second_order_pieces(net, eta, opt, xt, yt, xv, yv):
    """w', v and d_alpha through the Architect's own pieces (for the HVP tests)."""
    arch = Architect(net, adam(net), order=2)
    lt = make_loss_fn(net, xt, yt, CE)
    vs = arch.virtual_step(lt, eta, opt)
    vg = arch.virtual_val_grads(make_loss_fn(net, xv, yv, CE), vs["w_prime"])
    return arch, lt, vg["v"], vg["d_alpha"]


# ----------------------------------------------------------------------------------- bookkeeping


def test_alpha_names_and_isolation_from_weight_set():
    net = tiny_net()
    assert arch_parameter_names(net) == ["alphas_normal", "alphas_reduce"]
    arch_ids = {id(a) for a in net.arch_parameters()}
    opt = sgd(net, 0.025)
    assert not arch_ids & {id(p) for g in opt.param_groups for p in g["params"]}
    assert not arch_ids & {id(p) for p in net.weights()}


# ------------------------------------------------------------------------- (a) the virtual step


def test_virtual_step_before_any_weight_step_has_zero_momentum():
    net, eta = tiny_net(), 0.05
    opt = sgd(net, eta)
    ws = weights_of(net)
    assert all(torch.count_nonzero(m) == 0 for m in momentum_buffers(opt, ws))
    xt, yt = batch(1)
    arch = Architect(net, adam(net), order=2)
    w_prime = arch.virtual_step(make_loss_fn(net, xt, yt, CE), eta, opt)["w_prime"]
    # independent: a real first SGD step (no clipping) from a copy lands exactly on w'
    twin = copy.deepcopy(net)
    real_sgd_step(twin, sgd(twin, eta), xt, yt)
    for wp, w in zip(w_prime, weights_of(twin)):
        torch.testing.assert_close(wp, w.detach(), rtol=0, atol=1e-10)


def test_virtual_step_after_one_real_sgd_step_matches_formula():
    net, eta = tiny_net(), 0.05
    opt = sgd(net, eta)
    real_sgd_step(net, opt, *batch(10))  # fills the momentum buffers
    xt, yt = batch(1)
    arch = Architect(net, adam(net), order=2)
    vs = arch.virtual_step(make_loss_fn(net, xt, yt, CE), eta, opt)

    # independent: g by an ordinary backward, m read from the optimizer, the formula of §3.5 step 1
    ws = weights_of(net)
    net.zero_grad(set_to_none=True)
    CE(net(xt), yt).backward()
    for p, wp, g in zip(ws, vs["w_prime"], vs["grad"]):
        m = opt.state[p]["momentum_buffer"]
        assert torch.count_nonzero(m) > 0 or torch.count_nonzero(p) == 0
        expected = p.detach() - eta * (MU * m + p.grad + LAMBDA * p.detach())
        torch.testing.assert_close(wp, expected, rtol=0, atol=1e-10)
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-12)

    # and w' is the next real SGD update (momentum, coupled weight decay, no clipping)
    twin = copy.deepcopy(net)
    twin_opt = sgd(twin, eta)
    twin_opt.load_state_dict(opt.state_dict())
    real_sgd_step(twin, twin_opt, xt, yt)
    for wp, w in zip(vs["w_prime"], weights_of(twin)):
        torch.testing.assert_close(wp, w.detach(), rtol=0, atol=1e-10)


def test_virtual_weights_pure_helper():
    w, g, m = [torch.tensor([1.0, -2.0])], [torch.tensor([0.5, 0.25])], [torch.tensor([0.1, 0.2])]
    out = virtual_weights(w, g, 0.1, momentum_buffers=m, momentum=0.9, weight_decay=0.01)
    torch.testing.assert_close(
        out[0], torch.tensor([1.0 - 0.1 * (0.09 + 0.5 + 0.01), -2.0 - 0.1 * (0.18 + 0.25 - 0.02)])
    )
    assert out[0].requires_grad and out[0].is_leaf
    no_m = virtual_weights(w, g, 0.1, momentum_buffers=None, weight_decay=0.0)
    torch.testing.assert_close(no_m[0], torch.tensor([0.95, -2.025]))
    frozen = virtual_weights(w, g, 0.1, momentum_buffers=m, frozen=[True])
    assert torch.equal(frozen[0], w[0])


# ------------------------------------------------- (b) finite difference against double backward


def test_finite_difference_converges_to_exact_hvp():
    net, eta = tiny_net(), 0.05
    opt = sgd(net, eta)
    real_sgd_step(net, opt, *batch(10))
    (xt, yt), (xv, yv) = batch(1), batch(2)
    arch, lt, v, d_alpha = second_order_pieces(net, eta, opt, xt, yt, xv, yv)
    ws, alphas = weights_of(net), net.arch_parameters()

    h_exact, _ = exact_hvp(lt, ws, alphas, v)
    h_small, eps_small, _, _ = finite_difference_hvp(lt, arch.weight_names, ws, alphas, v, eps_scale=1e-7)
    h_default, eps_default, _, _ = finite_difference_hvp(lt, arch.weight_names, ws, alphas, v)
    assert global_norm(h_exact) > 1e-3 * global_norm(d_alpha)  # the second-order term is not negligible
    # Tiny eps: the kinks of ReLU/max-pool are (almost surely, for these random inputs) not crossed.
    assert rel(h_small, h_exact) < 1e-4
    big_eta = 1.0
    assert rel(hypergradient(d_alpha, h_small, big_eta), hypergradient(d_alpha, h_exact, big_eta)) < 1e-4
    # The default eps = 0.01/||v|| runs and is finite; it may be far from the exact product on a ReLU
    # network (spec §3.5 "Accuracy"), so only finiteness is asserted.
    torch.testing.assert_close(eps_default, 0.01 / global_norm(v))
    torch.testing.assert_close(eps_small, 1e-7 / global_norm(v))
    assert all(torch.isfinite(h).all() for h in h_default)


def test_step_finite_difference_versus_exact_option():
    net, eta = tiny_net(), 0.5
    opt = sgd(net, eta)
    real_sgd_step(net, opt, *batch(10))
    lt, lv = make_loss_fn(net, *batch(1), CE), make_loss_fn(net, *batch(2), CE)
    grads = {}
    for name, kw in {"exact": dict(hvp="exact"), "fd_small": dict(eps_scale=1e-7), "default": {}}.items():
        arch = Architect(net, adam(net, lr=0.0), order=2, **kw)  # lr 0: alphas stay put between runs
        out = arch.step(lt, lv, eta, opt, step_index=0)
        assert torch.isfinite(out["val_loss"]) and torch.isfinite(out["train_loss"])
        grads[name] = [a.grad.clone() for a in net.arch_parameters()]
    assert rel(grads["fd_small"], grads["exact"]) < 1e-4
    assert all(torch.isfinite(g).all() for g in grads["default"])


# --------------------------------------------------------------------- (c) term by term, ε bug


def _assert_is_spec_central_difference(h, g_plus, g_minus, eps):
    expected = [(gp - gm) / (2 * eps) for gp, gm in zip(g_plus, g_minus)]
    assert rel(h, expected) < 1e-9


def test_finite_difference_term_by_term():
    net, eta = tiny_net(), 0.05
    opt = sgd(net, eta)
    real_sgd_step(net, opt, *batch(10))
    (xt, yt), (xv, yv) = batch(1), batch(2)
    arch, lt, v, _ = second_order_pieces(net, eta, opt, xt, yt, xv, yv)
    h, eps, _, _ = finite_difference_hvp(lt, arch.weight_names, weights_of(net), net.arch_parameters(), v)
    torch.testing.assert_close(eps, 0.01 / torch.sqrt(sum((t**2).sum() for t in v)))

    # independently, the reference way: perturb the ORIGINAL network's weights in place, backward, restore
    twin = copy.deepcopy(net)
    saved = snapshot(twin.weights())

    def alpha_grad_at(sign):
        with torch.no_grad():
            for p, w0, vi in zip(twin.weights(), saved, v):
                p.copy_(w0 + sign * eps * vi)
        twin.zero_grad(set_to_none=True)
        CE(twin(xt), yt).backward()
        return [a.grad.clone() for a in twin.arch_parameters()]

    g_plus, g_minus = alpha_grad_at(1.0), alpha_grad_at(-1.0)
    _assert_is_spec_central_difference(h, g_plus, g_minus, eps)

    # the eps-squared bug (divide by 2, then multiply by eps) fails the same assertion
    buggy = [(gp - gm) / 2 * eps for gp, gm in zip(g_plus, g_minus)]
    with pytest.raises(AssertionError):
        _assert_is_spec_central_difference(buggy, g_plus, g_minus, eps)
    # ... and the buggy h is smaller by eps**2, i.e. the method silently becomes first order
    assert rel([b / eps**2 for b in buggy], h) < 1e-9
    assert eps < 0.1


def test_perturbation_is_around_w_not_w_prime():
    """Spec bug (b): g± at w ± εv, not at w' ± εv."""
    net, eta = tiny_net(), 0.5
    opt = sgd(net, eta)
    real_sgd_step(net, opt, *batch(10))
    (xt, yt), (xv, yv) = batch(1), batch(2)
    arch, lt, v, d_alpha = second_order_pieces(net, eta, opt, xt, yt, xv, yv)
    ws, alphas = weights_of(net), net.arch_parameters()
    w_prime = arch.virtual_step(lt, eta, opt)["w_prime"]
    h_w, _, _, _ = finite_difference_hvp(lt, arch.weight_names, ws, alphas, v)
    h_wp, _, _, _ = finite_difference_hvp(lt, arch.weight_names, w_prime, alphas, v)

    arch_opt = adam(net, lr=0.0)
    Architect(net, arch_opt, order=2).step(lt, make_loss_fn(net, xv, yv, CE), eta, opt, 0)
    step_grad = [a.grad for a in alphas]
    assert rel(step_grad, hypergradient(d_alpha, h_w, eta)) < 1e-12
    assert rel(step_grad, hypergradient(d_alpha, h_wp, eta)) > 1e-6


# ------------------------------------------------------------------------ (d) weights restored


def test_weights_bit_exact_after_hvp_and_step():
    net, eta = tiny_net(), 0.05
    opt = sgd(net, eta)
    real_sgd_step(net, opt, *batch(10))
    (xt, yt), (xv, yv) = batch(1), batch(2)
    before = snapshot(net.weights())
    arch, lt, v, _ = second_order_pieces(net, eta, opt, xt, yt, xv, yv)
    finite_difference_hvp(lt, arch.weight_names, weights_of(net), net.arch_parameters(), v)
    assert_bit_exact(snapshot(net.weights()), before)
    net.zero_grad(set_to_none=True)
    Architect(net, adam(net), order=2).step(lt, make_loss_fn(net, xv, yv, CE), eta, opt, 0)
    assert_bit_exact(snapshot(net.weights()), before)
    assert all(p.grad is None for p in net.weights())  # no weight gradient leaks out of the alpha step


def test_bn_buffers_virtual_forward_uses_a_copy():
    net, eta = tiny_net(), 0.05
    opt = sgd(net, eta)
    lt, lv = make_loss_fn(net, *batch(1), CE), make_loss_fn(net, *batch(2), CE)
    arch = Architect(net, adam(net), order=2)
    w_prime = arch.virtual_step(lt, eta, opt)["w_prime"]
    buffers = snapshot(net.buffers())
    arch.virtual_val_grads(lv, w_prime)
    assert_bit_exact(snapshot(net.buffers()), buffers)
    # a whole second-order step: the forwards at w, w+εv, w−εv update the real statistics, w' does not
    bn = net.stem[1]
    n0 = int(bn.num_batches_tracked)
    arch.step(lt, lv, eta, opt, 0)
    assert int(bn.num_batches_tracked) == n0 + 3


def test_forward_counts_match_spec_cost():
    net, eta = tiny_net(), 0.05
    opt = sgd(net, eta)
    calls = {"train": 0, "val": 0}

    def counted(name, fn):
        def wrapped(overrides=None):
            calls[name] += 1
            return fn(overrides)

        return wrapped

    lt = counted("train", make_loss_fn(net, *batch(1), CE))
    lv = counted("val", make_loss_fn(net, *batch(2), CE))
    Architect(net, adam(net), order=2).step(lt, lv, eta, opt, 0)
    assert calls == {"train": 3, "val": 1}
    Architect(net, adam(net), order=1).step(lt, lv, eta, opt, 1)
    assert calls == {"train": 3, "val": 2}


# --------------------------------------------------------------------------- (e) first order


def _alpha_update(net, train_xy, val_xy, order=1, eta=0.05):
    """Alphas after one alpha step from net's current state, with a fresh Adam; net restored after."""
    saved = snapshot(net.arch_parameters())
    opt = sgd(net, eta)
    Architect(net, adam(net, lr=1e-2), order=order).step(
        make_loss_fn(net, *train_xy, CE), make_loss_fn(net, *val_xy, CE), eta, opt, 0
    )
    after = snapshot(net.arch_parameters())
    grads = snapshot(a.grad for a in net.arch_parameters())
    with torch.no_grad():
        for a, s in zip(net.arch_parameters(), saved):
            a.copy_(s)
    return after, grads


def test_first_order_alpha_step_depends_only_on_validation_batch():
    net = tiny_net()
    A, B, V, W = batch(1), batch(3), batch(2), batch(4)
    before = snapshot(net.arch_parameters())
    weights = snapshot(net.weights())
    u_av, g_av = _alpha_update(net, A, V)
    u_bv, g_bv = _alpha_update(net, B, V)
    assert_bit_exact(u_bv, u_av)
    assert_bit_exact(g_bv, g_av)
    assert not torch.equal(u_av[0], before[0])
    _, g_aw = _alpha_update(net, A, W)
    assert rel(g_aw, g_av) > 1e-3
    # the first-order step equals one Adam step on grad_alpha L_val at w, and writes no weight grads
    net.zero_grad(set_to_none=True)
    arch_opt = adam(net, lr=1e-2)
    Architect(net, arch_opt, order=1).step(None, make_loss_fn(net, *V, CE), 0.05, None, 0)
    assert all(p.grad is None for p in net.weights())
    assert_bit_exact(snapshot(net.weights()), weights)
    twin = tiny_net()
    twin.load_state_dict({k: v for k, v in net.state_dict().items()})
    with torch.no_grad():
        for a, s in zip(twin.arch_parameters(), before):
            a.copy_(s)
    CE(twin(V[0]), V[1]).backward()
    twin_opt = adam(twin, lr=1e-2)
    twin_opt.step()
    for a, b in zip(net.arch_parameters(), twin.arch_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def _search_state(order=1):
    from dartsnas.data.images import ImageData
    from dartsnas.loops.search import SearchConfig, _State

    cfg = SearchConfig.build("tiny", order=order, device="cpu", arch_lr=0.05)
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
    torch.manual_seed(0)
    st = _State(cfg, data, torch.device("cpu"))
    st.model.train()
    return st


def _reference_weight_step(net, alphas, x, y, lr, momentum, wd, clip):
    """An independent weight step: a copy of ``net`` with the given alphas, plain SGD on (x, y) only."""
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for a, v in zip(twin.arch_parameters(), alphas):
            a.copy_(v)
            a.grad = torch.full_like(a, 1e6)  # a huge alpha gradient must not enter the clip norm
    opt = torch.optim.SGD(twin.weights(), lr=lr, momentum=momentum, weight_decay=wd)
    twin.zero_grad(set_to_none=False)
    for a in twin.arch_parameters():
        a.grad = None
    CE(twin(x), y).backward()
    nn.utils.clip_grad_norm_(twin.weights(), clip)
    opt.step()
    return snapshot(twin.weights())


@pytest.mark.parametrize("order", [1, 2])
def test_search_step_weight_step_sees_the_updated_alphas_and_only_the_train_batch(order):
    """The real step (loops.search._search_step): its weight step equals an independent SGD step on the
    training batch taken with the alphas *after* this step's alpha update; with the alphas from before the
    update it would differ. The weight step leaves the alphas where the alpha step put them."""
    from dartsnas.loops.search import _search_step

    st = _search_state(order)
    cfg = st.cfg
    gen = torch.Generator().manual_seed(3)
    x_t, x_v = torch.randn(2, 4, 3, 8, 8, generator=gen)
    y_t, y_v = torch.randint(0, 10, (2, 4), generator=gen)
    net_before = copy.deepcopy(st.model)
    alphas_before = snapshot(st.model.arch_parameters())
    # the alpha step alone, on a twin state: where the alphas must end up
    twin = _search_state(order)
    twin.architect.step(
        make_loss_fn(twin.model, x_t, y_t, CE), make_loss_fn(twin.model, x_v, y_v, CE), cfg.lr, twin.w_opt, 0
    )
    alphas_after = snapshot(twin.model.arch_parameters())
    assert any(not torch.equal(a, b) for a, b in zip(alphas_after, alphas_before))

    out = _search_step(st, CE, x_t, y_t, x_v, y_v, cfg.lr)
    assert_bit_exact(snapshot(st.model.arch_parameters()), alphas_after)
    assert set(out) == {"loss", "correct", "count", "arch_step_val_loss"} and float(out["count"]) == 4
    got = snapshot(st.model.weights())
    ref = _reference_weight_step(
        net_before, alphas_after, x_t, y_t, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip
    )
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    stale = _reference_weight_step(
        net_before, alphas_before, x_t, y_t, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip
    )
    assert max((a - b).abs().max().item() for a, b in zip(got, stale)) > 1e-5
    other = _reference_weight_step(
        net_before, alphas_after, x_v, y_v, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.grad_clip
    )
    assert max((a - b).abs().max().item() for a, b in zip(got, other)) > 1e-5


# ------------------------------------------------------------------ (f) the recurrent variant


class Toy(nn.Module):
    """A two-weight model with a 'tied embedding' used at input and output, and one alpha vector."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(3, 3, generator=g, dtype=torch.float64))
        self.w1 = nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64))
        self.alpha = nn.Parameter(0.5 * torch.randn(4, generator=g, dtype=torch.float64))
        self.bn = nn.BatchNorm1d(4, affine=False, dtype=torch.float64)

    def named_weights(self):
        return [("emb", self.emb), ("w1", self.w1)]

    def arch_parameters(self):
        return [self.alpha]

    def forward(self, x):
        return toy_f(self.emb, self.w1, self.alpha, x, self.bn)


def toy_f(emb, w1, alpha, x, bn=None):
    h = torch.tanh(x @ emb)
    z = torch.tanh(h @ w1.T)
    if bn is not None:
        z = bn(z)
    z = z * torch.softmax(alpha, 0) * 4
    return z[:, :3] @ emb.T


def toy_loss(out, y):
    return ((out.sum(-1) - y) ** 2).mean()


def toy_reference_gradient(model, clip, eta, wd, xt, yt, xv, yv):
    """§7.5 written out on plain tensors, without functional_call: returns (g_alpha, kappa)."""
    bn = nn.BatchNorm1d(4, affine=False, dtype=torch.float64)  # training mode: batch statistics only
    emb, w1, alpha = (
        model.emb.detach().clone().requires_grad_(),
        model.w1.detach().clone().requires_grad_(),
        model.alpha.detach().clone().requires_grad_(),
    )
    g = torch.autograd.grad(toy_loss(toy_f(emb, w1, alpha, xt, bn), yt), [emb, w1])
    gnorm = torch.sqrt(sum((t**2).sum() for t in g))
    kappa = clip / (gnorm + 1e-6)
    gc = [t * min(1.0, kappa.item()) for t in g]
    emb_p = emb.detach().clone().requires_grad_()  # frozen: the embedding stays at w
    w1_p = (w1 - eta * (gc[1] + wd * w1)).detach().requires_grad_()  # no momentum term
    grads = torch.autograd.grad(toy_loss(toy_f(emb_p, w1_p, alpha, xv, bn), yv), [alpha, emb_p, w1_p])
    d_alpha, v = grads[0], list(grads[1:])
    vnorm = torch.sqrt(sum((t**2).sum() for t in v))
    v = [t * min(1.0, (clip / (vnorm + 1e-6)).item()) for t in v]
    eps = 0.01 / torch.sqrt(sum((t**2).sum() for t in v))

    def ga(sign):
        e, w = (emb + sign * eps * v[0]).detach(), (w1 + sign * eps * v[1]).detach()
        return torch.autograd.grad(toy_loss(toy_f(e, w, alpha, xt, bn), yt), [alpha])[0]

    h = (ga(1.0) - ga(-1.0)) / (2 * eps)
    return d_alpha, h, kappa


@pytest.mark.parametrize("clip", [0.25, 1e3])  # clipped (kappa < 1) and not clipped (kappa > 1, still applied)
def test_recurrent_variant_kappa_and_clipping(clip):
    model = Toy()
    eta, wd = 2.0, 5e-7
    g = torch.Generator().manual_seed(5)
    xt, xv = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    yt, yv = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    # a weight optimiser WITH momentum buffers, to show that use_momentum=False ignores them
    wopt = torch.optim.SGD([model.emb, model.w1], lr=eta, momentum=0.9)
    wopt.zero_grad()
    toy_loss(model(xt), yt).backward()
    wopt.step()

    d_alpha, h, kappa = toy_reference_gradient(model, clip, eta, wd, xt, yt, xv, yv)
    expected = d_alpha - eta * kappa * h
    assert (kappa < 1) if clip < 1 else (kappa > 1)
    arch = Architect(
        model,
        torch.optim.Adam([model.alpha], lr=0.0),
        order=2,
        weight_decay=wd,
        virtual_clip=clip,
        use_momentum=False,
        frozen_in_virtual_step=("emb",),
    )
    lt, lv = make_loss_fn(model, xt, yt, toy_loss), make_loss_fn(model, xv, yv, toy_loss)
    out = arch.step(lt, lv, eta, wopt, step_index=0)
    torch.testing.assert_close(out["kappa"], kappa, rtol=1e-12, atol=0)
    torch.testing.assert_close(model.alpha.grad, expected, rtol=1e-9, atol=1e-12)

    # the pieces: clipped g in w', frozen embedding kept at w
    vs = arch.virtual_step(lt, eta, wopt)
    assert torch.equal(vs["w_prime"][0], model.emb.detach())
    gc = [t * torch.clamp(vs["kappa"], max=1.0) for t in vs["grad"]]
    torch.testing.assert_close(vs["w_prime"][1], model.w1.detach() - eta * (gc[1] + wd * model.w1.detach()))
    if clip > 1:  # kappa > 1 multiplies h (reference quirk): capping it at 1 would give another gradient
        capped = d_alpha - eta * 1.0 * h
        assert not torch.allclose(model.alpha.grad, capped, rtol=1e-6, atol=0)


def test_hypergradient_helper():
    d, h = [torch.tensor([1.0, 2.0])], [torch.tensor([10.0, -10.0])]
    torch.testing.assert_close(hypergradient(d, h, 0.1)[0], torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(hypergradient(d, h, 0.1, kappa=2.0)[0], torch.tensor([-1.0, 4.0]))


# --------------------------------------------------------------------------- (g) non-finite


@pytest.mark.parametrize("order, phase", [(1, "architecture"), (2, "virtual step")])
def test_nan_validation_loss_raises_and_leaves_alphas(order, phase):
    net, eta = tiny_net(), 0.05
    opt = sgd(net, eta)
    xv, yv = batch(2)
    xv[0, 0, 0, 0] = float("nan")
    alphas = snapshot(net.arch_parameters())
    arch_opt = adam(net)
    arch = Architect(net, arch_opt, order=order)
    with pytest.raises(NonFiniteError) as info:
        arch.step(make_loss_fn(net, *batch(1), CE), make_loss_fn(net, xv, yv, CE), eta, opt, step_index=7)
    assert info.value.phase == phase and info.value.step == 7
    assert "validation loss" in str(info.value)
    assert_bit_exact(snapshot(net.arch_parameters()), alphas)
    assert all(a.grad is None for a in net.arch_parameters())
    assert len(arch_opt.state) == 0


def test_nan_in_hvp_phase_is_reported_as_such():
    model = Toy()
    g = torch.Generator().manual_seed(5)
    xt, yt = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    xv, yv = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    lt0 = make_loss_fn(model, xt, yt, toy_loss)

    def lt(overrides=None):  # finite at w, NaN at the perturbed weights
        loss = lt0(overrides)
        return loss * float("nan") if overrides is not None else loss

    arch = Architect(model, torch.optim.Adam([model.alpha]), order=2)
    with pytest.raises(NonFiniteError) as info:
        arch.step(lt, make_loss_fn(model, xv, yv, toy_loss), 0.1, None, step_index=3)
    assert info.value.phase == "hessian-vector product"


def test_constructor_validation():
    net = tiny_net()
    with pytest.raises(ValueError):
        Architect(net, adam(net), order=3)
    with pytest.raises(ValueError):
        Architect(net, adam(net), order=2, hvp="magic")
    with pytest.raises(ValueError):
        Architect(net, adam(net), order=2, frozen_in_virtual_step=("nope",))
    with pytest.raises(ValueError):
        Architect(net, torch.optim.Adam([net.alphas_normal]), order=1)


# ----------------------------------------------------------------------- waste out of the eager step


def test_weight_gradients_equal_backward_and_leave_alphas_alone():
    from dartsnas.architect import weight_gradients

    x, y = batch(3)
    ref, net = tiny_net(), tiny_net()
    CE(ref(x), y).backward()
    weight_gradients(CE(net(x), y), net.weights())
    assert_bit_exact([p.grad for p in net.weights()], [p.grad for p in ref.weights()])
    assert all(a.grad is None for a in net.arch_parameters())
    assert all(a.grad is not None for a in ref.arch_parameters())  # backward() would have computed them


def test_shadow_buffers_hold_the_real_values_and_follow_replaced_buffers():
    net, eta = tiny_net(), 0.05
    opt = sgd(net, eta)
    lt, lv = make_loss_fn(net, *batch(1), CE), make_loss_fn(net, *batch(2), CE)
    arch = Architect(net, adam(net), order=2)
    # the virtual forward with persistent shadows equals the one with fresh clones (the previous method)
    w_prime = arch.virtual_step(lt, eta, opt)["w_prime"]
    clones = {name: b.detach().clone() for name, b in net.named_buffers()}
    ref_loss = lv({**clones, **dict(zip(arch.weight_names, w_prime))})
    first = arch.virtual_val_grads(lv, w_prime)
    assert torch.equal(first["val_loss"], ref_loss.detach())
    shadows = {n: t for n, _, t in arch._shadow}
    assert_bit_exact(list(shadows.values()), list(clones.values()))  # the clones after the same forward
    # the real buffers move on (a real forward); the next call starts again from them, in the same tensors
    net(batch(4)[0])
    again = arch._shadow_buffers()
    assert all(again[n] is shadows[n] for n in shadows)
    assert_bit_exact(list(again.values()), snapshot(net.buffers()))
    # a replaced buffer gets a new shadow
    bn = net.stem[1]
    bn.running_mean = bn.running_mean.clone() + 1.0
    again = arch._shadow_buffers()
    assert again["stem.1.running_mean"] is not shadows["stem.1.running_mean"]
    assert torch.equal(again["stem.1.running_mean"], bn.running_mean)


def test_weights_cache_follows_registration_and_conversion():
    net = tiny_net()
    names = [n for n, _ in net.named_weights()]
    assert names == [n for n, _ in net.named_parameters() if n not in ("alphas_normal", "alphas_reduce")]
    assert net.weights() is not net.weights()  # callers get their own list
    net.cells[0].extra = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    assert "cells.0.extra" in [n for n, _ in net.named_weights()]
    assert any(p is net.cells[0].extra for p in net.weights())
    extra = nn.Linear(2, 2).double()  # registered before it is attached: the attachment is seen too
    assert "cells.1.extra.weight" not in [n for n, _ in net.named_weights()]
    net.cells[1].extra = extra
    assert "cells.1.extra.weight" in [n for n, _ in net.named_weights()]
    net.float()
    assert all(p.dtype == torch.float32 for p in net.weights())
    assert [id(p) for p in net.weights()] == [id(p) for n, p in net.named_parameters() if not n.startswith("alphas")]
