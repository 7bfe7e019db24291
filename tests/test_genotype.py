"""Genotypes, their JSON format and safe parser (spec §4, §7.2, §7.6; RELIABILITY.md item 6), and derivation."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dartsnas.errors import GenotypeError
from dartsnas.space.derive import derive_cell, derive_genotype, derive_rnn_genotype
from dartsnas.space.genotype import (
    CNN_OPS,
    PUBLISHED,
    RNN_OPS,
    Genotype,
    RNNGenotype,
    genotype_from_dict,
    genotype_to_json,
    load_genotype,
    parse_genotype,
    save_genotype,
)
from dartsnas.space.ops import PRIMITIVES

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
COL = {name: k for k, name in enumerate(PRIMITIVES)}


# ------------------------------------------------------------------------------------------ published


def _pairs(text: str) -> tuple[tuple[str, int], ...]:
    """'sep_conv_3x3<-1 max_pool_3x3<-0' -> (('sep_conv_3x3', 1), ('max_pool_3x3', 0))."""
    out = []
    for tok in text.split():
        op, src = tok.split("<-")
        out.append((op, int(src)))
    return tuple(out)


# Transcribed from the spec's §4.3 table and §7.6 list.
SPEC_CNN = {
    "DARTS_V1": (
        "sep_conv_3x3<-1 sep_conv_3x3<-0 skip_connect<-0 sep_conv_3x3<-1 skip_connect<-0 sep_conv_3x3<-1 "
        "sep_conv_3x3<-0 skip_connect<-2",
        (2, 3, 4, 5),
        "max_pool_3x3<-0 max_pool_3x3<-1 skip_connect<-2 max_pool_3x3<-0 max_pool_3x3<-0 skip_connect<-2 "
        "skip_connect<-2 avg_pool_3x3<-0",
        (2, 3, 4, 5),
    ),
    "DARTS_V2": (
        "sep_conv_3x3<-0 sep_conv_3x3<-1 sep_conv_3x3<-0 sep_conv_3x3<-1 sep_conv_3x3<-1 skip_connect<-0 "
        "skip_connect<-0 dil_conv_3x3<-2",
        (2, 3, 4, 5),
        "max_pool_3x3<-0 max_pool_3x3<-1 skip_connect<-2 max_pool_3x3<-1 max_pool_3x3<-0 skip_connect<-2 "
        "skip_connect<-2 max_pool_3x3<-1",
        (2, 3, 4, 5),
    ),
    "NASNet": (
        "sep_conv_5x5<-1 sep_conv_3x3<-0 sep_conv_5x5<-0 sep_conv_3x3<-0 avg_pool_3x3<-1 skip_connect<-0 "
        "avg_pool_3x3<-0 avg_pool_3x3<-0 sep_conv_3x3<-1 skip_connect<-1",
        (2, 3, 4, 5, 6),
        "sep_conv_5x5<-1 sep_conv_7x7<-0 max_pool_3x3<-1 sep_conv_7x7<-0 avg_pool_3x3<-1 sep_conv_5x5<-0 "
        "skip_connect<-3 avg_pool_3x3<-2 sep_conv_3x3<-2 max_pool_3x3<-1",
        (4, 5, 6),
    ),
    "AmoebaNet": (
        "avg_pool_3x3<-0 max_pool_3x3<-1 sep_conv_3x3<-0 sep_conv_5x5<-2 sep_conv_3x3<-0 avg_pool_3x3<-3 "
        "sep_conv_3x3<-1 skip_connect<-1 skip_connect<-0 avg_pool_3x3<-1",
        (4, 5, 6),
        "avg_pool_3x3<-0 sep_conv_3x3<-1 max_pool_3x3<-0 sep_conv_7x7<-2 sep_conv_7x7<-0 avg_pool_3x3<-1 "
        "max_pool_3x3<-0 max_pool_3x3<-1 conv_7x1_1x7<-0 sep_conv_3x3<-5",
        (3, 4, 6),
    ),
}
SPEC_RNN = {
    "RNN_DARTS_V2": ("sigmoid<-0 relu<-1 relu<-1 identity<-1 tanh<-2 sigmoid<-5 tanh<-3 relu<-5", tuple(range(1, 9))),
    "RNN_DARTS_V1": ("relu<-0 relu<-1 tanh<-2 relu<-3 relu<-4 identity<-1 relu<-5 relu<-1", tuple(range(1, 9))),
    "RNN_ENAS": (
        "tanh<-0 tanh<-1 relu<-1 tanh<-3 tanh<-3 relu<-3 relu<-4 relu<-7 relu<-8 relu<-8 relu<-8",
        (2, 5, 6, 9, 10, 11),
    ),
}


@pytest.mark.parametrize("name", sorted(SPEC_CNN))
def test_published_cnn_genotypes_match_the_spec(name):
    normal, nc, reduce, rc = SPEC_CNN[name]
    g = load_genotype(name)
    assert g == Genotype(_pairs(normal), nc, _pairs(reduce), rc)
    assert g is PUBLISHED[name] or g == PUBLISHED[name]
    assert load_genotype(name, kind="cnn") == g


@pytest.mark.parametrize("name", sorted(SPEC_RNN))
def test_published_rnn_genotypes_match_the_spec(name):
    rec, concat = SPEC_RNN[name]
    assert load_genotype(name) == RNNGenotype(_pairs(rec), concat)


def test_aliases_and_kind_selection():
    assert load_genotype("DARTS") == load_genotype("DARTS_V2")
    assert load_genotype("DARTS", kind="rnn") == load_genotype("RNN_DARTS_V2")
    assert load_genotype("RNN_DARTS") == load_genotype("RNN_DARTS_V2")
    with pytest.raises(GenotypeError, match="RNN"):
        load_genotype("RNN_DARTS_V2", kind="cnn")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_round_trip_through_json_and_files(name, tmp_path):
    g = PUBLISHED[name]
    assert parse_genotype(genotype_to_json(g)) == g
    path = tmp_path / "genotype.json"
    save_genotype(g, path)
    assert load_genotype(path) == g
    assert load_genotype(tmp_path) == g  # a run directory holding genotype.json
    assert not list(tmp_path.glob("*.tmp"))


def test_json_format_is_plain_objects():
    d = json.loads(genotype_to_json(PUBLISHED["DARTS_V2"]))
    assert d["kind"] == "cnn"
    assert d["normal"][0] == {"op": "sep_conv_3x3", "input": 0}
    assert d["normal_concat"] == [2, 3, 4, 5]


# ------------------------------------------------------------------------------------------- property


@st.composite
def cnn_genotypes(draw):
    n = draw(st.integers(1, 6))

    def cell():
        return tuple(
            pair
            for node in range(2, n + 2)
            for pair in [(draw(st.sampled_from(CNN_OPS)), draw(st.integers(0, node - 1))) for _ in range(2)]
        )

    def concat():
        return tuple(draw(st.lists(st.integers(2, n + 1), min_size=1, unique=True)))

    return Genotype(cell(), concat(), cell(), concat())


@st.composite
def rnn_genotypes(draw):
    n = draw(st.integers(1, 12))
    rec = tuple((draw(st.sampled_from(RNN_OPS)), draw(st.integers(0, node - 1))) for node in range(1, n + 1))
    return RNNGenotype(rec, tuple(draw(st.lists(st.integers(1, n), min_size=1, unique=True))))


@FAST
@given(cnn_genotypes())
def test_random_cnn_genotypes_round_trip(g):
    assert parse_genotype(genotype_to_json(g)) == g
    assert parse_genotype(genotype_to_json(g), num_nodes=g.num_nodes) == g


@FAST
@given(rnn_genotypes())
def test_random_rnn_genotypes_round_trip(g):
    assert parse_genotype(genotype_to_json(g)) == g


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(
            st.sampled_from(
                [
                    "schema_version",
                    "kind",
                    "normal",
                    "normal_concat",
                    "reduce",
                    "reduce_concat",
                    "recurrent",
                    "concat",
                    "op",
                    "input",
                    "x",
                ]
            )
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


def _only_genotype_errors(text: str) -> None:
    try:
        g = parse_genotype(text)
    except GenotypeError as e:
        assert str(e)
    else:
        assert isinstance(g, (Genotype, RNNGenotype))
        assert parse_genotype(genotype_to_json(g)) == g


@FAST
@given(json_values)
def test_fuzz_json_values_only_raise_genotype_error(value):
    _only_genotype_errors(json.dumps(value))
    try:
        genotype_from_dict(value)
    except GenotypeError:
        pass


@FAST
@given(st.text(max_size=200))
def test_fuzz_text_only_raises_genotype_error(text):
    _only_genotype_errors(text)


@st.composite
def mutated_genotype_dicts(draw):
    g = draw(st.one_of(cnn_genotypes(), rnn_genotypes()))
    d = json.loads(genotype_to_json(g))
    # Replace one value somewhere in the tree with an arbitrary JSON-ish value.
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                paths.append(path + (i,))
                walk(v, path + (i,))

    walk(d, ())
    path = draw(st.sampled_from(paths))
    target = d
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = draw(json_values)
    return d


@FAST
@given(mutated_genotype_dicts())
def test_fuzz_near_valid_genotypes_only_raise_genotype_error(d):
    _only_genotype_errors(json.dumps(d))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '{"normal": ' + "[" * 100_000,
        "1" * 5000,
        '{"normal": [{"op": "sep_conv_3x3", "input": ' + "9" * 5000 + "}]}",
    ],
)
def test_pathological_json_is_a_genotype_error(text):
    with pytest.raises(GenotypeError):
        parse_genotype(text)


# ------------------------------------------------------------------------------------------ error paths


def _darts_v2() -> dict:
    return json.loads(genotype_to_json(PUBLISHED["DARTS_V2"]))


def _err(d_or_text, **kw) -> GenotypeError:
    text = d_or_text if isinstance(d_or_text, str) else json.dumps(d_or_text)
    with pytest.raises(GenotypeError) as info:
        parse_genotype(text, **kw)
    return info.value


def test_unknown_op_names_the_field():
    d = _darts_v2()
    d["normal"][3]["op"] = "conv_9x9"
    e = _err(d)
    assert e.path == "normal[3].op" and "conv_9x9" in str(e) and "normal[3].op" in str(e)


def test_none_is_not_an_op_of_a_derived_cell():
    d = _darts_v2()
    d["reduce"][0]["op"] = "none"
    assert _err(d).path == "reduce[0].op"


def test_input_from_a_later_node_names_the_field():
    d = _darts_v2()
    d["normal"][2]["input"] = 3  # pair 2 builds node 3, which may read 0..2
    e = _err(d)
    assert e.path == "normal[2].input" and "normal[2].input" in str(e)
    d = _darts_v2()
    d["reduce"][7]["input"] = 5  # node 5 reading itself
    assert _err(d).path == "reduce[7].input"
    d = _darts_v2()
    d["normal"][0]["input"] = -1
    assert _err(d).path == "normal[0].input"
    d = _darts_v2()
    d["normal"][0]["input"] = True  # a bool is not a node index
    assert _err(d).path == "normal[0].input"


def test_rnn_input_from_a_later_node():
    d = json.loads(genotype_to_json(PUBLISHED["RNN_DARTS_V2"]))
    d["recurrent"][4]["input"] = 5  # node 5 reads 0..4
    assert _err(d).path == "recurrent[4].input"
    d["recurrent"][4] = {"op": "softplus", "input": 2}
    assert _err(d).path == "recurrent[4].op"


def test_wrong_edge_count():
    d = _darts_v2()
    d["normal"] = d["normal"][:7]
    e = _err(d)
    assert e.path == "normal" and "7" in str(e)
    d = _darts_v2()
    d["reduce"] = d["reduce"][:6]  # normal has 4 nodes, reduce 3
    assert _err(d).path == "reduce"
    assert _err(_darts_v2(), num_nodes=5).path == "normal"
    d = _darts_v2()
    d["normal"] = []
    assert _err(d).path == "normal"


def test_concat_out_of_range():
    d = _darts_v2()
    d["normal_concat"] = [2, 3, 4, 6]
    e = _err(d)
    assert e.path == "normal_concat[3]" and "6" in str(e)
    d = _darts_v2()
    d["reduce_concat"] = [1, 2]  # input nodes are not part of the output
    assert _err(d).path == "reduce_concat[0]"
    d = _darts_v2()
    d["normal_concat"] = []
    assert _err(d).path == "normal_concat"
    d = json.loads(genotype_to_json(PUBLISHED["RNN_ENAS"]))
    d["concat"] = [2, 12]
    assert _err(d).path == "concat[1]"


def test_not_json():
    for text in ["", "not json", "{'normal': []}", '{"normal": [}']:
        e = _err(text)
        assert e.path == "genotype" and "JSON" in str(e)


def test_missing_and_unknown_keys_and_kind():
    d = _darts_v2()
    del d["reduce"]
    assert _err(d).path == "reduce"
    d = _darts_v2()
    d["extra"] = 1
    assert "extra" in str(_err(d))
    d = _darts_v2()
    d["kind"] = "transformer"
    assert _err(d).path == "kind"
    d = _darts_v2()
    d["schema_version"] = 99
    assert _err(d).path == "schema_version"


def test_code_injection_is_refused_without_evaluation(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payloads = [
        "__import__('os').system('x')",
        f"__import__('pathlib').Path({str(marker)!r}).touch()",
        "eval('1+1')",
        "sep_conv_3x3; import os",
    ]
    calls = []
    import os

    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    for k, payload in enumerate(payloads):
        d = _darts_v2()
        d["normal"][k]["op"] = payload
        e = _err(d)
        assert e.path == f"normal[{k}].op" and "unknown operation" in str(e)
    # A whole reference-style Python expression instead of JSON.
    _err(f"__import__('pathlib').Path({str(marker)!r}).touch()")
    d = _darts_v2()
    d["normal"][0]["input"] = f"__import__('pathlib').Path({str(marker)!r}).touch() or 0"
    assert _err(d).path == "normal[0].input"
    assert not marker.exists() and calls == []


def test_load_genotype_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(GenotypeError) as info:
        load_genotype(missing)
    assert str(missing) in str(info.value)
    with pytest.raises(GenotypeError):
        load_genotype(tmp_path)  # a folder without genotype.json
    with pytest.raises(GenotypeError):
        load_genotype("NOT_A_PUBLISHED_NAME")
    bad = tmp_path / "bad.json"
    d = _darts_v2()
    d["normal"][3]["op"] = "conv_9x9"
    bad.write_text(json.dumps(d))
    with pytest.raises(GenotypeError) as info:
        load_genotype(bad)
    assert str(bad) in str(info.value) and "normal[3].op" in str(info.value)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GenotypeError) as info:
        load_genotype(binary)
    assert str(binary) in str(info.value)


# ------------------------------------------------------------------------------------------ derivation


def _alphas(rows: dict[int, dict[str, float]], n_rows: int = 14, cols: int = 8) -> torch.Tensor:
    a = torch.zeros(n_rows, cols)
    for r, vals in rows.items():
        for name, v in vals.items():
            a[r, COL[name] if cols == 8 else RNN_COL[name]] = v
    return a


RNN_COL = {"none": 0, "tanh": 1, "relu": 2, "sigmoid": 3, "identity": 4}


def test_dominant_none_is_ignored_for_ranking_and_op_choice():
    # Node 3 (rows 2, 3, 4 for predecessors 0, 1, 2). Predecessor 0 has by far the largest `none`
    # and, with none counted, the largest probability overall; its best real op is weak.
    a = _alphas(
        {
            2: {"none": 10.0, "sep_conv_5x5": 0.5},
            3: {"none": 0.0, "dil_conv_3x3": 2.0},
            4: {"none": 0.0, "max_pool_3x3": 1.0},
        }
    )
    g = derive_genotype(a, a.clone())
    assert g.normal[2:4] == (("dil_conv_3x3", 1), ("max_pool_3x3", 2))
    # On an edge where `none` is the maximum, the strongest real op is chosen.
    b = _alphas({0: {"none": 8.0, "sep_conv_3x3": 0.3}, 1: {"none": 8.0, "avg_pool_3x3": 0.2}})
    g = derive_genotype(b, b.clone())
    assert g.normal[:2] == (("sep_conv_3x3", 0), ("avg_pool_3x3", 1))


def test_all_zero_alphas_tie_to_lower_predecessor_and_lower_column():
    g = derive_genotype(torch.zeros(14, 8), torch.zeros(14, 8))
    expected = (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4
    assert g.normal == expected and g.reduce == expected
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)


def test_ties_among_strong_predecessors_and_columns():
    # Node 5 (rows 9..13, predecessors 0..4): predecessors 2 and 3 tie as strongest, 4 is weaker.
    # (Identical rows, so that the probabilities tie exactly, not just up to rounding.)
    a = _alphas(
        {
            11: {"sep_conv_5x5": 3.0, "dil_conv_3x3": 3.0},
            12: {"sep_conv_5x5": 3.0, "dil_conv_3x3": 3.0},
            13: {"sep_conv_3x3": 1.0},
        }
    )  # P = e/(e+7) < e^3/(2e^3+6)
    g = derive_genotype(a, a.clone())
    assert g.normal[6:8] == (("sep_conv_5x5", 2), ("sep_conv_5x5", 3))
    # Same again with the tied pair above a weaker predecessor 0 of equal pattern at a lower value.
    b = _alphas(
        {
            9: {"skip_connect": 0.5},
            12: {"avg_pool_3x3": 2.0, "dil_conv_5x5": 2.0},
            13: {"avg_pool_3x3": 2.0, "dil_conv_5x5": 2.0},
        }
    )
    g = derive_genotype(b, b.clone())
    assert g.normal[6:8] == (("avg_pool_3x3", 3), ("avg_pool_3x3", 4))


def test_pairs_come_out_strongest_first():
    a = _alphas(
        {
            0: {"sep_conv_3x3": 1.0},
            1: {"dil_conv_5x5": 2.0},
            2: {"avg_pool_3x3": 0.5},
            3: {"skip_connect": 1.5},
            4: {"sep_conv_5x5": 3.0},
        }
    )
    r = _alphas({0: {"max_pool_3x3": 4.0}, 1: {"skip_connect": 1.0}})
    g = derive_genotype(a, r)
    assert g.normal[:2] == (("dil_conv_5x5", 1), ("sep_conv_3x3", 0))
    assert g.normal[2:4] == (("sep_conv_5x5", 2), ("skip_connect", 1))
    assert g.reduce[:2] == (("max_pool_3x3", 0), ("skip_connect", 1))  # normal and reduce are separate


def test_none_is_never_chosen_even_when_it_is_the_maximum_everywhere():
    torch.manual_seed(0)
    a = 0.1 * torch.randn(14, 8)
    a[:, 0] = 20.0
    g = derive_genotype(a, a.flip(0))
    assert all(op != "none" for op, _ in g.normal + g.reduce)
    r = 0.1 * torch.randn(36, 5)
    r[:, 0] = 20.0
    rg = derive_rnn_genotype(r)
    assert all(op != "none" for op, _ in rg.recurrent)


def test_rnn_derivation_keeps_one_predecessor_per_node():
    # Node 3 = rows 3, 4, 5 (predecessors 0, 1, 2). Predecessor 0 has a dominant `none`.
    a = _alphas({3: {"none": 9.0, "tanh": 0.5}, 4: {"relu": 2.0}, 5: {"sigmoid": 1.0}}, n_rows=36, cols=5)
    g = derive_rnn_genotype(a)
    assert len(g.recurrent) == 8 and g.concat == tuple(range(1, 9))
    assert g.recurrent[2] == ("relu", 1)
    # all other nodes tie everywhere: predecessor 0, first column after none
    for i, pair in enumerate(g.recurrent):
        if i != 2:
            assert pair == ("tanh", 0)
    assert parse_genotype(genotype_to_json(g)) == g


def _reference_derive(probs: torch.Tensor, num_nodes: int, k: int, first: int, names) -> list[tuple[str, int]]:
    p = probs.tolist()
    out, row = [], 0
    for node in range(first, first + num_nodes):
        cands = []
        for j in range(node):
            vals = p[row + j][1:]
            best = max(vals)
            col = 1 + vals.index(best)  # first maximal column
            cands.append((-best, j, col))
        row += node
        for _, j, col in sorted(cands)[:k]:  # descending strength, ties to the lower predecessor
            out.append((names[col], j))
    return out


@FAST
@given(
    st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=14 * 8 * 2, max_size=14 * 8 * 2),
    st.lists(st.sampled_from([0.0, 1.0]), min_size=14 * 8, max_size=14 * 8),
)
def test_cnn_derivation_matches_an_independent_reading_of_the_rule(vals, coarse):
    t = torch.tensor(vals).view(2, 14, 8)
    an = t[0]
    ar = torch.tensor(coarse).view(14, 8)  # many ties
    g = derive_genotype(an, ar)
    pn, pr = torch.softmax(an.double(), -1), torch.softmax(ar.double(), -1)
    assert list(g.normal) == _reference_derive(pn, 4, 2, 2, PRIMITIVES)
    assert list(g.reduce) == _reference_derive(pr, 4, 2, 2, PRIMITIVES)
    assert parse_genotype(genotype_to_json(g)) == g


@FAST
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, 4.0]), min_size=36 * 5, max_size=36 * 5))
def test_rnn_derivation_matches_an_independent_reading_of_the_rule(vals):
    a = torch.tensor(vals).view(36, 5)
    g = derive_rnn_genotype(a)
    names = ("none", "tanh", "relu", "sigmoid", "identity")
    assert list(g.recurrent) == _reference_derive(torch.softmax(a.double(), -1), 8, 1, 1, names)


def test_derive_cell_on_a_smaller_cell():
    probs = torch.softmax(torch.zeros(5, 8), -1)  # two nodes: 2 + 3 edges
    assert derive_cell(probs, 2) == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 2
