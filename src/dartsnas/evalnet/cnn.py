"""Evaluation ("train from scratch") networks built from a discrete genotype (spec §4.1, §5, §6).

* ``EvalCell``: one cell of a genotype. Preprocessing as in the search cell (§1.3) but with affine BN:
  s0 goes through FactorizedReduce(C_pp, C) when the previous cell reduced, otherwise ReLUConvBN(C_pp, C,
  1, 1, 0); s1 always through ReLUConvBN(C_p, C, 1, 1, 0). Intermediate node i+2 is
  ``op_a(in_a) + op_b(in_b)`` from pairs 2i and 2i+1; in a reduction cell the ops that read node 0 or 1
  have stride 2. The output concatenates the genotype's concat nodes (``multiplier = len(concat)``).
* Drop path (§5): in training mode with p > 0, every op output except a plain identity (stride-1
  ``skip_connect``) is multiplied by a per-sample Bernoulli(1 - p) mask of shape (B, 1, 1, 1) and divided
  by (1 - p). Pooling and the stride-2 ``skip_connect`` (FactorizedReduce) are dropped too. The mask is
  drawn from the global torch RNG (no private generator), so a checkpointed RNG state reproduces it.
* ``NetworkCIFAR`` (§5) and ``NetworkImageNet`` (§6). ``forward`` returns ``(logits, aux_logits)``;
  ``aux_logits`` is None in eval mode or when the network has no auxiliary head. The head is the
  submodule ``auxiliary_head`` (None when ``auxiliary=False``), so ``count_parameters`` can leave it out.
  ``drop_path_prob`` is a plain attribute, to be set once per epoch by the training loop.

Small inputs: both networks accept any input size that survives the reductions (e.g. 16x16 CIFAR-like
images with fewer cells). The classifier pools adaptively to 1x1 (identical to the 7x7 average pool of
§6 at 224x224). The auxiliary heads use their paper pooling (5x5 window, stride 3 on CIFAR / 2 on
ImageNet, no padding) whenever it yields exactly 2x2 — which it does at the paper sizes (8x8 and 7x7) —
and otherwise fall back to adaptive average pooling to 2x2, so neither a map smaller than the window nor a
larger one crashes the 2x2 conv/linear layers. Pooling has no parameters, so counts never change.

One deliberate difference from the reference: the auxiliary head's first ReLU is out-of-place (the
reference's is in-place). The values and gradients are the same, since every consumer of that tensor
starts with a ReLU (§5), but out-of-place cannot surprise autograd.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import GenotypeError
from ..space.genotype import Genotype, genotype_from_dict, genotype_to_dict
from ..space.ops import OPS, FactorizedReduce, Identity, ReLUConvBN

__all__ = [
    "EvalCell",
    "NetworkCIFAR",
    "NetworkImageNet",
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "drop_path",
    "count_parameters",
    "validate_genotype",
]


def validate_genotype(genotype: Genotype) -> Genotype:
    """Return ``genotype`` after checking it with the JSON parser's rules; raise GenotypeError otherwise."""
    if not isinstance(genotype, Genotype):
        raise GenotypeError(f"expected a CNN Genotype, got {type(genotype).__name__}", "genotype")
    try:
        checked = genotype_from_dict(genotype_to_dict(genotype))
    except (TypeError, ValueError) as e:  # e.g. a pair that is not (str, int)
        raise GenotypeError(f"malformed genotype: {e}", "genotype") from None
    return checked


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the kept ones by 1/(1 - drop_prob).

    One Bernoulli(1 - p) draw per sample (mask shape (B, 1, 1, 1)), from the global torch RNG of
    ``x``'s device. Callers decide when it applies (training mode, p > 0, not an identity).
    """
    if drop_prob <= 0.0:
        return x
    if drop_prob >= 1.0:
        raise ValueError(f"drop_prob must be < 1, got {drop_prob}")
    keep = 1.0 - drop_prob
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x.div(keep).mul(mask)


class EvalCell(nn.Module):
    """One cell of a discrete genotype, with affine BN everywhere (§1.1, §5)."""

    def __init__(self, genotype: Genotype, C_pp: int, C_p: int, C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        genotype = validate_genotype(genotype)
        self.reduction = reduction
        self.reduction_prev = reduction_prev
        self.preprocess0 = (
            FactorizedReduce(C_pp, C, affine=True) if reduction_prev else ReLUConvBN(C_pp, C, 1, 1, 0, affine=True)
        )
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=True)
        pairs = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.num_nodes = len(pairs) // 2
        self.concat: tuple[int, ...] = tuple(concat)
        self.multiplier = len(self.concat)
        self.indices: tuple[int, ...] = tuple(i for _, i in pairs)
        self.op_names: tuple[str, ...] = tuple(op for op, _ in pairs)
        self._ops = nn.ModuleList()
        for name, index in pairs:
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(OPS[name](C, stride, True))
        # A plain identity (stride-1 skip_connect) is the only op never dropped (§5).
        self._droppable = tuple(not isinstance(op, Identity) for op in self._ops)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        apply_drop = self.training and drop_prob > 0.0
        for i in range(self.num_nodes):
            total = None
            for k in (2 * i, 2 * i + 1):
                h = self._ops[k](states[self.indices[k]])
                if apply_drop and self._droppable[k]:
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


def _pool_to_2x2(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Paper pooling (window ``kernel``, ``stride``, no padding) if it gives 2x2, else adaptive to 2x2."""
    h, w = x.shape[-2:]
    if h >= kernel and w >= kernel and (h - kernel) // stride + 1 == 2 and (w - kernel) // stride + 1 == 2:
        return F.avg_pool2d(x, kernel, stride=stride, padding=0, count_include_pad=False)
    return F.adaptive_avg_pool2d(x, 2)


