"""NB201 searches through the CNN search loop: presets, the AutoDL schedule (ROBUST-SPEC §7 test 13), smoke
runs of every NB201 preset ending in a table row (§7 test 14, NB201 part), diagnostics in the metrics,
DARTS-ES, derive and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import shared_data_root
from dartsnas.checkpoint import load_checkpoint
from dartsnas.data.images import BatchStream, load_images
from dartsnas.errors import ConfigError, DataError
from dartsnas.loops.search import SearchConfig, cosine_lr, derive_from_run, run_search
from dartsnas.loops.search_hooks import (
    NB201_PRESETS,
    augment_padding,
    prepare_images,
    search_split,
)
from dartsnas.space.genotype import load_genotype
from dartsnas.space.nb201 import NB201Genotype, parse_arch_str

ROOT = shared_data_root()
needs_data = pytest.mark.skipif(
    ROOT is None
    or not (ROOT / "nasbench201" / "nb201_accuracies.csv").is_file()
    or not (ROOT / "cifar10" / "cifar-10-batches-py").is_dir(),
    reason="shared/data (CIFAR-10 and the NB201 table) is not present",
)


def test_autodl_schedule_and_steps_per_epoch():
    cfg = SearchConfig.build("nb201-autodl")
    assert (cfg.epochs, cfg.weight_decay, cfg.nesterov, cfg.split, cfg.space) == (50, 5e-4, True, "nb201", "nb201")
    assert cosine_lr(0, cfg.epochs, cfg.lr, cfg.lr_min) == pytest.approx(0.025, abs=1e-12)
    assert cosine_lr(49, cfg.epochs, cfg.lr, cfg.lr_min) == pytest.approx(0.0010237, abs=5e-8)
    assert BatchStream(25_000, cfg.batch_size, 0, epoch_mode=True).steps_per_epoch() == 391


def test_nb201_presets_follow_the_protocol_table():
    s = SearchConfig.build("nb201")
    assert (s.epochs, s.batch_size, s.lr, s.lr_min, s.weight_decay, s.nesterov, s.order) == (
        100,
        64,
        0.025,
        0.001,
        3e-4,
        False,
        1,
    )
    assert (s.arch_lr, s.arch_beta1, s.arch_beta2, s.arch_weight_decay, s.grad_clip) == (3e-4, 0.5, 0.999, 1e-3, 5.0)
    assert (s.init_channels, s.nb201_cells, s.train_portion, s.split) == (16, 5, 0.5, "halves")
    assert SearchConfig.build("nb201-autodl", ["order=2"]).order == 2
    p = SearchConfig.build("nb201-proxy")
    assert (p.init_channels, p.nb201_cells, p.image_size, p.subset) == (8, 1, 16, 6000)
    assert set(NB201_PRESETS) == {"nb201", "nb201-autodl", "nb201-proxy"}


def test_bad_nb201_config_values_are_reported_together():
    with pytest.raises(ConfigError) as e:
        SearchConfig.build(
            "nb201",
            [
                "nb201_cells=0",
                "image_size=2",
                "hessian_batch=0",
                "fused_ops=true",
                "split=nb201",
                "dataset=builtin",
                "space=foo",
            ],
        )
    text = str(e.value)
    assert "space" in text
    with pytest.raises(ConfigError) as e:
        SearchConfig.build(
            "nb201",
            ["nb201_cells=0", "image_size=2", "hessian_batch=0", "fused_ops=true", "split=nb201", "dataset=builtin"],
        )
    for key in ("nb201_cells", "image_size", "hessian_batch", "fused_ops", "split"):
        assert key in str(e.value)


def test_image_downsampling_and_padding():
    data = load_images("builtin")
    cfg = SearchConfig.build("tiny", ["image_size=8"])
    small = prepare_images(cfg, data)
    assert small.train_x.shape[-2:] == (8, 8) and small.train_x.dtype == torch.uint8
    ref = data.train_x[:3].float().view(3, 3, 8, 2, 8, 2).mean((3, 5)).round()
    torch.testing.assert_close(small.train_x[:3].float(), ref, atol=1, rtol=0)
    assert prepare_images(SearchConfig.build("tiny"), data) is data
    assert augment_padding(SearchConfig.build("tiny")) == 4
    assert augment_padding(SearchConfig.build("nb201-proxy")) == 2


def _tiny_nb201(tmp_path, **over):
    sets = {
        "space": "nb201",
        "dataset": "builtin",
        "init_channels": 4,
        "nb201_cells": 1,
        "epochs": 2,
        "batch_size": 16,
        "subset": 32,
        "log_interval": 1,
        "progress": False,
        "hessian": True,
        "hessian_batch": 8,
        **over,
    }
    return SearchConfig.build(None, {k: v for k, v in sets.items()})


def test_nb201_search_records_diagnostics_and_resumes_bit_identically(tmp_path):
    cfg = _tiny_nb201(tmp_path)
    full = run_search(cfg, tmp_path / "a", log=lambda *_: None)
    assert isinstance(full.genotype, NB201Genotype)
    rec = full.history[-1]
    assert len(rec["alphas"]) == 6 and len(rec["alphas"][0]) == 5
    assert math.isfinite(rec["hessian_eig"]) and rec["hessian_products"] == 30
    assert {"skip_count", "none_count", "param_free_count", "alpha_entropy"} <= set(rec)
    assert rec["genotype"]["kind"] == "nb201"
    assert derive_from_run(tmp_path / "a") == full.genotype
    assert load_genotype(tmp_path / "a") == full.genotype
    svg = (tmp_path / "a" / "curves.svg").read_text()
    assert "dominant eigenvalue" in svg and "operation counts" in svg
    assert (tmp_path / "a" / "cell.svg").is_file() and (tmp_path / "a" / "alphas.svg").is_file()
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["arch_str"] == full.genotype.arch_str()


CLI_TINY = [
    "search",
    "--space",
    "nb201",
    "--preset",
    "tiny",
    "--no-progress",
    "--set",
    "nb201_cells=1",
    "--set",
    "subset=32",
    "--set",
    "hessian=true",
    "--set",
    "hessian_batch=8",
]


@pytest.mark.parametrize("fault", ["kill_at_step:3"])
def test_nb201_resume_after_a_kill_is_bit_identical(tmp_path, cli, fault):
    """The existing SIGKILL/SIGTERM mechanism (loops.common.inject_fault) on an NB201 run: 2 steps per epoch,
    killed in epoch 2, resumed; the final state and metrics equal an uninterrupted run's."""
    ref = cli(*CLI_TINY, "--run-dir", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    first = cli(*CLI_TINY, "--run-dir", str(tmp_path / "run"), env={"DARTSNAS_FAULT": fault})
    assert first.returncode in (-9, 128 + 15), first.stderr
    second = cli("search", "--resume", str(tmp_path / "run"), "--no-progress")
    assert second.returncode == 0, second.stderr
    a = load_checkpoint(tmp_path / "ref" / "checkpoint.pt", expect_kind="cnn-search")["model"]
    b = load_checkpoint(tmp_path / "run" / "checkpoint.pt", expect_kind="cnn-search")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def metrics(run):
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if "seconds" not in k} for r in recs if "epoch" in r]

    assert metrics(tmp_path / "ref") == metrics(tmp_path / "run")
    assert (tmp_path / "ref" / "genotype.json").read_text() == (tmp_path / "run" / "genotype.json").read_text()


