"""A fused forward for the search cell: the same modules, parameters and mathematics, far fewer kernels.

``SearchCell`` dispatches here when its ``fused`` attribute is true (``SearchNetwork(fused=True)``,
``SearchConfig.fused_ops``). Nothing is stored here: every weight and running buffer is read from the cell's
own modules at call time (so ``state_dict``, checkpoints, parameter counts and ``functional_call``
overrides all behave as for the plain forward), and only the order in which the arithmetic is launched
changes. Per cell and forward:

* **Weights assembled once per cell, not per edge.** The first depthwise convs of ``sep_conv_3x3``,
  ``sep_conv_5x5`` and ``dil_conv_3x3`` all fit a 5x5 window at padding 2: the 3x3 kernel is zero-padded,
  the dilated 3x3 kernel is placed on every second tap, and the three become one depthwise conv with three
  outputs per input channel (``groups=C``, output channel ``3g+k``). Their three pointwise convs become one
  1x1 conv whose weight is block-structured (zeros outside the blocks; the gradient reaches only the stored
  weights). The second units of the two SepConvs become one depthwise 5x5 conv over 2C channels and one
  grouped 1x1 conv (``groups=2``). All these weights are stacked for the 14 edges at once.
* **One ReLU per edge** instead of five (both SepConvs, both DilConvs and FactorizedReduce start with
  ReLU(x)).
* **Three batch norms per edge instead of seven to nine.** BN is per channel, so the BNs of channel blocks
  that sit in one tensor (or are concatenated: pools, FactorizedReduce, ``dil_conv_5x5``) run as one BN over
  the concatenated channels. Running statistics: the buffers of every BN of the cell are concatenated once,
  updated in place slice by slice by ``F.batch_norm``, and copied back at the end of the cell (one
  multi-tensor copy); ``num_batches_tracked`` is incremented with one multi-tensor add. The values are those
  of the plain forward.
* **One weighted sum per node.** Node i = Σ_j Σ_k w_jk op_k(h_j) over every incoming edge is one
  ``[1, 7E] x [7E, N·C·H·W]`` matrix product over the stacked terms (``none`` outputs zeros, so its term
  is dropped, as in ``MixedOp``).

Works with channels-last tensors (reshape, not view) and under autocast. Only the default candidate list
(``PRIMITIVES``) is supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..space.ops import PRIMITIVES, FactorizedReduce

# Index in MixedOp._ops (``none`` is skipped, so these are columns 1..7).
MAX, AVG, SKIP, SEP3, SEP5, DIL3, DIL5 = range(7)


@dataclass
class _EdgePlan:
    stride: int
    C: int
    g1: tuple[int, int]   # (offset, channels) in the cell's concatenated running buffers
    g2: tuple[int, int]
    g3: tuple[int, int]


def _bns_of(op) -> tuple[list[nn.BatchNorm2d], list[nn.BatchNorm2d], list[nn.BatchNorm2d]]:
    ops = op._ops
    g1 = [ops[SEP3][0][3], ops[SEP5][0][3], ops[DIL3][3]]
    g2 = [ops[SEP3][1][3], ops[SEP5][1][3]]
    g3 = [ops[MAX][1], ops[AVG][1]]
    if isinstance(ops[SKIP], FactorizedReduce):
        g3.append(ops[SKIP].bn)
    g3.append(ops[DIL5][3])
    return g1, g2, g3


def supports_fused(cell) -> bool:
    return all(tuple(PRIMITIVES[k] for k in op.columns) == PRIMITIVES[1:] and PRIMITIVES[0] == "none"
               for op in cell._ops)


class CellPlan:
    """Static bookkeeping for one cell (module references and offsets; no tensors)."""

    def __init__(self, cell):
        if not supports_fused(cell):
            raise ValueError("the fused forward supports only the default candidate operations")
        self.bns: list[nn.BatchNorm2d] = []
        self.edges: list[_EdgePlan] = []
        offset = 0
        for op in cell._ops:
            groups = []
            for g in _bns_of(op):
                n = sum(b.num_features for b in g)
                groups.append((offset, n))
                offset += n
                self.bns += g
            C = op._ops[SEP3][0][1].in_channels
            self.edges.append(_EdgePlan(op.stride, C, *groups))
        for b in self.bns:
            if not (b.track_running_stats and b.momentum is not None and not b.affine):
                raise ValueError("the fused forward expects affine-free BN with running statistics and a momentum")
        self.momentum = self.bns[0].momentum
        self.eps = self.bns[0].eps
        if any(b.momentum != self.momentum or b.eps != self.eps for b in self.bns):
            raise ValueError("the fused forward expects one BN momentum and eps per cell")
        self.sizes = [b.num_features for b in self.bns]


def _dilate3(w: Tensor) -> Tensor:
    """[..., 3, 3] -> [..., 5, 5] with the taps on every second position (a dilation-2 3x3 kernel)."""
    z = w.new_zeros(*w.shape[:-2], 5, 5)
    z[..., ::2, ::2] = w
    return z


def _assemble(ops) -> dict[str, Tensor]:
    """Stacked per-edge weights for the whole cell (gradients flow back to the stored weights only)."""
    E = len(ops)
    m = [op._ops for op in ops]
    C = m[0][SEP3][0][1].in_channels
    s3 = F.pad(torch.stack([o[SEP3][0][1].weight for o in m]), (1, 1, 1, 1))        # [E, C, 1, 5, 5]
    s5 = torch.stack([o[SEP5][0][1].weight for o in m])
    d3 = _dilate3(torch.stack([o[DIL3][1].weight for o in m]))
    dw1 = torch.stack([s3, s5, d3], dim=3)                                         # [E, C, 1, 3, 5, 5]
    pw = torch.stack([w for o in m for w in (o[SEP3][0][2].weight, o[SEP5][0][2].weight, o[DIL3][2].weight)])
    pw = pw.reshape(E, 3, C, C, 1)                                                    # [E, k, o, i, 1]
    eye = torch.eye(3, dtype=pw.dtype, device=pw.device).view(1, 3, 1, 1, 3)
    pw1 = pw * eye                                                                 # [E, k, o, i, k']
    s3b = F.pad(torch.stack([o[SEP3][1][1].weight for o in m]), (1, 1, 1, 1))
    s5b = torch.stack([o[SEP5][1][1].weight for o in m])
    dw2 = torch.stack([s3b, s5b], dim=1)                                           # [E, 2, C, 1, 5, 5]
    pw2 = torch.stack([w for o in m for w in (o[SEP3][1][2].weight, o[SEP5][1][2].weight)])  # [2E, C, C, 1, 1]
    return {
        "dw1": dw1.reshape(E, 3 * C, 1, 5, 5),
        "pw1": pw1.reshape(E, 3 * C, 3 * C, 1, 1),
        "dw2": dw2.reshape(E, 2 * C, 1, 5, 5),
        "pw2": pw2.reshape(E, 2 * C, C, 1, 1),
    }


def _edge_terms(op, ep: _EdgePlan, x: Tensor, W: dict[str, Tensor], e: int, rm: Tensor, rv: Tensor,
                training: bool, momentum: float, eps: float) -> list[Tensor]:
    """The seven non-zero terms of one edge, in column order (max, avg, skip, sep3, sep5, dil3, dil5)."""
    ops, C, s = op._ops, ep.C, ep.stride

    def bn(t: Tensor, g: tuple[int, int]) -> Tensor:
        o, n = g
        return F.batch_norm(t, rm[o:o + n], rv[o:o + n], None, None, training, momentum, eps)

    r = F.relu(x)
    # first units of sep3, sep5 and dil3: one depthwise 5x5 (3 outputs per channel), one 1x1, one BN
    a = F.conv2d(r, W["dw1"][e], None, s, 2, 1, C)
    a = F.conv2d(a, W["pw1"][e])
    y35, d3 = torch.split(bn(a, ep.g1), [2 * C, C], dim=1)
    # second units of sep3 and sep5
    b = F.conv2d(F.relu(y35), W["dw2"][e], None, 1, 2, 1, 2 * C)
    b = F.conv2d(b, W["pw2"][e], None, 1, 0, 1, 2)
    s3, s5 = torch.split(bn(b, ep.g2), [C, C], dim=1)
    # pools, factorized reduce, dil5: concatenated, one BN
    d5 = F.conv2d(r, ops[DIL5][1].weight, None, s, 4, 2, C)
    d5 = F.conv2d(d5, ops[DIL5][2].weight)
    mp = F.max_pool2d(x, 3, s, 1)
    ap = F.avg_pool2d(x, 3, s, 1, count_include_pad=False)
    if s == 1:
        mp, ap, d5 = torch.split(bn(torch.cat([mp, ap, d5], 1), ep.g3), [C, C, C], dim=1)
        skip = x
    else:
        fr = ops[SKIP]
        fa = F.conv2d(r, fr.conv_1.weight, None, 2)
        fb = F.conv2d(r[:, :, 1:, 1:], fr.conv_2.weight, None, 2)
        if fb.shape[-2:] != fa.shape[-2:]:
            fb = F.pad(fb, (0, fa.shape[-1] - fb.shape[-1], 0, fa.shape[-2] - fb.shape[-2]))
        mp, ap, skip, d5 = torch.split(bn(torch.cat([mp, ap, fa, fb, d5], 1), ep.g3), [C, C, C, C], dim=1)
    return [mp, ap, skip, s3, s5, d3, d5]


def fused_cell_forward(cell, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
    plan: CellPlan | None = getattr(cell, "_fused_plan", None)
    if plan is None:
        plan = cell._fused_plan = CellPlan(cell)
    training = cell.training
    bns = plan.bns
    rm = torch.cat([b.running_mean for b in bns])
    rv = torch.cat([b.running_var for b in bns])
    W = _assemble(list(cell._ops))
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    offset = 0
    for _ in range(cell.num_nodes):
        terms: list[Tensor] = []
        for j, h in enumerate(states):
            e = offset + j
            terms += _edge_terms(cell._ops[e], plan.edges[e], h, W, e, rm, rv, training, plan.momentum, plan.eps)
        E = len(states)
        stacked = torch.stack(terms)
        w = weights[offset:offset + E, 1:].reshape(1, 7 * E).to(stacked.dtype)
        node = torch.mm(w, stacked.reshape(7 * E, -1)).view(terms[0].shape)
        offset += E
        states.append(node)
    if training:
        with torch.no_grad():
            torch._foreach_copy_([b.running_mean for b in bns] + [b.running_var for b in bns],
                                 list(torch.split(rm, plan.sizes)) + list(torch.split(rv, plan.sizes)))
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
    return torch.cat(states[-cell.multiplier:], dim=1)
