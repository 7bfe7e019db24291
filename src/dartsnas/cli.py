"""The ``dartsnas`` command: argument parsing and dispatch only; the work happens in the library.

Typed errors become one line on stderr and a distinct exit code (see ``dartsnas.errors``); an interrupted
run (SIGTERM/SIGINT) saves a checkpoint and exits with 128 + the signal number.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import ConfigError, DartsError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _add_config_options(p: argparse.ArgumentParser, presets: list[str]) -> None:
    p.add_argument("--preset", metavar="NAME", help=f"start from a preset ({', '.join(presets)})")
    p.add_argument("--config", metavar="FILE", help="a JSON file of config fields")
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field (repeatable), e.g. --set layers=5")
    p.add_argument("--run-dir", metavar="DIR", help="where to write the run (default runs/<kind>-<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint")
    p.add_argument("--auto-resume", action="store_true",
                   help="with --run-dir: continue the run there if it has a checkpoint, else start it (for job "
                        "schedulers and torchrun --max-restarts: the same command line starts and continues)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _overrides(args: argparse.Namespace, names: list[str]) -> list[str]:
    out = list(args.set)
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value is not False:
            out.append(f"{name}={value}")
    if getattr(args, "no_progress", False):
        out.append("progress=false")
    return out


def run_target(args: argparse.Namespace) -> tuple[str | None, bool]:
    """(run directory, resume?) for a run command, with ``--resume RUN`` or ``--auto-resume --run-dir DIR``.

    With --auto-resume the config still comes from the command line; the loop then refuses a checkpoint
    whose config differs (field by field), so a changed command cannot silently continue another run.
    """
    if getattr(args, "auto_resume", False):
        if args.resume:
            raise ConfigError("--auto-resume and --resume exclude each other")
        if not args.run_dir:
            raise ConfigError("--auto-resume needs --run-dir")
        from .loops.common import CHECKPOINT

        return args.run_dir, (Path(args.run_dir) / CHECKPOINT).exists()
    return args.resume or args.run_dir, bool(args.resume)


def _resolve_config(cls, args: argparse.Namespace, names: list[str]):
    """A fresh config, or for --resume the run's own config with the given overrides on top."""
    overrides = _overrides(args, names)
    if args.resume:
        path = Path(args.resume) / "config.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            from .errors import RunDirError

            raise RunDirError(f"cannot read the run's config ({e})", str(path)) from None
        saved.pop("kind", None)
        if args.preset or args.config:
            raise ConfigError("--preset/--config cannot be combined with --resume (the run keeps its config)")
        return cls.build(overrides=overrides, **{k: v for k, v in saved.items()})
    return cls.build(args.preset, overrides, args.config)


# ------------------------------------------------------------------------------------------- search

def _search_parser(sub) -> None:
    from .loops.search import SearchConfig

    p = sub.add_parser("search", help="search a cell: CNN (CIFAR-10, built-in data) or recurrent with --space rnn (PTB, built-in corpus)",
                       description="DARTS architecture search. Defaults are the paper's (50 epochs on CIFAR-10); "
                                   "with no dataset given, a quick search on the built-in data.")
    _add_config_options(p, list(SearchConfig.PRESETS))
    p.add_argument("--space", choices=["cnn", "rnn"], default="cnn", help="cell type (default cnn)")
    p.add_argument("--dataset", help="cifar10 or builtin (rnn: ptb, builtin)")
    p.add_argument("--method", help="darts (default), pc-darts, darts-minus, beta-darts, sdarts-rs, sdarts-adv, "
                                    "drnas, gdas, darts-pt; a+b composes")
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="dataset folder (or $DARTSNAS_DATA)")
    p.add_argument("--download", action="store_true", help="fetch CIFAR-10 if missing (needs internet)")
    p.add_argument("--order", type=str, help="1 (first order) or 2 (second order, unrolled)")
    p.add_argument("--epochs", type=str)
    p.add_argument("--batch-size", dest="batch_size", type=str)
    p.add_argument("--seed", type=str)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--subset", type=str, help="use only the first N images of each half")
    p.add_argument("--show-config", action="store_true",
                   help="print the resolved config (every field --set accepts) as JSON and exit")
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    if args.space == "rnn":
        from .loops import rnn_search  # provided by the recurrent module

        return rnn_search.cli_main(args)
    from .loops.search import SearchConfig, run_search

    names = ["dataset", "data_dir", "download", "order", "epochs", "batch_size", "seed", "device", "subset",
             "method"]
    if not args.resume and not args.preset and not args.dataset and not args.config and not any(
            s.startswith("dataset=") for s in args.set):
        args.preset = "quick"  # no dataset named: the quick search on the built-in data
    cfg = _resolve_config(SearchConfig, args, names)
    if args.show_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    run_dir, resume = run_target(args)
    result = run_search(cfg, run_dir=run_dir, resume=resume)
    print(f"genotype: {result.run_dir / 'genotype.json'}")
    print(f"cells:    {result.run_dir / 'normal.svg'}, {result.run_dir / 'reduce.svg'}")
    return 0


