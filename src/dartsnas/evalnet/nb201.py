"""A discrete NAS-Bench-201 network: the search supernet's skeleton with one operation per edge (ROBUST-SPEC
§1.2, §1.3), for the trained random-search baseline (protocol/random_search.py).

The stem, the residual blocks between the three stages, the head and the op modules are the supernet's own
(``supernet.nb201``, ``space.nb201.make_op`` with affine-free BN), so at the same C and N the network equals
the supernet whose mixing weights are the one-hot rows of the genotype: a mixed op then adds 1·op_k(x) and
exact zeros (tests/test_random_search.py checks this in float64). An edge whose op is ``none`` contributes
nothing; a node whose every incoming edge is ``none`` is the zero tensor, as in the supernet. Only the chosen
ops are built, so the network has just their weights.

Example::

    >>> from dartsnas.space.nb201 import parse_arch_str
    >>> g = parse_arch_str("|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|")
    >>> net = NB201Network(g, C=8, num_cells=1, num_classes=10)
    >>> [type(op).__name__ for op in net.cells[0].ops]
    ['ReLUConvBN', 'Zero', 'Identity', 'AvgPool2d', 'Zero', 'ReLUConvBN']
"""

from __future__ import annotations

import torch
from torch import nn

from ..space.nb201 import EDGES, NUM_NODES, NB201Genotype, make_op
from ..supernet.nb201 import ResidualBlock


class NB201Cell(nn.Module):
    """Node i = Σ_{j<i, op(i←j) ≠ none} op_{(i←j)}(node_j); the output is node 3 (§1.2)."""

    def __init__(self, genotype: NB201Genotype, C: int, track_running_stats: bool = True):
        super().__init__()
        self.names = [op for op, _ in genotype.edges]
        self.ops = nn.ModuleList(
            make_op(op, C, affine=False, track_running_stats=track_running_stats) for op in self.names
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for i in range(1, NUM_NODES):
            s = None
            for r, (to, src) in enumerate(EDGES):
                if to == i and self.names[r] != "none":
                    t = self.ops[r](nodes[src])
                    s = t if s is None else s + t
            nodes.append(torch.zeros_like(x) if s is None else s)
        return nodes[-1]


class NB201Network(nn.Module):
    """Stem → N cells → residual block → N cells → residual block → N cells → BN-ReLU → pool → linear (§1.3)."""

    def __init__(
        self,
        genotype: NB201Genotype,
        C: int = 16,
        num_cells: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        track_running_stats: bool = True,
    ):
        super().__init__()
        self.genotype = genotype
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.ModuleList()
        C_curr = C
        for stage in range(3):
            if stage > 0:
                self.cells.append(ResidualBlock(C_curr, 2 * C_curr))
                C_curr *= 2
            for _ in range(num_cells):
                self.cells.append(NB201Cell(genotype, C_curr, track_running_stats))
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_curr), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_curr, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for cell in self.cells:
            x = cell(x)
        return self.classifier(self.global_pooling(self.lastact(x)).flatten(1))
