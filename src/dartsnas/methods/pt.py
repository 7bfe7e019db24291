"""DARTS-PT: perturbation-based selection with tuning between projections (ROBUST-SPEC §3.6).

After the supernet phase (the first ``epochs − tune_epochs`` epochs), the search continues for
``tune_epochs`` tuning epochs at a learning rate of 0.0025 with a re-created weight SGD. At the scheduled
tuning epochs an edge's operation is fixed (op projection) or, in the DARTS space, a node's input edges
are reduced to two (topology projection). Decisions are made by masking and measuring the supernet's
accuracy on the validation half (``EpochContext.accuracy``: training-mode BN, no gradients):

* op choice on an edge: zero each op's weight in turn; keep the op whose removal hurts most (lowest
  accuracy); the edge becomes one-hot on it (decided edges stay one-hot);
* topology at a node: repeatedly remove the input edge whose zeroing leaves the highest accuracy until two
  remain.

Decisions act through ``transform_weights`` (the network's mixing hook), so PT works on any space that
exposes the interface of ``base``; its state (decisions, the random edge/node order) is checkpointed, and
a projection is never repeated on resume.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import Component, EpochContext


def projection_epochs(n_projections: int, tune_epochs: int, interval: int = 5) -> list[int]:
    """Tuning epochs of the projections: every ``interval`` epochs, the last clamped into the tuning run.

    DARTS space: 14 op + 4 node projections, 86 = 5·17 + 1 tuning epochs: 0, 5, ..., 85.
    NB201: 6 op projections, 25 tuning epochs: 0, 5, 10, 15, 20, 24.
    """
    return [min(interval * i, tune_epochs - 1) for i in range(n_projections)]


def default_tune_epochs(n_projections: int, interval: int = 5) -> int:
    return interval * (n_projections - 1) + 1


def tuning_lr(
    tune_epoch: int, tune_epochs: int, lr: float = 0.0025, lr_min: float = 0.001, cosine: bool = True
) -> float:
    """0.0025 (= 0.025/10); cosine to 0.001 over the tuning epochs in the DARTS space, constant on NB201."""
    if not cosine:
        return lr
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * tune_epoch / tune_epochs)) / 2


def _node_edges(num_nodes: int) -> list[list[int]]:
    """Row indices of each intermediate node's input edges (node i+2 has i+2 inputs)."""
    out, start = [], 0
    for i in range(num_nodes):
        out.append(list(range(start, start + i + 2)))
        start += i + 2
    return out


