"""`dartsnas compare` (methods × seeds as one experiment), its report, and the search cost in results.json."""

import json
import math
import resource
import statistics

import pytest

from conftest import shared_data_root
from dartsnas.cli import main
from dartsnas.protocol.compare import (
    CompareConfig,
    mean_std,
    random_baseline_nb201,
    summarize_compare,
)
from dartsnas.report_compare import PUBLISHED_NB201, diagnostic_series, markdown

# ------------------------------------------------------------------------------------ fake experiments

ARCH = {
    1: "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    2: "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
    3: "|nor_conv_1x1~0|+|nor_conv_3x3~0|none~1|+|nor_conv_1x1~0|nor_conv_3x3~1|none~2|",
}
# (method, seed) -> (CIFAR-10, CIFAR-100, ImageNet16-120, cpu hours, peak bytes, λ_max per epoch, skips per epoch)
FAKE = {
    ("darts", 1): (93.5, 70.1, 44.0, 0.50, 600_000_000, [0.1, 0.3], [0, 1]),
    ("darts", 2): (54.3, 15.6, 16.3, 0.70, 700_000_000, [0.2, 0.5], [1, 3]),
    ("darts", 3): (91.0, 66.0, 40.0, 0.60, 650_000_000, [0.3, 0.4], [2, 2]),
    ("beta-darts", 1): (94.0, 72.0, 45.0, 0.80, 900_000_000, [0.05, 0.06], [0, 0]),
    ("beta-darts", 2): (93.0, 71.0, 46.0, 0.90, 800_000_000, [0.07, 0.08], [0, 1]),
}
FAILED = ("beta-darts", 3)  # its results.json holds an outlier that must not reach the statistics


def _write_run(exp, method, seed, values, status="done"):
    c10, c100, in16, hours, peak, lam, skips = values
    name = f"search-{method}-seed{seed}"
    run = exp / "runs" / name
    run.mkdir(parents=True)
    (run / "results.json").write_text(
        json.dumps(
            {
                "space": "nb201",
                "method": method,
                "wall_seconds": hours * 3600,
                "device": "cpu",
                "gpu_hours": 0.0,
                "cpu_hours": hours,
                "peak_memory_bytes": peak,
                "peak_memory_source": "cpu_peak_rss",
                "arch_str": ARCH[seed],
                "table": {
                    "row": 100 + seed,
                    "arch_str": ARCH[seed],
                    "cifar10": c10,
                    "cifar100": c100,
                    "imagenet16_120": in16,
                },
            }
        )
    )
    with open(run / "metrics.jsonl", "w") as f:
        f.writelines(
            json.dumps({"epoch": e, "hessian_eig": lm, "skip_count": sk}) + "\n"
            for e, (lm, sk) in enumerate(zip(lam, skips))
        )
    st = {"name": name, "stage": "search", "status": status, "method": method, "seed": seed, "device": "cpu"}
    if status == "failed":
        st["error"] = "non-finite: train loss at step 1"
    (exp / "status" / f"{name}.json").write_text(json.dumps(st))


@pytest.fixture()
def fake_exp(tmp_path):
    exp = tmp_path / "cmp"
    for sub in ("runs", "status", "logs"):
        (exp / sub).mkdir(parents=True)
    cfg = CompareConfig.build(overrides=["methods=darts,beta-darts", "seeds=1,2,3", "space=nb201"])
    (exp / "experiment.json").write_text(
        json.dumps(
            {
                "kind": "compare",
                "space": "nb201",
                "methods": ["darts", "beta-darts"],
                "seeds": [1, 2, 3],
                "config": cfg.to_dict(),
            }
        )
    )
    for (m, s), v in FAKE.items():
        _write_run(exp, m, s, v)
    _write_run(exp, *FAILED, (10.0, 1.0, 1.0, 5.0, 9_000_000_000, [9.0, 9.0], [6, 6]), status="failed")
    return exp


def _expected(method, index):
    vals = [v[index] for (m, _), v in FAKE.items() if m == method]
    return statistics.mean(vals), statistics.stdev(vals)


