"""A fused forward for the search cell: the same modules, parameters and mathematics, far fewer kernels.

``SearchCell`` dispatches here when its ``fused`` attribute is true (``SearchNetwork(fused=True)``,
``SearchConfig.fused_ops``). Nothing is stored here: every weight and running buffer is read from the cell's
own modules at call time (so ``state_dict``, checkpoints, parameter counts and ``functional_call``
overrides all behave as for the plain forward), and only the order in which the arithmetic is launched
changes. The results equal the plain forward's to float rounding (tests/test_fused.py, float64).

**Grouped by source.** Every edge of the cell starts from one of its states (the two preprocessed inputs or
an intermediate node; spec §1.3), and all the edges leaving one state have the same stride (2 only for the
inputs of a reduction cell). As soon as a state exists, all its K outgoing edges are computed together:

* **One ReLU per source** (both SepConvs, both DilConvs and FactorizedReduce start with ReLU(x)).
* **Two depthwise convs per source for the first units of all K edges.** The first depthwise kernels of
  ``sep_conv_3x3``, ``sep_conv_5x5`` and ``dil_conv_3x3`` all fit a 5x5 window at padding 2 (the 3x3 kernel
  zero-padded, the dilated 3x3 kernel on every second tap): one depthwise conv with 3K outputs per input
  channel. ``dil_conv_5x5``'s depthwise kernel (dilation 2) is a second one with K outputs per channel.
* **One grouped 1x1 conv** (``groups=4K``) for the 4K pointwise convs that follow, after one channel
  permutation; **one BN** over its 4KC channels.
* **The second units of both SepConvs of all K edges**: one depthwise conv over 2KC channels, one grouped
  1x1 conv (``groups=2K``), one BN.
* **Pooling shared per source.** Max and average pooling see the same input and stride on every edge of the
  source: each is computed once. Each edge's pooling is followed by its own affine-free BN (§1.2); in
  training mode their outputs use the batch statistics, which are the same for every edge, so the
  normalisation is computed once too, and the K edges' running statistics are updated together from one
  mean and (unbiased) variance. In eval mode each edge normalises with its own running statistics.
* **FactorizedReduce** (the skip of a stride-2 edge): the two shifted 1x1 stride-2 convs of all K edges are
  one 2x2 stride-2 conv whose kernels sit on taps (0, 0) and (1, 1), on the input padded by one pixel at
  the bottom and right (the zero padding of the shorter branch for odd sizes); one BN.
* **Weighted sums as batched matrix products**: the K edges' sums Σ_k w_k op_k(x) of one source are four
  products ``[K, blocks] x [N, blocks, C·H·W]`` (the dilated convs, the SepConvs, the pools, the skip), with
  no stacking copies; ``none`` outputs zeros, so its term is dropped, as in ``MixedOp``. Every mixing matrix
  of the cell comes from its weights in one ``index_select`` (copies of the weights and exact zeros; each
  weight in one entry), so the α gradient flows back through one scatter instead of a zero-fill per slice.

Running statistics: the buffers of every BN of the cell are concatenated once (in the order the grouped BNs
use them), updated in place slice by slice, and copied back at the end of the cell (one multi-tensor copy);
``num_batches_tracked`` is incremented with one multi-tensor add. The stacked weights of the whole cell are
assembled once per forward, edges ordered by source, so that a source's K edges are one slice.

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
class _Source:
    """The edges leaving one state of the cell, and where their BN statistics sit in the cell's buffers."""

    state: int  # 0, 1: the preprocessed inputs; 2 + i: intermediate node i
    edges: list[int]  # indices into cell._ops, by target node
    stride: int
    units: int = 0  # offsets (channels) in the concatenated running buffers
    second: int = 0
    pools: int = 0
    reduce: int = 0
    pool_bns: tuple[nn.BatchNorm2d, ...] = ()  # (max, avg) of every edge


def supports_fused(cell) -> bool:
    return all(
        tuple(PRIMITIVES[k] for k in op.columns) == PRIMITIVES[1:] and PRIMITIVES[0] == "none" for op in cell._ops
    )


