"""The CNN search network (spec §1.2-1.4, §2; acceptance tests §12.1-2)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dartsnas.space.ops import OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN
from dartsnas.supernet.cells import SearchCell
from dartsnas.supernet.mixed import MixedOp
from dartsnas.supernet.network import SearchNetwork


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return SearchNetwork()  # C=16, 10 classes, 8 cells


def test_weight_count_at_defaults_is_1930618(net):
    assert sum(p.numel() for p in net.weights()) == 1_930_618


def test_alphas_are_224_values_outside_the_weights(net):
    arch = net.arch_parameters()
    assert [tuple(a.shape) for a in arch] == [(14, 8), (14, 8)]
    assert sum(a.numel() for a in arch) == 224
    weight_ids = {id(p) for p in net.weights()}
    assert not any(id(a) in weight_ids for a in arch)
    # weights() + alphas = every parameter, nothing lost, nothing twice
    assert len(weight_ids) == len(net.weights())
    assert weight_ids | {id(a) for a in arch} == {id(p) for p in net.parameters()}
    assert {n for n, _ in net.named_weights()} == {n for n, p in net.named_parameters() if id(p) in weight_ids}


def test_shapes_follow_the_table(net):
    seen: dict[str, tuple[int, ...]] = {}
    handles = [net.stem.register_forward_hook(lambda m, i, o: seen.__setitem__("stem", tuple(o.shape)))]
    for k, cell in enumerate(net.cells):
        handles.append(cell.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(k, tuple(o.shape))))
    try:
        logits = net(torch.randn(2, 3, 32, 32))
    finally:
        for h in handles:
            h.remove()
    assert logits.shape == (2, 10)
    assert seen["stem"] == (2, 48, 32, 32)
    expected = {
        0: (64, 32),
        1: (64, 32),
        2: (128, 16),
        3: (128, 16),
        4: (128, 16),
        5: (256, 8),
        6: (256, 8),
        7: (256, 8),
    }
    for k, (ch, hw) in expected.items():
        assert seen[k] == (2, ch, hw, hw), f"cell {k}"
    assert [c.reduction for c in net.cells] == [False, False, True, False, False, True, False, False]
    assert net.classifier.in_features == 256 and net.classifier.out_features == 10
    assert net.classifier.bias is not None


def test_preprocessing_per_cell(net):
    for k, cell in enumerate(net.cells):
        if k in (3, 6):  # the cell after a reduction reduces s0
            assert isinstance(cell.preprocess0, FactorizedReduce), k
        else:
            assert isinstance(cell.preprocess0, ReLUConvBN), k
        assert isinstance(cell.preprocess1, ReLUConvBN)
    fr3, fr6 = net.cells[3].preprocess0, net.cells[6].preprocess0
    assert [m.in_channels for m in fr3.modules() if isinstance(m, nn.Conv2d)] == [64, 64]
    assert sum(m.out_channels for m in fr3.modules() if isinstance(m, nn.Conv2d)) == 32
    assert [m.in_channels for m in fr6.modules() if isinstance(m, nn.Conv2d)] == [128, 128]
    assert sum(m.out_channels for m in fr6.modules() if isinstance(m, nn.Conv2d)) == 64


def test_each_cell_has_14_mixed_edges_strided_from_inputs_in_reduction_cells(net):
    for cell in net.cells:
        edges = [m for m in cell.modules() if isinstance(m, MixedOp)]
        assert len(edges) == 14
        strides = [e.stride for e in edges]
        # edge order: node 2 <- 0, 1; node 3 <- 0, 1, 2; node 4 <- 0..3; node 5 <- 0..4
        preds = [j for i in range(4) for j in range(2 + i)]
        assert strides == [2 if cell.reduction and j < 2 else 1 for j in preds]


def test_stem_bn_is_the_only_affine_bn(net):
    affine = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d) and m.affine]
    assert len(affine) == 1
    (bn,) = affine
    assert bn.num_features == 48
    assert any(bn is m for m in net.stem.modules())
    stem_convs = [m for m in net.stem.modules() if isinstance(m, nn.Conv2d)]
    assert len(stem_convs) == 1 and stem_convs[0].bias is None
    assert stem_convs[0].kernel_size == (3, 3) and stem_convs[0].padding == (1, 1)
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv2d))


def test_pooling_in_mixed_op_is_followed_by_an_affine_free_bn():
    torch.manual_seed(0)
    mixed = MixedOp(4, 1)
    x = torch.randn(3, 4, 6, 6)
    calls = []
    handles = [
        m.register_forward_hook(lambda mod, i, o: calls.append(mod))
        for m in mixed.modules()
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d))
    ]
    mixed(x, torch.softmax(torch.zeros(8), 0))
    for h in handles:
        h.remove()
    for k, m in enumerate(calls):
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            assert isinstance(calls[k + 1], nn.BatchNorm2d) and not calls[k + 1].affine


def _reference_mixed(mixed: MixedOp, C: int, stride: int) -> list[nn.Module]:
    """Eight freshly built ops (pools + affine-free BN), weights copied from ``mixed``, `none` included."""
    assert list(mixed.columns) == list(range(1, 8))
    ops = []
    built = iter(mixed._ops)
    for name in PRIMITIVES:
        op = OPS[name](C, stride, False)
        if "pool" in name:
            op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
        if name != "none":
            op.load_state_dict(next(built).state_dict())
        ops.append(op.double())
    return ops


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_equals_the_full_sum_including_the_zero_term(stride):
    torch.manual_seed(1)
    C = 4
    mixed = MixedOp(C, stride).double()
    ref_ops = _reference_mixed(mixed, C, stride)
    x = torch.randn(2, C, 8, 8, dtype=torch.float64)
    alpha = torch.randn(8, dtype=torch.float64, requires_grad=True)
    alpha_ref = alpha.detach().clone().requires_grad_(True)
    r = torch.randn(2, C, 8 // stride, 8 // stride, dtype=torch.float64)

    out = mixed(x, torch.softmax(alpha, 0))
    (out * r).sum().backward()

    w = torch.softmax(alpha_ref, 0)
    terms = [w[k] * op(x) for k, op in enumerate(ref_ops)]
    assert terms[0].shape == out.shape and torch.count_nonzero(terms[0]) == 0
    ref = torch.stack(terms).sum(0)
    (ref * r).sum().backward()

    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(alpha.grad, alpha_ref.grad, rtol=1e-10, atol=1e-12)
    assert alpha.grad[0] != 0  # `none` still competes in the softmax


def test_alpha_gradient_through_a_small_network_is_finite_and_nonzero():
    torch.manual_seed(0)
    small = SearchNetwork(C=4, num_classes=3, layers=3, num_nodes=2)
    assert tuple(small.alphas_normal.shape) == (5, 8)
    loss = nn.functional.cross_entropy(small(torch.randn(2, 3, 8, 8)), torch.tensor([0, 2]))
    loss.backward()
    for a in small.arch_parameters():
        assert a.grad is not None and torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_alpha_init_scale_is_1e_3():
    torch.manual_seed(123)
    a = SearchNetwork(C=4, layers=3)
    torch.manual_seed(124)
    b = SearchNetwork(C=4, layers=3)
    vals = torch.cat([p.detach().flatten() for p in a.arch_parameters()])
    assert vals.numel() == 224
    std = vals.std().item()
    assert 5e-4 < std < 2e-3, std  # 1e-3 * N(0, 1); 224 draws
    assert vals.abs().max().item() < 6e-3
    assert abs(vals.mean().item()) < 5e-4
    assert not torch.equal(a.alphas_normal, a.alphas_reduce)
    assert not torch.equal(a.alphas_normal, b.alphas_normal)


def test_search_cell_output_is_4c_channels():
    cell = SearchCell(4, 4, 12, 20, 8, reduction=True, reduction_prev=False)
    out = cell(torch.randn(2, 12, 16, 16), torch.randn(2, 20, 16, 16), torch.softmax(torch.zeros(14, 8), -1))
    assert out.shape == (2, 32, 8, 8)
