"""Collapse diagnostics for any search space (ROBUST-SPEC §2): the dominant eigenvalue of the Hessian of the
validation loss with respect to α, the per-edge entropy of softmax(α), skip and parameter-free counts of
the current cell, and the DARTS-ES early-stop rule. Monitoring only: nothing here changes a run.

α is every tensor of ``model.arch_parameters()`` taken as one flat vector (224 numbers in the DARTS space at
the paper size: two 14×8 matrices; 30 on NB201). The Hessian is that of L_val(w, α) + (wd/2)·‖α‖², i.e.
H + wd·I, because the α optimiser's weight decay is part of the α gradient (§2.1).

Example::

    >>> h = AlphaHessian(model, x_val, y_val, weight_decay=1e-3)
    >>> h.dominant_eigenvalue(seed=0).value           # power iteration with exact products
    >>> float(torch.linalg.eigvalsh(h.matrix()).max())  # the full matrix, for small α
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

MatVec = Callable[[Tensor], Tensor]


# ---------------------------------------------------------------------------------------------- Hessian


class AlphaHessian:
    """Exact Hessian-vector products of the validation loss w.r.t. α on one fixed batch.

    The forward runs once, in training mode (batch statistics, as the reference, §2.1), on clones of the
    model's buffers so the real BN running statistics are not touched; ∇_α L is kept with its graph and
    every product Hv = ∇_α⟨∇_α L, v⟩ is one double-backward pass through it. No ``.grad`` is written.
    """

    def __init__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        weight_decay: float = 0.0,
        criterion: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
    ):
        self.alphas = list(model.arch_parameters())
        self.weight_decay = float(weight_decay)
        was = model.training
        model.train()
        try:
            buffers = {name: b.clone() for name, b in model.named_buffers()}
            out = functional_call(model, buffers, (x,), strict=False)
            out = out[-1] if isinstance(out, tuple) else out
            self.loss = criterion(out, y)
            grads = torch.autograd.grad(self.loss, self.alphas, create_graph=True)
        finally:
            model.train(was)
        self._g = torch.cat([g.reshape(-1) for g in grads])
        self.alpha = torch.cat([a.detach().reshape(-1) for a in self.alphas])
        self.size = self._g.numel()

    def gradient(self) -> Tensor:
        """∇_α (L + wd/2·‖α‖²) as a flat vector."""
        return self._g.detach() + self.weight_decay * self.alpha

    def hvp(self, v: Tensor) -> Tensor:
        """(H + wd·I)·v, exact (double backward)."""
        v = v.to(self._g)
        parts = torch.autograd.grad(self._g, self.alphas, grad_outputs=v, retain_graph=True)
        return torch.cat([p.reshape(-1) for p in parts]).detach() + self.weight_decay * v

    def matrix(self) -> Tensor:
        """The full (H + wd·I), built row by row from products with the unit vectors (§2.1 reference)."""
        eye = torch.eye(self.size, dtype=self._g.dtype, device=self._g.device)
        return torch.stack([self.hvp(eye[i]) for i in range(self.size)])

    def dominant_eigenvalue(self, seed: int = 0, tol: float = 1e-4, max_iter: int = 100) -> Eigen:
        return dominant_eigenvalue(self.hvp, self.size, seed, tol, max_iter, self._g.dtype, self._g.device)


@dataclass(frozen=True)
class Eigen:
    value: float
    iterations: int
    shifted: bool  # the first run found a negative eigenvalue, so the result comes from H + |λ|·I


def power_iteration(
    matvec: MatVec,
    n: int,
    seed: int = 0,
    tol: float = 1e-4,
    max_iter: int = 100,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[float, int]:
    """Rayleigh quotient vᵀAv of the largest-magnitude eigenvector of a symmetric A (§2.1): start from a
    seeded random unit vector, iterate v ← Av/‖Av‖ until the quotient changes by less than ``tol``
    (relative) or ``max_iter`` products. Returns (quotient, number of products)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    v = v / torch.linalg.vector_norm(v)
    prev = None
    rq = 0.0
    for it in range(1, max_iter + 1):
        av = matvec(v)
        rq = float(torch.dot(v, av))
        if prev is not None and abs(rq - prev) < tol * abs(rq):
            return rq, it
        prev = rq
        norm = torch.linalg.vector_norm(av)
        if float(norm) == 0.0:
            return rq, it
        v = av / norm
    return rq, max_iter


