"""The reliability guarantees of RELIABILITY.md, once, for every run kind (all go through loops/engine.py):

- SIGKILL mid-epoch, then ``--resume``: the finished run equals an uninterrupted one bit for bit (every
  tensor and value of the checkpoint, metrics.jsonl, results.json, genotype.json, best.pt);
- SIGTERM mid-epoch: a checkpoint at that step, exit 128 + 15, and ``--resume`` continues it exactly;
- a NaN injected in a step: exit 6 with one line, before any update, the checkpoint byte-identical (the
  recurrent training first reloads its checkpoint ``nan_retries`` times: test_nan_recovery.py);
- a corrupted, truncated or foreign checkpoint, or an incompatible config, is refused with one line.

Faults are injected through ``DARTSNAS_FAULT`` (loops.common): ``kill_at_step:N``/``term_at_step:N`` signal
the process after global step N, ``nan_<train|val>_at_step:N`` poisons step N (1-based). Signals run the
CLI in a subprocess; the other cases (the references, the NaN and refusal cases, the resume to the end) call it
in process (faster), with one intra-op thread as the subprocesses have.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from dartsnas.checkpoint import load_checkpoint, save_checkpoint
from dartsnas.cli import main

TIMING = {"epoch_seconds", "seconds", "wall_seconds", "gpu_hours", "cpu_hours", "peak_memory_bytes"}


@dataclass
class Kind:
    name: str
    start: list[str]  # the command of a fresh run (without --run-dir)
    resume: list[str]  # the command that continues one (without the run folder)
    kill: int  # SIGKILL after this global step: mid-epoch, after the first epoch's checkpoint
    term: int  # SIGTERM after this step of the resumed run: mid-epoch again
    incompatible: str  # a --set that changes the model, with the refusal's text
    refusal: str
    nan_phases: tuple[str, ...] = ("train",)
    files: tuple[str, ...] = ("genotype.json",)
    term_checks: dict = field(default_factory=dict)  # checkpoint entries expected after the SIGTERM


KINDS = [
    Kind(
        "cnn-search",
        ["search", "--preset", "tiny", "--no-progress"],
        ["search"],
        6,
        7,
        "layers=4",
        "layers: checkpoint=3, config=4",
        ("train", "val"),
    ),
    Kind(
        "cnn-train",
        ["train", "--preset", "tiny", "--genotype", "DARTS_V2", "--set", "epochs=2", "--no-progress"],
        ["train"],
        5,
        5,
        "layers=4",
        "layers: checkpoint=3, config=4",
    ),
    Kind(
        "rnn-search",
        ["search", "--space", "rnn", "--preset", "tiny", "--epochs", "2", "--no-progress"],
        ["search", "--space", "rnn"],
        5,
        5,
        "nhid=9",
        "nhid: checkpoint=8, config=9",
        ("train", "val"),
    ),
    # 4 epochs of 3 steps; averaged SGD from epoch 4: the SIGTERM lands there with a running average.
    Kind(
        "rnn-train",
        ["train", "--space", "rnn", "--preset", "tiny", "--no-progress"],
        ["train", "--space", "rnn"],
        7,
        11,
        "nhid=9",
        "nhid: checkpoint=8, config=9",
        files=("genotype.json", "best.pt"),
        term_checks={"asgd": True, "average_count": 2},
    ),
]
IDS = [k.name for k in KINDS]


def _one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@dataclass
class _Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_here(capsys, monkeypatch):
    """The CLI in this process: ``cli_here(*args, fault=None)`` -> exit code, stdout, stderr."""

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def call(*args: str, fault: str | None = None) -> _Done:
        if fault is None:
            monkeypatch.delenv("DARTSNAS_FAULT", raising=False)
        else:
            monkeypatch.setenv("DARTSNAS_FAULT", fault)
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        monkeypatch.delenv("DARTSNAS_FAULT", raising=False)
        return _Done(code, out.out, out.err)

    return call


def _records(run: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def _assert_equal(a, b, where: str) -> None:
    """Every tensor equal, every other value equal (the wall clock aside)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            if k != "wall":
                _assert_equal(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}/{i}")
    else:
        assert a == b, (where, a, b)


