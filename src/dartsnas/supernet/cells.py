"""The search cell (spec §1.3): two inputs, ``num_nodes`` intermediate nodes, a mixed op on every edge."""

from __future__ import annotations

import torch
from torch import nn

from ..space.ops import FactorizedReduce, ReLUConvBN
from .mixed import MixedOp


class SearchCell(nn.Module):
    def __init__(self, num_nodes: int, multiplier: int, C_pp: int, C_p: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.num_nodes = num_nodes
        self.multiplier = multiplier
        self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        for i in range(num_nodes):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedOp(C, stride))

    # Fused forward (same parameters and mathematics, fewer kernels; supernet/fused.py). A plain attribute,
    # not state: switching it changes neither state_dict nor parameters.
    fused: bool = False

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.fused:
            from .fused import fused_cell_forward
            return fused_cell_forward(self, s0, s1, weights)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.num_nodes):
            s = None
            for j, h in enumerate(states):
                t = self._ops[offset + j](h, weights[offset + j])
                s = t if s is None else s + t
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier:], dim=1)