def test_mean_std_matches_statistics():
    assert mean_std([]) is None and mean_std([float("nan")]) is None
    assert mean_std([3.0]) == {"mean": 3.0, "std": 0.0, "n": 1, "values": [3.0]}
    got = mean_std([1.0, 2.0, 4.0, float("inf")])
    assert got["n"] == 3 and math.isclose(got["mean"], statistics.mean([1, 2, 4]))
    assert math.isclose(got["std"], statistics.stdev([1, 2, 4]))


def test_summary_statistics_from_known_runs(fake_exp):
    s = summarize_compare(fake_exp)
    by = {m["method"]: m for m in s["methods"]}
    for method in ("darts", "beta-darts"):
        for i, key in enumerate(("cifar10", "cifar100", "imagenet16_120")):
            mean, std = _expected(method, i)
            assert math.isclose(by[method][key]["mean"], mean) and math.isclose(by[method][key]["std"], std)
        hours = [v[3] for (m, _), v in FAKE.items() if m == method]
        assert math.isclose(by[method]["cpu_hours"]["mean"], statistics.mean(hours))
        assert by[method]["peak_memory_bytes"] == max(v[4] for (m, _), v in FAKE.items() if m == method)
    # the failed run is recorded and left out (its 10 % and 9 GB would show in the numbers)
    assert by["beta-darts"]["n"] == 2 and by["beta-darts"]["runs"] == 3
    assert by["beta-darts"]["failed"] == ["search-beta-darts-seed3"] and s["failed"] == ["search-beta-darts-seed3"]
    assert by["darts"]["n"] == 3 and by["darts"]["failed"] == []
    assert [c["table_row"] for c in by["darts"]["cells"]] == [101, 102, 103]
    # diagnostics: per epoch the mean over the finished seeds (hand-computed)
    hist, methods = diagnostic_series(s, "lambda_max")
    assert methods == ["darts", "beta-darts"]
    assert math.isclose(hist[1]["darts"], (0.3 + 0.5 + 0.4) / 3) and math.isclose(hist[0]["beta-darts"], 0.06)
    skips, _ = diagnostic_series(s, "skip_count")
    assert math.isclose(skips[1]["darts"], 2.0) and math.isclose(skips[1]["beta-darts"], 0.5)


