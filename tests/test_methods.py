"""The method interface (ROBUST-SPEC §5) and plain DARTS through it: bit-identical to the DARTS code path.

The reference step below is the search step as it was before the hooks existed (α step, then the weight
step on softmax(α)); the reference forward calls the cells with softmax(α) directly.
"""

from __future__ import annotations

import math

import pytest
import torch

from dartsnas.architect import make_loss_fn
from dartsnas.data.images import ImageData
from dartsnas.errors import ConfigError
from dartsnas.loops.search import SearchConfig, _search_step, _State
from dartsnas.methods import REGISTRY, EpochContext, build_method
from dartsnas.methods.variants import beta_decay_regulariser
from dartsnas.space.derive import derive_genotype
from dartsnas.space.ops import PRIMITIVES
from dartsnas.supernet.network import SearchNetwork

torch.set_num_threads(1)


def synthetic_data(n=4, hw=8):
    z = torch.zeros(n, 3, hw, hw, dtype=torch.uint8)
    y = torch.zeros(n, dtype=torch.long)
    return ImageData("synthetic", z, y, z, y, (0.5,) * 3, (0.25,) * 3, 10)


def make_state(method="darts", order=1, init_channels=4, **kw):
    cfg = SearchConfig.build("tiny", order=order, device="cpu", method=method, init_channels=init_channels, **kw)
    torch.manual_seed(0)
    st = _State(cfg, synthetic_data(), torch.device("cpu"))
    st.model.train()
    return st


def batches(steps, seed=1, batch=4, hw=8):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x_t, x_v = torch.randn(2, batch, 3, hw, hw, generator=gen)
        y_t, y_v = torch.randint(0, 10, (2, batch), generator=gen)
        yield x_t, y_t, x_v, y_v


def reference_step(st, criterion, x_t, y_t, x_v, y_v, lr):
    """The pre-hook search step, spelled out."""
    model = st.model
    st.architect.step(
        make_loss_fn(model, x_t, y_t, criterion), make_loss_fn(model, x_v, y_v, criterion), lr, st.w_opt, st.global_step
    )
    st.w_opt.zero_grad(set_to_none=True)
    criterion(model(x_t), y_t).backward()
    for a in model.arch_parameters():
        a.grad = None
    torch.nn.utils.clip_grad_norm_(model.weights(), st.cfg.grad_clip)
    st.w_opt.step()


def reference_forward(model, x):
    w_n = torch.softmax(model.alphas_normal, dim=-1)
    w_r = torch.softmax(model.alphas_reduce, dim=-1)
    s0 = s1 = model.stem(x)
    for cell in model.cells:
        s0, s1 = s1, cell(s0, s1, w_r if cell.reduction else w_n)
    return model.classifier(model.global_pooling(s1).flatten(1))


def test_registry_names():
    assert {"darts", "pc-darts", "darts-minus", "beta-darts", "sdarts-rs", "sdarts-adv", "drnas", "gdas"} <= set(
        REGISTRY
    )


def test_darts_method_leaves_the_network_as_it_was():
    m = build_method("darts")
    assert m.network_options() == {} and m.plain and m.primitives == PRIMITIVES
    torch.manual_seed(3)
    a = SearchNetwork(4, 10, 3, 2)
    torch.manual_seed(3)
    b = SearchNetwork(4, 10, 3, 2, **m.network_options())
    m.attach(b)
    assert b.mixing is None and b.mixing_override is None
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(b(x), reference_forward(a, x))


@pytest.mark.parametrize("order", [1, 2])
def test_darts_through_the_interface_is_bit_identical(order):
    crit = torch.nn.CrossEntropyLoss()
    hooked, ref = make_state(order=order), make_state(order=order)
    for step, (x_t, y_t, x_v, y_v) in enumerate(batches(3)):
        lr = 0.025 - 0.005 * step
        for st in (hooked, ref):
            for g in st.w_opt.param_groups:
                g["lr"] = lr
        _search_step(hooked, crit, x_t, y_t, x_v, y_v, lr)
        reference_step(ref, crit, x_t, y_t, x_v, y_v, lr)
        hooked.global_step += 1
        ref.global_step += 1
    for a, b in zip(hooked.model.arch_parameters(), ref.model.arch_parameters()):
        assert torch.equal(a, b)
    moved = False
    init = make_state(order=order).model.state_dict()
    for (k, a), b in zip(hooked.model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.equal(a, b), k
        moved |= not torch.equal(a, init[k])
    assert moved  # the steps did change the network
    for p, q in zip(hooked.model.weights(), ref.model.weights()):
        assert torch.equal(hooked.w_opt.state[p]["momentum_buffer"], ref.w_opt.state[q]["momentum_buffer"])


def test_unknown_method_and_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="unknown method"):
        build_method("dartz")
    with pytest.raises(ConfigError, match="K"):
        build_method("pc-darts", args="K=0")
    with pytest.raises(ConfigError, match="no hyper-parameter"):
        build_method("beta-darts", args="K=2")
    with pytest.raises(ConfigError, match="key=value"):
        build_method("beta-darts", args="lam_max")
    with pytest.raises(ConfigError, match="warmup_epochs"):
        build_method("pc-darts", epochs=10)
    with pytest.raises(ConfigError, match="space"):
        build_method("darts", space="nb301")
    with pytest.raises(ConfigError, match="method"):
        SearchConfig.build("tiny", method="nope")
    with pytest.raises(ConfigError, match="K=4"):  # tiny: C = 4, 8, 16; C/K = 1 is odd
        SearchConfig.build("tiny", method="pc-darts", method_args="warmup_epochs=1")
    assert SearchConfig.build("tiny", method="pc-darts", method_args="warmup_epochs=1", init_channels=8)
    with pytest.raises(ConfigError, match="exceed 31"):  # tiny: 5 edges + 2 nodes = 7 projections, 5·6+1 epochs
        SearchConfig.build("tiny", method="darts-pt")
    assert SearchConfig.build("tiny", method="darts-pt", epochs=32)


