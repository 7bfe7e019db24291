"""The trained NB201 random search: the discrete network, draws, selection, the table read after selection,
and its row in `dartsnas compare` (summary and report)."""

import json
import math
import statistics
from collections import Counter

import pytest
import torch

from conftest import shared_data_root
from dartsnas.cli import main
from dartsnas.errors import TableError
from dartsnas.evalnet.nb201 import NB201Network
from dartsnas.loops.search import SearchConfig
from dartsnas.protocol import random_search as rs
from dartsnas.protocol.compare import CompareConfig, summarize_compare
from dartsnas.report_compare import csv_rows, markdown
from dartsnas.space.nb201 import EDGES, NB201_PRIMITIVES, parse_arch_str
from dartsnas.supernet.nb201 import NB201SearchCell, NB201SearchNetwork

ROOT = shared_data_root()
needs_data = pytest.mark.skipif(
    ROOT is None
    or not (ROOT / "nasbench201" / "nb201_accuracies.csv").is_file()
    or not (ROOT / "cifar10" / "cifar-10-batches-py").is_dir(),
    reason="shared/data (CIFAR-10 and the NB201 table) is not present",
)

GENOTYPES = [
    # a mix with one none edge
    "|nor_conv_3x3~0|+|nor_conv_1x1~0|none~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|",
    # node 2 receives only none edges (a zero node that node 3's conv still reads)
    "|nor_conv_1x1~0|+|none~0|none~1|+|avg_pool_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|",
    # node 3 receives only none edges: the cell outputs zeros
    "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|+|none~0|none~1|none~2|",
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
]


# ------------------------------------------------------------------------------------ the discrete network


def _one_hot(g) -> torch.Tensor:
    w = torch.zeros(len(EDGES), len(NB201_PRIMITIVES), dtype=torch.float64)
    for r, (op, _) in enumerate(g.edges):
        w[r, NB201_PRIMITIVES.index(op)] = 1.0
    return w


