"""The NB201 proxy comparison of search methods over seeds, through ``dartsnas compare`` (issue 10 item 4).

Runs ``dartsnas compare --space nb201 --preset nb201-proxy`` (methods × seeds, plus the table-lookup random
baseline) into one experiment, then ``dartsnas report`` on it, and writes into ``--out-dir``:
``nb201-methods-<date>.json`` (the compare summary: per run the cell, table row and accuracies, cost, peak
memory, λ_max and skip count per epoch; per method mean ± std) and ``nb201-methods-<date>.md`` (the
comparison table with the published rows). Not a test. The full run is hours of CPU (one proxy search took
37 min on the loaded 2-core machine, notes/nb201.md); ``--resume`` continues an interrupted one.

    # the full comparison (hours; methods other than darts need the NB201 wiring of every method)
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/nb201_methods.py --methods darts,pc-darts,beta-darts \\
        --seeds 1,2,3 --data-dir ../shared/data/cifar10 --experiment experiments/nb201-methods
    # a 1-epoch check of the script itself (seconds per run)
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/nb201_methods.py --methods darts --seeds 1,2 --tiny \\
        --data-dir ../shared/data/cifar10 --experiment /tmp/nb201-methods-check --out-dir /tmp/nb201-methods-out
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dartsnas.cli import main as dartsnas

TINY = [
    "--epochs",
    "1",
    "--search-set",
    "subset=64",
    "--search-set",
    "batch_size=32",
    "--search-set",
    "hessian_batch=16",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="darts,pc-darts,beta-darts")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--data-dir", required=True, help="the CIFAR-10 folder (the NB201 table is found beside it)")
    ap.add_argument("-e", "--experiment", required=True, help="the compare experiment directory")
    ap.add_argument("--random-samples", default="100", help="random cells per seed (table look-ups)")
    ap.add_argument(
        "--random-search", default="0", help="cells trained per seed by the random search (0: none; 20 ≈ one search)"
    )
    ap.add_argument("--jobs", default="1")
    ap.add_argument("--resume", action="store_true", help="continue --experiment")
    ap.add_argument("--tiny", action="store_true", help="1 epoch on 64+64 images: checks the script, no figures")
    ap.add_argument("--order", help="search order of every method (default: the preset's, 1)")
    ap.add_argument("--epochs", help="epochs of every search (default: the preset's, 20)")
    ap.add_argument(
        "--method-args", action="append", default=[], metavar="METHOD=ARGS", help="passed to compare (repeatable)"
    )
    ap.add_argument("--name", default="", help="suffix of the result files' names (one per experiment)")
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)

    cmd = [
        "compare",
        "--space",
        "nb201",
        "--preset",
        "nb201-proxy",
        "--methods",
        args.methods,
        "--seeds",
        args.seeds,
        "--data-dir",
        args.data_dir,
        "--random-samples",
        args.random_samples,
        "--jobs",
        args.jobs,
        "-e",
        args.experiment,
    ]
    for flag, value in (("--order", args.order), ("--epochs", args.epochs)):
        if value:
            cmd += [flag, value]
    for value in args.method_args:
        cmd += ["--method-args", value]
    if args.random_search != "0":
        cmd += ["--random-search", args.random_search]
    if args.resume:
        cmd = ["compare", "--resume", "-e", args.experiment, "--jobs", args.jobs]
    elif args.tiny:
        cmd += TINY
    t0 = time.perf_counter()
    rc = dartsnas(cmd)
    wall = time.perf_counter() - t0
    if rc not in (0, 3):
        return rc
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report_dir = Path(args.experiment) / "report"
    if dartsnas(["report", args.experiment, "--out", str(report_dir), "--title", "NB201 proxy: methods × seeds"]):
        return 1
    suffix = f"-{args.name}" if args.name else ""
    stem = f"nb201-methods{suffix}{'-tiny' if args.tiny else ''}-{time.strftime('%Y-%m-%d')}"
    summary = json.loads((Path(args.experiment) / "summary.json").read_text())
    meta = {
        "command": "dartsnas " + " ".join(cmd),
        "wall_seconds": wall,
        "tiny": args.tiny,
        "machine": platform.platform(),
        "python": platform.python_version(),
    }
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "summary": summary}, indent=2) + "\n")
    (out / f"{stem}.md").write_text((report_dir / "report.md").read_text())
    print(f"written: {out / (stem + '.json')}, {out / (stem + '.md')}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
