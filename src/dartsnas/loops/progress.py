"""Progress output: the per-epoch bar, and the duration estimate before a long CPU run.

The bar is redrawn in place on a terminal. Without a terminal (a log file, a cluster job) it writes one
line when the step count reaches a multiple of ``log_interval``, at the end of the epoch, and whenever
``time_interval`` seconds (30) have passed since the last line, so a slow run (the paper search on a CPU
takes minutes per 50 steps) shows a first line within half a minute. Deciding whether a line is due only
reads the clock; the running sums (a host synchronisation) are read only for a line that is written.

``RunEstimate``: on a CPU, once the first steps of a run (or of a resumed run) are timed, one message
estimates the duration of the remaining steps, if it exceeds a minute.
"""

from __future__ import annotations

import math
import sys
import time

TTY_REDRAW = 0.2  # seconds between redraws on a terminal
LINE_EVERY = 30.0  # seconds between lines without a terminal
ESTIMATE_STEPS = 3  # steps timed for the estimate (after the first, which carries one-off costs)
ESTIMATE_MIN = 60.0  # estimates shorter than this are not worth a message


class Progress:
    """A dependency-free progress bar on ``stream`` (stderr)."""

    def __init__(
        self,
        total: int,
        desc: str,
        enabled: bool = True,
        stream=None,
        interval: int = 50,
        time_interval: float = LINE_EVERY,
    ):
        self.total, self.desc, self.enabled = total, desc, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = max(1, interval)
        self.time_interval = TTY_REDRAW if self.tty else time_interval
        self.start = time.perf_counter()
        self.last_line = self.start

    def due(self, n: int) -> bool:
        """Whether step ``n`` gets a line (or a redraw)."""
        if not self.enabled:
            return False
        return n % self.interval == 0 or n == self.total or time.perf_counter() - self.last_line >= self.time_interval

    def update(self, n: int, stats: dict[str, float] | None = None) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        self.last_line = now
        shown = min(n, self.total)
        frac = shown / max(1, self.total)
        width = 24
        bar = "#" * int(width * frac) + "-" * (width - int(width * frac))
        elapsed = now - self.start
        rate = n / elapsed if elapsed > 0 else 0.0
        eta = (self.total - shown) / rate if rate > 0 else math.inf
        text = " ".join(f"{k} {v:.4g}" for k, v in (stats or {}).items())
        eta_s = f"{eta:4.0f}s" if math.isfinite(eta) else "  ?s"
        line = f"{self.desc} [{bar}] {shown}/{self.total} {rate:5.2f} it/s eta {eta_s} {text}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class RunEstimate:
    """Times steps 2..1+ESTIMATE_STEPS of this process and reports the remaining duration once."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.seen = 0
        self.t_first = 0.0

    def tick(self, remaining_steps: int) -> str | None:
        """Call after every step with the steps still to run; returns the message, once, when due."""
        if not self.enabled:
            return None
        self.seen += 1
        if self.seen == 1:
            self.t_first = time.perf_counter()
            return None
        if self.seen < 1 + ESTIMATE_STEPS:
            return None
        self.enabled = False
        per_step = (time.perf_counter() - self.t_first) / ESTIMATE_STEPS
        total = per_step * remaining_steps
        if total < ESTIMATE_MIN:
            return None
        return (
            f"estimate: about {format_duration(total)} for the remaining {remaining_steps:,} steps on this CPU "
            f"({per_step:.2f} s/step over the first steps; end-of-epoch evaluation not included)"
        )


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
