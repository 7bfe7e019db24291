"""The search step of two checkouts timed in one run, interleaved (issue 11: "the eager step before and after").

On a shared CPU one step's time moves with the load more than with the code, so a before/after figure from
two separate runs says little (notes/speed.md). This script runs ``benchmarks/search_step.py`` on the
``--before`` and the ``--after`` ``src`` folders in rounds: the order flips every round (A B, B A, A B, ...), or
with ``--parallel`` the two run at the same time, one per core, so that whatever else the machine does falls
on both. Each call is its own process (a checkout's modules cannot share one). It reports, per mode and order,
every call's time per step, the median of each side and the median of the per-round ratios before / after,
the load average before each call, and whether the two sides computed the same mean training loss (the
changes are meant to leave the arithmetic alone). Not a test.

Everything after ``--`` goes to search_step.py (settings, modes, orders, threads). Example, the step at C=16,
5 cells, batch 32, one thread, both orders, three rounds (about 20 minutes here):

    OMP_NUM_THREADS=1 python benchmarks/before_after.py --before /tmp/before/src --after src --rounds 3 \\
        --out benchmarks/results/cpu-before-after.json -- --device cpu --threads 1 --init-channels 16 \\
        --layers 5 --batch-size 32 --steps 3 --warmup 1 --order 1 2 --modes eager,fused

``/tmp/before`` is a checkout of the commit before the change (``git worktree add --detach /tmp/before REV``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, _git_commit, write_json

STEP = Path(__file__).resolve().parent / "search_step.py"


def _call(src: Path, label: str, rest: list[str], out: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(STEP), "--src", str(src), "--label", label, "--out", str(out), *rest]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, out: Path, label: str) -> dict:
    _, err = p.communicate()
    if p.returncode != 0 or not out.is_file():
        tail = (err or "").strip().splitlines()[-3:]
        raise SystemExit(f"{label}: search_step.py failed (exit {p.returncode}): {' | '.join(tail)}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the src folder of the old checkout")
    p.add_argument("--after", default=str(REPO / "src"), help="the src folder of the new checkout (default: this)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parallel", action="store_true", help="run the two sides at the same time (one core each)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds: at least 1")
    sides = {"before": Path(args.before).resolve(), "after": Path(args.after).resolve()}
    for name, src in sides.items():
        if not (src / "dartsnas" / "__init__.py").is_file():
            raise SystemExit(f"--{name} {src}: no dartsnas package there")
    calls: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            load = os.getloadavg()
            if args.parallel:
                outs = {s: Path(tmp) / f"{s}-{r}.json" for s in order}
                procs = {s: _call(sides[s], s, rest, outs[s]) for s in order}
                res = {s: _finish(procs[s], outs[s], s) for s in order}
                for s in order:
                    calls.append({"round": r, "side": s, "load_average_1min": load[0], "result": res[s]})
            else:
                for s in order:
                    load = os.getloadavg()
                    out = Path(tmp) / f"{s}-{r}.json"
                    res = _finish(_call(sides[s], s, rest, out), out, s)
                    calls.append({"round": r, "side": s, "load_average_1min": load[0], "result": res})
            print(f"round {r + 1}/{args.rounds} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    keys = sorted(
        {(x["mode"], x["order"]) for c in calls for x in c["result"]["results"] if "ms_per_step" in x},
        key=lambda k: (k[1], k[0]),
    )
    table = []
    for mode, order in keys:

        def get(side: str, r: int, mode=mode, order=order) -> dict | None:
            for c in calls:
                if c["side"] == side and c["round"] == r:
                    for x in c["result"]["results"]:
                        if x.get("mode") == mode and x.get("order") == order and "ms_per_step" in x:
                            return x
            return None

        ms = {s: [x["ms_per_step"] for r in range(args.rounds) if (x := get(s, r))] for s in sides}
        ratios = [
            b["ms_per_step"] / a["ms_per_step"]
            for r in range(args.rounds)
            if (b := get("before", r)) and (a := get("after", r))
        ]
        losses = {s: {x["mean_train_loss"] for r in range(args.rounds) if (x := get(s, r))} for s in sides}
        table.append(
            {
                "mode": mode,
                "order": order,
                "ms_per_step_before": ms["before"],
                "ms_per_step_after": ms["after"],
                "median_before_ms": round(statistics.median(ms["before"]), 2) if ms["before"] else None,
                "median_after_ms": round(statistics.median(ms["after"]), 2) if ms["after"] else None,
                "ratios_before_over_after": [round(x, 3) for x in ratios],
                "median_ratio_before_over_after": round(statistics.median(ratios), 3) if ratios else None,
                "same_mean_train_loss": losses["before"] == losses["after"] and len(losses["after"]) == 1,
                "mean_train_loss": {s: sorted(v) for s, v in losses.items()},
            }
        )
    errors = [
        {"round": c["round"], "side": c["side"], "mode": x["mode"], "order": x["order"], "error": x["error"]}
        for c in calls
        for x in c["result"]["results"]
        if "error" in x
    ]
    for e in errors:
        print(f"round {e['round'] + 1} {e['side']} order {e['order']} {e['mode']}: {e['error']}", file=sys.stderr)
    for t in table:
        print(
            f"order {t['order']} {t['mode']}: before {t['median_before_ms']} ms, after {t['median_after_ms']} ms "
            f"(median ratio {t['median_ratio_before_over_after']}, same loss: {t['same_mean_train_loss']})",
            file=sys.stderr,
        )
    out = {
        "benchmark": "cnn-search-step-before-after",
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python benchmarks/before_after.py", *argv, "--", *rest]),
        "before": {"src": str(sides["before"]), "commit": _git_commit(sides["before"])},
        "after": {"src": str(sides["after"]), "commit": _git_commit(sides["after"])},
        "rounds": args.rounds,
        "parallel": args.parallel,
        "settings": calls[0]["result"]["settings"],
        "environment": calls[0]["result"]["environment"],
        "table": table,
        "errors": errors,
        "calls": calls,
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    write_json(out, args.out)
    return out


if __name__ == "__main__":
    main()
