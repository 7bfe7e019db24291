"""Pictures that fit and do not overlap (issue 12, item 5): cell drawings inside their viewBox, curve legends
clear of the axis labels, epochs counted from 1.

Geometry is recomputed here from the SVG text itself: circles by centre and radius, paths by sampling their
segments, text by an estimated box (0.6 em per character, ascent 0.8 em, descent 0.25 em).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from dartsnas.plot import cnn_cell_svg, curves_svg, rnn_cell_svg
from dartsnas.space.genotype import PUBLISHED, Genotype

NS = "{http://www.w3.org/2000/svg}"


def _text_box(el) -> tuple[float, float, float, float]:
    x, y, size = float(el.get("x")), float(el.get("y")), float(el.get("font-size", 12))
    w = 0.6 * size * len(el.text or "")
    anchor = el.get("text-anchor", "start")
    x0 = x - w / 2 if anchor == "middle" else x - w if anchor == "end" else x
    return x0, y - 0.8 * size, x0 + w, y + 0.25 * size


def _path_points(d: str) -> list[tuple[float, float]]:
    tokens = re.findall(r"[MLQ]|-?[0-9.]+", d)
    pts, cur, i = [], None, 0
    while i < len(tokens):
        cmd = tokens[i]
        if cmd in "ML":
            cur = (float(tokens[i + 1]), float(tokens[i + 2]))
            pts.append(cur)
            i += 3
        elif cmd == "Q":
            c = (float(tokens[i + 1]), float(tokens[i + 2]))
            e = (float(tokens[i + 3]), float(tokens[i + 4]))
            for k in range(101):
                t = k / 100
                pts.append(
                    tuple((1 - t) ** 2 * p0 + 2 * t * (1 - t) * pc + t * t * p1 for p0, pc, p1 in zip(cur, c, e))
                )
            cur = e
            i += 5
        else:
            raise AssertionError(f"unexpected path command {cmd}")
    return pts


def _boxes(svg: str) -> tuple[tuple[float, float, float, float], list[tuple[str, tuple]]]:
    root = ET.fromstring(svg)
    vb = tuple(map(float, root.get("viewBox").split()))
    assert float(root.get("width")) == vb[2] and float(root.get("height")) == vb[3]
    out = []
    for el in root.iter():
        tag = el.tag.replace(NS, "")
        if el in root.findall(f"{NS}defs") or tag in ("svg", "title", "defs", "marker"):
            continue
        if tag == "circle":
            cx, cy, r = (float(el.get(k)) for k in ("cx", "cy", "r"))
            out.append(("circle", (cx - r, cy - r, cx + r, cy + r)))
        elif tag == "path" and el.get("marker-end") is not None or tag == "path" and el.get("fill") == "none":
            pts = _path_points(el.get("d"))
            out.append(
                (
                    "path",
                    (min(p[0] for p in pts), min(p[1] for p in pts), max(p[0] for p in pts), max(p[1] for p in pts)),
                )
            )
        elif tag == "text":
            out.append((f"text {el.text!r}", _text_box(el)))
        elif tag == "line":
            x1, x2, y1, y2 = (float(el.get(k)) for k in ("x1", "x2", "y1", "y2"))
            out.append(("line", (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))))
    return vb, out


def _inside(box, vb) -> bool:
    x0, y0, w, h = vb
    return box[0] >= x0 and box[1] >= y0 and box[2] <= x0 + w and box[3] <= y0 + h


def _cell_pictures():
    for name, g in PUBLISHED.items():
        if isinstance(g, Genotype):
            yield f"{name}-normal", cnn_cell_svg(g.normal, g.normal_concat, "normal cell")
            yield f"{name}-reduce", cnn_cell_svg(g.reduce, g.reduce_concat, "reduction cell")
        else:
            yield name, rnn_cell_svg(g, "recurrent cell")


@pytest.mark.parametrize("name,svg", list(_cell_pictures()), ids=lambda v: v if len(v) < 30 else "svg")
def test_every_drawn_element_lies_inside_the_viewbox(name, svg):
    vb, boxes = _boxes(svg)
    assert len([b for b in boxes if b[0] == "circle"]) >= 5
    outside = [(what, tuple(round(v) for v in box)) for what, box in boxes if not _inside(box, vb)]
    assert not outside, f"{name}: outside the {vb} viewBox: {outside}"


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _history(n: int) -> list[dict]:
    return [
        {
            "epoch": e,
            "train_ppl": 900.0 - 50 * e,
            "valid_ppl": 950.0 - 40 * e,
            "train_acc": 0.1 + 0.01 * e,
            "test_top1": 0.12 + 0.01 * e,
            "test_top5": 0.5 + 0.01 * e,
        }
        for e in range(n)
    ]


@pytest.mark.parametrize(
    "series,title",
    [
        ([("train_ppl", "train"), ("valid_ppl", "valid")], "perplexity"),
        ([("train_acc", "train acc"), ("test_top1", "test top-1"), ("test_top5", "test top-5")], "accuracy"),
        (
            [
                ("train_acc", "a rather long series name number one"),
                ("test_top1", "another long series name, two"),
                ("test_top5", "and a third long series name"),
            ],
            "accuracy",
        ),
    ],
)
@pytest.mark.parametrize("epochs", [1, 3, 50])
def test_curve_labels_and_legend_do_not_intersect(series, title, epochs):
    svg = curves_svg(_history(epochs), series, title)
    vb, boxes = _boxes(svg)
    texts = [(w, b) for w, b in boxes if w.startswith("text")]
    legend = [(w, b) for w, b in texts if any(w == f"text {label!r}" for _, label in series)]
    assert len(legend) == len(series)
    others = [(w, b) for w, b in texts if (w, b) not in legend]
    assert any(w == "text 'epoch'" for w, _ in others)
    for w1, b1 in legend:
        assert _inside(b1, vb), w1
        for w2, b2 in others:
            assert not _overlap(b1, b2), (w1, w2)
    for i, (w1, b1) in enumerate(legend):
        for w2, b2 in legend[i + 1 :]:
            assert not _overlap(b1, b2), (w1, w2)
    for w, b in texts:
        assert _inside(b, vb), w


def test_curve_axes_count_epochs_from_one():
    root = ET.fromstring(curves_svg(_history(3), [("train_ppl", "train")], "perplexity"))
    texts = [el for el in root.iter(f"{NS}text")]
    ticks = sorted((float(el.get("x")), el.text) for el in texts if el.get("y") == str(300 - 40 + 14))
    assert [t for _, t in ticks] == ["1", "2", "3"]
    points = sorted(float(c.get("cx")) for c in root.iter(f"{NS}circle"))
    assert points[0] == pytest.approx(ticks[0][0]) and points[-1] == pytest.approx(ticks[-1][0])
