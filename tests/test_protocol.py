"""The protocol commands (spec §9): select, random, evaluate-final; sampler; resume after SIGKILL; failures.

End-to-end runs use the tiny presets on the built-in data (each run is a few seconds on a CPU).
"""

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SRC
from dartsnas.cli import main
from dartsnas.errors import ConfigError
from dartsnas.protocol import ProtocolConfig
from dartsnas.space.genotype import genotype_from_dict, genotype_to_dict
from dartsnas.space.sample import (
    CNN_SEARCH_OPS,
    RNN_SEARCH_OPS,
    sample_cnn_genotype,
    sample_genotypes,
    sample_rnn_genotype,
)


def _env(**extra):
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        **extra,
    }
    env.pop("DARTSNAS_FAULT", None)
    return env


def _status(exp: Path, name: str) -> dict:
    try:
        return json.loads((exp / "status" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------- sampler


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), nodes=st.integers(1, 6))
def test_random_cnn_cells_are_valid(seed, nodes):
    g = sample_cnn_genotype(random.Random(seed), nodes)
    assert genotype_from_dict(genotype_to_dict(g), nodes) == g  # parses with the strict parser
    for cell in (g.normal, g.reduce):
        for i in range(nodes):
            (op_a, a), (op_b, b) = cell[2 * i], cell[2 * i + 1]
            assert a != b and 0 <= a < i + 2 and 0 <= b < i + 2  # two distinct earlier nodes
            assert op_a in CNN_SEARCH_OPS and op_b in CNN_SEARCH_OPS and "none" not in (op_a, op_b)
    assert g.normal_concat == g.reduce_concat == tuple(range(2, nodes + 2))


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), nodes=st.integers(1, 10))
def test_random_rnn_cells_are_valid(seed, nodes):
    g = sample_rnn_genotype(random.Random(seed), nodes)
    assert genotype_from_dict(genotype_to_dict(g), nodes) == g
    assert all(op in RNN_SEARCH_OPS for op, _ in g.recurrent)
    assert g.concat == tuple(range(1, nodes + 1))


def test_random_sampler_distribution_is_uniform():
    """Spec §9 [SPEC]: predecessors uniform without replacement, ops uniform over the non-none set."""
    n = 3000
    cells = sample_genotypes("cnn", n, seed=123)
    ops = collections.Counter(op for g in cells for op, _ in g.normal + g.reduce)
    expect = n * 2 * 8 / 7
    assert set(ops) == set(CNN_SEARCH_OPS) and len(CNN_SEARCH_OPS) == 7
    assert all(abs(c - expect) < 0.06 * expect for c in ops.values()), ops
    # node 3 (index 1 in 0-based intermediate nodes... the third one: inputs 0..3): 6 unordered pairs
    pairs = collections.Counter(frozenset(s for _, s in g.normal[4:6]) for g in cells)
    assert len(pairs) == 6
    assert all(abs(c - n / 6) < 0.12 * n / 6 for c in pairs.values()), pairs
    # normal and reduce are drawn independently: they rarely coincide
    assert sum(g.normal == g.reduce for g in cells) < 3
    rnn = sample_genotypes("rnn", n, seed=7)
    acts = collections.Counter(op for g in rnn for op, _ in g.recurrent)
    assert set(acts) == set(RNN_SEARCH_OPS) and len(RNN_SEARCH_OPS) == 4
    assert all(abs(c - n * 8 / 4) < 0.05 * n * 8 / 4 for c in acts.values()), acts
    preds = collections.Counter(g.recurrent[3][1] for g in rnn)  # node 4: predecessor uniform over 0..3
    assert sorted(preds) == [0, 1, 2, 3] and all(abs(c - n / 4) < 0.12 * n / 4 for c in preds.values())