def _randomise(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Random values in every float tensor of the state (weights, BN affine and running statistics), so that
    eval mode uses non-trivial statistics and no tensor keeps its default."""
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                v = torch.rand(t.shape, generator=gen, dtype=t.dtype)
                t.copy_(v + 0.5 if "running_var" in name else v - 0.5)


def _copy_supernet_to_discrete(sup: NB201SearchNetwork, net: NB201Network, g) -> None:
    """Each discrete tensor from the supernet tensor it stands for; every discrete tensor is assigned."""
    sup_sd, mapping = sup.state_dict(), {}
    for key in net.state_dict():
        parts = key.split(".")
        if parts[0] == "cells" and parts[2] == "ops":  # cells.i.ops.r.<rest> ← cells.i.edges.r._ops.c.<rest>
            i, r, rest = parts[1], int(parts[3]), parts[4:]
            column = sup.cells[int(i)].edges[r].columns.index(NB201_PRIMITIVES.index(g.edges[r][0]))
            mapping[key] = ".".join(["cells", i, "edges", str(r), "_ops", str(column), *rest])
        else:
            mapping[key] = key
    net.load_state_dict({k: sup_sd[v].clone() for k, v in mapping.items()}, strict=True)


@pytest.mark.parametrize("arch", GENOTYPES)
def test_discrete_network_equals_the_one_hot_supernet(arch):
    g = parse_arch_str(arch)
    gen = torch.Generator().manual_seed(7)
    sup = NB201SearchNetwork(C=4, num_cells=2, num_classes=10).double()
    net = NB201Network(g, C=4, num_cells=2, num_classes=10).double()
    _randomise(sup, gen)
    _copy_supernet_to_discrete(sup, net, g)
    sup.mixing_override = [_one_hot(g)]
    sup.eval(), net.eval()
    x = torch.randn(3, 3, 16, 16, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        want, got = sup(x), net(x)
    assert want.shape == got.shape == (3, 10)
    assert torch.allclose(got, want, rtol=0, atol=1e-10), (got - want).abs().max()
    # only the chosen ops are built: parameters = supernet's minus α and the other ops'
    unused = sum(
        p.numel()
        for cell in sup.cells
        if isinstance(cell, NB201SearchCell)
        for r, edge in enumerate(cell.edges)
        for c, op in zip(edge.columns, edge._ops)
        if NB201_PRIMITIVES[c] != g.edges[r][0]
        for p in op.parameters()
    )
    n_sup = sum(p.numel() for p in sup.parameters()) - sup.alphas_cell.numel()
    assert sum(p.numel() for p in net.parameters()) == n_sup - unused


def test_all_none_output_node_ignores_the_cell_input():
    g = parse_arch_str(GENOTYPES[2])
    net = NB201Network(g, C=4, num_cells=1, num_classes=10).double()
    cell = net.cells[0]
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    assert torch.equal(cell(x), torch.zeros_like(x))


# ------------------------------------------------------------------------------------ draws and selection


def test_draws_are_seeded_uniform_and_a_prefix():
    a, b = rs.draw_cells(3, 40), rs.draw_cells(3, 40)
    assert a == b and rs.draw_cells(3, 10) == a[:10] and rs.draw_cells(4, 40) != a
    assert all(g.edges[r][1] == EDGES[r][1] for g in a for r in range(len(EDGES)))
    counts = Counter(op for g in rs.draw_cells(11, 2000) for op, _ in g.edges)
    # 12,000 edge draws, 2,400 expected per op; 5 standard deviations ≈ 220
    assert set(counts) == set(NB201_PRIMITIVES) and all(abs(c - 2400) < 220 for c in counts.values())


def test_select_best_is_the_first_argmax():
    assert rs.select_best([0.1, 0.3, 0.2]) == 1
    assert rs.select_best([0.3, 0.1, 0.3]) == 0
    assert rs.select_best([0.2]) == 0


def _builtin_cfg(**over):
    base = {"dataset": "builtin", "subset": 48, "batch_size": 16, "eval_batch_size": 32, "progress": False}
    return SearchConfig.build("nb201-proxy", {**base, **over})


def test_cells_trained_then_selected_then_looked_up(monkeypatch, tmp_path):
    """Built-in images and a mock table: the table is read once, after every training, for the argmax cell."""
    events = []
    train = rs.train_cell

    def spy_train(g, *a, **k):
        events.append(("train", g.arch_str()))
        return train(g, *a, **k)

    class Row:
        def __init__(self, arch):
            self.arch_str, self.index = arch, 42

        def to_dict(self):
            return {"row": 42, "arch_str": self.arch_str, "cifar10": 90.0, "cifar100": 70.0, "imagenet16_120": 40.0}

        cifar10 = 90.0

    class Table:
        path = tmp_path / "table.csv"

    def fake_load(path):
        events.append(("table", str(path)))
        return Table()

    import dartsnas.space.lookup as lookup_mod

    monkeypatch.setattr(rs, "train_cell", spy_train)
    monkeypatch.setattr(lookup_mod, "load_table", fake_load)
    monkeypatch.setattr(lookup_mod, "lookup", lambda g, t: Row(g.arch_str()))
    out = rs.random_search_nb201(_builtin_cfg(), 5, samples=3, epochs_each=1, table=__file__, log=lambda s: None)
    assert [e[0] for e in events] == ["train", "train", "train", "table"]
    drawn = [g.arch_str() for g in rs.draw_cells(5, 3)]
    assert [e[1] for e in events[:3]] == drawn == [c["arch_str"] for c in out["cells"]]
    accs = [c["valid_acc"] for c in out["cells"]]
    assert out["selected"] == accs.index(max(accs)) and out["arch_str"] == drawn[out["selected"]]
    assert out["table"]["row"] == 42 and out["cpu_hours"] > 0 and out["wall_seconds"] > 0
    assert all(0 <= a <= 1 for a in accs) and out["train_images"] == out["valid_images"] == 48


def test_missing_table_fails_only_after_the_trainings(tmp_path):
    logs = []
    with pytest.raises(TableError):
        rs.random_search_nb201(
            _builtin_cfg(subset=32), 1, samples=2, epochs_each=1, table=tmp_path / "none.csv", log=logs.append
        )
    assert sum("cell" in line and "valid acc" in line for line in logs) == 2


def test_training_is_reproducible_and_every_cell_sees_the_same_batches():
    cfg = _builtin_cfg(subset=32)
    data, w, a = rs.search_data(cfg, torch.device("cpu"))
    g = rs.draw_cells(2, 1)[0]
    r1 = rs.train_cell(g, cfg, data, w, a, 2, seed=2)
    assert r1 == rs.train_cell(g, cfg, data, w, a, 2, seed=2)
    assert r1 != rs.train_cell(g, cfg, data, w, a, 2, seed=3)
    assert math.isfinite(r1["train_loss"]) and not r1["diverged"]


@needs_data
def test_tiny_real_random_search_ends_in_a_table_row():
    from dartsnas.space.lookup import load_table, resolve_table

    cfg = SearchConfig.build(
        "nb201-proxy", {"data_dir": str(ROOT / "cifar10"), "subset": 64, "batch_size": 32, "progress": False}
    )
    out = rs.random_search_nb201(cfg, 1, samples=2, epochs_each=1, log=lambda s: None)
    row = load_table(resolve_table(None, ROOT)).by_arch[out["arch_str"]]
    assert out["table"]["row"] == row.index and out["table"]["cifar10"] == row.cifar10
    assert out["arch_str"] == out["cells"][out["selected"]]["arch_str"]
    assert json.loads(json.dumps(out)) == out


# ------------------------------------------------------------------------------------ compare


def _fake_compare(tmp_path):
    exp = tmp_path / "cmp"
    for sub in ("runs", "status", "logs"):
        (exp / sub).mkdir(parents=True)
    cfg = CompareConfig.build(overrides=["methods=darts", "seeds=1,2,3", "random_search=3", "random_search_epochs=2"])
    (exp / "experiment.json").write_text(
        json.dumps(
            {"kind": "compare", "space": "nb201", "methods": ["darts"], "seeds": [1, 2, 3], "config": cfg.to_dict()}
        )
    )
    accs = {1: (93.1, 70.2, 44.3), 2: (88.0, 60.5, 30.25), 3: (91.5, 66.0, 41.0)}
    per_seed = []
    for seed, (c10, c100, in16) in accs.items():
        arch = rs.draw_cells(seed, 1)[0].arch_str()
        per_seed.append(
            {
                "seed": seed,
                "arch_str": arch,
                "valid_acc": 0.5 + seed / 100,
                "selected": 0,
                "table": {
                    "row": 1000 + seed,
                    "arch_str": arch,
                    "cifar10": c10,
                    "cifar100": c100,
                    "imagenet16_120": in16,
                },
                "cpu_hours": 0.1 * seed,
                "gpu_hours": 0.0,
            }
        )
    (exp / "random_search.json").write_text(json.dumps({"samples": 3, "epochs_each": 2, "per_seed": per_seed}))
    return exp, accs


def test_summary_and_report_carry_the_random_search_row(tmp_path):
    exp, accs = _fake_compare(tmp_path)
    s = summarize_compare(exp)["random_search"]
    for i, key in enumerate(("cifar10", "cifar100", "imagenet16_120")):
        vals = [v[i] for v in accs.values()]
        assert math.isclose(s[key]["mean"], statistics.mean(vals))
        assert math.isclose(s[key]["std"], statistics.stdev(vals))
    assert math.isclose(s["cpu_hours"]["mean"], 0.2) and s["seeds"] == 3
    assert [c["table_row"] for c in s["cells"]] == [1001, 1002, 1003]
    summary = summarize_compare(exp)
    md = markdown(summary)
    c10 = [v[0] for v in accs.values()]
    name = "random search (3 cells × 2 epochs, best by validation)"
    want = f"| {name} | {statistics.mean(c10):.2f} ± {statistics.stdev(c10):.2f} |"
    assert want in md and "0.2 CPU-h" in md and "row 1002" in md and "valid 52.0 %" in md
    row = next(r for r in csv_rows(summary) if r["source"] == "random search")
    assert math.isclose(row["cifar100_mean"], statistics.mean(v[1] for v in accs.values()))


def test_bad_random_search_values_are_one_line(tmp_path, capsys):
    exp = tmp_path / "e"
    assert main(["compare", "--random-search", "-2", "-e", str(exp)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "random_search" in err
    assert main(["compare", "--space", "cnn", "--random-search", "3", "-e", str(exp)]) == 2
    assert "NB201 only" in capsys.readouterr().err
    assert main(["compare", "--random-search", "--set", "random_search_epochs=0", "-e", str(exp)]) == 2
    assert "random_search_epochs" in capsys.readouterr().err
    assert not exp.exists()


def test_cli_default_is_the_budget_matched_count():
    from dartsnas.cli import build_parser

    args = build_parser().parse_args(["compare", "--random-search"])
    assert int(args.random_search) == rs.RANDOM_SEARCH_SAMPLES
    assert CompareConfig().random_search_epochs == rs.RANDOM_SEARCH_EPOCHS


@needs_data
def test_compare_runs_the_random_search_and_resumes_by_seed(tmp_path, capsys):
    exp = tmp_path / "cmp"
    argv = ["compare", "--methods", "darts", "--seeds", "1", "--epochs", "1", "--data-dir", str(ROOT / "cifar10")]
    argv += ["--random-search", "2", "--set", "random_search_epochs=1", "-e", str(exp)]
    for kv in ("subset=64", "batch_size=32", "hessian_batch=16"):
        argv += ["--search-set", kv]
    assert main(argv) == 0
    data = json.loads((exp / "random_search.json").read_text())
    assert [s["seed"] for s in data["per_seed"]] == [1] and len(data["per_seed"][0]["cells"]) == 2
    s = json.loads((exp / "summary.json").read_text())["random_search"]
    assert s["cifar10"]["mean"] == data["per_seed"][0]["table"]["cifar10"]
    out = capsys.readouterr().out
    assert f"random search (2 cells × 1 epochs): 1 seed(s), CIFAR-10 table accuracy {s['cifar10']['mean']:.2f}" in out
    assert main(argv + ["--resume"]) == 0
    assert "random search seed 1: cell" not in capsys.readouterr().out  # the finished seed is kept
    assert json.loads((exp / "random_search.json").read_text()) == data
