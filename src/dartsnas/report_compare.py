"""The comparison table of a ``dartsnas compare`` experiment (Markdown, CSV, a section of the HTML page).

NB201: per method the table test accuracies on CIFAR-10 / CIFAR-100 / ImageNet16-120 (mean ± std over the
seeds that finished), the final cells, the measured search cost and peak memory, next to the published rows
of ROBUST-SPEC §1.8 (marked "published"). DARTS space: the derived cells and the parameter count of their
evaluation network (C = 36, 20 cells, CIFAR-10, without the auxiliary head). The page adds one figure of the
collapse diagnostics per method (λ_max and skip count per epoch, mean over seeds).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from .plot import cnn_cell_svg, curves_svg, nb201_cell_svg

# ROBUST-SPEC §1.8: published NB201 results, test accuracy %, searched on CIFAR-10 (mean, std; None = not given).
PUBLISHED_NB201 = [
    {
        "method": "DARTS-V1 / V2 (NB201 paper)",
        "cifar10": (54.30, 0.00),
        "cifar100": (15.61, 0.00),
        "imagenet16_120": (16.32, 0.00),
        "note": "row 1835, the all-skip cell",
    },
    {
        "method": "DARTS (as quoted by DrNAS)",
        "cifar10": (54.30, 0.00),
        "cifar100": (38.97, 0.00),
        "imagenet16_120": (18.41, 0.00),
        "note": "C100 / IN16 = row 2299",
    },
    {
        "method": "GDAS",
        "cifar10": (93.61, 0.09),
        "cifar100": (70.70, 0.30),
        "imagenet16_120": (41.71, 0.98),
        "note": "",
    },
    {
        "method": "PC-DARTS (quoted by DrNAS)",
        "cifar10": (93.41, 0.30),
        "cifar100": (67.48, 0.89),
        "imagenet16_120": (41.31, 0.22),
        "note": "not in the PC-DARTS paper",
    },
    {
        "method": "DrNAS",
        "cifar10": (94.36, 0.00),
        "cifar100": (73.51, 0.00),
        "imagenet16_120": (46.34, 0.00),
        "note": "row 9930",
    },
    {
        "method": "β-DARTS",
        "cifar10": (94.36, 0.00),
        "cifar100": (73.51, 0.00),
        "imagenet16_120": (46.34, 0.00),
        "note": "row 9930",
    },
    {
        "method": "DARTS-",
        "cifar10": (93.80, 0.40),
        "cifar100": (71.53, 1.51),
        "imagenet16_120": (45.12, 0.82),
        "note": "",
    },
    {
        "method": "DARTS+PT",
        "cifar10": (88.11, None),
        "cifar100": None,
        "imagenet16_120": None,
        "note": "CIFAR-10 only (error 11.89); C100 / IN16 curves only",
    },
    {
        "method": "blank+PT (α fixed at 0, then PT)",
        "cifar10": (93.80, None),
        "cifar100": None,
        "imagenet16_120": None,
        "note": "CIFAR-10 only (error 6.20)",
    },
    {
        "method": "optimum (best cell in the table)",
        "cifar10": (94.37, None),
        "cifar100": (73.51, None),
        "imagenet16_120": (47.31, None),
        "note": "per dataset",
    },
]

NB201_COLUMNS = [
    "method",
    "CIFAR-10 (%)",
    "CIFAR-100 (%)",
    "ImageNet16-120 (%)",
    "seeds",
    "final cells",
    "search cost per run",
    "peak memory",
    "source",
]
DARTS_COLUMNS = [
    "method",
    "seeds",
    "final cells (normal / reduce)",
    "params (M), C=36, 20 cells",
    "test error (%)",
    "search cost per run",
    "peak memory",
    "source",
]
CSV_FIELDS = [
    "space",
    "method",
    "source",
    "seeds_done",
    "seeds_run",
    "cifar10_mean",
    "cifar10_std",
    "cifar100_mean",
    "cifar100_std",
    "imagenet16_120_mean",
    "imagenet16_120_std",
    "params_mean",
    "params_std",
    "test_error_mean",
    "test_error_std",
    "test_error_runs",
    "gpu_hours_mean",
    "cpu_hours_mean",
    "peak_memory_bytes",
    "peak_memory_source",
    "failed_runs",
    "cells",
    "note",
    "experiment",
]
_ACC = ("cifar10", "cifar100", "imagenet16_120")


def _pm(stat: Any, digits: int = 2, scale: float = 1.0) -> str:
    if not stat:
        return "—"
    if isinstance(stat, tuple):
        mean, std = stat
        return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")
    if stat.get("n") == 1:  # one seed: no spread to show (a "± 0.00" would read as a measured std)
        return f"{stat['mean'] * scale:.{digits}f}"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _cost(m: dict[str, Any]) -> str:
    parts = []
    if m.get("gpu_hours"):
        parts.append(f"{m['gpu_hours']['mean']:.3g} GPU-h")
    if m.get("cpu_hours"):
        parts.append(f"{m['cpu_hours']['mean']:.3g} CPU-h")
    return ", ".join(parts) or "—"


def _memory(m: dict[str, Any]) -> str:
    b = m.get("peak_memory_bytes")
    if not b:
        return "—"
    what = {"cuda_max_memory_allocated": "CUDA allocated", "cpu_peak_rss": "peak RSS"}
    kinds = ", ".join(what.get(k, k) for k in m.get("peak_memory_source") or [])
    return f"{b / 2**30:.2f} GiB" + (f" ({kinds})" if kinds else "")


def _seeds(m: dict[str, Any]) -> str:
    s = f"{m['n']}/{m['runs']}"
    return s + (f" ({len(m['failed'])} failed)" if m.get("failed") else "")


def _cnn_cell(g: Any) -> str:
    if not isinstance(g, dict):
        return "?"
    return "; ".join(",".join(f"{e['op']}~{e['input']}" for e in g.get(k) or []) for k in ("normal", "reduce"))


def method_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per compared method (and the random baseline), as plain values (for Markdown, CSV, HTML)."""
    rows = []
    space = summary.get("space")
    for m in summary.get("methods", []):
        row = {
            "space": space,
            "method": m["method"],
            "source": "measured",
            "stats": m,
            "seeds_done": m["n"],
            "seeds_run": m["runs"],
            "failed_runs": ";".join(m.get("failed") or []),
            "gpu_hours_mean": (m.get("gpu_hours") or {}).get("mean"),
            "cpu_hours_mean": (m.get("cpu_hours") or {}).get("mean"),
            "peak_memory_bytes": m.get("peak_memory_bytes"),
            "peak_memory_source": ";".join(m.get("peak_memory_source") or []),
            "experiment": summary.get("experiment"),
        }
        if space == "nb201":
            for k in _ACC:
                row[f"{k}_mean"] = (m.get(k) or {}).get("mean")
                row[f"{k}_std"] = (m.get(k) or {}).get("std")
            row["cells"] = ";".join(
                f"seed {c['seed']}: row {c.get('table_row')} {c.get('arch_str')}" for c in m.get("cells", [])
            )
        else:
            row["params_mean"] = (m.get("params") or {}).get("mean")
            row["params_std"] = (m.get("params") or {}).get("std")
            row["test_error_mean"] = (m.get("test_error") or {}).get("mean")
            row["test_error_std"] = (m.get("test_error") or {}).get("std")
            row["test_error_runs"] = (m.get("test_error") or {}).get("n")
            row["cells"] = " | ".join(f"seed {c['seed']}: {_cnn_cell(c.get('genotype'))}" for c in m.get("cells", []))
        rows.append(row)
    rb = summary.get("random")
    if space == "nb201" and rb:
        row = {
            "space": space,
            "method": f"random cell (mean of {rb['samples']} table look-ups)",
            "source": "table look-up",
            "seeds_done": rb["seeds"],
            "seeds_run": rb["seeds"],
            "note": "no training, zero cost; no selection (the table has test accuracies only)",
            "experiment": summary.get("experiment"),
            "stats": rb,
        }
        for k in _ACC:
            row[f"{k}_mean"] = (rb.get(k) or {}).get("mean")
            row[f"{k}_std"] = (rb.get(k) or {}).get("std")
        rows.append(row)
    rs = summary.get("random_search")
    if space == "nb201" and rs and rs.get("seeds"):
        rows.append(random_search_row(rs, summary))
    if space == "nb201":
        for p in PUBLISHED_NB201:
            row = {"space": space, "method": p["method"], "source": "published", "note": p["note"]}
            for k in _ACC:
                row[f"{k}_mean"], row[f"{k}_std"] = p[k] if p[k] else (None, None)
            rows.append(row)
    return rows


