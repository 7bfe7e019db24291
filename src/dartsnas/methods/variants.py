"""The components of the robust variants (ROBUST-SPEC §3), each a set of hooks of ``base.Component``.

Re-implemented from the spec's description; no code of any release is used.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import NonFiniteError
from .base import Component, EpochContext

# ----------------------------------------------------------------------------------------- PC-DARTS §3.1


class PartialChannels(Component):
    """K partial channels + shuffle, edge normalisation β, and no α/β step during the warm-up epochs."""

    def __init__(self, K: int, warmup_epochs: int, edge_norm: bool = True):
        self.K, self.warmup_epochs, self.edge_norm = K, warmup_epochs, edge_norm
        self.epoch: int | None = None

    def network_options(self) -> dict[str, Any]:
        return {"partial_channels": self.K, "edge_norm": self.edge_norm}

    def updates_alpha(self, epoch: int) -> bool:
        return epoch >= self.warmup_epochs

    def on_epoch_start(self, model, epoch: int, ctx: EpochContext) -> None:
        self.epoch = epoch

    def log(self) -> dict[str, Any]:
        return {} if self.epoch is None else {"warmup": not self.updates_alpha(self.epoch)}


# ----------------------------------------------------------------------------------------- DARTS- §3.2


def darts_minus_beta(epoch: int, epochs: int, schedule: str = "linear") -> float:
    """β_e = (E − e)/E (linear, the release's default): 1.00, 0.98, 0.50, 0.02 at 0, 1, 25, 49 of 50."""
    if schedule == "linear":
        return (epochs - epoch) / epochs
    return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))  # the cosine option


class AuxSkip(Component):
    """An auxiliary skip path on every edge, outside α, weighted by a decaying β_e (not learned)."""

    def __init__(self, schedule: str = "linear"):
        self.schedule = schedule
        self.beta = 1.0

    def network_options(self) -> dict[str, Any]:
        return {"aux_skip": True}

    def attach(self, model) -> None:
        model.set_hooks(aux_weight=self.beta)

    def on_epoch_start(self, model, epoch: int, ctx: EpochContext) -> None:
        self.beta = darts_minus_beta(min(epoch, ctx.epochs - 1), ctx.epochs, self.schedule)  # held after the search
        model.set_hooks(aux_weight=self.beta)

    def log(self) -> dict[str, Any]:
        return {"aux_beta": self.beta}


# ----------------------------------------------------------------------------------------- β-DARTS §3.3


def beta_decay_regulariser(alphas: Sequence[Tensor]) -> Tensor:
    """R(α) = mean over every edge (row of every α tensor) of log Σ_k exp α_{e,k}."""
    return torch.cat([torch.logsumexp(a, dim=-1) for a in alphas]).mean()


def beta_decay_lambda(epoch: int, lam_max: float = 50.0, horizon: int = 100) -> float:
    """λ_e = 50·e/100, the 100 hard-coded in the release: 0, 0.5, 25, 49.5 at epochs 0, 1, 50, 99."""
    return lam_max * epoch / horizon


class BetaDecay(Component):
    def __init__(self, lam_max: float = 50.0, horizon: int = 100):
        self.lam_max, self.horizon = lam_max, horizon
        self.lam = 0.0

    def on_epoch_start(self, model, epoch: int, ctx: EpochContext) -> None:
        self.lam = beta_decay_lambda(epoch, self.lam_max, self.horizon)

    def alpha_loss(self, model) -> Tensor | None:
        return self.lam * beta_decay_regulariser(model.alphas())

    def log(self) -> dict[str, Any]:
        return {"beta_decay_lambda": self.lam}


# ----------------------------------------------------------------------------------------- SDARTS §3.4


def project_simplex(w: Tensor) -> Tensor:
    """Π: clamp rows to [0, 1]; an all-zero row gets 1 at its pre-clamp argmax; divide by the row sum."""
    c = w.clamp(0.0, 1.0)
    dead = c.sum(-1) == 0
    # always through torch.where (rows that are not dead keep c exactly): no host sync inside the step
    c = torch.where(dead.unsqueeze(-1), torch.zeros_like(c).scatter_(-1, w.argmax(-1, keepdim=True), 1.0), c)
    return c / c.sum(-1, keepdim=True)


