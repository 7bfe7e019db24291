"""The loop driver's parts (loops/engine.py, state.py, progress.py, logs.py), in process: generic state
checkpoints, named sums, progress lines by steps and by time, the CPU duration estimate, logging, the
TensorBoard hook, ImageNet's best.pt rule and the recurrent training's eval_test switch."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import pytest
import torch

from dartsnas.loops import progress as progress_mod
from dartsnas.loops.state import LoopState, Sums, load_state_dict, saved_as, state_dict, transient


@dataclasses.dataclass(init=False, eq=False)
class _Toy(LoopState):
    net: torch.nn.Linear
    opt: torch.optim.SGD = saved_as("optimizer")
    gen: torch.Generator
    hidden: torch.Tensor | None
    history: list[float]
    scratch: list = transient()

    def __init__(self, seed: int):
        LoopState.__init__(self)
        torch.manual_seed(seed)
        self.net = torch.nn.Linear(3, 2)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)
        self.gen = torch.Generator().manual_seed(seed)
        self.hidden = None
        self.history = []
        self.scratch = ["not saved"]


def test_state_round_trip_is_generic_over_fields():
    a = _Toy(0)
    a.net(torch.randn(4, 3)).sum().backward()
    a.opt.step()
    a.epoch, a.global_step, a.hidden, a.history = 2, 7, torch.randn(2, 2), [1.5, 2.5]
    torch.rand(3, generator=a.gen)
    ck = state_dict(a)
    assert {"epoch", "step_in_epoch", "global_step", "wall", "net", "optimizer", "hidden", "history", "rng"} == set(ck)
    assert "gen:gen" in ck["rng"] and "scratch" not in ck
    b = _Toy(1)
    b.scratch = ["kept"]
    load_state_dict(b, ck, torch.device("cpu"))
    assert (b.epoch, b.global_step, b.history, b.scratch) == (2, 7, [1.5, 2.5], ["kept"])
    assert torch.equal(b.hidden, a.hidden) and torch.equal(b.net.weight, a.net.weight)
    assert torch.equal(b.opt.state[b.net.weight]["momentum_buffer"], a.opt.state[a.net.weight]["momentum_buffer"])
    assert torch.equal(torch.rand(5, generator=b.gen), torch.rand(5, generator=a.gen))
    del ck["optimizer"]
    with pytest.raises(KeyError):
        load_state_dict(_Toy(2), ck, torch.device("cpu"))


def test_sums_are_named_float64_and_checked():
    s = Sums(("loss", "count"), torch.device("cpu"))
    vals = [(0.1, 3.0), (0.2, 5.0), (1e-9, 1.0)]
    for loss, n in vals:
        s.add({"count": torch.tensor(n), "loss": torch.tensor(loss, dtype=torch.float64)})
    got = s.values()
    assert list(got) == ["loss", "count"] and got["count"] == 9.0
    assert got["loss"] == sum(v for v, _ in vals)  # float64 throughout
    with pytest.raises(KeyError):
        s.add({"loss": torch.tensor(1.0)})
    t = Sums(("loss", "count"), torch.device("cpu"))
    t.load_state_dict(s.state_dict())
    assert t.values() == got
    with pytest.raises(ValueError):
        Sums(("nll", "rows"), torch.device("cpu")).load_state_dict(s.state_dict())
    s.zero()
    assert s.values() == {"loss": 0.0, "count": 0.0}


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_progress_without_terminal_logs_by_steps_and_by_time(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", clock)
    out = io.StringIO()
    bar = progress_mod.Progress(1000, "epoch 1/50", stream=out, interval=50)
    written = []
    for n in range(1, 121):
        clock.t += 7.0  # a slow CPU step
        if bar.due(n):
            bar.update(n, {"loss": 2.0})
            written.append(n)
    # every 30 s (each 5th step of 7 s), and the multiples of 50 in between
    assert written[:3] == [5, 10, 15] and 50 in written and 100 in written
    assert all(b - a <= 5 for a, b in zip(written, written[1:]))
    lines = out.getvalue().splitlines()
    assert len(lines) == len(written) and lines[0].startswith("epoch 1/50 [") and "5/1000" in lines[0]
    fast = progress_mod.Progress(100, "e", stream=io.StringIO(), interval=50)
    assert [n for n in range(1, 101) if fast.due(n)] == [50, 100]  # no clock movement: steps only
    assert not progress_mod.Progress(100, "e", enabled=False).due(50)


def test_progress_writes_to_the_stderr_of_the_moment(monkeypatch):
    """No stream bound when the module was imported: an in-process caller that swaps ``sys.stderr`` (pytest's
    capsys, a notebook) gets the lines, and a later swap does not write to the old, maybe closed, stream."""
    import sys

    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    progress_mod.Progress(2, "epoch 1/1", interval=1).update(1)
    monkeypatch.setattr(sys, "stderr", second)
    progress_mod.Progress(2, "epoch 1/1", interval=1).update(2)
    assert "1/2" in first.getvalue() and "2/2" not in first.getvalue() and "2/2" in second.getvalue()


def test_cpu_estimate_from_the_first_steps(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_mod.time, "perf_counter", clock)
    est = progress_mod.RunEstimate(True)
    messages = []
    for remaining in range(1000, 990, -1):
        clock.t += 100.0 if remaining == 1000 else 2.0  # the first step is slow (one-off costs)
        messages.append(est.tick(remaining))
    said = [m for m in messages if m]
    assert len(said) == 1 and messages[3] == said[0]  # once, after the first step and three timed ones
    assert "2.00 s/step" in said[0] and "about 33 min" in said[0] and "997" in said[0]
    quick = progress_mod.RunEstimate(True)
    for remaining in (10, 9, 8, 7, 6):
        clock.t += 2.0
        assert quick.tick(remaining) is None  # under a minute: no message
    assert progress_mod.RunEstimate(False).tick(10**6) is None


def test_library_logs_through_the_dartsnas_logger_and_tensorboard(tmp_path, caplog):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dartsnas.loops.rnn_search import RNNSearchConfig, run_rnn_search

    cfg = RNNSearchConfig.build("tiny", overrides=["epochs=2", "tensorboard=true", "device=cpu"], progress=False)
    with caplog.at_level(logging.INFO, logger="dartsnas"):
        result = run_rnn_search(cfg, run_dir=tmp_path / "r")
    said = [r.getMessage() for r in caplog.records if r.name == "dartsnas"]
    assert any(m.startswith("rnn search: builtin") for m in said) and any(m.startswith("epoch 2/2:") for m in said)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("valid_ppl")
    assert [e.step for e in events] == [1, 2]
    assert [e.value for e in events] == pytest.approx([r["valid_ppl"] for r in result.history], rel=1e-6)
    assert "genotype" not in acc.Tags()["scalars"]
    # a caller's log callable still receives the messages instead
    lines: list[str] = []
    caplog.clear()
    run_rnn_search(cfg.replace(tensorboard=False), run_dir=tmp_path / "r", resume=True, log=lines.append)
    assert any("already complete" in m for m in lines) and not [r for r in caplog.records if r.name == "dartsnas"]


def test_imagenet_rule_keeps_best_top1_weights(tmp_path, monkeypatch):
    """ImageNet training keeps best.pt (the best top-1 epoch) as the reference does; the rule is exercised on
    the built-in data by switching it on."""
    from dartsnas.checkpoint import load_checkpoint
    from dartsnas.loops import train as train_mod

    assert train_mod.keeps_best(train_mod.TrainConfig.build("imagenet"))
    assert not train_mod.keeps_best(train_mod.TrainConfig.build("tiny"))
    monkeypatch.setattr(train_mod, "keeps_best", lambda cfg: True)
    cfg = train_mod.TrainConfig.build("tiny", overrides=["device=cpu", "lr=0.2"], progress=False)
    result = train_mod.run_train(cfg, run_dir=tmp_path / "r", log=lambda *a: None)
    top1 = [r["test_top1"] for r in result.history]
    best = max(range(len(top1)), key=lambda i: (top1[i], -i))  # the first epoch reaching the maximum
    ck = load_checkpoint(tmp_path / "r" / "best.pt", expect_kind="cnn-train-best")
    assert ck["epoch"] == best and ck["test_top1"] == top1[best]
    assert result.results["best_epoch"] == best + 1 and result.results["best_test_top1"] == top1[best]
    assert [r.get("best", False) for r in result.history][best] is True
    if best < len(top1) - 1:  # best.pt then holds other weights than the final checkpoint
        final = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["model"]
        assert any(not torch.equal(final[k], ck["model"][k]) for k in final if final[k].is_floating_point())


def test_rnn_training_without_the_test_set(tmp_path):
    """eval_test=false (selection and random-baseline trainings): the test split is never read."""
    from dartsnas.data.text import load_corpus
    from dartsnas.loops.rnn_train import RNNTrainConfig, run_rnn_train

    corpus = load_corpus("builtin")

    class NoTest(type(corpus)):
        @property
        def test(self):
            raise AssertionError("the test split was read")

        @test.setter
        def test(self, value):
            pass

    blind = NoTest(corpus.train, corpus.valid, corpus.test, corpus.vocab, corpus.name)
    cfg = RNNTrainConfig.build("tiny", overrides=["epochs=2", "eval_test=false", "device=cpu"], progress=False)
    lines: list[str] = []
    res = run_rnn_train(cfg, run_dir=tmp_path / "r", log=lines.append, corpus=blind).results
    assert res["test_ppl"] is None and res["test_loss"] is None and res["eval_test"] is False
    assert "test set not evaluated" in lines[-1]
    last = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines() if "epoch" in x][-1]
    assert res["final_valid_loss"] == last["valid_loss"] and res["best_epoch"] >= 1
    with pytest.raises(AssertionError, match="test split was read"):
        run_rnn_train(cfg.replace(eval_test=True), run_dir=tmp_path / "t", log=lines.append, corpus=blind)
