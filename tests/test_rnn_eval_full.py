"""`dartsnas eval` of a recurrent run says when its perplexities are over capped token counts, and --full
evaluates the whole sets (issue 12, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import dartsnas
from dartsnas.data.text import load_corpus
from dartsnas.loops.rnn_train import eval_run

SRC = Path(__file__).resolve().parents[1] / "src"


def _ppl_by_hand(model, tokens: torch.Tensor) -> float:
    """Test perplexity at batch size 1, token by token in float64: the mean is over the split's length, as
    the evaluation divides (spec §7.6), and the hidden state runs through the whole text."""
    hidden = torch.zeros(1, model.n)
    total = 0.0
    with torch.no_grad():
        for t in range(tokens.numel() - 1):
            out = model(tokens[t : t + 1].view(1, 1), hidden, return_log_probs=True)
            total -= out.log_probs[0, 0, int(tokens[t + 1])].double().item()
            hidden = out.hidden
    return float(torch.tensor(total / tokens.numel(), dtype=torch.float64).exp())


def test_eval_reports_caps_and_full_evaluates_everything(tmp_path):
    cfg = dartsnas.RNNTrainConfig.build("tiny", overrides=["epochs=1"], progress=False)
    run = dartsnas.train(cfg, run_dir=tmp_path / "rnn").run_dir
    corpus = load_corpus(cfg.dataset, cfg.data_dir)
    capped = eval_run(run)
    assert capped["test_tokens"] < capped["test_tokens_total"] == corpus.test.numel()
    assert capped["valid_tokens"] < capped["valid_tokens_total"]
    full = eval_run(run, full=True)
    assert full["test_tokens"] == full["test_tokens_total"] == corpus.test.numel()
    assert full["valid_tokens"] == full["valid_tokens_total"]
    assert full["test_ppl"] != capped["test_ppl"]
    model = dartsnas.load_model(run)
    assert abs(full["test_ppl"] - _ppl_by_hand(model, corpus.test)) <= 1e-6 * full["test_ppl"]
    n = capped["test_tokens"]
    assert abs(capped["test_ppl"] - _ppl_by_hand(model, corpus.test[:n])) <= 1e-6 * capped["test_ppl"]

    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "dartsnas", "eval", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert f"first {n:,} of {corpus.test.numel():,} test tokens" in r.stderr and "--full" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "dartsnas", "eval", str(run), "--full"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
