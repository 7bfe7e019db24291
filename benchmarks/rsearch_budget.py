"""The random search's budget ratio (notes/rsearch.md): seconds of one first-order ``nb201-proxy`` search epoch
over seconds of one discrete-cell epoch (training, then the validation pass once per cell), on this machine.

Not a test. Run with one thread on a quiet machine (about 2 minutes). The figures in notes/rsearch.md came from
scratch scripts doing the same two timings separately (the defaults' 4 cells × 2 epochs of seed 7, and a 2-epoch
search of seed 1), before this script existed; it was itself run only on tiny settings, as a check:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/rsearch_budget.py --data ../shared/data/cifar10/subset-15k.npz
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from dartsnas.loops.search import SearchConfig, run_search
from dartsnas.protocol.random_search import draw_cells, search_data, train_cell


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="CIFAR-10 folder or .npz subset (the NB201 table beside it)")
    ap.add_argument("--cells", type=int, default=4, help="drawn cells to time")
    ap.add_argument("--cell-epochs", type=int, default=2, help="epochs of each timed cell")
    ap.add_argument("--search-epochs", type=int, default=2, help="epochs of the timed search")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override of the proxy preset")
    args = ap.parse_args(argv)
    over = [f"data_dir={args.data}", "progress=false", f"seed={args.seed}", *args.set]
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    cfg = SearchConfig.build("nb201-proxy", over)
    data, w, a = search_data(cfg, torch.device("cpu"))
    cell_seconds = 0.0
    for g in draw_cells(args.seed, args.cells):
        t0 = time.perf_counter()
        train_cell(g, cfg, data, w, a, args.cell_epochs, args.seed)
        dt = time.perf_counter() - t0
        cell_seconds += dt
        print(f"{g.arch_str()}: {dt:.2f} s for {args.cell_epochs} epoch(s) and the validation pass")
    per_cell_epoch = cell_seconds / (args.cells * args.cell_epochs)
    search_cfg = SearchConfig.build("nb201-proxy", [*over, f"epochs={args.search_epochs}"])
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_search(search_cfg, Path(tmp) / "search", log=lambda s: None)
        per_search_epoch = (time.perf_counter() - t0) / args.search_epochs
    print(
        f"cell epoch {per_cell_epoch:.2f} s, search epoch {per_search_epoch:.2f} s, "
        f"ratio {per_search_epoch / per_cell_epoch:.1f}"
    )
    print(f"load average {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
