"""The CNN search network (spec §1.4): stem, cells with reductions at 1/3 and 2/3, classifier.

Alphas are parameters of this module named ``alphas_normal``/``alphas_reduce`` so that they move with
``.to()`` and live in ``state_dict``, but they are kept out of the weight set: ``weights()`` is what the
weight optimizer, weight decay, gradient clipping and the second-order flattening see (§2).
"""

from __future__ import annotations

import torch
from torch import nn

from ..space.derive import derive_genotype, num_edges
from ..space.genotype import Genotype
from ..space.ops import PRIMITIVES
from .cells import SearchCell

ARCH_NAMES = ("alphas_normal", "alphas_reduce")

# Bumped whenever any module registers a parameter or a submodule: invalidates the cached weight lists
# below. (Deleting a parameter with ``del`` is not seen; no code here does that.)
_registrations = [0]


def _count_registration(module, name, value) -> None:
    _registrations[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_count_registration)
torch.nn.modules.module.register_module_module_registration_hook(_count_registration)


class SearchNetwork(nn.Module):
    primitives = PRIMITIVES  # the columns of alpha
    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8, num_nodes: int = 4,
                 multiplier: int | None = None, stem_multiplier: int = 3, in_channels: int = 3,
                 fused: bool = False):
        super().__init__()
        self.num_nodes = num_nodes
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
            cell = SearchCell(num_nodes, multiplier, C_pp, C_p, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_pp, C_p = C_p, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        k, n = num_edges(num_nodes), len(PRIMITIVES)
        # 1e-3 * N(0, 1), as the reference code (§2; the paper says zeros).
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, n))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, n))
        self.set_fused(fused)

    def set_fused(self, fused: bool) -> "SearchNetwork":
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
            cache = (_registrations[0],
                     [(name, p) for name, p in self.named_parameters() if name not in ARCH_NAMES])
            self.__dict__["_named_weights"] = cache
        return list(cache[1])

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_named_weights", None)
        return super()._apply(fn, recurse)

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal = torch.softmax(self.alphas_normal, dim=-1)
        w_reduce = torch.softmax(self.alphas_reduce, dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def genotype(self) -> Genotype:
        return derive_genotype(self.alphas_normal, self.alphas_reduce, self.num_nodes)

    def arch_record(self) -> dict[str, list]:
        """This space's fields of a search's per-epoch metrics record: softmax(alpha) per alpha tensor."""
        return {name: torch.softmax(getattr(self, name).detach().double(), -1).cpu().tolist() for name in ARCH_NAMES}
