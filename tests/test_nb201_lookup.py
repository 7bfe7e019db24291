"""The NB201 table look-up (ROBUST-SPEC §1.7; §7 tests 4 (round trip) and 5) and `dartsnas lookup`."""

from __future__ import annotations

import csv
import itertools
import shutil
from collections import Counter

import pytest
import torch

from conftest import shared_data_root
from dartsnas.errors import TableError
from dartsnas.space.genotype import save_genotype
from dartsnas.space.lookup import load_table, lookup, resolve_table
from dartsnas.space.nb201 import (
    NB201_PRIMITIVES,
    NB201Genotype,
    derive_nb201,
    parse_arch_str,
)

ROOT = shared_data_root()
TABLE = ROOT / "nasbench201" / "nb201_accuracies.csv" if ROOT else None
needs_table = pytest.mark.skipif(
    TABLE is None or not TABLE.is_file(), reason="the NB201 table (shared/data/nasbench201) is not present"
)
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"


@needs_table
def test_every_table_string_round_trips_and_every_cell_has_exactly_one_row():
    table = load_table(TABLE)
    assert len(table.rows) == 15625
    for row in table.rows:
        assert parse_arch_str(row.arch_str).arch_str() == row.arch_str
    # every one of the 5^6 derivable cells maps to exactly one row (independent enumeration)
    counts = Counter(r.arch_str for r in table.rows)
    seen = set()
    for ops in itertools.product(range(5), repeat=6):
        alphas = torch.zeros(6, 5)
        alphas[range(6), list(ops)] = 1.0
        row = lookup(derive_nb201(alphas), table)
        assert counts[row.arch_str] == 1
        seen.add(row.index)
    assert seen == set(range(15625))


@needs_table
def test_published_rows():
    table = load_table(TABLE)
    row = lookup(parse_arch_str(ALL_SKIP), table)
    assert (row.index, row.cifar10, row.cifar100, row.imagenet16) == (1835, 54.2967, 15.6067, 16.3222)
    best = {key: max(table.rows, key=lambda r: getattr(r, key)) for key in ("cifar10", "cifar100", "imagenet16")}
    assert (best["cifar10"].index, best["cifar10"].cifar10) == (6111, 94.3733)
    assert (best["cifar100"].index, best["cifar100"].cifar100) == (9930, 73.5133)
    assert (best["imagenet16"].index, best["imagenet16"].imagenet16) == (857, 47.3111)
    assert len({r.unique_str for r in table.rows}) == 6466
    none = NB201Genotype(tuple(("none", j) for j in (0, 0, 1, 0, 1, 2)))
    assert lookup(none, table).index == 1651


@needs_table
def test_table_is_found_from_a_dataset_folder_and_from_the_environment(monkeypatch):
    monkeypatch.delenv("DARTSNAS_DATA", raising=False)
    assert resolve_table(data_dir=ROOT / "cifar10").resolve() == TABLE.resolve()
    assert resolve_table(data_dir=ROOT / "cifar10" / "subset-15k.npz").resolve() == TABLE.resolve()
    assert resolve_table(TABLE) == TABLE
    monkeypatch.setenv("DARTSNAS_DATA", str(ROOT))
    assert resolve_table().resolve() == TABLE.resolve()


def test_missing_table_is_a_typed_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DARTSNAS_DATA", raising=False)
    with pytest.raises(TableError):
        resolve_table(data_dir=tmp_path / "a" / "b")
    with pytest.raises(TableError):
        resolve_table()
    with pytest.raises(TableError):
        resolve_table(tmp_path / "nope.csv")
    with pytest.raises(TableError):
        load_table(tmp_path / "nope.csv")


def _write(
    path,
    rows,
    header=("arch_index", "arch_str", "cifar10_test_acc", "cifar100_test_acc", "imagenet16_test_acc", "unique_str"),
):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)


def _fake_rows():
    return [
        [
            i,
            NB201Genotype(tuple((NB201_PRIMITIVES[o], j) for o, j in zip(ops, (0, 0, 1, 0, 1, 2)))).arch_str(),
            "50.0",
            "20.0",
            "10.0",
            "u",
        ]
        for i, ops in enumerate(itertools.product(range(5), repeat=6))
    ]


