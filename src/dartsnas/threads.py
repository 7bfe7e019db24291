"""The CPU intra-op thread count when the user has not chosen one (issue 12 item 1; measured in
benchmarks/threads.py, figures in the README).

Small runs (the quick and tiny presets on the built-in data) are launch-bound: more threads add
synchronisation, and beside any other busy process they stall (the quick search on 2 cores: 59 s idle
either way, but 195 s against 88 s with a busy process beside it). They get one thread. Larger runs
(real datasets) gain from a few threads; they get min(cores, 4), and their share of the cores when the
protocol runs several at once. ``OMP_NUM_THREADS`` or ``--threads`` always win.
"""

from __future__ import annotations

import os

LARGE_RUN_THREADS = 4


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a SLURM allocation), else os.cpu_count()."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose_threads(small: bool, explicit: int | None = None, jobs: int = 1) -> tuple[int, str]:
    """(threads, why) for a CPU run; ``why`` is empty when the user chose (nothing to announce).

    ``small``: a run on the built-in data. ``jobs``: runs sharing the machine at once (the protocol).
    """
    if explicit is not None:
        return max(1, int(explicit)), ""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), ""
    if small:
        return 1, ("small run on the built-in data: one thread is fastest and robust to other load; "
                   "--threads N or OMP_NUM_THREADS to change")
    share = max(1, cpu_cores() // max(1, jobs))
    n = min(share, LARGE_RUN_THREADS)
    return n, (f"min(cores available to each run = {share}, {LARGE_RUN_THREADS}); --threads N or "
               "OMP_NUM_THREADS to change")


def set_threads(n: int) -> None:
    """Set torch's intra-op threads and export the count to child processes (data workers, torchrun)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
