"""The quick search (the README's first command) with and without a competing busy process, at the machine's
default intra-op thread count (one per core) and at one thread. Not a test: it takes minutes.

Each case runs ``python -m dartsnas search --preset quick`` in a fresh process with ``OMP_NUM_THREADS`` set
explicitly (so the CLI's own thread rule does not decide), optionally beside a Python busy loop in another
process, and records the wall time, the CPU seconds of the search process (``os.wait4``) and the load
average before and after. Prints one JSON object and writes it with ``--out``.

    PYTHONPATH=src python benchmarks/threads.py --out benchmarks/results/threads.json
    PYTHONPATH=src python benchmarks/threads.py --epochs 2 --cases idle-1,busy-1   # a shorter look
    PYTHONPATH=src python benchmarks/threads.py --epochs 2 --case-timeout 600      # on a loaded machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
BUSY = "while True:\n    pass\n"


def _case_threads(name: str, cores: int) -> int:
    """'idle-default' -> cores, 'busy-1' -> 1."""
    tail = name.split("-", 1)[1]
    return cores if tail == "default" else int(tail)


def run_case(name: str, epochs: int | None, cores: int, timeout: float | None = None) -> dict:
    threads = _case_threads(name, cores)
    busy = name.startswith("busy")
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": str(threads),
    }
    env.pop("DARTSNAS_FAULT", None)
    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        if hog:
            time.sleep(1.0)  # let the busy loop take its core
        load_before = os.getloadavg()
        with tempfile.TemporaryDirectory(prefix="dartsnas-threads-") as tmp:
            argv = [
                sys.executable,
                "-m",
                "dartsnas",
                "search",
                "--preset",
                "quick",
                "--no-progress",
                "--run-dir",
                str(Path(tmp) / "run"),
            ]
            if epochs is not None:
                argv += ["--epochs", str(epochs)]
            t0 = time.perf_counter()
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            finished = True
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if timeout is not None and time.perf_counter() - t0 > timeout:
                    proc.kill()  # too slow to wait for: recorded as unfinished, with the CPU time it used
                    finished = False
                    _, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.2)
            wall = time.perf_counter() - t0
            proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if hog:
            hog.kill()
            hog.wait()
    return {
        "case": name,
        "threads": threads,
        "busy_process": busy,
        "finished": finished,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "returncode": proc.returncode,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=None, help="search epochs (default: the quick preset's 8)")
    p.add_argument(
        "--cases",
        default="idle-default,idle-1,busy-default,busy-1",
        help="comma list of {idle,busy}-{default,N}; default = one thread per core",
    )
    p.add_argument(
        "--case-timeout",
        type=float,
        default=None,
        help="stop a case after this many seconds and record it as unfinished (with its CPU time)",
    )
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    results = []
    for name in args.cases.split(","):
        results.append(run_case(name.strip(), args.epochs, cores, args.case_timeout))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    out = {
        "benchmark": "quick search, threads x competing busy process",
        "cores": cores,
        "machine": platform.platform(),
        "python": platform.python_version(),
        "epochs": args.epochs or "quick preset (8)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": results,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
