"""The NAS-Bench-201 search supernet (ROBUST-SPEC §1.2, §1.3): stem, three stages of N search cells with
two residual blocks between them, and the head.

α is one 6×5 parameter, ``alphas``, shared by every cell. Like the DARTS ``SearchNetwork`` it is a module
parameter (it moves with ``.to()`` and lives in ``state_dict``) but stays out of ``weights()``, the set the
weight optimiser, weight decay and gradient clipping see. The mixing weights are computed from α in one
place, ``mixing_weights()``; a method that samples or perturbs them (Dirichlet, Gumbel, SDARTS) replaces
that method or sets ``mixing_hook``, and every cell receives the result.

Example::

    >>> net = NB201SearchNetwork(C=16, num_cells=5, num_classes=10)
    >>> sum(p.numel() for p in net.weights()), net.alphas.numel()
    (1692826, 30)
"""

from __future__ import annotations

from collections.abc import Callable

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

ARCH_NAMES = ("alphas",)


class NB201MixedOp(nn.Module):
    """Σ_k w_k·op_k(x) over the five operations; ``none`` contributes zeros, so its term is skipped
    (its weight still competes in the mixing weights)."""

    def __init__(self, C: int, track_running_stats: bool = True):
        super().__init__()
        self.columns = [k for k, name in enumerate(NB201_PRIMITIVES) if name != "none"]
        self._ops = nn.ModuleList(make_op(NB201_PRIMITIVES[k], C, affine=False,
                                          track_running_stats=track_running_stats) for k in self.columns)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for k, op in zip(self.columns, self._ops):
            term = weights[k] * op(x)
            out = term if out is None else out + term
        return out


class NB201SearchCell(nn.Module):
    """Node i = Σ_{j<i} mixed_op_{(i←j)}(node_j); the output is node 3 alone (§1.2)."""

    def __init__(self, C: int, track_running_stats: bool = True):
        super().__init__()
        self.edges = nn.ModuleList(NB201MixedOp(C, track_running_stats) for _ in range(NUM_EDGES))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NUM_NODES):
            s = None
            for r, (to, src) in enumerate(EDGES):
                if to == i:
                    t = self.edges[r](nodes[src], weights[r])
                    s = t if s is None else s + t
            nodes.append(s)
        return nodes[-1]


class ResidualBlock(nn.Module):
    """§1.3: ReLU → conv 3×3 stride 2 → BN → ReLU → conv 3×3 → BN, plus avg-pool 2×2 → conv 1×1 shortcut;
    affine BN, bias-free convs, no ReLU after the sum."""

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.branch = nn.Sequential(
            nn.ReLU(inplace=False), nn.Conv2d(C_in, C_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C_out),
            nn.ReLU(inplace=False), nn.Conv2d(C_out, C_out, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(C_out),
        )
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, stride=2, padding=0),
                                      nn.Conv2d(C_in, C_out, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


class NB201SearchNetwork(nn.Module):
    primitives = NB201_PRIMITIVES  # the columns of alpha
    def __init__(self, C: int = 16, num_cells: int = 5, num_classes: int = 10, in_channels: int = 3,
                 track_running_stats: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_curr = C
        for stage in range(3):
            if stage > 0:
                self.cells.append(ResidualBlock(C_curr, 2 * C_curr))
                C_curr *= 2
            for _ in range(num_cells):
                self.cells.append(NB201SearchCell(C_curr, track_running_stats))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_curr), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_curr, num_classes)
        # §1.2: 10⁻³·N(0, 1), rows in the sorted edge order, columns in NB201_PRIMITIVES order.
        self.alphas = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, len(NB201_PRIMITIVES)))
        self.mixing_hook: Callable[[torch.Tensor], torch.Tensor] | None = None

    def weights(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name not in ARCH_NAMES]

    def named_weights(self) -> list[tuple[str, nn.Parameter]]:
        return [(name, p) for name, p in self.named_parameters() if name not in ARCH_NAMES]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def mixing_weights(self) -> torch.Tensor:
        """The 6×5 weights every cell mixes with: row softmax of α (§1.2), or ``mixing_hook(α)`` when set."""
        if self.mixing_hook is not None:
            return self.mixing_hook(self.alphas)
        return torch.softmax(self.alphas, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.mixing_weights()
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x, weights) if isinstance(cell, NB201SearchCell) else cell(x)
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the stem and of every block, for shape checks."""
        weights = self.mixing_weights()
        outs = [self.stem(x)]
        for cell in self.cells:
            outs.append(cell(outs[-1], weights) if isinstance(cell, NB201SearchCell) else cell(outs[-1]))
        return outs

    def genotype(self) -> NB201Genotype:
        return derive_nb201(self.alphas)

    def arch_record(self) -> dict[str, list]:
        """This space's fields of a search's per-epoch metrics record: softmax(alpha), one row per edge."""
        return {"alphas": torch.softmax(self.alphas.detach().double(), -1).cpu().tolist()}
