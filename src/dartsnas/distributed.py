"""Joining the process group so that torchrun restarts work (issue 12, item 10).

Why restarts failed: torchrun's default (static) rendezvous keeps one TCPStore, hosted by the agent, for the
whole job, and every attempt's workers join the default process group under the same store keys
(``default_pg/...``). After ``--max-restarts`` restarts the workers, the store still holds the killed
workers' gloo addresses; a new worker that reads them before its peer has overwritten them connects to a
dead port (``Connection refused``) until gloo's retries run out. Whether the peer wins that race is chance,
hence "2 runs of 5". The fix keys every attempt apart: the store is wrapped in a ``PrefixStore`` named
after ``TORCHELASTIC_RESTART_COUNT``, so an attempt reads only addresses its own workers wrote. (The c10d
rendezvous backend, ``--rdzv-backend=c10d``, creates a new store per attempt and was not affected.)
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor


def init_process_group(backend: str, timeout: timedelta | None = None) -> None:
    """``dist.init_process_group(backend)`` from torchrun's environment, with a fresh key space per attempt.

    Outside torchrun's elastic agent (no ``TORCHELASTIC_RESTART_COUNT``) this is the plain env:// join.
    """
    kw = {} if timeout is None else {"timeout": timeout}
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        dist.init_process_group(backend, **kw)
        return
    from torch.distributed.rendezvous import rendezvous

    store, rank, world = next(rendezvous("env://", **kw))
    store = dist.PrefixStore(f"dartsnas/attempt-{attempt}", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, **kw)


_LEFT_GROUP = False


def shutdown() -> None:
    """Leave the process group after a command that ended well (no-op outside one).

    The ranks first meet at a barrier, so none leaves while rank 0 still writes the run's results. Without
    leaving, gloo's worker threads outlive the interpreter's teardown and a finished worker can abort at exit
    ("terminate called without an active exception", SIGABRT) although its work is saved, and torchrun then
    reports the job failed. Only called on success: destroying a group while a peer still waits in a
    collective could hang.
    """
    global _LEFT_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _LEFT_GROUP = True


def exit_process(code: int) -> NoReturn:
    """End the process with ``code``. A process that left a process group skips the interpreter's teardown
    (``os._exit`` after flushing the logs and streams): leaving the group was not enough to stop the abort at
    exit above in about one run of ten (CI, 2026-11-30), and nothing is left to do at that point."""
    if _LEFT_GROUP:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    raise SystemExit(code)


def average_(tensors: list[Tensor]) -> list[Tensor]:
    """Replace every tensor by its mean over the ranks, in place, with one all-reduce (flattened).

    Returns the list. The tensors must have the same shapes, dtype and device on every rank.
    """
    if not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
    return tensors
