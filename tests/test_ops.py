"""The candidate operations (spec §1.1, acceptance test §12.2-3), checked op by op against the spec."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from dartsnas.space.ops import EXTRA_PRIMITIVES, OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN

ALL_OPS = sorted(OPS)
C = 8


def _leaf_call_order(module: nn.Module, x: torch.Tensor) -> tuple[str, list[nn.Module]]:
    """Letters for the ReLU (R), conv (C) and batch-norm (B) calls in the order they actually run."""
    calls: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out: calls.append(mod))
        for m in module.modules()
        if isinstance(m, (nn.ReLU, nn.Conv2d, nn.BatchNorm2d))
    ]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    letters = "".join("R" if isinstance(m, nn.ReLU) else "C" if isinstance(m, nn.Conv2d) else "B" for m in calls)
    return letters, calls


def test_registry_holds_the_spec_ops_in_column_order():
    assert PRIMITIVES == (
        "none",
        "max_pool_3x3",
        "avg_pool_3x3",
        "skip_connect",
        "sep_conv_3x3",
        "sep_conv_5x5",
        "dil_conv_3x3",
        "dil_conv_5x5",
    )
    assert set(EXTRA_PRIMITIVES) == {"sep_conv_7x7", "conv_7x1_1x7"}
    assert set(OPS) == set(PRIMITIVES) | set(EXTRA_PRIMITIVES)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", ALL_OPS)
def test_op_shape_bias_order_affine_and_gradient(name, stride, affine):
    torch.manual_seed(0)
    op = OPS[name](C, stride, affine)
    op.train()
    x = torch.randn(2, C, 12, 12, requires_grad=True)
    x_before = x.detach().clone()

    out = op(x)
    assert out.shape == (2, C, 12 // stride, 12 // stride)
    assert torch.equal(x.detach(), x_before), "the op modified its input (in-place ReLU?)"

    convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
    relus = [m for m in op.modules() if isinstance(m, nn.ReLU)]
    for conv in convs:
        assert conv.bias is None, f"{name}: a convolution has a bias"
    for r in relus:
        assert not r.inplace, f"{name}: ReLU must be out-of-place"
    for bn in bns:
        assert bn.num_features == C
        assert bn.affine is affine
        assert (bn.weight is not None) is affine and (bn.bias is not None) is affine
    if not affine:
        assert not any(p.requires_grad for p in op.parameters() if p.dim() == 1), "1-D params only come from BN"

    letters, _ = _leaf_call_order(op, x)
    if convs:  # every conv op is one or more units of ReLU -> conv(s) -> BN
        assert re.fullmatch(r"(RC+B)+", letters), f"{name}: call order {letters}"
    else:
        assert letters == "", f"{name}: unexpected {letters}"

    # Gradients reach the input (a random projection: BN makes the plain sum's gradient vanish).
    r = torch.randn_like(out)
    (out * r).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    if name == "none":
        assert torch.count_nonzero(x.grad) == 0
    else:
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("stride", [1, 2])
def test_sep_conv_structure(stride):
    for name, k in (("sep_conv_3x3", 3), ("sep_conv_5x5", 5), ("sep_conv_7x7", 7)):
        op = OPS[name](C, stride, False)
        letters, calls = _leaf_call_order(op, torch.randn(2, C, 12, 12))
        assert letters == "RCCBRCCB", name
        convs = [m for m in calls if isinstance(m, nn.Conv2d)]
        dw1, pw1, dw2, pw2 = convs
        for dw in (dw1, dw2):
            assert dw.groups == C and dw.kernel_size == (k, k) and dw.padding == (k // 2, k // 2)
            assert dw.dilation == (1, 1)
        for pw in (pw1, pw2):
            assert pw.kernel_size == (1, 1) and pw.stride == (1, 1) and pw.groups == 1
        assert dw1.stride == (stride, stride)
        assert dw2.stride == (1, 1), "only the first unit is strided"


@pytest.mark.parametrize("stride", [1, 2])
def test_dil_conv_structure(stride):
    for name, k, pad in (("dil_conv_3x3", 3, 2), ("dil_conv_5x5", 5, 4)):
        letters, calls = _leaf_call_order(OPS[name](C, stride, True), torch.randn(2, C, 12, 12))
        assert letters == "RCCB", name
        dw, pw = [m for m in calls if isinstance(m, nn.Conv2d)]
        assert dw.groups == C and dw.kernel_size == (k, k) and dw.dilation == (2, 2)
        assert dw.padding == (pad, pad) and dw.stride == (stride, stride)
        assert pw.kernel_size == (1, 1) and pw.stride == (1, 1)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_7x1_1x7_structure(stride):
    letters, calls = _leaf_call_order(OPS["conv_7x1_1x7"](C, stride, True), torch.randn(2, C, 14, 14))
    assert letters == "RCCB"
    a, b = [m for m in calls if isinstance(m, nn.Conv2d)]
    assert a.kernel_size == (1, 7) and a.stride == (1, stride) and a.padding == (0, 3)
    assert b.kernel_size == (7, 1) and b.stride == (stride, 1) and b.padding == (3, 0)


def test_skip_connect_is_identity_at_stride_1_and_factorized_reduce_at_stride_2():
    x = torch.randn(2, C, 8, 8)
    assert torch.equal(OPS["skip_connect"](C, 1, True)(x), x)
    assert isinstance(OPS["skip_connect"](C, 2, True), FactorizedReduce)


def test_none_at_stride_2_halves_32_to_16_and_is_zero():
    x = torch.randn(2, C, 32, 32) + 5.0
    out = OPS["none"](C, 2, False)(x)
    assert out.shape == (2, C, 16, 16)
    assert torch.count_nonzero(out) == 0
    out1 = OPS["none"](C, 1, False)(x)
    assert out1.shape == x.shape and torch.count_nonzero(out1) == 0


def test_pools_have_window_3_padding_1():
    for name in ("max_pool_3x3", "avg_pool_3x3"):
        for stride in (1, 2):
            op = OPS[name](C, stride, True)
            assert list(op.parameters()) == []
            assert (
                op.kernel_size in (3, (3, 3)) and op.padding in (1, (1, 1)) and op.stride in (stride, (stride, stride))
            )


@pytest.mark.parametrize("stride", [1, 2])
def test_avg_pool_excludes_padding_from_the_divisor(stride):
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    # x = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    out = OPS["avg_pool_3x3"](1, stride, False)(x)
    # The window at the top-left corner covers 0, 1, 4, 5 and five padding cells: 10 / 4, not 10 / 9.
    assert out[0, 0, 0, 0].item() == pytest.approx(2.5)
    if stride == 1:
        # Top edge, second column: 0, 1, 2, 4, 5, 6 -> 18 / 6.
        assert out[0, 0, 0, 1].item() == pytest.approx(3.0)
        # Interior: all nine cells.
        assert out[0, 0, 1, 1].item() == pytest.approx((0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10) / 9)
    else:
        # Stride 2, output (0, 1) is centred on input (0, 2): 1, 2, 3, 5, 6, 7 -> 24 / 6.
        assert out[0, 0, 0, 1].item() == pytest.approx(4.0)


def test_max_pool_pads_with_minus_infinity():
    x = -torch.ones(1, 1, 4, 4)
    assert torch.equal(OPS["max_pool_3x3"](1, 1, False)(x), x)


@pytest.mark.parametrize("size", [32, 16, 56, 28, 14])
@pytest.mark.parametrize("affine", [True, False])
def test_factorized_reduce_halves_the_size(size, affine):
    fr = FactorizedReduce(6, 10, affine)
    out = fr(torch.randn(2, 6, size, size))
    assert out.shape == (2, 10, size // 2, size // 2)
    assert all(m.bias is None for m in fr.modules() if isinstance(m, nn.Conv2d))


def test_factorized_reduce_second_branch_is_shifted_by_one_pixel():
    fr = FactorizedReduce(1, 2, affine=False)
    convs = [m for m in fr.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    for conv in convs:
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.out_channels == 1
        with torch.no_grad():
            conv.weight.fill_(1.0)
    fr.eval()  # BN with running mean 0 and variance 1: (almost) the identity
    x = torch.randn(1, 1, 8, 8)
    out = fr(x)
    r = torch.relu(x)
    scale = 1.0 / (1.0 + fr_bn_eps(fr)) ** 0.5
    torch.testing.assert_close(out[0, 0], r[0, 0, ::2, ::2] * scale)
    torch.testing.assert_close(out[0, 1], r[0, 0, 1::2, 1::2] * scale)


def fr_bn_eps(fr: nn.Module) -> float:
    (bn,) = [m for m in fr.modules() if isinstance(m, nn.BatchNorm2d)]
    return bn.eps


def test_factorized_reduce_needs_even_outputs():
    with pytest.raises(ValueError):
        FactorizedReduce(4, 5)


@pytest.mark.parametrize("affine", [True, False])
def test_relu_conv_bn(affine):
    m = ReLUConvBN(6, 10, 1, 1, 0, affine)
    letters, _ = _leaf_call_order(m, torch.randn(2, 6, 5, 5))
    assert letters == "RCB"
    (bn,) = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert bn.affine is affine and bn.num_features == 10
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))
