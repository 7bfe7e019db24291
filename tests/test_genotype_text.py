"""The original DARTS code's ``Genotype(...)`` text form: parsed by walking literals only (issue 12, item 3).

The text forms below are written by hand, cell by cell, from the published cells (spec §4.3, §7.6) in the
notation the original code prints (``print(genotype)`` of its namedtuple), so they check the parser against
an independent transcription rather than against our own ``genotype_to_text``.
"""

from __future__ import annotations

import pytest

from dartsnas.errors import GenotypeError
from dartsnas.loops.rnn_train import resolve_rnn_genotype
from dartsnas.loops.train import resolve_genotype
from dartsnas.space.genotype import PUBLISHED, genotype_to_text, load_genotype, parse_genotype

TEXT = {
    "DARTS_V1": "Genotype(normal=[('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 0), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('skip_connect', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 0), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('avg_pool_3x3', 0)], reduce_concat=[2, 3, 4, 5])",
    "DARTS_V2": "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
    "('dil_conv_3x3', 2)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), "
    "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
    "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))",
    "NASNet": """Genotype(
  normal = [
    ('sep_conv_5x5', 1),
    ('sep_conv_3x3', 0),
    ('sep_conv_5x5', 0),
    ('sep_conv_3x3', 0),
    ('avg_pool_3x3', 1),
    ('skip_connect', 0),
    ('avg_pool_3x3', 0),
    ('avg_pool_3x3', 0),
    ('sep_conv_3x3', 1),
    ('skip_connect', 1),
  ],
  normal_concat = [2, 3, 4, 5, 6],
  reduce = [
    ('sep_conv_5x5', 1),
    ('sep_conv_7x7', 0),
    ('max_pool_3x3', 1),
    ('sep_conv_7x7', 0),
    ('avg_pool_3x3', 1),
    ('sep_conv_5x5', 0),
    ('skip_connect', 3),
    ('avg_pool_3x3', 2),
    ('sep_conv_3x3', 2),
    ('max_pool_3x3', 1),
  ],
  reduce_concat = [4, 5, 6],
)""",
    "AmoebaNet": "Genotype(normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), "
    "('sep_conv_5x5', 2), ('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), "
    "('skip_connect', 1), ('skip_connect', 0), ('avg_pool_3x3', 1)], normal_concat=[4, 5, 6], "
    "reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2), "
    "('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1), "
    "('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)], reduce_concat=[3, 4, 6])",
    "RNN_DARTS_V2": "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), "
    "('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))",
    "RNN_DARTS_V1": "Genotype(recurrent=[('relu', 0), ('relu', 1), ('tanh', 2), ('relu', 3), ('relu', 4), "
    "('identity', 1), ('relu', 5), ('relu', 1)], concat=range(1, 9))",
    "RNN_ENAS": "Genotype(recurrent=[('tanh', 0), ('tanh', 1), ('relu', 1), ('tanh', 3), ('tanh', 3), "
    "('relu', 3), ('relu', 4), ('relu', 7), ('relu', 8), ('relu', 8), ('relu', 8)], "
    "concat=[2, 5, 6, 9, 10, 11])",
}


@pytest.mark.parametrize("name", sorted(TEXT))
def test_published_text_forms_round_trip(name):
    g = parse_genotype(TEXT[name])
    assert g == PUBLISHED[name]
    assert load_genotype(TEXT[name]) == PUBLISHED[name]  # inline, as --genotype and `dartsnas genotype` get it
    assert parse_genotype(genotype_to_text(g)) == g


