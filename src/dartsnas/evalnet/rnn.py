"""The recurrent evaluation cell built from an RNNGenotype, and the evaluation language model (spec §7.1, §7.3).

Cell, one step (masks m_x, m_h are B × n, drawn once per forward call; none in eval mode):

- init node: [c₀ | h₀] = [x_t ⊙ m_x ; h ⊙ m_h]·W₀,  s₀ = h + σ(c₀) ⊙ (tanh(h₀) − h);
- node i with (f, p) from the genotype: [c | h'] = (s_p ⊙ m_h)·W_i,  s_i = s_p + σ(c) ⊙ (f(h') − s_p);
- output: mean of the concat nodes. No batch norm.

Any number of nodes (ENAS has 11). Nodes that share a predecessor are projected with one matmul
(the W_i of those nodes concatenated once per forward call); the input half of W₀ is applied to the whole
segment at once.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import GenotypeError
from ..lm import INIT_RANGE, LMOutput, RNNLanguageModel, dropout_mask
from ..space.genotype import RNN_OPS, RNNGenotype

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid, "identity": lambda h: h}

# §7.4: emsize = nhid, dropouts (output, h, x, input-locked, embedding rows).
RNN_EVAL_SETTINGS = {
    "ptb": dict(n=850, dropout=0.75, dropouth=0.25, dropoutx=0.75, dropouti=0.2, dropoute=0.1),
    "wikitext2": dict(n=700, dropout=0.75, dropouth=0.15, dropoutx=0.75, dropouti=0.2, dropoute=0.1),
}


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-INIT_RANGE, INIT_RANGE))


def _check_genotype(g: RNNGenotype) -> None:
    if not isinstance(g, RNNGenotype):
        raise GenotypeError(f"expected a recurrent genotype, got {type(g).__name__}", "genotype")
    for k, (op, pred) in enumerate(g.recurrent):
        if op not in RNN_OPS:
            raise GenotypeError(
                f"unknown activation {op!r}; expected one of {', '.join(RNN_OPS)}", f"recurrent[{k}].op"
            )
        if not 0 <= pred <= k:
            raise GenotypeError(f"{pred!r} is not an earlier node (0..{k})", f"recurrent[{k}].input")
    if not g.concat or any(not 1 <= c <= len(g.recurrent) for c in g.concat):
        raise GenotypeError(f"concat must name nodes 1..{len(g.recurrent)}", "concat")


class RNNEvalCell(nn.Module):
    def __init__(self, n: int, genotype: RNNGenotype, dropouth: float = 0.25, dropoutx: float = 0.75):
        super().__init__()
        _check_genotype(genotype)
        self.n, self.genotype = n, genotype
        self.num_nodes = len(genotype.recurrent)
        self.dropouth, self.dropoutx = dropouth, dropoutx
        self.W0 = _uniform(2 * n, 2 * n)
        self.Ws = nn.ParameterList([_uniform(n, 2 * n) for _ in range(self.num_nodes)])  # W_1..W_N
        # children[j]: the nodes (1-based) whose predecessor is j, in order.
        self.children_of = [
            [i + 1 for i, (_, p) in enumerate(genotype.recurrent) if p == j] for j in range(self.num_nodes + 1)
        ]
        self.acts = [ACTIVATIONS[op] for op, _ in genotype.recurrent]

    def sample_masks(self, batch_size: int, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not self.training:
            return None, None
        m_x = dropout_mask((batch_size, self.n), self.dropoutx, like) if self.dropoutx > 0 else None
        m_h = dropout_mask((batch_size, self.n), self.dropouth, like) if self.dropouth > 0 else None
        return m_x, m_h

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, n), hidden: (B, n) → (outputs (T, B, n), last hidden (B, n))."""
        T, B, n = x.shape
        m_x, m_h = self.sample_masks(B, x)
        xm = x if m_x is None else x * m_x
        x_proj = xm @ self.W0[:n]
        w_cat = [
            torch.cat([self.Ws[i - 1] for i in ch], dim=1) if len(ch) > 1 else (self.Ws[ch[0] - 1] if ch else None)
            for ch in self.children_of
        ]
        outputs = []
        for t in range(T):
            hidden = self.step(x_proj[t], hidden, m_h, w_cat)
            outputs.append(hidden)
        return torch.stack(outputs), hidden

    def step(
        self, x_proj: torch.Tensor, h: torch.Tensor, m_h: torch.Tensor | None, w_cat: list[torch.Tensor | None]
    ) -> torch.Tensor:
        n = self.n
        hm = h if m_h is None else h * m_h
        c0, h0 = (x_proj + hm @ self.W0[n:]).split(n, dim=-1)
        states = [h + torch.sigmoid(c0) * (torch.tanh(h0) - h)]
        pending: dict[int, torch.Tensor] = {}

        def project(j: int) -> None:
            ch = self.children_of[j]
            if ch:
                s = states[j] if m_h is None else states[j] * m_h
                proj = s @ w_cat[j]
                for k, i in enumerate(ch):
                    pending[i] = proj[:, 2 * n * k : 2 * n * (k + 1)]

        project(0)
        for i in range(1, self.num_nodes + 1):
            c, hh = pending.pop(i).split(n, dim=-1)
            sp = states[self.genotype.recurrent[i - 1][1]]
            states.append(sp + torch.sigmoid(c) * (self.acts[i - 1](hh) - sp))
            project(i)
        concat = self.genotype.concat
        return torch.stack([states[i] for i in concat]).mean(0) if len(concat) > 1 else states[concat[0]]


class RNNEvalModel(RNNLanguageModel):
    """Evaluation language model. ``forward(tokens, hidden=None, targets=None, return_log_probs=False) -> LMOutput``.

    Defaults are the PTB evaluation settings (n = 850; for WikiText-2 use ``RNNEvalModel.for_corpus``).
    DARTS_V2 at ntoken 10,000 / n 850: 22,960,000 weights; at ntoken 33,278 / n 700: 33,127,878.
    """

    def __init__(
        self,
        ntoken: int,
        genotype: RNNGenotype,
        n: int = 850,
        dropout: float = 0.75,
        dropouth: float = 0.25,
        dropoutx: float = 0.75,
        dropouti: float = 0.2,
        dropoute: float = 0.1,
    ):
        super().__init__(ntoken, n, dropout, dropouti, dropoute)
        self.genotype = genotype
        self.cell = RNNEvalCell(n, genotype, dropouth, dropoutx)

    @classmethod
    def for_corpus(cls, corpus: str, ntoken: int, genotype: RNNGenotype, **overrides) -> RNNEvalModel:
        """The §7.4 settings of ``"ptb"`` or ``"wikitext2"`` (other names get the PTB ones), then overrides."""
        kw = dict(RNN_EVAL_SETTINGS.get(corpus, RNN_EVAL_SETTINGS["ptb"]))
        kw.update(overrides)
        return cls(ntoken, genotype, **kw)

    def weights(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def named_weights(self) -> list[tuple[str, nn.Parameter]]:
        return list(self.named_parameters())


__all__ = ["RNNEvalCell", "RNNEvalModel", "LMOutput", "RNN_EVAL_SETTINGS", "ACTIVATIONS"]
