"""The paper's experimental protocol (spec §9) as a library: selection, random baseline, final evaluation.

An *experiment directory* holds every run of one protocol stage and what was decided from them::

    EXP/experiment.json          kind (select | random | final), space, method, the resolved ProtocolConfig
    EXP/runs/search-seedN/       one `dartsnas search` run per seed                 (select)
    EXP/runs/select-seedN/       the short training of search-seedN's cell          (select)
    EXP/runs/random-K/           the short training of random cell K                (random)
    EXP/runs/final-seedN/        a full training of the chosen (or given) cell     (evaluate-final)
    EXP/genotypes/*.json         the sampled random cells, the chosen cell, the finally evaluated cell
    EXP/status/<run>.json        per run: status, attempts, return code, error, device, seconds, command
    EXP/logs/<run>.log           the run's stdout and stderr
    EXP/summary.json             runs, scores, the pick, cost, final mean ± std (rewritten after every run)

Every run is a separate ``python -m dartsnas search|train`` process, pinned to one device (one GPU via
``CUDA_VISIBLE_DEVICES`` when GPUs are visible, else a CPU process with ``OMP_NUM_THREADS`` set), ``jobs`` at
a time. ``resume=True`` skips finished runs and continues interrupted ones with their own ``--resume``; a run
that failed is recorded with its error and left out of the pick (``retry_failed=True`` runs it again).

Selection never reads a test set: CNN selection trainings train on D_w and score on D_alpha
(``eval_split=search_valid``), recurrent ones train on train and score on valid (spec §9 [SPEC]).

Usage::

    from dartsnas.protocol import ProtocolConfig, select, random_baseline, evaluate_final
    cfg = ProtocolConfig.build("quick", searches=2, search_epochs=1)
    res = select(cfg, "experiments/quick")
    print(res.summary["chosen"])
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .config import ConfigBase, require
from .errors import ConfigError, RunDirError
from .loops.common import Interrupted, write_json
from .space.genotype import (RNN_OPS, AnyGenotype, Genotype, RNNGenotype, genotype_from_dict, genotype_to_dict,
                             save_genotype)
from .space.ops import PRIMITIVES

EXPERIMENT_FILE = "experiment.json"
SUMMARY_FILE = "summary.json"
CNN_SEARCH_OPS: tuple[str, ...] = tuple(p for p in PRIMITIVES if p != "none")   # 7 (spec §9)
RNN_SEARCH_OPS: tuple[str, ...] = tuple(RNN_OPS)                                # 4
DEFAULT_SAMPLES = {"cnn": 24, "rnn": 8}            # spec §9, §11.5
DEFAULT_SELECT_EPOCHS = {"cnn": 100, "rnn": 300}   # spec §9
FAULT_ENV = "DARTSNAS_PROTOCOL_FAULT"              # tests: "run-name=<DARTSNAS_FAULT value>[;...]"


@dataclass(kw_only=True)
class ProtocolConfig(ConfigBase):
    """One protocol experiment. Defaults are the paper's (4 second-order searches, 100/300-epoch selection)."""

    space: Literal["cnn", "rnn"] = "cnn"
    dataset: str | None = None           # passed to the searches and trainings (default: their presets')
    data_dir: str | None = None
    search_preset: str = "paper"         # a SearchConfig / RNNSearchConfig preset
    train_preset: str = "paper"          # a TrainConfig / RNNTrainConfig preset ("paper" = paper-ptb for rnn)
    order: Literal[1, 2] = 2             # search order (Table 1: DARTS second order)
    searches: int = 4
    seed: int = 1                        # searches use seeds seed, seed+1, ... unless ``seeds`` is given
    seeds: str | None = None             # explicit search seeds, comma-separated
    search_epochs: int | None = None     # None: the search preset's (paper 50)
    select_epochs: int | None = None     # None: 100 (CNN) / 300 (RNN) with a paper preset, else the preset's
    select_seed: int = 0                 # the training seed of every selection run (same for all cells)
    samples: int | None = None           # random baseline: None = 24 (CNN) / 8 (RNN)
    sample_seed: int = 0                 # the random cells' generator
    final_runs: int = 10                 # trainings of the final cell (paper: 10 on CIFAR-10)
    final_seed: int = 0                  # final trainings use seeds final_seed, final_seed+1, ...
    final_epochs: int | None = None      # None: the train preset's (paper 600)
    search_set: list = field(default_factory=list)   # extra key=value overrides of the searches
    train_set: list = field(default_factory=list)    # ... of every training (selection and final)
    final_set: list = field(default_factory=list)    # ... of the final trainings only
    jobs: int = 1                        # runs at a time
    devices: str | None = None           # "cpu" or GPU ids "0,1,..."; None: every visible GPU, else CPU

    HARMLESS = ConfigBase.HARMLESS | frozenset({"jobs", "devices", "data_dir", "final_runs"})

    PRESETS = {
        "paper": {},
        "paper-first-order": {"order": 1},
        # Minutes on a laptop CPU: the built-in data, the loops' quick presets.
        "quick": {"search_preset": "quick", "train_preset": "quick", "order": 1, "searches": 2, "samples": 3,
                  "final_runs": 2},
        # Seconds per run, for the tests.
        "tiny": {"search_preset": "tiny", "train_preset": "tiny", "order": 1, "searches": 2, "search_epochs": 1,
                 "samples": 3, "final_runs": 2},
    }

    def check(self) -> list[str]:
        p: list[str] = []
        for name in ("searches", "jobs", "final_runs"):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("search_epochs", "select_epochs", "samples", "final_epochs"):
            v = getattr(self, name)
            require(p, v is None or v > 0, f"{name}: must be positive, got {v}")
        for name in ("search_set", "train_set", "final_set"):
            v = getattr(self, name)
            ok = isinstance(v, list) and all(isinstance(s, str) and "=" in s for s in v)
            require(p, ok, f"{name}: expected a list of key=value strings, got {v!r}")
        if self.seeds is not None:
            try:
                seeds = self.search_seeds()
                require(p, len(set(seeds)) == len(seeds), f"seeds: duplicate seed in {self.seeds!r}")
            except ValueError:
                p.append(f"seeds: expected comma-separated integers, got {self.seeds!r}")
        if self.devices is not None and self.devices != "cpu":
            ok = all(s.strip().isdigit() for s in self.devices.split(","))
            require(p, ok, f"devices: expected 'cpu' or GPU ids like '0,1', got {self.devices!r}")
        if not p:
            p.extend(self._check_presets())
        return p

    def _check_presets(self) -> list[str]:
        p: list[str] = []
        s_cls, t_cls = loop_configs(self.space)
        require(p, self.search_preset in s_cls.PRESETS,
                f"search_preset: unknown {self.space} search preset {self.search_preset!r}; "
                f"available: {', '.join(s_cls.PRESETS)}")
        require(p, self.resolved_train_preset() in t_cls.PRESETS,
                f"train_preset: unknown {self.space} train preset {self.train_preset!r}; "
                f"available: {', '.join(t_cls.PRESETS)}")
        return p

    # ------------------------------------------------------------------ derived values
    def search_seeds(self) -> list[int]:
        if self.seeds is not None:
            return [int(s) for s in str(self.seeds).split(",") if s.strip()]
        return [self.seed + i for i in range(self.searches)]

    def resolved_train_preset(self) -> str:
        if self.space == "rnn" and self.train_preset == "paper":
            return "paper-ptb"
        return self.train_preset

    def resolved_select_epochs(self) -> int | None:
        if self.select_epochs is not None:
            return self.select_epochs
        return DEFAULT_SELECT_EPOCHS[self.space] if self.resolved_train_preset().startswith("paper") else None

    def resolved_samples(self) -> int:
        return self.samples if self.samples is not None else DEFAULT_SAMPLES[self.space]

    def search_config(self, seed: int | None = None):
        """The search config one search run gets (what its command line builds)."""
        s_cls, _ = loop_configs(self.space)
        over = self._common_overrides() + [f"order={self.order}"] + list(self.search_set)
        if self.search_epochs is not None:
            over.append(f"epochs={self.search_epochs}")
        if seed is not None:
            over.append(f"seed={seed}")
        return s_cls.build(self.search_preset, over)

    def _common_overrides(self) -> list[str]:
        out = []
        if self.dataset is not None:
            out.append(f"dataset={self.dataset}")
        if self.data_dir is not None:
            out.append(f"data_dir={self.data_dir}")
        return out


