"""Pictures as self-contained SVG (no plotting library, no system package): cells, curves, heatmaps.

Plotting reads genotypes and metrics, never a live model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from .space.genotype import AnyGenotype, Genotype, RNNGenotype
from .space.nb201 import EDGES as NB201_EDGES
from .space.nb201 import NB201Genotype

OP_COLOURS = {
    "sep_conv_3x3": "#1f77b4", "sep_conv_5x5": "#17becf", "sep_conv_7x7": "#0b4f6c",
    "dil_conv_3x3": "#2ca02c", "dil_conv_5x5": "#8fbc3f", "max_pool_3x3": "#d62728",
    "avg_pool_3x3": "#ff7f0e", "skip_connect": "#7f7f7f", "conv_7x1_1x7": "#9467bd", "none": "#cccccc",
    "nor_conv_3x3": "#1f77b4", "nor_conv_1x1": "#17becf",
    "tanh": "#1f77b4", "relu": "#d62728", "sigmoid": "#2ca02c", "identity": "#7f7f7f",
}


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">\n'
            f"<title>{escape(title)}</title>\n"
            '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#444"/></marker></defs>\n'
            f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n")


def _dag(title: str, nodes: list[tuple[str, str, float, float]], edges: list[tuple[str, str, str]],
         width: float, height: float) -> str:
    """nodes: (id, label, x, y); edges: (src, dst, label). Edges are curved so parallel ones stay apart."""
    pos = {n[0]: (n[2], n[3]) for n in nodes}
    body = [f'<text x="{width / 2:.0f}" y="22" text-anchor="middle" font-size="16" font-weight="bold">'
            f"{escape(title)}</text>"]
    centre_y = sum(y for _, _, _, y in nodes) / max(len(nodes), 1)
    seen: dict[tuple[str, str], int] = {}
    for src, dst, label in edges:
        (x1, y1), (x2, y2) = pos[src], pos[dst]
        k = seen.get((src, dst), 0)
        seen[(src, dst)] = k + 1
        dx, dy = x2 - x1, y2 - y1
        length = math.hypot(dx, dy) or 1.0
        # Bow each edge away from the figure's centre line, more for longer edges, so that an edge that
        # skips over a node does not run through it and parallel edges stay apart.
        outward = -1.0 if (y1 + y2) / 2 <= centre_y else 1.0
        bend = outward * (10 + 0.26 * length + 22 * k) * (1 if dx >= 0 else -1)
        cx, cy = (x1 + x2) / 2 - dy / length * bend, (y1 + y2) / 2 + dx / length * bend
        # shorten both ends so the arrow starts and stops at the nodes' edges (radius 24)
        d1 = math.hypot(cx - x1, cy - y1) or 1.0
        d2 = math.hypot(x2 - cx, y2 - cy) or 1.0
        sx_, sy_ = x1 + (cx - x1) / d1 * 24, y1 + (cy - y1) / d1 * 24
        ex, ey = x2 - (x2 - cx) / d2 * 26, y2 - (y2 - cy) / d2 * 26
        colour = OP_COLOURS.get(label, "#444444")
        body.append(f'<path d="M {sx_:.1f} {sy_:.1f} Q {cx:.1f} {cy:.1f} {ex:.1f} {ey:.1f}" fill="none" '
                    f'stroke="{colour}" stroke-width="2" marker-end="url(#arrow)"/>')
        if label:
            lx, ly = 0.25 * x1 + 0.5 * cx + 0.25 * x2, 0.25 * y1 + 0.5 * cy + 0.25 * y2
            body.append(f'<text x="{lx:.1f}" y="{ly - 4:.1f}" text-anchor="middle" font-size="11" '
                        f'fill="{colour}" stroke="white" stroke-width="3" paint-order="stroke">{escape(label)}</text>')
    for nid, label, x, y in nodes:
        fill = "#dbe9f6" if nid.startswith("in") else ("#fde2b8" if nid == "out" else "#e6f2d9")
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="24" fill="{fill}" stroke="#333" stroke-width="1.5"/>')
        body.append(f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle" font-size="12">{escape(label)}</text>')
    return _svg(width, height, body, title)


def cnn_cell_svg(pairs: Sequence[tuple[str, int]], concat: Sequence[int], title: str) -> str:
    num_nodes = len(pairs) // 2
    width, height = 170 + 150 * (num_nodes + 1), 460
    nodes = [("in0", "c_{k-2}", 60, 110), ("in1", "c_{k-1}", 60, 350)]
    for i in range(num_nodes):
        nodes.append((f"n{i + 2}", str(i), 200 + 150 * i, 190 if i % 2 == 0 else 270))
    nodes.append(("out", "c_{k}", 200 + 150 * num_nodes, 230))
    name = {0: "in0", 1: "in1", **{i + 2: f"n{i + 2}" for i in range(num_nodes)}}
    edges = [(name[src], name[2 + k // 2], op) for k, (op, src) in enumerate(pairs)]
    edges += [(name[c], "out", "") for c in concat]
    return _dag(title, nodes, edges, width, height)


def rnn_cell_svg(g: RNNGenotype, title: str = "recurrent cell") -> str:
    n = len(g.recurrent)
    width, height = 220 + 110 * n, 340
    nodes = [("in_x", "x_t", 50, 100), ("in_h", "h_{t-1}", 50, 240), ("n0", "0", 150, 170)]
    for i in range(n):
        nodes.append((f"n{i + 1}", str(i + 1), 250 + 110 * i, 110 if i % 2 == 0 else 230))
    nodes.append(("out", "h_t (avg)", 250 + 110 * n, 170))
    edges = [("in_x", "n0", ""), ("in_h", "n0", "")]
    edges += [(f"n{src}", f"n{i + 1}", op) for i, (op, src) in enumerate(g.recurrent)]
    edges += [(f"n{c}", "out", "") for c in g.concat]
    return _dag(title, nodes, edges, width, height)


def nb201_cell_svg(g: NB201Genotype, title: str = "NB201 cell") -> str:
    """The NB201 cell (ROBUST-SPEC §1.2): node 0 is the input, node 3 the output; ``none`` edges are omitted."""
    nodes = [("in0", "0", 60, 200), ("n1", "1", 210, 110), ("n2", "2", 360, 290), ("out", "3", 510, 200)]
    name = {0: "in0", 1: "n1", 2: "n2", 3: "out"}
    edges = [(name[src], name[node], op) for (node, src), (op, _) in zip(NB201_EDGES, g.edges) if op != "none"]
    return _dag(f"{title}: {sum(op == 'none' for op, _ in g.edges)} none edge(s)", nodes, edges, 580, 400)


def save_cell_pictures(g: AnyGenotype, folder: str | Path) -> list[Path]:
    """Write ``normal.svg`` and ``reduce.svg`` (CNN) or ``recurrent.svg`` (RNN) into ``folder``."""
    from .checkpoint import atomic_write_text

    folder = Path(folder)
    out = []
    if isinstance(g, NB201Genotype):
        path = folder / "cell.svg"
        atomic_write_text(path, nb201_cell_svg(g))
        return [path]
    if isinstance(g, Genotype):
        for kind, pairs, concat in (("normal", g.normal, g.normal_concat), ("reduce", g.reduce, g.reduce_concat)):
            path = folder / f"{kind}.svg"
            atomic_write_text(path, cnn_cell_svg(pairs, concat, f"{kind} cell"))
            out.append(path)
    else:
        path = folder / "recurrent.svg"
        atomic_write_text(path, rnn_cell_svg(g))
        out.append(path)
    return out


def curves_svg(history: Sequence[dict[str, Any]], series: Sequence[tuple[str, str]], title: str,
               x_key: str = "epoch", width: int = 520, height: int = 300) -> str:
    """Line chart of ``history[i][key]`` for each (key, label) in ``series`` against ``x_key``."""
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    pts = {key: [(r[x_key], r[key]) for r in history if isinstance(r.get(key), (int, float))
                 and isinstance(r.get(x_key), (int, float)) and math.isfinite(r[key])] for key, _ in series}
    allp = [p for v in pts.values() for p in v]
    body = [f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>']
    left, right, top, bottom = 56, width - 16, 34, height - 40
    body.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>')
    if allp:
        xs, ys = [p[0] for p in allp], [p[1] for p in allp]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad

        def sx(v): return left + (v - x0) / (x1 - x0) * (right - left)
        def sy(v): return bottom - (v - y0) / (y1 - y0) * (bottom - top)
        for t in range(5):
            v = y0 + (y1 - y0) * t / 4
            body.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="10">{v:.3g}</text>')
            body.append(f'<line x1="{left}" x2="{right}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/>')
        for t in range(5):
            v = x0 + (x1 - x0) * t / 4
            body.append(f'<text x="{sx(v):.1f}" y="{bottom + 14}" text-anchor="middle" font-size="10">{v:.3g}</text>')
        for c, (key, label) in enumerate(series):
            p = pts[key]
            if not p:
                continue
            colour = colours[c % len(colours)]
            d = " ".join(f"{'M' if i == 0 else 'L'} {sx(a):.1f} {sy(b):.1f}" for i, (a, b) in enumerate(p))
            body.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for a, b in p:
                body.append(f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="2.5" fill="{colour}"/>')
            body.append(f'<text x="{left + 8 + 110 * c}" y="{height - 8}" font-size="11" fill="{colour}">'
                        f"{escape(label)}</text>")
    body.append(f'<text x="{(left + right) / 2}" y="{bottom + 28}" text-anchor="middle" font-size="10">{escape(x_key)}</text>')
    return _svg(width, height, body, title)


def heatmap_svg(matrix: Sequence[Sequence[float]], row_labels: Sequence[str], col_labels: Sequence[str],
                title: str, cell: int = 22) -> str:
    """A matrix of values in [0, 1] as coloured squares (e.g. softmax(alpha) of one cell type)."""
    left, top = 90, 40 + 7 * max((len(c) for c in col_labels), default=0)
    width, height = max(left + cell * len(col_labels) + 20, 260), top + cell * len(row_labels) + 24
    body = [f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>']
    for j, label in enumerate(col_labels):
        x = left + cell * j + cell / 2
        body.append(f'<text x="{x}" y="{top - 6}" font-size="10" transform="rotate(-60 {x} {top - 6})">{escape(label)}</text>')
    # One colour scale for the whole matrix, from its smallest to its largest value, so that nearly uniform
    # alphas look nearly uniform and small differences are still visible; the range is printed below.
    values = [v for row in matrix for v in row]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    for i, (label, row) in enumerate(zip(row_labels, matrix)):
        y = top + cell * i
        body.append(f'<text x="{left - 6}" y="{y + cell * 0.7}" text-anchor="end" font-size="10">{escape(label)}</text>')
        for j, v in enumerate(row):
            t = max(0.0, min(1.0, (v - lo) / span))
            r, g, b = int(255 - 200 * t), int(255 - 120 * t), int(255 - 40 * t)
            body.append(f'<rect x="{left + cell * j}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                        f'fill="rgb({r},{g},{b})"><title>{escape(label)} / {escape(col_labels[j])}: {v:.4f}</title></rect>')
    body.append(f'<text x="{left}" y="{height - 4}" font-size="10">colour: {lo:.4f} (white) to {hi:.4f} (blue)</text>')
    return _svg(width, height, body, title)


def cnn_edge_labels(num_nodes: int) -> list[str]:
    """Row labels of a CNN alpha matrix: ``node ← input`` in the spec's row order (§1.3)."""
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    return [f"{i} ← {names.get(j, str(j - 2))}" for i in range(num_nodes) for j in range(i + 2)]


