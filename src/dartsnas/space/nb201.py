"""The NAS-Bench-201 cell space (ROBUST-SPEC §1.1, §1.2, §1.4): operations, cell topology, genotype,
architecture string and derivation.

A cell has node 0 (its input) and nodes 1..3; node i sums an operation on every earlier node, so there are
6 edges, in the sorted-key order (1←0), (2←0), (2←1), (3←0), (3←1), (3←2). That order fixes α's rows and
the edge order of the architecture string; ``NB201_PRIMITIVES`` fixes α's columns.

Example::

    >>> from dartsnas.space.nb201 import parse_arch_str
    >>> g = parse_arch_str("|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|skip_connect~1|skip_connect~2|")
    >>> g.edges[2], g.arch_str() == str(g)
    (('none', 1), True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import GenotypeError

# §1.1: the column order is normative (α's columns, tie-breaking of derivation).
NB201_PRIMITIVES: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NUM_NODES = 4  # node 0 = input, node 3 = output (§1.2)
EDGES: tuple[tuple[int, int], ...] = tuple((i, j) for i in range(1, NUM_NODES) for j in range(i))  # (to, from)
NUM_EDGES = len(EDGES)
PARAMETER_FREE = ("none", "skip_connect", "avg_pool_3x3")


# ---------------------------------------------------------------------------------------------- ops


class ReLUConvBN(nn.Sequential):
    """ReLU (out of place) → conv → BN. The conv has a bias exactly when the BN is affine-free (§1.1)."""

    def __init__(self, C: int, kernel: int, affine: bool, track_running_stats: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, kernel, stride=1, padding=kernel // 2, bias=not affine),
            nn.BatchNorm2d(C, affine=affine, track_running_stats=track_running_stats),
        )


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def make_op(name: str, C: int, affine: bool = False, track_running_stats: bool = True) -> nn.Module:
    """One NB201 operation on C channels, stride 1 (every NB201 edge keeps shape, §1.1)."""
    if name == "none":
        return Zero()
    if name == "skip_connect":
        return Identity()
    if name == "nor_conv_1x1":
        return ReLUConvBN(C, 1, affine, track_running_stats)
    if name == "nor_conv_3x3":
        return ReLUConvBN(C, 3, affine, track_running_stats)
    if name == "avg_pool_3x3":  # no conv and no BN after the pooling (unlike the DARTS mixed op)
        return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
    raise GenotypeError(f"unknown operation {name!r}; expected one of {', '.join(NB201_PRIMITIVES)}", "op")


# ---------------------------------------------------------------------------------------------- genotype


@dataclass(frozen=True, slots=True)
class NB201Genotype:
    """One NB201 cell: ``edges[r] = (op, input)`` for edge r of ``EDGES`` (input = the edge's source node)."""

    edges: tuple[tuple[str, int], ...]

    @property
    def kind(self) -> str:
        return "nb201"

    @property
    def num_nodes(self) -> int:
        return NUM_NODES - 1

    def arch_str(self) -> str:
        """The benchmark's architecture string (§1.4)."""
        nodes = []
        for node in range(1, NUM_NODES):
            nodes.append("|" + "|".join(f"{op}~{j}" for (i, _), (op, j) in zip(EDGES, self.edges) if i == node) + "|")
        return "+".join(nodes)

    def __str__(self) -> str:
        return self.arch_str()

    def count(self, op: str) -> int:
        return sum(o == op for o, _ in self.edges)


def _check_edges(edges: tuple[tuple[str, int], ...], where: str) -> NB201Genotype:
    if len(edges) != NUM_EDGES:
        raise GenotypeError(f"expected {NUM_EDGES} edges, got {len(edges)}", where)
    for r, ((node, src), (op, j)) in enumerate(zip(EDGES, edges)):
        if op not in NB201_PRIMITIVES:
            raise GenotypeError(
                f"unknown operation {op!r}; expected one of {', '.join(NB201_PRIMITIVES)}", f"{where}[{r}].op"
            )
        if j != src:
            raise GenotypeError(f"edge {r} of node {node} must read node {src}, got {j!r}", f"{where}[{r}].input")
    return NB201Genotype(tuple(edges))


def parse_arch_str(text: Any) -> NB201Genotype:
    """Parse ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (§1.4); anything else raises GenotypeError."""
    if not isinstance(text, str):
        raise GenotypeError(f"expected a string, got {type(text).__name__}", "arch_str")
    nodes = text.strip().split("+")
    if len(nodes) != NUM_NODES - 1:
        raise GenotypeError(f"expected {NUM_NODES - 1} nodes joined by '+', got {len(nodes)}", "arch_str")
    edges: list[tuple[str, int]] = []
    for i, node_text in enumerate(nodes, start=1):
        pieces = [p for p in node_text.split("|") if p]
        if len(pieces) != i:
            raise GenotypeError(f"node {i} needs {i} edge(s), got {len(pieces)} in {node_text!r}", "arch_str")
        for j, piece in enumerate(pieces):
            op, sep, src = piece.partition("~")
            if not sep:
                raise GenotypeError(f"{piece!r} is not op~input", f"arch_str: node {i}")
            if op not in NB201_PRIMITIVES:
                raise GenotypeError(
                    f"unknown operation {op!r}; expected one of {', '.join(NB201_PRIMITIVES)}", f"arch_str: node {i}"
                )
            if src != str(j):
                raise GenotypeError(f"edge {j} of node {i} must read node {j}, got {src!r}", f"arch_str: node {i}")
            edges.append((op, j))
    return NB201Genotype(tuple(edges))


def nb201_to_dict(g: NB201Genotype) -> dict[str, Any]:
    """The kind-specific fields of ``genotype.json`` (space/genotype.py adds the schema version and kind)."""
    return {"edges": [{"op": op, "input": j} for op, j in g.edges], "arch_str": g.arch_str()}


def nb201_from_dict(data: dict[str, Any]) -> NB201Genotype:
    """Validate the fields of a ``"kind": "nb201"`` genotype object; ``arch_str`` is optional but must agree."""
    extra = set(data) - {"schema_version", "kind", "edges", "arch_str"}
    if extra:
        raise GenotypeError(f"unknown key(s) {sorted(extra)}", "genotype")
    if "edges" not in data:
        if "arch_str" in data:
            return parse_arch_str(data["arch_str"])
        raise GenotypeError("missing", "edges")
    items = data["edges"]
    if not isinstance(items, list):
        raise GenotypeError(f"expected a list of {{op, input}} pairs, got {type(items).__name__}", "edges")
    edges = []
    for k, item in enumerate(items):
        if isinstance(item, list) and len(item) == 2:
            item = {"op": item[0], "input": item[1]}
        if not isinstance(item, dict) or set(item) != {"op", "input"}:
            raise GenotypeError('expected an object {"op": ..., "input": ...}', f"edges[{k}]")
        if not isinstance(item["input"], int) or isinstance(item["input"], bool):
            raise GenotypeError(f"{item['input']!r} is not a node index", f"edges[{k}].input")
        edges.append((item["op"], item["input"]))
    g = _check_edges(tuple(edges), "edges")
    if "arch_str" in data and data["arch_str"] != g.arch_str():
        raise GenotypeError(f"{data['arch_str']!r} disagrees with the edges ({g.arch_str()})", "arch_str")
    return g


# ---------------------------------------------------------------------------------------------- derivation


def derive_nb201(alphas: torch.Tensor) -> NB201Genotype:
    """§1.4: argmax of each α row over all five columns (``none`` included); ties go to the lower column."""
    if tuple(alphas.shape) != (NUM_EDGES, len(NB201_PRIMITIVES)):
        raise GenotypeError(f"expected a {NUM_EDGES}×{len(NB201_PRIMITIVES)} α, got {tuple(alphas.shape)}", "alphas")
    rows = alphas.detach().double().cpu().tolist()
    edges = []
    for (_, src), row in zip(EDGES, rows):
        best = 0
        for k, v in enumerate(row):
            if v > row[best]:  # strict: a tie keeps the lower column
                best = k
        edges.append((NB201_PRIMITIVES[best], src))
    return NB201Genotype(tuple(edges))


def edge_labels() -> list[str]:
    """Row labels of α: ``i ← j`` in the sorted-key order."""
    return [f"{i} ← {j}" for i, j in EDGES]