def _assert_same_run(ref: Path, run: Path, kind: Kind) -> None:
    _assert_equal(load_checkpoint(ref / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt"), "checkpoint")
    assert _records(run) == _records(ref)
    for name in kind.files:
        if name.endswith(".pt"):
            _assert_equal(load_checkpoint(ref / name), load_checkpoint(run / name), name)
        else:
            assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    if (ref / "results.json").exists():
        strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMING}  # noqa: E731
        assert strip(run / "results.json") == strip(ref / "results.json")


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """The uninterrupted run of each kind, made on first use (in this process; the tests do not change it)."""
    made: dict[str, Path] = {}

    def get(kind: Kind) -> Path:
        if kind.name not in made:
            run = tmp_path_factory.mktemp(kind.name) / "ref"
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("OMP_NUM_THREADS", "1")
                mp.delenv("DARTSNAS_FAULT", raising=False)
                assert main([*kind.start, "--run-dir", str(run)]) == 0
            made[kind.name] = run
        return made[kind.name]

    return get


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_kill_nan_term_resume(kind, references, tmp_path, cli_here):
    ref = references(kind)
    run = tmp_path / "run"
    # SIGKILL mid-epoch 2: only the end-of-epoch-1 checkpoint survives.
    proc = run_cli(*kind.start, "--run-dir", str(run), env={"DARTSNAS_FAULT": f"kill_at_step:{kind.kill}"})
    assert proc.returncode == -9, proc.stderr
    ck = load_checkpoint(run / "checkpoint.pt", expect_kind=kind.name)
    assert ck["step_in_epoch"] == 0 and 0 < ck["global_step"] < kind.kill

    # A NaN in the next step of a copy: exit 6 with one line, nothing saved.
    for phase in kind.nan_phases:
        bad = tmp_path / f"nan-{phase}"
        shutil.copytree(run, bad)
        before = (bad / "checkpoint.pt").read_bytes()
        step = ck["global_step"] + 1
        proc = cli_here(*kind.resume, "--resume", str(bad), "--no-progress", fault=f"nan_{phase}_at_step:{step}")
        assert proc.returncode == 6, proc.stderr
        line = _one_line(proc)
        assert f"not finite at step {step - 1}" in line
        assert ("architecture" if phase == "val" else "weights") in line
        assert (bad / "checkpoint.pt").read_bytes() == before

    # Resume, then SIGTERM mid-epoch: exit 143 and a checkpoint at that step.
    proc = run_cli(
        *kind.resume, "--resume", str(run), "--no-progress", env={"DARTSNAS_FAULT": f"term_at_step:{kind.term}"}
    )
    assert proc.returncode == 128 + 15, proc.stderr
    assert "checkpoint saved" in _one_line(proc)
    assert "resumed" in proc.stdout and f"in epoch {ck['epoch'] + 1}/" in proc.stdout  # epochs count from 1
    mid = load_checkpoint(run / "checkpoint.pt")
    assert mid["global_step"] == kind.term and mid["step_in_epoch"] > 0
    for key, value in kind.term_checks.items():
        assert mid[key] == value, key

    proc = cli_here(*kind.resume, "--resume", str(run), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    _assert_same_run(ref, run, kind)
    again = cli_here(*kind.resume, "--resume", str(run), "--no-progress")  # a finished run stays finished
    assert again.returncode == 0 and "already complete" in again.stdout, again.stderr
    _assert_same_run(ref, run, kind)


@pytest.mark.parametrize("kind", KINDS, ids=IDS)
def test_bad_checkpoints_refused_with_one_line(kind, references, tmp_path, cli_here):
    ref = references(kind)
    run = tmp_path / "copy"
    shutil.copytree(ref, run)
    good = (run / "checkpoint.pt").read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0x01
    other = next(k.name for k in KINDS if k.name != kind.name)
    cases = [
        (bytes(raw), "checksum mismatch"),
        (good[: len(good) - 100], "truncated"),
        (None, f"is a '{other}' checkpoint, expected '{kind.name}'"),
    ]
    for content, needle in cases:
        if content is None:
            save_checkpoint(run / "checkpoint.pt", {"kind": other, "config": {}}, keep_previous=False)
        else:
            (run / "checkpoint.pt").write_bytes(content)
        proc = cli_here(*kind.resume, "--resume", str(run), "--no-progress")
        assert proc.returncode == 5, proc.stderr
        line = _one_line(proc)
        assert needle in line and "checkpoint.pt" in line
    (run / "checkpoint.pt").write_bytes(good)
    proc = cli_here(*kind.resume, "--resume", str(run), "--no-progress", "--set", kind.incompatible)
    assert proc.returncode == 5 and kind.refusal in _one_line(proc)