class CellPlan:
    """Static bookkeeping for one cell (module references and offsets; no tensors)."""

    def __init__(self, cell):
        if not supports_fused(cell):
            raise ValueError("the fused forward supports only the default candidate operations")
        n = cell.num_nodes
        first_edge = [sum(2 + k for k in range(i)) for i in range(n)]  # edge index of (node i, state 0)
        self.incoming = [list(range(first_edge[i], first_edge[i] + 2 + i)) for i in range(n)]
        self.C = cell._ops[0]._ops[SEP3][0][1].in_channels
        self.sources: list[_Source] = []
        self.order: list[int] = []
        self.bns: list[nn.BatchNorm2d] = []
        offset = 0
        for j in range(n + 1):  # the last node has no outgoing edge
            edges = [first_edge[i] + j for i in range(max(0, j - 1), n)]
            ops = [cell._ops[e]._ops for e in edges]
            strides = {cell._ops[e].stride for e in edges}
            if len(strides) != 1:
                raise ValueError("the fused forward expects one stride per source state")
            src = _Source(j, edges, strides.pop())
            self.order += edges
            groups = [
                (
                    "units",
                    [o[k][0][3] for o in ops for k in (SEP3, SEP5)]
                    + [o[DIL3][3] for o in ops]
                    + [o[DIL5][3] for o in ops],
                ),
                ("second", [o[k][1][3] for o in ops for k in (SEP3, SEP5)]),
                ("pools", [o[k][1] for o in ops for k in (MAX, AVG)]),
            ]
            if src.stride == 2:
                if not all(isinstance(o[SKIP], FactorizedReduce) for o in ops):
                    raise ValueError("the fused forward expects FactorizedReduce on stride-2 edges")
                groups.append(("reduce", [o[SKIP].bn for o in ops]))
            src.pool_bns = tuple(groups[2][1])
            for name, bns in groups:
                setattr(src, name, offset)
                offset += sum(b.num_features for b in bns)
                self.bns += bns
            self.sources.append(src)
        for b in self.bns:
            if not (b.track_running_stats and b.momentum is not None and not b.affine):
                raise ValueError("the fused forward expects affine-free BN with running statistics and a momentum")
            if b.num_features != self.C:
                raise ValueError("the fused forward expects every BN of a cell's edges to have C channels")
        self.momentum = self.bns[0].momentum
        self.eps = self.bns[0].eps
        if any(b.momentum != self.momentum or b.eps != self.eps for b in self.bns):
            raise ValueError("the fused forward expects one BN momentum and eps per cell")
        self.sizes = [b.num_features for b in self.bns]
        self.weight_shape = (len(cell._ops), len(PRIMITIVES))
        self._mix_layout = {training: self._layout(training) for training in (True, False)}
        self._mix_index: dict[tuple[torch.device, bool], Tensor] = {}

    def _layout(self, training: bool) -> tuple[list[int], list[tuple[int, int]]]:
        """Where every entry of every source's four mixing matrices comes from, as flat indices into the cell's
        ``[E, 1 + 7]`` weights followed by one zero (index ``E·8``): per source, in the order
        ``_source_contributions`` uses them, ``[K, 2K]`` (dil3 of every edge, then dil5), ``[K, 2K]`` (sep3,
        sep5 by edge), pools (``[K, 2]`` shared in training mode, ``[K, 2K]`` by edge in eval mode) and the skip
        (``[K, 1]`` shared identity at stride 1, ``[K, K]`` FactorizedReduce by edge at stride 2). Row t is the
        source's t-th edge; every (edge, operation) appears exactly once in the cell."""
        E, P = self.weight_shape
        zero = E * P
        flat: list[int] = []
        shapes: list[tuple[int, int]] = []

        def matrix(K: int, cols: int, entries) -> None:
            m = [[zero] * cols for _ in range(K)]
            for t, c, k in entries:
                m[t][c] = src.edges[t] * P + 1 + k
            flat.extend(i for row in m for i in row)
            shapes.append((K, cols))

        for src in self.sources:
            K, rows = len(src.edges), range(len(src.edges))
            matrix(K, 2 * K, [(t, t, DIL3) for t in rows] + [(t, K + t, DIL5) for t in rows])
            matrix(K, 2 * K, [(t, 2 * t + o, k) for t in rows for o, k in enumerate((SEP3, SEP5))])
            if training:
                matrix(K, 2, [(t, o, k) for t in rows for o, k in enumerate((MAX, AVG))])
            else:
                matrix(K, 2 * K, [(t, 2 * t + o, k) for t in rows for o, k in enumerate((MAX, AVG))])
            if src.stride == 1:
                matrix(K, 1, [(t, 0, SKIP) for t in rows])
            else:
                matrix(K, K, [(t, t, SKIP) for t in rows])
        return flat, shapes

    def mixing_matrices(self, weights: Tensor, training: bool) -> list[tuple[Tensor, ...]]:
        """Every source's four mixing matrices from the cell's weights, gathered in one ``index_select`` (the
        index tensor is made once per device: no copy inside a step). The entries are copies of the weights and
        exact zeros, and each weight lands in one entry, so its gradient is that entry's, unsummed."""
        if tuple(weights.shape) != self.weight_shape:
            got = tuple(weights.shape)
            raise ValueError(f"the fused forward expects weights of shape {self.weight_shape}, got {got}")
        flat, shapes = self._mix_layout[training]
        key = (weights.device, training)
        if key not in self._mix_index:
            self._mix_index[key] = torch.tensor(flat, device=weights.device)
        entries = F.pad(weights.reshape(-1), (0, 1)).index_select(0, self._mix_index[key])
        # split, not slicing: its backward is one concatenation, not a zero-fill per piece
        pieces = torch.split(entries, [r * c for r, c in shapes])
        mats = [t.view(shape) for t, shape in zip(pieces, shapes, strict=True)]
        return [tuple(mats[4 * j : 4 * j + 4]) for j in range(len(self.sources))]


