"""What an experiment's runs amount to: the pick, the cost, the final mean ± std (``summary.json``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..loops.common import write_json
from ..space.sample import CNN_SEARCH_OPS, RNN_SEARCH_OPS
from .experiment import SUMMARY_FILE, Experiment, _now, _read_json


def _run_hours(run_dir: Path) -> float | None:
    """Compute time a run spent (its own wall clock, summed over resumes), in hours."""
    res = _read_json(run_dir / "results.json")
    if isinstance(res, dict) and isinstance(res.get("wall_seconds"), (int, float)):
        return float(res["wall_seconds"]) / 3600.0
    last = None
    mpath = run_dir / "metrics.jsonl"
    if mpath.exists():
        for line in mpath.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec.get("wall_seconds"), (int, float)):
                last = float(rec["wall_seconds"])
    return None if last is None else last / 3600.0


def _selection_score(space: str, run_dir: Path) -> tuple[str, float, float] | None:
    """(metric name, value, higher-is-better sign) of a finished selection training; None if unreadable.

    One rule for both spaces: the final epoch's validation score (not the best epoch's: picking an epoch by
    the validation score and then the cell by the same score would use the validation set twice).
    """
    res = _read_json(run_dir / "results.json")
    if not isinstance(res, dict):
        return None
    if space == "rnn":
        v = res.get("final_valid_ppl")  # the last epoch's validation perplexity (averaged weights after ASGD)
        return ("final_valid_ppl", float(v), -1.0) if isinstance(v, (int, float)) and math.isfinite(v) else None
    if res.get("eval_split") != "search_valid":  # never select on the test set
        return None
    v = res.get("test_top1")  # with eval_split=search_valid: the last epoch's accuracy on D_alpha
    return ("valid_acc", float(v), 1.0) if isinstance(v, (int, float)) and math.isfinite(v) else None


def summarize(path: str | Path) -> dict[str, Any]:
    """Read every run of an experiment, pick the best selection run, add up the cost; writes summary.json."""
    exp = Experiment(path)
    data = exp.read()
    kind, space = data.get("kind"), data.get("space", "cnn")
    cfg = data.get("config", {})
    runs = []
    names = sorted((p.stem for p in (exp.path / "status").glob("*.json")), key=_run_order)
    cost = {stage: {"gpu_hours": 0.0, "cpu_hours": 0.0} for stage in ("search", "selection", "final")}
    candidates = []
    for name in names:
        st = exp.status(name)
        run_dir = exp.run_dir(name)
        stage = st.get("stage", name.split("-")[0])
        row = {
            k: st.get(k)
            for k in (
                "name",
                "stage",
                "seed",
                "index",
                "status",
                "attempts",
                "returncode",
                "error",
                "device",
                "process_seconds",
            )
        }
        row["stage"] = stage
        hours = _run_hours(run_dir)
        if hours is None and st.get("process_seconds"):
            hours = float(st["process_seconds"]) / 3600.0
        row["hours"] = hours
        if hours:
            bucket = {"search": "search", "select": "selection", "random": "selection"}.get(stage, "final")
            dev = "gpu_hours" if str(st.get("device", "cpu")).startswith("cuda") else "cpu_hours"
            cost[bucket][dev] += hours
        if stage in ("select", "random") and st.get("status") == "done":
            score = _selection_score(space, run_dir)
            if score is None:
                row["status"], row["error"] = "failed", "finished without a readable validation score"
            else:
                row["metric"], row["score"] = score[0], score[1]
                candidates.append((score[2] * score[1], _run_order(name), name, score))
        if stage == "search":
            g = _read_json(run_dir / "genotype.json")
            row["genotype"] = g if st.get("status") == "done" else None
        res = _read_json(run_dir / "results.json")
        if isinstance(res, dict):
            row["params"] = res.get("params")
            for k in ("test_error_percent", "test_ppl", "valid_ppl"):
                if k in res:
                    row[k] = res[k]
        runs.append(row)
    chosen = None
    if candidates:
        candidates.sort(key=lambda c: (-c[0], c[1]))
        _, _, name, (metric, value, _) = candidates[0]
        st = exp.status(name)
        gpath = (
            exp.run_dir(f"search-seed{st.get('seed')}") / "genotype.json"
            if name.startswith("select-")
            else exp.path / "genotypes" / f"{name}.json"
        )
        gdict = _read_json(gpath)
        res = _read_json(exp.run_dir(name) / "results.json") or {}
        chosen = {
            "run": name,
            "metric": metric,
            "score": value,
            "genotype": gdict,
            "search_run": f"search-seed{st.get('seed')}" if name.startswith("select-") else None,
            "params": res.get("params"),
        }
        if gdict is not None:
            from ..checkpoint import atomic_write_text

            atomic_write_text(exp.path / "genotypes" / "chosen.json", json.dumps(gdict, indent=2) + "\n")
    final = _final_stats(space, [r for r in runs if r["stage"] == "final"])
    method = data.get("method", "darts")
    search_cost = cost["selection"] if method == "random" else cost["search"]  # spec §9 cost accounting
    summary = {
        "experiment": str(exp.path),
        "kind": kind,
        "space": space,
        "method": method,
        "order": cfg.get("order"),
        "config": cfg,
        "runs": runs,
        "chosen": chosen,
        "final": final,
        "final_genotype": (data.get("final") or {}).get("genotype"),
        "final_source": (data.get("final") or {}).get("source"),
        "cost": cost,
        "search_cost_gpu_days": search_cost["gpu_hours"] / 24.0,
        "search_cost_cpu_days": search_cost["cpu_hours"] / 24.0,
        "num_ops": len(CNN_SEARCH_OPS if space == "cnn" else RNN_SEARCH_OPS),
        "complete": all(r["status"] in ("done", "failed") for r in runs),
        "failed": [r["name"] for r in runs if r["status"] == "failed"],
        "updated": _now(),
    }
    write_json(exp.path / SUMMARY_FILE, summary)
    return summary


def _final_stats(space: str, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rows:
        return None
    metric = "test_ppl" if space == "rnn" else "test_error_percent"
    done = [
        r
        for r in rows
        if r["status"] == "done" and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])
    ]
    vals = [float(r[metric]) for r in done]
    n = len(vals)
    mean = sum(vals) / n if n else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else (0.0 if n == 1 else float("nan"))
    out = {
        "metric": metric,
        "n": n,
        "mean": mean,
        "std": std,
        "values": vals,
        "runs": [r["name"] for r in done],
        "failed": [r["name"] for r in rows if r["status"] == "failed"],
        "params": next((r.get("params") for r in done if r.get("params")), None),
    }
    if space == "rnn":
        vv = [float(r["valid_ppl"]) for r in done if isinstance(r.get("valid_ppl"), (int, float))]
        out["valid_mean"] = sum(vv) / len(vv) if vv else float("nan")
    return out


def _run_order(name: str) -> tuple[int, int, str]:
    stage = {"search": 0, "select": 1, "random": 2, "final": 3}.get(name.split("-")[0], 9)
    digits = "".join(c for c in name.rsplit("-", 1)[-1] if c.isdigit())
    return stage, int(digits) if digits else 0, name


def load_summary(path: str | Path) -> dict[str, Any]:
    """The experiment's summary, recomputed from its runs (so it is current even after a hard kill)."""
    return summarize(path)
