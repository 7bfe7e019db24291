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
    "sep_conv_3x3": "#1f77b4",
    "sep_conv_5x5": "#17becf",
    "sep_conv_7x7": "#0b4f6c",
    "dil_conv_3x3": "#2ca02c",
    "dil_conv_5x5": "#8fbc3f",
    "max_pool_3x3": "#d62728",
    "avg_pool_3x3": "#ff7f0e",
    "skip_connect": "#7f7f7f",
    "conv_7x1_1x7": "#9467bd",
    "none": "#cccccc",
    "nor_conv_3x3": "#1f77b4",
    "nor_conv_1x1": "#17becf",
    "tanh": "#1f77b4",
    "relu": "#d62728",
    "sigmoid": "#2ca02c",
    "identity": "#7f7f7f",
}


def _svg(width: float, height: float, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">\n'
        f"<title>{escape(title)}</title>\n"
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#444"/></marker></defs>\n'
        f'<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n"
    )


NODE_R = 24
CHAR_W = 0.6  # average glyph width of Helvetica/Arial in em, for text extents (labels are short, mostly ASCII)


def text_box(x: float, y: float, text: str, size: float, anchor: str = "start") -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) that a text of ``size`` px drawn at baseline (x, y) with ``anchor`` covers (estimated)."""
    w = CHAR_W * size * len(text)
    x0 = x - w / 2 if anchor == "middle" else (x - w if anchor == "end" else x)
    return x0, y - 0.8 * size, x0 + w, y + 0.25 * size


def _quad_extent(p0: float, c: float, p1: float) -> tuple[float, float]:
    """Extent of a quadratic Bezier coordinate: its ends and, if inside (0, 1), the turning point."""
    vals = [p0, p1]
    den = p0 - 2 * c + p1
    if den:
        t = (p0 - c) / den
        if 0 < t < 1:
            vals.append((1 - t) ** 2 * p0 + 2 * t * (1 - t) * c + t * t * p1)
    return min(vals), max(vals)


def _dag(title: str, nodes: list[tuple[str, str, float, float]], edges: list[tuple[str, str, str]]) -> str:
    """nodes: (id, label, x, y); edges: (src, dst, label). Edges are curved so parallel ones stay apart.

    The layout's coordinates are free; the picture is sized to the box around every circle, edge and label
    (plus a margin and the title), so nothing is clipped whatever the number of nodes.
    """
    pos = {n[0]: (n[2], n[3]) for n in nodes}
    centre_y = sum(y for _, _, _, y in nodes) / max(len(nodes), 1)
    seen: dict[tuple[str, str], int] = {}
    paths, labels, boxes = [], [], []
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
        # shorten both ends so the arrow starts and stops at the nodes' edges
        d1 = math.hypot(cx - x1, cy - y1) or 1.0
        d2 = math.hypot(x2 - cx, y2 - cy) or 1.0
        sx_, sy_ = x1 + (cx - x1) / d1 * NODE_R, y1 + (cy - y1) / d1 * NODE_R
        ex, ey = x2 - (x2 - cx) / d2 * (NODE_R + 2), y2 - (y2 - cy) / d2 * (NODE_R + 2)
        colour = OP_COLOURS.get(label, "#444444")
        paths.append((sx_, sy_, cx, cy, ex, ey, colour))
        (bx0, bx1), (by0, by1) = _quad_extent(sx_, cx, ex), _quad_extent(sy_, cy, ey)
        boxes.append((bx0 - 4, by0 - 4, bx1 + 4, by1 + 4))  # stroke and arrow head
        if label:
            lx, ly = 0.25 * x1 + 0.5 * cx + 0.25 * x2, 0.25 * y1 + 0.5 * cy + 0.25 * y2 - 4
            labels.append((lx, ly, label, colour))
            boxes.append(text_box(lx, ly, label, 11, "middle"))
    for _, label, x, y in nodes:
        boxes.append((x - NODE_R - 1, y - NODE_R - 1, x + NODE_R + 1, y + NODE_R + 1))
        boxes.append(text_box(x, y + 4, label, 12, "middle"))
    margin, title_h = 12, 34
    x_lo, y_lo = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x_hi, y_hi = max(b[2] for b in boxes), max(b[3] for b in boxes)
    width = max(x_hi - x_lo, text_box(0, 0, title, 16)[2] * 1.1) + 2 * margin
    height = y_hi - y_lo + 2 * margin + title_h
    ox, oy = margin - x_lo + (width - 2 * margin - (x_hi - x_lo)) / 2, margin + title_h - y_lo
    body = [
        f'<text x="{width / 2:.0f}" y="24" text-anchor="middle" font-size="16" font-weight="bold">'
        f"{escape(title)}</text>"
    ]
    for sx_, sy_, cx, cy, ex, ey, colour in paths:
        body.append(
            f'<path d="M {sx_ + ox:.1f} {sy_ + oy:.1f} Q {cx + ox:.1f} {cy + oy:.1f} {ex + ox:.1f} '
            f'{ey + oy:.1f}" fill="none" stroke="{colour}" stroke-width="2" marker-end="url(#arrow)"/>'
        )
    for lx, ly, label, colour in labels:
        body.append(
            f'<text x="{lx + ox:.1f}" y="{ly + oy:.1f}" text-anchor="middle" font-size="11" '
            f'fill="{colour}" stroke="white" stroke-width="3" paint-order="stroke">{escape(label)}</text>'
        )
    for nid, label, x, y in nodes:
        fill = "#dbe9f6" if nid.startswith("in") else ("#fde2b8" if nid == "out" else "#e6f2d9")
        body.append(
            f'<circle cx="{x + ox:.1f}" cy="{y + oy:.1f}" r="{NODE_R}" fill="{fill}" stroke="#333" stroke-width="1.5"/>'
        )
        body.append(
            f'<text x="{x + ox:.1f}" y="{y + oy + 4:.1f}" text-anchor="middle" font-size="12">{escape(label)}</text>'
        )
    return _svg(math.ceil(width), math.ceil(height), body, title)


def cnn_cell_svg(pairs: Sequence[tuple[str, int]], concat: Sequence[int], title: str) -> str:
    num_nodes = len(pairs) // 2
    nodes = [("in0", "c_{k-2}", 60, 110), ("in1", "c_{k-1}", 60, 350)]
    for i in range(num_nodes):
        nodes.append((f"n{i + 2}", str(i), 200 + 150 * i, 190 if i % 2 == 0 else 270))
    nodes.append(("out", "c_{k}", 200 + 150 * num_nodes, 230))
    name = {0: "in0", 1: "in1", **{i + 2: f"n{i + 2}" for i in range(num_nodes)}}
    edges = [(name[src], name[2 + k // 2], op) for k, (op, src) in enumerate(pairs)]
    edges += [(name[c], "out", "") for c in concat]
    return _dag(title, nodes, edges)


def rnn_cell_svg(g: RNNGenotype, title: str = "recurrent cell") -> str:
    n = len(g.recurrent)
    nodes = [("in_x", "x_t", 50, 100), ("in_h", "h_{t-1}", 50, 240), ("n0", "0", 150, 170)]
    for i in range(n):
        nodes.append((f"n{i + 1}", str(i + 1), 250 + 110 * i, 110 if i % 2 == 0 else 230))
    nodes.append(("out", "h_t (avg)", 250 + 110 * n, 170))
    edges = [("in_x", "n0", ""), ("in_h", "n0", "")]
    edges += [(f"n{src}", f"n{i + 1}", op) for i, (op, src) in enumerate(g.recurrent)]
    edges += [(f"n{c}", "out", "") for c in g.concat]
    return _dag(title, nodes, edges)


def nb201_cell_svg(g: NB201Genotype, title: str = "NB201 cell") -> str:
    """The NB201 cell (ROBUST-SPEC §1.2): node 0 is the input, node 3 the output; ``none`` edges are omitted."""
    nodes = [("in0", "0", 60, 200), ("n1", "1", 210, 110), ("n2", "2", 360, 290), ("out", "3", 510, 200)]
    name = {0: "in0", 1: "n1", 2: "n2", 3: "out"}
    edges = [(name[src], name[node], op) for (node, src), (op, _) in zip(NB201_EDGES, g.edges) if op != "none"]
    return _dag(f"{title}: {sum(op == 'none' for op, _ in g.edges)} none edge(s)", nodes, edges)


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


def curves_svg(
    history: Sequence[dict[str, Any]],
    series: Sequence[tuple[str, str]],
    title: str,
    x_key: str = "epoch",
    width: int = 520,
    height: int = 300,
) -> str:
    """Line chart of ``history[i][key]`` for each (key, label) in ``series`` against ``x_key``.

    Metrics records count epochs from 0; the axis counts them from 1 (epoch 1 is the first epoch), as every
    message a user reads does. The legend sits in rows under the title, the axis label under the ticks, so
    neither can cover the other.
    """
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]
    shift = 1 if x_key == "epoch" else 0
    pts = {
        key: [
            (r[x_key] + shift, r[key])
            for r in history
            if isinstance(r.get(key), (int, float)) and isinstance(r.get(x_key), (int, float)) and math.isfinite(r[key])
        ]
        for key, _ in series
    }
    allp = [p for v in pts.values() for p in v]
    body = [
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">{escape(title)}</text>'
    ]
    y_range = None
    if allp:
        ys = [p[1] for p in allp]
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
        pad = 0.05 * (y1 - y0)
        y_range = (y0 - pad, y1 + pad)
    y_ticks = [y_range[0] + (y_range[1] - y_range[0]) * t / 4 for t in range(5)] if y_range else []
    # The plot starts right of its widest tick label.
    left = max([56.0] + [10 + text_box(0, 0, f"{v:.3g}", 10)[2] for v in y_ticks])
    right = width - 16
    legend_y, lx = 40, left
    legend = []
    for c, (key, label) in enumerate(series):
        if not pts[key]:
            continue
        w = 22 + text_box(0, 0, label, 11)[2] + 16
        if lx + w > right and lx > left:
            lx, legend_y = left, legend_y + 16
        colour = colours[c % len(colours)]
        legend.append(
            f'<line x1="{lx}" x2="{lx + 16}" y1="{legend_y - 4}" y2="{legend_y - 4}" stroke="{colour}" '
            f'stroke-width="2"/>'
        )
        legend.append(f'<text x="{lx + 22}" y="{legend_y}" font-size="11" fill="{colour}">{escape(label)}</text>')
        lx += w
    top, bottom = legend_y + 12, height - 40
    body += legend
    body.append(
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>'
    )
    if allp and y_range:
        xs = [p[0] for p in allp]
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = y_range

        def sx(v):
            return left + (v - x0) / (x1 - x0) * (right - left)

        def sy(v):
            return bottom - (v - y0) / (y1 - y0) * (bottom - top)

        for v in y_ticks:
            body.append(f'<text x="{left - 4}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="10">{v:.3g}</text>')
            body.append(f'<line x1="{left}" x2="{right}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/>')
        if shift and all(float(v).is_integer() for v in xs):  # whole epochs: whole-number ticks
            step = max(1, math.ceil((x1 - x0) / 5))
            ticks = list(range(int(x0), int(x1) + 1, step))
        else:
            ticks = [x0 + (x1 - x0) * t / 4 for t in range(5)]
        for v in ticks:
            body.append(f'<text x="{sx(v):.1f}" y="{bottom + 14}" text-anchor="middle" font-size="10">{v:.3g}</text>')
        for c, (key, _label) in enumerate(series):
            p = pts[key]
            if not p:
                continue
            colour = colours[c % len(colours)]
            d = " ".join(f"{'M' if i == 0 else 'L'} {sx(a):.1f} {sy(b):.1f}" for i, (a, b) in enumerate(p))
            body.append(f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for a, b in p:
                body.append(f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="2.5" fill="{colour}"/>')
    body.append(
        f'<text x="{(left + right) / 2}" y="{bottom + 30}" text-anchor="middle" font-size="11">{escape(x_key)}</text>'
    )
    return _svg(width, height, body, title)


def heatmap_svg(
    matrix: Sequence[Sequence[float]], row_labels: Sequence[str], col_labels: Sequence[str], title: str, cell: int = 22
) -> str:
    """A matrix of values in [0, 1] as coloured squares (e.g. softmax(alpha) of one cell type)."""
    left, top = 90, 40 + 7 * max((len(c) for c in col_labels), default=0)
    width, height = max(left + cell * len(col_labels) + 20, 260), top + cell * len(row_labels) + 24
    body = [
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>'
    ]
    for j, label in enumerate(col_labels):
        x = left + cell * j + cell / 2
        body.append(
            f'<text x="{x}" y="{top - 6}" font-size="10" transform="rotate(-60 {x} {top - 6})">{escape(label)}</text>'
        )
    # One colour scale for the whole matrix, from its smallest to its largest value, so that nearly uniform
    # alphas look nearly uniform and small differences are still visible; the range is printed below.
    values = [v for row in matrix for v in row]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    for i, (label, row) in enumerate(zip(row_labels, matrix)):
        y = top + cell * i
        body.append(
            f'<text x="{left - 6}" y="{y + cell * 0.7}" text-anchor="end" font-size="10">{escape(label)}</text>'
        )
        for j, v in enumerate(row):
            t = max(0.0, min(1.0, (v - lo) / span))
            r, g, b = int(255 - 200 * t), int(255 - 120 * t), int(255 - 40 * t)
            body.append(
                f'<rect x="{left + cell * j}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                f'fill="rgb({r},{g},{b})"><title>{escape(label)} / {escape(col_labels[j])}: {v:.4f}</title></rect>'
            )
    body.append(f'<text x="{left}" y="{height - 4}" font-size="10">colour: {lo:.4f} (white) to {hi:.4f} (blue)</text>')
    return _svg(width, height, body, title)


def cnn_edge_labels(num_nodes: int) -> list[str]:
    """Row labels of a CNN alpha matrix: ``node ← input`` in the spec's row order (§1.3)."""
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    return [f"{i} ← {names.get(j, str(j - 2))}" for i in range(num_nodes) for j in range(i + 2)]


