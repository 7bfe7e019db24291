"""The whole CNN search step captured as one CUDA graph (``SearchConfig.cuda_graph``; CUDA only, opt-in).

The search step is bound by kernel launches (thousands of small kernels, §1.2 × 14 edges × 8 cells, forward
and backward, twice per step). Replaying a captured graph removes the launch overhead; the arithmetic is the
one of ``loops.search._search_step`` (spec §3.3), in the same order:

1. α step: first order g_α = ∇_α L_val(w, α) (``torch.autograd.grad`` wrt the alphas only); second order
   the §3.5 hypergradient built from the ``Architect``'s own sync-free pieces (virtual step, validation
   gradients at w', finite-difference product, ε = 0.01/‖v‖ as a device tensor). Then the α optimizer's
   own ``torch.optim.Adam`` step with ``capturable=True``.
2. Weight step with the updated α: forward, ∇_w L_train (weights only), clipping to global norm 5
   (``clip_grad_norm_``'s formula, coefficient min(5/(‖g‖+1e-6), 1)), SGD with momentum and coupled weight
   decay written with ``torch._foreach_*`` kernels on the weight optimizer's own ``momentum_buffer`` tensors
   (so its ``state_dict``, checkpoints and resume are unchanged). The learning rate lives in a device tensor,
   so the per-epoch cosine schedule needs no recapture.

Static buffers hold the batches; each call copies the new batch into them and replays. The last batch of an
epoch (40 images instead of 64) has another shape: it gets its own graph, captured on first use.

**Non-finite values.** The eager step checks the losses and gradient norm *before* every optimizer update
(one host sync per step). A graph cannot branch on device values, so here every step ORs the check into a
device flag (and records the first bad step index), the updates are applied regardless, and the flag is read
by ``check()``, which the search loop calls at every logging interval and before every checkpoint. A
non-finite value is therefore detected after the fact, up to ``log_interval`` steps late, and the in-memory
weights/alphas may already be corrupted; ``check()`` raises ``NonFiniteError`` naming the first bad step,
before anything is saved, so the last checkpoint on disk is the last good state.

Capture follows the PyTorch recipe: warm-up iterations on a side stream through the same function, then
``torch.cuda.graph``. The warm-up iterations are real updates, so the state they touch (weights, alphas,
both optimizers' state, BN buffers, flags) is snapshotted before and restored after them; capture
executes nothing, and one replay then takes the step: each loop step is exactly one update, as in eager mode.
Autocast, if used, must be entered with
``cache_enabled=False`` around the calls.

**The training step** (``GraphedTrainStep``, ``TrainConfig.cuda_graph``): the same machinery around the
evaluation network's step of ``loops.train.Stepper`` (forward with drop path and the auxiliary head, backward,
clipping, SGD with momentum and coupled weight decay, one process, no accumulation). The drop-path probability
is a Python number read at capture time, so the training loop makes a new step object whenever it changes
(once per epoch with the default ramp).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor

from ..architect import (
    _clip_coef,
    _grads,
    _scale_by_capped,
    exact_hvp,
    finite_difference_hvp,
    hypergradient,
    make_loss_fn,
)
from ..errors import NonFiniteError

# bits of the device flag: which check failed first
_ARCH, _TRAIN_LOSS, _GRAD_NORM = 1, 2, 4
_WHAT = {
    _ARCH: ("validation loss or architecture gradient", "architecture"),
    _TRAIN_LOSS: ("training loss", "weights"),
    _GRAD_NORM: ("weight gradient norm", "weights"),
}


class GraphedStep:
    """What the graphed search and training steps share: the device flag of failed checks, the learning rate
    as a device tensor, capture (warm-up on a side stream, undone; then ``torch.cuda.graph``) and replay by
    input shape, and ``eager=True``, which runs the body uncaptured on any device (CPU tests of its arithmetic).

    A subclass supplies ``_body(b) -> sums`` and ``_state_tensors()`` (everything a warm-up step writes).
    """

    def __init__(self, device: torch.device, lr: float, warmup: int, autocast: Callable | None, eager: bool):
        self.eager = eager
        if device.type != "cuda" and not eager:
            raise ValueError("cuda_graph needs a CUDA device")
        self.device = device
        self.warmup = warmup
        self.autocast = autocast or nullcontext
        self.lr = torch.full((), float(lr), device=device)
        self._lr_value = None
        self.flag = torch.zeros((), dtype=torch.int32, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.counter = torch.zeros((), dtype=torch.int64, device=device)  # global step index of the step
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict[str, Tensor], dict[str, Tensor]]] = {}
        self.pool = None

    def _body(self, b: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def _state_tensors(self) -> list[Tensor]:
        raise NotImplementedError

    def _capturable(self, on: bool) -> None:
        """Switch optimizers that need it into their capturable mode while warming up and capturing."""

    def _mark(self, ok: Tensor, bit: int) -> None:
        bad = ~ok
        first = (self.flag == 0) & bad
        self.first_bad.copy_(torch.where(first, self.counter, self.first_bad))
        self.flag.bitwise_or_(bad.to(torch.int32) * bit)

    def _clip_and_sgd(self, grads: list[Tensor], params: list[Tensor], bufs: list[Tensor], clip: float) -> None:
        """Clip to global norm ``clip`` (``clip_grad_norm_``'s coefficient) and take SGD's step with momentum
        and coupled weight decay (``self.momentum``, ``self.weight_decay``) at the device learning rate."""
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        self._mark(torch.isfinite(norm), _GRAD_NORM)
        coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef)
        with torch.no_grad():
            if self.weight_decay:
                torch._foreach_add_(grads, params, alpha=self.weight_decay)  # d = g + λw
            torch._foreach_mul_(bufs, self.momentum)  # m = μm + d
            torch._foreach_add_(bufs, grads)
            torch._foreach_add_(params, torch._foreach_mul(bufs, -self.lr))  # w -= η m

    def _run(self, inputs: dict[str, Tensor], lr: float, step_index: int) -> dict[str, Tensor]:
        if lr != self._lr_value:
            self.lr.fill_(lr)
            self._lr_value = lr
        self.counter.fill_(step_index)
        if self.eager:
            with self.autocast():
                return self._body(inputs)
        key = tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(inputs.items()))
        if key not in self.graphs:
            # Warm-up steps are real steps on this same batch; to keep exactly one update per loop step we
            # snapshot the state, warm up, restore, capture (which executes nothing), then replay once.
            snap = [(t, t.detach().clone()) for t in self._state_tensors() + [self.flag, self.first_bad, self.counter]]
            self._capture(key, inputs)
            with torch.no_grad():
                for t, v in snap:
                    t.copy_(v)
        g, b, outs = self.graphs[key]
        for k, v in inputs.items():
            b[k].copy_(v)
        g.replay()
        return outs

    def _capture(self, key, inputs: dict[str, Tensor]) -> None:
        b = {k: v.clone() for k, v in inputs.items()}
        self._capturable(True)  # warm-up runs the same (capturable) optimizer code path
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), self.autocast():
            for _ in range(self.warmup):
                self._body(b)
        torch.cuda.current_stream(self.device).wait_stream(side)
        g = torch.cuda.CUDAGraph()
        self._capturable(True)
        try:
            with torch.cuda.graph(g, pool=self.pool), self.autocast():
                outs = self._body(b)
        finally:
            self._capturable(False)
        if self.pool is None:
            self.pool = g.pool()
        self.graphs[key] = (g, b, outs)

    def check(self) -> None:
        """Read the device flag (one host sync); raise ``NonFiniteError`` if any step since the start failed."""
        flag = int(self.flag.item())
        if flag:
            bit = next(b for b in (_ARCH, _TRAIN_LOSS, _GRAD_NORM) if flag & b)
            what, phase = _WHAT[bit]
            first = int(self.first_bad.item())
            raise NonFiniteError(what, first, phase, steps_after=int(self.counter.item()) - first)


def _momentum_buffers(opt: torch.optim.Optimizer, params: list[Tensor]) -> list[Tensor]:
    """SGD's momentum buffers, created as zeros where absent (zeros = no momentum yet: the first step then
    sets m = d, exactly as SGD's first step) so that the graph owns fixed tensors; they stay in the
    optimizer's state, so checkpoints and an eager resume see them."""
    for p in params:
        s = opt.state[p]
        if s.get("momentum_buffer") is None:
            s["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return [opt.state[p]["momentum_buffer"] for p in params]


def _sgd_settings(opt: torch.optim.Optimizer) -> tuple[float, float]:
    group = opt.param_groups[0]
    if len(opt.param_groups) != 1 or group["nesterov"] or group["dampening"] != 0:
        raise ValueError("cuda_graph expects one SGD group without Nesterov or dampening")
    return group["momentum"], group["weight_decay"]


class GraphedSearchStep(GraphedStep):
    """Drop-in for ``_search_step(st, criterion, x_t, y_t, x_v, y_v, lr)`` on CUDA; see the module docstring.

    ``warmup``: eager iterations on a side stream before each capture (undone afterwards). ``autocast``: a callable
    returning a context manager entered around warm-up and capture (e.g. bf16 autocast with
    ``cache_enabled=False``), or None.
    """

    def __init__(self, st, criterion, warmup: int = 3, autocast: Callable | None = None, eager: bool = False):
        super().__init__(next(st.model.parameters()).device, float(st.cfg.lr), warmup, autocast, eager)
        device = self.device
        self.st, self.criterion = st, criterion
        self.model = st.model
        self.weights = list(self.model.weights())
        self.alphas = list(self.model.arch_parameters())
        # The α optimizer: torch's Adam, made capturable (its step counter moves to the device).
        # Its state is created here if absent, exactly as Adam's lazy initialisation would (step 0, zero
        # moments), so that the tensors are fixed before capture; ``capturable`` is switched on only while
        # capturing (the flag is read in Python at capture time), so a checkpoint resumes in eager mode too.
        for a in self.alphas:
            s = st.a_opt.state[a]
            step_device = device if device.type == "cuda" else torch.device("cpu")
            if not s:
                s["step"] = torch.zeros((), dtype=torch.float32, device=step_device)
                s["exp_avg"] = torch.zeros_like(a, memory_format=torch.preserve_format)
                s["exp_avg_sq"] = torch.zeros_like(a, memory_format=torch.preserve_format)
            elif not (torch.is_tensor(s["step"]) and s["step"].device == step_device):
                s["step"] = torch.as_tensor(float(s["step"]), dtype=torch.float32, device=step_device)
        if any(g.get("amsgrad") for g in st.a_opt.param_groups):
            raise ValueError("cuda_graph does not support amsgrad")
        self.bufs = _momentum_buffers(st.w_opt, self.weights)
        self.momentum, self.weight_decay = _sgd_settings(st.w_opt)

    # -- the step body (eager during warm-up, recorded during capture) --

    def _body(self, b: dict[str, Tensor]) -> dict[str, Tensor]:
        st, model, crit = self.st, self.model, self.criterion
        arch, method = st.architect, st.method
        val_loss = None
        # 1. α step (§3.3 step 1), with the method's hooks as in _search_step: the warm-up (no α step),
        # the α-loss terms wrapped around the validation loss; the mixing weights are the model's own hook
        if method.updates_alpha(st.epoch):
            train_fn = make_loss_fn(model, b["x_t"], b["y_t"], crit)
            val_fn = method.alpha_loss_fn(model, make_loss_fn(model, b["x_v"], b["y_v"], crit))
            if arch.order == 1:
                val_loss = val_fn(None)
                g_alpha = _grads(val_loss, self.alphas)
                checks = [val_loss.detach()]
            else:
                vs = arch.virtual_step(train_fn, self.lr, st.w_opt)
                vg = arch.virtual_val_grads(val_fn, vs["w_prime"])
                val_loss = vg["val_loss"]
                checks = [vs["train_loss"], val_loss]
                v = vg["v"]
                if arch.virtual_clip is not None:  # §7.5, as Architect.step
                    v = _scale_by_capped(v, _clip_coef(v, arch.virtual_clip))
                if arch.hvp == "finite_difference":
                    h, eps, lp, lm = finite_difference_hvp(
                        train_fn, arch.weight_names, self.weights, self.alphas, v, arch.eps_scale
                    )
                    checks += [lp, lm, eps.detach()]
                else:
                    h, lh = exact_hvp(train_fn, self.weights, self.alphas, v)
                    checks.append(lh)
                g_alpha = hypergradient(vg["d_alpha"], h, self.lr, vs["kappa"])
            g_alpha = [g.detach() for g in g_alpha]
            ok = torch.stack([torch.isfinite(c).all() for c in checks + g_alpha]).all()
            self._mark(ok, _ARCH)
            for a, g in zip(self.alphas, g_alpha):
                if a.grad is None:
                    a.grad = g.clone()
                else:
                    a.grad.copy_(g)
            st.a_opt.step()
        # 2. weight step with the updated α (§3.3 step 2); the method's α transform around it (SDARTS-RS)
        with method.weight_step(model, b["x_t"], b["y_t"], crit):
            logits = model(b["x_t"])
            loss = crit(logits, b["y_t"])
            grads = _grads(loss, self.weights)
        self._mark(torch.isfinite(loss.detach()), _TRAIN_LOSS)
        self._clip_and_sgd(grads, self.weights, self.bufs, st.cfg.grad_clip)
        with torch.no_grad():
            n = b["y_t"].numel()
            return {
                "loss": loss.detach().double() * n,
                "correct": (logits.argmax(1) == b["y_t"]).sum().double(),
                "count": torch.full((), float(n), device=loss.device, dtype=torch.float64),
                "arch_step_val_loss": (
                    val_loss.detach().double()
                    if val_loss is not None
                    else torch.zeros((), device=loss.device, dtype=torch.float64)
                ),
            }

    # -- public --

    def _capturable(self, on: bool) -> None:
        for group in self.st.a_opt.param_groups:
            group["capturable"] = on

    def step(self, x_t, y_t, x_v, y_v, lr: float) -> dict[str, Tensor]:
        """One search step; returns the step's sums as ``_search_step`` does. In graph mode they are the
        graph's static output tensors, overwritten by the next replay: add them up before the next step."""
        return self._run({"x_t": x_t, "y_t": y_t, "x_v": x_v, "y_v": y_v}, lr, self.st.global_step)

    def _state_tensors(self) -> list[Tensor]:
        st = self.st
        tensors = [*self.weights, *self.alphas, *self.bufs, *self.model.buffers()]
        for a in self.alphas:
            tensors += [v for v in st.a_opt.state.get(a, {}).values() if torch.is_tensor(v)]
        return tensors


class GraphedTrainStep(GraphedStep):
    """Drop-in for ``Stepper.step(x, y, global_step)`` of the training loop on CUDA (one process, no
    accumulation, no ``torch.compile``); see the module docstring. ``drop_prob`` is fixed for this object."""

    def __init__(self, stepper, warmup: int = 3, eager: bool = False):
        model, cfg = stepper.model, stepper.cfg
        super().__init__(next(model.parameters()).device, float(cfg.lr), warmup, None, eager)
        if stepper.rt.distributed or cfg.accum_steps != 1 or stepper.rt.compile:
            raise ValueError("cuda_graph in training needs one process, accum_steps=1 and compile off")
        if stepper.rt.bf16:
            self.autocast = lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
        self.stepper, self.model, self.cfg = stepper, model, cfg
        self.criterion = stepper.criterion
        self.params = list(model.parameters())
        self.bufs = _momentum_buffers(stepper.opt, self.params)
        self.momentum, self.weight_decay = _sgd_settings(stepper.opt)
        self.drop_prob = model.drop_path_prob

    def _body(self, b: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg, crit, y = self.cfg, self.criterion, b["y"]
        logits, aux = self.model(b["x"])
        main = crit(logits.float(), y)
        loss = main
        aux_loss = torch.zeros((), device=y.device)
        if aux is not None and cfg.auxiliary_weight > 0:
            aux_loss = crit(aux.float(), y)
            loss = loss + cfg.auxiliary_weight * aux_loss
        grads = _grads(loss, self.params)
        self._mark(torch.isfinite(loss.detach()), _TRAIN_LOSS)
        self._clip_and_sgd(grads, self.params, self.bufs, cfg.grad_clip)
        with torch.no_grad():
            m = y.shape[0]
            return {
                "loss": main.detach().double() * m,
                "aux_loss": aux_loss.detach().double() * m,
                "correct": (logits.argmax(1) == y).sum().double(),
                "count": torch.full((), float(m), device=y.device, dtype=torch.float64),
            }

    def _state_tensors(self) -> list[Tensor]:
        return [*self.params, *self.bufs, *self.model.buffers()]

    def step(self, x: Tensor, y: Tensor, lr: float, global_step: int) -> dict[str, Tensor]:
        """One training step; returns the sums of ``Stepper.step`` (static outputs in graph mode: add them up
        before the next step)."""
        if self.model.drop_path_prob != self.drop_prob:
            raise RuntimeError("the drop-path probability changed: make a new GraphedTrainStep")
        if self.stepper.rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self._run({"x": x, "y": y}, lr, global_step)
