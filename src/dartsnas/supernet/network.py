"""The CNN search network (spec §1.4): stem, cells with reductions at 1/3 and 2/3, classifier.

Alphas are parameters of this module named ``alphas_normal``/``alphas_reduce`` so that they move with
``.to()`` and live in ``state_dict``, but they are kept out of the weight set: ``weights()`` is what the
weight optimizer, weight decay, gradient clipping and the second-order flattening see (§2).

Method hooks (ROBUST-SPEC §5; dartsnas.methods). Construction options, all off by default so that the
default network is unchanged: ``primitives`` (the 7-op ``darts-7`` space drops ``none``),
``partial_channels`` K (PC-DARTS), ``aux_skip`` (DARTS-) and ``edge_norm`` (PC-DARTS's β_normal and
β_reduce, 14 each, trained with α). Runtime hooks, plain attributes (never state): ``mixing``, a function
from the list of α tensors to the list of mixing weights (None: row softmax), and ``mixing_override``, a
list of mixing weights used as they are (SDARTS's perturbed simplex in the weight step). Every forward
takes its mixing weights from ``mixing_weights()``, the one place where α becomes weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..space.derive import derive_cell, derive_genotype, num_edges
from ..space.genotype import Genotype
from ..space.ops import PRIMITIVES
from .cells import SearchCell

ARCH_NAMES = ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce")

# Bumped whenever any module registers a parameter or a submodule: invalidates the cached weight lists
# below. (Deleting a parameter with ``del`` is not seen; no code here does that.)
_registrations = [0]


def _count_registration(module, name, value) -> None:
    _registrations[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)
torch.nn.modules.module.register_module_module_registration_hook(_count_registration)


class SearchNetwork(nn.Module):
    def __init__(
        self,
        C: int = 16,
        num_classes: int = 10,
        layers: int = 8,
        num_nodes: int = 4,
        multiplier: int | None = None,
        stem_multiplier: int = 3,
        in_channels: int = 3,
        fused: bool = False,
        primitives: tuple[str, ...] = PRIMITIVES,
        partial_channels: int = 1,
        aux_skip: bool = False,
        edge_norm: bool = False,
    ):
        super().__init__()
        self.num_nodes = num_nodes
        self.primitives = tuple(primitives)
        multiplier = num_nodes if multiplier is None else multiplier  # concat all intermediate nodes
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = SearchCell(
                num_nodes,
                multiplier,
                C_pp,
                C_p,
                C_curr,
                reduction,
                reduction_prev,
                self.primitives,
                partial_channels,
                aux_skip,
            )
            reduction_prev = reduction
            self.cells.append(cell)
            C_pp, C_p = C_p, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        k, n = num_edges(num_nodes), len(self.primitives)
        # 1e-3 * N(0, 1), as the reference code (§2; the paper says zeros).
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, n))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, n))
        self.edge_norm = edge_norm
        if edge_norm:  # drawn after α, so α is the same with and without (ROBUST-SPEC §3.1)
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(k))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(k))
        self.mixing = None
        self.mixing_override: list[torch.Tensor] | None = None
        self.set_fused(fused)

    def set_fused(self, fused: bool) -> SearchNetwork:
        """Switch every cell to the fused forward (supernet/fused.py): same parameters and mathematics."""
        for cell in self.cells:
            cell.fused = bool(fused)
        return self

    def weights(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_weights()]

    def named_weights(self) -> list[tuple[str, nn.Parameter]]:
        # Walking the ~2,000 parameters costs milliseconds and runs several times per search step: cached,
        # recomputed after any parameter registration (anywhere) or a device/dtype conversion (_apply).
        cache = self.__dict__.get("_named_weights")
        if cache is None or cache[0] != _registrations[0]:
            cache = (_registrations[0], [(name, p) for name, p in self.named_parameters() if name not in ARCH_NAMES])
            self.__dict__["_named_weights"] = cache
        return list(cache[1])

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_named_weights", None)
        return super()._apply(fn, recurse)

    def arch_parameters(self) -> list[nn.Parameter]:
        """Every architecture tensor the α optimiser trains: the alphas, then the edge betas if any."""
        return self.alphas() + self.edge_betas()

    def alphas(self) -> list[nn.Parameter]:
        """The α tensors (rows = edges, columns = ``primitives``), in the order of ``mixing_weights()``."""
        return [self.alphas_normal, self.alphas_reduce]

    def edge_betas(self) -> list[nn.Parameter]:
        return [self.betas_normal, self.betas_reduce] if self.edge_norm else []

    def mixing_weights(self) -> list[torch.Tensor]:
        """The mixing weights of every α tensor: the method's (``mixing``), or the row softmax."""
        if self.mixing_override is not None:
            return list(self.mixing_override)
        if self.mixing is not None:
            return list(self.mixing(self.alphas()))
        return [torch.softmax(a, dim=-1) for a in self.alphas()]

    def edge_weights(self) -> list[torch.Tensor | None]:
        """PC-DARTS edge normalisation: softmax of β over each node's incoming edges (None when off)."""
        if not self.edge_norm:
            return [None, None]
        out = []
        for b in self.edge_betas():
            parts, start = [], 0
            for i in range(self.num_nodes):
                parts.append(torch.softmax(b[start : start + i + 2], dim=-1))
                start += i + 2
            out.append(torch.cat(parts))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal, w_reduce = self.mixing_weights()
        e_normal, e_reduce = self.edge_weights()
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, (cell(s0, s1, w_reduce) if e_reduce is None else cell(s0, s1, w_reduce, e_reduce))
            else:
                s0, s1 = s1, (cell(s0, s1, w_normal) if e_normal is None else cell(s0, s1, w_normal, e_normal))
        return self.classifier(self.global_pooling(s1).flatten(1))

    def set_hooks(self, *, sampled_only: bool | None = None, aux_weight: float | None = None) -> None:
        """Runtime cell hooks: GDAS's one-op forward, the DARTS- aux weight β_e (plain attributes)."""
        for cell in self.cells:
            if sampled_only is not None:
                cell.sampled_only = sampled_only
            if aux_weight is not None:
                cell.aux_weight = aux_weight

    def genotype(self) -> Genotype:
        """Plain DARTS derivation (top-2 edges per node, strongest non-``none`` op), edge-scaled with β."""
        if not self.edge_norm and self.primitives == PRIMITIVES:
            return derive_genotype(self.alphas_normal, self.alphas_reduce, self.num_nodes)
        return derive_scaled_genotype(
            self.alphas_normal,
            self.alphas_reduce,
            self.num_nodes,
            self.primitives,
            *[w.detach().double() if w is not None else None for w in self.edge_weights()],
        )

    def arch_record(self) -> dict[str, list]:
        """This space's fields of a search's per-epoch metrics record: softmax(alpha) per alpha tensor, and
        PC-DARTS's edge weights (softmax of β over each node's inputs) when edge normalisation is on."""
        rec = {
            name: torch.softmax(getattr(self, name).detach().double(), -1).cpu().tolist()
            for name in ("alphas_normal", "alphas_reduce")
        }
        if self.edge_norm:
            for name, w in zip(("edge_weights_normal", "edge_weights_reduce"), self.edge_weights()):
                rec[name] = w.detach().double().cpu().tolist()
        return rec


def derive_scaled_genotype(
    alphas_normal: torch.Tensor,
    alphas_reduce: torch.Tensor,
    num_nodes: int,
    primitives: tuple[str, ...],
    edge_normal: torch.Tensor | None = None,
    edge_reduce: torch.Tensor | None = None,
) -> Genotype:
    """DARTS derivation over ``primitives``; PC-DARTS scales softmax(α) by the edge's weight first (§3.1)."""
    probs = []
    for a, e in ((alphas_normal, edge_normal), (alphas_reduce, edge_reduce)):
        p = torch.softmax(a.detach().double(), dim=-1)
        probs.append(p if e is None else p * e.reshape(-1, 1))
    concat = tuple(range(2, 2 + num_nodes))
    return Genotype(
        tuple(derive_cell(probs[0], num_nodes, primitives=primitives)),
        concat,
        tuple(derive_cell(probs[1], num_nodes, primitives=primitives)),
        concat,
    )
