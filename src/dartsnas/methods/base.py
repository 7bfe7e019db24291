"""One method interface for DARTS and its robust variants (ROBUST-SPEC §5).

A method is a list of *components*. Each component overrides some of the hooks below; every default is
the identity, so the method made of the single default component is plain DARTS, bit for bit. The search
loop calls the hooks of ``Method`` and never looks at a method's name:

=========================  =========================================================================
hook                       where the loop calls it
=========================  =========================================================================
``network_options()``      keyword arguments of the supernet constructor (space primitives, K, aux, β)
``attach(model)``          once, after building (or loading) the supernet: installs the mixing hook
``on_epoch_start(...)``    at the start of every epoch: warm-up, schedules (β_e, λ_e, ε_e, τ), pruning
``updates_alpha(epoch)``   before the α step: False skips it (warm-up, blank)
``alpha_loss_fn(...)``     wraps the α-step loss closure: + λ·R(α) (β-DARTS), + KL (DrNAS)
``weight_step(...)``       context manager around the weight step's forward/backward: α transform
``genotype(model)``        final (and per-epoch) selection
``state_dict()``           what a resume needs (pruning masks, decided edges); schedules are functions
=========================  =========================================================================

Mixing weights are composed as: one component may supply the base map from the α tensors to weights
(softmax if none does: Dirichlet sample, Gumbel hard sample), then every component may transform the
weights (pruned ops set to 0, decided edges one-hot). The weight-step transforms of several components nest.

What a search space must expose to take these hooks (the DARTS ``SearchNetwork`` does; an NB201 supernet
needs the same):

* ``arch_parameters()``: every tensor the α optimiser trains (the α tensors first);
* ``alphas()``: the α tensors, rows = edges, columns = ``primitives``;
* ``mixing_weights()``: the forward's only source of mixing weights, returning ``mixing_override`` if set,
  else ``mixing(alphas())`` if ``mixing`` is set, else the row softmax of each α tensor;
* plain attributes ``mixing`` (None) and ``mixing_override`` (None), and ``primitives``;
* ``genotype()``: the plain derivation; and for the optional hooks ``set_hooks(sampled_only=, aux_weight=)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..space.nb201 import NB201_PRIMITIVES
from ..space.ops import PRIMITIVES

# The spaces of ROBUST-SPEC §5: candidate lists in α's column order. darts and darts-7 are built by the DARTS
# ``SearchNetwork``, nb201 by ``NB201SearchNetwork``.
SPACES: dict[str, tuple[str, ...]] = {
    "darts": PRIMITIVES,
    "darts-7": tuple(p for p in PRIMITIVES if p != "none"),
    "nb201": NB201_PRIMITIVES,
}

LossFn = Callable[[dict[str, Tensor] | None], Tensor]


class EpochContext:
    """What an epoch hook may use besides the model.

    ``epochs``: the run's epoch count as the loop knows it; ``Method.on_epoch_start`` keeps it in
    ``total_epochs`` and sets ``epochs`` to the supernet phase (total minus the components' extra epochs,
    DARTS-PT's tuning), which the schedules (β_e, ε_e, τ) run over. ``lr``: the weight learning rate of the
    epoch, which a hook may change (DARTS-PT's tuning); the loop applies it after the hooks.
    ``accuracy()`` (DARTS-PT) returns the supernet's accuracy on the validation half, training-mode BN and
    no gradients; the loop supplies it.
    """

    def __init__(
        self,
        epochs: int,
        weight_optimizer: torch.optim.Optimizer | None = None,
        accuracy: Callable[[], float] | None = None,
        lr: float | None = None,
    ):
        self.epochs = epochs
        self.total_epochs = epochs
        self.weight_optimizer = weight_optimizer
        self.accuracy = accuracy
        self.lr = lr


class Component:
    """A set of hooks; the defaults are plain DARTS (identities)."""

    #: a map from the α tensors to base mixing weights, or None (the row softmax)
    base_mixing: Callable[[Sequence[Tensor]], list[Tensor]] | None = None
    #: the hooks called inside a search step (mixing, transforms, α loss, weight step) are device arithmetic
    #: only: no host synchronisation, no branch on a tensor's value, so the step can be a CUDA graph
    graph_safe: bool = True

    def network_options(self) -> dict[str, Any]:
        return {}

    def attach(self, model) -> None:
        pass

    def extra_epochs(self) -> int:
        """Epochs this component adds after the supernet phase (DARTS-PT's tuning), once attached."""
        return 0

    def planned_extra_epochs(self, num_nodes: int) -> int:
        """``extra_epochs`` before attaching, for a DARTS-space cell of ``num_nodes`` nodes (config checks)."""
        return 0

    def restore(self, model, weight_optimizer) -> None:
        """On resume, after ``load_state_dict`` and before the network's own state is loaded: rebuild any
        structure the method changed (DrNAS's widening), swapping the optimiser's parameters alike."""

    def transform_weights(self, weights: list[Tensor]) -> list[Tensor]:
        return weights

    def transforms_weights(self) -> bool:
        return False

    def on_epoch_start(self, model, epoch: int, ctx: EpochContext) -> None:
        pass

    def updates_alpha(self, epoch: int) -> bool:
        return True

    def alpha_loss(self, model) -> Tensor | None:
        return None

    def weight_step(self, model, x: Tensor, y: Tensor, criterion) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def select(self, model):
        return None

    def log(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Method:
    """A named composition of components over one space; what the search loop holds."""

    def __init__(self, name: str, components: Sequence[Component], space: str = "darts"):
        if space not in SPACES:
            raise ConfigError(f"space: unknown space {space!r}; available: {', '.join(SPACES)}")
        self.name = name
        self.space = space
        self.components = list(components) or [Component()]
        if sum(c.base_mixing is not None for c in self.components) > 1:
            raise ConfigError(f"method {name}: two components define the mixing weights")
        self.epoch = 0

    @property
    def primitives(self) -> tuple[str, ...]:
        return SPACES[self.space]

    @property
    def plain(self) -> bool:
        """True for plain DARTS in the 8-op or the NB201 space: the loop may then use its fast paths (CUDA graphs)."""
        return self.space in ("darts", "nb201") and all(type(c) is Component for c in self.components)

    @property
    def graph_safe(self) -> bool:
        """True when every component's in-step hooks can be captured in a CUDA graph (``cuda_graph``); the
        graph is then recaptured at every epoch start, after the epoch hooks, unless the method is ``plain``."""
        return all(c.graph_safe for c in self.components)

    def network_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        for c in self.components:
            for k, v in c.network_options().items():
                if k in opts and opts[k] != v:
                    raise ConfigError(f"method {self.name}: components disagree on {k} ({opts[k]} vs {v})")
                opts[k] = v
        if self.primitives != PRIMITIVES:
            opts["primitives"] = self.primitives
        return opts

    def check_config(
        self, init_channels: int, layers: int = 8, num_nodes: int = 4, epochs: int | None = None
    ) -> list[str]:
        """Config problems of a DARTS-space search with this method: partial channels (K must split every
        cell's C, and C/K must be even for the stride-2 FactorizedReduce); extra phases (DARTS-PT's tuning
        must leave at least one supernet epoch)."""
        problems = self._check_channels(init_channels, layers)
        extra = sum(c.planned_extra_epochs(num_nodes) for c in self.components)
        if epochs is not None and extra >= epochs:
            problems.append(
                f"epochs: {self.name} adds {extra} epochs after the supernet phase (at {num_nodes} "
                f"nodes), so epochs must exceed {extra}, got {epochs}"
            )
        return problems

    def _check_channels(self, init_channels: int, layers: int) -> list[str]:
        sizes = {init_channels, 2 * init_channels, 4 * init_channels} if layers >= 3 else {init_channels}
        ks = {self.network_options().get("partial_channels", 1)}
        ks |= {c.widen_to for c in self.components if getattr(c, "widen_to", None)}  # DrNAS's second stage
        # DARTS spaces: the stride-2 FactorizedReduce halves C/K. NB201 (stages C, 2C, 4C) has stride 1 only.
        even = self.space != "nb201"
        problems = []
        for K in sorted(ks):
            bad = sorted(c for c in sizes if c % K or (even and K > 1 and (c // K) % 2))
            if bad:
                problems.append(
                    f"init_channels: {init_channels} does not split into K={K} partial-channel groups "
                    f"{'of an even size ' if even else ''}in every cell (C = {', '.join(map(str, bad))})"
                )
        return problems

    def attach(self, model) -> None:
        """Install the mixing hook (left at None for softmax without transforms, the plain path)."""
        base = next((c.base_mixing for c in self.components if c.base_mixing is not None), None)
        transforms = [c for c in self.components if c.transforms_weights()]
        if base is None and not transforms:
            model.mixing = None
        else:

            def mixing(alphas: Sequence[Tensor]) -> list[Tensor]:
                w = base(alphas) if base is not None else [torch.softmax(a, dim=-1) for a in alphas]
                for c in transforms:
                    w = c.transform_weights(w)
                return w

            model.mixing = mixing
        for c in self.components:
            c.attach(model)

    def on_epoch_start(self, model, epoch: int, ctx: EpochContext) -> None:
        self.epoch = epoch
        ctx.total_epochs = ctx.epochs
        ctx.epochs = ctx.total_epochs - sum(c.extra_epochs() for c in self.components)
        if ctx.epochs < 1:
            raise ConfigError(
                f"epochs: {self.name} needs more than {ctx.total_epochs - ctx.epochs} epochs "
                f"(its extra phase), got {ctx.total_epochs}"
            )
        for c in self.components:
            c.on_epoch_start(model, epoch, ctx)

    def updates_alpha(self, epoch: int) -> bool:
        return all(c.updates_alpha(epoch) for c in self.components)

    def alpha_loss_fn(self, model, loss_fn: LossFn) -> LossFn:
        """The α-step loss: ``loss_fn`` itself when no component adds a term (plain DARTS)."""
        if all(type(c).alpha_loss is Component.alpha_loss for c in self.components):
            return loss_fn

        def wrapped(overrides: dict[str, Tensor] | None) -> Tensor:
            loss = loss_fn(overrides)
            for c in self.components:
                term = c.alpha_loss(model)
                if term is not None:
                    loss = loss + term
            return loss

        return wrapped

    @contextlib.contextmanager
    def weight_step(self, model, x: Tensor, y: Tensor, criterion):
        """Around the weight step's forward and backward: each component's α transform, nested in order."""
        with contextlib.ExitStack() as stack:
            for c in self.components:
                stack.enter_context(c.weight_step(model, x, y, criterion))
            yield

    def genotype(self, model):
        for c in reversed(self.components):
            g = c.select(model)
            if g is not None:
                return g
        return model.genotype()

    def log(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in self.components:
            out.update(c.log())
        return out

    def restore(self, model, weight_optimizer) -> None:
        for c in self.components:
            c.restore(model, weight_optimizer)

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "space": self.space, "components": [c.state_dict() for c in self.components]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name or len(state.get("components", ())) != len(self.components):
            raise ValueError(f"checkpoint holds method {state.get('name')!r}, not {self.name!r}")
        for c, s in zip(self.components, state["components"]):
            c.load_state_dict(s)