def random_search_row(rs: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """The trained random search (protocol/random_search.py): selected cells' table accuracies over seeds."""
    row = {
        "space": "nb201",
        "method": f"random search ({rs['samples']} cells × {rs['epochs_each']} epochs, best by validation)",
        "source": "random search",
        "seeds_done": rs["seeds"],
        "seeds_run": rs["seeds"],
        "gpu_hours_mean": (rs.get("gpu_hours") or {}).get("mean"),
        "cpu_hours_mean": (rs.get("cpu_hours") or {}).get("mean"),
        "cells": ";".join(f"seed {c['seed']}: row {c.get('table_row')} {c.get('arch_str')}" for c in rs["cells"]),
        "note": "cells trained on the search's data, selected by D_alpha accuracy, then looked up",
        "experiment": summary.get("experiment"),
        "stats": rs,
    }
    for k in _ACC:
        row[f"{k}_mean"] = (rs.get(k) or {}).get("mean")
        row[f"{k}_std"] = (rs.get(k) or {}).get("std")
    return row


def _percent(v: Any) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) else "—"


def _acc_cell(r: dict[str, Any], k: str) -> str:
    mean, std = r.get(f"{k}_mean"), r.get(f"{k}_std")
    if mean is None:
        return "—"
    return f"{mean:.2f}" + ("" if std is None else f" ± {std:.2f}")