def sdarts_epsilon(epoch: int, epochs: int, eps_min: float = 0.03, eps_max: float = 0.3) -> float:
    """ε_e = 0.03 + (0.3 − 0.03)·e/E: 0.03, 0.165, 0.2946 at epochs 0, 25, 49 of 50."""
    return eps_min + (eps_max - eps_min) * epoch / epochs


def uniform_perturbation(base: Sequence[Tensor], eps: float) -> list[Tensor]:
    """softmax(α) + δ with δ ~ U[−ε, ε] i.i.d. (before Π)."""
    return [b + (torch.rand_like(b) * 2.0 - 1.0) * eps for b in base]


@contextlib.contextmanager
def _override(model, weights: list[Tensor] | None):
    prev = model.mixing_override
    model.mixing_override = weights
    try:
        yield
    finally:
        model.mixing_override = prev


class Perturb(Component):
    """SDARTS: the weight step runs on Π(softmax(α) + δ), δ uniform (RS) or a 7-step PGD attack (ADV).

    α itself is never written: the perturbed weights are the network's ``mixing_override`` for the step's
    forward and backward only, so α is bit-identical afterwards by construction.
    """

    def __init__(self, adversarial: bool, eps_min: float = 0.03, eps_max: float = 0.3, attack_steps: int = 7):
        self.adversarial = adversarial
        self.graph_safe = not adversarial  # ADV reads its losses on the host and branches on them
        self.eps_min, self.eps_max, self.attack_steps = eps_min, eps_max, attack_steps
        self.eps = eps_min
        self.last_losses: tuple[float, float] | None = None  # ADV: (unperturbed, final), for tests and logs

    def on_epoch_start(self, model, epoch: int, ctx: EpochContext) -> None:
        self.eps = sdarts_epsilon(min(epoch, ctx.epochs - 1), ctx.epochs, self.eps_min, self.eps_max)

    def log(self) -> dict[str, Any]:
        return {"epsilon": self.eps}

    @contextlib.contextmanager
    def weight_step(self, model, x: Tensor, y: Tensor, criterion):
        with torch.no_grad():
            base = [w.detach() for w in model.mixing_weights()]
        if self.adversarial:
            bar = self.attack(model, base, x, y, criterion)
        else:
            with torch.no_grad():
                bar = [project_simplex(w) for w in uniform_perturbation(base, self.eps)]
        with _override(model, bar):
            yield

    def attack(self, model, base: list[Tensor], x: Tensor, y: Tensor, criterion) -> list[Tensor]:
        """PGD with BN in eval mode; reverts to ``base`` unless the attack raised the loss (§3.4)."""
        was = model.training
        model.eval()
        step = 2.0 * self.eps / self.attack_steps

        def loss_at(w: list[Tensor]) -> Tensor:
            with _override(model, w):
                return criterion(model(x), y)

        try:
            with torch.no_grad():
                loss0 = loss_at(base)
                bar = [project_simplex(w) for w in uniform_perturbation(base, self.eps)]
            for _ in range(self.attack_steps):
                bar = [w.detach().requires_grad_(True) for w in bar]
                grads = torch.autograd.grad(loss_at(bar), bar)
                with torch.no_grad():
                    bar = [
                        project_simplex(b0 + (w + step * g.sign() - b0).clamp(-self.eps, self.eps))
                        for w, g, b0 in zip(bar, grads, base)
                    ]
            with torch.no_grad():
                final = loss_at(bar)
        finally:
            model.train(was)
        l0, l1 = float(loss0), float(final)
        if not math.isfinite(l1):
            raise NonFiniteError("adversarial training loss", -1, "SDARTS-ADV attack")
        if l1 <= l0:  # the attack did not raise the loss: train on the unperturbed weights
            bar, l1 = base, l0
        self.last_losses = (l0, l1)
        return [w.detach() for w in bar]