def save_search_pictures(
    history: Sequence[dict[str, Any]], folder: str | Path, primitives: Sequence[str]
) -> list[Path]:
    """``curves.svg`` (loss and accuracy per epoch) and ``alphas.svg`` (softmax(alpha) of the last epoch,
    normal and reduction side by side) for a CNN search run directory; reads the metrics records only."""
    from .checkpoint import atomic_write_text

    folder = Path(folder)
    if not history:
        return []
    out = []
    charts = [
        curves_svg(history, [("train_loss", "train loss"), ("valid_loss", "valid loss")], "loss"),
        curves_svg(history, [("train_acc", "train accuracy"), ("valid_acc", "valid accuracy")], "accuracy"),
    ]
    charts += diagnostic_charts(history)
    path = folder / "curves.svg"
    atomic_write_text(path, _side_by_side(charts, "search curves"))
    out.append(path)
    last = history[-1]
    if "alphas_normal" in last and "alphas_reduce" in last:
        num_nodes = len(last["genotype"]["normal"]) // 2 if "genotype" in last else 4
        rows = cnn_edge_labels(num_nodes)
        maps = [
            heatmap_svg(last[key], rows, list(primitives), f"{name} cell, epoch {last['epoch'] + 1}")
            for key, name in (("alphas_normal", "normal"), ("alphas_reduce", "reduction"))
        ]
        path = folder / "alphas.svg"
        atomic_write_text(path, _side_by_side(maps, "softmax(alpha)"))
        out.append(path)
    if "alphas" in last:  # NB201: one 6×5 matrix shared by every cell
        from .space.nb201 import edge_labels

        path = folder / "alphas.svg"
        atomic_write_text(
            path, heatmap_svg(last["alphas"], edge_labels(), list(primitives), f"NB201 cell, epoch {last['epoch'] + 1}")
        )
        out.append(path)
    return out