def test_diagnostics_do_not_change_the_search(tmp_path):
    on = run_search(_tiny_nb201(tmp_path, epochs=1), tmp_path / "on", log=lambda *_: None)
    off = run_search(_tiny_nb201(tmp_path, epochs=1, hessian=False), tmp_path / "off", log=lambda *_: None)
    assert torch.equal(on.alphas_normal, off.alphas_normal)
    assert "hessian_eig" not in off.history[-1]


def test_darts_es_stops_and_keeps_the_earlier_genotype(tmp_path, monkeypatch):
    """A scripted λ sequence (flat, then a jump) drives the real loop: it stops where the rule says and
    genotype.json holds the genotype of the epoch 4 evaluations earlier."""
    import dartsnas.diagnostics as diag

    seq = iter([1.0] * 12 + [5.0] * 20)
    monkeypatch.setattr(diag, "hessian_eigenvalue", lambda *a, **k: diag.Eigen(next(seq), 1, False))
    cfg = _tiny_nb201(tmp_path, epochs=30, subset=16, early_stop="hessian", hessian=False, arch_lr=0.05)
    res = run_search(cfg, tmp_path / "es", log=lambda *_: None)
    epochs = [r["epoch"] for r in res.history]
    assert epochs[-1] == 14 and res.history[-1].get("stopped_early")
    kept = res.history[10]["genotype"]
    assert json.loads((tmp_path / "es" / "genotype.json").read_text())["arch_str"] == kept["arch_str"]


