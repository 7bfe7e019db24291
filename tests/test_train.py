"""Training from scratch (spec §5, §6, §12.8-9): schedules, cutout, the CLI, eval of corrupted or foreign
checkpoints, ImageNet errors, DDP on CPU (resume, signals, NaN and bad checkpoints: test_reliability.py)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SRC
from dartsnas.checkpoint import load_checkpoint
from dartsnas.cli import main
from dartsnas.data.images import augment
from dartsnas.errors import ConfigError
from dartsnas.loops.train import TrainConfig, drop_path_probability, learning_rate, resolve_runtime

TIMING_KEYS = {"seconds", "wall_seconds"}
# Drop path > 0, cutout and the auxiliary head are all on in the tiny preset (3 epochs x 3 steps).
TINY = ["train", "--preset", "tiny", "--no-progress"]


def _one_line_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _records(run: Path) -> list[dict]:
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "epoch" in r and r.get("event") != "final":
            out.append({k: v for k, v in r.items() if k not in TIMING_KEYS})
    return out


# ------------------------------------------------------------------------------------------- units


def test_cifar_schedule_matches_spec():
    cfg = TrainConfig.build("paper")
    assert learning_rate(cfg, 0) == pytest.approx(0.025)
    assert learning_rate(cfg, 599) == pytest.approx(1.713e-7, rel=1e-3)
    assert learning_rate(cfg, 599) == pytest.approx(0.0125 * (1 + math.cos(math.pi * 599 / 600)), rel=1e-12)
    assert drop_path_probability(cfg, 0) == 0.0
    assert drop_path_probability(cfg, 599) == pytest.approx(0.2 * 599 / 600)
    assert (
        cfg.epochs,
        cfg.batch_size,
        cfg.momentum,
        cfg.weight_decay,
        cfg.grad_clip,
        cfg.cutout,
        cfg.auxiliary_weight,
        cfg.init_channels,
        cfg.layers,
        cfg.seed,
    ) == (600, 96, 0.9, 3e-4, 5.0, 16, 0.4, 36, 20, 0)


def test_imagenet_schedule_and_preset():
    cfg = TrainConfig.build("imagenet")
    for e in (0, 1, 10, 249):
        assert learning_rate(cfg, e) == pytest.approx(0.1 * 0.97**e, rel=1e-12)
    assert (
        cfg.epochs,
        cfg.batch_size,
        cfg.label_smoothing,
        cfg.weight_decay,
        cfg.init_channels,
        cfg.layers,
        cfg.drop_path_prob,
    ) == (250, 128, 0.1, 3e-5, 48, 14, 0.0)
    assert drop_path_probability(cfg, 100) == 0.0


def test_speed_switches_off_on_cpu_and_bad_values_refused():
    rt = resolve_runtime(TrainConfig.build("tiny"), torch.device("cpu"))
    assert (rt.channels_last, rt.bf16, rt.compile, rt.sync_bn, rt.optimizer_impl) == (
        False,
        False,
        False,
        False,
        "for-loop",
    )
    with pytest.raises(ConfigError, match="bf16"):
        resolve_runtime(TrainConfig.build("tiny", ["bf16=on"]), torch.device("cpu"))
    with pytest.raises(ConfigError) as e:
        TrainConfig.build("tiny", ["lr=-1", "drop_path_prob=1.5"])
    assert "lr: must be positive" in str(e.value) and "drop_path_prob" in str(e.value)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        TrainConfig.build("tiny", ["epoch=3"])


def test_cutout_zeroes_at_most_16x16():
    gen = torch.Generator().manual_seed(0)
    x = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    out = augment(x, gen, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), pad=0, flip=False, cutout=16)
    zeros = out == 0
    assert torch.equal(zeros[:, 0], zeros[:, 1]) and torch.equal(zeros[:, 0], zeros[:, 2])
    per_image = zeros[:, 0].flatten(1).sum(1)
    assert per_image.max().item() <= 16 * 16 and per_image.min().item() > 0
    for z in zeros[:, 0]:  # one axis-aligned rectangle, at most 16 on each side
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert rows.numel() <= 16 and cols.numel() <= 16
        assert int(z.sum()) == rows.numel() * cols.numel()


# ------------------------------------------------------------------------------------------- CLI runs


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """A tiny training, run in this process (one thread, as the subprocesses); the tests only read it."""
    run = tmp_path_factory.mktemp("train") / "ref"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.delenv("DARTSNAS_FAULT", raising=False)
        assert main([*TINY, "--genotype", "DARTS_V2", "--run-dir", str(run)]) == 0
    return run


def test_cli_tiny_run_writes_metrics_results_curves(reference_run):
    run = reference_run
    for name in (
        "config.json",
        "genotype.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "results.json",
        "loss.svg",
        "accuracy.svg",
    ):
        assert (run / name).is_file(), name
    recs = _records(run)
    assert [r["epoch"] for r in recs] == [0, 1, 2]
    for r in recs:
        for key in ("train_loss", "train_acc", "test_loss", "test_top1", "test_top5", "lr", "drop_path_prob"):
            assert math.isfinite(r[key]), key
    assert recs[0]["drop_path_prob"] == 0.0 and recs[2]["drop_path_prob"] == pytest.approx(0.2 * 2 / 3)
    res = json.loads((run / "results.json").read_text())
    assert res["params"] < res["params_with_auxiliary"]
    assert res["multiply_adds"] > 0 and res["epochs"] == 3 and res["device"] == "cpu"
    assert res["gpu_hours"] == 0.0 and res["cpu_hours"] > 0
    assert res["test_error_percent"] == pytest.approx(100 * (1 - recs[-1]["test_top1"]))
    assert (run / "loss.svg").read_text().startswith("<svg") or "<svg" in (run / "loss.svg").read_text()


def test_eval_reevaluates_the_checkpoint(reference_run, cli_main):
    proc = cli_main("eval", str(reference_run), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    last = _records(reference_run)[-1]
    assert out["complete"] and out["epoch"] == 3
    assert out["test_top1"] == pytest.approx(last["test_top1"], abs=1e-12)
    assert out["test_loss"] == pytest.approx(last["test_loss"], rel=1e-6)


def test_corrupted_checkpoint_refused(reference_run, tmp_path, cli_main):
    run = tmp_path / "corrupt"
    shutil.copytree(reference_run, run)
    raw = bytearray((run / "checkpoint.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (run / "checkpoint.pt").write_bytes(bytes(raw))
    proc = cli_main("eval", str(run))  # resuming it is refused in test_reliability.py
    assert proc.returncode == 5, proc.stderr
    line = _one_line_error(proc)
    assert "checksum mismatch" in line and "checkpoint.pt" in line


def test_foreign_checkpoint_refused(tmp_path, cli_main):
    from dartsnas.checkpoint import save_checkpoint

    run = tmp_path / "foreign"
    run.mkdir()
    save_checkpoint(run / "checkpoint.pt", {"kind": "cnn-search", "config": {}})
    proc = cli_main("eval", str(run))
    assert proc.returncode == 5
    line = _one_line_error(proc)
    assert "is a search run (cnn-search), not a training run; train its cell first" in line
    assert ".prev" not in line  # the fallback advice is for damaged checkpoints, not for another kind of run


def test_imagenet_missing_folder_and_torchvision_errors(tmp_path, cli_main):
    proc = cli_main(
        "train",
        "--dataset",
        "imagenet",
        "--data-dir",
        str(tmp_path / "nope"),
        "--no-progress",
        "--run-dir",
        str(tmp_path / "r1"),
    )
    assert proc.returncode == 4
    assert "nope: no such folder (pass --data-dir" in _one_line_error(proc)
    (tmp_path / "empty").mkdir()
    proc = cli_main(
        "train", "--dataset", "imagenet", "--data-dir", str(tmp_path / "empty"), "--run-dir", str(tmp_path / "r2")
    )
    assert proc.returncode == 4 and "missing the train/ folder" in _one_line_error(proc)
    proc = cli_main("train", "--dataset", "imagenet", "--no-progress", "--run-dir", str(tmp_path / "r0"))
    assert proc.returncode == 4 and "--data-dir" in _one_line_error(proc)
    try:
        import torchvision  # noqa: F401
    except ImportError:
        root = tmp_path / "imagenet"
        (root / "train" / "n01").mkdir(parents=True)
        (root / "val" / "n01").mkdir(parents=True)
        proc = cli_main(
            "train",
            "--dataset",
            "imagenet",
            "--data-dir",
            str(root),
            "--no-progress",
            "--run-dir",
            str(tmp_path / "r2"),
        )
        assert proc.returncode == 4
        assert "pip install 'dartsnas[imagenet]'" in _one_line_error(proc)


# ------------------------------------------------------------------------------------------- DDP


def test_two_process_gloo_matches_one_process(tmp_path, cli_main):
    """Two ranks (gloo, CPU) against one process with the same global batch of 16 over 3 steps.

    BatchNorm normalises with the statistics of the batch it sees, so a rank holding 8 of the 16 images
    computes different activations from one process holding all 16; SyncBatchNorm would remove that
    difference but PyTorch supports it only on GPUs. The one-process reference therefore splits each
    global batch into the same two halves with ``accum_steps=2`` (the same per-half BN statistics, the
    gradients averaged as DDP averages them): the parameters must agree to float tolerance. Running
    statistics are buffers (DDP broadcasts rank 0's), not parameters, and are not compared.
    """
    genotype = tmp_path / "genotype.json"
    from dartsnas.space.genotype import PUBLISHED, save_genotype

    save_genotype(PUBLISHED["DARTS_V1"], genotype)
    common = [
        "train",
        "--preset",
        "tiny",
        "--genotype",
        str(genotype),
        "--set",
        "epochs=1",
        "--set",
        "drop_path_prob=0",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    env.pop("DARTSNAS_FAULT", None)
    two = tmp_path / "two"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "dartsnas",
            *common,
            "--run-dir",
            str(two),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one = tmp_path / "one"
    proc = cli_main(*common, "--set", "accum_steps=2", "--run-dir", str(one))  # one process: this one
    assert proc.returncode == 0, proc.stderr
    a, b = load_checkpoint(two / "checkpoint.pt"), load_checkpoint(one / "checkpoint.pt")
    assert a["world_size"] == 2 and len(a["rank_rng"]) == 2 and a["global_step"] == b["global_step"] == 3
    params = dict(torch.nn.Module.named_parameters(_net(b)))
    assert params
    init = _net(b, trained=False)
    moved = 0.0
    for name in params:
        pa, pb = a["model"][name], b["model"][name]
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
        moved = max(moved, (pb - init[name]).abs().max().item())
    assert moved > 1e-4  # the weights did move
    assert json.loads((two / "results.json").read_text())["world_size"] == 2


def _net(ck: dict, trained: bool = True):
    from dartsnas.loops.train import build_network
    from dartsnas.space.genotype import genotype_from_dict

    cfg = TrainConfig.from_dict(ck["config"])
    torch.manual_seed(cfg.seed)
    net = build_network(cfg, genotype_from_dict(ck["genotype"]), 10)
    if trained:
        net.load_state_dict(ck["model"])
        return net
    return dict(net.named_parameters())
