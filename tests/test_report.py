"""``dartsnas report``: Table 1 as Markdown and CSV, and the HTML page rendered in headless Chromium."""

import contextlib
import csv
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dartsnas.cli import main

CHROMIUM = next(
    (
        c
        for c in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
        if c and Path(c).exists()
    ),
    None,
)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """A tiny select experiment with its final evaluation, and a random baseline with one failed run. The
    commands run in this process (their runs are subprocesses of the protocol as always); the tests only read."""
    root = tmp_path_factory.mktemp("exps")
    sel, rnd = root / "select", root / "random"
    out = root / "report"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.delenv("DARTSNAS_FAULT", raising=False)
        argv = ["select", "--preset", "tiny", "--searches", "1", "--final", "--final-runs", "2", "--jobs", "2"]
        assert main([*argv, "--experiment", str(sel)]) == 0
        mp.setenv("DARTSNAS_PROTOCOL_FAULT", "random-1=nan_train_at_step:1")
        assert main(["random", "--preset", "tiny", "--samples", "2", "--jobs", "2", "--experiment", str(rnd)]) == 0
        mp.delenv("DARTSNAS_PROTOCOL_FAULT")
        with contextlib.redirect_stdout(printed):
            assert main(["report", str(sel), str(rnd), "--out", str(out), "--paper"]) == 0
    return {"select": sel, "random": rnd, "out": out, "stdout": printed.getvalue()}


def test_markdown_and_csv_tables(experiments):
    out = experiments["out"]
    md = (out / "report.md").read_text()
    header = (
        "| architecture | test error (%) | params (M) | search cost (GPU-days) | search cost (CPU-days) | #ops "
        "| search method |"
    )
    assert header in md and header in experiments["stdout"]
    line = next(x for x in md.splitlines() if x.startswith("| DARTS (first order) + cutout |"))
    assert re.search(r"\d+\.\d\d ± \d+\.\d\d \(2 runs\)", line) and "| 7 | gradient-based |" in line
    # measured on this CPU: the GPU-days cell is empty, the CPU-days cell holds a bare number (one unit a column)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3] == "—" and float(cells[4]) > 0 and "days" not in cells[4]
    paper = next(x for x in md.splitlines() if x.startswith("| DARTS (second order) + cutout [paper] |"))
    assert [c.strip() for c in paper.strip("|").split("|")][3:5] == ["4", "—"]
    assert any(x.startswith("| Random search baseline + cutout |") and "| random |" in x for x in md.splitlines())
    assert "2.76 ± 0.09" in md  # the paper's rows with --paper
    rows = list(csv.DictReader(io.StringIO((out / "report.csv").read_text())))
    measured = [r for r in rows if r["source"] == "measured"]
    assert len(measured) == 2 and len(rows) == 5
    dart, rand = measured
    assert dart["search_method"] == "gradient-based" and int(dart["runs"]) == 2 and float(dart["std"]) >= 0
    assert float(dart["search_cost_cpu_days"]) > 0 and float(dart["params_m"]) > 0 and dart["num_ops"] == "7"
    assert rand["failed_runs"] == "random-1" and rand["chosen_run"] == "random-0" and rand["mean"] == ""


class _Count(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = {}
        self.external = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for k, v in attrs:
            if k in ("src", "href") and v and not v.startswith("#"):
                self.external.append(v)


def test_html_is_self_contained(experiments):
    html = (experiments["out"] / "report.html").read_text()
    p = _Count()
    p.feed(html)
    # cells (2 + 2), one α heatmap per cell type, search curves (2), selection/random/final curves (2 each)
    assert p.tags.get("svg", 0) >= 12
    assert p.tags.get("table", 0) >= 3 and not p.external
    assert "random-1" in html and "not finite" in html  # the failed run is shown with its error


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium chromium-driver)")
def test_html_renders_in_headless_chromium(experiments, tmp_path):
    page = (experiments["out"] / "report.html").resolve()
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'ud'}",
    ]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout)
    assert body, dom.stdout[:500]
    attrs = dict(re.findall(r'(data-[a-z-]+)="(\d+)"', body.group(1)))
    total, shown = int(attrs["data-svg-total"]), int(attrs["data-svg-rendered"])
    assert total >= 12 and shown == total  # every picture was laid out with a non-zero size
    assert int(attrs["data-table-rows"]) == 5  # the results table: 2 measured + 3 paper rows
    assert "Random search baseline + cutout" in dom.stdout and "<svg" in dom.stdout
    shot = tmp_path / "page.png"
    r = subprocess.run(
        flags + ["--window-size=1280,2000", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 20_000
