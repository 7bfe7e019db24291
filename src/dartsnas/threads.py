"""The CPU intra-op thread count when the user has not chosen one (issue 12 item 1; measured with
benchmarks/threads.py and benchmarks/search_step.py, figures in the README).

Small runs (the quick and tiny presets on the built-in data) get one thread: on a busy 2-core machine the
quick search needs 25.7 CPU seconds at one thread whatever the load, while two threads used 4-15 times
that without finishing. Larger runs (real datasets) get min(cores per run, 4) only where each run has at
least 4 cores: on 2 cores the paper-size search step was also slower with two threads than with one
(under load), and more threads were not measured here. The protocol divides the cores by its ``jobs``.
``OMP_NUM_THREADS`` or ``--threads`` always win.
"""

from __future__ import annotations

import os

LARGE_RUN_THREADS = 4
MIN_CORES_FOR_MORE = 4  # below this many cores per run, one thread (measured on 2 cores)


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
        return 1, (
            "small run on the built-in data: one thread is fastest and robust to other load; "
            "--threads N or OMP_NUM_THREADS to change"
        )
    share = max(1, cpu_cores() // max(1, jobs))
    if share < MIN_CORES_FOR_MORE:
        return 1, (f"{share} core(s) per run: one thread is faster there; --threads N or OMP_NUM_THREADS to change")
    n = min(share, LARGE_RUN_THREADS)
    return n, (
        f"min(cores available to each run = {share}, {LARGE_RUN_THREADS}); --threads N or OMP_NUM_THREADS to change"
    )


def set_threads(n: int) -> None:
    """Set torch's intra-op threads and export the count to child processes (data workers, torchrun)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
