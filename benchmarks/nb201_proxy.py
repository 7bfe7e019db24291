"""The NB201 CPU proxy search (preset ``nb201-proxy``, notes/nb201.md) with plain first-order DARTS, per seed.

Runs ``loops.search.run_search`` once per seed, one after the other, and writes one JSON object: per seed the
final cell, its NB201 table row and test accuracies (CIFAR-10 / CIFAR-100 / ImageNet16-120), the per-epoch
λ_max of the α Hessian, skip / none / parameter-free counts and table accuracies of the current cell, and
the wall time; then mean ± std of the three accuracies over the seeds. Not a test.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/nb201_proxy.py --seeds 1,2,3 \\
        --data-dir ../shared/data/cifar10 --out nb201_proxy.json
    # a 2-epoch check of the script itself
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/nb201_proxy.py --seeds 1 --set epochs=2 \\
        --data-dir ../shared/data/cifar10 --runs /tmp/nb201-proxy-runs
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dartsnas.loops.search import SearchConfig, run_search


def run_seed(seed: int, args: argparse.Namespace) -> dict:
    cfg = SearchConfig.build(
        "nb201-proxy", [f"seed={seed}", f"data_dir={args.data_dir}", "progress=false", "dataset=cifar10", *args.set]
    )
    run_dir = Path(args.runs) / f"seed{seed}"
    t0 = time.perf_counter()
    result = run_search(cfg, run_dir, log=(print if args.verbose else (lambda *_: None)))
    wall = time.perf_counter() - t0
    res = json.loads((run_dir / "results.json").read_text())
    hist = result.history
    return {
        "seed": seed,
        "run_dir": str(run_dir),
        "wall_seconds": wall,
        "epochs": len(hist),
        "final_cell": res["arch_str"],
        "table": res["table"],
        "lambda_max": [r.get("hessian_eig") for r in hist],
        "skip_count": [r.get("skip_count") for r in hist],
        "none_count": [r.get("none_count") for r in hist],
        "param_free_count": [r.get("param_free_count") for r in hist],
        "table_cifar10": [r.get("table_cifar10") for r in hist],
        "cells": [r["genotype"]["arch_str"] for r in hist],
        "valid_acc": [r.get("valid_acc") for r in hist],
        "hessian_seconds": [r.get("hessian_seconds") for r in hist],
        "epoch_seconds": [r.get("epoch_seconds") for r in hist],
    }


def summary(per_seed: list[dict]) -> dict:
    out = {}
    for key in ("cifar10", "cifar100", "imagenet16_120"):
        vals = [s["table"][key] for s in per_seed if s.get("table")]
        if vals:
            out[key] = {
                "mean": statistics.fmean(vals),
                # sample std (n - 1), as dartsnas compare/report; results before 2026-11-30 evening used n
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "n": len(vals),
            }
    out["wall_seconds_mean"] = statistics.fmean(s["wall_seconds"] for s in per_seed)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    ap.add_argument("--data-dir", required=True, help="CIFAR-10 folder or subset-15k.npz, beside nasbench201/")
    ap.add_argument("--runs", default="/tmp/nb201-proxy-runs", help="where the run directories go")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--verbose", action="store_true", help="print the searches' logs")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    per_seed = [run_seed(seed, args) for seed in seeds]
    report = {
        "benchmark": "nb201_proxy",
        "preset": "nb201-proxy",
        "overrides": args.set,
        "method": "DARTS, first order",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "seeds": per_seed,
        "summary": summary(per_seed),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
