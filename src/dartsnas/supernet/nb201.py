"""The NAS-Bench-201 search supernet (ROBUST-SPEC §1.2, §1.3): stem, three stages of N search cells with
two residual blocks between them, and the head.

α is one 6×5 parameter, ``alphas_cell``, shared by every cell. Like the DARTS ``SearchNetwork`` it is a module
parameter (it moves with ``.to()`` and lives in ``state_dict``) but stays out of ``weights()``, the set the
weight optimiser, weight decay and gradient clipping see. The mixing weights are computed from α in one
place, ``mixing_weights()``, and every cell receives the result.

The network exposes the method interface of ``dartsnas.methods.base`` (ROBUST-SPEC §5), as the DARTS
``SearchNetwork`` does: ``alphas()``, ``arch_parameters()``, ``mixing_weights()`` (a list, one entry per α
tensor, here one) with the runtime hooks ``mixing`` and ``mixing_override``, ``primitives``, ``genotype()``,
``set_hooks(sampled_only=, aux_weight=)``. Construction options, all off by default so that the default
network is unchanged (same parameters, same random draws): ``partial_channels`` K (PC-DARTS §3.1: the first
C/K channels of every edge go through the ops, built for C/K channels; every NB201 edge has stride 1, so the
bypass is never pooled), ``edge_norm`` (PC-DARTS's β over each node's incoming edges: 6 numbers, trained
with α) and ``aux_skip`` (DARTS- §3.2: an identity path on all 6 edges, weighted by ``aux_weight``, outside
α and the genotype).

Example::

    >>> net = NB201SearchNetwork(C=16, num_cells=5, num_classes=10)
    >>> sum(p.numel() for p in net.weights()), net.alphas_cell.numel()
    (1692826, 30)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..space.nb201 import (
    EDGES,
    NB201_PRIMITIVES,
    NUM_EDGES,
    NUM_NODES,
    NB201Genotype,
    derive_nb201,
    make_op,
)
from .mixed import channel_shuffle

ARCH_NAMES = ("alphas_cell", "betas_cell")

# The incoming edge rows of nodes 1, 2, 3 (EDGES is sorted by target node): PC-DARTS's edge normalisation
# takes the softmax of β over each group.
NODE_EDGES = tuple(tuple(r for r, (to, _) in enumerate(EDGES) if to == i) for i in range(1, NUM_NODES))


class NB201MixedOp(nn.Module):
    """Σ_k w_k·op_k(x) over the five operations; ``none`` contributes zeros, so its term is skipped
    (its weight still competes in the mixing weights)."""

    def __init__(self, C: int, track_running_stats: bool = True):
        super().__init__()
        self.columns = [k for k, name in enumerate(NB201_PRIMITIVES) if name != "none"]
        self._ops = nn.ModuleList(
            make_op(NB201_PRIMITIVES[k], C, affine=False, track_running_stats=track_running_stats) for k in self.columns
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for k, op in zip(self.columns, self._ops):
            term = weights[k] * op(x)
            out = term if out is None else out + term
        return out

    def forward_sampled(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """GDAS (ROBUST-SPEC §3.7): ``weights`` is a straight-through one-hot row; only its op runs. As in the
        DARTS ``MixedOp.forward_sampled``, the other weights (exactly 0) are added as scalars so that every α of
        the row gets a gradient; a sampled ``none`` outputs zeros."""
        k = int(weights.detach().argmax())
        out = self._ops[self.columns.index(k)](x) if k in self.columns else torch.zeros_like(x)
        return weights[k] * out + torch.cat([weights[:k], weights[k + 1 :]]).sum()


class NB201PartialMixedOp(NB201MixedOp):
    """PC-DARTS partial channels on an NB201 edge (ROBUST-SPEC §3.1): the ops are built for C/K channels (no BN
    after pooling, as in every NB201 mixed op), the other channels bypass unchanged (stride 1: no pooling), and
    [mixed, bypass] is shuffled with K groups. With K = 1 the state_dict equals ``NB201MixedOp``'s."""

    def __init__(self, C: int, K: int, track_running_stats: bool = True):
        if K < 1 or C % K:
            raise ValueError(f"partial channels: K={K} must divide C={C}")
        super().__init__(C // K, track_running_stats)
        self.K, self.part = K, C // K

    def _wrap(self, x: torch.Tensor, mixed: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return channel_shuffle(torch.cat([mixed(x[:, : self.part]), x[:, self.part :]], dim=1), self.K)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self._wrap(x, lambda xa: super(NB201PartialMixedOp, self).forward(xa, weights))

    def forward_sampled(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self._wrap(x, lambda xa: super(NB201PartialMixedOp, self).forward_sampled(xa, weights))


class NB201SearchCell(nn.Module):
    """Node i = Σ_{j<i} mixed_op_{(i←j)}(node_j); the output is node 3 alone (§1.2)."""

    def __init__(self, C: int, track_running_stats: bool = True, partial_channels: int = 1, aux_skip: bool = False):
        super().__init__()
        self.edges = nn.ModuleList(
            NB201MixedOp(C, track_running_stats)
            if partial_channels == 1
            else NB201PartialMixedOp(C, partial_channels, track_running_stats)
            for _ in range(NUM_EDGES)
        )
        self.aux_skip = aux_skip  # DARTS- (§3.2): every NB201 edge has stride 1, so aux is the identity

    # Runtime hooks (plain attributes, not state): the DARTS- weight β_e and GDAS's one-op forward.
    aux_weight: float = 1.0
    sampled_only: bool = False

    def forward(self, x: torch.Tensor, weights: torch.Tensor, edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NUM_NODES):
            s = None
            for r, (to, src) in enumerate(EDGES):
                if to == i:
                    op, h = self.edges[r], nodes[src]
                    t = op.forward_sampled(h, weights[r]) if self.sampled_only else op(h, weights[r])
                    if self.aux_skip:
                        t = t + self.aux_weight * h
                    if edge_weights is not None:
                        t = edge_weights[r] * t
                    s = t if s is None else s + t
            nodes.append(s)
        return nodes[-1]


class ResidualBlock(nn.Module):
    """§1.3: ReLU → conv 3×3 stride 2 → BN → ReLU → conv 3×3 → BN, plus avg-pool 2×2 → conv 1×1 shortcut;
    affine BN, bias-free convs, no ReLU after the sum."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.branch = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C_out),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_out, C_out, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(C_out),
        )
        self.shortcut = nn.Sequential(
            nn.AvgPool2d(2, stride=2, padding=0), nn.Conv2d(C_in, C_out, 1, stride=1, padding=0, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


class NB201SearchNetwork(nn.Module):
    primitives = NB201_PRIMITIVES  # the columns of alpha

    def __init__(
        self,
        C: int = 16,
        num_cells: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        track_running_stats: bool = True,
        primitives: Sequence[str] = NB201_PRIMITIVES,
        partial_channels: int = 1,
        edge_norm: bool = False,
        aux_skip: bool = False,
    ):
        super().__init__()
        if tuple(primitives) != NB201_PRIMITIVES:
            raise ValueError(
                f"the NB201 space has the operations {', '.join(NB201_PRIMITIVES)}, not {', '.join(primitives)}"
            )
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_curr = C
        for stage in range(3):
            if stage > 0:
                self.cells.append(ResidualBlock(C_curr, 2 * C_curr))
                C_curr *= 2
            for _ in range(num_cells):
                self.cells.append(NB201SearchCell(C_curr, track_running_stats, partial_channels, aux_skip))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_curr), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_curr, num_classes)
        # §1.2: 10⁻³·N(0, 1), rows in the sorted edge order, columns in NB201_PRIMITIVES order.
        self.alphas_cell = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, len(NB201_PRIMITIVES)))
        self.edge_norm = edge_norm
        if edge_norm:  # drawn after α, so α is the same with and without (as in the DARTS space, §3.1)
            self.betas_cell = nn.Parameter(1e-3 * torch.randn(NUM_EDGES))
        # Method hooks (ROBUST-SPEC §5), plain attributes, never state: ``mixing`` maps the list of α tensors
        # to the list of mixing weights (None: row softmax); ``mixing_override`` is used as it is (SDARTS).
        self.mixing: Callable[[Sequence[torch.Tensor]], list[torch.Tensor]] | None = None
        self.mixing_override: list[torch.Tensor] | None = None

    def weights(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name not in ARCH_NAMES]

    def named_weights(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if name not in ARCH_NAMES]

    def arch_parameters(self) -> list[nn.Parameter]:
        """Every architecture tensor the α optimiser trains: α, then PC-DARTS's edge β if any."""
        return self.alphas() + ([self.betas_cell] if self.edge_norm else [])

    def alphas(self) -> list[nn.Parameter]:
        """The α tensors (rows = edges, columns = ``primitives``): the one 6×5 matrix."""
        return [self.alphas_cell]

    def mixing_weights(self) -> list[torch.Tensor]:
        """The 6×5 weights every cell mixes with, as a one-element list: ``mixing_override`` if set, else the
        method's ``mixing(alphas())``, else the row softmax of α (§1.2)."""
        if self.mixing_override is not None:
            return list(self.mixing_override)
        if self.mixing is not None:
            return list(self.mixing(self.alphas()))
        return [torch.softmax(self.alphas_cell, dim=-1)]

    def edge_weights(self) -> torch.Tensor | None:
        """PC-DARTS edge normalisation: softmax of β over each node's incoming edges (None when off)."""
        if not self.edge_norm:
            return None
        # EDGES is sorted by target node, so each node's rows are contiguous and the parts come out in row order.
        return torch.cat([torch.softmax(self.betas_cell[rows[0] : rows[-1] + 1], dim=-1) for rows in NODE_EDGES])

    def set_hooks(self, *, sampled_only: bool | None = None, aux_weight: float | None = None) -> None:
        """Runtime cell hooks: GDAS's one-op forward, the DARTS- aux weight β_e (plain attributes)."""
        for cell in self.cells:
            if isinstance(cell, NB201SearchCell):
                if sampled_only is not None:
                    cell.sampled_only = sampled_only
                if aux_weight is not None:
                    cell.aux_weight = aux_weight

    def _cell(self, cell: nn.Module, x: torch.Tensor, weights: torch.Tensor, edges: torch.Tensor | None):
        if not isinstance(cell, NB201SearchCell):
            return cell(x)
        return cell(x, weights) if edges is None else cell(x, weights, edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (weights,) = self.mixing_weights()
        edges = self.edge_weights()
        x = self.stem(x)
        for cell in self.cells:
            x = self._cell(cell, x, weights, edges)
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and of every block, for shape checks."""
        (weights,) = self.mixing_weights()
        edges = self.edge_weights()
        outs = [self.stem(x)]
        for cell in self.cells:
            outs.append(self._cell(cell, outs[-1], weights, edges))
        return outs

    def genotype(self) -> NB201Genotype:
        """§1.4: argmax per edge. PC-DARTS's edge weight scales a whole row, so it cannot change the argmax."""
        return derive_nb201(self.alphas_cell)

    def derive_from_alphas(self, alphas: Sequence[torch.Tensor]) -> NB201Genotype:
        """The derivation applied to given α-shaped scores (a method's masked or decided α: DrNAS, DARTS-PT)."""
        (a,) = alphas
        return derive_nb201(a)

    def arch_record(self) -> dict[str, list]:
        """This space's fields of a search's per-epoch metrics record: softmax(alpha), one row per edge, and
        PC-DARTS's edge weights when edge normalisation is on."""
        rec = {"alphas": torch.softmax(self.alphas_cell.detach().double(), -1).cpu().tolist()}
        if self.edge_norm:
            rec["edge_weights"] = self.edge_weights().detach().double().cpu().tolist()
        return rec
