"""Issue 10's NB201 proxy table from the measured result files, gathered into one (not a test, no training).

The proxy comparison was run in several pieces (``nb201_methods.py`` experiments for some methods and seeds
each, ``nb201_proxy.py`` for DARTS first order, ``nb201_random_search.py`` for the random search). This script
reads those JSON files from ``--results`` and writes one table over every seed found:

* per method (DARTS second order and DrNAS's progressive variant are labelled apart from DARTS and DrNAS: the
  files' commands say which): the seeds, each seed's final cell (table row, skip edges at the end), the
  CIFAR-10 / CIFAR-100 / ImageNet16-120 table test accuracy mean ± std (sample std), the wall time per run,
  the peak resident memory of the search process, and, from ``memory-methods-*.json``
  (``benchmarks/memory.py --presets nb201-proxy``), the bytes autograd saves in one search step at the
  proxy's batch of 64 (device-independent, so PC-DARTS's and GDAS's saving shows on a CPU too);
* the random search with the same budget and the mean of random table look-ups.

A seed measured twice (two files) is an error, not averaged. Writes ``--out-dir/nb201-methods-table-<date>``
``.json`` and ``.md``.

    python benchmarks/nb201_table.py --results benchmarks/results --out-dir benchmarks/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
from pathlib import Path

ACC = ("cifar10", "cifar100", "imagenet16_120")
ORDER = [
    "darts",
    "darts (2nd order)",
    "pc-darts",
    "darts-minus",
    "beta-darts",
    "sdarts-rs",
    "drnas",
    "drnas (progressive)",
    "gdas",
    "darts-pt",
]


def _label(method: str, command: str) -> str:
    if method == "darts" and "--order 2" in command:
        return "darts (2nd order)"
    if method == "drnas" and "widen_to" in command:
        return "drnas (progressive)"
    return method


def _mean_std(values: list[float]) -> dict:
    n = len(values)
    return {
        "mean": statistics.fmean(values) if n else None,
        "std": statistics.stdev(values) if n > 1 else None,
        "n": n,
        "values": values,
    }


def gather(results: Path) -> dict:
    runs: dict[tuple[str, int], dict] = {}
    sources: list[str] = []

    def add(label: str, seed: int, run: dict, source: str) -> None:
        if (label, seed) in runs:
            raise SystemExit(f"{label} seed {seed}: in {runs[label, seed]['source']} and in {source}")
        runs[label, seed] = {**run, "source": source}

    for f in sorted(results.glob("nb201-methods-*.json")):
        if f.name.startswith("nb201-methods-table-"):
            continue
        d = json.loads(f.read_text())
        command = d["meta"]["command"]
        sources.append(f.name)
        for r in d["summary"]["runs"]:
            if r["status"] != "done":
                continue
            add(
                _label(r["method"], command),
                r["seed"],
                {
                    "arch_str": r["arch_str"],
                    "table_row": r["table_row"],
                    **{k: r[k] for k in ACC},
                    "wall_seconds": r["wall_seconds"],
                    "peak_rss_bytes": r["peak_memory_bytes"] if r["peak_memory_source"] == "cpu_peak_rss" else None,
                    "final_skip_edges": (r.get("skip_count") or [None])[-1],
                    "lambda_max_first_last": [(r.get("lambda_max") or [None])[0], (r.get("lambda_max") or [None])[-1]],
                    "command": command,
                },
                f.name,
            )
    for f in sorted(results.glob("nb201-proxy-*.json")):  # DARTS first order, benchmarks/nb201_proxy.py
        d = json.loads(f.read_text())
        sources.append(f.name)
        for s in d["seeds"]:
            t = s["table"]
            add(
                "darts",
                s["seed"],
                {
                    "arch_str": t["arch_str"],
                    "table_row": t["row"],
                    **{k: t[k] for k in ACC},
                    "wall_seconds": s["wall_seconds"],
                    "peak_rss_bytes": None,
                    "final_skip_edges": s["skip_count"][-1],
                    "lambda_max_first_last": [s["lambda_max"][0], s["lambda_max"][-1]],
                    "command": "benchmarks/nb201_proxy.py",
                },
                f.name,
            )
    activation = {}
    for f in sorted(results.glob("memory-methods-*.json")):
        d = json.loads(f.read_text())
        sources.append(f.name)
        for r in d["results"]:
            if r["preset"] == "nb201-proxy" and not r["method_args"]:
                label = "darts (2nd order)" if r["order"] == 2 else r["method"]
                activation[label] = r["at_protocol_batches"].get("64")
    activation.setdefault("drnas (progressive)", None)  # K = 4 after widening differs: not measured
    methods = []
    for label in sorted({k[0] for k in runs}, key=lambda m: (ORDER.index(m) if m in ORDER else 99, m)):
        rs = [runs[k] | {"seed": k[1]} for k in sorted(runs) if k[0] == label]
        walls = [r["wall_seconds"] for r in rs]
        rss = [r["peak_rss_bytes"] for r in rs if r["peak_rss_bytes"]]
        methods.append(
            {
                "method": label,
                "seeds": [r["seed"] for r in rs],
                "cells": [
                    {k: r[k] for k in ("seed", "table_row", "arch_str", "final_skip_edges", "source")} for r in rs
                ],
                **{k: _mean_std([r[k] for r in rs]) for k in ACC},
                "wall_minutes": {
                    "mean": statistics.fmean(walls) / 60,
                    "min": min(walls) / 60,
                    "max": max(walls) / 60,
                },
                "peak_rss_bytes": max(rss) if rss else None,
                "step_saved_bytes_batch64": activation.get(label),
                "lambda_max_first_last": [r["lambda_max_first_last"] for r in rs],
            }
        )
    out: dict = {"methods": methods, "sources": sources}
    rsf = sorted(results.glob("nb201-random-search-*.json"))
    if rsf:
        d = json.loads(rsf[-1].read_text())
        seeds = d["per_seed"]
        out["random_search"] = {
            "samples": d["samples"],
            "epochs_each": d["epochs_each"],
            "seeds": [s["seed"] for s in seeds],
            "cells": [{"seed": s["seed"], "table_row": s["table"]["row"], "arch_str": s["arch_str"]} for s in seeds],
            **{k: _mean_std([s["table"][k] for s in seeds]) for k in ACC},
            "wall_minutes": {"mean": statistics.fmean(s["wall_seconds"] for s in seeds) / 60},
            "source": rsf[-1].name,
        }
    for f in sorted(results.glob("nb201-methods-*.json")):
        rnd = json.loads(f.read_text())["summary"].get("random")
        if rnd and not f.name.startswith("nb201-methods-table-"):
            out["random_cells"] = {"samples": rnd["samples"], **{k: rnd[k]["mean"] for k in ACC}, "source": f.name}
            break
    return out


def _pm(s: dict) -> str:
    if s["std"] is None:
        return f"{s['mean']:.2f}"
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def markdown(t: dict) -> str:
    lines = [
        "| method | seeds | final cells: table row (skip edges at the end) | CIFAR-10 (%) | CIFAR-100 (%) "
        "| ImageNet16-120 (%) | wall per run (min) | peak RSS | saved for backward per step, batch 64 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in t["methods"]:
        cells = ", ".join(f"{c['table_row']} ({c['final_skip_edges']})" for c in m["cells"])
        w = m["wall_minutes"]
        rss = f"{m['peak_rss_bytes'] / 2**30:.2f} GiB" if m["peak_rss_bytes"] else "—"
        act = m["step_saved_bytes_batch64"]
        lines.append(
            f"| {m['method']} | {len(m['seeds'])} | {cells} | {_pm(m['cifar10'])} | {_pm(m['cifar100'])} "
            f"| {_pm(m['imagenet16_120'])} | {w['mean']:.1f} ({w['min']:.1f}–{w['max']:.1f}) | {rss} "
            f"| {act / 1e6:.0f} MB |"
            if act
            else f"| {m['method']} | {len(m['seeds'])} | {cells} | {_pm(m['cifar10'])} | {_pm(m['cifar100'])} "
            f"| {_pm(m['imagenet16_120'])} | {w['mean']:.1f} ({w['min']:.1f}–{w['max']:.1f}) | {rss} | — |"
        )
    rs = t.get("random_search")
    if rs:
        cells = ", ".join(str(c["table_row"]) for c in rs["cells"])
        lines.append(
            f"| random search, {rs['samples']} cells × {rs['epochs_each']} epochs | {len(rs['seeds'])} | {cells} "
            f"| {_pm(rs['cifar10'])} | {_pm(rs['cifar100'])} | {_pm(rs['imagenet16_120'])} "
            f"| {rs['wall_minutes']['mean']:.1f} | — | — |"
        )
    rc = t.get("random_cells")
    if rc:
        lines.append(
            f"| random cell (mean of {rc['samples']} look-ups) | — | — | {rc['cifar10']:.2f} | {rc['cifar100']:.2f} "
            f"| {rc['imagenet16_120']:.2f} | 0 | — | — |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent / "results"
    p.add_argument("--results", default=str(here))
    p.add_argument("--out-dir", default=str(here))
    args = p.parse_args(argv)
    t = gather(Path(args.results))
    t["date"] = datetime.date.today().isoformat()
    t["command"] = " ".join(["python benchmarks/nb201_table.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"nb201-methods-table-{t['date']}"
    stem.with_suffix(".json").write_text(json.dumps(t, indent=1, allow_nan=False) + "\n")
    md = markdown(t)
    stem.with_suffix(".md").write_text(f"# NB201 proxy, every method (gathered)\n\n{md}")
    print(md)
    assert all(math.isfinite(m["cifar10"]["mean"]) for m in t["methods"])
    return t


if __name__ == "__main__":
    main()
