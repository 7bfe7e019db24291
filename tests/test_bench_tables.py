"""The result-gathering benchmark scripts on hand-made result files: benchmarks/nb201_table.py (issue 10's proxy
table over several experiments) and benchmarks/alpha_spread.py (how far α moved)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(method: str, seed: int, c10: float, row: int, wall: float = 600.0) -> dict:
    return {
        "name": f"search-{method}-seed{seed}",
        "method": method,
        "seed": seed,
        "status": "done",
        "arch_str": f"|cell{row}|",
        "table_row": row,
        "cifar10": c10,
        "cifar100": c10 - 20,
        "imagenet16_120": c10 - 50,
        "wall_seconds": wall,
        "peak_memory_bytes": 2**30,
        "peak_memory_source": "cpu_peak_rss",
        "skip_count": [0, 1],
        "lambda_max": [0.1, 0.2],
    }


def _methods_file(d: Path, name: str, command: str, runs: list[dict]) -> None:
    (d / f"nb201-methods-{name}.json").write_text(
        json.dumps({"meta": {"command": command}, "summary": {"runs": runs, "random": None}})
    )


def test_nb201_table_gathers_seeds_over_files_and_labels_variants(tmp_path):
    t = _load("nb201_table")
    _methods_file(tmp_path, "a", "dartsnas compare --methods darts,gdas", [_run("gdas", 1, 70.0, 5)])
    two = [_run("gdas", 2, 80.0, 6), _run("gdas", 3, 90.0, 7)]
    _methods_file(tmp_path, "b", "dartsnas compare --methods gdas", two)
    _methods_file(tmp_path, "c", "dartsnas compare --methods darts --order 2", [_run("darts", 1, 93.0, 8)])
    failed = {**_run("drnas", 1, 50.0, 9), "status": "failed"}
    _methods_file(tmp_path, "d", "--method-args drnas=widen_to=2", [_run("drnas", 1, 94.0, 10), failed])
    out = t.gather(tmp_path)
    by = {m["method"]: m for m in out["methods"]}
    assert set(by) == {"gdas", "darts (2nd order)", "drnas (progressive)"}
    g = by["gdas"]
    assert g["seeds"] == [1, 2, 3]
    assert g["cifar10"]["mean"] == pytest.approx(80.0)
    assert g["cifar10"]["std"] == pytest.approx(10.0)  # sample std (n - 1), not the population's 8.16
    assert g["imagenet16_120"]["mean"] == pytest.approx(30.0)
    assert by["darts (2nd order)"]["cifar10"]["std"] is None  # one seed: no spread
    assert [c["table_row"] for c in g["cells"]] == [5, 6, 7]
    md = t.markdown(out)
    assert "| gdas | 3 | 5 (1), 6 (1), 7 (1) | 80.00 ± 10.00 |" in md
    assert "| darts (2nd order) | 1 |" in md and "93.00 |" in md


def test_nb201_table_refuses_a_seed_measured_twice(tmp_path):
    t = _load("nb201_table")
    _methods_file(tmp_path, "a", "x", [_run("gdas", 1, 70.0, 5)])
    _methods_file(tmp_path, "b", "y", [_run("gdas", 1, 71.0, 6)])
    with pytest.raises(SystemExit, match="gdas seed 1"):
        t.gather(tmp_path)


def test_alpha_spread_uniform_and_peaked(tmp_path):
    a = _load("alpha_spread")
    run = tmp_path / "runs" / "search-x"
    run.mkdir(parents=True)
    uniform = [[0.2] * 5] * 6
    peaked = [[0.6, 0.1, 0.1, 0.1, 0.1]] * 6
    lines = [{"epoch": 0, "alphas": uniform}, {"epoch": 1, "alphas": peaked, "table_row": 3}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (r,) = a.main([str(tmp_path)])
    assert r["epochs"] == 2 and r["table_row"] == 3
    assert r["uniform_entropy"] == pytest.approx(math.log(5))
    assert r["mean_entropy"] == pytest.approx(-(0.6 * math.log(0.6) + 4 * 0.1 * math.log(0.1)))
    assert r["max_weight"] == pytest.approx(0.6)
