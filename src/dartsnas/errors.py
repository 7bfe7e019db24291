"""Typed errors. Each knows where the problem is; the CLI turns them into one line and an exit code.

Exit codes: 2 usage/config, 3 genotype, 4 data, 5 checkpoint, 6 non-finite value, 7 run directory / I/O,
9 run or experiment directory locked by another process (8 is the CLI's out-of-memory code).
"""

from __future__ import annotations


class DartsError(Exception):
    """Base class of every error dartsnas reports to a user."""

    exit_code = 1
    kind = "error"

    def __init__(self, message: str, path: str | None = None):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ConfigError(DartsError):
    exit_code = 2
    kind = "config error"

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class UsageError(ConfigError):
    """A command line argparse refuses (an unknown option, a missing argument, a bad value of an option)."""

    kind = "usage error"


class GenotypeError(DartsError):
    exit_code = 3
    kind = "genotype error"


class DataError(DartsError):
    exit_code = 4
    kind = "data error"


class CheckpointError(DartsError):
    exit_code = 5
    kind = "checkpoint error"


class NonFiniteError(DartsError):
    """A NaN/inf loss, gradient or alpha, caught before any optimizer step touched it."""

    exit_code = 6
    kind = "non-finite value"

    def __init__(self, what: str, step: int, phase: str, steps_after: int | None = None):
        self.step = step
        self.phase = phase
        # CUDA-graph mode finds a bad value after the fact: steps_after = the steps that ran after the bad one
        self.steps_after = steps_after
        if steps_after is None:
            tail = "no optimizer step was taken, the last good checkpoint is unchanged"
        else:
            tail = (
                f"CUDA-graph mode detects it after the fact: the in-memory state took that step and "
                f"{steps_after} more after it; nothing was saved since, the last good checkpoint is unchanged"
            )
        super().__init__(f"{what} is not finite at step {step} (phase: {phase}); {tail}")


class RunDirError(DartsError):
    exit_code = 7
    kind = "run directory error"


class RunDirLockedError(RunDirError):
    """Another process is writing this run or experiment directory (``DIR/.lock`` is held; see dartsnas.lock)."""

    exit_code = 9
    kind = "run directory locked"

    def __init__(self, path, holder: str = ""):
        who = f" ({holder})" if holder else ""
        super().__init__(
            f"another dartsnas process is writing this directory{who}; wait for it to finish or "
            "stop it, or choose another directory",
            str(path),
        )


class TableError(DataError):
    """The NAS-Bench-201 accuracy table is missing, malformed, or lacks a cell (ROBUST-SPEC §1.7)."""

    kind = "NB201 table error"