def _dilate3(w: Tensor) -> Tensor:
    """[..., 3, 3] -> [..., 5, 5] with the taps on every second position (a dilation-2 3x3 kernel)."""
    z = w.new_zeros(*w.shape[:-2], 5, 5)
    z[..., ::2, ::2] = w
    return z


def _assemble(cell, plan: CellPlan) -> list[dict[str, Tensor]]:
    """The weights of the cell's edges in the layouts the grouped convs take, one dict per source (gradients flow
    back to the stored weights only). Each source's first-unit kernels are stacked straight into their final
    order, so neither the forward nor the backward re-lays them out (stack and cat go back as views)."""
    m = [cell._ops[e]._ops for e in plan.order]
    E, C = len(m), plan.C
    s3 = F.pad(torch.stack([o[SEP3][0][1].weight for o in m]), (1, 1, 1, 1)).unbind(0)  # E x [C, 1, 5, 5]
    d3 = _dilate3(torch.stack([o[DIL3][1].weight for o in m])).unbind(0)
    # (stacked and unbound, not used directly: the backward then gathers their gradients, which the channel-major
    # stacks below leave strided, with one copy per cell instead of one per parameter)
    s5 = torch.stack([o[SEP5][0][1].weight for o in m]).unbind(0)
    d5 = torch.stack([o[DIL5][1].weight for o in m]).unbind(0)
    s3b = F.pad(torch.stack([o[SEP3][1][1].weight for o in m]), (1, 1, 1, 1))
    s5b = torch.stack([o[SEP5][1][1].weight for o in m])
    sizes = [len(src.edges) for src in plan.sources]
    # second units: one chunk per source (split, not slicing: its backward is one concatenation)
    dw2 = torch.split(torch.stack([s3b, s5b], dim=1).reshape(E, 2 * C, 1, 5, 5), sizes)
    pw2 = torch.stack([w for o in m for w in (o[SEP3][1][2].weight, o[SEP5][1][2].weight)]).reshape(E, 2, C, C)
    pw2 = torch.split(pw2, sizes)
    out = []
    first = 0
    for j, K in enumerate(sizes):
        at = range(first, first + K)  # this source's edges in plan.order
        first += K
        out.append(
            {
                # depthwise, channel g's 3K outputs: (sep3, sep5) of every edge, then dil3 of every edge
                "dw1": torch.stack([w for i in at for w in (s3[i], s5[i])] + [d3[i] for i in at], dim=1).reshape(
                    3 * K * C, 1, 5, 5
                ),
                "dw5": torch.stack([d5[i] for i in at], dim=1).reshape(K * C, 1, 5, 5),
                # pointwise blocks: (sep3, sep5) of every edge, dil3 of every edge, dil5 of every edge
                "pw1": torch.cat(
                    [w for i in at for w in (m[i][SEP3][0][2].weight, m[i][SEP5][0][2].weight)]
                    + [m[i][DIL3][2].weight for i in at]
                    + [m[i][DIL5][2].weight for i in at]
                ),  # [4KC, C, 1, 1]
                "dw2": dw2[j],  # [K, 2C, 1, 5, 5]
                "pw2": pw2[j],  # [K, 2, C, C]
            }
        )
    return out


