"""Looking an NB201 cell up in the project's accuracy table (ROBUST-SPEC §1.7).

The table ``nasbench201/nb201_accuracies.csv`` has one row per cell, in benchmark index order, with the
test accuracies (%) of the cell trained 200 epochs: CIFAR-10 on its test set, CIFAR-100 and ImageNet16-120
on their x-test halves. A genotype maps to its row by exact match of its architecture string; there is no
normalisation, and a miss is an error. The table is for reporting only: it never feeds a gradient or a
choice of the search (§2.2, §5).

Example::

    >>> from dartsnas.space.lookup import lookup, resolve_table
    >>> from dartsnas.space.nb201 import parse_arch_str
    >>> row = lookup(parse_arch_str("|skip_connect~0|+|skip_connect~0|skip_connect~1|+"
    ...                             "|skip_connect~0|skip_connect~1|skip_connect~2|"), resolve_table())
    >>> row.index, row.cifar10
    (1835, 54.2967)
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import TableError
from .nb201 import NB201Genotype

TABLE_NAME = "nb201_accuracies.csv"
TABLE_SUBPATH = Path("nasbench201") / TABLE_NAME
HEADER = ("arch_index", "arch_str", "cifar10_test_acc", "cifar100_test_acc", "imagenet16_test_acc", "unique_str")
NUM_ROWS = 15625  # 5^6 cells (§1.2)


@dataclass(frozen=True, slots=True)
class TableRow:
    index: int
    arch_str: str
    cifar10: float
    cifar100: float
    imagenet16: float
    unique_str: str

    def accuracies(self) -> dict[str, float]:
        return {"cifar10": self.cifar10, "cifar100": self.cifar100, "imagenet16_120": self.imagenet16}

    def to_dict(self) -> dict[str, object]:
        return {"row": self.index, "arch_str": self.arch_str, **self.accuracies()}


@dataclass(frozen=True)
class NB201Table:
    path: Path
    rows: tuple[TableRow, ...]
    by_arch: dict[str, TableRow]


def resolve_table(
    path: str | Path | None = None, data_dir: str | Path | None = None, run_data_dir: str | Path | None = None
) -> Path:
    """The table file: an explicit ``path``, else found from ``data_dir``, else from ``$DARTSNAS_DATA``, else
    from ``run_data_dir`` (the data folder a run's config records, for ``dartsnas lookup RUN``).

    From a folder, ``nasbench201/nb201_accuracies.csv`` is looked for in it and in its two parents, so a
    dataset folder such as ``data/cifar10`` (or ``data/cifar10/subset-15k.npz``) finds ``data/nasbench201``.
    """
    if path is not None:
        p = Path(path)
        if p.is_dir():
            for cand in (p / TABLE_NAME, p / TABLE_SUBPATH):
                if cand.is_file():
                    return cand
            raise TableError(f"no {TABLE_NAME} in this folder", str(p))
        if not p.is_file():
            raise TableError("no such file", str(p))
        return p

    def near(folder) -> list[Path]:  # the folder and its two parents
        d = Path(folder)
        return [d, *list(d.parents)[:2]]

    roots: list[Path] = near(data_dir) if data_dir is not None else []
    env = os.environ.get("DARTSNAS_DATA")
    if env:
        roots.append(Path(env))
    if run_data_dir:
        roots += near(run_data_dir)
    for root in roots:
        for cand in (root / TABLE_SUBPATH, root / TABLE_NAME):
            if cand.is_file():
                return cand
    where = ", ".join(str(r) for r in roots) or "nowhere (no --data-dir and no DARTSNAS_DATA)"
    raise TableError(f"cannot find {TABLE_SUBPATH}; looked in {where}", "table")


def load_table(path: str | Path) -> NB201Table:
    """Read and check the table once per file version (cached on path, size and modification time)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise TableError(f"cannot read ({e.strerror})", str(p)) from None
    return _load_table(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_table(path: str, size: int, mtime_ns: int) -> NB201Table:
    rows: list[TableRow] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != HEADER:
                raise TableError(f"expected the header {','.join(HEADER)}", path)
            for line, rec in enumerate(reader, start=2):
                if len(rec) != len(HEADER):
                    raise TableError(f"line {line}: expected {len(HEADER)} fields, got {len(rec)}", path)
                try:
                    idx = int(rec[0])
                    accs = [float(v) for v in rec[2:5]]
                except ValueError:
                    raise TableError(f"line {line}: arch_index and accuracies must be numbers", path) from None
                if idx != len(rows):
                    raise TableError(f"line {line}: arch_index {idx} out of order (expected {len(rows)})", path)
                if not all(0.0 <= a <= 100.0 for a in accs):
                    raise TableError(f"line {line}: accuracies must be percentages in 0..100", path)
                rows.append(TableRow(idx, rec[1], accs[0], accs[1], accs[2], rec[5]))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TableError(f"cannot read ({type(e).__name__}: {e})", path) from None
    if len(rows) != NUM_ROWS:
        raise TableError(f"expected {NUM_ROWS:,} rows, got {len(rows):,}", path)
    by_arch = {r.arch_str: r for r in rows}
    if len(by_arch) != NUM_ROWS:
        raise TableError("architecture strings are not all distinct", path)
    return NB201Table(Path(path), tuple(rows), by_arch)


def lookup(genotype: NB201Genotype, table: str | Path | NB201Table) -> TableRow:
    """The table row of ``genotype`` by exact architecture-string match; a miss raises TableError."""
    t = table if isinstance(table, NB201Table) else load_table(table)
    key = genotype.arch_str()
    row = t.by_arch.get(key)
    if row is None:
        raise TableError(f"{key} is not in the table", str(t.path))
    return row