def test_default_spaces_and_arguments():
    assert build_method("beta-darts").space == "darts-7"
    assert build_method("beta-darts", space="darts").space == "darts"
    m = build_method("pc-darts", args="K=2,warmup_epochs=1")
    assert m.network_options() == {"partial_channels": 2, "edge_norm": True}
    assert build_method("sdarts-rs").network_options() == {"primitives": PRIMITIVES[1:]}


def test_darts7_space_has_no_none():
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, 2, primitives=PRIMITIVES[1:])
    assert [tuple(a.shape) for a in net.arch_parameters()] == [(5, 7), (5, 7)]
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    g = net.genotype()
    assert all(op in PRIMITIVES[1:] for op, _ in g.normal + g.reduce)
    # Against the 8-op derivation with a `none` column that can never win.
    pad = [torch.cat([torch.full((5, 1), -1e9), a.detach()], 1) for a in net.alphas()]
    assert g == derive_genotype(*pad, 2)


# ------------------------------------------------------------------------------- §7 test 14: smoke runs

SMOKE = {
    "darts": "",
    "pc-darts": "K=2,warmup_epochs=0",
    "darts-minus": "",
    "beta-darts": "",
    "sdarts-rs": "",
    "sdarts-adv": "attack_steps=2",
    "drnas": "",
    "gdas": "",
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_two_steps_of_every_method_in_the_darts_space(name):
    st = make_state(name, init_channels=8, space="darts", method_args=SMOKE[name])
    # β-DARTS: λ_0 = 0, so take epoch 40 of 50, where the term is active.
    st.method.on_epoch_start(st.model, 40 if name == "beta-darts" else 0, EpochContext(50, st.w_opt))
    before = [a.detach().clone() for a in st.model.arch_parameters()]
    crit = torch.nn.CrossEntropyLoss()
    totals = {}
    for x_t, y_t, x_v, y_v in batches(2, batch=8):
        for k, v in _search_step(st, crit, x_t, y_t, x_v, y_v, 0.025).items():
            totals[k] = totals.get(k, 0.0) + float(v)
        st.global_step += 1
    loss_sum, count, val_sum = totals["loss"], totals["count"], totals["arch_step_val_loss"]
    train_loss, val_loss = loss_sum / count, val_sum / 2
    assert math.isfinite(train_loss) and abs(train_loss - math.log(10)) < 0.5, train_loss
    if name == "beta-darts":  # the α-step loss includes λ·R(α), R ≈ ln 8 while α ≈ 0
        val_loss -= 20.0 * beta_decay_regulariser(st.model.alphas()).item()
    assert math.isfinite(val_loss) and abs(val_loss - math.log(10)) < 0.5, val_loss
    assert all(not torch.equal(b, a) for b, a in zip(before, st.model.arch_parameters()))
    g = st.method.genotype(st.model)
    assert len(g.normal) == 2 * st.cfg.num_nodes


@pytest.mark.parametrize(
    "name,args",
    [("pc-darts", "K=2,warmup_epochs=0"), ("darts-minus", ""), ("gdas", ""), ("beta-darts", ""), ("drnas", "")],
)
def test_fused_flag_falls_back_to_the_plain_forward_under_hooks(name, args):
    """fused=True with a non-default construction or runtime hook computes exactly the plain forward."""
    m = build_method(name, args=args)
    torch.manual_seed(0)
    plain = SearchNetwork(8, 10, 3, 2, **m.network_options())
    m.attach(plain)
    fused = SearchNetwork(8, 10, 3, 2, fused=True, **m.network_options())
    m.attach(fused)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(1)
    a = plain(x)
    torch.manual_seed(1)
    assert torch.equal(a, fused(x))


def test_composed_sdarts_rs_with_pt_runs_end_to_end(tmp_path):
    from dartsnas.loops.search import run_search

    cfg = SearchConfig.build(
        "tiny",
        epochs=5,
        method="sdarts-rs+darts-pt",
        method_args="tune_epochs=2,interval=1,seed=1",
        progress=False,
        device="cpu",
    )
    res = run_search(cfg, run_dir=tmp_path / "run", log=lambda *a: None)
    assert [h["pt_projections"] for h in res.history] == [0, 0, 0, 1, 7]
    assert all(math.isfinite(h["train_loss"]) for h in res.history)
    # ε over the 3 supernet epochs (E = 3), then held at ε_{E-1} during the 2 tuning epochs
    assert [h["epsilon"] for h in res.history] == pytest.approx([0.03, 0.12, 0.21, 0.21, 0.21])
    assert [h["lr"] for h in res.history][3] == 0.0025
    assert all(op in PRIMITIVES[1:] for op, _ in res.genotype.normal)