class AuxiliaryHeadCIFAR(nn.Module):
    """§5: ReLU → avgpool 5x5/3 (→ 2x2) → conv1x1 C→128 → BN → ReLU → conv2x2 128→768 → BN → ReLU → linear."""

    pool_kernel, pool_stride = 5, 3

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pool_to_2x2(F.relu(x), self.pool_kernel, self.pool_stride)
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """§6: as the CIFAR head but pool stride 2 and, as in the reference, no BN after the 2x2 conv."""

    pool_kernel, pool_stride = 5, 2

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _pool_to_2x2(F.relu(x), self.pool_kernel, self.pool_stride)
        return self.classifier(self.features(x).flatten(1))


def _check_sizes(C: int, layers: int, num_classes: int, drop_path_prob: float) -> None:
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    if C < 1 or C % 2:
        raise ValueError(f"C must be a positive even number (FactorizedReduce halves it), got {C}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= drop_path_prob < 1.0:
        raise ValueError(f"drop_path_prob must be in [0, 1), got {drop_path_prob}")


class _EvalNetwork(nn.Module):
    """Shared cell stack: reduction cells at layers//3 and 2*layers//3, aux head after cell 2*layers//3."""

    cells: nn.ModuleList
    auxiliary_head: nn.Module | None

    def __init__(self, genotype: Genotype, C: int, num_classes: int, layers: int, drop_path_prob: float):
        super().__init__()
        _check_sizes(C, layers, num_classes, drop_path_prob)
        self.genotype = validate_genotype(genotype)
        self.layers = layers
        self.drop_path_prob = float(drop_path_prob)

    def _build_cells(
        self, genotype: Genotype, layers: int, C_pp: int, C_p: int, C_curr: int, reduction_prev: bool
    ) -> int:
        self.cells = nn.ModuleList()
        self.aux_position = 2 * layers // 3
        self.aux_channels = None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_pp, C_p = C_p, cell.multiplier * C_curr
            if i == self.aux_position:
                self.aux_channels = C_p
        return C_p

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor):
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_position and self.auxiliary_head is not None and self.training:
                aux_logits = self.auxiliary_head(s1)
        return s1, aux_logits


class NetworkCIFAR(_EvalNetwork):
    """§5. Defaults are the paper's: C=36, 20 cells, auxiliary head, stem 3x3 conv to 3C + BN."""

    def __init__(
        self,
        genotype: Genotype,
        C: int = 36,
        num_classes: int = 10,
        layers: int = 20,
        auxiliary: bool = True,
        drop_path_prob: float = 0.0,
        in_channels: int = 3,
    ):
        super().__init__(genotype, C, num_classes, layers, drop_path_prob)
        stem_c = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_c, 3, padding=1, bias=False), nn.BatchNorm2d(stem_c))
        C_p = self._build_cells(self.genotype, layers, stem_c, stem_c, C, reduction_prev=False)
        self.auxiliary_head = AuxiliaryHeadCIFAR(self.aux_channels, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.stem(x)
        out, aux_logits = self._run_cells(s, s)
        logits = self.classifier(self.global_pooling(out).flatten(1))
        return logits, aux_logits


class NetworkImageNet(_EvalNetwork):
    """§6 (mobile setting). Two-stage stem to 1/8 resolution; cell 0 reduces s0 with FactorizedReduce."""

    def __init__(
        self,
        genotype: Genotype,
        C: int = 48,
        num_classes: int = 1000,
        layers: int = 14,
        auxiliary: bool = True,
        drop_path_prob: float = 0.0,
        in_channels: int = 3,
    ):
        super().__init__(genotype, C, num_classes, layers, drop_path_prob)
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_p = self._build_cells(self.genotype, layers, C, C, C, reduction_prev=True)
        self.auxiliary_head = AuxiliaryHeadImageNet(self.aux_channels, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)  # = avgpool 7x7 at 224x224 input
        self.classifier = nn.Linear(C_p, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        out, aux_logits = self._run_cells(s0, s1)
        logits = self.classifier(self.global_pooling(out).flatten(1))
        return logits, aux_logits


def count_parameters(model: nn.Module, include_auxiliary: bool = True) -> int:
    """Number of parameter values of ``model``; without the ``auxiliary_head`` submodule if asked."""
    excluded: set[int] = set()
    head = getattr(model, "auxiliary_head", None)
    if not include_auxiliary and isinstance(head, nn.Module):
        excluded = {id(p) for p in head.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)