def save_search_pictures(history: Sequence[dict[str, Any]], folder: str | Path, primitives: Sequence[str]) -> list[Path]:
    """``curves.svg`` (loss and accuracy per epoch) and ``alphas.svg`` (softmax(alpha) of the last epoch,
    normal and reduction side by side) for a CNN search run directory; reads the metrics records only."""
    from .checkpoint import atomic_write_text

    folder = Path(folder)
    if not history:
        return []
    out = []
    charts = [curves_svg(history, [("train_loss", "train loss"), ("valid_loss", "valid loss")], "loss"),
              curves_svg(history, [("train_acc", "train accuracy"), ("valid_acc", "valid accuracy")], "accuracy")]
    charts += diagnostic_charts(history)
    path = folder / "curves.svg"
    atomic_write_text(path, _side_by_side(charts, "search curves"))
    out.append(path)
    last = history[-1]
    if "alphas_normal" in last and "alphas_reduce" in last:
        num_nodes = len(last["genotype"]["normal"]) // 2 if "genotype" in last else 4
        rows = cnn_edge_labels(num_nodes)
        maps = [heatmap_svg(last[key], rows, list(primitives), f"{name} cell, epoch {last['epoch'] + 1}")
                for key, name in (("alphas_normal", "normal"), ("alphas_reduce", "reduction"))]
        path = folder / "alphas.svg"
        atomic_write_text(path, _side_by_side(maps, "softmax(alpha)"))
        out.append(path)
    if "alphas" in last:  # NB201: one 6×5 matrix shared by every cell
        from .space.nb201 import edge_labels

        path = folder / "alphas.svg"
        atomic_write_text(path, heatmap_svg(last["alphas"], edge_labels(), list(primitives),
                                            f"NB201 cell, epoch {last['epoch'] + 1}"))
        out.append(path)
    return out