def _cells(r: dict[str, Any], space: str) -> list[str]:
    m = r.get("stats") if r["source"] == "measured" else None
    if space == "nb201":
        if r["source"] == "measured":
            cells = (
                "<br>".join(f"s{c['seed']}: {c.get('arch_str')} (row {c.get('table_row')})" for c in m.get("cells", []))
                or "—"
            )
            return [r["method"], *(_acc_cell(r, k) for k in _ACC), _seeds(m), cells, _cost(m), _memory(m), "measured"]
        if r["source"] == "random search":
            rs = r["stats"]
            cells = "<br>".join(
                f"s{c['seed']}: {c.get('arch_str')} (row {c.get('table_row')}, valid {_percent(c.get('valid_acc'))})"
                for c in rs["cells"]
            )
            return [r["method"], *(_acc_cell(r, k) for k in _ACC), str(rs["seeds"]), cells, _cost(rs), "—", r["note"]]
        seeds = f"{r['seeds_done']}" if r["source"] == "table look-up" else "—"
        cost = "0 (no training)" if r["source"] == "table look-up" else "—"
        note = r["source"] + (f": {r['note']}" if r.get("note") else "")
        return [r["method"], *(_acc_cell(r, k) for k in _ACC), seeds, "—", cost, "—", note]
    params = m.get("params")
    return [
        r["method"],
        _seeds(m),
        "<br>".join(f"s{c['seed']}: {_cnn_cell(c.get('genotype'))}" for c in m.get("cells", [])) or "—",
        _pm(params, 2, 1e-6),
        _test_error(m),
        _cost(m),
        _memory(m),
        "measured",
    ]


def _test_error(m: dict[str, Any]) -> str:
    te = m.get("test_error")
    if not te:
        return "—" if not m.get("final_failed") else f"— ({len(m['final_failed'])} failed)"
    text = f"{te['mean']:.2f} ± {te['std']:.2f} (n={te['n']})"
    return text + (f" ({len(m['final_failed'])} failed)" if m.get("final_failed") else "")