def test_malformed_tables_are_typed_errors(tmp_path):
    rows = _fake_rows()
    p = tmp_path / "t.csv"
    _write(p, rows)
    assert lookup(parse_arch_str(ALL_SKIP), p).cifar10 == 50.0  # a well-formed table loads
    cases = {
        "header": lambda: _write(p, rows, header=("a", "b")),
        "short": lambda: _write(p, rows[:100]),
        "fields": lambda: _write(p, [rows[0][:4]] + rows[1:]),
        "number": lambda: _write(p, [rows[0][:2] + ["x", "1", "1", "u"]] + rows[1:]),
        "order": lambda: _write(p, [rows[1], rows[0]] + rows[2:]),
        "range": lambda: _write(p, [rows[0][:2] + ["150", "1", "1", "u"]] + rows[1:]),
        "duplicate": lambda: _write(p, rows[:-1] + [[15624] + rows[0][1:]]),
        "binary": lambda: p.write_bytes(b"\xff\xfe\x00garbage"),
    }
    for make in cases.values():
        make()
        with pytest.raises(TableError):
            load_table(p)


def test_cli_lookup(tmp_path, cli_main, monkeypatch):
    """In-process (exit codes and one-line errors of ``main``); ``$DARTSNAS_DATA`` is read at each call."""
    rows = _fake_rows()
    i = next(k for k, r in enumerate(rows) if r[1] == ALL_SKIP)
    rows[i][2:5] = ["54.2967", "15.6067", "16.3222"]
    table_dir = tmp_path / "data" / "nasbench201"
    table_dir.mkdir(parents=True)
    _write(table_dir / "nb201_accuracies.csv", rows)
    run = tmp_path / "run"
    run.mkdir()
    save_genotype(parse_arch_str(ALL_SKIP), run / "genotype.json")
    monkeypatch.setenv("DARTSNAS_DATA", "")
    for arg in (ALL_SKIP, str(run), str(run / "genotype.json")):
        r = cli_main("lookup", arg, "--data-dir", str(tmp_path / "data"))
        assert r.returncode == 0, r.stderr
        assert f"row {i})" in r.stdout and "54.2967" in r.stdout and "15.6067" in r.stdout and "16.3222" in r.stdout
    monkeypatch.setenv("DARTSNAS_DATA", str(tmp_path / "data"))
    r = cli_main("lookup", ALL_SKIP)
    assert r.returncode == 0 and "54.2967" in r.stdout
    monkeypatch.setenv("DARTSNAS_DATA", "")
    r = cli_main("lookup", ALL_SKIP, "--data-dir", str(tmp_path / "empty"))
    assert r.returncode == 4 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli_main("lookup", "|skip_connect~0|+|bad~0|", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 3 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli_main("lookup", "DARTS_V2", "--data-dir", str(tmp_path / "data"))
    assert r.returncode == 3 and "nb201" in r.stderr.lower()


def test_cli_lookup_of_a_run_finds_the_table_from_the_runs_data_folder(tmp_path, cli_main, monkeypatch):
    """No --data-dir and no $DARTSNAS_DATA: the run's config.json names its data folder, the table is beside it."""
    import json

    rows = _fake_rows()
    i = next(k for k, r in enumerate(rows) if r[1] == ALL_SKIP)
    rows[i][2] = "54.2967"
    (tmp_path / "data" / "nasbench201").mkdir(parents=True)
    (tmp_path / "data" / "cifar10" / "cifar-10-batches-py").mkdir(parents=True)
    _write(tmp_path / "data" / "nasbench201" / "nb201_accuracies.csv", rows)
    monkeypatch.setenv("DARTSNAS_DATA", "")
    monkeypatch.chdir(tmp_path)
    for recorded in ("data", "data/cifar10/cifar-10-batches-py"):  # the root, or the dataset folder below it
        run = tmp_path / "runs" / recorded.replace("/", "_")
        run.mkdir(parents=True)
        save_genotype(parse_arch_str(ALL_SKIP), run / "genotype.json")
        (run / "config.json").write_text(json.dumps({"kind": "search", "data_dir": str(tmp_path / recorded)}))
        for arg in (str(run), str(run / "genotype.json")):
            r = cli_main("lookup", arg)
            assert r.returncode == 0, r.stderr
            assert f"row {i})" in r.stdout and "54.2967" in r.stdout
    # --data-dir still comes first; an architecture string has no run to read
    rows[i][2] = "11.1111"
    (tmp_path / "other" / "nasbench201").mkdir(parents=True)
    _write(tmp_path / "other" / "nasbench201" / "nb201_accuracies.csv", rows)
    r = cli_main("lookup", str(run), "--data-dir", str(tmp_path / "other"))
    assert r.returncode == 0 and "11.1111" in r.stdout, r.stderr
    r = cli_main("lookup", ALL_SKIP)
    assert r.returncode == 4 and "nowhere" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@needs_table
def test_lookup_command_on_the_real_table(tmp_path):
    from dartsnas.cli.lookup import lookup_command

    text = lookup_command(ALL_SKIP, str(ROOT / "cifar10"))
    assert "row 1835" in text and "54.2967" in text
    shutil.copy(TABLE, tmp_path / "nb201_accuracies.csv")
    assert "row 1835" in lookup_command(ALL_SKIP, str(tmp_path))
