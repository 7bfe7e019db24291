"""Recurrent training survives a NaN (spec §7.6, issue 12 item 11): it reloads the last checkpoint and goes on,
at most ``nan_retries`` times per checkpoint, then stops with exit 6. The other loops still stop at once.

NaNs are injected through ``DARTSNAS_FAULT`` (loops.common.nan_fault): ``nan_train_at_step:N`` poisons step N
every time it runs (a NaN that does not go away), ``nan_train_at_step:N:K`` only the first K times.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dartsnas.checkpoint import load_checkpoint
from dartsnas.cli import main
from dartsnas.loops import rnn_train

RNN = ["train", "--space", "rnn", "--preset", "tiny", "--no-progress"]  # 4 epochs of 3 steps
TIMING = {"epoch_seconds", "seconds", "wall_seconds", "gpu_hours", "cpu_hours"}


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args, fault=None)`` -> (exit code, stdout, stderr), the CLI in this process."""

    def call(*args: str, fault: str | None = None):
        if fault is None:
            monkeypatch.delenv("DARTSNAS_FAULT", raising=False)
        else:
            monkeypatch.setenv("DARTSNAS_FAULT", fault)
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        monkeypatch.delenv("DARTSNAS_FAULT", raising=False)
        return code, out.out, out.err

    return call


def _records(run: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a if k != "wall")
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_transient_nan_reloads_the_checkpoint_and_finishes(cli, tmp_path, monkeypatch):
    seen = []  # what every step call found: counters, position, weights, random streams
    original = rnn_train.RNNTrainTask.step

    def spy(self, batch):
        st = self.state
        seen.append(
            {
                "global_step": st.global_step,
                "step_in_epoch": st.step_in_epoch,
                "pos": st.pos,
                "weights": [p.detach().clone() for p in st.params],
                "torch_rng": torch.get_rng_state(),
                "seq_len": st.len_gen.get_state(),
            }
        )
        return original(self, batch)

    monkeypatch.setattr(rnn_train.RNNTrainTask, "step", spy)
    run = tmp_path / "nan"
    # Step 5 is the second step of epoch 2: one update after the epoch-1 checkpoint, so a reload is visible.
    code, out, err = cli(*RNN, "--run-dir", str(run), fault="nan_train_at_step:5:2")
    assert code == 0, err
    reloads = [ln for ln in out.splitlines() if "reloaded" in ln]
    assert len(reloads) == 2 and "retry 1 of 3" in reloads[0] and "retry 2 of 3" in reloads[1]
    assert all("not finite at step 4" in ln and "epoch 2/4, at its start" in ln for ln in reloads)
    assert [r["epoch"] for r in _records(run) if "epoch" in r and r.get("event") != "final"] == [0, 1, 2, 3]
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_run"] == 4 and results["test_ppl"] is not None
    assert load_checkpoint(run / "checkpoint.pt")["global_step"] == 12

    # Epoch 2 was started three times (two failed attempts, the good one) from the epoch-1 checkpoint:
    # the same weights, position and counters each time, but the random streams went on.
    starts = [s for s in seen if s["global_step"] == 3]
    assert len(starts) == 3 and all(s["pos"] == 0 and s["step_in_epoch"] == 0 for s in starts)
    for s in starts[1:]:
        assert all(torch.equal(a, b) for a, b in zip(s["weights"], starts[0]["weights"]))
        assert not torch.equal(s["torch_rng"], starts[0]["torch_rng"])
    assert not torch.equal(starts[1]["seq_len"], starts[0]["seq_len"])
    assert not torch.equal(starts[2]["torch_rng"], starts[1]["torch_rng"])
    failed = [s for s in seen if s["global_step"] == 4]
    assert len(failed) == 3  # the failing step ran on weights one update past the checkpoint
    assert not all(torch.equal(a, b) for a, b in zip(failed[0]["weights"], starts[0]["weights"]))

    # Deterministic: the same run with the same fault is the same run, bit for bit; it differs from a run
    # without the NaN (the retry drew other segments and masks).
    monkeypatch.setattr(rnn_train.RNNTrainTask, "step", original)
    again = tmp_path / "again"
    assert cli(*RNN, "--run-dir", str(again), fault="nan_train_at_step:5:2")[0] == 0
    assert _equal(load_checkpoint(run / "checkpoint.pt"), load_checkpoint(again / "checkpoint.pt"))
    assert _records(run) == _records(again)
    clean = tmp_path / "clean"
    assert cli(*RNN, "--run-dir", str(clean))[0] == 0
    assert not _equal(
        load_checkpoint(run / "checkpoint.pt")["model"], load_checkpoint(clean / "checkpoint.pt")["model"]
    )


def test_nan_in_the_first_epoch_goes_back_to_the_initial_state(cli, tmp_path):
    run = tmp_path / "first"
    code, out, err = cli(*RNN, "--run-dir", str(run), fault="nan_train_at_step:2:1")
    assert code == 0, err
    assert "reloaded" in out and "epoch 1/4, at its start" in out
    assert load_checkpoint(run / "checkpoint.pt")["global_step"] == 12


def test_retries_exhausted_exit_6_and_resume_harmless(cli, tmp_path):
    run = tmp_path / "run"
    code, out, err = cli(*RNN, "--run-dir", str(run), fault="nan_train_at_step:5")  # a NaN that does not go away
    assert code == 6, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not finite at step 4" in lines[0] and "Traceback" not in err
    assert [ln.count("retry") for ln in out.splitlines() if "reloaded" in ln] == [1, 1, 1]
    assert "giving up after 3 reloads (nan_retries=3)" in out
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["global_step"] == 3 and ck["step_in_epoch"] == 0  # the end of epoch 1, as it was
    before = (run / "checkpoint.pt").read_bytes()

    # fewer retries than NaNs: exit 6; none: exit 6 at once. nan_retries may change on resume.
    code, out, err = cli(
        *RNN[:3], "--resume", str(run), "--no-progress", "--set", "nan_retries=1", fault="nan_train_at_step:5:2"
    )
    assert code == 6 and out.count("reloaded") == 1 and "config changed on resume: nan_retries" in out, err
    code, out, err = cli(
        *RNN[:3], "--resume", str(run), "--no-progress", "--set", "nan_retries=0", fault="nan_train_at_step:5:1"
    )
    assert code == 6 and "reloaded" not in out and "giving up" not in out, err
    assert (run / "checkpoint.pt").read_bytes() == before
    code, out, err = cli(
        *RNN[:3], "--resume", str(run), "--no-progress", "--set", "nan_retries=2", fault="nan_train_at_step:5:1"
    )  # a harmless change sticks: set it back
    assert code == 0 and out.count("reloaded") == 1, err


@pytest.mark.parametrize(
    "args",
    [
        ["search", "--preset", "tiny", "--no-progress"],
        ["train", "--preset", "tiny", "--genotype", "DARTS_V2", "--no-progress"],
        ["search", "--space", "rnn", "--preset", "tiny", "--no-progress"],
    ],
    ids=["cnn-search", "cnn-train", "rnn-search"],
)
def test_other_loops_still_stop_at_the_first_nan(cli, tmp_path, args):
    run = tmp_path / "run"
    code, out, err = cli(*args, "--run-dir", str(run), fault="nan_train_at_step:1:1")
    assert code == 6 and "not finite at step 0" in err, err
    assert "reloaded" not in out and not (run / "checkpoint.pt").exists()