class PerturbationSelection(Component):
    """The DARTS-PT projection schedule and masks. ``topology=True`` in the DARTS space (two inputs per node)."""

    def __init__(
        self,
        tune_epochs: int | None = None,
        interval: int = 5,
        tune_lr: float = 0.0025,
        tune_lr_min: float = 0.001,
        cosine: bool = True,
        topology: bool = True,
        seed: int | None = None,
    ):
        self.tune_epochs_arg = tune_epochs
        self.interval, self.tune_lr, self.tune_lr_min, self.cosine = interval, tune_lr, tune_lr_min, cosine
        self.topology = topology
        self.seed = seed
        self.gen = torch.Generator().manual_seed(seed or 0)
        self.decided: list[dict[int, int]] = []  # per α tensor: edge row -> op column
        self.removed: list[set[int]] = []  # per α tensor: edge rows cut by the topology step
        self.probe: tuple[int, int, int | None] | None = None  # (tensor, row, column or None = whole edge)
        self.done = 0
        self.tuning_started = False
        self.num_nodes = 0
        self.shape: list[tuple[int, int]] = []
        self.orders: list[list[int]] | None = None  # per α tensor: the random node order of the topology step

    # -- schedule --

    def attach(self, model) -> None:
        self.shape = [tuple(a.shape) for a in model.alphas()]
        self.num_nodes = getattr(model, "num_nodes", 0)
        # In the DARTS spaces a cell never keeps `none` (the derivation excludes it, DARTS-SPEC §4), so it is no
        # candidate of the projection either; on NB201 `none` is a legal operation (ROBUST-SPEC §1.4).
        primitives = tuple(getattr(model, "primitives", ()))
        darts_space = hasattr(model, "alphas_normal")
        self.excluded = {primitives.index("none")} if darts_space and "none" in primitives else set()
        if self.seed is None:  # the edge and node orders follow the run's seed (drawn once, then checkpointed)
            self.gen.manual_seed(int(torch.randint(2**62, (1,))))
        if not self.decided:
            self.decided = [{} for _ in self.shape]
            self.removed = [set() for _ in self.shape]

    def n_projections(self) -> int:
        rows = max(r for r, _ in self.shape)
        return rows + (self.num_nodes if self.topology else 0)

    def tune_epochs(self) -> int:
        return self.tune_epochs_arg or default_tune_epochs(self.n_projections(), self.interval)

    def extra_epochs(self) -> int:
        return self.tune_epochs()

    def planned_extra_epochs(self, num_nodes: int) -> int:
        rows = sum(range(2, 2 + num_nodes))
        return self.tune_epochs_arg or default_tune_epochs(rows + (num_nodes if self.topology else 0), self.interval)

    def schedule(self) -> list[int]:
        return projection_epochs(self.n_projections(), self.tune_epochs(), self.interval)

    # -- mixing weights --

    def transforms_weights(self) -> bool:
        return True

    def transform_weights(self, weights: list[Tensor]) -> list[Tensor]:
        if not any(self.decided) and not any(self.removed) and self.probe is None:
            return weights
        out = []
        for t, w in enumerate(weights):
            keep = torch.ones_like(w)
            fixed = torch.zeros_like(w)
            for row, col in self.decided[t].items():
                keep[row] = 0.0
                fixed[row, col] = 1.0
            for row in self.removed[t]:
                keep[row] = 0.0
                fixed[row] = 0.0
            if self.probe is not None and self.probe[0] == t:
                _, row, col = self.probe
                if col is None:
                    keep[row], fixed[row] = 0.0, 0.0
                else:
                    keep[row, col], fixed[row, col] = 0.0, 0.0
            out.append(w * keep + fixed)
        return out

    # -- projections --

    def _measure(self, probe: tuple[int, int, int | None], accuracy) -> float:
        self.probe = probe
        try:
            return float(accuracy())
        finally:
            self.probe = None

    def project_op(self, t: int, row: int, accuracy) -> int:
        """Fix edge ``row`` of α tensor ``t`` to the op whose masking gives the lowest accuracy."""
        cols = [c for c in range(self.shape[t][1]) if c not in self.excluded]
        accs = {col: self._measure((t, row, col), accuracy) for col in cols}
        best = min(cols, key=lambda c: (accs[c], c))  # ties: the lower column
        self.decided[t][row] = best
        return best

    def project_node(self, t: int, node: int, accuracy) -> list[int]:
        """Cut node ``node``'s inputs down to two, each time removing the edge whose loss hurts least."""
        edges = [e for e in _node_edges(self.num_nodes)[node] if e not in self.removed[t]]
        while len(edges) > 2:
            accs = [self._measure((t, e, None), accuracy) for e in edges]
            worst = max(range(len(edges)), key=lambda i: (accs[i], -i))
            self.removed[t].add(edges.pop(worst))
        return edges

    def _random_pick(self, items: list[int]) -> int:
        return items[int(torch.randint(len(items), (1,), generator=self.gen))]

    def project_next(self, accuracy) -> None:
        """The next projection of the schedule: one op decision per α tensor, then topology per node."""
        rows = max(r for r, _ in self.shape)
        if self.done < rows:
            for t, (n, _) in enumerate(self.shape):
                open_rows = [r for r in range(n) if r not in self.decided[t]]
                if open_rows:
                    self.project_op(t, self._random_pick(open_rows), accuracy)
        else:
            for t in range(len(self.shape)):
                done_nodes = self.done - rows
                order = self.node_order(t)
                self.project_node(t, order[done_nodes], accuracy)
        self.done += 1

    def node_order(self, t: int) -> list[int]:
        if self.orders is None:  # drawn at the first topology projection
            self.orders = [torch.randperm(self.num_nodes, generator=self.gen).tolist() for _ in self.shape]
        return self.orders[t]

    def on_epoch_start(self, model, epoch: int, ctx: EpochContext) -> None:
        start = ctx.total_epochs - self.tune_epochs()
        if epoch < start:
            return
        t = epoch - start
        ctx.lr = tuning_lr(t, self.tune_epochs(), self.tune_lr, self.tune_lr_min, self.cosine)
        if not self.tuning_started:  # re-create the weight SGD: no momentum carried into tuning
            if ctx.weight_optimizer is not None:
                ctx.weight_optimizer.state.clear()
            self.tuning_started = True
        schedule = self.schedule()
        while self.done < len(schedule) and schedule[self.done] <= t:
            if ctx.accuracy is None:
                raise ValueError("DARTS-PT needs an accuracy probe in the epoch context")
            self.project_next(ctx.accuracy)

    def finished(self) -> bool:
        return bool(self.shape) and self.done >= self.n_projections()

    def select(self, model):
        if not self.topology and hasattr(model, "derive_from_alphas"):
            # NB201 (no topology step): a decided edge keeps its op (a 2 beats any softmax value), an open one
            # (before the last projection) follows α.
            out = []
            for t, a in enumerate(model.alphas()):
                w = torch.softmax(a.detach().double(), dim=-1)
                for row, col in self.decided[t].items():
                    w[row] = 0.0
                    w[row, col] = 2.0
                out.append(w)
            return model.derive_from_alphas(out)
        if not self.finished() or not self.topology:
            return None
        from ..space.genotype import Genotype

        cells = []
        for t in range(len(self.shape)):
            pairs = []
            for _node, rows in enumerate(_node_edges(self.num_nodes)):
                kept = [r for r in rows if r not in self.removed[t]]
                pairs += [(model.primitives[self.decided[t][r]], r - rows[0]) for r in kept]
            cells.append(tuple(pairs))
        concat = tuple(range(2, 2 + self.num_nodes))
        return Genotype(cells[0], concat, cells[1], concat)

    def log(self) -> dict[str, Any]:
        return {"pt_projections": self.done}

    def state_dict(self) -> dict[str, Any]:
        return {
            "decided": [dict(d) for d in self.decided],
            "removed": [sorted(r) for r in self.removed],
            "done": self.done,
            "tuning_started": self.tuning_started,
            "gen": self.gen.get_state(),
            "orders": self.orders,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decided = [{int(k): int(v) for k, v in d.items()} for d in state["decided"]]
        self.removed = [{int(r) for r in rs} for rs in state["removed"]]
        self.done = int(state["done"])
        self.tuning_started = bool(state["tuning_started"])
        self.gen.set_state(state["gen"])
        self.orders = None if state.get("orders") is None else [list(o) for o in state["orders"]]


@torch.no_grad()
def supernet_accuracy(model, images: Tensor, labels: Tensor, index: Tensor, mean, std, batch_size: int) -> float:
    """Accuracy on ``images[index]`` with BN in training mode and no gradients (DARTS-PT's measure).

    The BN running buffers are restored afterwards, so probing leaves the network as it was.
    """
    from ..data.images import augment

    was = model.training
    saved = {k: v.clone() for k, v in model.named_buffers()}
    model.train()
    correct = torch.zeros((), dtype=torch.float64, device=images.device)
    try:
        for start in range(0, len(index), batch_size):
            idx = index[start : start + batch_size]
            out = model(augment(images[idx], None, mean, std, train=False))
            out = out[0] if isinstance(out, tuple) else out
            correct += (out.argmax(1) == labels[idx]).sum().double()
    finally:
        for k, v in model.named_buffers():
            v.copy_(saved[k])
        model.train(was)
    return correct.item() / max(len(index), 1)
