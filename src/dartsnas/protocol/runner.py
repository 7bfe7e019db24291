"""The scheduler of runs: each run a ``python -m dartsnas search|train`` process, ``jobs`` at a time, in
dependency order, every outcome recorded in the experiment directory.

A run is launched as a local process (pinned to one GPU, or a CPU process with its thread count) or, with
``launcher="slurm"``, as a SLURM job through submitit (``"submitit-local"``: submitit's local executor, the
same job path on this machine). Either way the run's command, log, status and resume are the same: a run
with a checkpoint continues with its ``--resume`` command, a failed one is recorded with its error.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ConfigError
from ..loops.common import Interrupted
from .config import ProtocolConfig
from .experiment import Experiment, Task, _now

_ANNOUNCED: set[str] = set()
FAULT_ENV = "DARTSNAS_PROTOCOL_FAULT"  # tests: "run-name=<DARTSNAS_FAULT value>[;...]"


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


def check_devices(cfg, run_devices: list[str] = ()) -> None:
    """Refuse, before anything is created, what would only fail (or silently run elsewhere) once the runs start:
    ``devices`` naming GPUs this machine does not have (no CUDA, or an id that is not visible), and a run
    ``device`` (a ``--search-set``/``--train-set`` override, a preset) that its slot cannot give it. Each local
    run sees one GPU, as ``cuda:0`` (``CUDA_VISIBLE_DEVICES``), or none on a CPU slot. ``cfg``: a ProtocolConfig
    or CompareConfig; runs on SLURM (``launcher``) get their devices there and are not checked here."""
    if cfg.launcher != "local":
        return
    if cfg.devices and cfg.devices != "cpu":
        wanted = [s.strip() for s in cfg.devices.split(",")]
        visible = _visible_gpus()
        if not visible:
            raise ConfigError(
                f"devices: GPU {','.join(wanted)} requested but CUDA is not available here (use --devices cpu, "
                "or leave it out: every visible GPU, else the CPU)"
            )
        missing = [g for g in wanted if g not in visible]
        if missing:
            raise ConfigError(
                f"devices: no GPU {','.join(missing)} here (visible GPUs: {','.join(visible)}; "
                "CUDA_VISIBLE_DEVICES limits them)"
            )
    from ..loops.common import resolve_device

    on_cpu = "cpu" in _device_slots(cfg)
    for name in dict.fromkeys(run_devices):  # each distinct device once
        if name in ("auto", "cpu"):
            continue
        try:
            dev = resolve_device(name)  # not a device, or CUDA requested where there is none
        except ConfigError as e:
            raise ConfigError(f"{e} (the runs' device, from --search-set/--train-set/--set or a preset)") from None
        if dev.type != "cuda":
            continue
        if on_cpu:
            raise ConfigError(
                f"device: {name!r} requested for the runs but they run on the CPU (--devices cpu); "
                "use device=auto, or give them GPUs with --devices"
            )
        if dev.index:
            raise ConfigError(
                f"device: {name!r}: each run sees only the one GPU --devices gives it, as cuda:0; "
                "choose the GPUs with --devices instead"
            )


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
            return ln[len("dartsnas:") :].strip()
    return " | ".join(lines[-3:])[-500:] if lines else "no output"


class _Local:
    """A run as a local subprocess."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid
        self.job_id = None

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class _Job:
    """A run as a submitit job (SLURM or submitit's local executor); its result is the run's exit code."""

    def __init__(self, job):
        self.job = job
        self.job_id = str(job.job_id)
        self.pid = None
        self.error: str | None = None

    def poll(self) -> int | None:
        if not self.job.done():
            return None
        try:
            return int(self.job.result())
        except Exception as e:  # noqa: BLE001 - cancelled, timed out, node failure: the run did not finish
            self.error = f"job {self.job_id} ended without a result ({str(e).strip().splitlines()[-1][:200]})"
            return -int(signal.SIGTERM)

    def stop(self) -> None:
        if not self.job.done():
            self.job.cancel(check=False)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.poll()
            if rc is not None:
                return rc
            time.sleep(0.2)
        return -int(signal.SIGKILL)


