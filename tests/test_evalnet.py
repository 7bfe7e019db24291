"""Evaluation networks (spec §5, §6, §12.1, §12.2, §12.8): parameter counts, shapes, drop path, aux heads,
the multiply-add counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dartsnas.errors import GenotypeError
from dartsnas.evalnet.cnn import EvalCell, NetworkCIFAR, NetworkImageNet, count_parameters, drop_path
from dartsnas.evalnet.flops import count_multiply_adds
from dartsnas.space.genotype import PUBLISHED, Genotype
from dartsnas.space.ops import FactorizedReduce, Identity

V1, V2 = PUBLISHED["DARTS_V1"], PUBLISHED["DARTS_V2"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these forwards are small, and OpenMP spin-waits badly on a loaded 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _cell_outputs(model: nn.Module) -> tuple[list, list]:
    """Register hooks recording (channels, H, W) of every cell output; returns (records, handles)."""
    records: list[tuple[int, int, int]] = []
    handles = [cell.register_forward_hook(lambda m, i, o: records.append(tuple(o.shape[1:]))) for cell in model.cells]
    return records, handles


# ------------------------------------------------------------------------------------ parameter counts


def test_darts_v2_cifar_parameter_counts():
    model = NetworkCIFAR(V2)
    assert count_parameters(model, include_auxiliary=False) == 3_349_342
    assert count_parameters(model) == 3_825_768
    assert count_parameters(model.auxiliary_head) == 476_426
    # The count without the head equals a network built without one.
    assert count_parameters(NetworkCIFAR(V2, auxiliary=False)) == 3_349_342


def test_darts_v1_cifar_parameter_count():
    assert count_parameters(NetworkCIFAR(V1), include_auxiliary=False) == 3_169_414


def test_darts_v2_imagenet_parameter_counts():
    model = NetworkImageNet(V2)
    assert count_parameters(model, include_auxiliary=False) == 4_718_752
    assert count_parameters(model) == 5_979_528
    # §6: no BN after the aux head's 2x2 conv.
    bns = [m for m in model.auxiliary_head.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == [128]


def test_every_batch_norm_is_affine_and_every_conv_bias_free():
    for model in (NetworkCIFAR(V2, C=8, layers=5), NetworkImageNet(V2, C=8, layers=5)):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.affine
            if isinstance(m, nn.Conv2d):
                assert m.bias is None


# ------------------------------------------------------------------------------------------- shapes


def test_cifar_full_size_shapes_train_and_eval():
    torch.manual_seed(0)
    model = NetworkCIFAR(V2)
    x = torch.randn(2, 3, 32, 32)
    records, handles = _cell_outputs(model)
    with torch.no_grad():
        model.train()
        logits, aux = model(x)
        assert logits.shape == (2, 10) and aux is not None and aux.shape == (2, 10)
        # §5 plan: cells 0-5 144@32x32, cells 6-12 288@16x16, cells 13-19 576@8x8.
        assert records == [(144, 32, 32)] * 6 + [(288, 16, 16)] * 7 + [(576, 8, 8)] * 7
        model.eval()
        logits, aux = model(x)
        assert logits.shape == (2, 10) and aux is None
    for h in handles:
        h.remove()
    assert [i for i, c in enumerate(model.cells) if c.reduction] == [6, 13]
    assert model.aux_position == 13


def test_imagenet_full_size_single_image_and_plan():
    torch.manual_seed(0)
    model = NetworkImageNet(V2).eval()
    records, handles = _cell_outputs(model)
    with torch.no_grad():
        logits, aux = model(torch.randn(1, 3, 224, 224))
    for h in handles:
        h.remove()
    assert logits.shape == (1, 1000) and aux is None
    # §6 plan: cells 0-3 192@28x28, cells 4-8 384@14x14, cells 9-13 768@7x7.
    assert records == [(192, 28, 28)] * 4 + [(384, 14, 14)] * 5 + [(768, 7, 7)] * 5
    assert model.cells[0].reduction_prev and isinstance(model.cells[0].preprocess0, FactorizedReduce)


def test_imagenet_aux_head_in_train_mode_small():
    torch.manual_seed(0)
    model = NetworkImageNet(V2, C=8, num_classes=7, layers=5).train()
    logits, aux = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    (logits.sum() + aux.sum()).backward()


@pytest.mark.parametrize("size", [16, 24, 40, 64])
def test_small_and_odd_cifar_inputs_do_not_crash_aux_head(size):
    # 16x16 with few cells gives a 4x4 map at the aux head (smaller than its 5x5 window); 40x40 a 10x10.
    torch.manual_seed(0)
    model = NetworkCIFAR(V2, C=8, num_classes=5, layers=5, in_channels=1).train()
    logits, aux = model(torch.randn(2, 1, size, size))
    assert logits.shape == (2, 5) and aux.shape == (2, 5)
    assert torch.isfinite(logits).all() and torch.isfinite(aux).all()


def test_imagenet_tiny_input():
    torch.manual_seed(0)
    model = NetworkImageNet(V2, C=8, num_classes=3, layers=5).train()
    logits, aux = model(torch.randn(2, 3, 32, 32))  # 4x4 after the stems, 1x1 at the aux head
    assert logits.shape == (2, 3) and aux.shape == (2, 3)


@pytest.mark.parametrize("name", ["NASNet", "AmoebaNet", "DARTS_V1"])
@pytest.mark.parametrize("net", ["cifar", "imagenet"])
def test_reference_genotypes_build_and_run(name, net):
    torch.manual_seed(0)
    g = PUBLISHED[name]
    if net == "cifar":
        model, x = NetworkCIFAR(g, C=8, layers=5), torch.randn(2, 3, 32, 32)
        classes = 10
    else:
        model, x = NetworkImageNet(g, C=8, num_classes=11, layers=5), torch.randn(2, 3, 64, 64)
        classes = 11
    for cell in model.cells:
        concat = g.reduce_concat if cell.reduction else g.normal_concat
        assert cell.multiplier == len(concat)
    logits, aux = model.train()(x)
    assert logits.shape == (2, classes) and aux.shape == (2, classes)
    model.eval()
    with torch.no_grad():
        logits, aux = model(x)
    assert logits.shape == (2, classes) and aux is None


def test_amoebanet_reduce_cell_structure():
    g = PUBLISHED["AmoebaNet"]
    cell = EvalCell(g, 16, 24, 8, reduction=True, reduction_prev=False)
    assert cell.num_nodes == 5 and cell.concat == (3, 4, 6) and cell.multiplier == 3
    assert cell.op_names[8] == "conv_7x1_1x7" and cell.indices[9] == 5
    out = cell(torch.randn(2, 16, 14, 14), torch.randn(2, 24, 14, 14))
    assert out.shape == (2, 24, 7, 7)


def test_nasnet_normal_cell_has_five_nodes():
    cell = EvalCell(PUBLISHED["NASNet"], 12, 12, 4, reduction=False, reduction_prev=False)
    assert cell.num_nodes == 5 and cell.multiplier == 5
    assert cell(torch.randn(2, 12, 8, 8), torch.randn(2, 12, 8, 8)).shape == (2, 20, 8, 8)


@pytest.mark.parametrize("size", [32, 16, 56, 28, 14])
def test_factorized_reduce_sizes(size):
    fr = FactorizedReduce(6, 10)
    assert fr(torch.randn(2, 6, size, size)).shape == (2, 10, size // 2, size // 2)


def test_invalid_genotype_is_refused():
    bad_input = Genotype(V2.normal[:-1] + (("dil_conv_3x3", 9),), V2.normal_concat, V2.reduce, V2.reduce_concat)
    with pytest.raises(GenotypeError):
        NetworkCIFAR(bad_input, C=8, layers=3)
    bad_op = Genotype((("conv_9x9", 0),) + V2.normal[1:], V2.normal_concat, V2.reduce, V2.reduce_concat)
    with pytest.raises(GenotypeError):
        EvalCell(bad_op, 8, 8, 4, False, False)
    with pytest.raises(GenotypeError):
        NetworkImageNet(PUBLISHED["RNN_DARTS_V2"], C=8, layers=3)


# --------------------------------------------------------------------------------------- drop path


def test_drop_path_one_mask_per_sample_and_scaling():
    torch.manual_seed(0)
    p = 0.3
    x = torch.ones(4000, 3, 2, 2)
    y = drop_path(x, p)
    per_sample = y.flatten(1)
    # Each sample is either all zero or all 1/(1-p): one mask per sample, shared over channels and pixels.
    first = per_sample[:, :1]
    assert torch.equal(per_sample, first.expand_as(per_sample))
    values = torch.unique(first).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / (1 - p))
    kept = (first > 0).double().mean().item()
    assert abs(kept - (1 - p)) < 0.03  # ~4 standard deviations at n = 4000
    assert abs(y.mean().item() - 1.0) < 0.05  # unbiased in expectation
    assert drop_path(x, 0.0) is x


def test_drop_path_uses_global_rng():
    x = torch.randn(64, 2, 3, 3)
    torch.manual_seed(5)
    a = drop_path(x, 0.5)
    state = torch.get_rng_state()
    b = drop_path(x, 0.5)
    torch.set_rng_state(state)
    c = drop_path(x, 0.5)
    torch.manual_seed(5)
    d = drop_path(x, 0.5)
    assert torch.equal(b, c) and torch.equal(a, d)


def _g(normal, normal_concat, reduce=None, reduce_concat=None) -> Genotype:
    reduce = reduce if reduce is not None else normal
    reduce_concat = reduce_concat if reduce_concat is not None else normal_concat
    return Genotype(tuple(normal), tuple(normal_concat), tuple(reduce), tuple(reduce_concat))


def test_identity_never_dropped():
    torch.manual_seed(0)
    g = _g([("skip_connect", 0), ("skip_connect", 1), ("sep_conv_3x3", 0), ("max_pool_3x3", 1)], [2, 3])
    cell = EvalCell(g, 6, 6, 4, reduction=False, reduction_prev=False).train()
    assert isinstance(cell._ops[0], Identity) and cell._droppable == (False, False, True, True)
    x0, x1 = torch.randn(256, 6, 4, 4), torch.randn(256, 6, 4, 4)
    with torch.no_grad():
        ref = cell(x0, x1, 0.0)
        out = cell(x0, x1, 0.9)
    # Node 2 (two identities) is untouched; node 3 (sep conv + max pool) is dropped on some samples.
    assert torch.equal(out[:, :4], ref[:, :4])
    node3 = out[:, 4:].flatten(1)
    zero = (node3 == 0).all(dim=1)
    assert 0 < zero.sum() < 256  # both masks dropped for ~81% of samples at p = 0.9


@pytest.mark.parametrize("pair", [("skip_connect", "skip_connect"), ("avg_pool_3x3", "max_pool_3x3")])
def test_pooling_and_strided_skip_are_dropped(pair):
    torch.manual_seed(1)
    g = _g([(pair[0], 0), (pair[1], 1)], [2])
    cell = EvalCell(g, 6, 6, 4, reduction=True, reduction_prev=False).train()
    assert all(cell._droppable)
    with torch.no_grad():
        out = cell(torch.randn(128, 6, 8, 8), torch.randn(128, 6, 8, 8), 0.9)
    zero = (out.flatten(1) == 0).all(dim=1)
    assert out.shape == (128, 4, 4, 4)
    assert 0 < zero.sum() < 128


def test_no_drop_path_in_eval_mode_or_at_zero():
    torch.manual_seed(0)
    model = NetworkCIFAR(V2, C=8, layers=5)
    x = torch.randn(4, 3, 16, 16)
    model.train()
    model.drop_path_prob = 0.0
    state = torch.get_rng_state()
    with torch.no_grad():
        a, _ = model(x)
    # p = 0 in training mode draws nothing from the RNG.
    assert torch.equal(torch.get_rng_state(), state)
    model.eval()
    with torch.no_grad():
        model.drop_path_prob = 0.0
        b, _ = model(x)
        model.drop_path_prob = 0.5
        c, _ = model(x)
    assert torch.equal(b, c)
    assert torch.equal(torch.get_rng_state(), state)


def test_network_drop_path_prob_attribute_is_used_and_reproducible():
    torch.manual_seed(0)
    model = NetworkCIFAR(V2, C=8, layers=5, drop_path_prob=0.0).train()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        a, _ = model(x)
        model.drop_path_prob = 0.6
        torch.manual_seed(3)
        b, _ = model(x)
        torch.manual_seed(3)
        c, _ = model(x)
    assert not torch.equal(a, b)
    assert torch.equal(b, c)


# ----------------------------------------------------------------------------------- multiply-adds


def test_multiply_adds_hand_counted():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # 8 * 6*6 * 3 * 3*3 = 7776
        nn.BatchNorm2d(8),
        nn.ReLU(),  # not counted
        nn.Conv2d(8, 4, 3, stride=2, groups=2, bias=True),  # out 2x2: 4 * 2*2 * (8/2) * 3*3 = 576
        nn.MaxPool2d(1),  # not counted
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5),  # 16 * 5 = 80
    )
    expected = 7776 + 576 + 80
    net.train()
    assert count_multiply_adds(net, (3, 6, 6)) == expected
    assert count_multiply_adds(net, (4, 3, 6, 6)) == expected  # still per sample
    assert net.training  # mode restored
    assert not any(m._forward_hooks for m in net.modules())  # hooks removed


def test_multiply_adds_darts_v2():
    model = NetworkImageNet(V2)
    madds = count_multiply_adds(model, (3, 224, 224))
    # §6: ≈ 530M with this convention (paper: 574M; the mobile limit is 600M). Aux head not counted.
    assert 520e6 < madds < 540e6
    assert madds == count_multiply_adds(NetworkImageNet(V2, auxiliary=False), (3, 224, 224))
    cifar = count_multiply_adds(NetworkCIFAR(V2), (3, 32, 32))
    assert 500e6 < cifar < 560e6


def test_aux_pooling_is_the_paper_pooling_at_paper_sizes():
    from torch.nn import functional as F

    from dartsnas.evalnet.cnn import _pool_to_2x2

    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(_pool_to_2x2(x, 5, 3), F.avg_pool2d(x, 5, stride=3, padding=0, count_include_pad=False))
    x = torch.randn(2, 3, 7, 7)
    assert torch.equal(_pool_to_2x2(x, 5, 2), F.avg_pool2d(x, 5, stride=2, padding=0, count_include_pad=False))
    for size in (1, 3, 4, 10, 14):  # fallback: adaptive average pooling to 2x2
        assert _pool_to_2x2(torch.randn(2, 3, size, size), 5, 3).shape == (2, 3, 2, 2)
