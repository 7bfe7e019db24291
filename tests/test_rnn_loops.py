"""Recurrent search and training end to end on CPU: outputs, the NT-ASGD switch rule, per-step learning-rate
scaling, and a short PTB search when the data is present (resume, signals, NaN and bad checkpoints:
test_reliability.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import run_cli, shared_data_root
from dartsnas.loops.rnn_common import evaluate_lm, scaled_lr, search_seq_len, train_seq_len
from dartsnas.loops.rnn_search import RNNSearchConfig
from dartsnas.loops.rnn_train import RNNTrainConfig, should_switch_to_asgd

torch.set_num_threads(1)

SEARCH = ["search", "--space", "rnn", "--preset", "tiny", "--no-progress"]
TRAIN = ["train", "--space", "rnn", "--preset", "tiny", "--no-progress"]


def _metrics(run):
    out = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k in ("epoch_seconds", "wall_seconds"):
            r.pop(k, None)
        out.append(r)
    return out


# ------------------------------------------------------------------------------------------------ search


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("rnn-search") / "run"
    res = run_cli(*SEARCH, "--run-dir", str(run))
    assert res.returncode == 0, res.stderr
    return run


def test_search_writes_run_directory(search_run):
    run = search_run
    for name in ("config.json", "metrics.jsonl", "genotype.json", "recurrent.svg", "perplexity.svg", "checkpoint.pt"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["kind"] == "rnn-search" and cfg["dataset"] == "builtin" and cfg["num_nodes"] == 4
    records = _metrics(run)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        assert math.isfinite(r["train_ppl"]) and math.isfinite(r["valid_ppl"]) and r["steps"] == 3
        assert len(r["alphas"]) == 10 and all(abs(sum(row) - 1) < 1e-9 for row in r["alphas"])
        assert r["genotype"]["kind"] == "rnn" and len(r["genotype"]["recurrent"]) == 4
    # the built-in vocabulary has 425 words: the first epoch starts near the uniform perplexity
    assert records[0]["train_ppl"] < 2 * 425
    assert (run / "recurrent.svg").read_text().startswith("<svg")


def test_derive_matches_search_genotype(search_run):
    res = run_cli("derive", str(search_run))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == json.loads((search_run / "genotype.json").read_text())


def test_search_second_order_smoke(tmp_path):
    res = run_cli(*SEARCH, "--order", "2", "--epochs", "1", "--run-dir", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    rec = _metrics(tmp_path / "r")[0]
    assert math.isfinite(rec["valid_ppl"]) and abs(rec["arch_loss"] - math.log(425)) < 1.0


def test_search_second_order_names_the_non_finite_validation_loss(tmp_path):
    """The generic NaN guarantees are in test_reliability.py; order 2 names the loss at w'."""
    res = run_cli(
        *SEARCH, "--order", "2", "--run-dir", str(tmp_path / "v"), env={"DARTSNAS_FAULT": "nan_val_at_step:2"}
    )
    assert res.returncode == 6 and "validation loss at w'" in res.stderr and "Traceback" not in res.stderr


def test_search_lr_and_eta_scaled_by_segment_length(monkeypatch):
    """Each step's SGD lr and the η handed to the architect are lr·ℓ/35; the lr is restored afterwards."""
    from dartsnas.data.text import batchify, get_segment, load_corpus
    from dartsnas.loops import rnn_search

    cfg = RNNSearchConfig.build("tiny", overrides=["bptt=35", "device=cpu"])
    corpus = load_corpus("builtin")
    st = rnn_search._State(cfg, corpus.ntoken, torch.device("cpu"))
    seen = {}
    real_step = st.architect.step

    def spy(train_fn, val_fn, eta, opt, step):
        seen["eta"] = eta
        return real_step(train_fn, val_fn, eta, opt, step)

    real_sgd = st.w_opt.step

    def sgd_spy(*a, **k):
        seen["lr"] = st.w_opt.param_groups[0]["lr"]
        return real_sgd(*a, **k)

    monkeypatch.setattr(st.architect, "step", spy)
    monkeypatch.setattr(st.w_opt, "step", sgd_spy)
    train = batchify(corpus.train, 4)
    search = batchify(corpus.valid, 4)
    x, y = get_segment(train, 0, 17)
    xv, yv = get_segment(search, 0, 35)
    rnn_search._search_step(st, x, y, xv, yv, 17)
    assert seen["eta"] == pytest.approx(20.0 * 17 / 35) and seen["lr"] == pytest.approx(20.0 * 17 / 35)
    assert st.w_opt.param_groups[0]["lr"] == 20.0


