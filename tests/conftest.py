import os
import subprocess
import sys
from pathlib import Path

import pytest

# Small CPU models are launch-bound: one intra-op thread is faster and immune to oversubscription when
# several test processes share the cores. Subprocesses inherit the variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))


def shared_data_root() -> Path | None:
    """``$DARTSNAS_DATA`` or ``../shared/data`` beside the checkout; None when absent."""
    env = os.environ.get("DARTSNAS_DATA")
    for cand in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None):
    """Run ``python -m dartsnas ARGS`` in a subprocess, as a user would."""
    full_env = {
        **os.environ,
        "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    full_env.pop("DARTSNAS_FAULT", None) if not (env and "DARTSNAS_FAULT" in env) else None
    return subprocess.run(
        [sys.executable, "-m", "dartsnas", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def cli_main(capsys, monkeypatch):
    """``dartsnas.cli.main`` in this process, for one-line errors, exit codes and runs whose process is not the
    point (no interpreter start-up): ``cli_main(*args)`` returns a ``CompletedProcess`` like ``run_cli``'s.
    One intra-op thread as in ``run_cli``, so that a run here and one in a subprocess compute the same bits (the
    CLI exports its thread count to the environment; monkeypatch restores it). Subprocesses stay for signals,
    exit codes after a kill, and process-level behaviour."""
    from dartsnas.cli import main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def call(*args: str) -> subprocess.CompletedProcess:
        capsys.readouterr()
        code = main(list(args))
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["dartsnas", *args], code, out.out, out.err)

    return call
