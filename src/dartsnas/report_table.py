"""Reports from experiment directories: the paper's Table 1 (Markdown, CSV) and a self-contained HTML page.

The page holds only inline SVG (cells, alpha heatmaps per cell type over epochs, search and training curves),
inline CSS and a few lines of inline script that count the pictures the browser laid out (for the tests); it
loads nothing from anywhere.

    from dartsnas.report_table import write_report
    write_report(["experiments/select", "experiments/random"], "report")
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from .plot import cnn_cell_svg, curves_svg, heatmap_svg, rnn_cell_svg
from .protocol import Experiment, summarize
from .space.genotype import RNN_PRIMITIVES, Genotype, RNNGenotype, genotype_from_dict
from .space.ops import PRIMITIVES

# One unit per column (issue 12 item 5): the cost measured on GPUs and on CPUs are separate columns, in the
# Markdown as in the CSV (search_cost_gpu_days, search_cost_cpu_days); the paper's rows are GPU-days.
COLUMNS = [
    "architecture",
    "test error (%)",
    "params (M)",
    "search cost (GPU-days)",
    "search cost (CPU-days)",
    "#ops",
    "search method",
]
RNN_COLUMNS = [
    "architecture",
    "perplexity valid",
    "perplexity test",
    "params (M)",
    "search cost (GPU-days)",
    "search cost (CPU-days)",
    "#ops",
    "search method",
]
CSV_FIELDS = [
    "space",
    "architecture",
    "metric",
    "mean",
    "std",
    "runs",
    "valid_ppl",
    "params_m",
    "search_cost_gpu_days",
    "search_cost_cpu_days",
    "num_ops",
    "search_method",
    "chosen_run",
    "selection_metric",
    "selection_score",
    "failed_runs",
    "source",
    "experiment",
]

# Spec §10 [PAPER] rows, for --paper.
PAPER_ROWS = [
    {
        "space": "cnn",
        "architecture": "DARTS (first order) + cutout [paper]",
        "mean": 3.00,
        "std": 0.14,
        "params_m": 3.3,
        "search_cost_gpu_days": 1.5,
        "num_ops": 7,
        "search_method": "gradient-based",
    },
    {
        "space": "cnn",
        "architecture": "DARTS (second order) + cutout [paper]",
        "mean": 2.76,
        "std": 0.09,
        "params_m": 3.3,
        "search_cost_gpu_days": 4,
        "num_ops": 7,
        "search_method": "gradient-based",
    },
    {
        "space": "cnn",
        "architecture": "Random search baseline + cutout [paper]",
        "mean": 3.29,
        "std": 0.15,
        "params_m": 3.2,
        "search_cost_gpu_days": 4,
        "num_ops": 7,
        "search_method": "random",
    },
    {
        "space": "rnn",
        "architecture": "DARTS (first order) [paper]",
        "valid_ppl": 60.2,
        "mean": 57.6,
        "params_m": 23,
        "search_cost_gpu_days": 0.5,
        "num_ops": 4,
        "search_method": "gradient-based",
    },
    {
        "space": "rnn",
        "architecture": "DARTS (second order) [paper]",
        "valid_ppl": 58.1,
        "mean": 55.7,
        "params_m": 23,
        "search_cost_gpu_days": 1,
        "num_ops": 4,
        "search_method": "gradient-based",
    },
    {
        "space": "rnn",
        "architecture": "Random search baseline [paper]",
        "valid_ppl": 61.8,
        "mean": 59.4,
        "params_m": 23,
        "search_cost_gpu_days": 2,
        "num_ops": 4,
        "search_method": "random",
    },
]


# ============================================================================================ table


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _architecture(summary: dict[str, Any]) -> str:
    method, space, kind = summary.get("method"), summary.get("space"), summary.get("kind")
    cfg = summary.get("config", {})
    cutout = ""
    if space == "cnn":
        try:
            from .loops.train import TrainConfig

            over = [s for s in cfg.get("train_set", []) if isinstance(s, str)]
            tc = TrainConfig.build(cfg.get("train_preset", "paper"), over)
            cutout = " + cutout" if tc.cutout > 0 else ""
        except Exception:
            cutout = ""
    if kind == "final":
        return f"{summary.get('final_source') or 'given cell'}{cutout}"
    if method == "random":
        return f"Random search baseline{cutout}"
    order = {1: "first order", 2: "second order"}.get(summary.get("order"), "")
    return f"DARTS ({order}){cutout}" if order else f"DARTS{cutout}"


def table_rows(summaries: Sequence[dict[str, Any]], include_paper: bool = False) -> list[dict[str, Any]]:
    """One row per experiment: Table 1 fields plus what the CSV keeps (selection, failures, cost on CPU)."""
    rows = []
    for s in summaries:
        fin = s.get("final") or {}
        chosen = s.get("chosen") or {}
        params = fin.get("params") or chosen.get("params")
        n = fin.get("n") or 0
        row = {
            "space": s.get("space"),
            "architecture": _architecture(s),
            "metric": fin.get("metric") or ("test_ppl" if s.get("space") == "rnn" else "test_error_percent"),
            "mean": _num(fin.get("mean")) if n else None,
            "std": _num(fin.get("std")) if n else None,
            "runs": n,
            "valid_ppl": _num(fin.get("valid_mean")) if n else None,
            "params_m": params / 1e6 if isinstance(params, (int, float)) else None,
            "search_cost_gpu_days": s.get("search_cost_gpu_days", 0.0),
            "search_cost_cpu_days": s.get("search_cost_cpu_days", 0.0),
            "num_ops": s.get("num_ops"),
            "search_method": {"darts": "gradient-based", "random": "random"}.get(s.get("method"), s.get("method")),
            "chosen_run": chosen.get("run"),
            "selection_metric": chosen.get("metric"),
            "selection_score": chosen.get("score"),
            "failed_runs": " ".join(s.get("failed", [])),
            "source": "measured",
            "experiment": s.get("experiment"),
        }
        if s.get("kind") == "final":
            row["search_method"] = "—"
            row["search_cost_gpu_days"] = row["search_cost_cpu_days"] = None
        rows.append(row)
    if include_paper:
        spaces = {r["space"] for r in rows} or {"cnn"}
        rows += [
            {
                **r,
                "source": "paper",
                "runs": None,
                "metric": "test_ppl" if r["space"] == "rnn" else "test_error_percent",
            }
            for r in PAPER_ROWS
            if r["space"] in spaces
        ]
    return rows


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _mean_std(r: dict[str, Any]) -> str:
    if r.get("mean") is None:
        return "— (no final run)" if r.get("source") == "measured" else "—"
    if r.get("std") is None:
        return _fmt(r["mean"])
    runs = r.get("runs")
    if runs == 1:  # one run: no spread to show (a "± 0.00" would read as a measured std)
        return f"{r['mean']:.2f} (1 run)"
    return f"{r['mean']:.2f} ± {r['std']:.2f}" + (f" ({runs} runs)" if runs else "")


def _cost(r: dict[str, Any], key: str) -> str:
    """One cost cell in its column's unit; "—" where nothing ran on that kind of device (or no search)."""
    v = r.get(key)
    if not isinstance(v, (int, float)) or v <= 0:
        return "—"
    return f"{v:g}" if r.get("source") == "paper" else f"{v:.3g}"


