"""Language-model plumbing shared by the recurrent search and evaluation models (spec §7.3).

Embedding (uniform ±0.04) with embedding dropout (whole vocabulary rows) → locked dropout on the input
(one (1, B, n) mask shared over time) → a recurrent cell → locked dropout on the outputs → decoder whose
weight **is** the embedding matrix (tied) and whose bias starts at zero → log-softmax / NLL.

Conventions (both models):

- ``tokens`` and ``targets`` are int64 (T, B): rows are time, columns streams (``data.text.batchify``).
- The hidden state is one tensor (B, n); ``hidden=None`` means zeros. The returned ``hidden`` is **not**
  detached: carry it to the next segment with ``hidden.detach()``; zero it (``None`` or
  ``model.init_hidden(B)``) at the start of every training epoch and every evaluation.
- ``forward`` returns an :class:`LMOutput`. ``nll`` is the mean NLL over all T·B predictions (when
  ``targets`` is given); ``raw_output`` is the cell output before the output dropout, what the temporal
  activation regulariser uses: ``loss = out.nll + tar_penalty(out.raw_output, 1e-3)``.
- The forward reads every parameter through module attributes, so it works under
  ``torch.func.functional_call`` with substituted weights (the decoder uses ``encoder.weight`` directly,
  so passing ``encoder.weight`` alone is enough).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

INIT_RANGE = 0.04


class LMOutput(NamedTuple):
    nll: torch.Tensor | None  # scalar mean NLL, or None without targets
    hidden: torch.Tensor  # (B, n), next hidden state, not detached
    raw_output: torch.Tensor  # (T, B, n), cell outputs before the output dropout (for TAR)
    log_probs: torch.Tensor | None  # (T, B, ntoken), when targets is None or return_log_probs=True


def dropout_mask(shape: tuple[int, ...], p: float, like: torch.Tensor) -> torch.Tensor:
    """Bernoulli(1 − p) / (1 − p) of ``shape`` on ``like``'s device and dtype (p = 1 gives zeros)."""
    keep = 1.0 - p
    if keep <= 0.0:
        return like.new_zeros(shape)
    return like.new_empty(shape).bernoulli_(keep).div_(keep)


def embedded_dropout(weight: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop whole rows (words) of the embedding matrix and scale the rest by 1/(1 − p)."""
    if not training or p <= 0.0:
        return weight
    return weight * dropout_mask((weight.size(0), 1), p, weight)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout on (T, B, n) with one (1, B, n) mask shared over time."""
    if not training or p <= 0.0:
        return x
    return x * dropout_mask((1, x.size(1), x.size(2)), p, x)


def tar_penalty(raw_output: torch.Tensor, beta: float = 1e-3) -> torch.Tensor:
    """Temporal activation regularisation β·mean((h_{t+1} − h_t)²) over one segment's cell outputs."""
    if beta == 0.0 or raw_output.size(0) < 2:
        return raw_output.new_zeros(())
    return beta * (raw_output[1:] - raw_output[:-1]).pow(2).mean()


class RNNLanguageModel(nn.Module):
    """Base class: subclasses set ``self.cell`` and may override ``run_cell``."""

    def __init__(self, ntoken: int, n: int, dropout: float, dropouti: float, dropoute: float):
        super().__init__()
        self.ntoken, self.n = ntoken, n
        self.dropout, self.dropouti, self.dropoute = dropout, dropouti, dropoute
        self.encoder = nn.Embedding(ntoken, n)
        nn.init.uniform_(self.encoder.weight, -INIT_RANGE, INIT_RANGE)
        self.decoder = nn.Linear(n, ntoken)
        self.decoder.weight = self.encoder.weight  # tied: the very same Parameter
        nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch_size: int) -> torch.Tensor:
        w = self.encoder.weight
        return w.new_zeros(batch_size, self.n)

    def run_cell(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cell(x, hidden)

    def forward(
        self,
        tokens: torch.Tensor,
        hidden: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        return_log_probs: bool = False,
    ) -> LMOutput:
        if hidden is None:
            hidden = self.init_hidden(tokens.size(1))
        weight = self.encoder.weight
        emb = F.embedding(tokens, embedded_dropout(weight, self.dropoute, self.training))
        emb = locked_dropout(emb, self.dropouti, self.training)
        raw, hidden = self.run_cell(emb, hidden)
        out = locked_dropout(raw, self.dropout, self.training)
        logits = F.linear(out, weight, self.decoder.bias)  # tied decoder: weight is encoder.weight
        log_probs = nll = None
        if targets is None or return_log_probs:
            log_probs = F.log_softmax(logits, dim=-1)
        if targets is not None:
            if log_probs is not None:
                nll = F.nll_loss(log_probs.view(-1, self.ntoken), targets.reshape(-1))
            else:
                nll = F.cross_entropy(logits.view(-1, self.ntoken), targets.reshape(-1))
        return LMOutput(nll, hidden, raw, log_probs)
