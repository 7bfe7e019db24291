"""Uniformly random cells of the search space (spec §9 [SPEC]): the random-search baseline's candidates."""

from __future__ import annotations

import random

from .genotype import RNN_OPS, AnyGenotype, Genotype, RNNGenotype
from .ops import PRIMITIVES

CNN_SEARCH_OPS: tuple[str, ...] = tuple(p for p in PRIMITIVES if p != "none")  # 7 (spec §9)
RNN_SEARCH_OPS: tuple[str, ...] = tuple(RNN_OPS)  # 4


def sample_cnn_genotype(rng: random.Random, num_nodes: int = 4) -> Genotype:
    """A uniformly random CNN genotype (spec §9 [SPEC]): per node, two distinct predecessors drawn uniformly
    without replacement and an op per edge drawn uniformly from the 7 non-``none`` ops; normal and reduction
    cells independently; concat = all intermediate nodes."""

    def cell() -> tuple[tuple[str, int], ...]:
        pairs = []
        for i in range(num_nodes):
            for src in rng.sample(range(i + 2), 2):
                pairs.append((rng.choice(CNN_SEARCH_OPS), src))
        return tuple(pairs)

    normal = cell()
    reduce = cell()
    concat = tuple(range(2, num_nodes + 2))
    return Genotype(normal, concat, reduce, concat)


def sample_rnn_genotype(rng: random.Random, num_nodes: int = 8) -> RNNGenotype:
    """A uniformly random recurrent genotype (spec §9 [SPEC]): node i gets one predecessor uniform over
    0..i-1 and an activation uniform over the 4 non-``none`` ones; concat = nodes 1..num_nodes."""
    rec = tuple((rng.choice(RNN_SEARCH_OPS), rng.randrange(i)) for i in range(1, num_nodes + 1))
    return RNNGenotype(rec, tuple(range(1, num_nodes + 1)))


def sample_genotypes(space: str, n: int, seed: int, num_nodes: int | None = None) -> list[AnyGenotype]:
    """``n`` random cells from one seeded generator; the first k do not depend on n."""
    rng = random.Random(seed)
    if space == "rnn":
        return [sample_rnn_genotype(rng, num_nodes or 8) for _ in range(n)]
    return [sample_cnn_genotype(rng, num_nodes or 4) for _ in range(n)]