def _cells(r: dict[str, Any]) -> list[str]:
    params = (
        "—"
        if r.get("params_m") is None
        else (f"{r['params_m']:.2f}" if r["params_m"] >= 0.1 else f"{r['params_m']:.4f}")
    )
    cost = [_cost(r, "search_cost_gpu_days"), _cost(r, "search_cost_cpu_days")]
    if r["space"] == "rnn":
        return [
            r["architecture"],
            _fmt(r.get("valid_ppl"), 1),
            _mean_std(r),
            params,
            *cost,
            str(r.get("num_ops", "—")),
            r.get("search_method") or "—",
        ]
    return [r["architecture"], _mean_std(r), params, *cost, str(r.get("num_ops", "—")), r.get("search_method") or "—"]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    out = []
    for space, cols, title in (("cnn", COLUMNS, "CIFAR-10 (Table 1)"), ("rnn", RNN_COLUMNS, "PTB (Table 2)")):
        part = [r for r in rows if r["space"] == space]
        if not part:
            continue
        out.append(f"### {title}\n")
        out.append("| " + " | ".join(cols) + " |")
        out.append("| " + " | ".join("---" for _ in cols) + " |")
        for r in part:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


# ============================================================================================ HTML


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "epoch" in rec and rec.get("event") != "final":
                out.append(rec)
    return out