def test_sampler_is_seeded_and_prefix_stable():
    assert sample_genotypes("cnn", 5, 3) == sample_genotypes("cnn", 5, 3)
    assert sample_genotypes("cnn", 8, 3)[:5] == sample_genotypes("cnn", 5, 3)
    assert sample_genotypes("cnn", 5, 3) != sample_genotypes("cnn", 5, 4)


# ------------------------------------------------------------------------------------------- config


def test_protocol_config_defaults_and_errors():
    cfg = ProtocolConfig.build("paper")
    assert cfg.search_seeds() == [1, 2, 3, 4] and cfg.order == 2
    assert cfg.resolved_select_epochs() == 100 and cfg.resolved_samples() == 24
    rnn = ProtocolConfig.build("paper", space="rnn")
    assert rnn.resolved_select_epochs() == 300 and rnn.resolved_samples() == 8
    assert rnn.resolved_train_preset() == "paper-ptb"
    assert ProtocolConfig.build("quick", ["seeds=5,9"]).search_seeds() == [5, 9]
    with pytest.raises(ConfigError, match="seeds"):
        ProtocolConfig.build("quick", ["seeds=1,x"])
    with pytest.raises(ConfigError, match="search_preset"):
        ProtocolConfig.build("quick", ["search_preset=nope"])
    with pytest.raises(ConfigError, match="devices"):
        ProtocolConfig.build("quick", ["devices=gpu0"])


def test_eval_split_search_valid_reads_the_two_training_halves():
    """The selection training's data: D_w to train on, D_alpha to score on; the test set is never used."""
    import torch

    from dartsnas.data.images import load_images
    from dartsnas.loops.train import TrainConfig, _load_data

    full = load_images("builtin")
    half = full.train_x.shape[0] // 2
    cfg = TrainConfig.build("tiny", ["eval_split=search_valid"])
    d = _load_data(cfg, torch.device("cpu"), None)
    assert torch.equal(d.data.train_x, full.train_x[:half]) and torch.equal(d.data.test_x, full.train_x[half:])
    assert torch.equal(d.data.test_y, full.train_y[half:])
    with pytest.raises(ConfigError, match="eval_split"):
        TrainConfig.build("imagenet", ["eval_split=search_valid"])


def test_child_runs_get_the_thread_rule(tmp_path, monkeypatch):
    """CPU child runs: 1 thread on the built-in data, else each run's share of the cores up to 4 (not
    cpu_count // jobs); announced once; the user's OMP_NUM_THREADS or --threads wins."""
    from dartsnas import threads
    from dartsnas.protocol import runner
    from dartsnas.protocol.experiment import Experiment, Task
    from dartsnas.protocol.runner import Runner

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cpu_cores", lambda: 16)
    monkeypatch.setattr(runner, "_ANNOUNCED", set())
    task = Task("search-seed1", "search", [], [])

    def child_threads(small, *over):
        logs = []
        r = Runner(
            Experiment(tmp_path), ProtocolConfig.build("tiny", ["devices=cpu", *over]), False, False, logs.append, small
        )
        return r._env(task, "cpu").get("OMP_NUM_THREADS"), logs

    n, logs = child_threads(True, "jobs=2")
    assert n == "1" and len(logs) == 1 and logs[0].startswith("threads: 1 per run")
    assert child_threads(True, "jobs=2") == ("1", [])  # said once per process (select, then its final stage)
    assert child_threads(False, "jobs=2")[0] == "4"
    assert child_threads(False, "jobs=4")[0] == "4"
    assert child_threads(False, "jobs=8")[0] == "1"  # 2 cores a run
    assert child_threads(False, "jobs=2", "threads=3") == ("3", [])
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert child_threads(True, "jobs=2") == ("6", [])


# ------------------------------------------------------------------------------------------- end to end


