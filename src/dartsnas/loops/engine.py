"""The one epoch-loop driver every run kind goes through (CNN and recurrent search and training).

The driver owns what is the same for every loop: the run directory (``config.json``, ``metrics.jsonl``,
``checkpoint.pt``), the resume check (the config against the checkpoint's, field by field), the checkpoint
payload (kind, config, the task's state dataclass serialised generically with every RNG, the running sums),
the atomic save after every epoch, stop-on-signal (SIGTERM/SIGINT: save at the next step boundary and
raise ``Interrupted``, which the CLI turns into exit 128 + N), the test fault hooks, the progress bar, the
per-epoch summary line, the duration estimate on a CPU, the metrics hooks (TensorBoard) and, through the
task's ``check``, the deferred non-finite check of graph mode.

A task supplies the rest through the ``Task`` interface::

    task.kind, task.cfg, task.state (a LoopState dataclass), task.sums (Sums), task.device
    task.steps_per_epoch()          -> int (for the progress bar; an estimate is fine)
    task.begin_epoch()              set the epoch's learning rate etc.
    task.batches()                  -> iterator over the epoch's remaining batches (resumes mid-epoch)
    task.step(batch)                -> {name: device scalar}, added to task.sums without a host sync
    task.check()                    raise NonFiniteError for a failure found after the fact (graph mode)
    task.stats(sums)                -> the numbers on the progress line
    task.end_of_epoch(sums)         -> the epoch's metrics record (evaluation included)
    task.summary(record)            -> the epoch's one-line summary
    task.new_epoch()                reset per-epoch positions (streams, hidden states) after the epoch
    task.after_epoch(record, run)   write per-epoch outputs (genotype, pictures, curves, best weights)
    task.finished()                 -> True to stop before ``cfg.epochs`` (early stopping)
    task.nan_retries                how often a NonFiniteError reloads the last checkpoint before it stops
                                    the run (``Run.reload``; default 0: stop at once, exit 6)
    task.extra_state()/load_extra(ck)  checkpoint entries that are not state fields (collective under DDP)

The epoch counter is 0-based inside (``state.epoch`` = epochs done; the ``epoch`` field of metrics records
and checkpoints is the 0-based index, as before); every message a user reads counts epochs from 1.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import CheckpointError, DartsError, NonFiniteError
from .common import (
    CHECKPOINT,
    Interrupted,
    Metrics,
    StopRequest,
    check_resume_config,
    default_run_dir,
    inject_fault,
    prepare_run_dir,
    reset_faults,
    write_json,
)
from .logs import Log, TensorBoardHook, emitter
from .progress import Progress, RunEstimate
from .state import LoopState, Sums, load_state_dict, state_dict


@dataclass(kw_only=True)
class Ranks:
    """The process layout: one process, or ``world`` ranks under torchrun (rank 0 writes the files)."""

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 and hand its result (or its DartsError) to every rank."""
        if not self.distributed:
            return fn()
        import torch.distributed as dist

        box: list[Any] = [None]
        if self.main:
            try:
                box[0] = ("ok", fn())
            except DartsError as e:
                box[0] = ("err", e)
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status == "err":
            raise value
        return value

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t