def _reduce_weight(cell, src: _Source) -> Tensor:
    """The K FactorizedReduce convs of a stride-2 source as one [K·C, C, 2, 2] kernel: conv_1 on tap (0, 0),
    conv_2 on tap (1, 1) (zero padding puts each 1x1 kernel in its corner)."""
    frs = [cell._ops[e]._ops[SKIP] for e in src.edges]
    a = F.pad(torch.stack([fr.conv_1.weight for fr in frs]), (0, 1, 0, 1))  # [K, C/2, C, 2, 2]
    b = F.pad(torch.stack([fr.conv_2.weight for fr in frs]), (1, 0, 1, 0))
    return torch.stack([a, b], dim=1).reshape(-1, *a.shape[-3:])


def _source_contributions(
    cell,
    plan: CellPlan,
    src: _Source,
    x: Tensor,
    W: dict[str, Tensor],
    mats: tuple[Tensor, ...],
    rm: Tensor,
    rv: Tensor,
    training: bool,
    pool_stats: list,
) -> list[Tensor]:
    """Σ_k w_ek op_k(x) for every edge e leaving ``x`` (``mats``: its mixing matrices, ``CellPlan._layout``), one
    ``[N, C, H, W]`` tensor per edge of ``src.edges``. In training mode, appends (pool BNs, batch mean,
    unbiased batch variance) to ``pool_stats`` for the running-statistics update at the end of the cell.

    Every grouped tensor below is laid out as ``[N, blocks, C, H, W]``; a block is one operation of one edge.
    The weighted sums are matrix products ``[K, blocks] x [N, blocks, C·H·W]`` (one kernel each, no copies).
    """
    C, s, K = plan.C, src.stride, len(src.edges)
    N = x.shape[0]
    momentum, eps = plan.momentum, plan.eps

    def bn(t: Tensor, offset: int) -> Tensor:
        n = t.shape[1]
        return F.batch_norm(t, rm[offset : offset + n], rv[offset : offset + n], None, None, training, momentum, eps)

    r = F.relu(x)
    # First units of all K edges. One depthwise conv with 3K outputs per channel, in the order (sep3, sep5)
    # of every edge, then dil3 of every edge; one with K outputs for dil5 (dilation 2).
    a = F.conv2d(r, W["dw1"], None, s, 2, 1, C)  # channel g·3K + block
    d = F.conv2d(r, W["dw5"], None, s, 4, 2, C)
    H, Wd = a.shape[-2:]
    u = torch.cat(
        [a.reshape(N, C, 3 * K, H * Wd).transpose(1, 2), d.reshape(N, C, K, H * Wd).transpose(1, 2)], dim=1
    ).reshape(N, 4 * K * C, H, Wd)  # one copy; blocks (sep3, sep5) by edge, dil3, dil5
    u = bn(F.conv2d(u, W["pw1"], None, 1, 0, 1, 4 * K), src.units)
    sep_first, u = torch.split(u.reshape(N, 4 * K, C * H * Wd), [2 * K, 2 * K], dim=1)  # (split: no zero-fill
    # in the backward, unlike slicing). Second units of sep3 and sep5 of all K edges, blocks (sep3, sep5) by edge:
    y = F.relu(sep_first).reshape(N, 2 * K * C, H, Wd)
    b = F.conv2d(y, W["dw2"].reshape(2 * K * C, 1, 5, 5), None, 1, 2, 1, 2 * K * C)
    b = bn(F.conv2d(b, W["pw2"].reshape(2 * K * C, C, 1, 1), None, 1, 0, 1, 2 * K), src.second)
    # pools, once per source; each edge's own affine-free BN
    p = torch.cat([F.max_pool2d(x, 3, s, 1), F.avg_pool2d(x, 3, s, 1, count_include_pad=False)], dim=1)
    if training:  # batch statistics: one output for every edge
        pooled = F.batch_norm(p, None, None, None, None, True, 0.0, eps)
        with torch.no_grad():
            var, mean = torch.var_mean(
                p.float() if p.dtype in (torch.float16, torch.bfloat16) else p, dim=(0, 2, 3), correction=1
            )
        pool_stats.append((src.pool_bns, mean, var))
    else:  # running statistics: each edge its own
        pooled = torch.cat([bn(p, src.pools + 2 * e * C) for e in range(K)], dim=1)
    if s == 1:
        skip = x  # shared identity
    else:
        skip = bn(F.conv2d(F.pad(r, (0, 1, 0, 1)), _reduce_weight(cell, src), None, 2), src.reduce)

    def mix(m: Tensor, t: Tensor) -> Tensor:  # [K, blocks] x [N, blocks, C·H·W], one batched product
        return torch.bmm(m.to(t.dtype).expand(N, *m.shape), t.reshape(N, m.shape[1], -1))

    m_dil, m_sep, m_pool, m_skip = mats
    out = mix(m_dil, u)  # dil3, dil5
    out = out + mix(m_sep, b)
    out = out + mix(m_pool, pooled)
    out = out + mix(m_skip, skip)
    return [t.view(N, C, H, Wd) for t in out.unbind(1)]


