"""The mixed operation (spec §1.2): the only place where softmax(alpha) meets the candidate operations."""

from __future__ import annotations

import torch
from torch import nn

from ..space.ops import OPS, PRIMITIVES


class MixedOp(nn.Module):
    """Sum_k w_k * op_k(x) over the eight candidates.

    ``none`` outputs zeros, so its term is skipped: the result and every gradient are identical to
    computing it (its weight still competes in the softmax), but it costs no kernel.
    """

    def __init__(self, C: int, stride: int, primitives: tuple[str, ...] = PRIMITIVES):
        super().__init__()
        self.stride = stride
        self.columns: list[int] = []
        ops = []
        for k, name in enumerate(primitives):
            if name == "none":
                continue
            op = OPS[name](C, stride, False)
            if "pool" in name:  # the search network follows each pooling with an affine-free BN (§1.2)
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            ops.append(op)
            self.columns.append(k)
        self._ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = None
        for k, op in zip(self.columns, self._ops):
            term = weights[k] * op(x)
            out = term if out is None else out + term
        return out