def test_positional_fields_and_files(tmp_path):
    g = PUBLISHED["DARTS_V2"]
    positional = "Genotype(" + TEXT["DARTS_V2"][len("Genotype(") :].replace("normal=", "").replace(
        "normal_concat=", ""
    ).replace("reduce=", "").replace("reduce_concat=", "")
    assert parse_genotype(positional) == g
    # A .py file as the original code keeps it: imports and the namedtuple are read, never run.
    py = tmp_path / "genotypes.py"
    py.write_text(
        "from collections import namedtuple\n\nGenotype = namedtuple('Genotype', "
        "'normal normal_concat reduce reduce_concat')\n\nPRIMITIVES = ['none']\n\n"
        f"DARTS = {TEXT['DARTS_V2']}\n"
    )
    assert load_genotype(py) == g
    txt = tmp_path / "cell.txt"
    txt.write_text(TEXT["RNN_DARTS_V2"] + "\n")
    assert load_genotype(txt, kind="rnn") == PUBLISHED["RNN_DARTS_V2"]
    assert resolve_genotype(TEXT["DARTS_V1"]) == PUBLISHED["DARTS_V1"]
    assert resolve_rnn_genotype(TEXT["RNN_ENAS"]) == PUBLISHED["RNN_ENAS"]
    two = tmp_path / "two.py"
    two.write_text(f"A = {TEXT['DARTS_V1']}\nB = {TEXT['DARTS_V2']}\n")
    with pytest.raises(GenotypeError, match="2 genotypes .A, B."):
        load_genotype(two)


def test_errors_name_the_bad_part():
    bad_op = TEXT["DARTS_V2"].replace("'dil_conv_3x3', 2", "'conv_9x9', 2")
    with pytest.raises(GenotypeError) as info:
        parse_genotype(bad_op)
    assert info.value.path == "normal[7].op"
    with pytest.raises(GenotypeError) as info:
        parse_genotype(TEXT["DARTS_V2"].replace("reduce_concat=range(2, 6)", "reduce_concat=range(2, 9)"))
    assert info.value.path.startswith("reduce_concat")
    with pytest.raises(GenotypeError) as info:
        parse_genotype(TEXT["DARTS_V2"].replace("normal_concat=range(2, 6)", "normal_concat=list(range(2, 6))"))
    assert info.value.path == "normal_concat" and "list" in str(info.value)
    with pytest.raises(GenotypeError) as info:
        parse_genotype("Genotype(recurrent=[('sigmoid', 0)])")
    assert info.value.path == "concat"
    with pytest.raises(GenotypeError, match="4 .CNN. or 2"):
        parse_genotype("Genotype([('relu', 0)])")
    with pytest.raises(GenotypeError, match="by name or all by position"):
        parse_genotype("Genotype([('relu', 0)], concat=[1])")


@pytest.mark.parametrize(
    "text",
    [
        "Genotype(recurrent=[('relu', 0)], concat=__import__('os').system('touch {m}'))",
        "Genotype(recurrent=[('relu', __import__('os').system('touch {m}'))], concat=[1])",
        "Genotype(recurrent=[('relu', 0)], concat=range(__import__('os').system('touch {m}'), 2))",
        "Genotype(recurrent=[('relu', 0)], concat=[1], **__import__('os').system('touch {m}'))",
        "Genotype(recurrent=[(lambda: __import__('os').system('touch {m}'))(), 0], concat=[1])",
        "__import__('os').system('touch {m}')",
        "[Genotype(recurrent=[('relu', 0)], concat=[1]) for _ in [__import__('os').system('touch {m}')]]",
        "Genotype(recurrent=[('relu', 0)], concat=[1]); __import__('os').system('touch {m}')",
        "Genotype(recurrent=[('relu', 0)], concat=range(10**100))",
    ],
)
def test_malicious_text_is_refused_and_never_run(tmp_path, text):
    marker = tmp_path / "pwned"
    with pytest.raises(GenotypeError):
        load_genotype(text.format(m=marker))
    assert not marker.exists()


def test_very_long_and_odd_arguments_are_one_line_errors(tmp_path, monkeypatch, cli_main):
    """`dartsnas genotype` with the original's text form works; absurd arguments exit 3 without a traceback.
    In-process (the exit code and stderr of ``main``): a traceback would escape as an exception."""
    monkeypatch.chdir(tmp_path)  # "a/..." and "x..." are tried as file names too
    r = cli_main("genotype", TEXT["DARTS_V2"])
    assert r.returncode == 0, r.stderr
    assert '"dil_conv_3x3"' in r.stdout
    for arg in [
        "x" * 100_000,
        "Genotype(" * 10_000,
        TEXT["DARTS_V2"] * 50,
        "a/" * 3000,
        "bad\x01name" * 50,
        "Genotype(normal=" + "[" * 5000 + "]" * 5000 + ")",
    ]:
        r = cli_main("genotype", arg)
        assert r.returncode == 3, (arg[:40], r.stderr[-500:])
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert len(r.stderr) < 1000
