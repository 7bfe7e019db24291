"""The mixed operation (spec §1.2): the only place where the mixing weights meet the candidate operations.

``PartialMixedOp`` is PC-DARTS's partial-channel wrapper (ROBUST-SPEC §3.1).
"""

from __future__ import annotations

import torch
from torch import nn

from ..space.ops import OPS, PRIMITIVES, Zero


class MixedOp(nn.Module):
    """Sum_k w_k * op_k(x) over the candidates (eight by default).

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

    def forward_sampled(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """GDAS (ROBUST-SPEC §3.7): ``weights`` is a (straight-through) one-hot row; only its op runs.

        The chosen weight (value 1) multiplies the op's output; the other weights (value exactly 0) are added
        as scalars, as the reference release does, so that every weight, and through the straight-through
        estimator every α of the row, receives a gradient although a single op is evaluated.
        """
        k = int(weights.detach().argmax())
        op = self._ops[self.columns.index(k)] if k in self.columns else Zero(self.stride)  # `none` was sampled
        return weights[k] * op(x) + torch.cat([weights[:k], weights[k + 1 :]]).sum()


class PartialMixedOp(MixedOp):
    """PC-DARTS partial channels (ROBUST-SPEC §3.1): the first C/K channels go through the mixed op.

    The ops are built for C/K channels (so the parameter names are those of ``MixedOp``: with K = 1 the
    state_dict is the same); the other (K−1)·C/K channels bypass it, max-pooled 2×2 on stride-2 edges.
    The concatenation [mixed, bypass] is shuffled with K groups: channel c moves to (c mod C/K)·K + ⌊c/(C/K)⌋.
    """

    def __init__(self, C: int, stride: int, primitives: tuple[str, ...] = PRIMITIVES, K: int = 1):
        if K < 1 or C % K:
            raise ValueError(f"partial channels: K={K} must divide C={C}")
        super().__init__(C // K, stride, primitives)
        self.K = K
        self.part = C // K

    def _wrap(self, x: torch.Tensor, mixed) -> torch.Tensor:
        xa, xb = x[:, : self.part], x[:, self.part :]
        out = mixed(xa)
        if xb.shape[1] == 0:  # K = 1: no bypass (max_pool2d refuses empty tensors)
            xb = xb.new_zeros(xb.shape[0], 0, *out.shape[2:])
        elif self.stride == 2:
            xb = nn.functional.max_pool2d(xb, 2, 2)
        return channel_shuffle(torch.cat([out, xb], dim=1), self.K)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self._wrap(x, lambda xa: super(PartialMixedOp, self).forward(xa, weights))

    def forward_sampled(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self._wrap(x, lambda xa: super(PartialMixedOp, self).forward_sampled(xa, weights))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """View (B, K, C/K, H, W), swap axes 1 and 2, flatten back (ROBUST-SPEC §3.1)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
