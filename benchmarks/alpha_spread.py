"""How far the architecture weights moved in finished searches (not a test, no training).

Reads each search run's ``metrics.jsonl`` (NB201 searches: the run directories of ``dartsnas compare`` experiments, or
any run directory) and reports, at the final epoch: the mean entropy of the per-edge softmax(α) (ln 5 = 1.609 on NB201
when α has not moved at all), the largest softmax weight of any edge (0.2 when uniform), the mean over edges of
the top softmax weight, and the table row of the final cell. A search whose α stayed near uniform derived its
cell from small differences, so its result says more about noise than about the method.

    python benchmarks/alpha_spread.py EXPERIMENT_OR_RUN_DIR... --out benchmarks/results/alpha-spread.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path


def _runs(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if (p / "metrics.jsonl").is_file():
            out.append(p)
        else:
            out += sorted(d.parent for d in p.glob("runs/*/metrics.jsonl"))
    return out


def spread(run: Path) -> dict:
    last = None
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if "alphas" in rec:
                last = rec
    if last is None:
        raise SystemExit(f"{run}: no epoch with alphas in metrics.jsonl")
    # NB201 records softmax(α) per epoch, one 6×5 matrix (supernet/nb201.py)
    probs = last["alphas"]
    ent = [-sum(p * math.log(p) for p in ps if p > 0) for ps in probs]
    return {
        "run": str(run),
        "epochs": last.get("epoch", -1) + 1,
        "mean_entropy": statistics.fmean(ent),
        "uniform_entropy": math.log(len(probs[0])),
        "max_weight": max(max(p) for p in probs),
        "mean_top_weight": statistics.fmean(max(p) for p in probs),
        "table_row": last.get("table_row"),
        "table_cifar10": last.get("table_cifar10"),
        "skip_count": last.get("skip_count"),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", help="experiment directories (their runs/*) or run directories")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    res = [spread(r) for r in _runs(args.paths)]
    for r in res:
        print(
            f"{Path(r['run']).name}: entropy {r['mean_entropy']:.3f} (uniform {r['uniform_entropy']:.3f}), "
            f"top weight mean {r['mean_top_weight']:.3f} max {r['max_weight']:.3f}, row {r['table_row']} "
            f"({r['table_cifar10']}), skip {r['skip_count']}"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