def loop_configs(space: str):
    """(search config class, train config class) of a space."""
    if space == "rnn":
        from .loops.rnn_search import RNNSearchConfig
        from .loops.rnn_train import RNNTrainConfig

        return RNNSearchConfig, RNNTrainConfig
    from .loops.search import SearchConfig
    from .loops.train import TrainConfig

    return SearchConfig, TrainConfig


# ============================================================================================ random cells

def sample_cnn_genotype(rng: random.Random, num_nodes: int = 4) -> Genotype:
    """A uniformly random CNN genotype (spec §9 [SPEC]): per node, two distinct predecessors drawn uniformly
    without replacement and an op per edge drawn uniformly from the 7 non-``none`` ops; normal and reduction
    cells independently; concat = all intermediate nodes."""

    def cell() -> tuple[tuple[str, int], ...]:
        pairs = []
        for i in range(num_nodes):
            for src in rng.sample(range(i + 2), 2):
                pairs.append((rng.choice(CNN_SEARCH_OPS), src))
        return tuple(pairs)

    normal = cell()
    reduce = cell()
    concat = tuple(range(2, num_nodes + 2))
    return Genotype(normal, concat, reduce, concat)


def sample_rnn_genotype(rng: random.Random, num_nodes: int = 8) -> RNNGenotype:
    """A uniformly random recurrent genotype (spec §9 [SPEC]): node i gets one predecessor uniform over
    0..i-1 and an activation uniform over the 4 non-``none`` ones; concat = nodes 1..num_nodes."""
    rec = tuple((rng.choice(RNN_SEARCH_OPS), rng.randrange(i)) for i in range(1, num_nodes + 1))
    return RNNGenotype(rec, tuple(range(1, num_nodes + 1)))


