"""Where the loops' messages and metrics go: the ``dartsnas`` logger and the optional TensorBoard writer.

Library code never prints: messages go to ``logging.getLogger("dartsnas")`` at INFO level, or to the
``log`` callable a caller passes to ``run_search`` and friends (kept for API users). The command line
installs one handler that prints the plain message on stdout (``configure_cli_logging``); a library user
sees nothing unless they configure logging (``logging.basicConfig(level=logging.INFO)``).

``TensorBoardHook``: with ``tensorboard=true`` in a loop's config, every numeric field of every metrics
record is also written as a TensorBoard scalar under ``RUN/tensorboard/`` (x axis: the 1-based epoch).
It needs the optional extra ``tensorboard`` (``pip install 'dartsnas[tensorboard]'``).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError

LOGGER = logging.getLogger("dartsnas")

Log = Callable[[str], Any]


def emitter(log: Log | None) -> Log:
    """The caller's ``log`` callable, or the ``dartsnas`` logger at INFO level."""
    return log if log is not None else LOGGER.info


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a message is emitted (the CLI may run in process, e.g. under
    a test's captured output)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_cli_logging() -> None:
    """The command line's handler: the message alone, one line each, on stdout (idempotent)."""
    if not any(isinstance(h, _StdoutHandler) for h in LOGGER.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)


class TensorBoardHook:
    """Writes each metrics record's numbers as scalars ``<name>`` at step ``epoch + 1``."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "tensorboard: needs the tensorboard package: pip install 'dartsnas[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def __call__(self, record: dict[str, Any]) -> None:
        if "epoch" not in record:
            return
        step = int(record["epoch"]) + 1
        for key, value in record.items():
            if (
                key != "epoch"
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
