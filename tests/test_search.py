"""The CNN search command end to end on CPU: outputs, --auto-resume, bad input (resume, signals, NaN and bad
checkpoints for every run kind: test_reliability.py)."""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_cli, shared_data_root
from dartsnas.cli import main
from dartsnas.errors import ConfigError
from dartsnas.loops.search import SearchConfig, cosine_lr

TINY = ["--preset", "tiny", "--no-progress"]


def _metrics(run):
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k in ("epoch_seconds", "wall_seconds"):
            r.pop(k, None)
        out.append(r)
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """A 3-epoch search, run in this process (one thread, as the subprocesses); the tests only read it."""
    run = tmp_path_factory.mktemp("ref") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.delenv("DARTSNAS_FAULT", raising=False)
        assert main(["search", *TINY, "--set", "epochs=3", "--run-dir", str(run)]) == 0
    return run


def test_search_writes_run_directory(reference_run):
    run = reference_run
    for name in (
        "config.json",
        "metrics.jsonl",
        "genotype.json",
        "normal.svg",
        "reduce.svg",
        "curves.svg",
        "alphas.svg",
        "checkpoint.pt",
    ):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "cnn-search" and cfg["epochs"] == 3 and cfg["num_nodes"] == 2
    records = _metrics(run)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        assert math.isfinite(r["train_loss"]) and 0 <= r["valid_acc"] <= 1
        rows = r["alphas_normal"]
        assert len(rows) == 5 and all(abs(sum(row) - 1) < 1e-9 for row in rows)
        assert r["genotype"]["kind"] == "cnn"
    assert records[0]["lr"] == pytest.approx(0.025)
    svg = (run / "normal.svg").read_text()
    assert svg.startswith("<svg") and "c_{k-1}" in svg
    alphas = (run / "alphas.svg").read_text()
    assert alphas.count("<rect") >= 2 * 5 * 8 and "epoch 3" in alphas  # both cells, 5 edges x 8 ops, last epoch


def test_derive_matches_search_genotype(reference_run, cli_main):
    res = cli_main("derive", str(reference_run))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == json.loads((reference_run / "genotype.json").read_text())


def test_second_order_smoke(tmp_path, cli_main):
    res = cli_main("search", *TINY, "--order", "2", "--set", "epochs=1", "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    rec = _metrics(tmp_path / "r")[0]
    assert abs(rec["train_loss"] - math.log(10)) < 0.6


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["search", "--bogus"], 2, "unrecognized arguments"),
        (["search", "--preset", "tiny", "--set", "layres=4"], 2, "did you mean 'layers'"),
        (["search", "--preset", "tiny", "--set", "epochs=two", "--set", "lr=-1"], 2, "epochs: expected an integer"),
        (["search", "--preset", "tiny", "--order", "3"], 2, "order: '3' is not one of 1, 2"),
        (["search", "--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], 4, "/nonexistent/cifar"),
        (["search", "--dataset", "imagenet21k"], 2, "unknown dataset"),
        (["search", "--preset", "nope"], 2, "unknown preset"),
        (["search", "--preset", "tiny", "--run-dir", "/proc/forbidden/run"], 7, "cannot create or write"),
        (["derive", "/nonexistent/run"], 5, "no such checkpoint"),
        (["genotype", "NOT_A_GENOTYPE"], 3, "not a published genotype name"),
    ],
)
def test_bad_input_is_one_line(args, code, needle, cli_main):
    res = cli_main(*args)
    assert res.returncode == code, (res.returncode, res.stderr)
    assert needle in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_all_config_problems_reported_at_once():
    with pytest.raises(ConfigError) as e:
        SearchConfig.build(overrides=["epochs=0", "lr=-1", "layerz=3"])
    text = str(e.value)
    assert "layerz" in text
    with pytest.raises(ConfigError) as e:
        SearchConfig.build(overrides=["epochs=0", "lr=-1"])
    assert "epochs" in str(e.value) and "lr" in str(e.value)


def test_search_schedule_matches_spec():
    assert cosine_lr(0, 50, 0.025, 0.001) == pytest.approx(0.025)
    assert cosine_lr(49, 50, 0.025, 0.001) == pytest.approx(0.0010237, abs=1e-7)