def sample_genotypes(space: str, n: int, seed: int, num_nodes: int | None = None) -> list[AnyGenotype]:
    """``n`` random cells from one seeded generator; the first k do not depend on n."""
    rng = random.Random(seed)
    if space == "rnn":
        return [sample_rnn_genotype(rng, num_nodes or 8) for _ in range(n)]
    return [sample_cnn_genotype(rng, num_nodes or 4) for _ in range(n)]


# ============================================================================================ runs

@dataclass
class Task:
    name: str                  # search-seed1, select-seed1, random-0, final-seed0
    stage: str                 # search | select | random | final
    argv: list[str]            # the fresh command (after "python -m dartsnas")
    resume_argv: list[str]     # the command that continues it from its checkpoint
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
        from . import __version__

        if self.exists():
            if not resume:
                raise RunDirError("already holds an experiment; pass --resume to continue it or choose another "
                                  "--experiment", str(self.path))
            data = self.read()
            if data.get("kind") != kind:
                raise RunDirError(f"holds a {data.get('kind')!r} experiment, not {kind!r}", str(self.path))
            try:
                old = ProtocolConfig.from_dict(data.get("config", {}))
            except ConfigError as e:
                raise RunDirError(f"holds an unreadable protocol config ({e})", str(self.path)) from None
            bad, _ = cfg.diff(old)
            if bad:
                raise ConfigError(["the experiment was started with another config (resume keeps it): "
                                   + "; ".join(bad).replace("checkpoint=", "experiment=")])
            data["config"] = cfg.to_dict()  # harmless changes (jobs, devices) take effect
            self.write(data)
            return data
        if resume:
            raise RunDirError(f"nothing to resume: no {EXPERIMENT_FILE} here", str(self.path))
        try:
            for sub in ("runs", "status", "logs", "genotypes"):
                (self.path / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"cannot create ({e.strerror or e})", str(self.path)) from None
        data = {"kind": kind, "space": cfg.space, "method": "random" if kind == "random" else "darts",
                "created": _now(), "dartsnas_version": __version__, "config": cfg.to_dict(), **(extra or {})}
        self.write(data)
        return data

    def lock(self):
        """An exclusive lock so that two processes never drive one experiment; released when the process dies."""
        from .lock import locked

        return locked(self.path)


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGKILL when the experiment process dies, so no orphan keeps writing a run."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _device_slots(cfg: ProtocolConfig) -> list[str]:
    """One entry per concurrent job: a GPU id ("0") or "cpu"."""
    if cfg.devices == "cpu":
        gpus: list[str] = []
    elif cfg.devices:
        gpus = [s.strip() for s in cfg.devices.split(",")]
    else:
        gpus = _visible_gpus()
    if not gpus:
        return ["cpu"] * cfg.jobs
    return [gpus[i % len(gpus)] for i in range(cfg.jobs)]