class RunJob:
    """What a submitit job runs: ``python -m dartsnas ARGV`` with the output appended to the run's log; the
    result is its exit code. The command is chosen when the job starts (the ``--resume`` one when the run
    has a checkpoint), so a requeued job (preemption, time limit) continues the run. A signal to the job
    (scancel, the time-limit warning) is passed to the run as SIGTERM: it saves a checkpoint and stops."""

    def __init__(self, argv: list[str], resume_argv: list[str], run_dir: str, log_path: str, env: dict[str, str]):
        self.argv, self.resume_argv, self.run_dir, self.log_path, self.env = argv, resume_argv, run_dir, log_path, env

    def __call__(self) -> int:
        argv = self.resume_argv if (Path(self.run_dir) / "checkpoint.pt").exists() else self.argv
        env = {**os.environ, **self.env}
        with open(self.log_path, "a") as log:
            log.write(f"=== {_now()} in job: dartsnas {' '.join(argv)}\n")
            log.flush()
            child = subprocess.Popen(
                [sys.executable, "-m", "dartsnas", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
            pid_file = Path(self.log_path).with_suffix(".pid")
            pid_file.write_text(str(child.pid))  # so an experiment process that lost this job can stop the run
            try:
                return child.wait()
            except BaseException:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
                    try:
                        child.wait(timeout=120)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()
                raise

    def checkpoint(self, *args, **kwargs):
        """submitit's hook on preemption or time limit: requeue the same job (it resumes from the checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _src_dir() -> str:
    return str(Path(__file__).resolve().parents[2])


def make_executor(cfg: ProtocolConfig, folder: Path):
    """The submitit executor of ``cfg.launcher`` ("slurm" or "submitit-local")."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"launcher: {cfg.launcher!r} needs submitit: pip install 'dartsnas[cluster]'") from None
    setup = [f"export PYTHONPATH={shlex.quote(_src_dir())}${{PYTHONPATH:+:$PYTHONPATH}}", *cfg.slurm_setup]
    if cfg.launcher == "slurm":
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = {
            "timeout_min": cfg.slurm_time,
            "gpus_per_node": cfg.slurm_gpus,
            "cpus_per_task": cfg.slurm_cpus,
            "nodes": 1,
            "tasks_per_node": 1,
            "slurm_setup": setup,
        }
        if cfg.slurm_mem is not None:
            params["mem_gb"] = cfg.slurm_mem
        if cfg.slurm_partition:
            params["slurm_partition"] = cfg.slurm_partition
        if cfg.slurm_account:
            params["slurm_account"] = cfg.slurm_account
    else:
        ex = submitit.AutoExecutor(folder=folder, cluster="local")
        params = {"timeout_min": cfg.slurm_time, "gpus_per_node": 0, "local_setup": setup}
    ex.update_parameters(**params)
    return ex


def _run_pid(pid_file: Path) -> int | None:
    """The pid of a run started by a submitit job on this machine, if that run still lives."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"dartsnas" in cmdline else None


class Runner:
    """Runs tasks, ``len(slots)`` at a time, in dependency order; records every outcome."""

    def __init__(
        self,
        exp: Experiment,
        cfg: ProtocolConfig,
        resume: bool,
        retry_failed: bool,
        log,
        small: bool = False,
        on_change=None,
    ):
        self.exp, self.cfg, self.resume, self.retry_failed, self.log = exp, cfg, resume, retry_failed, log
        self.jobs = cfg.launcher != "local"
        self.slots = ["job"] * cfg.jobs if self.jobs else _device_slots(cfg)
        self.on_change = on_change or (lambda: None)
        self.executor = make_executor(cfg, exp.path / "jobs") if self.jobs else None
        self.threads: int | None = None
        if "cpu" in self.slots:
            from ..threads import choose_threads

            self.threads, why = choose_threads(small, explicit=cfg.threads, jobs=len(self.slots))
            line = f"threads: {self.threads} per run ({why})"
            if why and line not in _ANNOUNCED:  # once per process, also when select goes on to the final stage
                _ANNOUNCED.add(line)
                log(line)
        elif self.jobs and cfg.threads:
            self.threads = cfg.threads

    def _env(self, task: Task, slot: str) -> dict[str, str]:
        """The variables a run gets on top of the inherited environment."""
        env = {
            "PYTHONPATH": _src_dir() + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
            "DARTSNAS_FAULT": _child_fault(task.name) or "",
        }
        if self.threads is not None:
            env["OMP_NUM_THREADS"] = str(self.threads)
        if slot == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        elif slot != "job":
            env["CUDA_VISIBLE_DEVICES"] = slot
        return env

    def _device(self, slot: str) -> str:
        if slot == "job":
            return "cuda" if self.cfg.launcher == "slurm" and self.cfg.slurm_gpus > 0 else "cpu"
        return "cpu" if slot == "cpu" else f"cuda:{slot}"

    def _take_over(self, task: Task) -> None:
        """A run recorded as running by an experiment process that died. Local runs died with it
        (PR_SET_PDEATHSIG); a submitit job may still run: stop it (SIGTERM: it saves its checkpoint) and wait,
        so that one writer continues the run."""
        st = self.exp.status(task.name)
        if st.get("status") != "running" or not st.get("job_id"):
            return
        if st.get("launcher") == "slurm":
            import submitit

            job = submitit.SlurmJob(self.exp.path / "jobs", str(st["job_id"]))
            if not job.done():
                self.log(f"[{task.name}] stopping SLURM job {st['job_id']} left by a previous experiment process")
                job.cancel(check=False)  # scancel: SIGTERM to the run, which saves its checkpoint
                _Job(job).wait(timeout=180)
            return
        pid_file = self.exp.log_path(task.name).with_suffix(".pid")
        pid = _run_pid(pid_file)
        if pid is not None:
            self.log(f"[{task.name}] stopping the run left by a previous experiment process (pid {pid})")
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 120
            while _run_pid(pid_file) == pid and time.monotonic() < deadline:
                time.sleep(0.1)

    def _launch(self, task: Task, slot: str):
        self._take_over(task)
        run_dir = self.exp.run_dir(task.name)
        st = self.exp.status(task.name)
        continuing = (run_dir / "checkpoint.pt").exists()
        if not continuing and run_dir.exists():
            shutil.rmtree(run_dir)  # a fresh start: nothing usable was saved
        argv = task.resume_argv if continuing else task.argv
        log_path = self.exp.log_path(task.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        where = {"job": f"a {self.cfg.launcher} job"}.get(slot, slot)
        with open(log_path, "a") as logf:
            logf.write(f"\n=== {_now()} attempt {st.get('attempts', 0) + 1} on {where}: dartsnas {' '.join(argv)}\n")
        env = self._env(task, slot)
        if self.jobs:
            self.executor.update_parameters(name=f"dartsnas-{task.name}")
            handle = _Job(self.executor.submit(RunJob(task.argv, task.resume_argv, str(run_dir), str(log_path), env)))
            extra = {"job_id": handle.job_id, "launcher": self.cfg.launcher}
        else:
            with open(log_path, "a") as logf:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "dartsnas", *argv],
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **env},
                    preexec_fn=_set_pdeathsig if sys.platform.startswith("linux") else None,
                )
            handle = _Local(proc)
            extra = {"job_id": None, "launcher": "local"}
        self.exp.set_status(
            task.name,
            stage=task.stage,
            status="running",
            attempts=st.get("attempts", 0) + 1,
            started=_now(),
            device=self._device(slot),
            command=["dartsnas", *argv],
            continued=continuing,
            run_dir=f"runs/{task.name}",
            pid=handle.pid,
            **extra,
            **task.meta,
        )
        place = {"cpu": "CPU", "job": f"{self.cfg.launcher} job {handle.job_id}"}.get(slot, f"GPU {slot}")
        self.log(f"[{task.name}] {'continuing' if continuing else 'starting'} on {place} (log: {log_path})")
        return handle

    def run(self, tasks: list[Task]) -> None:
        todo: list[Task] = []
        for t in tasks:
            st = self.exp.status(t.name).get("status")
            if st == "done":
                continue
            if st == "failed" and not self.retry_failed:
                self.log(
                    f"[{t.name}] failed before ({self.exp.status(t.name).get('error')}); kept as failed "
                    "(--retry-failed runs it again)"
                )
                continue
            if st == "failed":
                shutil.rmtree(self.exp.run_dir(t.name), ignore_errors=True)
            todo.append(t)
        running: dict[str, tuple[_Local | _Job, int, float, Task]] = {}
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
                    raise ExperimentInterrupted(stop[0], self.exp.path)
                progressed = False
                for t in list(todo):
                    if not free:
                        break
                    dep_state = [self.exp.status(d).get("status") for d in t.deps]
                    if any(s == "failed" for s in dep_state):
                        bad = next(d for d in t.deps if self.exp.status(d).get("status") == "failed")
                        self.exp.set_status(
                            t.name,
                            stage=t.stage,
                            status="failed",
                            returncode=None,
                            error=f"not run: {bad} failed",
                            finished=_now(),
                            **t.meta,
                        )
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
                    raise RuntimeError(
                        "protocol: tasks wait on runs that are not scheduled: " + ", ".join(t.name for t in todo)
                    )
                for name, (proc, slot_i, t0, t) in list(running.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    del running[name]
                    free.append(slot_i)
                    free.sort()
                    self._finished(t, rc, time.perf_counter() - t0, getattr(proc, "error", None))
                    self.on_change()
                time.sleep(0.05)
        finally:
            for sig, old in old_handlers.items():
                signal.signal(sig, old)

    def _finished(self, task: Task, rc: int, seconds: float, job_error: str | None = None) -> None:
        st = self.exp.status(task.name)
        spent = float(st.get("process_seconds", 0.0)) + seconds
        if rc == 0:
            self.exp.set_status(
                task.name, status="done", returncode=0, error=None, finished=_now(), process_seconds=spent, pid=None
            )
            self.log(f"[{task.name}] done in {seconds:.1f}s")
            return
        interrupted = rc < 0 or rc in (128 + signal.SIGTERM, 128 + signal.SIGINT, 128 + signal.SIGKILL)
        error = _last_error(self.exp.log_path(task.name))
        if job_error:
            error = f"{job_error}; {error}"
        elif rc < 0:
            error = f"killed by signal {-rc}" + (f" ({error})" if error else "")
        self.exp.set_status(
            task.name,
            status="interrupted" if interrupted else "failed",
            returncode=rc,
            error=error,
            finished=_now(),
            process_seconds=spent,
            pid=None,
        )
        self.log(f"[{task.name}] {'interrupted' if interrupted else 'FAILED'} (exit {rc}): {error}")

    def _stop_all(self, running: dict) -> None:
        """Forward the stop to every run (they save a checkpoint), wait, and record them as interrupted."""
        for proc, *_ in running.values():
            proc.stop()
        deadline = time.monotonic() + 120
        for name, (proc, _slot_i, t0, _t) in running.items():
            rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            st = self.exp.status(name)
            self.exp.set_status(
                name,
                status="interrupted",
                returncode=rc,
                finished=_now(),
                process_seconds=float(st.get("process_seconds", 0.0)) + time.perf_counter() - t0,
                error="stopped with the experiment; continue with --resume",
                pid=None,
            )
        running.clear()


class ExperimentInterrupted(Interrupted):
    def __init__(self, signum: int, path: Path):
        super().__init__(signum, path)
        self.args = (f"interrupted by signal {signum}; finished runs are kept in {path}; continue with --resume",)

    def __str__(self) -> str:
        return self.args[0]