def markdown(summary: dict[str, Any]) -> str:
    space = summary.get("space")
    cols = NB201_COLUMNS if space == "nb201" else DARTS_COLUMNS
    title = (
        "NAS-Bench-201, table test accuracy of the final cells (mean ± std over seeds)"
        if space == "nb201"
        else f"DARTS space ({space}), derived cells"
    )
    lines = [
        f"## {title}: `{summary.get('experiment')}`",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + " --- |" * len(cols),
    ]
    for r in method_rows(summary):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(r, space)) + " |")
    lines.append("")
    lines.append(_footnote(summary))
    return "\n".join(lines) + "\n"


def _footnote(summary: dict[str, Any]) -> str:
    from .protocol.compare import DEFAULT_PRESET

    cfg = summary.get("config", {})
    preset = cfg.get("preset") or DEFAULT_PRESET.get(str(summary.get("space")), "")
    text = (
        f"Searches: preset `{preset}` (space {summary.get('space')}), "
        f"epochs {cfg.get('search_epochs') or 'of the preset'}, "
        f"seeds {', '.join(map(str, summary.get('seeds', [])))}; "
        "mean ± std (sample std, n − 1) over the seeds that finished; failed runs are listed and excluded. "
        "Search cost: each run's wall time (summed over resumes) in GPU-hours (run on a GPU) or CPU-hours "
        "(run on a CPU), mean per run. Peak memory: the largest over the runs; CUDA max_memory_allocated on "
        "a GPU, the process's peak resident set size (getrusage) on a CPU."
    )
    if summary.get("space") == "nb201":
        text += (
            " Published rows: ROBUST-SPEC §1.8 (searched on CIFAR-10 with each paper's own protocol, not "
            "this experiment's)."
        )
    else:
        text += (
            " Parameters: the evaluation network at C = 36, 20 cells, CIFAR-10, without the auxiliary head. "
            "Test error: one training of each seed's cell (train preset "
            f"`{cfg.get('train_preset')}`, epochs {cfg.get('final_epochs') or 'of the preset'}), mean ± std "
            "over the cells; — when no final trainings were run (--final)."
        )
    return text


def csv_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in CSV_FIELDS} for r in method_rows(summary)]