def _visible_gpus() -> list[str]:
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:
        n = 0
    if n == 0:
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [s.strip() for s in visible.split(",") if s.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


def _child_fault(name: str) -> str | None:
    for item in os.environ.get(FAULT_ENV, "").split(";"):
        key, _, value = item.partition("=")
        if key.strip() == name and value:
            return value.strip()
    return None


def _last_error(log: Path) -> str:
    """The one-line error of a failed run: its ``dartsnas: ...`` line, else the last lines of its log."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if ln.startswith("dartsnas:"):
            return ln[len("dartsnas:"):].strip()
    return " | ".join(lines[-3:])[-500:] if lines else "no output"


class _Runner:
    """Runs tasks as subprocesses, ``len(slots)`` at a time, in dependency order; records every outcome."""

    def __init__(self, exp: Experiment, cfg: ProtocolConfig, resume: bool, retry_failed: bool, log,
                 on_change=None):
        self.exp, self.cfg, self.resume, self.retry_failed, self.log = exp, cfg, resume, retry_failed, log
        self.slots = _device_slots(cfg)
        self.on_change = on_change or (lambda: None)

    def _env(self, task: Task, slot: str) -> dict[str, str]:
        env = os.environ.copy()
        src = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("DARTSNAS_FAULT", None)
        env.pop(FAULT_ENV, None)
        fault = _child_fault(task.name)
        if fault:
            env["DARTSNAS_FAULT"] = fault
        if slot == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
            if "OMP_NUM_THREADS" not in os.environ:
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self.slots)))
        else:
            env["CUDA_VISIBLE_DEVICES"] = slot
        return env

    def _launch(self, task: Task, slot: str) -> subprocess.Popen:
        run_dir = self.exp.run_dir(task.name)
        st = self.exp.status(task.name)
        continuing = (run_dir / "checkpoint.pt").exists()
        if not continuing and run_dir.exists():
            shutil.rmtree(run_dir)  # a fresh start: nothing usable was saved
        argv = task.resume_argv if continuing else task.argv
        log_path = self.exp.log_path(task.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log_path, "a")
        logf.write(f"\n=== {_now()} attempt {st.get('attempts', 0) + 1} on {slot}: dartsnas {' '.join(argv)}\n")
        logf.flush()
        proc = subprocess.Popen([sys.executable, "-m", "dartsnas", *argv], stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=self._env(task, slot),
                                preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None)
        logf.close()
        self.exp.set_status(task.name, stage=task.stage, status="running", attempts=st.get("attempts", 0) + 1,
                            started=_now(), device="cpu" if slot == "cpu" else f"cuda:{slot}",
                            command=["dartsnas", *argv], continued=continuing, run_dir=f"runs/{task.name}",
                            pid=proc.pid, **task.meta)
        self.log(f"[{task.name}] {'continuing' if continuing else 'starting'} on "
                 f"{'CPU' if slot == 'cpu' else 'GPU ' + slot} (log: {log_path})")
        return proc

    def run(self, tasks: list[Task]) -> None:
        todo: list[Task] = []
        for t in tasks:
            st = self.exp.status(t.name).get("status")
            if st == "done":
                continue
            if st == "failed" and not self.retry_failed:
                self.log(f"[{t.name}] failed before ({self.exp.status(t.name).get('error')}); kept as failed "
                         "(--retry-failed runs it again)")
                continue
            if st == "failed":
                shutil.rmtree(self.exp.run_dir(t.name), ignore_errors=True)
            todo.append(t)
        running: dict[str, tuple[subprocess.Popen, str, float, Task]] = {}
        free = list(range(len(self.slots)))
        stop: list[int] = []
        old_handlers = {}

        def handler(signum, frame):
            if stop:
                raise KeyboardInterrupt
            stop.append(signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old_handlers[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        try:
            while todo or running:
                if stop:
                    self._stop_all(running)
                    raise _ExperimentInterrupted(stop[0], self.exp.path)
                progressed = False
                for t in list(todo):
                    if not free:
                        break
                    dep_state = [self.exp.status(d).get("status") for d in t.deps]
                    if any(s == "failed" for s in dep_state):
                        bad = next(d for d in t.deps if self.exp.status(d).get("status") == "failed")
                        self.exp.set_status(t.name, stage=t.stage, status="failed", returncode=None,
                                            error=f"not run: {bad} failed", finished=_now(), **t.meta)
                        self.log(f"[{t.name}] not run: {bad} failed")
                        todo.remove(t)
                        progressed = True
                        self.on_change()
                        continue
                    if all(s == "done" for s in dep_state):
                        slot_i = free.pop(0)
                        proc = self._launch(t, self.slots[slot_i])
                        running[t.name] = (proc, slot_i, time.perf_counter(), t)
                        todo.remove(t)
                        progressed = True
                if not running and todo and not progressed:
                    raise RuntimeError("protocol: tasks wait on runs that are not scheduled: "
                                       + ", ".join(t.name for t in todo))
                for name, (proc, slot_i, t0, t) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    del running[name]
                    free.append(slot_i)
                    free.sort()
                    self._finished(t, rc, time.perf_counter() - t0)
                    self.on_change()
                time.sleep(0.05)
        finally:
            for sig, old in old_handlers.items():
                signal.signal(sig, old)

    def _finished(self, task: Task, rc: int, seconds: float) -> None:
        st = self.exp.status(task.name)
        spent = float(st.get("process_seconds", 0.0)) + seconds
        if rc == 0:
            self.exp.set_status(task.name, status="done", returncode=0, error=None, finished=_now(),
                                process_seconds=spent, pid=None)
            self.log(f"[{task.name}] done in {seconds:.1f}s")
            return
        interrupted = rc < 0 or rc in (128 + signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGKILL)
        error = _last_error(self.exp.log_path(task.name))
        if rc < 0:
            error = f"killed by signal {-rc}" + (f" ({error})" if error else "")
        self.exp.set_status(task.name, status="interrupted" if interrupted else "failed", returncode=rc,
                            error=error, finished=_now(), process_seconds=spent, pid=None)
        self.log(f"[{task.name}] {'interrupted' if interrupted else 'FAILED'} (exit {rc}): {error}")

    def _stop_all(self, running: dict) -> None:
        """Forward the stop to every run (they save a checkpoint), wait, and record them as interrupted."""
        for proc, *_ in running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 120
        for name, (proc, slot_i, t0, t) in running.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            st = self.exp.status(name)
            self.exp.set_status(name, status="interrupted", returncode=proc.returncode, finished=_now(),
                                process_seconds=float(st.get("process_seconds", 0.0)) + time.perf_counter() - t0,
                                error="stopped with the experiment; continue with --resume", pid=None)
        running.clear()


class _ExperimentInterrupted(Interrupted):
    def __init__(self, signum: int, path: Path):
        super().__init__(signum, path)
        self.args = (f"interrupted by signal {signum}; finished runs are kept in {path}; "
                     "continue with --resume",)

    def __str__(self) -> str:
        return self.args[0]


# ============================================================================================ commands

def _search_argv(cfg: ProtocolConfig, seed: int, run_dir: Path) -> tuple[list[str], list[str]]:
    argv = ["search", "--space", cfg.space, "--preset", cfg.search_preset, "--seed", str(seed),
            "--order", str(cfg.order), "--run-dir", str(run_dir), "--no-progress"]
    argv += [a for kv in cfg._common_overrides() for a in ("--set", kv)]
    if cfg.search_epochs is not None:
        argv += ["--epochs", str(cfg.search_epochs)]
    argv += [a for kv in cfg.search_set for a in ("--set", kv)]
    return argv, ["search", "--space", cfg.space, "--resume", str(run_dir), "--no-progress"]


def _train_argv(cfg: ProtocolConfig, genotype: Path, seed: int, run_dir: Path, epochs: int | None,
                selection: bool, extra: list[str] = ()) -> tuple[list[str], list[str]]:
    argv = ["train", "--space", cfg.space, "--preset", cfg.resolved_train_preset(), "--genotype", str(genotype),
            "--seed", str(seed), "--run-dir", str(run_dir), "--no-progress"]
    argv += [a for kv in cfg._common_overrides() for a in ("--set", kv)]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    if selection and cfg.space == "cnn":
        argv += ["--set", "eval_split=search_valid"]  # train on D_w, score on D_alpha (spec §9 [SPEC])
    argv += [a for kv in list(cfg.train_set) + list(extra) for a in ("--set", kv)]
    return argv, ["train", "--space", cfg.space, "--resume", str(run_dir), "--no-progress"]


def _check_loop_configs(cfg: ProtocolConfig, what: str) -> None:
    """Build the configs the child processes will build, so a bad override fails here, before any run."""
    _, t_cls = loop_configs(cfg.space)
    if what == "select":
        cfg.search_config(seed=0)
    over = cfg._common_overrides() + list(cfg.train_set)
    if what in ("select", "random"):
        if cfg.space == "cnn":
            over.append("eval_split=search_valid")
        if cfg.resolved_select_epochs() is not None:
            over.append(f"epochs={cfg.resolved_select_epochs()}")
    else:
        over += list(cfg.final_set)
        if cfg.final_epochs is not None:
            over.append(f"epochs={cfg.final_epochs}")
    t_cls.build(cfg.resolved_train_preset(), over)


def select(cfg: ProtocolConfig, experiment: str | Path | None = None, resume: bool = False,
           retry_failed: bool = False, run_final: bool = False, log=print) -> ExperimentResult:
    """DARTS with selection (spec §9): S searches, a short training of each derived cell, the best by
    validation performance; optionally (``run_final``) the full evaluation of the pick."""
    exp = Experiment(experiment or _default_path("select"))
    _check_loop_configs(cfg, "select")
    with exp.lock():
        exp.create("select", cfg, resume)  # under the lock: two starts never both write experiment.json
        searches, trainings = [], []  # searches first: with several jobs they start before any training
        for seed in cfg.search_seeds():
            s_name, t_name = f"search-seed{seed}", f"select-seed{seed}"
            s_argv, s_res = _search_argv(cfg, seed, exp.run_dir(s_name))
            searches.append(Task(s_name, "search", s_argv, s_res, meta={"seed": seed}))
            t_argv, t_res = _train_argv(cfg, exp.run_dir(s_name) / "genotype.json", cfg.select_seed,
                                        exp.run_dir(t_name), cfg.resolved_select_epochs(), selection=True)
            trainings.append(Task(t_name, "select", t_argv, t_res, deps=[s_name], meta={"seed": seed}))
        tasks = searches + trainings
        runner = _Runner(exp, cfg, resume, retry_failed, log, on_change=lambda: summarize(exp.path))
        runner.run(tasks)
        summary = summarize(exp.path)
        _log_pick(summary, log)
    if run_final and summary.get("chosen"):
        return evaluate_final(cfg, exp.path, resume=True, retry_failed=retry_failed, log=log)
    return ExperimentResult(exp.path, summary)


def random_baseline(cfg: ProtocolConfig, experiment: str | Path | None = None, resume: bool = False,
                    retry_failed: bool = False, run_final: bool = False, log=print) -> ExperimentResult:
    """The random-search baseline (spec §9): N uniformly sampled cells, the same short training, the same pick."""
    exp = Experiment(experiment or _default_path("random"))
    _check_loop_configs(cfg, "random")
    with exp.lock():
        exp.create("random", cfg, resume)  # under the lock: two starts never both write experiment.json
        num_nodes = cfg.search_config().num_nodes
        tasks = []
        for k, g in enumerate(sample_genotypes(cfg.space, cfg.resolved_samples(), cfg.sample_seed, num_nodes)):
            path = exp.path / "genotypes" / f"random-{k}.json"
            if not path.exists():
                save_genotype(g, path)
            name = f"random-{k}"
            argv, res = _train_argv(cfg, path, cfg.select_seed, exp.run_dir(name), cfg.resolved_select_epochs(),
                                    selection=True)
            tasks.append(Task(name, "random", argv, res, meta={"index": k}))
        _Runner(exp, cfg, resume, retry_failed, log, on_change=lambda: summarize(exp.path)).run(tasks)
        summary = summarize(exp.path)
        _log_pick(summary, log)
    if run_final and summary.get("chosen"):
        return evaluate_final(cfg, exp.path, resume=True, retry_failed=retry_failed, log=log)
    return ExperimentResult(exp.path, summary)


def evaluate_final(cfg: ProtocolConfig, experiment: str | Path | None = None, genotype: str | None = None,
                   resume: bool = False, retry_failed: bool = False, log=print) -> ExperimentResult:
    """R full trainings of one cell with seeds final_seed.. (spec §5/§7.6); mean ± std of the test metric.

    In an existing select/random experiment the cell defaults to its pick and the runs join that experiment;
    otherwise ``genotype`` (a published name, a genotype.json or a run folder) starts a "final" experiment.
    """
    from .space.genotype import load_genotype

    exp = Experiment(experiment or _default_path("final"))
    if exp.exists() and exp.read().get("kind") in ("select", "random"):
        data = exp.read()
        stored = ProtocolConfig.from_dict(data["config"])
        # The final stage may bring its own settings; everything else is the experiment's.
        final_fields = {"final_runs", "final_seed", "final_epochs", "final_set", "jobs", "devices"}
        mine = {k: v for k, v in cfg.to_dict().items() if k in final_fields}
        cfg = stored.replace(**mine)
        if genotype is None:
            chosen = summarize(exp.path).get("chosen")
            if not chosen:
                raise RunDirError("has no chosen cell yet (finish the selection first, or pass --genotype)",
                                  str(exp.path))
            g = genotype_from_dict(chosen["genotype"])
            source = chosen["run"]
        else:
            g = load_genotype(genotype, kind=cfg.space)
            source = str(genotype)
        prev = data.get("final")
        if prev:
            if prev.get("genotype") != genotype_to_dict(g):
                raise ConfigError("the experiment's final evaluation uses another genotype "
                                  f"({prev.get('source')}); use a new --experiment for this one")
            bad = [f"{k}: experiment={prev.get(k)!r}, now={getattr(cfg, k)!r}"
                   for k in ("final_seed", "final_epochs", "final_set") if prev.get(k) != getattr(cfg, k)]
            if bad:
                raise ConfigError(["the final evaluation was started with other settings: " + "; ".join(bad)])
        data["final"] = {"genotype": genotype_to_dict(g), "source": source, "final_runs": cfg.final_runs,
                         "final_seed": cfg.final_seed, "final_epochs": cfg.final_epochs, "final_set": cfg.final_set}
        exp.write(data)
    else:
        if genotype is None:
            raise ConfigError("evaluate-final: give --genotype (or --experiment of a finished select/random run)")
        g = load_genotype(genotype, kind=cfg.space)
        extra = {"final": {"genotype": genotype_to_dict(g), "source": str(genotype), "final_runs": cfg.final_runs,
                           "final_seed": cfg.final_seed, "final_epochs": cfg.final_epochs,
                           "final_set": cfg.final_set}}
        exp.create("final", cfg, resume, extra)
        if resume:
            data = exp.read()
            if data.get("final", {}).get("genotype") != genotype_to_dict(g):
                raise ConfigError("the experiment evaluates another genotype; resume it without --genotype change")
            data["final"]["final_runs"] = cfg.final_runs
            exp.write(data)
    _check_loop_configs(cfg, "final")
    with exp.lock():
        path = exp.path / "genotypes" / "final.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_genotype(g, path)
        tasks = []
        for r in range(cfg.final_runs):
            seed = cfg.final_seed + r
            name = f"final-seed{seed}"
            argv, res = _train_argv(cfg, path, seed, exp.run_dir(name), cfg.final_epochs, selection=False,
                                    extra=cfg.final_set)
            tasks.append(Task(name, "final", argv, res, meta={"seed": seed}))
        # ``resume`` for the runs: a final stage added to an experiment continues its own runs.
        _Runner(exp, cfg, True, retry_failed, log, on_change=lambda: summarize(exp.path)).run(tasks)
        summary = summarize(exp.path)
    fin = summary.get("final") or {}
    if fin.get("n"):
        m = fin["metric"]
        log(f"final: {m} {fin['mean']:.3f} ± {fin['std']:.3f} over {fin['n']} run(s)"
            + (f"; {len(fin['failed'])} failed" if fin.get("failed") else ""))
    return ExperimentResult(exp.path, summary)


def _default_path(kind: str) -> Path:
    return Path("experiments") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _log_pick(summary: dict[str, Any], log) -> None:
    chosen = summary.get("chosen")
    failed = [r["name"] for r in summary.get("runs", []) if r.get("status") == "failed"]
    pending = [r["name"] for r in summary.get("runs", []) if r.get("status") not in ("done", "failed")]
    if chosen:
        log(f"chosen: {chosen['run']} ({chosen['metric']} {chosen['score']:.4g}); genotype in "
            f"{summary['experiment']}/genotypes/chosen.json")
    else:
        log("no cell chosen: no selection run finished")
    if failed:
        log(f"failed (excluded from the pick): {', '.join(failed)}")
    if pending:
        log(f"unfinished (continue with --resume): {', '.join(pending)}")


# ============================================================================================ summary

def _run_hours(run_dir: Path) -> float | None:
    """Compute time a run spent (its own wall clock, summed over resumes), in hours."""
    res = _read_json(run_dir / "results.json")
    if isinstance(res, dict) and isinstance(res.get("wall_seconds"), (int, float)):
        return float(res["wall_seconds"]) / 3600.0
    last = None
    mpath = run_dir / "metrics.jsonl"
    if mpath.exists():
        for line in mpath.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec.get("wall_seconds"), (int, float)):
                last = float(rec["wall_seconds"])
    return None if last is None else last / 3600.0


def _selection_score(space: str, run_dir: Path) -> tuple[str, float, float] | None:
    """(metric name, value, higher-is-better sign) of a finished selection training; None if unreadable."""
    res = _read_json(run_dir / "results.json")
    if not isinstance(res, dict):
        return None
    if space == "rnn":
        v = res.get("valid_ppl")
        return ("valid_ppl", float(v), -1.0) if isinstance(v, (int, float)) else None
    if res.get("eval_split") != "search_valid":  # never select on the test set
        return None
    v = res.get("test_top1")  # with eval_split=search_valid this is the accuracy on D_alpha
    return ("valid_acc", float(v), 1.0) if isinstance(v, (int, float)) and math.isfinite(v) else None


def summarize(path: str | Path) -> dict[str, Any]:
    """Read every run of an experiment, pick the best selection run, add up the cost; writes summary.json."""
    exp = Experiment(path)
    data = exp.read()
    kind, space = data.get("kind"), data.get("space", "cnn")
    cfg = data.get("config", {})
    runs = []
    names = sorted((p.stem for p in (exp.path / "status").glob("*.json")), key=_run_order)
    cost = {stage: {"gpu_hours": 0.0, "cpu_hours": 0.0} for stage in ("search", "selection", "final")}
    candidates = []
    for name in names:
        st = exp.status(name)
        run_dir = exp.run_dir(name)
        stage = st.get("stage", name.split("-")[0])
        row = {k: st.get(k) for k in ("name", "stage", "seed", "index", "status", "attempts", "returncode",
                                      "error", "device", "process_seconds")}
        row["stage"] = stage
        hours = _run_hours(run_dir)
        if hours is None and st.get("process_seconds"):
            hours = float(st["process_seconds"]) / 3600.0
        row["hours"] = hours
        if hours:
            bucket = {"search": "search", "select": "selection", "random": "selection"}.get(stage, "final")
            dev = "gpu_hours" if str(st.get("device", "cpu")).startswith("cuda") else "cpu_hours"
            cost[bucket][dev] += hours
        if stage in ("select", "random") and st.get("status") == "done":
            score = _selection_score(space, run_dir)
            if score is None:
                row["status"], row["error"] = "failed", "finished without a readable validation score"
            else:
                row["metric"], row["score"] = score[0], score[1]
                candidates.append((score[2] * score[1], _run_order(name), name, score))
        if stage == "search":
            g = _read_json(run_dir / "genotype.json")
            row["genotype"] = g if st.get("status") == "done" else None
        res = _read_json(run_dir / "results.json")
        if isinstance(res, dict):
            row["params"] = res.get("params")
            for k in ("test_error_percent", "test_ppl", "valid_ppl"):
                if k in res:
                    row[k] = res[k]
        runs.append(row)
    chosen = None
    if candidates:
        candidates.sort(key=lambda c: (-c[0], c[1]))
        _, _, name, (metric, value, _) = candidates[0]
        st = exp.status(name)
        gpath = (exp.run_dir(f"search-seed{st.get('seed')}") / "genotype.json" if name.startswith("select-")
                 else exp.path / "genotypes" / f"{name}.json")
        gdict = _read_json(gpath)
        res = _read_json(exp.run_dir(name) / "results.json") or {}
        chosen = {"run": name, "metric": metric, "score": value, "genotype": gdict,
                  "search_run": f"search-seed{st.get('seed')}" if name.startswith("select-") else None,
                  "params": res.get("params")}
        if gdict is not None:
            from .checkpoint import atomic_write_text

            atomic_write_text(exp.path / "genotypes" / "chosen.json", json.dumps(gdict, indent=2) + "\n")
    final = _final_stats(space, [r for r in runs if r["stage"] == "final"])
    method = data.get("method", "darts")
    search_cost = cost["selection"] if method == "random" else cost["search"]  # spec §9 cost accounting
    summary = {
        "experiment": str(exp.path), "kind": kind, "space": space, "method": method,
        "order": cfg.get("order"), "config": cfg,
        "runs": runs, "chosen": chosen, "final": final,
        "final_genotype": (data.get("final") or {}).get("genotype"),
        "final_source": (data.get("final") or {}).get("source"),
        "cost": cost,
        "search_cost_gpu_days": search_cost["gpu_hours"] / 24.0,
        "search_cost_cpu_days": search_cost["cpu_hours"] / 24.0,
        "num_ops": len(CNN_SEARCH_OPS if space == "cnn" else RNN_SEARCH_OPS),
        "complete": all(r["status"] in ("done", "failed") for r in runs),
        "failed": [r["name"] for r in runs if r["status"] == "failed"],
        "updated": _now(),
    }
    write_json(exp.path / SUMMARY_FILE, summary)
    return summary


def _final_stats(space: str, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rows:
        return None
    metric = "test_ppl" if space == "rnn" else "test_error_percent"
    done = [r for r in rows if r["status"] == "done" and isinstance(r.get(metric), (int, float))
            and math.isfinite(r[metric])]
    vals = [float(r[metric]) for r in done]
    n = len(vals)
    mean = sum(vals) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else (0.0 if n == 1 else float("nan"))
    out = {"metric": metric, "n": n, "mean": mean, "std": std, "values": vals,
           "runs": [r["name"] for r in done], "failed": [r["name"] for r in rows if r["status"] == "failed"],
           "params": next((r.get("params") for r in done if r.get("params")), None)}
    if space == "rnn":
        vv = [float(r["valid_ppl"]) for r in done if isinstance(r.get("valid_ppl"), (int, float))]
        out["valid_mean"] = sum(vv) / len(vv) if vv else float("nan")
    return out


def _run_order(name: str) -> tuple[int, int, str]:
    stage = {"search": 0, "select": 1, "random": 2, "final": 3}.get(name.split("-")[0], 9)
    digits = "".join(c for c in name.rsplit("-", 1)[-1] if c.isdigit())
    return stage, int(digits) if digits else 0, name


def load_summary(path: str | Path) -> dict[str, Any]:
    """The experiment's summary, recomputed from its runs (so it is current even after a hard kill)."""
    return summarize(path)
