"""Shared pieces of the benchmark scripts: which ``src`` to import, the environment record, JSON output.

``--src PATH`` (any script) imports dartsnas from PATH instead of this checkout's ``src``: the same benchmark
can then time an older checkout in the same shell command, back to back, on the same machine (a ratio holds
only for two runs made that way; docs PERFORMANCE.md "How to measure"). It is read from ``sys.argv`` before
dartsnas is imported, so call ``use_src()`` first.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def use_src(argv: list[str] | None = None) -> Path:
    """Put the ``src`` named by ``--src PATH`` (default: this checkout's) first on ``sys.path``; return it."""
    argv = sys.argv[1:] if argv is None else argv
    src = REPO / "src"
    for i, a in enumerate(argv):
        if a == "--src" and i + 1 < len(argv):
            src = Path(argv[i + 1])
        elif a.startswith("--src="):
            src = Path(a.split("=", 1)[1])
    src = src.resolve()
    if not (src / "dartsnas" / "__init__.py").is_file():
        raise SystemExit(f"--src {src}: no dartsnas package there")
    sys.path.insert(0, str(src))
    return src


def _git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--", "."],
            capture_output=True,
            check=False,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")


def environment(device, src: Path) -> dict:
    """Versions, device and machine state, for the JSON of every benchmark."""
    import torch

    cuda = device.type == "cuda"
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})"
        ),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None,
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic) if cuda else None,
        "src": str(src),
        "src_commit": _git_commit(src),
    }
    if cuda:
        p = torch.cuda.get_device_properties(device)
        env["gpu_memory_gb"] = round(p.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{p.major}.{p.minor}"
    return env


def write_json(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
