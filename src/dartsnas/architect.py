"""The architecture (alpha) step of the bilevel search: first order (spec §3.4) and second order (§3.5),
with the recurrent variant's knobs (§7.5). No I/O.

Generic over the model. A model exposes

* ``named_weights()``: ``[(name, Parameter), ...]``, the weight set w in registration order (alphas excluded);
* ``arch_parameters()``: ``[Parameter, ...]``, the alphas.

Losses come as closures over a fixed batch: ``loss_fn(overrides) -> Tensor``. With ``overrides=None`` the
closure runs the real module; with a dict it runs the module with those tensors substituted by name
(``torch.func.functional_call(model, overrides, args, strict=False)``), everything not named (alphas,
other weights, buffers) being the module's own. ``make_loss_fn`` builds such a closure for the CNN case.

No forward of this module ever writes a weight: the virtual network w' and the perturbed networks w ± εv
exist only as override tensors, so "restoring w" (§3.5 step 3) is exact by construction; the real
parameters are never modified and serve as the saved copy.

BN running statistics (§3.3: every forward of a step is in training mode and updates them):

* the forward at w (train batch, and in first order the val batch) and the two perturbed forwards of the
  finite difference run "on the original network", so they update the real running buffers, as the
  reference does;
* the virtual forward at w' runs on "a second network that holds a copy of the BN running buffers" (§3.5
  step 2): ``Architect`` passes *shadow copies* of every buffer of the model in the overrides, so BN updates
  the copies in place and the real buffers are untouched by the virtual forward. The shadow tensors are
  allocated once and refreshed from the real buffers by one multi-tensor copy per step (the same values as
  a fresh clone, without allocating every buffer again).

The statistics only matter for monitoring (eval mode); training-mode forwards use batch statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .errors import NonFiniteError

LossFn = Callable[[dict[str, Tensor] | None], Tensor]

__all__ = [
    "Architect",
    "LossFn",
    "arch_parameter_names",
    "exact_hvp",
    "finite_difference_hvp",
    "global_norm",
    "hypergradient",
    "make_loss_fn",
    "momentum_buffers",
    "virtual_weights",
    "weight_gradients",
]


# --------------------------------------------------------------------------------------------- helpers


def make_loss_fn(model: nn.Module, x: Tensor, y: Tensor, criterion: Callable[[Tensor, Tensor], Tensor]) -> LossFn:
    """Closure ``loss_fn(overrides)`` = ``criterion(model(x), y)``, with ``overrides`` substituted by name.

    Buffers are substituted only when the overrides name them (the ``Architect`` does so, with shadow copies,
    for the virtual network; see the module docstring). Without them a training-mode forward updates
    the real BN running statistics, exactly as ``model(x)`` would.
    """

    def loss_fn(overrides: dict[str, Tensor] | None = None) -> Tensor:
        if overrides is None:
            out = model(x)
        else:
            out = functional_call(model, {**overrides}, (x,), strict=False)
        return criterion(out, y)

    return loss_fn


def arch_parameter_names(model: nn.Module) -> list[str]:
    """Names (in ``model.named_parameters()``) of the parameters that are not weights: the alphas."""
    weight_names = {name for name, _ in model.named_weights()}
    names = [name for name, _ in model.named_parameters() if name not in weight_names]
    ids = {id(p) for p in model.arch_parameters()}
    params = dict(model.named_parameters())
    if len(names) != len(ids) or any(id(params[n]) not in ids for n in names):
        raise ValueError(f"named_parameters() minus named_weights() is {names}, which does not match arch_parameters()")
    return names


# The weight-set arithmetic below uses the ``torch._foreach_*`` kernels (as torch's own optimizers do):
# one launch per group of tensors instead of one per tensor, which matters with ~2,000 weight tensors.


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm over all tensors together (a 0-d tensor; no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def _clip_coef(tensors: Sequence[Tensor], max_norm: float) -> Tensor:
    """κ = max_norm / (‖tensors‖ + 1e-6), the coefficient of ``clip_grad_norm_`` before it is capped at 1."""
    return max_norm / (global_norm(tensors) + 1e-6)


def _scale_by_capped(tensors: Sequence[Tensor], coef: Tensor) -> list[Tensor]:
    """Clip as ``clip_grad_norm_`` does: multiply by min(coef, 1)."""
    return list(torch._foreach_mul(list(tensors), torch.clamp(coef, max=1.0)))


def momentum_buffers(weight_optimizer: torch.optim.Optimizer | None, weights: Sequence[Tensor]) -> list[Tensor]:
    """SGD momentum buffers m in the order of ``weights``; zeros where absent (before the first step, §3.5)."""
    out = []
    for p in weights:
        buf = None
        if weight_optimizer is not None and p in weight_optimizer.state:
            buf = weight_optimizer.state[p].get("momentum_buffer")
        out.append(torch.zeros_like(p) if buf is None else buf.detach())
    return out


def virtual_weights(
    weights: Sequence[Tensor],
    grads: Sequence[Tensor],
    eta: float | Tensor,
    *,
    momentum_buffers: Sequence[Tensor] | None = None,
    momentum: float = 0.9,
    weight_decay: float = 3e-4,
    frozen: Sequence[bool] | None = None,
) -> list[Tensor]:
    """§3.5 step 1: w' = w − η·(μ·m + g + λ·w), the next SGD update without clipping.

    ``momentum_buffers=None`` drops the momentum term (the recurrent variant, §7.5). Entries with
    ``frozen[i]`` stay at w (the recurrent reference keeps the tied embedding at w). The results are new
    leaf tensors that require grad, so the validation gradient v = ∇_{w'} L_val can be taken wrt them.
    """
    weights, grads = list(weights), list(grads)
    if len(weights) != len(grads):
        raise ValueError("weights and grads differ in length")
    with torch.no_grad():
        d = torch._foreach_add(grads, weights, alpha=weight_decay)  # g + λw
        if momentum_buffers is not None:
            torch._foreach_add_(d, list(momentum_buffers), alpha=momentum)  # + μm
        torch._foreach_mul_(d, eta)  # η(...)
        out = list(torch._foreach_sub(weights, d))  # w − η(...)
        for i, w in enumerate(weights):
            if frozen is not None and frozen[i]:
                out[i] = w.detach().clone()
    return [t.requires_grad_(True) for t in out]


def finite_difference_hvp(
    train_loss_fn: LossFn,
    weight_names: Sequence[str],
    weights: Sequence[Tensor],
    alphas: Sequence[Tensor],
    v: Sequence[Tensor],
    eps_scale: float = 0.01,
) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """§3.5 step 3: h = (g⁺ − g⁻) / (2ε), ε = eps_scale / ‖v‖₂, g± = ∇_α L_train(w ± εv, α).

    The perturbation is applied to the ORIGINAL weights ``weights`` (= w, not w'; spec bug (b)) and
    the difference is divided by 2ε (not by 2 then multiplied by ε; spec bug (a)). The real weights are
    not modified (the perturbed ones are overrides), so w is restored bit-exactly.

    Returns ``(h, eps, loss_plus, loss_minus)``; the losses are detached, for finiteness checks.
    """
    eps = eps_scale / global_norm(v)
    g_pm, losses = [], []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            shifted = torch._foreach_add(list(weights), torch._foreach_mul(list(v), sign * eps))
            perturbed = dict(zip(weight_names, shifted, strict=True))
        loss = train_loss_fn(perturbed)
        g_pm.append(torch.autograd.grad(loss, list(alphas)))
        losses.append(loss.detach())
    h = [(gp - gm) / (2 * eps) for gp, gm in zip(*g_pm, strict=True)]
    return h, eps, losses[0], losses[1]


def exact_hvp(
    train_loss_fn: LossFn, weights: Sequence[Tensor], alphas: Sequence[Tensor], v: Sequence[Tensor]
) -> tuple[list[Tensor], Tensor]:
    """The exact mixed product h = ∇²_{α,w} L_train(w, α)·v = ∂/∂α (v · ∇_w L_train(w, α)), v held fixed.

    Double backward, at the real weights w. An option for checking the finite difference; never the
    default (§3.5 "Accuracy"). Returns ``(h, loss)`` with the loss detached.
    """
    loss = train_loss_fn(None)
    gw = torch.autograd.grad(loss, list(weights), create_graph=True, allow_unused=True)
    dot = sum((g * vi.detach()).sum() for g, vi in zip(gw, v, strict=True) if g is not None)
    h = torch.autograd.grad(dot, list(alphas), allow_unused=True)
    h = [torch.zeros_like(a) if hi is None else hi for hi, a in zip(h, alphas, strict=True)]
    return h, loss.detach()


def hypergradient(
    d_alpha: Sequence[Tensor], h: Sequence[Tensor], eta: float | Tensor, kappa: float | Tensor | None = None
) -> list[Tensor]:
    """§3.5 step 4: g_α = d_α − η·h; recurrent variant (§7.5): g_α = d_α − η·κ·h, κ applied even if > 1."""
    scale = eta if kappa is None else eta * kappa
    return [d - scale * hi for d, hi in zip(d_alpha, h, strict=True)]


def weight_gradients(loss: Tensor, weights: Sequence[nn.Parameter]) -> None:
    """The weight pass's gradients (§3.3 step 2) stored in ``.grad``, taken w.r.t. the weights only.

    Equal to ``loss.backward()`` followed by clearing the alphas' ``.grad`` (the weights' ``.grad`` must
    be None before, as after ``zero_grad(set_to_none=True)``), but autograd never computes the α
    gradients, which the weight step would throw away. A weight that does not reach the loss keeps
    ``.grad = None``, as with ``backward()``.
    """
    weights = list(weights)
    grads = torch.autograd.grad(loss, weights, allow_unused=True)
    for p, g in zip(weights, grads, strict=True):
        p.grad = g


def _grads(loss: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    gs = torch.autograd.grad(loss, list(tensors), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, tensors, strict=True)]


# ------------------------------------------------------------------------------------------- Architect


class Architect:
    """One alpha step per call of ``step`` (§3.3 step 1).

    ``order=1``: g_α = ∇_α L_val(w, α) (§3.4). ``order=2``: the unrolled hypergradient of §3.5.

    CNN defaults follow §3.5 (μ = 0.9, λ = 3e-4, momentum on, no clipping). The recurrent search (§7.5)
    uses ``use_momentum=False``, ``virtual_clip=0.25``, its own ``weight_decay`` and
    ``frozen_in_virtual_step=(<name of the tied embedding>,)``; κ = clip/(‖g‖+1e-6) then multiplies h
    even when it exceeds 1 (a reference quirk, reproduced on purpose, spec §11.7).

    v, the gradient of the validation loss wrt every weight of the virtual network, includes the frozen
    weights (their gradient taken where they sit, at w); the finite difference perturbs them too.

    Data-parallel search: ``reduce`` (a callable averaging a list of tensors over the ranks in place, e.g.
    ``distributed.average_``) is applied to every gradient that enters the step non-linearly, the virtual
    step's weight gradient g and the validation gradient v at w', and to the final g_α. d_α and the
    finite-difference h enter g_α linearly (at w', v and ε, which are then the same on every rank), so
    averaging g_α once equals averaging each of them. Each rank's losses must be its slice's share of the
    global-batch loss (``loops.search``), so that the average is the global batch's gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        arch_optimizer: torch.optim.Optimizer,
        order: int = 1,
        *,
        weight_momentum: float = 0.9,
        weight_decay: float = 3e-4,
        virtual_clip: float | None = None,
        use_momentum: bool = True,
        frozen_in_virtual_step: tuple[str, ...] = (),
        hvp: Literal["finite_difference", "exact"] = "finite_difference",
        eps_scale: float = 0.01,
        reduce: Callable[[list[Tensor]], list[Tensor]] | None = None,
    ):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        if hvp not in ("finite_difference", "exact"):
            raise ValueError(f"hvp must be 'finite_difference' or 'exact', got {hvp!r}")
        self.model = model
        self.arch_optimizer = arch_optimizer
        self.order = order
        self.weight_momentum = weight_momentum
        self.weight_decay = weight_decay
        self.virtual_clip = virtual_clip
        self.use_momentum = use_momentum
        self.hvp = hvp
        self.eps_scale = eps_scale
        self.reduce = reduce
        self.alpha_names = arch_parameter_names(model)
        self.weight_names = [name for name, _ in model.named_weights()]
        unknown = set(frozen_in_virtual_step) - set(self.weight_names)
        if unknown:
            raise ValueError(f"frozen_in_virtual_step names no weight: {sorted(unknown)}")
        self.frozen_in_virtual_step = tuple(frozen_in_virtual_step)
        arch_ids = {id(a) for a in model.arch_parameters()}
        opt_ids = {id(p) for group in arch_optimizer.param_groups for p in group["params"]}
        if not arch_ids <= opt_ids:
            raise ValueError("arch_optimizer does not hold every arch parameter")
        self._shadow: list[tuple[str, Tensor, Tensor]] | None = None  # (name, real buffer, shadow copy)

    # -- pieces of the second-order step, usable on their own --

    def _weights(self) -> list[nn.Parameter]:
        return [p for _, p in self.model.named_weights()]

    def virtual_step(
        self, train_loss_fn: LossFn, eta: float | Tensor, weight_optimizer: torch.optim.Optimizer | None
    ) -> dict:
        """§3.5 step 1 (§7.5 for the recurrent knobs): returns w' with g, κ and the train loss.

        Keys: ``w_prime`` (list, leaf tensors requiring grad), ``grad`` (g, unclipped), ``kappa``
        (0-d tensor, or None without ``virtual_clip``), ``train_loss`` (detached).
        """
        weights = self._weights()
        loss = train_loss_fn(None)
        g = _grads(loss, weights)  # weight gradients only; alphas untouched
        if self.reduce is not None:
            self.reduce(g)
        kappa = None
        g_used = g
        if self.virtual_clip is not None:
            kappa = _clip_coef(g, self.virtual_clip)
            g_used = _scale_by_capped(g, kappa)
        m = momentum_buffers(weight_optimizer, weights) if self.use_momentum else None
        frozen = [n in self.frozen_in_virtual_step for n in self.weight_names]
        w_prime = virtual_weights(
            weights,
            g_used,
            eta,
            momentum_buffers=m,
            momentum=self.weight_momentum,
            weight_decay=self.weight_decay,
            frozen=frozen,
        )
        return {"w_prime": w_prime, "grad": g, "kappa": kappa, "train_loss": loss.detach()}

    def _shadow_buffers(self) -> dict[str, Tensor]:
        """Copies of every model buffer, by name, holding the real buffers' current values (§3.5 step 2).

        Allocated on first use and again whenever the model's buffers are other tensors (moved, replaced,
        added); otherwise refreshed in place by one multi-tensor copy.
        """
        real = list(self.model.named_buffers())
        sh = self._shadow
        if (
            sh is None
            or len(sh) != len(real)
            or any(n != m or b is not r for (n, b), (m, r, _) in zip(real, sh, strict=True))
        ):
            sh = self._shadow = [(n, b, torch.empty_like(b)) for n, b in real]
        if sh:
            with torch.no_grad():
                torch._foreach_copy_([c for _, _, c in sh], [b.detach() for _, b, _ in sh])
        return {n: c for n, _, c in sh}

    def virtual_val_grads(self, val_loss_fn: LossFn, w_prime: Sequence[Tensor]) -> dict:
        """§3.5 step 2: d_α = ∇_α L_val(w', α) and v = ∇_{w'} L_val(w', α) on the virtual network.

        The virtual network is (w', the model's alphas, shadow copies of the model's buffers), so the real BN
        running statistics are not touched by this forward. Keys: ``d_alpha``, ``v``, ``val_loss``.
        """
        overrides = self._shadow_buffers()
        overrides.update(zip(self.weight_names, w_prime, strict=True))
        loss = val_loss_fn(overrides)
        alphas = self.model.arch_parameters()
        grads = _grads(loss, [*alphas, *w_prime])
        if self.reduce is not None:  # v only: d_α enters g_α linearly and is averaged there
            self.reduce(grads[len(alphas) :])
        return {"d_alpha": grads[: len(alphas)], "v": grads[len(alphas) :], "val_loss": loss.detach()}

    # -- the step --

    def step(
        self,
        train_loss_fn: LossFn | None,
        val_loss_fn: LossFn,
        eta: float | Tensor,
        weight_optimizer: torch.optim.Optimizer | None,
        step_index: int,
    ) -> dict[str, Tensor]:
        """Compute g_α, store it in the alphas' ``.grad`` and take one ``arch_optimizer`` step.

        Every loss and the final gradient are checked for non-finite values with a single host sync
        before the optimizer step; a failure raises ``NonFiniteError`` and leaves the alphas (values,
        gradients, optimizer state) untouched. The weights are never modified, and their ``.grad`` is not
        written (every gradient here is taken with ``torch.autograd.grad``).

        Returns detached tensors: ``val_loss`` always; for order 2 also ``train_loss``, ``eps`` and,
        with ``virtual_clip``, ``kappa``.
        """
        alphas = self.model.arch_parameters()
        self.arch_optimizer.zero_grad(set_to_none=True)
        checks: list[tuple[str, str, Tensor]] = []  # (what, phase, value) checked together at the end
        out: dict[str, Tensor] = {}

        if self.order == 1:
            # §3.4: one forward and one backward, gradients wrt alphas only.
            loss = val_loss_fn(None)
            g_alpha = _grads(loss, alphas)
            checks.append(("validation loss", "architecture", loss.detach()))
            out["val_loss"] = loss.detach()
        else:
            if train_loss_fn is None:
                raise ValueError("second order needs train_loss_fn")
            weights = self._weights()
            vs = self.virtual_step(train_loss_fn, eta, weight_optimizer)  # §3.5 step 1
            checks.append(("training loss", "virtual step", vs["train_loss"]))
            vg = self.virtual_val_grads(val_loss_fn, vs["w_prime"])  # §3.5 step 2
            checks.append(("validation loss at w'", "virtual step", vg["val_loss"]))
            v = vg["v"]
            if self.virtual_clip is not None:  # §7.5
                v = _scale_by_capped(v, _clip_coef(v, self.virtual_clip))
            if self.hvp == "finite_difference":  # §3.5 step 3
                h, eps, lp, lm = finite_difference_hvp(
                    train_loss_fn, self.weight_names, weights, alphas, v, self.eps_scale
                )
                checks += [
                    ("training loss at w+eps*v", "hessian-vector product", lp),
                    ("training loss at w-eps*v", "hessian-vector product", lm),
                    ("epsilon", "hessian-vector product", eps.detach()),
                ]
                out["eps"] = eps.detach()
            else:
                h, loss_h = exact_hvp(train_loss_fn, weights, alphas, v)
                checks.append(("training loss (exact HVP)", "hessian-vector product", loss_h))
            g_alpha = hypergradient(vg["d_alpha"], h, eta, vs["kappa"])  # §3.5 step 4
            out["val_loss"] = vg["val_loss"]
            out["train_loss"] = vs["train_loss"]
            if vs["kappa"] is not None:
                out["kappa"] = vs["kappa"].detach()

        g_alpha = [g.detach() for g in g_alpha]
        if self.reduce is not None:
            self.reduce(g_alpha)
        checks += [("architecture gradient", "architecture", g) for g in g_alpha]
        finite = torch.stack([torch.isfinite(c).all() for _, _, c in checks]).cpu()  # the one host sync
        for (what, phase, _), ok in zip(checks, finite.tolist()):
            if not ok:
                raise NonFiniteError(what, step_index, phase)

        for a, g in zip(alphas, g_alpha, strict=True):
            a.grad = g
        self.arch_optimizer.step()
        return out
