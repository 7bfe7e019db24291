"""ROBUST-SPEC §7 tests 6-10: β-DARTS, PC-DARTS, DARTS-, SDARTS, DrNAS, and GDAS (§3.7)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dartsnas.methods import EpochContext, build_method
from dartsnas.methods.variants import (
    beta_decay_lambda,
    beta_decay_regulariser,
    darts_minus_beta,
    dirichlet_concentration,
    dirichlet_kl,
    dirichlet_mixing,
    gdas_tau,
    gumbel_hard,
    project_simplex,
    sdarts_epsilon,
    uniform_perturbation,
    widen_mixed_op,
)
from dartsnas.space.derive import derive_genotype
from dartsnas.space.ops import PRIMITIVES
from dartsnas.supernet.mixed import MixedOp, PartialMixedOp, channel_shuffle
from dartsnas.supernet.network import SearchNetwork
from test_methods import batches, make_state

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ β-DARTS (6)


def test_beta_decay_regulariser_values():
    assert beta_decay_regulariser([torch.zeros(6, 5)]).item() == pytest.approx(1.6094379, abs=1e-7)
    assert math.log(5) == pytest.approx(1.6094379, abs=1e-7)
    a = torch.zeros(6, 5)
    a[0] = torch.tensor([1.0, 0, 0, 0, 0])
    a[1] = torch.tensor([2.0, 1, 0, -1, -2])
    assert beta_decay_regulariser([a]).item() == pytest.approx(1.7990831, abs=1e-6)
    # float64 hand computation of the same mean
    lse = [math.log(math.e + 4), math.log(sum(math.exp(v) for v in (2, 1, 0, -1, -2)))] + [math.log(5)] * 4
    assert sum(lse) / 6 == pytest.approx(1.7990831, abs=1e-7)


def test_beta_decay_gradient_is_softmax_over_edges():
    a = torch.zeros(6, 5, dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        a[0, 0] = 1.0
    beta_decay_regulariser([a]).backward()
    assert a.grad[0].tolist() == pytest.approx([0.067435] + [0.024808] * 4, abs=1e-6)
    assert torch.allclose(a.grad, torch.softmax(a.detach(), -1) / 6)
    # several α tensors: the mean runs over all rows of all of them (28 rows in the DARTS space)
    b = [torch.randn(14, 7, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    beta_decay_regulariser(b).backward()
    for t in b:
        assert torch.allclose(t.grad, torch.softmax(t.detach(), -1) / 28)


def test_beta_decay_lambda_schedule_and_alpha_loss():
    assert [beta_decay_lambda(e) for e in (0, 1, 50, 99)] == [0, 0.5, 25, 49.5]
    m = build_method("beta-darts")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(net)
    m.on_epoch_start(net, 50, EpochContext(100))
    wrapped = m.alpha_loss_fn(net, lambda overrides: torch.tensor(1.0))
    assert wrapped(None).item() == pytest.approx(1.0 + 25 * beta_decay_regulariser(net.alphas()).item())


# ------------------------------------------------------------------------------------------ PC-DARTS (7)


def _same_weights(dst, src):
    dst.load_state_dict(src.state_dict())
    return dst


@pytest.mark.parametrize("stride", [1, 2])
def test_pc_darts_k1_is_darts(stride):
    torch.manual_seed(0)
    plain = MixedOp(4, stride)
    part = _same_weights(PartialMixedOp(4, stride, K=1), plain)
    x, w = torch.randn(2, 4, 8, 8), torch.softmax(torch.randn(8), 0)
    assert torch.equal(plain(x, w), part(x, w))
    torch.manual_seed(1)
    a = SearchNetwork(4, 10, 3, 2)
    b = _same_weights(SearchNetwork(4, 10, 3, 2, partial_channels=1), a)
    assert list(a.state_dict()) == list(b.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(a(x), b(x))


def test_channel_shuffle_permutation():
    C, K = 12, 4
    x = torch.arange(C, dtype=torch.float32).reshape(1, C, 1, 1).expand(2, C, 3, 3).contiguous()
    y = channel_shuffle(x, K)
    for c in range(C):
        pos = (c % (C // K)) * K + c // (C // K)
        assert torch.all(y[:, pos] == c)


def test_partial_op_mixes_a_quarter_and_max_pools_the_bypass():
    torch.manual_seed(0)
    C, K = 8, 4
    op = PartialMixedOp(C, 2, K=K)
    assert all(p.shape[0] in (C // K, C // K // 2) or p.dim() == 1 for p in op.parameters())
    x, w = torch.randn(2, C, 8, 8), torch.softmax(torch.randn(8), 0)
    y = op(x, w)
    assert y.shape == (2, C, 4, 4)
    inner = MixedOp.forward(op, x[:, : C // K], w)
    expect = channel_shuffle(torch.cat([inner, torch.nn.functional.max_pool2d(x[:, C // K :], 2, 2)], 1), K)
    assert torch.equal(y, expect)
    part = C // K
    for c in range(part, C):  # bypass channel c sits at (c mod C/K)·K + ⌊c/(C/K)⌋
        pos = (c % part) * K + c // part
        assert torch.equal(y[:, pos], torch.nn.functional.max_pool2d(x[:, c : c + 1], 2, 2)[:, 0])


def test_pc_darts_edge_normalisation_and_derivation():
    m = build_method("pc-darts", args="K=2,warmup_epochs=1")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    assert [tuple(p.shape) for p in net.arch_parameters()] == [(5, 8), (5, 8), (5,), (5,)]
    assert 1e-5 < net.betas_normal.abs().max().item() < 1e-2
    with torch.no_grad():
        net.betas_normal.copy_(torch.tensor([0.0, 0.0, 3.0, -3.0, 0.0]))
    e_n, _ = net.edge_weights()
    assert torch.allclose(e_n[:2].sum(), torch.tensor(1.0)) and torch.allclose(e_n[2:].sum(), torch.tensor(1.0))
    ref = torch.cat([torch.softmax(torch.tensor([0.0, 0.0]), 0), torch.softmax(torch.tensor([3.0, -3.0, 0.0]), 0)])
    assert torch.allclose(e_n, ref)
    # derivation: softmax(α)·edge weight, then the top-2 rule
    scaled = torch.softmax(net.alphas_normal.detach().double(), -1) * e_n.detach().double()[:, None]
    g = net.genotype()
    ref, start = [], 0
    for node in (2, 3):  # by hand: strongest non-`none` scaled value per edge, top 2 edges per node
        rows = scaled[start : start + node]
        strength = [(rows[j, 1:].max().item(), j, int(rows[j, 1:].argmax()) + 1) for j in range(node)]
        ref += [(net.primitives[k], j) for _, j, k in sorted(strength, key=lambda t: -t[0])[:2]]
        start += node
    assert list(g.normal) == ref
    assert 1 not in [j for _, j in g.normal[2:]]  # edge (3←1), β = −3, is out


def test_pc_darts_warmup_freezes_alpha_and_beta():
    st = make_state("pc-darts", init_channels=8, method_args="K=2,warmup_epochs=1")
    crit = torch.nn.CrossEntropyLoss()
    arch0 = [a.detach().clone() for a in st.model.arch_parameters()]
    w0 = [w.detach().clone() for w in st.model.weights()]
    ((x_t, y_t, x_v, y_v),) = batches(1)
    from dartsnas.loops.search import _search_step

    st.epoch = 0
    _search_step(st, crit, x_t, y_t, x_v, y_v, 0.025)
    assert all(torch.equal(a, b) for a, b in zip(arch0, st.model.arch_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(w0, st.model.weights()))
    st.epoch = 1
    _search_step(st, crit, x_t, y_t, x_v, y_v, 0.025)
    assert all(not torch.equal(a, b) for a, b in zip(arch0, st.model.arch_parameters()))


# ------------------------------------------------------------------------------------------ DARTS- (8)


def test_darts_minus_beta_schedule():
    assert [darts_minus_beta(e, 50) for e in (0, 1, 25, 49)] == pytest.approx([1.0, 0.98, 0.5, 0.02])
    assert darts_minus_beta(0, 50, "cosine") == 1.0 and darts_minus_beta(25, 50, "cosine") == pytest.approx(0.5)


def test_darts_minus_beta_zero_is_darts_and_aux_is_outside_alpha():
    m = build_method("darts-minus")
    torch.manual_seed(0)
    plain = SearchNetwork(4, 10, 3, 2)
    torch.manual_seed(0)
    aux = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(aux)
    aux.load_state_dict(plain.state_dict(), strict=False)
    extra = set(aux.state_dict()) - set(plain.state_dict())
    assert extra and all("._aux." in k for k in extra)
    assert {n for n, _ in aux.named_weights()} >= extra - {k for k in extra if "running" in k or "num_batches" in k}
    assert [a.shape for a in aux.arch_parameters()] == [a.shape for a in plain.arch_parameters()]
    x = torch.randn(2, 3, 8, 8)
    aux.set_hooks(aux_weight=0.0)
    assert torch.equal(aux(x), plain(x))
    aux.set_hooks(aux_weight=1.0)
    assert not torch.equal(aux(x), plain(x))
    # stride-2 edges use an affine-free FactorizedReduce, stride-1 edges the identity
    red = next(c for c in aux.cells if c.reduction)
    assert type(red._aux[0]).__name__ == "FactorizedReduce" and not red._aux[0].bn.affine
    assert type(red._aux[2]).__name__ == "FactorizedReduce" and type(red._aux[4]).__name__ == "Identity"
    # the genotype is derived from α alone, exactly as for DARTS
    assert m.genotype(aux) == derive_genotype(aux.alphas_normal, aux.alphas_reduce, 2)
    # the epoch hook sets β_e on every cell
    m.on_epoch_start(aux, 25, EpochContext(50))
    assert all(c.aux_weight == 0.5 for c in aux.cells)


def test_darts_minus_alpha_gradient_only_reaches_alpha():
    m = build_method("darts-minus")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(net)
    loss = torch.nn.functional.cross_entropy(net(torch.randn(2, 3, 8, 8)), torch.tensor([1, 2]))
    arch = net.arch_parameters()
    aux_params = [p for n, p in net.named_parameters() if "._aux." in n]
    assert aux_params and not any(p is a for p in aux_params for a in arch)
    grads = torch.autograd.grad(loss, arch)
    assert all(g.shape == a.shape for g, a in zip(grads, arch))


# ------------------------------------------------------------------------------------------ SDARTS (9)


def test_sdarts_epsilon_schedule():
    assert [sdarts_epsilon(e, 50) for e in (0, 25, 49)] == pytest.approx([0.03, 0.165, 0.2946])


def test_projection_and_perturbation():
    torch.manual_seed(0)
    base = [torch.softmax(torch.randn(14, 7), -1)]
    for eps in (0.03, 0.3):
        pert = uniform_perturbation(base, eps)
        assert (pert[0] - base[0]).abs().max().item() <= eps
        bar = project_simplex(pert[0])
        assert (bar >= 0).all() and torch.allclose(bar.sum(-1), torch.ones(14))
    # a row clamped to zeros gets 1 at its pre-clamp argmax
    out = project_simplex(torch.tensor([[-0.3, -0.1, -0.2], [0.5, 1.5, -1.0]]))
    assert out[0].tolist() == [0.0, 1.0, 0.0]
    assert out[1].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])


@pytest.mark.parametrize("name", ["sdarts-rs", "sdarts-adv"])
def test_sdarts_weight_step_perturbs_and_restores(name):
    m = build_method(name, args="attack_steps=3")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(net)
    m.on_epoch_start(net, 49, EpochContext(50))
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 4])
    alphas = [a.detach().clone() for a in net.alphas()]
    soft = [torch.softmax(a, -1) for a in alphas]
    crit = torch.nn.CrossEntropyLoss()
    with m.weight_step(net, x, y, crit):
        used = [w.detach().clone() for w in net.mixing_weights()]
        crit(net(x), y).backward()
    for u, s in zip(used, soft):
        assert (u >= 0).all() and torch.allclose(u.sum(-1), torch.ones(len(u)))
        # Π can move a value by at most the shift of its row's normalisation; the perturbation is ≤ ε
        assert (u - s).abs().max().item() <= 2 * m.components[0].eps + 1e-6
    assert net.mixing_override is None and net.training
    assert all(torch.equal(a, b) for a, b in zip(alphas, net.alphas()))
    assert all(torch.equal(w, s) for w, s in zip(net.mixing_weights(), soft))
    if name == "sdarts-rs":
        assert any(not torch.allclose(u, s) for u, s in zip(used, soft))


def test_sdarts_adv_never_ends_below_the_unperturbed_loss():
    m = build_method("sdarts-adv", args="attack_steps=3")
    comp = m.components[0]
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(net)
    crit = torch.nn.CrossEntropyLoss()
    for e, seed in ((0, 1), (49, 2), (25, 3)):
        m.on_epoch_start(net, e, EpochContext(50))
        gen = torch.Generator().manual_seed(seed)
        x, y = torch.randn(4, 3, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        with m.weight_step(net, x, y, crit):
            used = [w.detach().clone() for w in net.mixing_weights()]
        l0, l1 = comp.last_losses
        assert l1 >= l0
        net.eval()
        with torch.no_grad():  # recompute the loss of the weights in use, BN in eval mode as in the attack
            net.mixing_override = used
            assert crit(net(x), y).item() == pytest.approx(l1, rel=1e-5)
            net.mixing_override = None
            assert crit(net(x), y).item() == pytest.approx(l0, rel=1e-5)
        net.train()


# ------------------------------------------------------------------------------------------ DrNAS (10)


def test_drnas_sample_is_on_the_simplex_and_differentiable():
    torch.manual_seed(0)
    a = (torch.randn(14, 7) * 3).requires_grad_(True)
    conc = dirichlet_concentration(a)
    assert (conc > 0).all()
    (theta,) = dirichlet_mixing([a])
    assert (theta >= 0).all() and torch.allclose(theta.sum(-1), torch.ones(14))
    (theta * torch.arange(7.0)).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_dirichlet_kl_against_the_closed_form():
    assert dirichlet_kl([torch.zeros(6, 5)]).item() == pytest.approx(0.0, abs=1e-6)
    a = torch.tensor([[0.5, -0.3, 1.2]], dtype=torch.float64)
    c = (torch.nn.functional.elu(a) + 1)[0].tolist()
    c0 = sum(c)

    def dig(v):
        return torch.digamma(torch.tensor(v, dtype=torch.float64)).item()

    # KL(Dir(c) || Dir(1)) = lnΓ(c0) − Σ lnΓ(c_i) − lnΓ(K) + Σ (c_i − 1)(ψ(c_i) − ψ(c0))
    ref = (
        math.lgamma(c0) - sum(math.lgamma(v) for v in c) - math.lgamma(3) + sum((v - 1) * (dig(v) - dig(c0)) for v in c)
    )
    assert dirichlet_kl([a]).item() == pytest.approx(ref, rel=1e-10)


def test_drnas_mixing_is_installed_and_kl_enters_the_alpha_loss():
    m = build_method("drnas", args="reg=kl,reg_scale=0.5")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(net)
    w1, w2 = net.mixing_weights()[0], net.mixing_weights()[0]
    assert not torch.equal(w1, w2)  # a fresh sample every forward
    loss = m.alpha_loss_fn(net, lambda o: torch.tensor(0.0))(None)
    assert loss.item() == pytest.approx(0.5 * dirichlet_kl(net.alphas()).item())


def test_drnas_pruning_zeroes_pruned_ops():
    m = build_method("drnas", args="prune_epoch=2,prune_keep=4")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(net)
    m.on_epoch_start(net, 1, EpochContext(4))
    assert (net.mixing_weights()[0] > 0).all()
    m.on_epoch_start(net, 2, EpochContext(4))
    for w, a in zip(net.mixing_weights(), net.alphas()):
        assert ((w > 0).sum(-1) == 4).all() and torch.allclose(w.sum(-1), torch.ones(len(w)))
        top = a.detach().topk(4, -1).indices
        assert torch.equal((w > 0), torch.zeros_like(w, dtype=torch.bool).scatter_(-1, top, True))
    state = copy.deepcopy(m.state_dict())
    m2 = build_method("drnas", args="prune_epoch=2,prune_keep=4")
    m2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(m.components[0].masks, m2.components[0].masks))
    # Selection is among the survivors: push a pruned op's α above all others; it must not be chosen.
    masks = m.components[0].masks
    with torch.no_grad():
        net.alphas_normal[~masks[0]] = 10.0
    g = m.genotype(net)
    start, k = 0, 0
    for node in (2, 3):
        for op, j in g.normal[k : k + 2]:
            assert masks[0][start + j, net.primitives.index(op)]
        start, k = start + node, k + 2


# ------------------------------------------------------------------------------------------ GDAS (§3.7)


def test_gdas_tau_schedule():
    assert gdas_tau(0, 250) == 10.0 and gdas_tau(249, 250) == pytest.approx(0.1)


def test_gumbel_hard_is_one_hot_with_a_gradient():
    torch.manual_seed(0)
    a = torch.randn(14, 8, requires_grad=True)
    w = gumbel_hard(a, 1.0)
    assert torch.equal(w.detach(), torch.nn.functional.one_hot(w.detach().argmax(-1), 8).float())
    (w * torch.arange(8.0)).sum().backward()
    assert a.grad.abs().sum() > 0


def test_gdas_runs_only_the_sampled_op():
    m = build_method("gdas")
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(net)
    calls = []
    edge = net.cells[0]._ops[0]
    hooks = [op.register_forward_hook(lambda mod, i, o, k=k: calls.append(k)) for k, op in enumerate(edge._ops)]
    torch.manual_seed(5)
    net(torch.randn(2, 3, 8, 8))
    for h in hooks:
        h.remove()
    assert len(calls) <= 1  # one op, or none when `none` was drawn


def test_gdas_edge_value_and_gradient():
    """Value: the sampled op's output alone; gradient: the op's weight gets ⟨g, op(x)⟩, the others Σ g."""
    torch.manual_seed(0)
    op = MixedOp(4, 1)
    x = torch.randn(2, 4, 6, 6)
    w = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], requires_grad=True)  # sep_conv_3x3
    out = op.forward_sampled(x, w)
    ref = op._ops[op.columns.index(4)](x)
    assert torch.equal(out, ref)
    g = torch.randn_like(out)
    out.backward(g)
    assert w.grad[4].item() == pytest.approx((g * ref).sum().item(), rel=1e-5)
    others = [w.grad[k].item() for k in range(8) if k != 4]
    assert others == pytest.approx([g.sum().item()] * 7, rel=1e-5)


def test_widening_copies_channels_with_their_statistics_and_momentum():
    torch.manual_seed(0)
    op = PartialMixedOp(16, 2, K=4)  # 4 channels through the ops, stride 2 (FactorizedReduce halves of 2)
    with torch.no_grad():  # give the BN statistics distinct values
        for m in op.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    momentum = {p: torch.randn_like(p) for p in op.parameters()}
    new, maps, new_mom = widen_mixed_op(op, 2, PRIMITIVES, torch.Generator().manual_seed(3), momentum)
    assert new.part == 8 and new.K == 2 and set(maps) == {4, 2}
    assert torch.equal(maps[4][:4], torch.arange(4)) and len(maps[4]) == 8 and len(maps[2]) == 4
    checked = 0
    for (name, m_old), m_new in zip(op.named_modules(), new.modules()):
        if isinstance(m_old, torch.nn.Conv2d):
            out_map = maps[m_old.weight.shape[0]]
            for c in range(m_new.weight.shape[0]):
                w_new, w_old = m_new.weight[c], m_old.weight[out_map[c]]
                if m_old.groups == 1:
                    w_old = w_old[maps[m_old.weight.shape[1]]]
                assert torch.equal(w_new, w_old), (name, c)
                mo = new_mom[m_new.weight][c]
                mr = momentum[m_old.weight][out_map[c]]
                assert torch.equal(mo, mr if m_old.groups > 1 else mr[maps[m_old.weight.shape[1]]])
                checked += 1
        elif isinstance(m_old, torch.nn.BatchNorm2d):
            cmap = maps[m_old.num_features]
            assert torch.equal(m_new.running_mean, m_old.running_mean[cmap]), name
            assert torch.equal(m_new.running_var, m_old.running_var[cmap]), name
            checked += 1
    assert checked > 50
    x, w = torch.randn(2, 16, 8, 8), torch.softmax(torch.randn(8), 0)
    assert new(x, w).shape == (2, 16, 4, 4)


def test_progressive_drnas_prunes_widens_and_keeps_training():
    m = build_method("drnas", args="partial_channels=4,prune_epoch=1,prune_keep=3,widen_to=2")
    torch.manual_seed(0)
    net = SearchNetwork(8, 10, 3, 2, **m.network_options())
    m.attach(net)
    opt = torch.optim.SGD(net.weights(), lr=0.1, momentum=0.9)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 4])
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    n0 = sum(p.numel() for p in net.weights())
    m.on_epoch_start(net, 1, EpochContext(2, opt))
    assert all(op.K == 2 for c in net.cells for op in c._ops)
    assert sum(p.numel() for p in net.weights()) > n0
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in net.weights()}
    assert all("momentum_buffer" in opt.state[p] for p in net.weights() if p.dim() == 4)
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    for w in net.mixing_weights():
        assert ((w > 0).sum(-1) == 3).all()
    # resume: a fresh network rebuilt from the method state takes the widened state_dict
    state = copy.deepcopy(m.state_dict())
    m2 = build_method("drnas", args="partial_channels=4,prune_epoch=1,prune_keep=3,widen_to=2")
    torch.manual_seed(0)
    net2 = SearchNetwork(8, 10, 3, 2, **m2.network_options())
    m2.attach(net2)
    opt2 = torch.optim.SGD(net2.weights(), lr=0.1, momentum=0.9)
    m2.load_state_dict(state)
    m2.restore(net2, opt2)
    net2.load_state_dict(net.state_dict())
    opt2.load_state_dict(opt.state_dict())
    assert {id(p) for g in opt2.param_groups for p in g["params"]} == {id(p) for p in net2.weights()}