# ----------------------------------------------------------------------------------------- DrNAS §3.5


def dirichlet_concentration(alpha: Tensor) -> Tensor:
    return F.elu(alpha) + 1.0


def dirichlet_mixing(alphas: Sequence[Tensor]) -> list[Tensor]:
    """θ_e ~ Dir(ELU(α_e) + 1), reparameterised (pathwise) so that α gets a gradient through θ."""
    # validate_args=False: ELU + 1 > 0 always, and the check would be a host sync inside the step
    return [torch.distributions.Dirichlet(dirichlet_concentration(a), validate_args=False).rsample() for a in alphas]


def dirichlet_kl(alphas: Sequence[Tensor]) -> Tensor:
    """Σ_e KL(Dir(β_e) ‖ Dir(1))."""
    total = None
    for a in alphas:
        conc = dirichlet_concentration(a)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Dirichlet(conc, validate_args=False),
            torch.distributions.Dirichlet(torch.ones_like(conc), validate_args=False),
        ).sum()
        total = kl if total is None else total + kl
    return total


def _channel_map(old: int, new: int, generator: torch.Generator | None) -> Tensor:
    """Keep the ``old`` channels in place and fill the rest with copies of randomly chosen existing ones."""
    return torch.cat([torch.arange(old), torch.randint(old, (new - old,), generator=generator)])


def _widen(t: Tensor, dims: Sequence[int], maps: dict[int, Tensor]) -> Tensor:
    for d in dims:
        t = t.index_select(d, maps[t.shape[d]].to(t.device))
    return t


def _rebuilt_partial_op(op, new_K: int, primitives: tuple[str, ...]):
    """An empty partial mixed op like ``op`` (DARTS space or NB201) with K = ``new_K``."""
    from ..supernet.mixed import PartialMixedOp
    from ..supernet.nb201 import NB201PartialMixedOp

    C = op.part * op.K
    if isinstance(op, NB201PartialMixedOp):
        # NB201 (ROBUST-SPEC §3.5, progressive variant): stride 1 everywhere, so no FactorizedReduce halves.
        track = all(m.track_running_stats for m in op.modules() if isinstance(m, nn.BatchNorm2d))
        return NB201PartialMixedOp(C, new_K, track)
    return PartialMixedOp(C, op.stride, primitives, new_K)


