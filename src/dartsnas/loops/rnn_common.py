"""What the recurrent search and training loops share (spec §7.3–7.6): segment lengths, perplexity, fault hooks.

- ``search_seq_len``: 35 with p = 0.95, else 17 (int(35 / 2)), the search rule of §7.4.
- ``train_seq_len``: max(5, int(N(μ, 5))) capped at bptt + 20 (55), μ = bptt with p = 0.95 else bptt / 2.
- ``scaled_lr``: the per-step learning rate lr·ℓ/bptt (restored after the step by the caller).
- ``evaluate_lm``: eval mode, hidden zeroed, windows of ``bptt`` rows; loss = Σ mean-NLL·ℓ / rows of the
  batchified split (the reference divides by all rows, one more than the predicted rows; §7.6), ppl = exp.

The segment lengths come from a dedicated ``torch.Generator`` so that they are checkpointed with the
other random streams and do not depend on how many dropout masks were drawn.
"""

from __future__ import annotations

import math

import torch

MAX_SEQ_LEN_DELTA = 20  # evaluation: at most bptt + 20 = 55 rows per segment (§7.4)


def search_seq_len(gen: torch.Generator, bptt: int) -> int:
    """§7.4 search: ``bptt`` with probability 0.95, else ``int(bptt / 2)``."""
    u = torch.rand((), generator=gen).item()
    return bptt if u < 0.95 else max(1, int(bptt / 2))


def train_seq_len(gen: torch.Generator, bptt: int, max_delta: int = MAX_SEQ_LEN_DELTA) -> int:
    """§7.4 evaluation: max(5, int(N(μ, 5))) with μ = bptt (p = 0.95) or bptt / 2, at most bptt + max_delta."""
    u = torch.rand((), generator=gen).item()
    mu = bptt if u < 0.95 else bptt / 2.0
    z = torch.randn((), generator=gen).item()
    return min(max(5, int(mu + 5.0 * z)), bptt + max_delta)


def scaled_lr(lr: float, seq_len: int, bptt: int) -> float:
    """The per-step learning rate of §7.4: lr scaled by (segment length / bptt)."""
    return lr * seq_len / bptt


@torch.no_grad()
def evaluate_lm(
    model: torch.nn.Module, source: torch.Tensor, bptt: int, max_rows: int | None = None
) -> tuple[float, float]:
    """(mean loss, perplexity) of ``model`` on a batchified split (rows × B), eval mode, hidden zeroed (§7.6).

    ``max_rows`` keeps only the first rows (quick runs); the division is by the rows actually used.
    """
    if max_rows is not None and max_rows < source.size(0):
        source = source[: max(2, max_rows)]
    was = model.training
    model.eval()
    hidden = None
    total = torch.zeros((), dtype=torch.float64, device=source.device)
    rows = source.size(0)
    for i in range(0, rows - 1, bptt):
        ln = min(bptt, rows - 1 - i)
        out = model(source[i : i + ln], hidden, source[i + 1 : i + 1 + ln])
        total += out.nll.double() * ln
        hidden = out.hidden
    model.train(was)
    loss = total.item() / rows
    return loss, _ppl(loss)


def _ppl(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def rng_devices(device: torch.device) -> list:
    """Devices whose RNG ``torch.random.fork_rng`` must save and restore for ``device``."""
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []
