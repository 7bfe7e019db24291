"""PC-DARTS's memory saving, measured (issue 10 item 4; ROBUST-SPEC §3.1). Not a test.

For one first-order search step (α step on a validation batch, then the weight step on a training batch: the
search loop's own ``_State`` and ``_search_step``, random inputs) this counts the bytes of the tensors autograd
saves for backward (``dartsnas.memory``: each storage once, parameters and optimiser states excluded, the peak
held at once), which is what dominates a GPU's activation memory and is exact and device-independent. On CUDA
it also records ``torch.cuda.max_memory_allocated`` during the step.

Configurations: plain DARTS (first order) and PC-DARTS (K = 4, edge normalisation) in the DARTS space (the
search network of DARTS-SPEC: 8 cells, C = 16, 4 nodes, 32×32) and on NB201 (C = 16, N = 5, §1.3).
``--methods`` and ``--presets`` widen that to every method on any preset (``--methods all --presets
nb201-proxy``: the step of each method in the NB201 proxy comparison, issue 10's table), ``--second-order`` adds
plain DARTS's second-order step.

The saved bytes are affine in the batch size, a + b·B (activations scale with B; the constant is the mixing
weights and other batch-free tensors). The script measures every configuration at ``--batches`` (default
2, 4, 8), fits a and b exactly on the first two, checks that the fit predicts every further batch to the byte,
and reports the bytes at the protocols' batches: DARTS 64, PC-DARTS 64 and 256 (PC-DARTS's paper batch, §3.1).
``--direct B`` also measures batch B directly (slow on a CPU).

    OMP_NUM_THREADS=1 python benchmarks/memory.py --out benchmarks/results/memory-cpu-2026-11-30.json
    OMP_NUM_THREADS=1 python benchmarks/memory.py --presets nb201-proxy,nb201 --methods all --second-order \\
        --batches 2,4,8 --out benchmarks/results/memory-methods-cpu-2026-11-30.json
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, use_src, write_json

SRC = use_src()

import torch

from dartsnas.loops.common import resolve_device
from dartsnas.loops.search import SearchConfig
from dartsnas.memory import measure_search_step
from dartsnas.methods import REGISTRY

# (space, preset, method): DARTS-SPEC's search network and ROBUST-SPEC §1.3's NB201 supernet.
CONFIGS = [
    ("darts", "paper", "darts"),
    ("darts", "paper", "pc-darts"),
    ("nb201", "nb201", "darts"),
    ("nb201", "nb201", "pc-darts"),
]
# The batches each method's protocol uses (DARTS-SPEC §3; ROBUST-SPEC §3.1: PC-DARTS 256 in the DARTS space).
# Other methods: the preset's batch.
PROTOCOL_BATCHES = {"darts": [64], "pc-darts": [64, 256]}
SPACE_OF_PRESET = {"paper": "darts", "nb201": "nb201", "nb201-proxy": "nb201", "nb201-autodl": "nb201"}


def config(preset: str, method: str, device: str, order: int = 1) -> SearchConfig:
    # 150 epochs: PC-DARTS's 15 warm-up epochs leave α steps (the step is measured past them) and DARTS-PT's
    # tuning epochs fit (25 on NB201, 86 in the DARTS space); the number of epochs does not change a step's memory
    over = {"method": method, "order": order, "device": device, "progress": False, "hessian": False, "epochs": 150}
    return SearchConfig.build(preset, over)


def measure(
    space: str, preset: str, method: str, batches: list[int], direct: list[int], device, order: int = 1
) -> dict:
    cfg = config(preset, method, str(device), order)
    points = []
    for B in [*batches, *direct]:
        t0 = time.perf_counter()
        r = measure_search_step(cfg, B, device=str(device))
        r["seconds"] = round(time.perf_counter() - t0, 2)
        points.append(r)
        saved = f"{r['peak_bytes']:,} bytes saved at peak ({r['seconds']} s)"
        print(f"{preset} {method} (order {order}) B={B}: {saved}", file=sys.stderr)
    (b1, p1), (b2, p2) = [(p["batch_size"], p["peak_bytes"]) for p in points[:2]]
    per_image, rem = divmod(p2 - p1, b2 - b1)
    const = p1 - per_image * b1
    checks = [
        {"batch_size": p["batch_size"], "measured": p["peak_bytes"], "predicted": const + per_image * p["batch_size"]}
        for p in points[2:]
    ]
    exact = rem == 0 and all(c["measured"] == c["predicted"] for c in checks)
    return {
        "space": space,
        "preset": preset,
        "method": method,
        "method_args": cfg.method_args,
        "order": order,
        "batch_size_of_preset": cfg.batch_size,
        "image_size": cfg.image_size or 32,
        "init_channels": cfg.init_channels,
        "cells": cfg.layers if space == "darts" else 3 * cfg.nb201_cells,
        "weights": points[0]["weights"],
        "points": points,
        "fit": {"constant_bytes": const, "bytes_per_image": per_image, "exact": exact, "checks": checks},
        "at_protocol_batches": {str(B): const + per_image * B for B in PROTOCOL_BATCHES.get(method, [cfg.batch_size])},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", default="2,4,8", help="batch sizes to measure (fit on the first two)")
    p.add_argument("--direct", default="", help="further batch sizes to measure directly (checked against the fit)")
    p.add_argument("--spaces", default="darts,nb201", help="with the default --presets: which of the two")
    p.add_argument("--presets", default="", help="search presets to measure (default: paper and nb201)")
    p.add_argument("--methods", default="darts,pc-darts", help="methods, or 'all' (every registered method)")
    p.add_argument("--second-order", action="store_true", help="also plain DARTS's second-order step")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    p.add_argument("--src", default=None, help="import dartsnas from this src folder (default: this checkout)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batches = [int(b) for b in args.batches.split(",") if b]
    direct = [int(b) for b in args.direct.split(",") if b]
    if len(batches) < 2:
        raise SystemExit("--batches: at least two batch sizes (the fit needs two)")
    methods = sorted(REGISTRY) if args.methods == "all" else args.methods.split(",")
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)} (choose from {', '.join(sorted(REGISTRY))})")
    if args.presets:
        bad = [pr for pr in args.presets.split(",") if pr not in SPACE_OF_PRESET]
        if bad:
            known = ", ".join(SPACE_OF_PRESET)
            raise SystemExit(f"--presets: {', '.join(bad)} not measured here (choose from {known})")
        configs = [(SPACE_OF_PRESET[pr], pr, m, 1) for pr in args.presets.split(",") for m in methods]
    else:
        configs = [(s, pr, m, 1) for s, pr, m in CONFIGS if s in args.spaces.split(",") and m in methods]
    if args.second_order:
        configs += [(s, pr, "darts", 2) for s, pr in dict.fromkeys((s, pr) for s, pr, _, _ in configs)]
    results, failed = [], []
    for s, pr, m, o in configs:
        try:
            results.append(measure(s, pr, m, batches, direct, device, o))
        except Exception as e:  # noqa: BLE001  (report and go on: this runs unattended)
            failed.append({"space": s, "preset": pr, "method": m, "order": o, "error": f"{type(e).__name__}: {e}"})
            print(f"{pr} {m} (order {o}): failed: {failed[-1]['error']}", file=sys.stderr)
    summary = []
    for space, preset in dict.fromkeys((s, pr) for s, pr, _, _ in configs):
        by = {r["method"]: r for r in results if r["preset"] == preset and r["order"] == 1}
        if {"darts", "pc-darts"} <= set(by):
            d, pc = by["darts"]["fit"], by["pc-darts"]["fit"]
            darts64 = by["darts"]["at_protocol_batches"]["64"]
            summary.append(
                {
                    "space": space,
                    "preset": preset,
                    "darts_bytes_per_image": d["bytes_per_image"],
                    "pc_darts_bytes_per_image": pc["bytes_per_image"],
                    "saving_same_batch": round(d["bytes_per_image"] / pc["bytes_per_image"], 3),
                    "darts_at_64_bytes": darts64,
                    "pc_darts_at_64_bytes": by["pc-darts"]["at_protocol_batches"]["64"],
                    "pc_darts_at_256_bytes": by["pc-darts"]["at_protocol_batches"]["256"],
                    "pc_darts_256_over_darts_64": round(by["pc-darts"]["at_protocol_batches"]["256"] / darts64, 3),
                }
            )
    out = {
        "benchmark": "memory",
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["OMP_NUM_THREADS=1 python benchmarks/memory.py", *given]),
        "measure": (
            "peak bytes of the tensors autograd holds for backward during one search step (α step, then weight "
            "step; first order unless a result's order says 2), each storage once, parameters and optimiser "
            "states excluded "
            "(dartsnas.memory.SavedTensorMeter); device-independent"
        ),
        "environment": environment(device, SRC),
        "results": results,
        "summary": summary,
        "failed": failed,
    }
    write_json(out, args.out)
    return out


if __name__ == "__main__":
    main()