def fused_cell_forward(cell, s0: Tensor, s1: Tensor, weights: Tensor) -> Tensor:
    plan: CellPlan | None = getattr(cell, "_fused_plan", None)
    if plan is None:
        plan = cell._fused_plan = CellPlan(cell)
    training = cell.training
    bns = plan.bns
    rm = torch.cat([b.running_mean for b in bns])
    rv = torch.cat([b.running_var for b in bns])
    W = _assemble(cell, plan)
    mats = plan.mixing_matrices(weights, training)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    parts: dict[int, list[Tensor]] = {i: [] for i in range(cell.num_nodes)}  # contributions to node i
    pool_stats: list = []

    def expand(j: int) -> None:
        src = plan.sources[j]
        contributions = _source_contributions(cell, plan, src, states[j], W[j], mats[j], rm, rv, training, pool_stats)
        for i, c in zip(range(max(0, j - 1), cell.num_nodes), contributions, strict=True):
            parts[i].append(c)

    expand(0)
    expand(1)
    for i in range(cell.num_nodes):
        node = parts.pop(i)
        total = node[0]
        for c in node[1:]:
            total = total + c
        states.append(total)
        if i + 2 < len(plan.sources):
            expand(i + 2)
    if training:
        with torch.no_grad():
            torch._foreach_copy_(
                [b.running_mean for b in bns] + [b.running_var for b in bns],
                list(torch.split(rm, plan.sizes)) + list(torch.split(rv, plan.sizes)),
            )
            torch._foreach_add_([b.num_batches_tracked for b in bns], 1)
            # The shared pooling BNs, updated here (not in rm/rv, which the BN backward has saved): r <- (1-m)r + m*s
            pool_bns = [b for ps in pool_stats for b in ps[0]]
            for attr, k in (("running_mean", 1), ("running_var", 2)):
                bufs = [getattr(b, attr) for b in pool_bns]
                stats = [
                    t.to(bufs[0].dtype) for ps in pool_stats for t in torch.split(ps[k], plan.C) * (len(ps[0]) // 2)
                ]  # (max, avg) of every edge
                torch._foreach_mul_(bufs, 1 - plan.momentum)
                torch._foreach_add_(bufs, stats, alpha=plan.momentum)
    return torch.cat(states[-cell.multiplier :], dim=1)