def diagnostic_charts(history: Sequence[dict[str, Any]]) -> list[str]:
    """Collapse diagnostics (ROBUST-SPEC §2.2), for the records that carry them: λ_max of the α Hessian,
    skip / none / parameter-free counts of the derived cell, and NB201 table accuracies."""
    charts = []
    if any("hessian_eig" in r for r in history):
        charts.append(curves_svg(history, [("hessian_eig", "λ_max (α Hessian)")], "dominant eigenvalue"))
    counts = [
        (k, label)
        for k, label in (("skip_count", "skip"), ("none_count", "none"), ("param_free_count", "parameter-free"))
        if any(k in r for r in history)
    ]
    if counts:
        charts.append(curves_svg(history, counts, "cell: operation counts"))
    if any("table_cifar10" in r for r in history):
        charts.append(
            curves_svg(
                history,
                [
                    ("table_cifar10", "CIFAR-10"),
                    ("table_cifar100", "CIFAR-100"),
                    ("table_imagenet16", "ImageNet16-120"),
                ],
                "NB201 table test accuracy (%)",
            )
        )
    return charts


def _side_by_side(svgs: Sequence[str], title: str) -> str:
    """Place complete SVG documents next to each other in one SVG (nested <svg> elements)."""
    import re

    parts, x, height = [], 0.0, 0.0
    for svg in svgs:
        m = re.search(r'width="([0-9.]+)" height="([0-9.]+)"', svg)
        w, h = (float(m.group(1)), float(m.group(2))) if m else (500.0, 300.0)
        inner = svg[svg.index("<svg") :]
        parts.append(inner.replace("<svg ", f'<svg x="{x:.0f}" y="0" ', 1))
        x += w + 10
        height = max(height, h)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{x:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {x:.0f} {height:.0f}"><title>{escape(title)}</title>\n' + "\n".join(parts) + "\n</svg>\n"
    )