def _edge_labels_cnn(num_nodes: int) -> list[str]:
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    return [f"{i} ← {names.get(j, str(j - 2))}" for i in range(num_nodes) for j in range(i + 2)]


def _edge_labels_rnn(num_nodes: int) -> list[str]:
    return [f"{i} ← {j}" for i in range(1, num_nodes + 1) for j in range(i)]


def _snapshots(history: list[dict[str, Any]], most: int = 4) -> list[dict[str, Any]]:
    if len(history) <= most:
        return history
    idx = sorted({round(k * (len(history) - 1) / (most - 1)) for k in range(most)})
    return [history[i] for i in idx]


def alpha_heatmaps(history: list[dict[str, Any]], space: str) -> list[tuple[str, list[str]]]:
    """[(cell type, [one heatmap SVG per snapshot epoch])] of softmax(alpha) from a search's metrics."""
    snaps = _snapshots(history)
    out = []
    keys = [("normal", "alphas_normal"), ("reduce", "alphas_reduce")] if space == "cnn" else [("recurrent", "alphas")]
    for label, key in keys:
        svgs = []
        for rec in snaps:
            m = rec.get(key)
            if not isinstance(m, list) or not m:
                continue
            if space == "cnn":
                n = next(k for k in range(1, 64) if k * (k + 3) // 2 >= len(m))
                rows, cols = _edge_labels_cnn(n), list(PRIMITIVES)
            else:
                n = next(k for k in range(1, 64) if k * (k + 1) // 2 >= len(m))
                rows, cols = _edge_labels_rnn(n), list(RNN_PRIMITIVES)
            svgs.append(heatmap_svg(m, rows[: len(m)], cols, f"{label} α, epoch {rec['epoch'] + 1}", cell=16))
        if svgs:
            out.append((label, svgs))
    return out


def _cell_svgs(gdict: Any) -> list[str]:
    try:
        g = genotype_from_dict(gdict)
    except Exception:
        return []
    if isinstance(g, Genotype):
        return [
            cnn_cell_svg(g.normal, g.normal_concat, "normal cell"),
            cnn_cell_svg(g.reduce, g.reduce_concat, "reduction cell"),
        ]
    if isinstance(g, RNNGenotype):
        return [rnn_cell_svg(g, "recurrent cell")]
    return []


def _merge(histories: dict[str, list[dict[str, Any]]], key: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Many runs' ``key`` against epoch as one history with a series per run."""
    by_epoch: dict[int, dict[str, Any]] = {}
    series = []
    for name, hist in histories.items():
        vals = [(r["epoch"], r.get(key)) for r in hist if isinstance(r.get(key), (int, float))]
        if not vals:
            continue
        series.append((name, name))
        for e, v in vals:
            by_epoch.setdefault(e, {"epoch": e})[name] = v
    return [by_epoch[e] for e in sorted(by_epoch)], series


def _curve(histories: dict[str, list[dict[str, Any]]], key: str, title: str) -> str | None:
    hist, series = _merge(histories, key)
    if not series:
        return None
    return curves_svg(hist, series, title)  # curves_svg counts the records' epochs from 1


def _figure(svg: str, caption: str) -> str:
    return f'<figure class="pic">{_strip_xml(svg)}<figcaption>{escape(caption)}</figcaption></figure>'


def _strip_xml(svg: str) -> str:
    return svg.split("?>", 1)[1] if svg.startswith("<?xml") else svg


def _experiment_section(summary: dict[str, Any], k: int) -> str:
    exp = Experiment(summary["experiment"])
    space = summary.get("space", "cnn")
    parts = [
        f'<section class="experiment" id="exp{k}"><h2>{escape(_architecture(summary))} — '
        f"<code>{escape(str(exp.path))}</code></h2>"
    ]
    cost = summary.get("cost", {})
    cost_line = "; ".join(
        f"{stage}: {v.get('gpu_hours', 0):.3g} GPU-h, {v.get('cpu_hours', 0):.3g} CPU-h" for stage, v in cost.items()
    )
    parts.append(
        f"<p>kind <b>{escape(str(summary.get('kind')))}</b>, space <b>{escape(space)}</b>, "
        f"cost (measured): {escape(cost_line)}</p>"
    )
    # Runs table
    parts.append(
        '<table class="runs"><thead><tr><th>run</th><th>status</th><th>score</th><th>hours</th>'
        "<th>device</th><th>error</th></tr></thead><tbody>"
    )
    for r in summary.get("runs", []):
        score = r.get("score")
        if score is None:
            score = r.get("test_error_percent") if space == "cnn" else r.get("test_ppl")
        chosen = (summary.get("chosen") or {}).get("run") == r.get("name")
        parts.append(
            f'<tr class="{escape(str(r.get("status")))}{" chosen" if chosen else ""}">'
            f"<td>{escape(str(r.get('name')))}{' ★' if chosen else ''}</td>"
            f"<td>{escape(str(r.get('status')))}</td>"
            f"<td>{'' if score is None else escape(f'{score:.4g}')}</td>"
            f"<td>{'' if r.get('hours') is None else escape(format(r['hours'], '.3g'))}</td>"
            f"<td>{escape(str(r.get('device') or ''))}</td>"
            f"<td>{escape(str(r.get('error') or ''))}</td></tr>"
        )
    parts.append("</tbody></table>")
    # Cells
    chosen = summary.get("chosen") or {}
    gdict = summary.get("final_genotype") or chosen.get("genotype")
    if gdict:
        which = "evaluated cell" if summary.get("final_genotype") else f"chosen cell ({chosen.get('run')})"
        parts.append(f"<h3>{escape(which)}</h3><div class='row'>")
        parts += [_figure(svg, which) for svg in _cell_svgs(gdict)]
        parts.append("</div>")
    # Alphas over epochs, search curves
    runs = summary.get("runs", [])
    searches = {r["name"]: _metrics(exp.run_dir(r["name"])) for r in runs if r.get("stage") == "search"}
    if searches:
        main = chosen.get("search_run") or next(iter(searches))
        if main in searches and searches[main]:
            parts.append(f"<h3>α over epochs ({escape(main)}), one heatmap per cell type and epoch</h3>")
            for label, svgs in alpha_heatmaps(searches[main], space):
                parts.append(f"<h4>{escape(label)} cell</h4><div class='row'>")
                parts += [_figure(svg, f"{label} α") for svg in svgs]
                parts.append("</div>")
        parts.append("<h3>search curves</h3><div class='row'>")
        keys = (
            [("valid_acc", "search: validation accuracy"), ("train_loss", "search: training loss")]
            if space == "cnn"
            else [("valid_ppl", "search: validation perplexity"), ("train_ppl", "search: training perplexity")]
        )
        for key, title in keys:
            svg = _curve(searches, key, title)
            if svg:
                parts.append(_figure(svg, title))
        parts.append("</div>")
    for stage, title in (
        ("select", "selection trainings (scored on held-out training data)"),
        ("random", "random cells' selection trainings"),
        ("final", "final trainings"),
    ):
        hists = {r["name"]: _metrics(exp.run_dir(r["name"])) for r in runs if r.get("stage") == stage}
        hists = {k: v for k, v in hists.items() if v}
        if not hists:
            continue
        parts.append(f"<h3>{escape(title)}</h3><div class='row'>")
        if space == "cnn":
            what = "validation (D_α) top-1" if stage != "final" else "test top-1"
            keys = [("test_top1", what), ("train_loss", "training loss")]
        else:
            keys = [("valid_ppl", "validation perplexity"), ("train_ppl", "training perplexity")]
        for key, label in keys:
            svg = _curve(hists, key, f"{stage}: {label}")
            if svg:
                parts.append(_figure(svg, f"{stage}: {label}"))
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


_CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 4px 8px; text-align: left; font-size: 14px; }
th { background: #f0f0f0; }
tr.failed td { background: #fde8e8; } tr.chosen td { font-weight: bold; }
tr.interrupted td, tr.running td { background: #fff6dd; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
figure.pic { margin: 0; border: 1px solid #ddd; padding: 4px; }
figure.pic svg { max-width: 100%; height: auto; }
figcaption { font-size: 12px; color: #555; text-align: center; }
section.experiment { border-top: 2px solid #888; margin-top: 2em; }
"""

# Counts the inline SVGs the browser laid out (non-zero size); the tests read it from the rendered DOM.
_SCRIPT = """
window.addEventListener('load', function () {
  var all = document.querySelectorAll('svg');
  var shown = 0;
  for (var i = 0; i < all.length; i++) {
    var b = all[i].getBoundingClientRect();
    if (b.width > 0 && b.height > 0) shown++;
  }
  document.body.setAttribute('data-svg-total', String(all.length));
  document.body.setAttribute('data-svg-rendered', String(shown));
  document.body.setAttribute('data-table-rows', String(document.querySelectorAll('table.results tbody tr').length));
});
"""


def html_page(rows: Sequence[dict[str, Any]], summaries: Sequence[dict[str, Any]], title: str) -> str:
    head = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>"
    )
    body = [f"<h1>{escape(title)}</h1>"]
    for space, cols, name in (("cnn", COLUMNS, "CIFAR-10 (Table 1)"), ("rnn", RNN_COLUMNS, "PTB (Table 2)")):
        part = [r for r in rows if r["space"] == space]
        if not part:
            continue
        body.append(f"<h2>{escape(name)}</h2>")
        body.append(
            f'<table class="results" id="table-{space}"><thead><tr>'
            + "".join(f"<th>{escape(c)}</th>" for c in cols)
            + "</tr></thead><tbody>"
        )
        for r in part:
            body.append(
                f'<tr class="{escape(r.get("source", ""))}">'
                + "".join(f"<td>{escape(c)}</td>" for c in _cells(r))
                + "</tr>"
            )
        body.append("</tbody></table>")
    body.append(
        "<p>Search cost counts the searches only (the random baseline: its cells' trainings), as in the "
        "paper; measured hours of the machine that ran them, GPU-days (runs on a GPU) and CPU-days (runs on a "
        "CPU) in separate columns. Epochs count from 1.</p>"
    )
    for k, s in enumerate(summaries):
        body.append(_experiment_section(s, k))
    return head + "\n".join(body) + "\n</body></html>\n"


def write_report(
    experiments: Sequence[str | Path],
    out_dir: str | Path,
    include_paper: bool = False,
    title: str = "DARTS reproduction",
) -> dict[str, Any]:
    """Write report.md, report.csv and report.html into ``out_dir``; return their paths and the Markdown."""
    from .checkpoint import atomic_write_text, make_folder
    from .protocol.compare import is_compare

    if any(is_compare(p) for p in experiments):  # methods × seeds: the comparison table (report_compare.py)
        from .report_compare import write_compare_report

        return write_compare_report(experiments, out_dir, include_paper, title)
    summaries = [summarize(p) for p in experiments]
    rows = table_rows(summaries, include_paper)
    out = make_folder(out_dir, "report folder")
    md = markdown_table(rows)
    paths = {"md": out / "report.md", "csv": out / "report.csv", "html": out / "report.html"}
    atomic_write_text(paths["md"], f"# {title}\n\n" + md)
    atomic_write_text(paths["csv"], csv_table(rows))
    atomic_write_text(paths["html"], html_page(rows, summaries, title))
    return {**paths, "markdown_text": md, "rows": rows}
