"""The NB201 random search alone (no method searches), over seeds: what ``dartsnas compare --random-search N``
adds to a comparison, for measuring it by itself (issue 10, Measure). Not a test.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/nb201_random_search.py --seeds 1,2,3 --samples 20 \\
        --data-dir ../shared/data/cifar10 --out-dir /tmp/rs

Writes ``random_search.json`` (every drawn cell's validation accuracy, the selected cell, its table row, the cost)
into ``--out-dir`` and prints the table accuracies mean ± std over the seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dartsnas.protocol.compare import CompareConfig, run_random_search
from dartsnas.protocol.random_search import RANDOM_SEARCH_EPOCHS, RANDOM_SEARCH_SAMPLES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--samples", type=int, default=RANDOM_SEARCH_SAMPLES)
    ap.add_argument("--epochs-each", type=int, default=RANDOM_SEARCH_EPOCHS)
    ap.add_argument("--preset", default="nb201-proxy")
    ap.add_argument("--data-dir", required=True, help="the CIFAR-10 folder (the NB201 table is found beside it)")
    ap.add_argument("--out-dir", required=True, help="where random_search.json goes (a rerun continues it)")
    args = ap.parse_args(argv)
    cfg = CompareConfig(
        space="nb201",
        preset=args.preset,
        seeds=args.seeds,
        data_dir=args.data_dir,
        random_search=args.samples,
        random_search_epochs=args.epochs_each,
        devices="cpu",
        threads=1,
    )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    out = run_random_search(out_dir, cfg)
    print(f"wall {time.perf_counter() - t0:.0f} s")
    for key in ("cifar10", "cifar100", "imagenet16_120"):
        values = [s["table"][key] for s in out["per_seed"]]
        spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
        print(f"{key}: {statistics.mean(values):.2f}{spread} over {len(values)} seed(s) {json.dumps(values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
