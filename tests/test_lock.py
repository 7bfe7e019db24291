"""One writer per run or experiment directory (issue 12, item 2): an exclusive flock on DIR/.lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dartsnas.errors import RunDirLockedError
from dartsnas.lock import LOCK_FILE, abandon_run_dir, acquire, hold_run_dir, locked, release_run_dir

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
ENV.pop("DARTSNAS_FAULT", None)


def _start(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dartsnas", *args],
        cwd=cwd,
        env=env or ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _holder(path: Path) -> subprocess.Popen:
    """Another process that holds ``path``'s lock until it is killed; returns once the lock is taken."""
    code = (
        f"import sys, time; sys.path.insert(0, {str(SRC)!r}); from dartsnas.lock import hold_run_dir; "
        f"hold_run_dir({str(path)!r}); print('held', flush=True); time.sleep(600)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def _epochs(run: Path) -> list[int]:
    return [
        r["epoch"]
        for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        if "epoch" in r and r.get("event") is None
    ]


def test_two_writers_started_at_once_one_wins(tmp_path):
    run = tmp_path / "dup"
    args = ("search", "--preset", "tiny", "--run-dir", str(run), "--no-progress")
    procs = [_start(*args, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, RunDirLockedError.exit_code], outs
    loser = outs[[p.returncode for p in procs].index(RunDirLockedError.exit_code)]
    assert len(loser[1].strip().splitlines()) == 1 and "Traceback" not in loser[1]
    assert "another dartsnas process" in loser[1] and str(run) in loser[1]
    # The winner's metrics hold every epoch once (two writers used to write each epoch twice).
    epochs = _epochs(run)
    assert epochs and len(epochs) == len(set(epochs))


def test_lock_of_a_killed_writer_is_released(tmp_path, cli_main):
    """A held lock stops --resume and --auto-resume too; after SIGKILL of its holder the next writer runs.
    The writer that is killed and the holder are processes; the later starts run in this process."""
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "dartsnas", "search", "--preset", "tiny", "--run-dir", str(run), "--no-progress"],
        cwd=tmp_path,
        env={**ENV, "DARTSNAS_FAULT": "kill_at_step:5"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == -signal.SIGKILL  # the writer died holding the lock; the kernel dropped it
    assert (run / "checkpoint.pt").exists()
    holder = _holder(run)
    try:
        for extra in (["--resume", str(run)], ["--preset", "tiny", "--run-dir", str(run), "--auto-resume"]):
            p = cli_main("search", "--no-progress", *extra)
            assert p.returncode == RunDirLockedError.exit_code, p.stderr
            assert f"pid {holder.pid}" in p.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    p = cli_main("search", "--no-progress", "--resume", str(run))
    assert p.returncode == 0, p.stderr
    assert (run / "genotype.json").exists()


def test_experiment_directory_is_locked(tmp_path, cli_main):
    exp = tmp_path / "exp"
    exp.mkdir()
    holder = _holder(exp)
    try:
        p = cli_main("random", "--preset", "tiny", "--experiment", str(exp))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert p.returncode == RunDirLockedError.exit_code, p.stderr
    assert not (exp / "experiment.json").exists()  # refused before writing anything


def test_locked_context_and_process_hold(tmp_path):
    d = tmp_path / "d"
    with locked(d) as lk:
        assert lk.held and (d / LOCK_FILE).exists()
        with pytest.raises(RunDirLockedError):  # a second open file description: refused even in-process
            acquire(d)
    acquire(d).release()  # given back at the end of the block
    hold_run_dir(d)
    hold_run_dir(d)  # holding again is a no-op (an in-process resume of the run just written)
    with pytest.raises(RunDirLockedError):
        acquire(d)
    hold_run_dir(tmp_path / "e")  # a new run: the previous one's lock is given back
    acquire(d).release()
    release_run_dir(tmp_path / "e")
    acquire(tmp_path / "e").release()
    hold_run_dir(tmp_path / "missing", create=False)  # resume of a missing folder: left to the caller
    assert not (tmp_path / "missing").exists()


def test_other_process_is_refused_while_held_and_admitted_after_sigkill(tmp_path):
    d = tmp_path / "d"
    holder = _holder(d)
    try:
        with pytest.raises(RunDirLockedError) as info:
            acquire(d)
        assert f"pid {holder.pid}" in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the flock when the process is gone
        try:
            acquire(d).release()
            break
        except RunDirLockedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_abandon_removes_only_an_otherwise_empty_run_dir(tmp_path):
    empty, used = tmp_path / "empty", tmp_path / "used"
    hold_run_dir(empty)
    abandon_run_dir(empty)
    assert not empty.exists()
    hold_run_dir(used)
    (used / "metrics.jsonl").write_text("{}\n")
    abandon_run_dir(used)
    assert (used / "metrics.jsonl").exists() and not (used / LOCK_FILE).exists()
    acquire(used).release()  # the lock was given back