def test_arch_step_closures_share_masks():
    """With a per-step seed, repeated closure calls draw the same dropout masks (same loss); without, not."""
    from dartsnas.loops.rnn_search import _closure
    from dartsnas.supernet.rnn import RNNSearchModel

    torch.manual_seed(0)
    m = RNNSearchModel(50, n=8, num_nodes=3)
    x = torch.randint(0, 50, (6, 4))
    y = torch.randint(0, 50, (6, 4))
    same = _closure(m, x, y, None, 1234, [], False, {})
    assert torch.equal(same(None), same(None))
    before = torch.get_rng_state()
    same(None)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is not advanced
    fresh = _closure(m, x, y, None, None, [], False, {})
    assert not torch.equal(fresh(None), fresh(None))


def test_segment_length_rules():
    g = torch.Generator().manual_seed(0)
    s = [search_seq_len(g, 35) for _ in range(2000)]
    assert set(s) == {35, 17} and 0.03 < s.count(17) / len(s) < 0.07
    t = [train_seq_len(g, 35) for _ in range(2000)]
    assert min(t) >= 5 and max(t) <= 55 and 30 < sum(t) / len(t) < 36
    assert scaled_lr(20.0, 17, 35) == pytest.approx(20.0 * 17 / 35)


def test_perplexity_definition():
    """Σ mean-NLL·ℓ over segments, divided by the rows of the batchified split (§7.6)."""
    from dartsnas.evalnet.rnn import RNNEvalModel
    from dartsnas.space.genotype import load_genotype

    torch.manual_seed(0)
    m = RNNEvalModel(30, load_genotype("DARTS", kind="rnn"), n=8)
    src = torch.randint(0, 30, (23, 2))
    loss, ppl = evaluate_lm(m, src, 10)
    m.eval()
    with torch.no_grad():
        h, total = None, 0.0
        for i, ln in ((0, 10), (10, 10), (20, 2)):
            out = m(src[i : i + ln], h, src[i + 1 : i + 1 + ln])
            total += out.nll.item() * ln
            h = out.hidden
    assert loss == pytest.approx(total / 23) and ppl == pytest.approx(math.exp(total / 23))


# ------------------------------------------------------------------------------------------------ train


def test_nt_asgd_switch_rule_on_a_scripted_sequence():
    """§7.6: switch when > 5 earlier losses and the current exceeds min(all but the 5 most recent)."""
    losses = [5.0, 4.0, 3.5, 3.4, 3.3, 3.2, 3.1, 3.05, 3.6, 3.3]
    fired = []
    for t, cur in enumerate(losses):
        if should_switch_to_asgd(losses[:t], cur, 5):
            fired.append(t)
            break
    # t=6: min(earlier[:-5]) = 5.0 → 3.1 < 5.0; t=7: min(5, 4) = 4 → no; t=8: min(5,4,3.5) = 3.5 → 3.6 > 3.5 fires
    assert fired == [8]
    assert not should_switch_to_asgd([1.0] * 5, 9.0, 5)  # exactly 5 earlier losses: never
    assert should_switch_to_asgd([1.0] * 6, 1.5, 5)  # 6 earlier: compares with the first
    assert not should_switch_to_asgd([1.0] * 6, 1.0, 5)  # equal is not worse
    assert should_switch_to_asgd([2.0, 1.0, 3.0], 1.5, 1)  # min(2, 1) = 1 < 1.5


def test_averaged_sgd_keeps_the_mean_of_the_weights_since_the_switch():
    from dartsnas.loops.rnn_train import _State
    from dartsnas.space.genotype import load_genotype

    cfg = RNNTrainConfig.build("tiny", overrides=["device=cpu"])
    st = _State(cfg, 20, load_genotype("DARTS", kind="rnn"), torch.device("cpu"))
    snaps = []
    for _k in range(3):
        with torch.no_grad():
            for p in st.params:
                p.add_(torch.randn_like(p))
        st.update_average()
        snaps.append([p.detach().clone() for p in st.params])
    live = [p.detach().clone() for p in st.params]
    with st.averaged():
        for i, p in enumerate(st.params):
            assert torch.allclose(p, sum(s[i] for s in snaps) / 3, atol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(st.params, live))  # the live weights come back


def test_train_lr_scaled_by_segment_length():
    """One training step is SGD at lr·ℓ/bptt (no dropout, no clipping, no decay: exactly w − lr·ℓ/bptt·g)."""
    from dartsnas.data.text import batchify, get_segment, load_corpus
    from dartsnas.loops.rnn_train import _State, _train_step
    from dartsnas.space.genotype import load_genotype

    cfg = RNNTrainConfig.build(
        "tiny",
        overrides=[
            "dropout=0",
            "dropouth=0",
            "dropoutx=0",
            "dropouti=0",
            "dropoute=0",
            "weight_decay=0",
            "grad_clip=1e9",
            "tar_beta=0",
            "bptt=35",
            "device=cpu",
        ],
    )
    corpus = load_corpus("builtin")
    st = _State(cfg, corpus.ntoken, load_genotype("DARTS", kind="rnn"), torch.device("cpu"))
    x, y = get_segment(batchify(corpus.train, 4), 0, 20)
    before = [p.detach().clone() for p in st.params]
    st.model.zero_grad()
    st.model(x, None, y).nll.backward()
    grads = [p.grad.clone() for p in st.params]
    _train_step(st, x, y, 20)
    for p, w, g in zip(st.params, before, grads):
        assert torch.allclose(p.detach(), w - 20.0 * 20 / 35 * g, atol=1e-6)
    assert st.opt.param_groups[0]["lr"] == 20.0


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("rnn-train") / "run"
    res = run_cli(*TRAIN, "--run-dir", str(run))
    assert res.returncode == 0, res.stderr
    return run