def test_select_end_to_end(tmp_path, capsys, cli_main):
    exp = tmp_path / "sel"
    r = cli_main("select", "--preset", "tiny", "--searches", "2", "--search-epochs", "1", "--experiment", str(exp))
    assert r.returncode == 0, r.stderr + r.stdout
    for name in ("search-seed1", "search-seed2", "select-seed1", "select-seed2"):
        assert _status(exp, name)["status"] == "done"
        assert (exp / "runs" / name / "config.json").exists()
    assert json.loads((exp / "runs/select-seed1/config.json").read_text())["eval_split"] == "search_valid"
    s = json.loads((exp / "summary.json").read_text())
    assert s["chosen"]["run"] in ("select-seed1", "select-seed2") and s["chosen"]["metric"] == "valid_acc"
    genotype_from_dict(json.loads((exp / "genotypes/chosen.json").read_text()))
    assert s["cost"]["search"]["cpu_hours"] > 0 and s["cost"]["selection"]["cpu_hours"] > 0
    assert s["search_cost_cpu_days"] == pytest.approx(s["cost"]["search"]["cpu_hours"] / 24)
    assert json.loads((exp / "experiment.json").read_text())["kind"] == "select"
    # a second start in the same directory is refused in one line (in-process: no subprocess needed)
    assert main(["select", "--preset", "tiny", "--experiment", str(exp)]) == 7
    err = capsys.readouterr().err
    assert "--resume" in err and len(err.strip().splitlines()) == 1