def csv_text(summaries: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for s in summaries:
        for r in csv_rows(s):
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    return buf.getvalue()


# ============================================================================================ HTML


def diagnostic_series(summary: dict[str, Any], key: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Per epoch, the mean over each method's finished seeds of ``key`` (``lambda_max`` or ``skip_count``):
    (records {"epoch": e, method: mean, ...}, the methods that have a value)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    methods = []
    for m in (m["method"] for m in summary.get("methods", [])):
        curves = [r[key] for r in summary.get("runs", []) if r["method"] == m and r["status"] == "done"]
        for e in range(max((len(c) for c in curves), default=0)):
            vals = [c[e] for c in curves if e < len(c) and isinstance(c[e], (int, float))]
            if vals:
                by_epoch.setdefault(e, {"epoch": e})[m] = sum(vals) / len(vals)
                if m not in methods:
                    methods.append(m)
    return [by_epoch[e] for e in sorted(by_epoch)], methods


def diagnostics_svgs(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(svg, caption) of λ_max and skip count per epoch, one line per method (mean over its finished seeds)."""
    out = []
    for key, title, caption in (
        ("lambda_max", "λ_max of the α Hessian", "λ_max per epoch (mean over seeds)"),
        ("skip_count", "skip connections in the cell", "skip connections per epoch (mean over seeds)"),
    ):
        hist, methods = diagnostic_series(summary, key)
        if methods:
            out.append((curves_svg(hist, [(m, m) for m in methods], title), caption))
    return out


def _cell_figures(summary: dict[str, Any]) -> list[tuple[str, str]]:
    from .errors import GenotypeError
    from .space.genotype import genotype_from_dict
    from .space.nb201 import parse_arch_str

    out = []
    for m in summary.get("methods", []):
        for c in m.get("cells", []):
            caption = f"{m['method']}, seed {c['seed']}"
            try:
                if summary.get("space") == "nb201" and c.get("arch_str"):
                    out.append((nb201_cell_svg(parse_arch_str(c["arch_str"]), caption), caption))
                elif c.get("genotype"):
                    g = genotype_from_dict(c["genotype"])
                    out.append((cnn_cell_svg(g.normal, g.normal_concat, f"{caption}: normal"), f"{caption}: normal"))
            except (GenotypeError, KeyError, TypeError, ValueError):
                continue
    return out


def html_section(summary: dict[str, Any], k: int) -> str:
    space = summary.get("space")
    cols = NB201_COLUMNS if space == "nb201" else DARTS_COLUMNS
    parts = [
        (
            f'<section class="experiment compare" id="cmp{k}"><h2>comparison ({escape(str(space))}) — '
            f"<code>{escape(str(summary.get('experiment')))}</code></h2>"
        ),
        f'<table class="results compare" id="table-compare-{k}"><thead><tr>'
        + "".join(f"<th>{escape(c)}</th>" for c in cols)
        + "</tr></thead><tbody>",
    ]
    for r in method_rows(summary):
        cells = [escape(c).replace("&lt;br&gt;", "<br>") for c in _cells(r, space)]
        parts.append(
            f'<tr class="{escape(r["source"].replace(" ", "-"))}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
        )
    parts.append("</tbody></table>")
    parts.append(f"<p>{escape(_footnote(summary))}</p>")
    failed = [r for r in summary.get("runs", []) if r["status"] == "failed"]
    if failed:
        parts.append(
            "<p>failed runs (excluded): "
            + "; ".join(f"{escape(r['name'])}: {escape(str(r.get('error') or ''))}" for r in failed)
            + "</p>"
        )
    diag = diagnostics_svgs(summary)
    if diag:
        parts.append("<h3>collapse diagnostics per method</h3><div class='row'>")
        parts += [_figure(svg, cap) for svg, cap in diag]
        parts.append("</div>")
    cells = _cell_figures(summary)
    if cells:
        parts.append("<h3>final cells</h3><div class='row'>")
        parts += [_figure(svg, cap) for svg, cap in cells]
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)


def _figure(svg: str, caption: str) -> str:
    body = svg.split("?>", 1)[1] if svg.startswith("<?xml") else svg
    return f'<figure class="pic">{body}<figcaption>{escape(caption)}</figcaption></figure>'


def write_compare_report(
    experiments: Sequence[str | Path],
    out_dir: str | Path,
    include_paper: bool = False,
    title: str = "DARTS reproduction",
) -> dict[str, Any]:
    """``dartsnas report`` when at least one experiment is a compare experiment: the comparison tables of those,
    the paper's Table 1 of the others (``report_table.table_rows``), in report.md, report.csv (one file per kind:
    report.csv for the protocol experiments, compare.csv for the comparisons) and report.html."""
    from . import report_table as base
    from .checkpoint import atomic_write_text, make_folder
    from .protocol.compare import is_compare, summarize_compare

    cmp_paths = [p for p in experiments if is_compare(p)]
    other = [p for p in experiments if not is_compare(p)]
    cmp = [summarize_compare(p) for p in cmp_paths]
    protocol = [base.summarize(p) for p in other]
    rows = base.table_rows(protocol, include_paper) if protocol else []
    out = make_folder(out_dir, "report folder")
    md = "\n".join(markdown(s) for s in cmp)
    if rows:
        md += "\n" + base.markdown_table(rows)
    paths = {"md": out / "report.md", "csv": out / "compare.csv", "html": out / "report.html"}
    atomic_write_text(paths["md"], f"# {title}\n\n" + md)
    atomic_write_text(paths["csv"], csv_text(cmp))
    if rows:
        paths["protocol_csv"] = out / "report.csv"
        atomic_write_text(paths["protocol_csv"], base.csv_table(rows))
    page = base.html_page(rows, protocol, title) if protocol else base.html_page([], [], title)
    sections = "\n".join(html_section(s, k) for k, s in enumerate(cmp))
    page = page.replace("\n</body></html>\n", "\n" + sections + "\n</body></html>\n")
    atomic_write_text(paths["html"], page)
    return {**paths, "markdown_text": md, "rows": rows, "compare": cmp}
