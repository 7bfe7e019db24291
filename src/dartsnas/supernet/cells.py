"""The search cell (spec §1.3): two inputs, ``num_nodes`` intermediate nodes, a mixed op on every edge.

Method hooks (ROBUST-SPEC §5), all off by default: partial channels (``partial_channels`` = K > 1, §3.1),
an auxiliary skip path per edge outside α (``aux_skip``, DARTS- §3.2, weighted by the plain attribute
``aux_weight``), edge normalisation (``edge_weights`` passed to ``forward``, §3.1) and sampled-op forwards
(the plain attribute ``sampled_only``, GDAS §3.7).
"""

from __future__ import annotations

import torch
from torch import nn

from ..space.ops import PRIMITIVES, FactorizedReduce, Identity, ReLUConvBN
from .mixed import MixedOp, PartialMixedOp


class SearchCell(nn.Module):
    def __init__(
        self,
        num_nodes: int,
        multiplier: int,
        C_pp: int,
        C_p: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: tuple[str, ...] = PRIMITIVES,
        partial_channels: int = 1,
        aux_skip: bool = False,
    ):
        super().__init__()
        self.reduction = reduction
        self.num_nodes = num_nodes
        self.multiplier = multiplier
        self.preprocess0 = (
            FactorizedReduce(C_pp, C, affine=False) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False)
        )
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList()
        for i in range(num_nodes):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(
                    MixedOp(C, stride, primitives)
                    if partial_channels == 1
                    else PartialMixedOp(C, stride, primitives, partial_channels)
                )
        if aux_skip:  # DARTS- (§3.2): identity, or an affine-free FactorizedReduce on stride-2 edges
            self._aux = nn.ModuleList(
                FactorizedReduce(C, C, affine=False) if op.stride == 2 else Identity() for op in self._ops
            )
        # The fused forward handles only the default cell; any hook falls back to the plain forward.
        self.fusable = primitives == PRIMITIVES and partial_channels == 1 and not aux_skip

    # Fused forward (same parameters and mathematics, fewer kernels; supernet/fused.py). A plain attribute,
    # not state: switching it changes neither state_dict nor parameters.
    fused: bool = False
    # Runtime hooks (plain attributes, not state): the DARTS- weight β_e and GDAS's one-op forward.
    aux_weight: float = 1.0
    sampled_only: bool = False

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor, edge_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.fused and self.fusable and edge_weights is None and not self.sampled_only:
            from .fused import fused_cell_forward

            return fused_cell_forward(self, s0, s1, weights)
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.num_nodes):
            s = None
            for j, h in enumerate(states):
                e = offset + j
                op = self._ops[e]
                t = op.forward_sampled(h, weights[e]) if self.sampled_only else op(h, weights[e])
                if hasattr(self, "_aux"):
                    t = t + self.aux_weight * self._aux[e](h)
                if edge_weights is not None:
                    t = edge_weights[e] * t
                s = t if s is None else s + t
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self.multiplier :], dim=1)