def test_split_file_needs_the_full_training_set(tmp_path, monkeypatch):
    monkeypatch.delenv("DARTSNAS_DATA", raising=False)
    cfg = SearchConfig.build("nb201-autodl", [f"data_dir={tmp_path}"])
    with pytest.raises(DataError):
        search_split(cfg, 50_000)
    split_dir = tmp_path / "nasbench201"
    split_dir.mkdir()
    (split_dir / "cifar10-split.json").write_text(json.dumps({"train": [0, 2, 4], "valid": [1, 3, 5]}))
    w, a = search_split(cfg, 50_000)
    assert w.tolist() == [0, 2, 4] and a.tolist() == [1, 3, 5]
    with pytest.raises(DataError):
        search_split(cfg, 5)
    (split_dir / "cifar10-split.json").write_text(json.dumps({"train": [0, 1], "valid": [1, 3]}))
    with pytest.raises(DataError):
        search_split(cfg, 50_000)
    assert search_split(SearchConfig.build("nb201"), 50_000) is None


@needs_data
@pytest.mark.parametrize("preset", sorted(NB201_PRESETS))
def test_two_steps_of_every_nb201_preset_end_in_a_table_row(preset, tmp_path):
    over = {
        "epochs": 1,
        "batch_size": 8,
        "subset": 16,
        "hessian_batch": 8,
        "progress": False,
        "data_dir": str(ROOT / "cifar10"),
    }
    cfg = SearchConfig.build(preset, over)
    if preset == "nb201-autodl":
        w, a = search_split(cfg, 50_000)
        assert len(w) == len(a) == 25_000 and not set(w.tolist()) & set(a.tolist())
    logs = []
    res = run_search(cfg, tmp_path / preset, log=logs.append)
    rec = res.history[-1]
    assert 1.5 < rec["train_loss"] < 3.5 and math.isfinite(rec["hessian_eig"])  # near ln 10 = 2.30
    results = json.loads((tmp_path / preset / "results.json").read_text())
    assert results["table"]["arch_str"] == res.genotype.arch_str()
    assert results["table"]["row"] == rec["table_row"]
    assert 0 < results["table"]["cifar10"] <= 100
    assert any("table row" in line for line in logs)


@needs_data
def test_cli_search_nb201_prints_the_table_row(tmp_path, cli):
    r = cli(
        "search",
        "--space",
        "nb201",
        "--preset",
        "nb201-proxy",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(ROOT / "cifar10" / "subset-15k.npz"),
        "--run-dir",
        str(tmp_path / "run"),
        "--set",
        "epochs=1",
        "--set",
        "subset=16",
        "--set",
        "batch_size=8",
        "--set",
        "hessian_batch=8",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    assert "table row" in r.stdout and "CIFAR-100" in r.stdout
    g = parse_arch_str(json.loads((tmp_path / "run" / "results.json").read_text())["arch_str"])
    r = cli("lookup", str(tmp_path / "run"), "--data-dir", str(ROOT))
    assert r.returncode == 0 and g.arch_str() in r.stdout


def test_cli_search_nb201_bad_data_is_one_line(tmp_path, cli):
    r = cli(
        "search",
        "--space",
        "nb201",
        "--preset",
        "nb201-autodl",
        "--dataset",
        "cifar10",
        "--data-dir",
        str(tmp_path),
        "--run-dir",
        str(tmp_path / "run"),
        env={"DARTSNAS_DATA": ""},
    )
    assert r.returncode == 4 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
