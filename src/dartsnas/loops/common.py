"""What every loop shares: run directories, metrics files, signals and fault hooks, devices."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write_text, clean_leftovers
from ..errors import CheckpointError, ConfigError, RunDirError
from .logs import emitter

CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here")
    return dev


def default_run_dir(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(path: str | Path, resume: bool, log=None) -> Path:
    """Create (or, when resuming, reopen) a run directory; refuse to silently overwrite a run."""
    path = Path(path)
    from ..lock import hold_run_dir  # one writer per run directory (issue 12): lock before looking inside

    hold_run_dir(path, create=not resume)
    if resume:
        if not (path / CHECKPOINT).exists():
            raise RunDirError(f"nothing to resume: no {CHECKPOINT} here", str(path))
        clean_leftovers(path, emitter(log))
        return path
    if (path / CHECKPOINT).exists():
        raise RunDirError("already holds a run; pass --resume to continue it or choose another --run-dir", str(path))
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"cannot create or write ({e.strerror or e})", str(path)) from None
    return path


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(Path(path), json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class Metrics:
    """``metrics.jsonl``: one JSON object per line, flushed and fsynced after each record."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def truncate_after(self, keep: int, key: str = "epoch") -> None:
        """On resume, drop records of epochs the checkpoint does not cover (epoch >= keep)."""
        if not self.path.exists():
            return
        kept = [line for line in self.read() if line.get(key, -1) < keep and line.get("event") != "final"]
        atomic_write_text(self.path, "".join(json.dumps(r, default=_json_default) + "\n" for r in kept))

    def append(self, record: dict[str, Any]) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RunDirError(f"cannot write metrics ({e.strerror or e})", str(self.path)) from None

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line after a hard kill
        return out


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the next step boundary and exits."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @property
    def requested(self) -> bool:
        return self.signum is not None


class Interrupted(Exception):
    """Raised by a loop after it saved a checkpoint on a signal; the CLI exits 128 + signum."""

    def __init__(self, signum: int, checkpoint: Path):
        self.signum = signum
        self.checkpoint = checkpoint
        super().__init__(f"interrupted by signal {signum}; checkpoint saved to {checkpoint}; continue with --resume")


def inject_fault(global_step: int) -> None:
    """Test hook: ``DARTSNAS_FAULT=kill_at_step:N`` / ``term_at_step:N`` signal this process after step N.

    Only the tests set the variable; it lets them kill a run at an exact point (SIGKILL loses everything
    since the last checkpoint; SIGTERM goes through the graceful save).
    """
    fault = os.environ.get("DARTSNAS_FAULT", "")
    if not fault.endswith(f"_at_step:{global_step}"):
        return
    if fault.startswith("kill_at_step:"):
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.startswith("term_at_step:"):
        os.kill(os.getpid(), signal.SIGTERM)


_FAULT_FIRINGS: dict[str, int] = {}


def reset_faults() -> None:
    """Forget how often the ``nan_..._at_step:N:K`` faults fired (the driver calls it when a loop starts)."""
    _FAULT_FIRINGS.clear()


def nan_fault(which: str, global_step: int) -> bool:
    """Test hook: ``DARTSNAS_FAULT=nan_<which>_at_step:N`` asks for NaNs in ``which`` (train, val) at step N
    (1-based) every time step N runs; ``nan_<which>_at_step:N:K`` only the first K times in this loop (a
    transient NaN, which a reload after the NaN gets past). Every loop reads faults through this function and
    ``inject_fault``."""
    fault = os.environ.get("DARTSNAS_FAULT", "")
    at = f"nan_{which}_at_step:{global_step}"
    if fault == at:
        return True
    if not fault.startswith(at + ":"):
        return False
    times = int(fault[len(at) + 1 :])
    _FAULT_FIRINGS[fault] = _FAULT_FIRINGS.get(fault, 0) + 1
    return _FAULT_FIRINGS[fault] <= times


def poison_batch(x: torch.Tensor, which: str, global_step: int) -> torch.Tensor:
    """Test hook: ``nan_fault(which, global_step)`` turns the batch into NaNs."""
    return torch.full_like(x, float("nan")) if nan_fault(which, global_step) else x


def set_determinism(device: torch.device, deterministic: bool) -> None:
    """``--set deterministic=true``: deterministic cuDNN/cuBLAS kernels (repeatable GPU runs, slower).

    Otherwise cuDNN autotunes its kernels (as the reference does) and two GPU runs with one seed differ
    slightly; CPU runs are bit-identical either way.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def check_resume_config(cfg: Any, ck: dict[str, Any], path: Path, log=None) -> None:
    """Refuse to resume with a config whose non-harmless fields differ from the checkpoint's, field by field."""
    try:
        old = type(cfg).from_dict(ck["config"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"holds an unreadable config ({e})", str(path)) from None
    bad, harmless = cfg.diff(old)
    if bad:
        raise CheckpointError("incompatible config: " + "; ".join(bad), str(path))
    for line in harmless:
        emitter(log)(f"note: config changed on resume: {line}")


@dataclass
class TrainingResult:
    """What a from-scratch training returns (CNN and recurrent): its run directory, ``results.json``'s
    content and the per-epoch metrics records."""

    run_dir: Path
    results: dict[str, Any]
    history: list[dict[str, Any]]

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}
