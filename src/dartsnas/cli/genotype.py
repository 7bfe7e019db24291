"""``dartsnas genotype``: show, check or draw a genotype (a published name or a genotype.json)."""

from __future__ import annotations

import argparse


def _genotype_parser(sub) -> None:
    p = sub.add_parser("genotype", help="show, check or draw a genotype (published name or JSON file)")
    p.add_argument("genotype", nargs="?", help="a name (DARTS_V2, ...) or a genotype.json; omit to list names")
    p.add_argument("--svg", metavar="DIR", help="write the cell pictures into DIR")
    p.set_defaults(func=_cmd_genotype)


def _cmd_genotype(args: argparse.Namespace) -> int:
    from ..space.genotype import PUBLISHED, genotype_to_json, load_genotype

    if not args.genotype:
        for name, g in PUBLISHED.items():
            print(f"{name:14s} {g.kind}")
        return 0
    g = load_genotype(args.genotype)
    if args.svg:
        from ..checkpoint import make_folder

        folder = make_folder(args.svg, "--svg")  # a file in the way stops before anything is printed
    print(genotype_to_json(g))
    if args.svg:
        from ..plot import save_cell_pictures

        for path in save_cell_pictures(g, folder):
            print(f"wrote {path}")
    return 0


PARSERS = [_genotype_parser]