def test_paper_defaults():
    cfg = SearchConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.lr_min, cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (
        50,
        64,
        0.025,
        0.001,
        0.9,
        3e-4,
        5.0,
    )
    assert (cfg.arch_lr, cfg.arch_beta1, cfg.arch_beta2, cfg.arch_weight_decay, cfg.order) == (
        3e-4,
        0.5,
        0.999,
        1e-3,
        1,
    )
    assert (cfg.init_channels, cfg.layers, cfg.train_portion, cfg.seed) == (16, 8, 0.5, 2)


@pytest.mark.skipif(shared_data_root() is None, reason="CIFAR-10 not found (set DARTSNAS_DATA or put ../shared/data)")
def test_short_search_on_real_cifar10(tmp_path, cli_main):
    data = shared_data_root() / "cifar10"
    res = cli_main(
        "search",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(data),
        "--subset",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--set",
        "init_channels=4",
        "--set",
        "layers=3",
        "--set",
        "eval_batch_size=64",
        "--no-progress",
        "--run-dir",
        str(tmp_path / "r"),
    )
    assert res.returncode == 0, res.stderr
    rec = _metrics(tmp_path / "r")[0]
    assert abs(rec["train_loss"] - math.log(10)) < 0.7


def test_skip_collapse_guard_stops_and_keeps_last_good_cell(tmp_path, monkeypatch, cli_main):
    import dartsnas.loops.search as search_mod
    from dartsnas.loops.search import skip_count, too_many_skips
    from dartsnas.space.genotype import PUBLISHED

    v2 = PUBLISHED["DARTS_V2"]
    assert skip_count(v2) == 2 and too_many_skips(v2, 1) and not too_many_skips(v2, 2) and not too_many_skips(v2, None)
    bad = cli_main("search", *TINY, "--set", "max_skip_normal=-1", "--run-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "max_skip_normal" in bad.stderr
    # Pretend the cell of the second epoch collapsed: the run stops there and keeps the first epoch's cell.
    calls = []
    monkeypatch.setattr(search_mod, "too_many_skips", lambda g, limit: bool(calls.append(g)) or len(calls) == 2)
    cfg = SearchConfig.build("tiny", overrides=["epochs=4", "max_skip_normal=1"], progress=False)
    result = search_mod.run_search(cfg, run_dir=tmp_path / "r", log=lambda *a: None)
    records = _metrics(tmp_path / "r")
    assert len(records) == 2 and records[-1]["stopped_early"] is True and "stopped_early" not in records[0]
    assert json.loads((tmp_path / "r" / "genotype.json").read_text()) == records[0]["genotype"]
    assert result.genotype == calls[0]
    # Resuming a run that stopped early does not continue it.
    again = search_mod.run_search(cfg, run_dir=tmp_path / "r", resume=True, log=lambda *a: None)
    assert len(_metrics(tmp_path / "r")) == 2 and again.genotype == result.genotype


def test_show_config_lists_every_field(cli_main):
    res = cli_main("search", "--preset", "paper", "--show-config", "--set", "layers=5")
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert set(shown) == set(SearchConfig.field_names()) and shown["layers"] == 5 and shown["epochs"] == 50


def test_auto_resume_starts_then_continues(reference_run, tmp_path, cli_main):
    run = tmp_path / "run"
    cmd = ["search", *TINY, "--set", "epochs=3", "--run-dir", str(run), "--auto-resume"]
    first = run_cli(*cmd, env={"DARTSNAS_FAULT": "kill_at_step:6"})  # a real process, really killed
    assert first.returncode == -9
    second = cli_main(*cmd)  # the same command line continues the killed run (in this process)
    assert second.returncode == 0, second.stderr
    assert "resumed" in second.stdout
    assert (run / "genotype.json").read_text() == (reference_run / "genotype.json").read_text()
    assert _metrics(run) == _metrics(reference_run)
    changed = cli_main(
        "search", *TINY, "--set", "epochs=3", "--set", "layers=4", "--run-dir", str(run), "--auto-resume"
    )
    assert changed.returncode == 5 and "layers: checkpoint=3, config=4" in changed.stderr
    alone = cli_main("search", *TINY, "--auto-resume")
    assert alone.returncode == 2 and "--auto-resume needs --run-dir" in alone.stderr