def test_random_baseline_with_a_failed_run(tmp_path, cli_main, monkeypatch):
    """Three random cells, two at a time; one run fails: recorded with its error, excluded from the pick."""
    exp = tmp_path / "rnd"
    monkeypatch.setenv("DARTSNAS_PROTOCOL_FAULT", "random-1=nan_train_at_step:1")
    r = cli_main(
        "random",
        "--preset",
        "tiny",
        "--samples",
        "3",
        "--jobs",
        "2",
        "--experiment",
        str(exp),
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "random-1" in r.stdout
    s = json.loads((exp / "summary.json").read_text())
    by = {x["name"]: x for x in s["runs"]}
    assert by["random-1"]["status"] == "failed" and "not finite" in by["random-1"]["error"]
    assert by["random-0"]["status"] == by["random-2"]["status"] == "done"
    assert s["chosen"]["run"] in ("random-0", "random-2") and s["failed"] == ["random-1"]
    assert s["method"] == "random" and s["search_cost_cpu_days"] > 0  # the samples' training is the cost
    for k in range(3):
        genotype_from_dict(json.loads((exp / "genotypes" / f"random-{k}.json").read_text()))
    # --resume keeps the failed run failed (no rerun) unless --retry-failed
    monkeypatch.delenv("DARTSNAS_PROTOCOL_FAULT")
    r2 = cli_main("random", "--resume", "--experiment", str(exp))
    assert r2.returncode == 0 and _status(exp, "random-1")["attempts"] == 1
    assert _status(exp, "random-0")["attempts"] == 1


def test_kill_and_resume_experiment(tmp_path, cli_main):
    """SIGKILL the experiment after its first run finished (and the second has a checkpoint); --resume
    does not redo the finished run, continues the interrupted one from its checkpoint, and completes."""
    exp = tmp_path / "kill"
    args = [
        sys.executable,
        "-m",
        "dartsnas",
        "select",
        "--preset",
        "tiny",
        "--searches",
        "2",
        "--search-epochs",
        "2",
        "--select-epochs",
        "1",
        "--experiment",
        str(exp),
    ]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (
                _status(exp, "search-seed1").get("status") == "done"
                and (exp / "runs/search-seed2/checkpoint.pt").exists()
            ):
                break
            assert proc.poll() is None, "the experiment ended before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("the first run did not finish in time")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    child = _status(exp, "search-seed2").get("pid")
    for _ in range(200):  # the run dies with the experiment (PR_SET_PDEATHSIG)
        try:
            os.kill(child, 0)
        except (ProcessLookupError, TypeError):
            break
        time.sleep(0.02)
    else:
        pytest.fail("the run outlived the experiment process")
    assert _status(exp, "search-seed2")["status"] == "running"  # what a hard kill leaves behind
    done_ck = exp / "runs/search-seed1/checkpoint.pt"
    mtime = done_ck.stat().st_mtime_ns
    r = cli_main("select", "--resume", "--experiment", str(exp))  # the kill is the point; the resume runs here
    assert r.returncode == 0, r.stderr + r.stdout
    assert done_ck.stat().st_mtime_ns == mtime and _status(exp, "search-seed1")["attempts"] == 1
    s2 = _status(exp, "search-seed2")
    assert s2["status"] == "done" and s2["attempts"] == 2 and s2["continued"] is True
    assert "resumed" in (exp / "logs/search-seed2.log").read_text()
    metrics = [json.loads(x) for x in (exp / "runs/search-seed2/metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1]
    s = json.loads((exp / "summary.json").read_text())
    assert s["complete"] and s["chosen"] and not s["failed"]


def test_recurrent_protocol_select_random_final_and_report(tmp_path, cli_main):
    """The same commands for recurrent cells: search, perplexity-based pick, random RNN cells, final runs."""
    sel = tmp_path / "rsel"
    r = cli_main(
        "select",
        "--space",
        "rnn",
        "--preset",
        "tiny",
        "--searches",
        "1",
        "--search-epochs",
        "1",
        "--experiment",
        str(sel),
    )
    assert r.returncode == 0, r.stderr + r.stdout
    s = json.loads((sel / "summary.json").read_text())
    assert s["chosen"]["run"] == "select-seed1"
    # The selection training never read the test set and is scored on its final validation perplexity.
    res = json.loads((sel / "runs/select-seed1/results.json").read_text())
    assert res["eval_test"] is False and res["test_ppl"] is None and res["test_loss"] is None
    assert s["chosen"]["metric"] == "final_valid_ppl" and s["chosen"]["score"] == res["final_valid_ppl"]
    chosen = genotype_from_dict(json.loads((sel / "genotypes/chosen.json").read_text()))
    assert chosen.kind == "rnn"
    rnd = tmp_path / "rrnd"
    r = cli_main("random", "--space", "rnn", "--preset", "tiny", "--samples", "2", "--experiment", str(rnd))
    assert r.returncode == 0, r.stderr + r.stdout
    for k in range(2):
        assert genotype_from_dict(json.loads((rnd / "genotypes" / f"random-{k}.json").read_text())).kind == "rnn"
        assert json.loads((rnd / f"runs/random-{k}/results.json").read_text())["test_ppl"] is None
    s = json.loads((rnd / "summary.json").read_text())
    finals = {k: json.loads((rnd / f"runs/random-{k}/results.json").read_text())["final_valid_ppl"] for k in range(2)}
    assert s["chosen"]["run"] == f"random-{min(finals, key=finals.get)}"
    assert s["chosen"]["score"] == min(finals.values())
    fin = cli_main("evaluate-final", "--experiment", str(sel), "--runs", "2")
    assert fin.returncode == 0, fin.stderr + fin.stdout
    s = json.loads((sel / "summary.json").read_text())
    assert len([x for x in s["runs"] if x["name"].startswith("final-") and x["status"] == "done"]) == 2
    rep = cli_main("report", str(sel), str(rnd), "--out", str(tmp_path / "rep"))
    assert rep.returncode == 0, rep.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "perplexity" in md.lower() and md.count("\n|") >= 3


def test_recurrent_selection_uses_the_final_validation_perplexity(tmp_path):
    """The pick reads ``final_valid_ppl`` (the last epoch), not ``valid_ppl`` (the best epoch), as CNN
    selection reads the last epoch's accuracy on D_alpha; a run without a finite final score is not picked."""
    from dartsnas.protocol.summary import summarize

    exp = tmp_path / "exp"
    (exp / "status").mkdir(parents=True)
    (exp / "experiment.json").write_text(json.dumps({"kind": "random", "space": "rnn", "config": {}}))
    scores = {"random-0": (100.0, 300.0), "random-1": (200.0, 250.0), "random-2": (50.0, None)}
    for k, (name, (best, final)) in enumerate(scores.items()):
        (exp / "status" / f"{name}.json").write_text(
            json.dumps({"name": name, "stage": "random", "index": k, "status": "done"})
        )
        (exp / "runs" / name).mkdir(parents=True)
        (exp / "runs" / name / "results.json").write_text(
            json.dumps({"valid_ppl": best, "final_valid_ppl": final, "test_ppl": None, "eval_test": False})
        )
    s = summarize(exp)
    assert s["chosen"]["run"] == "random-1" and s["chosen"]["metric"] == "final_valid_ppl"
    assert s["chosen"]["score"] == 250.0
    assert next(r for r in s["runs"] if r["name"] == "random-2")["status"] == "failed"


# ------------------------------------------------------------------------------------------- submitit launcher


def _has_submitit() -> bool:
    try:
        import submitit  # noqa: F401
    except ImportError:
        return False
    return True


needs_submitit = pytest.mark.skipif(
    not _has_submitit(), reason="submitit is not installed (pip install 'dartsnas[cluster]')"
)


@needs_submitit
def test_submitit_launcher_records_failed_runs_like_local(tmp_path, cli_main, monkeypatch):
    """--launcher submitit-local: the runs go through submitit's LocalExecutor (the SLURM job path on this
    machine); a failed run is recorded with its error and excluded, --resume keeps it failed."""
    exp = tmp_path / "sub"
    monkeypatch.setenv("DARTSNAS_PROTOCOL_FAULT", "random-1=nan_train_at_step:1")
    r = cli_main(
        "random",
        "--preset",
        "tiny",
        "--samples",
        "2",
        "--jobs",
        "2",
        "--launcher",
        "submitit-local",
        "--experiment",
        str(exp),
    )
    assert r.returncode == 0, r.stderr + r.stdout
    s0, s1 = _status(exp, "random-0"), _status(exp, "random-1")
    assert s0["status"] == "done" and s0["launcher"] == "submitit-local" and s0["job_id"]
    assert s1["status"] == "failed" and s1["returncode"] == 6 and "not finite" in s1["error"]
    assert list((exp / "jobs").glob(f"{s0['job_id']}_*result.pkl"))  # submitit's own record of the job
    s = json.loads((exp / "summary.json").read_text())
    assert s["chosen"]["run"] == "random-0" and s["failed"] == ["random-1"]
    monkeypatch.delenv("DARTSNAS_PROTOCOL_FAULT")
    r2 = cli_main("random", "--resume", "--experiment", str(exp))
    assert r2.returncode == 0 and _status(exp, "random-1")["attempts"] == 1
    assert _status(exp, "random-0")["attempts"] == 1


@needs_submitit
def test_submitit_launcher_resumes_after_the_experiment_is_killed(tmp_path, cli_main):
    """SIGKILL the experiment while its submitit job runs: the job outlives it (as a SLURM job would); --resume
    stops that run (it saves its checkpoint), continues it from the checkpoint in a new job, and completes."""
    exp = tmp_path / "kill"
    args = [
        sys.executable,
        "-m",
        "dartsnas",
        "select",
        "--preset",
        "tiny",
        "--searches",
        "1",
        "--search-epochs",
        "4",
        "--launcher",
        "submitit-local",
        "--experiment",
        str(exp),
    ]
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (exp / "runs/search-seed1/checkpoint.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the experiment ended"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    r = cli_main("select", "--resume", "--experiment", str(exp))
    assert r.returncode == 0, r.stderr + r.stdout
    st = _status(exp, "search-seed1")
    assert st["status"] == "done" and st["attempts"] == 2 and st["continued"] is True
    epochs = [json.loads(x)["epoch"] for x in (exp / "runs/search-seed1/metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3]  # every epoch once: one writer at a time
    assert _status(exp, "select-seed1")["status"] == "done"