def dominant_eigenvalue(
    matvec: MatVec,
    n: int,
    seed: int = 0,
    tol: float = 1e-4,
    max_iter: int = 100,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Eigen:
    """λ_max of a symmetric matrix given by products. Power iteration finds the largest-magnitude
    eigenvalue; if it is negative, rerun on A + |λ|·I (whose spectrum is ≥ 0) and subtract |λ| (§2.1)."""
    lam, iters = power_iteration(matvec, n, seed, tol, max_iter, dtype, device)
    if lam >= 0:
        return Eigen(lam, iters, False)
    shift = abs(lam)
    lam2, iters2 = power_iteration(lambda v: matvec(v) + shift * v, n, seed, tol, max_iter, dtype, device)
    return Eigen(lam2 - shift, iters + iters2, True)


def hessian_eigenvalue(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    weight_decay: float,
    seed: int = 0,
    method: str = "auto",
    full_limit: int = 64,
) -> Eigen:
    """λ_max of H + wd·I on the batch (x, y). ``auto``: the full matrix (one product per α entry, then
    ``eigvalsh``) when α has at most ``full_limit`` entries (NB201: 30), power iteration otherwise."""
    h = AlphaHessian(model, x, y, weight_decay)
    if method == "full" or (method == "auto" and h.size <= full_limit):
        m = h.matrix()
        return Eigen(float(torch.linalg.eigvalsh((m + m.T) / 2).max()), h.size, False)
    return h.dominant_eigenvalue(seed)


# ---------------------------------------------------------------------------------------------- cell indicators


def edge_entropies(alphas: Sequence[Tensor]) -> list[list[float]]:
    """Per α matrix, the entropy (nats) of softmax(α) of every row (edge); ln(#ops) is uniform."""
    out = []
    for a in alphas:
        p = torch.softmax(a.detach().double(), dim=-1)
        out.append((-(p * torch.log(p.clamp_min(1e-300))).sum(-1)).cpu().tolist())
    return out


def cell_counts(genotype: Any) -> dict[str, int]:
    """§2.2. DARTS: ``skip_connect`` pairs and parameter-free pairs of the normal cell. NB201: skip, none and
    parameter-free (skip, none, pooling) edges of the cell."""
    if getattr(genotype, "kind", None) == "nb201":
        ops = [op for op, _ in genotype.edges]
        free = ("none", "skip_connect", "avg_pool_3x3")
        return {
            "skip_count": ops.count("skip_connect"),
            "none_count": ops.count("none"),
            "param_free_count": sum(op in free for op in ops),
        }
    ops = [op for op, _ in genotype.normal]
    free = ("none", "skip_connect", "max_pool_3x3", "avg_pool_3x3")
    return {"skip_count": ops.count("skip_connect"), "param_free_count": sum(op in free for op in ops)}


# ---------------------------------------------------------------------------------------------- DARTS-ES


def local_average(values: Sequence[float], end: int, window: int = 5) -> float:
    """Mean of ``values[end - window + 1 .. end]``."""
    return sum(values[end - window + 1 : end + 1]) / window


def darts_es(
    lambdas: Sequence[float], window: int = 5, lag: int = 4, factor: float = 1.3, start_epoch: int = 10
) -> int | None:
    """The DARTS-ES rule of §2.1 on the eigenvalues of epochs 0..e (one per epoch; e = the last one).

    Fires when the local average (window of 5) at e exceeds ``factor`` × the local average ``lag`` = 4
    evaluations earlier, that earlier one being at an epoch ≥ ``start_epoch``; returns that earlier epoch,
    whose genotype the search keeps. None when it does not fire.
    """
    e = len(lambdas) - 1
    before = e - lag
    if before < max(start_epoch, window - 1):
        return None
    if local_average(lambdas, e, window) > factor * local_average(lambdas, before, window):
        return before
    return None


# ---------------------------------------------------------------------------------------------- one epoch


def fixed_batch(
    images: Tensor, labels: Tensor, index: Tensor, size: int, seed: int, mean: Sequence[float], std: Sequence[float]
) -> tuple[Tensor, Tensor]:
    """The diagnostics' batch: ``size`` images of ``index`` chosen by a seeded permutation, normalised and
    not augmented, so every epoch sees the very same tensor (§2.1: fix batch, BN mode and dtype)."""
    gen = torch.Generator().manual_seed(seed)
    pick = index[torch.randperm(len(index), generator=gen)[:size].to(index.device)]
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images[pick].float() / 255.0 - m) / s, labels[pick]


def epoch_diagnostics(
    model: nn.Module, genotype: Any, batch: tuple[Tensor, Tensor] | None, weight_decay: float, seed: int = 0
) -> dict[str, Any]:
    """Record fields for ``metrics.jsonl``: λ_max (when a batch is given), entropies, counts."""
    # The α matrices only: PC-DARTS's edge β (trained with α, one number per edge) has no per-edge entropy.
    ent = edge_entropies(model.alphas() if callable(getattr(model, "alphas", None)) else model.arch_parameters())
    flat = [v for rows in ent for v in rows]
    rec: dict[str, Any] = {"alpha_entropy": ent, "mean_alpha_entropy": sum(flat) / len(flat), **cell_counts(genotype)}
    if batch is not None:
        t0 = time.perf_counter()
        eig = hessian_eigenvalue(model, batch[0], batch[1], weight_decay, seed)
        rec.update(
            {
                "hessian_eig": eig.value if math.isfinite(eig.value) else None,
                "hessian_products": eig.iterations,
                "hessian_seconds": time.perf_counter() - t0,
            }
        )
    return rec
