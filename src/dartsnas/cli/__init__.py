"""The ``dartsnas`` command: argument parsing and dispatch only; the work happens in the library.

One module per group of subcommands (``search``: search, derive; ``train``: train, eval; ``protocol``:
select, random, evaluate-final, report; ``genotype``), each with a ``PARSERS`` list of functions that add
their subcommands to the parser; ``COMMAND_MODULES`` lists them in help order. A new group is a new module
here plus its name in ``COMMAND_MODULES``. Nothing below the CLI imports it.

Typed errors become one line on stderr and a distinct exit code (see ``dartsnas.errors``); an interrupted
run (SIGTERM/SIGINT) saves a checkpoint and exits with 128 + the signal number. ``main(argv)`` returns the
exit code, so tests and scripts can call the CLI in-process.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import DartsError
from .common import Parser

COMMAND_MODULES: tuple[str, ...] = ("search", "train", "protocol", "genotype", "lookup", "export", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dartsnas", description="DARTS: Differentiable Architecture Search.")
    parser.add_argument("--version", action="version", version=f"dartsnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        for add in importlib.import_module(f"{__name__}.{name}").PARSERS:
            add(sub)
    return parser


def entry() -> None:
    """The ``dartsnas`` program: ``main`` on the command line, then the exit (see ``distributed.exit_process``)."""
    from ..distributed import exit_process

    exit_process(main() or 0)


def main(argv: list[str] | None = None) -> int:
    """Run one ``dartsnas`` command line (``argv`` without the program name); returns the exit code."""
    from ..loops.common import Interrupted
    from ..loops.logs import configure_cli_logging

    configure_cli_logging()  # library messages (the dartsnas logger) print as plain lines on stdout
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return e.code if isinstance(e.code, int) else 0
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        rc = args.func(args)
        if not rc:
            from ..distributed import shutdown

            shutdown()  # a finished torchrun worker leaves its process group before the interpreter exits
        return rc
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
