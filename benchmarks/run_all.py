"""Run every benchmark in one call: the CNN search step, the CNN training step and the recurrent steps.

Each benchmark runs in its own process (a crash or a hang in one does not lose the others) under a wall-clock
limit, writes its JSON into ``--out-dir``, and this script gathers them into ``all.json`` there, with the
settings it used and what failed or ran out of time. Not a test.

    # the full set at the reference's settings on a GPU (about 6 minutes on an H100-class GPU)
    PYTHONPATH=src python benchmarks/run_all.py --device cuda --out-dir benchmarks/results/run
    # a quick pass (small networks, few steps) on the CPU: checks that everything runs
    OMP_NUM_THREADS=2 python benchmarks/run_all.py --device cpu --quick --threads 2 --out-dir /tmp/bench
    # only some of them
    python benchmarks/run_all.py --device cuda --only search train --out-dir /tmp/bench

``--src PATH`` is passed on to every benchmark (time another checkout's code; benchmarks/_common.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, script, full arguments by device kind, quick arguments, default wall-clock limit in seconds)
BENCHMARKS = {
    "search": (
        "search_step.py",
        {
            "cuda": [
                "--order",
                "1",
                "2",
                "--steps",
                "20",
                "--warmup",
                "5",
                "--steps2",
                "8",
                "--modes",
                "eager,fused,graph,fused+graph,fused+bf16,fused+cl,fused+graph+bf16",
                "--modes2",
                "eager,fused,graph,fused+graph",
            ],
            "cpu": ["--order", "1", "--steps", "2", "--warmup", "1", "--modes", "eager,fused"],
        },
        [
            "--order",
            "1",
            "2",
            "--init-channels",
            "8",
            "--layers",
            "5",
            "--batch-size",
            "16",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--steps2",
            "1",
        ],
        240,
    ),
    "train": (
        "train_step.py",
        {"cuda": ["--steps", "30", "--warmup", "10"], "cpu": ["--steps", "2", "--warmup", "1"]},
        ["--init-channels", "8", "--layers", "5", "--batch-size", "16", "--steps", "2", "--warmup", "1"],
        90,
    ),
    "train-graph": (
        "train_step.py",
        {
            "cuda": ["--steps", "30", "--warmup", "10", "--cuda-graph", "on"],
            "cpu": ["--steps", "2", "--warmup", "1", "--cuda-graph", "on"],
        },
        ["--init-channels", "8", "--layers", "5", "--batch-size", "16", "--steps", "2", "--warmup", "1"]
        + ["--cuda-graph", "on"],
        90,
    ),
    "rnn": (
        "rnn_step.py",
        {"cuda": ["--steps", "10", "--warmup", "3"], "cpu": ["--steps", "1", "--warmup", "1"]},
        [
            "--search-nhid",
            "32",
            "--train-nhid",
            "32",
            "--search-batch",
            "8",
            "--train-batch",
            "8",
            "--ntoken",
            "200",
            "--rows",
            "100",
            "--steps",
            "1",
            "--warmup",
            "1",
        ],
        90,
    ),
}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda or cpu (auto: cuda when available)")
    p.add_argument("--quick", action="store_true", help="small networks, few steps: checks that all of it runs")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    p.add_argument("--out-dir", default="benchmarks/results/latest")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (passed on)")
    p.add_argument("--src", default=None, help="import dartsnas from this src folder (passed on)")
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="wall-clock limit of one benchmark (default: search 240, train 90, rnn 90)",
    )
    p.add_argument("--label", default=None)
    args = p.parse_args(argv)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = "cuda" if device.startswith("cuda") else "cpu"
    limits = {name: spec[3] for name, spec in BENCHMARKS.items()}
    for item in args.limit:
        name, _, value = item.partition("=")
        if name not in limits:
            raise SystemExit(f"--limit {item}: unknown benchmark {name!r}")
        limits[name] = float(value)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict = {
        "run_all": {
            "device": device,
            "quick": args.quick,
            "only": args.only,
            "limits_s": limits,
            "label": args.label,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        },
        "benchmarks": {},
        "failures": {},
    }
    for name in args.only:
        script, full, quick, _ = BENCHMARKS[name]
        out = out_dir / f"{name}.json"
        out.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            str(HERE / script),
            "--device",
            device,
            "--out",
            str(out),
            *(quick if args.quick else full[kind]),
        ]
        if name == "search":  # stop starting modes early enough to finish inside the limit
            cmd += ["--time-budget", str(max(10.0, 0.7 * limits[name]))]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.src:
            cmd += ["--src", args.src]
        if args.label:
            cmd += ["--label", args.label]
        t = time.perf_counter()
        print(f"[run_all] {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limits[name], check=False)
            rc, tail = proc.returncode, (proc.stderr or "")[-3000:]
        except subprocess.TimeoutExpired as e:
            rc, tail = "timeout", (e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or ""))[-3000:]
        seconds = round(time.perf_counter() - t, 1)
        if out.exists():  # search_step.py writes after every mode: a killed run still leaves what it measured
            summary["benchmarks"][name] = json.loads(out.read_text())
        if rc != 0 or not out.exists():
            summary["failures"][name] = {"returncode": rc, "seconds": seconds, "stderr_tail": tail}
        print(f"[run_all] {name}: rc {rc}, {seconds} s", file=sys.stderr, flush=True)
        (out_dir / "all.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(
        json.dumps({"out_dir": str(out_dir), "ran": list(summary["benchmarks"]), "failures": list(summary["failures"])})
    )
    return summary


if __name__ == "__main__":
    main()