def test_report_table_html_and_csv(fake_exp, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(fake_exp), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert capsys.readouterr().out.startswith("## NAS-Bench-201")
    for method in ("darts", "beta-darts"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {method} |"))
        for i in range(3):
            mean, std = _expected(method, i)
            assert f"{mean:.2f} ± {std:.2f}" in line
    assert "| beta-darts | 93.50 ± 0.71 | 71.50 ± 0.71 |" in md  # the numbers by hand: (94, 93), (72, 71)
    assert "2/3 (1 failed)" in md
    # every published row of ROBUST-SPEC §1.8, marked as published
    for p in PUBLISHED_NB201:
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {p['method']} |"))
        assert "published" in line
    assert "| DARTS-V1 / V2 (NB201 paper) | 54.30 ± 0.00 | 15.61 ± 0.00 | 16.32 ± 0.00 |" in md
    assert "| GDAS | 93.61 ± 0.09 | 70.70 ± 0.30 | 41.71 ± 0.98 |" in md
    assert "| optimum (best cell in the table) | 94.37 | 73.51 | 47.31 |" in md
    rows = (out / "compare.csv").read_text().splitlines()
    assert rows[0].startswith("space,method,source") and len(rows) == 1 + 2 + len(PUBLISHED_NB201)
    html = (out / "report.html").read_text()
    assert "collapse diagnostics per method" in html and "search-beta-darts-seed3" in html
    assert html.count("<svg") == 2 + 5  # λ_max and skip figures, five final cells (the failed run's is not drawn)


def test_darts_space_params_and_cells(tmp_path):
    """DARTS space: the evaluation-network count of the derived cell (DARTS_V2: 3,349,342 at C=36, 20 cells)."""
    from dartsnas.evalnet.cnn import NetworkCIFAR, count_parameters
    from dartsnas.space.genotype import genotype_to_dict, load_genotype

    g = load_genotype("DARTS_V2")
    expected = count_parameters(NetworkCIFAR(g, 36, 10, 20, auxiliary=True), include_auxiliary=False)
    assert expected == 3_349_342  # the original train.py's "param size = 3.349342MB" for DARTS_V2
    exp = tmp_path / "cmp"
    for sub in ("runs", "status", "logs"):
        (exp / sub).mkdir(parents=True)
    cfg = CompareConfig.build(overrides=["methods=darts", "seeds=1", "space=cnn", "preset=tiny"])
    (exp / "experiment.json").write_text(
        json.dumps({"kind": "compare", "space": "cnn", "methods": ["darts"], "seeds": [1], "config": cfg.to_dict()})
    )
    run = exp / "runs" / "search-darts-seed1"
    run.mkdir()
    (run / "results.json").write_text(
        json.dumps({"space": "darts", "genotype": genotype_to_dict(g), "cpu_hours": 0.1, "gpu_hours": 0.0})
    )
    (exp / "status" / "search-darts-seed1.json").write_text(json.dumps({"status": "done"}))
    s = summarize_compare(exp)
    assert s["methods"][0]["params"]["mean"] == expected
    md = markdown(s)
    assert f"| {expected / 1e6:.2f} |" in md  # one seed: the value alone, no "± 0.00" posing as a spread
    assert f"{expected / 1e6:.2f} ±" not in md


def test_random_baseline_is_table_lookup():
    root = shared_data_root()
    if root is None or not (root / "nasbench201" / "nb201_accuracies.csv").is_file():
        pytest.skip("no NB201 table (shared/data/nasbench201 absent)")
    from dartsnas.space.lookup import load_table, resolve_table
    from dartsnas.space.nb201 import parse_arch_str

    cfg = CompareConfig.build(overrides=["seeds=4,5", "random_samples=7", f"data_dir={root / 'cifar10'}"])
    rb = random_baseline_nb201(cfg)
    assert rb == random_baseline_nb201(cfg)  # seeded
    table = load_table(resolve_table(None, root))
    for ps in rb["per_seed"]:
        assert len(ps["cells"]) == 7
        for c in ps["cells"]:
            row = table.by_arch[parse_arch_str(c["arch_str"]).arch_str()]
            assert (row.index, row.cifar10) == (c["row"], c["cifar10"])
        assert math.isclose(ps["mean"]["cifar10"], sum(c["cifar10"] for c in ps["cells"]) / 7)
    assert rb["per_seed"][0]["cells"] != rb["per_seed"][1]["cells"]


# ------------------------------------------------------------------------------------ config errors


def test_bad_compare_input_is_one_line(tmp_path, capsys):
    exp = tmp_path / "e"
    assert main(["compare", "--space", "cnn", "--preset", "tiny", "--methods", "darts,nosuch", "-e", str(exp)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nosuch" in err
    assert not exp.exists()  # nothing created before the configs are checked
    assert main(["compare", "--methods", "darts,darts", "-e", str(exp)]) == 2
    assert "duplicate" in capsys.readouterr().err
    assert main(["compare", "--space", "cnn", "--random-samples", "3", "-e", str(exp)]) == 2
    assert "NB201 only" in capsys.readouterr().err
    assert (
        main(["compare", "--space", "cnn", "--preset", "tiny", "--method-args", "gdas=tau_max=5", "-e", str(exp)]) == 2
    )
    assert "not compared" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ end to end (subprocess runs)


def test_search_results_carry_cost(tmp_path):
    run = tmp_path / "run"
    assert main(["search", "--preset", "tiny", "--epochs", "1", "--run-dir", str(run), "--no-progress"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["device"] == "cpu" and res["gpu_hours"] == 0.0 and res["peak_memory_source"] == "cpu_peak_rss"
    assert math.isclose(res["cpu_hours"], res["wall_seconds"] / 3600)
    rec = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert math.isclose(res["wall_seconds"], rec[-1]["wall_seconds"])
    # in-process: this process's peak RSS (KiB on Linux), never more than it is now
    assert 0 < res["peak_memory_bytes"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert res["genotype"] == json.loads((run / "genotype.json").read_text())


def test_compare_darts_space_end_to_end(tmp_path, monkeypatch, capsys):
    """2 methods × 2 seeds, one run made to fail: recorded, excluded, the rest reported; resume reruns nothing."""
    exp = tmp_path / "cmp"
    monkeypatch.setenv("DARTSNAS_PROTOCOL_FAULT", "search-beta-darts-seed2=nan_train_at_step:1")
    argv = [
        "compare",
        "--space",
        "cnn",
        "--preset",
        "tiny",
        "--methods",
        "darts,beta-darts",
        "--seeds",
        "1,2",
        "--epochs",
        "1",
        "--jobs",
        "2",
        "--final",
        "--train-preset",
        "tiny",
        "--final-epochs",
        "1",
        "-e",
        str(exp),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "failed runs (recorded, excluded): search-beta-darts-seed2, final-beta-darts-seed2" in out
    s = json.loads((exp / "summary.json").read_text())
    by = {m["method"]: m for m in s["methods"]}
    assert (by["darts"]["n"], by["beta-darts"]["n"]) == (2, 1)
    for r in s["runs"]:
        cmd = json.loads((exp / "status" / f"{r['name']}.json").read_text())["command"]
        assert cmd[cmd.index("--run-dir") + 1] == str(exp / "runs" / r["name"])
        assert f"method={r['method']}" in cmd and f"seed={r['seed']}" in cmd
    assert by["darts"]["params"]["n"] == 2 and by["darts"]["cpu_hours"]["n"] == 2
    # final trainings: one per finished search, its cell, test error mean ± std from the runs' results.json
    errors = [
        json.loads((exp / "runs" / f"final-darts-seed{s}" / "results.json").read_text())["test_error_percent"]
        for s in (1, 2)
    ]
    assert math.isclose(by["darts"]["test_error"]["mean"], statistics.mean(errors))
    assert math.isclose(by["darts"]["test_error"]["std"], statistics.stdev(errors))
    # the failed search's training never ran ("not run: search-beta-darts-seed2 failed"); the method counts it once
    assert by["beta-darts"]["test_error"]["n"] == 1 and by["beta-darts"]["final_failed"] == []
    st = json.loads((exp / "status" / "final-beta-darts-seed2.json").read_text())
    assert st["status"] == "failed" and "search-beta-darts-seed2 failed" in st["error"]
    trained = json.loads((exp / "runs" / "final-darts-seed1" / "genotype.json").read_text())
    assert trained == json.loads((exp / "runs" / "search-darts-seed1" / "genotype.json").read_text())
    assert main(["compare", "--resume", "-e", str(exp)]) == 0
    assert "starting" not in capsys.readouterr().out
    assert main(["report", str(exp), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| darts | 2/2 |" in md and "| beta-darts | 1/2 (1 failed) |" in md
    te = by["darts"]["test_error"]
    assert f"{te['mean']:.2f} ± {te['std']:.2f} (n=2)" in md


def test_compare_nb201_end_to_end(tmp_path, capsys):
    root = shared_data_root()
    if root is None or not (root / "cifar10").is_dir() or not (root / "nasbench201").is_dir():
        pytest.skip("shared/data with cifar10 and nasbench201 absent")
    exp = tmp_path / "cmp"
    argv = [
        "compare",
        "--space",
        "nb201",
        "--methods",
        "darts",
        "--seeds",
        "1,2",
        "--epochs",
        "1",
        "--data-dir",
        str(root / "cifar10"),
        "--random-samples",
        "4",
        "--jobs",
        "2",
        "-e",
        str(exp),
    ]
    for kv in ("subset=64", "batch_size=32", "hessian_batch=16"):
        argv += ["--search-set", kv]
    assert main(argv) == 0
    s = json.loads((exp / "summary.json").read_text())
    runs = [r for r in s["runs"] if r["status"] == "done"]
    assert len(runs) == 2 and all(isinstance(r["table_row"], int) for r in runs)
    m = s["methods"][0]
    c10 = [r["cifar10"] for r in runs]
    assert math.isclose(m["cifar10"]["mean"], statistics.mean(c10))
    assert all(len(r["lambda_max"]) == 1 and r["lambda_max"][0] is not None for r in runs)
    assert s["random"]["samples"] == 4 and s["random"]["seeds"] == 2
    assert main(["report", str(exp), "--out", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"| darts | {m['cifar10']['mean']:.2f} ± {m['cifar10']['std']:.2f} |" in md
    assert "random cell (mean of 4 table look-ups)" in md and "| GDAS | 93.61 ± 0.09 |" in md