def _derive_parser(sub) -> None:
    p = sub.add_parser("derive", help="re-derive the genotype from a search run's checkpoint")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--write", action="store_true", help="also (re)write RUN/genotype.json and the pictures")
    p.set_defaults(func=_cmd_derive)


def _cmd_derive(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .loops.common import CHECKPOINT
    from .space.genotype import genotype_to_json, save_genotype

    run = Path(args.run)
    kind = load_checkpoint(run / CHECKPOINT if run.is_dir() else run).get("kind")
    if kind == "rnn-search":
        from .loops.rnn_search import derive_from_run
    else:
        from .loops.search import derive_from_run
    g = derive_from_run(run)
    print(genotype_to_json(g))
    if args.write:
        from .plot import save_cell_pictures

        folder = run if run.is_dir() else run.parent
        save_genotype(g, folder / "genotype.json")
        save_cell_pictures(g, folder)
    return 0


def _genotype_parser(sub) -> None:
    p = sub.add_parser("genotype", help="show, check or draw a genotype (published name or JSON file)")
    p.add_argument("genotype", nargs="?", help="a name (DARTS_V2, ...) or a genotype.json; omit to list names")
    p.add_argument("--svg", metavar="DIR", help="write the cell pictures into DIR")
    p.set_defaults(func=_cmd_genotype)


def _cmd_genotype(args: argparse.Namespace) -> int:
    from .space.genotype import PUBLISHED, genotype_to_json, load_genotype

    if not args.genotype:
        for name, g in PUBLISHED.items():
            print(f"{name:14s} {g.kind}")
        return 0
    g = load_genotype(args.genotype)
    print(genotype_to_json(g))
    if args.svg:
        from .plot import save_cell_pictures

        Path(args.svg).mkdir(parents=True, exist_ok=True)
        for path in save_cell_pictures(g, args.svg):
            print(f"wrote {path}")
    return 0


PARSERS = [_search_parser, _derive_parser, _genotype_parser]


def _extra_parsers() -> list:
    """Subcommands that live in their own modules (train, eval, select, random, report, ...)."""
    extra = []
    for module in ("cli_train", "cli_protocol"):
        try:
            mod = __import__(f"dartsnas.{module}", fromlist=["PARSERS"])
        except ModuleNotFoundError as e:
            if e.name != f"dartsnas.{module}":
                raise
            continue
        extra.extend(mod.PARSERS)
    return extra


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dartsnas", description="DARTS: Differentiable Architecture Search.")
    parser.add_argument("--version", action="version", version=f"dartsnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for add in PARSERS + _extra_parsers():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .loops.common import Interrupted

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args)
    except Interrupted as e:
        print(f"dartsnas: {e}", file=sys.stderr)
        return 128 + e.signum
    except DartsError as e:
        print(f"dartsnas: {e.kind}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("dartsnas: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a command that stopped reading (e.g. `| head`)
        try:
            sys.stdout = open("/dev/null", "w")
        except OSError:
            pass
        return 0
    except MemoryError:
        print("dartsnas: out of memory; try a smaller --batch-size", file=sys.stderr)
        return 8


if __name__ == "__main__":
    raise SystemExit(main())