def widen_mixed_op(
    op,
    new_K: int,
    primitives: tuple[str, ...],
    generator: torch.Generator | None = None,
    momentum: dict[Tensor, Tensor] | None = None,
):
    """A partial mixed op (``PartialMixedOp`` or NB201's ``NB201PartialMixedOp``) rebuilt for C/new_K channels,
    each new channel a copy of an existing one.

    Conv weights are copied along their output channels and, unless depthwise, their input channels, conv
    biases (NB201's convs have one, §1.1) along their channels; BN running statistics along their channels;
    ``momentum`` (parameter -> SGD momentum buffer) likewise. One map per channel count (C/K, and C/(2K) for
    the halves of FactorizedReduce), so a channel keeps one source across all tensors. Returns
    ``(new_op, maps, new_momentum)``.
    """
    old = op.part
    new_op = _rebuilt_partial_op(op, new_K, primitives)
    ref = next(op.parameters())
    new_op.to(device=ref.device, dtype=ref.dtype).train(op.training)
    new = new_op.part
    maps = {old: _channel_map(old, new, generator)}
    if old % 2 == 0:
        maps[old // 2] = _channel_map(old // 2, new // 2, generator)
    new_momentum: dict[Tensor, Tensor] = {}

    def copy(p_old: Tensor, p_new: Tensor, dims: Sequence[int]) -> None:
        p_new.copy_(_widen(p_old, dims, maps))
        if momentum is not None and p_old in momentum:
            new_momentum[p_new] = _widen(momentum[p_old], dims, maps)

    with torch.no_grad():
        for m_old, m_new in zip(op.modules(), new_op.modules()):
            if isinstance(m_old, nn.Conv2d):
                copy(m_old.weight, m_new.weight, (0,) if m_old.groups > 1 else (0, 1))
                if m_old.bias is not None:
                    copy(m_old.bias, m_new.bias, (0,))
            elif isinstance(m_old, nn.BatchNorm2d) and m_old.running_mean is not None:
                m_new.running_mean.copy_(_widen(m_old.running_mean, (0,), maps))
                m_new.running_var.copy_(_widen(m_old.running_var, (0,), maps))
                m_new.num_batches_tracked.copy_(m_old.num_batches_tracked)
    return new_op, maps, new_momentum


def _partial_op_lists(model) -> list[nn.ModuleList]:
    """The lists of partial mixed ops of a supernet: each DARTS cell's ``_ops``, each NB201 cell's ``edges``
    (NB201's residual blocks hold none)."""
    from ..supernet.cells import SearchCell
    from ..supernet.nb201 import NB201SearchCell

    return [
        cell.edges if isinstance(cell, NB201SearchCell) else cell._ops
        for cell in model.cells
        if isinstance(cell, (SearchCell, NB201SearchCell))
    ]


def widen_partial_channels(
    model, optimizer: torch.optim.Optimizer | None, new_K: int, generator: torch.Generator | None = None
) -> None:
    """Progressive DrNAS: every partial mixed op of ``model`` (DARTS space or NB201) goes to K = ``new_K``; the
    weight optimiser keeps its state (momentum buffers copied channel by channel) and its learning rate."""
    for ops in _partial_op_lists(model):
        for e, op in enumerate(ops):
            momentum = None
            if optimizer is not None:
                momentum = {
                    p: optimizer.state[p]["momentum_buffer"]
                    for p in op.parameters()
                    if p in optimizer.state and optimizer.state[p].get("momentum_buffer") is not None
                }
            new_op, _, new_momentum = widen_mixed_op(op, new_K, model.primitives, generator, momentum)
            if optimizer is not None:
                swap = dict(zip(map(id, op.parameters()), new_op.parameters()))
                for group in optimizer.param_groups:
                    group["params"] = [swap.get(id(p), p) for p in group["params"]]
                for p in op.parameters():
                    optimizer.state.pop(p, None)
                for p, buf in new_momentum.items():
                    optimizer.state[p] = {"momentum_buffer": buf}
            ops[e] = new_op


class DirichletMixing(Component):
    """Dirichlet samples as mixing weights in both steps; "kl" adds reg_scale·KL to the α loss.

    Progressive DrNAS: at the start of epoch ``prune_epoch`` each edge keeps its ``prune_keep`` strongest ops by
    α (pruned ops get weight exactly 0, the sample renormalised over the survivors) and, with ``widen_to``, the
    partial mixed ops are widened to K = ``widen_to`` by channel copies (``widen_partial_channels``).
    """

    base_mixing = staticmethod(dirichlet_mixing)

    def __init__(
        self,
        reg: str = "l2",
        reg_scale: float = 1e-3,
        prune_epoch: int | None = None,
        prune_keep: int = 4,
        widen_to: int | None = None,
    ):
        self.reg, self.reg_scale = reg, reg_scale
        self.prune_epoch, self.prune_keep, self.widen_to = prune_epoch, prune_keep, widen_to
        self.masks: list[Tensor] | None = None
        self.widened = False

    def alpha_loss(self, model) -> Tensor | None:
        if self.reg != "kl":
            return None
        return self.reg_scale * dirichlet_kl(model.alphas())

    def transforms_weights(self) -> bool:
        return True

    def transform_weights(self, weights: list[Tensor]) -> list[Tensor]:
        if self.masks is None:
            return weights
        if any(m.device != w.device for w, m in zip(weights, self.masks)):  # once (a resume loads them on the CPU)
            self.masks = [m.to(w.device) for w, m in zip(weights, self.masks)]
        out = []
        for w, m in zip(weights, self.masks):
            w = w * m.to(dtype=w.dtype)
            out.append(w / w.sum(-1, keepdim=True))
        return out

    def prune(self, model) -> None:
        masks = []
        for a in model.alphas():
            keep = a.detach().topk(self.prune_keep, dim=-1).indices
            masks.append(torch.zeros_like(a, dtype=torch.bool).scatter_(-1, keep, True))
        self.masks = masks

    def on_epoch_start(self, model, epoch: int, ctx: EpochContext) -> None:
        if self.prune_epoch is not None and epoch >= self.prune_epoch and self.masks is None:
            self.prune(model)
            if self.widen_to is not None and not self.widened:
                widen_partial_channels(model, ctx.weight_optimizer, self.widen_to)
                self.widened = True

    def restore(self, model, weight_optimizer) -> None:
        if self.widened:  # rebuild the widened structure; the checkpoint then fills in every value
            widen_partial_channels(model, weight_optimizer, self.widen_to, torch.Generator().manual_seed(0))

    def select(self, model):
        if self.masks is None:
            return None
        # Argmax of softmax(α) over the surviving ops (pruned ops are out of the race).
        masked = [a.detach().masked_fill(~m.to(a.device), float("-inf")) for a, m in zip(model.alphas(), self.masks)]
        if hasattr(model, "derive_from_alphas"):  # NB201: argmax per edge
            return model.derive_from_alphas(masked)
        from ..supernet.network import derive_scaled_genotype

        return derive_scaled_genotype(*masked, model.num_nodes, model.primitives)

    def state_dict(self) -> dict[str, Any]:
        return {"masks": None if self.masks is None else [m.cpu() for m in self.masks], "widened": self.widened}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        masks = state.get("masks")
        self.masks = None if masks is None else [torch.as_tensor(m, dtype=torch.bool) for m in masks]
        self.widened = bool(state.get("widened", False))


# ----------------------------------------------------------------------------------------- GDAS §3.7


def gdas_tau(epoch: int, epochs: int, tau_max: float = 10.0, tau_min: float = 0.1) -> float:
    """τ_e = τ_max − (τ_max − τ_min)·e/(E − 1): 10 at the first epoch, 0.1 at the last."""
    return tau_max - (tau_max - tau_min) * epoch / max(epochs - 1, 1)


def gumbel_hard(alpha: Tensor, tau: float, tries: int = 100) -> Tensor:
    """Straight-through hard sample: one-hot(argmax((log softmax α + g)/τ)) − p.detach() + p."""
    logp = torch.log_softmax(alpha, dim=-1)
    for _ in range(tries):
        g = -torch.empty_like(alpha).exponential_().log()  # Gumbel(0, 1)
        probs = torch.softmax((logp + g) / tau, dim=-1)
        if bool(torch.isfinite(probs).all()):
            break
    else:
        raise NonFiniteError("Gumbel sample", -1, "GDAS mixing")
    hard = torch.zeros_like(probs).scatter_(-1, probs.argmax(-1, keepdim=True), 1.0)
    return hard - probs.detach() + probs


class GumbelHard(Component):
    # only the sampled op of each edge runs: which ops run depends on the sample (and the sample is retried
    # on the host when non-finite), so the step cannot be one CUDA graph
    graph_safe = False

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1):
        self.tau_max, self.tau_min = tau_max, tau_min
        self.tau = tau_max
        self.base_mixing = lambda alphas: [gumbel_hard(a, self.tau) for a in alphas]

    def attach(self, model) -> None:
        model.set_hooks(sampled_only=True)

    def on_epoch_start(self, model, epoch: int, ctx: EpochContext) -> None:
        self.tau = gdas_tau(min(epoch, ctx.epochs - 1), ctx.epochs, self.tau_max, self.tau_min)

    def log(self) -> dict[str, Any]:
        return {"tau": self.tau}


# ----------------------------------------------------------------------------------------- blank (§3.6)


class Blank(Component):
    """α fixed at 0 during supernet training (the "blank" of blank+PT)."""

    def attach(self, model) -> None:
        with torch.no_grad():
            for a in model.alphas():
                a.zero_()

    def updates_alpha(self, epoch: int) -> bool:
        return False