class Task:
    """Defaults for the optional parts of the interface (see the module docstring)."""

    kind: str
    cfg: Any
    state: LoopState
    sums: Sums
    device: torch.device
    seconds_key = "epoch_seconds"  # the record's field for the epoch's duration
    nan_retries = 0  # reloads of the last checkpoint after a non-finite value (0: stop at once)

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def begin_epoch(self) -> None:
        pass

    def batches(self) -> Iterator[Any]:
        raise NotImplementedError

    def step(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def check(self) -> None:
        pass

    def stats(self, sums: dict[str, float]) -> dict[str, float]:
        return {}

    def end_of_epoch(self, sums: dict[str, float]) -> dict[str, Any]:
        raise NotImplementedError

    def summary(self, record: dict[str, Any]) -> str:
        return f"epoch {record['epoch'] + 1}/{self.cfg.epochs}"

    def new_epoch(self) -> None:
        pass

    def after_epoch(self, record: dict[str, Any], run: Run) -> None:
        pass

    def finished(self) -> bool:
        return False

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra(self, ck: dict[str, Any]) -> None:
        pass


class Run:
    """One run directory and the loop over its epochs.

    ``Run(cfg, kind, run_dir, resume, prefix, log)`` prepares (or reopens) the directory and, when resuming,
    loads and checks the checkpoint (``run.checkpoint``); the caller then builds its task (data, model,
    the task's own checks of the checkpoint) and calls ``run.start(task)`` and ``run.loop(task)``.
    """

    def __init__(
        self,
        cfg: Any,
        kind: str,
        run_dir: str | Path | None,
        resume: bool,
        prefix: str,
        log: Log | None = None,
        ranks: Ranks | None = None,
    ):
        self.cfg, self.kind, self.ranks = cfg, kind, ranks or Ranks()
        self.log = emitter(log) if self.ranks.main else (lambda *a, **k: None)
        self.path = Path(
            self.ranks.on_main(lambda: prepare_run_dir(run_dir or default_run_dir(prefix), resume, self.log))
        )
        self.checkpoint_path = self.path / CHECKPOINT
        self.metrics = Metrics(self.path / "metrics.jsonl")
        self.hooks: list[Callable[[dict[str, Any]], None]] = []
        self.checkpoint: dict[str, Any] | None = None
        if resume:
            self.checkpoint = load_checkpoint(self.checkpoint_path, expect_kind=kind)
            check_resume_config(cfg, self.checkpoint, self.checkpoint_path, self.log)

    # -- setup --

    def start(self, task: Task, files: Iterable[tuple[str, Callable[[Path], None]]] = ()) -> None:
        """Restore the task from the checkpoint (when resuming), write ``config.json`` and the task's
        start-up ``files`` (name, writer) and drop metrics records the checkpoint does not cover."""
        st = task.state
        if self.checkpoint is not None:
            ck = self.checkpoint
            try:
                load_state_dict(st, ck, task.device)
                task.sums.load_state_dict(ck["sums"])
                if not self.ranks.main:  # the saved sums are global; rank 0 carries them on
                    task.sums.zero()
                task.load_extra(ck)
            except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
                raise CheckpointError(
                    f"does not match this {self.kind} run ({type(e).__name__}: {str(e)[:200]})",
                    str(self.checkpoint_path),
                ) from None
            self.log(self.resume_message(task))
        if self.ranks.main:
            write_json(self.path / "config.json", {"kind": self.kind, **self.cfg.to_dict()})
            for _, write in files:
                write(self.path)
            self.metrics.truncate_after(st.epoch)
        if getattr(self.cfg, "tensorboard", False) and self.ranks.main:
            self.hooks.append(TensorBoardHook(self.path))

    def resume_message(self, task: Task) -> str:
        st, epochs = task.state, task.cfg.epochs
        if st.epoch >= epochs or task.finished():
            return f"resumed {self.path}: the run is already complete ({st.epoch} of {epochs} epochs)"
        where = f"after step {st.step_in_epoch}" if st.step_in_epoch else "at its start"
        return f"resumed {self.path} in epoch {st.epoch + 1}/{epochs}, {where}"

    # -- checkpoints --

    def payload(self, task: Task) -> dict[str, Any]:
        """The checkpoint of ``task`` (collective under DDP: call on every rank)."""
        sums = self.ranks.all_reduce(task.sums.data.clone())
        return {
            "kind": self.kind,
            "config": self.cfg.to_dict(),
            **state_dict(task.state),
            "sums": task.sums.state_dict(sums),
            **task.extra_state(),
        }

    def save(self, task: Task) -> None:
        task.check()  # never save a state that took a non-finite step (graph mode)
        payload = self.payload(task)
        if self.ranks.main:
            save_checkpoint(self.checkpoint_path, payload)

    def history(self) -> list[dict[str, Any]]:
        """The epoch records of ``metrics.jsonl`` (rank 0; empty elsewhere)."""
        if not self.ranks.main:
            return []
        return [r for r in self.metrics.read() if "epoch" in r and r.get("event") != "final"]

    def record(self, record: dict[str, Any]) -> None:
        """Append a record to ``metrics.jsonl`` (rank 0) and hand it to the metrics hooks."""
        if self.ranks.main:
            self.metrics.append(record)
            for hook in self.hooks:
                hook(record)

    # -- the loop --

    def loop(self, task: Task) -> None:
        st, cfg = task.state, task.cfg
        estimate = RunEstimate(task.device.type == "cpu" and self.ranks.main)
        reset_faults()
        retries = 0  # reloads of the current checkpoint (task.nan_retries); a new checkpoint starts again at 0
        try:
            with StopRequest() as stop:
                if task.nan_retries and not self.checkpoint_path.exists():
                    self.save(task)  # something to go back to after a NaN in the first epoch
                while st.epoch < cfg.epochs and not task.finished():
                    t0 = time.perf_counter()
                    try:
                        self._epoch(task, stop, estimate, t0)
                    except NonFiniteError as e:
                        if retries >= task.nan_retries:
                            if task.nan_retries:
                                self.log(f"giving up after {retries} reloads (nan_retries={task.nan_retries})")
                            raise
                        retries += 1
                        self.reload(task, e, retries, time.perf_counter() - t0)
                        continue
                    retries = 0
        finally:
            for hook in self.hooks:
                close = getattr(hook, "close", None)
                if close is not None:
                    close()

    def _epoch(self, task: Task, stop: StopRequest, estimate: RunEstimate, t0: float) -> None:
        """The rest of the current epoch: its steps, the evaluation, the record and the checkpoint."""
        st, cfg = task.state, task.cfg
        steps = task.steps_per_epoch()
        interval = cfg.log_interval
        task.begin_epoch()
        bar = Progress(steps, f"epoch {st.epoch + 1}/{cfg.epochs}", cfg.progress and self.ranks.main, interval=interval)
        for batch in task.batches():
            task.sums.add(task.step(batch))
            st.step_in_epoch += 1
            st.global_step += 1
            inject_fault(st.global_step)
            if self._stop_requested(stop, task.device):
                st.wall += time.perf_counter() - t0
                self.save(task)
                bar.close()
                raise Interrupted(stop.signum or signal.SIGTERM, self.checkpoint_path)
            if st.step_in_epoch % interval == 0 or st.step_in_epoch == steps:
                task.check()
            if bar.due(st.step_in_epoch):
                bar.update(st.step_in_epoch, task.stats(task.sums.values()))
            message = estimate.tick(max(0, (cfg.epochs - st.epoch) * steps - st.step_in_epoch))
            if message:
                self.log(message)
        bar.close()
        task.check()
        record = task.end_of_epoch(task.sums.values(self.ranks.all_reduce(task.sums.data.clone())))
        st.wall += time.perf_counter() - t0
        record.update({task.seconds_key: time.perf_counter() - t0, "wall_seconds": st.wall})
        self.log(task.summary(record))
        st.epoch += 1
        st.step_in_epoch = 0
        task.sums.zero()
        task.new_epoch()
        self.record(record)
        task.after_epoch(record, self)
        self.save(task)

    def reload(self, task: Task, error: NonFiniteError, attempt: int, spent: float) -> None:
        """After a non-finite value, go back to the last checkpoint and continue (spec §7.6, tasks with
        ``nan_retries``): the model, optimizers, data position, counters and sums come from the checkpoint;
        the random streams (Python, NumPy, torch, CUDA, the task's generators) go on from where the failed
        attempt left them, so the retry draws new segment lengths and dropout masks instead of replaying
        the step that failed. ``spent`` (the failed attempt's seconds) stays counted in the wall clock."""
        st = task.state
        ck = load_checkpoint(self.checkpoint_path, expect_kind=self.kind)
        wall = float(ck["wall"]) + spent
        try:
            load_state_dict(st, ck, task.device, rng=False)
            task.sums.load_state_dict(ck["sums"])
            task.load_extra(ck)
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(
                f"does not match this {self.kind} run ({type(e).__name__}: {str(e)[:200]})", str(self.checkpoint_path)
            ) from None
        st.wall = wall
        if self.ranks.main:  # as on resume: no record of an epoch the checkpoint does not cover
            self.metrics.truncate_after(st.epoch)
        where = f"after step {st.step_in_epoch}" if st.step_in_epoch else "at its start"
        self.log(
            f"{error}; reloaded {self.checkpoint_path} (epoch {st.epoch + 1}/{task.cfg.epochs}, {where}), "
            f"retry {attempt} of {task.nan_retries}; the random streams go on"
        )

    def _stop_requested(self, stop: StopRequest, device: torch.device) -> bool:
        requested = stop.requested
        if self.ranks.distributed:  # every rank must stop at the same step
            flag = torch.tensor([1.0 if requested else 0.0], device=device)
            requested = bool(self.ranks.all_reduce(flag, "max").item())
        return requested