def diagnostic_charts(history: Sequence[dict[str, Any]]) -> list[str]:
    """Collapse diagnostics (ROBUST-SPEC §2.2), for the records that carry them: λ_max of the α Hessian,
    skip / none / parameter-free counts of the derived cell, and NB201 table accuracies."""
    charts = []
    if any("hessian_eig" in r for r in history):
        charts.append(curves_svg(history, [("hessian_eig", "λ_max (α Hessian)")], "dominant eigenvalue"))
    counts = [(k, label) for k, label in (("skip_count", "skip"), ("none_count", "none"),
                                          ("param_free_count", "parameter-free")) if any(k in r for r in history)]
    if counts:
        charts.append(curves_svg(history, counts, "cell: operation counts"))
    if any("table_cifar10" in r for r in history):
        charts.append(curves_svg(history, [("table_cifar10", "CIFAR-10"), ("table_cifar100", "CIFAR-100"),
                                           ("table_imagenet16", "ImageNet16-120")], "NB201 table test accuracy (%)"))
    return charts


def _side_by_side(svgs: Sequence[str], title: str) -> str:
    """Place complete SVG documents next to each other in one SVG (nested <svg> elements)."""
    import re

    parts, x, height = [], 0.0, 0.0
    for svg in svgs:
        m = re.search(r'width="([0-9.]+)" height="([0-9.]+)"', svg)
        w, h = (float(m.group(1)), float(m.group(2))) if m else (500.0, 300.0)
        inner = svg[svg.index("<svg"):]
        parts.append(inner.replace("<svg ", f'<svg x="{x:.0f}" y="0" ', 1))
        x += w + 10
        height = max(height, h)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{x:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {x:.0f} {height:.0f}"><title>{escape(title)}</title>\n' + "\n".join(parts) + "\n</svg>\n")
