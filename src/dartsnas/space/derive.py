"""Derivation of a discrete cell from alphas (spec §4.2 for CNN cells, §7.2 for recurrent cells).

Works on P = softmax(alpha) row by row. ``none`` plays no part: an edge's strength is its largest
non-``none`` probability and the op kept on an edge is the strongest non-``none`` one. Ties go to the
lower predecessor and to the lower column (Python's sort is stable).
"""

from __future__ import annotations

import torch

from .genotype import RNN_PRIMITIVES, Genotype, RNNGenotype
from .ops import PRIMITIVES


def _best_op(row: list[float], primitives: tuple[str, ...]) -> tuple[float, int]:
    best_k, best_p = -1, float("-inf")
    for k, p in enumerate(row):
        if primitives[k] == "none":
            continue
        if p > best_p:  # strict: a tie keeps the first column
            best_k, best_p = k, p
    return best_p, best_k


def derive_cell(
    probs: torch.Tensor, num_nodes: int, k: int = 2, primitives: tuple[str, ...] = PRIMITIVES, first_node: int = 2
) -> list[tuple[str, int]]:
    """Return the (op, input) pairs of one cell; ``probs`` has one row per edge, edges grouped by node."""
    rows = probs.detach().double().cpu().tolist()
    pairs: list[tuple[str, int]] = []
    start = 0
    for node in range(first_node, first_node + num_nodes):
        edges = []  # node i has i predecessors (0..i-1) in both spaces
        for j in range(node):
            strength, op = _best_op(rows[start + j], primitives)
            edges.append((strength, j, op))
        start += node
        kept = sorted(edges, key=lambda e: -e[0])[:k]  # stable: ties keep the lower predecessor
        pairs.extend((primitives[op], j) for _, j, op in kept)
    return pairs


def derive_genotype(alphas_normal: torch.Tensor, alphas_reduce: torch.Tensor, num_nodes: int = 4) -> Genotype:
    pn = torch.softmax(alphas_normal.detach().double(), dim=-1)
    pr = torch.softmax(alphas_reduce.detach().double(), dim=-1)
    concat = tuple(range(2, 2 + num_nodes))
    return Genotype(tuple(derive_cell(pn, num_nodes)), concat, tuple(derive_cell(pr, num_nodes)), concat)


def derive_rnn_genotype(alphas: torch.Tensor, num_nodes: int = 8) -> RNNGenotype:
    """k = 1: one predecessor and one activation per node; concat is every intermediate node."""
    p = torch.softmax(alphas.detach().double(), dim=-1)
    pairs = derive_cell(p, num_nodes, k=1, primitives=RNN_PRIMITIVES, first_node=1)
    return RNNGenotype(tuple(pairs), tuple(range(1, num_nodes + 1)))


def num_edges(num_nodes: int, first_node: int = 2) -> int:
    return sum(range(first_node, first_node + num_nodes))
