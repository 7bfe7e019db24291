"""The NB201 space: ops, cell, supernet size and shapes, strings, genotype JSON (ROBUST-SPEC §1.1–1.4;
§7 tests 1–4)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dartsnas.errors import GenotypeError
from dartsnas.space.genotype import (
    genotype_from_dict,
    genotype_to_json,
    load_genotype,
    parse_genotype,
    save_genotype,
)
from dartsnas.space.nb201 import (
    EDGES,
    NB201_PRIMITIVES,
    NB201Genotype,
    derive_nb201,
    make_op,
    parse_arch_str,
)
from dartsnas.supernet.nb201 import NB201SearchCell, NB201SearchNetwork

ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"


# ------------------------------------------------------------------------------------------ §7 test 1


def _hand_count(C: int, N: int, classes: int, cell_bias: bool = True) -> int:
    """§1.3 counted independently: per edge a 1×1 and a 3×3 conv (+ bias each when BN is affine-free)."""

    def cell(c):
        return 6 * (10 * c * c + (2 * c if cell_bias else 0))

    def res(ci, co):
        return ci * co * 9 + 2 * co + co * co * 9 + 2 * co + ci * co

    stem = 3 * C * 9 + 2 * C
    head = 2 * 4 * C + 4 * C * classes + classes
    return stem + N * (cell(C) + cell(2 * C) + cell(4 * C)) + res(C, 2 * C) + res(2 * C, 4 * C) + head


@pytest.mark.parametrize("classes,expected", [(10, 1_692_826), (100, 1_698_676), (120, 1_699_976)])
def test_supernet_size(classes, expected):
    net = NB201SearchNetwork(C=16, num_cells=5, num_classes=classes)
    n = sum(p.numel() for p in net.weights())
    assert n == expected == _hand_count(16, 5, classes)
    assert n != 1_686_106  # the bias-free count must not pass
    assert sum(a.numel() for a in net.arch_parameters()) == 30
    assert sum(p.numel() for p in net.parameters()) == n + 30


def test_bias_free_count_fails_the_size_test():
    assert _hand_count(16, 5, 10, cell_bias=False) == 1_686_106
    net = NB201SearchNetwork(C=16, num_cells=5, num_classes=10)
    assert sum(p.numel() for p in net.weights()) != _hand_count(16, 5, 10, cell_bias=False)


def test_cell_at_16_channels_holds_15552_weights():
    assert sum(p.numel() for p in NB201SearchCell(16).parameters()) == 15_552


def test_alpha_is_kept_out_of_the_weights_and_named_weights():
    net = NB201SearchNetwork(C=4, num_cells=1)
    ids = {id(p) for p in net.weights()}
    assert id(net.alphas_cell) not in ids
    assert [p for _, p in net.named_weights()] == net.weights()
    assert net.arch_parameters() == [net.alphas_cell] == net.alphas()
    assert tuple(net.alphas_cell.shape) == (6, 5)
    assert net.alphas_cell.abs().max() < 1e-2  # 1e-3·N(0,1)


def test_mixing_weights_are_row_softmax_and_the_hook_replaces_them():
    torch.manual_seed(0)
    net = NB201SearchNetwork(C=4, num_cells=1)
    (w,) = net.mixing_weights()
    a = net.alphas_cell
    torch.testing.assert_close(w, torch.exp(a) / torch.exp(a).sum(1, keepdim=True))
    seen = []
    net.mixing = lambda alphas: seen.append(alphas) or [torch.full_like(alphas[0], 0.2)]
    x = torch.randn(2, 3, 8, 8)
    net(x)
    assert len(seen) == 1 and seen[0][0] is a  # computed once per forward, from α


# ------------------------------------------------------------------------------------------ §7 test 2


def test_shapes_at_batch_2():
    net = NB201SearchNetwork(C=16, num_cells=5, num_classes=10)
    outs = net.features(torch.randn(2, 3, 32, 32))
    shapes = [tuple(o.shape) for o in outs]
    assert shapes[0] == (2, 16, 32, 32)
    assert shapes[1:6] == [(2, 16, 32, 32)] * 5
    assert shapes[6:12] == [(2, 32, 16, 16)] * 6
    assert shapes[12:18] == [(2, 64, 8, 8)] * 6
    assert tuple(net(torch.randn(2, 3, 32, 32)).shape) == (2, 10)


# ------------------------------------------------------------------------------------------ §7 test 3


@pytest.mark.parametrize("name", NB201_PRIMITIVES)
@pytest.mark.parametrize("affine", [False, True])
def test_ops_shape_and_bias_iff_affine_free(name, affine):
    op = make_op(name, 6, affine=affine)
    x = torch.randn(2, 6, 7, 7)
    assert op(x).shape == x.shape
    convs = [m for m in op.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in op.modules() if isinstance(m, nn.BatchNorm2d)]
    if name.startswith("nor_conv"):
        k = int(name[-1])
        assert len(convs) == 1 and convs[0].kernel_size == (k, k) and convs[0].padding == (k // 2, k // 2)
        assert (convs[0].bias is not None) == (not affine)
        assert len(bns) == 1 and bns[0].affine == affine
        assert isinstance(op[0], nn.ReLU) and not op[0].inplace
    else:
        assert not convs and not bns  # no BN after pooling (§1.1)


def test_none_returns_zeros_and_skip_is_identity():
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(make_op("none", 3)(x), torch.zeros_like(x))
    assert torch.equal(make_op("skip_connect", 3)(x), x)


def test_avg_pool_excludes_padding_from_the_divisor():
    x = torch.ones(1, 1, 4, 4)
    x[0, 0, 0, 0] = 10.0
    out = make_op("avg_pool_3x3", 1)(x)
    # corner: 4 real pixels (10, 1, 1, 1) -> 13/4; counting the padding would give 13/9.
    assert out[0, 0, 0, 0].item() == pytest.approx(13 / 4)
    assert out[0, 0, 1, 1].item() == pytest.approx(18 / 9)


def test_cell_output_is_node_3_and_follows_the_edge_order():
    """With one-hot weights picking skip on (1←0) and (3←1) only, the cell output is x; with the
    all-skip cell it is node3 = x + node1 + node2 = x + x + 2x = 4x."""
    cell = NB201SearchCell(3)
    x = torch.randn(2, 3, 5, 5)
    w = torch.zeros(6, 5)
    w[0, 1] = 1.0  # (1←0) skip
    w[4, 1] = 1.0  # (3←1) skip
    torch.testing.assert_close(cell(x, w), x)
    w_all = torch.zeros(6, 5)
    w_all[:, 1] = 1.0
    torch.testing.assert_close(cell(x, w_all), 4 * x)


# ------------------------------------------------------------------------------------------ §7 test 4


def test_string_format_and_alpha_row_r_is_edge_r():
    for r, (node, src) in enumerate(EDGES):
        alphas = torch.zeros(6, 5)
        alphas[:, 1] = 1.0  # skip everywhere
        alphas[r, 3] = 2.0  # nor_conv_3x3 on edge r only
        g = derive_nb201(alphas)
        s = g.arch_str()
        nodes = [[p for p in n.split("|") if p] for n in s.split("+")]
        assert nodes[node - 1][src] == f"nor_conv_3x3~{src}"
        assert s.count("nor_conv_3x3") == 1
    assert parse_arch_str(EXAMPLE).arch_str() == EXAMPLE


def test_argmax_on_none_gives_none_and_ties_go_to_the_lower_column():
    alphas = torch.zeros(6, 5)
    alphas[0, 0] = 1.0  # none wins on (1←0)
    alphas[1, 2] = alphas[1, 3] = 1.0  # tie conv1x1 / conv3x3 -> conv1x1
    alphas[2, 1] = alphas[2, 4] = 1.0  # tie skip / pool -> skip
    g = derive_nb201(alphas)
    assert g.edges[0] == ("none", 0)
    assert g.edges[1] == ("nor_conv_1x1", 0)
    assert g.edges[2] == ("skip_connect", 1)
    assert g.edges[3:] == (("none", 0), ("none", 1), ("none", 2))  # all-zero rows tie -> column 0
    assert g.arch_str().startswith("|none~0|+")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "|skip_connect~0|",
        "|skip_connect~0|+|skip_connect~0|skip_connect~1|",
        ALL_SKIP + "+|none~0|",
        ALL_SKIP.replace("skip_connect~2", "skip_connect~1"),
        ALL_SKIP.replace("skip_connect~0|+", "conv~0|+", 1),
        ALL_SKIP.replace("~1|", "|", 1),
        "|skip_connect~0|+|skip_connect~0|+|skip_connect~0|skip_connect~1|skip_connect~2|",
        ALL_SKIP.replace("|+|skip_connect~0|skip_connect~1|", "|skip_connect~1|+|skip_connect~0|skip_connect~1|", 1),
        ALL_SKIP.replace("skip_connect~1", "skip_connect~x", 1),
        ALL_SKIP.replace("~0", "~00", 1),
    ],
)
def test_malformed_strings_raise_a_typed_error(bad):
    with pytest.raises(GenotypeError):
        parse_arch_str(bad)


def test_non_string_raises_a_typed_error():
    with pytest.raises(GenotypeError):
        parse_arch_str(None)


def test_derive_refuses_a_wrong_alpha_shape():
    with pytest.raises(GenotypeError):
        derive_nb201(torch.zeros(6, 8))


# ------------------------------------------------------------------------------------------ genotype.json


def test_genotype_json_round_trip_and_validation(tmp_path):
    g = parse_arch_str(EXAMPLE)
    text = genotype_to_json(g)
    data = json.loads(text)
    assert data["kind"] == "nb201" and data["schema_version"] == 1 and data["arch_str"] == EXAMPLE
    assert parse_genotype(text) == g
    save_genotype(g, tmp_path / "genotype.json")
    assert load_genotype(tmp_path) == g
    assert load_genotype(tmp_path, kind="nb201") == g
    with pytest.raises(GenotypeError):
        load_genotype(tmp_path, kind="cnn")
    assert genotype_from_dict({"kind": "nb201", "arch_str": ALL_SKIP}).count("skip_connect") == 6
    bad = [
        {**data, "arch_str": ALL_SKIP},  # disagrees with the edges
        {**data, "edges": data["edges"][:5]},  # too few edges
        {**data, "edges": [{**data["edges"][0], "input": 1}] + data["edges"][1:]},
        {**data, "edges": [{**data["edges"][0], "op": "sep_conv_3x3"}] + data["edges"][1:]},
        {**data, "extra": 1},
        {"kind": "nb201"},
        {**data, "schema_version": 2},
    ]
    for d in bad:
        with pytest.raises(GenotypeError):
            genotype_from_dict(d)


def test_genotype_counts_and_pictures(tmp_path):
    from dartsnas.plot import save_cell_pictures

    g = NB201Genotype(
        (("skip_connect", 0), ("none", 0), ("none", 1), ("skip_connect", 0), ("nor_conv_3x3", 1), ("avg_pool_3x3", 2))
    )
    assert g.count("skip_connect") == 2 and g.count("none") == 2
    paths = save_cell_pictures(g, tmp_path)
    assert [p.name for p in paths] == ["cell.svg"]
    svg = paths[0].read_text()
    assert svg.startswith("<svg") and "nor_conv_3x3" in svg and "2 none edge(s)" in svg
