"""``dartsnas lookup GENOTYPE|RUN|STRING``: the NB201 table row of a cell (ROBUST-SPEC §1.7).

The work is ``lookup_command``; ``add_parser``/``run`` are the thin CLI pair.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..space.genotype import load_genotype
from ..space.lookup import load_table, lookup, resolve_table
from ..space.nb201 import NB201Genotype, parse_arch_str


def resolve_nb201_genotype(arg: str) -> NB201Genotype:
    """An architecture string (``|op~0|+...``), a ``genotype.json``, or a run directory holding one."""
    if arg.lstrip().startswith("|"):
        return parse_arch_str(arg)
    g = load_genotype(arg, kind="nb201")
    assert isinstance(g, NB201Genotype)
    return g


def recorded_data_dir(arg: str) -> str | None:
    """The data folder recorded in the ``config.json`` of the run ``arg`` names (the run directory or a file in
    it, such as its genotype.json); None for an architecture string or when there is none to read."""
    p = Path(arg)
    if not p.exists():  # an architecture string, or nothing there
        return None
    run_dir = p if p.is_dir() else p.parent
    try:
        value = json.loads((run_dir / "config.json").read_text()).get("data_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def lookup_command(arg: str, data_dir: str | None = None, table: str | None = None) -> str:
    """The text ``dartsnas lookup`` prints: the cell, its row and its three test accuracies. The table is found
    from ``data_dir``, else ``$DARTSNAS_DATA``, else the data folder in the run's own config.json."""
    g = resolve_nb201_genotype(arg)
    path = resolve_table(table, data_dir, recorded_data_dir(arg))
    row = lookup(g, load_table(path))
    return "\n".join(
        [
            f"cell:  {row.arch_str}",
            f"table: {path} (row {row.index})",
            f"CIFAR-10 test accuracy:                {row.cifar10:.4f} %",
            f"CIFAR-100 test accuracy (x-test):      {row.cifar100:.4f} %",
            f"ImageNet16-120 test accuracy (x-test): {row.imagenet16:.4f} %",
        ]
    )


def add_parser(sub) -> None:
    p = sub.add_parser("lookup", help="NB201 table accuracies of a cell (architecture string, genotype.json or run)")
    p.add_argument("genotype", metavar="GENOTYPE|RUN|STRING")
    p.add_argument(
        "--data-dir",
        dest="data_dir",
        metavar="DIR",
        help="folder holding nasbench201/nb201_accuracies.csv, or a dataset folder beside it (or $DARTSNAS_DATA, "
        "else the data folder in the run's config.json)",
    )
    p.add_argument("--table", metavar="FILE", help="the table file itself")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(lookup_command(args.genotype, args.data_dir, args.table))
    return 0


PARSERS = [add_parser]