def test_train_writes_results(train_run):
    run = train_run
    for name in (
        "config.json",
        "metrics.jsonl",
        "genotype.json",
        "recurrent.svg",
        "perplexity.svg",
        "checkpoint.pt",
        "best.pt",
        "results.json",
    ):
        assert (run / name).is_file(), name
    r = json.loads((run / "results.json").read_text())
    assert r["genotype"] == "DARTS" and r["dataset"] == "builtin" and r["test_batch_size"] == 1
    assert math.isfinite(r["test_ppl"]) and math.isfinite(r["valid_ppl"]) and r["params"] > 0
    assert r["valid_ppl"] < 425 and r["wall_seconds"] > 0 and r["device"] == "cpu"
    recs = [x for x in _metrics(run) if "epoch" in x]
    assert len(recs) == 4 and min(x["valid_loss"] for x in recs) == pytest.approx(r["valid_loss"])
    res = run_cli("eval", str(run))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["test_ppl"] == pytest.approx(r["test_ppl"]) and out["valid_ppl"] == pytest.approx(r["valid_ppl"])


def test_paper_defaults():
    s = RNNSearchConfig()
    assert (s.dataset, s.nhid, s.batch_size, s.bptt, s.lr, s.weight_decay, s.grad_clip, s.epochs, s.seed) == (
        "ptb",
        300,
        256,
        35,
        20.0,
        5e-7,
        0.25,
        50,
        3,
    )
    assert (s.dropout, s.dropouth, s.dropoutx, s.dropouti, s.dropoute) == (0.75, 0.25, 0.75, 0.2, 0.0)
    assert (s.arch_lr, s.arch_beta1, s.arch_beta2, s.arch_weight_decay, s.eval_batch_size) == (
        3e-3,
        0.9,
        0.999,
        1e-3,
        10,
    )
    t = RNNTrainConfig()
    assert (t.nhid, t.batch_size, t.lr, t.weight_decay, t.grad_clip, t.seed, t.epochs, t.nonmono) == (
        850,
        64,
        20.0,
        8e-7,
        0.25,
        1267,
        8000,
        5,
    )
    assert (t.dropout, t.dropouth, t.dropoutx, t.dropouti, t.dropoute, t.test_batch_size) == (
        0.75,
        0.25,
        0.75,
        0.2,
        0.1,
        1,
    )
    w = RNNTrainConfig.build("paper-wt2")
    assert (w.dataset, w.nhid, w.dropouth, w.weight_decay) == ("wikitext2", 700, 0.15, 5e-7)


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["search", "--space", "rnn", "--dataset", "enwik8"], 2, "unknown dataset"),
        (["search", "--space", "rnn", "--preset", "tiny", "--set", "nhdi=4"], 2, "did you mean 'nhid'"),
        (["train", "--space", "rnn", "--preset", "tiny", "--genotype", "NOPE"], 3, "not a published genotype name"),
        (["train", "--space", "rnn", "--dataset", "ptb", "--data-dir", "/nonexistent/ptb"], 4, "/nonexistent/ptb"),
        (["train", "--space", "rnn", "--preset", "tiny", "--layers", "3"], 2, "--layers is for image training"),
    ],
)
def test_bad_input_is_one_line(args, code, needle, cli_main):
    res = cli_main(*args)
    assert res.returncode == code, (res.returncode, res.stderr)
    assert needle in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(
    shared_data_root() is None or not (shared_data_root() / "penn").is_dir(),
    reason="PTB not found (set DARTSNAS_DATA or put ../shared/data)",
)
def test_short_search_on_real_ptb(tmp_path):
    res = run_cli(
        "search",
        "--space",
        "rnn",
        "--dataset",
        "ptb",
        "--data-dir",
        str(shared_data_root()),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--set",
        "nhid=16",
        "--set",
        "bptt=10",
        "--set",
        "max_steps_per_epoch=3",
        "--set",
        "eval_tokens=2000",
        "--no-progress",
        "--run-dir",
        str(tmp_path / "r"),
    )
    assert res.returncode == 0, res.stderr
    assert "10,000 words" in res.stdout
    rec = _metrics(tmp_path / "r")[0]
    assert abs(rec["train_loss"] - math.log(10000)) < 0.5 and math.isfinite(rec["valid_ppl"])
