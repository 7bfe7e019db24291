"""The recurrent search cell and search language model (spec §7.1–7.4).

Cell, for one step with input x_t and previous hidden h (all B × n; masks m_x, m_h are B × n):

- init node: [c₀ | h₀] = [x_t ⊙ m_x ; h ⊙ m_h]·W₀,  s₀ = BN(h + σ(c₀) ⊙ (tanh(h₀) − h));
- node i: for every predecessor j < i, [c_j | h_j] = (s_j ⊙ m_h)·W_i (one W_i for all of node i's edges),
  s_i = BN( Σ_j Σ_{k≠none} P[(i,j),k] · (s_j + σ(c_j) ⊙ (f_k(h_j) − s_j)) );
- output h_t = mean(s₁..s_N).

BN is one affine-free ``BatchNorm1d(n)`` shared by s₀ and every node. Masks are drawn once per forward
call (one BPTT segment) and reused at every step and node; eval mode has none.

Batched where the maths allows: the x-half of W₀ is applied to the whole segment with one matmul; node i
projects all its predecessors with one matmul; the sum over ops uses
Σ_k w_k (s + c(f_k(h) − s)) = w_tot·s·(1 − c) + c·Σ_k w_k f_k(h), with w_tot = 1 − P(none), as a chain
of elementwise ops over all of node i's edges at once (a chain torch.compile can fuse; a variant with one
batched matmul over the stacked activations was slower on CPU and was dropped).

α (``alphas``, (N(N+1)/2) × 5 over none, tanh, relu, sigmoid, identity; rows node 1←0, node 2←0,1, …)
is a parameter of the module but not a weight: ``weights()``/``named_weights()`` exclude it,
``arch_parameters()`` returns it (as in ``supernet.network``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..lm import INIT_RANGE, LMOutput, RNNLanguageModel, dropout_mask
from ..space.derive import derive_rnn_genotype
from ..space.genotype import RNN_PRIMITIVES, RNNGenotype

ARCH_NAMES = ("alphas",)
TIED_EMBEDDING = "encoder.weight"  # the weight the recurrent second order keeps at w in the virtual step (§7.5)

assert RNN_PRIMITIVES == ("none", "tanh", "relu", "sigmoid", "identity")  # the column order used below


def _uniform(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape).uniform_(-INIT_RANGE, INIT_RANGE))


def rnn_num_edges(num_nodes: int) -> int:
    return num_nodes * (num_nodes + 1) // 2


class RNNSearchCell(nn.Module):
    def __init__(self, n: int, num_nodes: int = 8, dropouth: float = 0.25, dropoutx: float = 0.75):
        super().__init__()
        self.n, self.num_nodes = n, num_nodes
        self.dropouth, self.dropoutx = dropouth, dropoutx
        self.W0 = _uniform(2 * n, 2 * n)
        self.Ws = nn.ParameterList([_uniform(n, 2 * n) for _ in range(num_nodes)])  # W_1..W_N
        self.bn = nn.BatchNorm1d(n, affine=False)

    def sample_masks(self, batch_size: int, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(m_x, m_h), each B × n, in training mode; (None, None) in eval mode."""
        if not self.training:
            return None, None
        m_x = dropout_mask((batch_size, self.n), self.dropoutx, like) if self.dropoutx > 0 else None
        m_h = dropout_mask((batch_size, self.n), self.dropouth, like) if self.dropouth > 0 else None
        return m_x, m_h

    def forward(self, x: torch.Tensor, hidden: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (T, B, n), hidden: (B, n), probs: softmax(α) → (outputs (T, B, n), last hidden (B, n))."""
        T, B, n = x.shape
        m_x, m_h = self.sample_masks(B, x)
        xm = x if m_x is None else x * m_x
        x_proj = xm @ self.W0[:n]  # (T, B, 2n): the input half of W0, whole segment at once
        # Per node i: (i, 4) op weights (none dropped) and (i,) their sum, shaped to broadcast over (i, B, n).
        node_w, node_tot, r = [], [], 0
        for i in range(1, self.num_nodes + 1):
            w = probs[r : r + i, 1:]
            node_w.append(w.t().unsqueeze(-1).unsqueeze(-1))  # (4, i, 1, 1)
            node_tot.append(w.sum(1).view(i, 1, 1))
            r += i
        outputs = []
        for t in range(T):
            hidden = self.step(x_proj[t], hidden, m_h, node_w, node_tot)
            outputs.append(hidden)
        return torch.stack(outputs), hidden

    def step(
        self,
        x_proj: torch.Tensor,
        h: torch.Tensor,
        m_h: torch.Tensor | None,
        node_w: list[torch.Tensor],
        node_tot: list[torch.Tensor],
    ) -> torch.Tensor:
        n = self.n
        hm = h if m_h is None else h * m_h
        c0, h0 = (x_proj + hm @ self.W0[n:]).split(n, dim=-1)
        s0 = self.bn(h + torch.sigmoid(c0) * (torch.tanh(h0) - h))
        states = s0.unsqueeze(0)  # (i, B, n): s_0 .. s_{i-1}
        total = None
        for i in range(1, self.num_nodes + 1):
            sm = states if m_h is None else states * m_h
            c, hh = (sm @ self.Ws[i - 1]).split(n, dim=-1)  # (i, B, n) each, one matmul for all predecessors
            c = torch.sigmoid(c)
            w = node_w[i - 1]
            mix = w[0] * torch.tanh(hh) + w[1] * torch.relu(hh) + w[2] * torch.sigmoid(hh) + w[3] * hh
            s = (node_tot[i - 1] * states * (1 - c) + c * mix).sum(0)
            s = self.bn(s)
            total = s if total is None else total + s
            if i < self.num_nodes:
                states = torch.cat([states, s.unsqueeze(0)], dim=0)
        return total / self.num_nodes


class RNNSearchModel(RNNLanguageModel):
    """Search language model. ``forward(tokens, hidden=None, targets=None, return_log_probs=False) -> LMOutput``.

    Defaults are the PTB search settings of §7.4: n = 300, dropouts output 0.75 / h 0.25 / x 0.75 /
    input (locked) 0.2 / embedding rows 0. At ntoken = 10,000: 4,810,000 weights + 180 α.
    """

    def __init__(
        self,
        ntoken: int,
        n: int = 300,
        num_nodes: int = 8,
        dropout: float = 0.75,
        dropouth: float = 0.25,
        dropoutx: float = 0.75,
        dropouti: float = 0.2,
        dropoute: float = 0.0,
    ):
        super().__init__(ntoken, n, dropout, dropouti, dropoute)
        self.num_nodes = num_nodes
        self.cell = RNNSearchCell(n, num_nodes, dropouth, dropoutx)
        self.alphas = nn.Parameter(1e-3 * torch.randn(rnn_num_edges(num_nodes), len(RNN_PRIMITIVES)))

    def weights(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name not in ARCH_NAMES]

    def named_weights(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if name not in ARCH_NAMES]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def run_cell(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cell(x, hidden, F.softmax(self.alphas, dim=-1))

    def genotype(self) -> RNNGenotype:
        return derive_rnn_genotype(self.alphas, self.num_nodes)

    def arch_record(self) -> dict[str, list]:
        """This space's fields of a search's per-epoch metrics record: softmax(alpha) per alpha tensor."""
        return {name: torch.softmax(getattr(self, name).detach().double(), -1).cpu().tolist() for name in ARCH_NAMES}


__all__ = ["RNNSearchCell", "RNNSearchModel", "LMOutput", "ARCH_NAMES", "TIED_EMBEDDING", "rnn_num_edges"]
