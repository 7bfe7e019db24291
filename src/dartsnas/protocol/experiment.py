"""The experiment directory (files, per-run status, lock) and the records a stage works with."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunDirError
from ..loops.common import write_json
from .config import ProtocolConfig

EXPERIMENT_FILE = "experiment.json"
SUMMARY_FILE = "summary.json"


@dataclass
class Task:
    name: str  # search-seed1, select-seed1, random-0, final-seed0
    stage: str  # search | select | random | final
    argv: list[str]  # the fresh command (after "python -m dartsnas")
    resume_argv: list[str]  # the command that continues it from its checkpoint
    deps: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentResult:
    experiment: Path
    summary: dict[str, Any]

    @property
    def chosen(self) -> dict[str, Any] | None:
        return self.summary.get("chosen")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


class Experiment:
    """The experiment directory: files, per-run status, locking."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    run_dir = lambda self, name: self.path / "runs" / name  # noqa: E731
    status_path = lambda self, name: self.path / "status" / f"{name}.json"  # noqa: E731
    log_path = lambda self, name: self.path / "logs" / f"{name}.log"  # noqa: E731

    def exists(self) -> bool:
        return (self.path / EXPERIMENT_FILE).exists()

    def check_resumable(self, resume: bool) -> None:
        """``resume`` of a path that holds no experiment (a mistyped ``--experiment``) stops here, before anything
        is read or created (no directory, no ``.lock``)."""
        if resume and not self.exists():
            raise RunDirError(
                f"nothing to resume: no {EXPERIMENT_FILE} here (not an experiment directory; check --experiment)",
                str(self.path),
            )

    def read(self) -> dict[str, Any]:
        data = _read_json(self.path / EXPERIMENT_FILE)
        if not isinstance(data, dict):
            raise RunDirError(f"no readable {EXPERIMENT_FILE} (not an experiment directory?)", str(self.path))
        return data

    def write(self, data: dict[str, Any]) -> None:
        write_json(self.path / EXPERIMENT_FILE, data)

    def status(self, name: str) -> dict[str, Any]:
        return _read_json(self.status_path(name), {}) or {}

    def set_status(self, name: str, **fields: Any) -> dict[str, Any]:
        st = {**self.status(name), "name": name, **fields}
        write_json(self.status_path(name), st)
        return st

    def create(self, kind: str, cfg: ProtocolConfig, resume: bool, extra: dict[str, Any] | None = None) -> dict:
        """Create the directory (or reopen it with ``resume``), refusing a different protocol config."""
        from .. import __version__

        if self.exists():
            if not resume:
                raise RunDirError(
                    "already holds an experiment; pass --resume to continue it or choose another --experiment",
                    str(self.path),
                )
            data = self.read()
            if data.get("kind") != kind:
                raise RunDirError(f"holds a {data.get('kind')!r} experiment, not {kind!r}", str(self.path))
            try:
                old = ProtocolConfig.from_dict(data.get("config", {}))
            except ConfigError as e:
                raise RunDirError(f"holds an unreadable protocol config ({e})", str(self.path)) from None
            bad, _ = cfg.diff(old)
            if bad:
                raise ConfigError(
                    [
                        "the experiment was started with another config (resume keeps it): "
                        + "; ".join(bad).replace("checkpoint=", "experiment=")
                    ]
                )
            data["config"] = cfg.to_dict()  # harmless changes (jobs, devices) take effect
            self.write(data)
            return data
        self.check_resumable(resume)
        try:
            for sub in ("runs", "status", "logs", "genotypes"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create ({e.strerror or e})", str(self.path)) from None
        data = {
            "kind": kind,
            "space": cfg.space,
            "method": "random" if kind == "random" else "darts",
            "created": _now(),
            "dartsnas_version": __version__,
            "config": cfg.to_dict(),
            **(extra or {}),
        }
        self.write(data)
        return data

    def lock(self):
        """An exclusive lock so that two processes never drive one experiment; released when the process dies."""
        from ..lock import locked

        return locked(self.path)
