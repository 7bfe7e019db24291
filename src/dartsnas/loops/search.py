"""The CNN architecture search loop (spec §3): bilevel steps, per-epoch metrics, checkpoints, resume.

Usage::

    from dartsnas.loops.search import SearchConfig, run_search
    result = run_search(SearchConfig.build("quick"), run_dir="runs/quick")
    print(result.genotype)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..architect import Architect, make_loss_fn
from ..checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint, seed_everything
from ..config import ConfigBase, require
from ..data.images import DATASETS, BatchStream, ImageData, augment, load_images, to_device
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..methods import EpochContext, build_method
from ..methods.pt import supernet_accuracy
from ..space.genotype import Genotype, genotype_to_dict, save_genotype
from ..supernet.network import SearchNetwork
from .common import (bilevel_state, load_bilevel_state, end_of_step, check_resume_config, CHECKPOINT, set_determinism, poison_batch, Metrics, Progress, StopRequest, default_run_dir, prepare_run_dir,
                     resolve_device, write_json)

KIND = "cnn-search"
FUSED_DEFAULT = False


@dataclass(kw_only=True)
class SearchConfig(ConfigBase):
    """CNN search on CIFAR-10 with the reference's defaults (spec §1.4, §3)."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    train_portion: float = 0.5
    subset: int | None = None            # use only the first N images of each half (quick real-data runs)
    init_channels: int = 16
    layers: int = 8
    num_nodes: int = 4
    stem_multiplier: int = 3
    epochs: int = 50
    batch_size: int = 64
    lr: float = 0.025
    lr_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    order: Literal[1, 2] = 1
    hvp: Literal["finite_difference", "exact"] = "finite_difference"
    seed: int = 2
    device: str = "auto"
    log_interval: int = 50
    progress: bool = True
    eval_batch_size: int = 256
    # Speed switches; neither changes the mathematics, parameters or checkpoints (so both are harmless on
    # resume). fused_ops: the fused search-cell forward (supernet/fused.py), equal to the plain one to float
    # rounding. cuda_graph: replay the whole step as one CUDA graph (loops/graphed.py; CUDA only, ignored
    # elsewhere); non-finite values are then detected after the fact, at the next logging interval.
    fused_ops: bool = FUSED_DEFAULT
    cuda_graph: bool = False
    # GPU runs repeat bit for bit only with deterministic kernels (slower); CPU runs always do.
    deterministic: bool = False
    # Guard against the collapse to parameter-free cells (the normal cell filling with skip connections):
    # stop the search at the first epoch whose derived normal cell has more than this many skip_connect
    # edges and keep the last cell within the limit (an early-stopping rule in the spirit of DARTS+; off by
    # default, as in the paper).
    max_skip_normal: int | None = None
    # The search method (ROBUST-SPEC §5; dartsnas.methods): a registry name ("a+b" composes), its operation
    # space ("darts" or "darts-7"; None: the method's default) and hyper-parameter overrides "key=value,...".
    method: str = "darts"
    search_space: str | None = None
    method_args: str = ""

    HARMLESS = ConfigBase.HARMLESS | {"fused_ops", "cuda_graph"}

    PRESETS = {
        "paper": {},
        "paper-second-order": {"order": 2},
        # A few minutes on a laptop CPU: the built-in dataset and a small supernet.
        "quick": {"dataset": "builtin", "init_channels": 8, "layers": 3, "epochs": 8, "batch_size": 32,
                  "arch_lr": 3e-3, "log_interval": 4, "subset": 256},
        "tiny": {"dataset": "builtin", "init_channels": 4, "layers": 3, "num_nodes": 2, "epochs": 2,
                 "batch_size": 16, "subset": 64, "log_interval": 2},
    }

    def check(self) -> list[str]:
        p: list[str] = []
        require(p, self.dataset in DATASETS, f"dataset: unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}")
        require(p, 0.0 < self.train_portion < 1.0, f"train_portion: must be in (0, 1), got {self.train_portion}")
        require(p, self.subset is None or self.subset > 0, f"subset: must be positive, got {self.subset}")
        for name in ("init_channels", "layers", "num_nodes", "stem_multiplier", "epochs", "batch_size",
                     "log_interval", "eval_batch_size"):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        require(p, self.layers >= 3, f"layers: must be at least 3 (two reduction cells), got {self.layers}")
        for name in ("lr", "arch_lr"):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("lr_min", "weight_decay", "arch_weight_decay", "grad_clip"):
            require(p, getattr(self, name) >= 0, f"{name}: must be non-negative, got {getattr(self, name)}")
        require(p, self.max_skip_normal is None or 0 <= self.max_skip_normal <= 2 * self.num_nodes,
                f"max_skip_normal: must be in 0..{2 * self.num_nodes}, got {self.max_skip_normal}")
        require(p, self.lr_min <= self.lr, f"lr_min: {self.lr_min} exceeds lr {self.lr}")
        try:
            p += build_method(self.method, self.search_space, self.method_args, self.epochs).check_config(
                self.init_channels, self.layers, self.num_nodes, self.epochs)
        except ConfigError as e:
            p += e.problems
        for name in ("momentum", "arch_beta1", "arch_beta2"):
            require(p, 0 <= getattr(self, name) < 1, f"{name}: must be in [0, 1), got {getattr(self, name)}")
        return p


@dataclass
class SearchResult:
    run_dir: Path
    genotype: Genotype
    alphas_normal: torch.Tensor
    alphas_reduce: torch.Tensor
    history: list[dict[str, Any]]

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def cosine_lr(epoch: int, epochs: int, lr: float, lr_min: float) -> float:
    """Spec §3.2: set once per epoch; epoch 0 runs at ``lr`` and ``lr_min`` is never reached."""
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2


class _State:
    """Everything that changes during a search, so that checkpoint and resume see one object."""

    def __init__(self, cfg: SearchConfig, data: ImageData, device: torch.device):
        self.cfg = cfg
        n_train = data.train_x.shape[0]
        split = int(math.floor(n_train * cfg.train_portion))
        w_idx = torch.arange(0, split)
        a_idx = torch.arange(split, n_train)
        if cfg.subset is not None:
            w_idx, a_idx = w_idx[:cfg.subset], a_idx[:cfg.subset]
        self.w_idx, self.a_idx = w_idx.to(device), a_idx.to(device)
        self.method = build_method(cfg.method, cfg.search_space, cfg.method_args, cfg.epochs)
        self.model = SearchNetwork(cfg.init_channels, data.num_classes, cfg.layers, cfg.num_nodes,
                                   stem_multiplier=cfg.stem_multiplier, fused=cfg.fused_ops,
                                   **self.method.network_options()).to(device)
        self.method.attach(self.model)
        self.w_opt = torch.optim.SGD(self.model.weights(), lr=cfg.lr, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), lr=cfg.arch_lr,
                                      betas=(cfg.arch_beta1, cfg.arch_beta2), weight_decay=cfg.arch_weight_decay)
        self.architect = Architect(self.model, self.a_opt, order=cfg.order, weight_momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, hvp=cfg.hvp)
        self.train_stream = BatchStream(len(w_idx), cfg.batch_size, cfg.seed * 1000 + 1, epoch_mode=True)
        self.val_stream = BatchStream(len(a_idx), cfg.batch_size, cfg.seed * 1000 + 2, epoch_mode=False)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 3)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss sum, correct, count, val loss sum
        self.wall = 0.0
        self.stopped_early = False

    def state_dict(self) -> dict[str, Any]:
        return {
            **bilevel_state(self, KIND),
            "train_stream": self.train_stream.state_dict(), "val_stream": self.val_stream.state_dict(),
            "stopped_early": self.stopped_early, "rng": capture_rng({"augment": self.aug_gen}),
            "method": self.method.state_dict(),
        }

    def load_state_dict(self, ck: dict[str, Any], path: Path) -> None:
        try:
            if "method" in ck:  # first: the method may rebuild structure (DrNAS widening) before the weights load
                self.method.load_state_dict(ck["method"])
                self.method.restore(self.model, self.w_opt)
            load_bilevel_state(self, ck)
            self.train_stream.load_state_dict(ck["train_stream"])
            self.val_stream.load_state_dict(ck["val_stream"])
            self.stopped_early = bool(ck.get("stopped_early", False))
            restore_rng(ck["rng"], {"augment": self.aug_gen})
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"does not match this search ({type(e).__name__}: {str(e)[:200]})", str(path)) from None




def load_for_resume(run_dir: Path) -> dict[str, Any]:
    return load_checkpoint(run_dir / CHECKPOINT, expect_kind=KIND)


def run_search(cfg: SearchConfig, run_dir: str | Path | None = None, resume: bool = False,
               log=print, data: ImageData | None = None) -> SearchResult:
    """Run (or continue) a search; writes config, metrics, checkpoints, genotype and pictures to ``run_dir``."""
    from ..plot import save_cell_pictures, save_search_pictures

    run_dir = prepare_run_dir(run_dir or default_run_dir("search"), resume, log)
    ck = None
    if resume:
        ck = load_for_resume(run_dir)
        check_resume_config(cfg, ck, run_dir / CHECKPOINT, log)
    device = resolve_device(cfg.device)
    if data is None:
        data = load_images(cfg.dataset, cfg.data_dir, device, cfg.download)
    else:
        data = ImageData(data.name, data.train_x.to(device), data.train_y.to(device), data.test_x.to(device),
                         data.test_y.to(device), data.mean, data.std, data.num_classes)
    set_determinism(device, cfg.deterministic)
    seed_everything(cfg.seed)
    st = _State(cfg, data, device)
    if ck is not None:
        st.load_state_dict(ck, run_dir / CHECKPOINT)
        log(f"resumed {run_dir} at epoch {st.epoch}, step {st.step_in_epoch}")
    write_json(run_dir / "config.json", {"kind": KIND, **cfg.to_dict()})
    metrics = Metrics(run_dir / "metrics.jsonl")
    metrics.truncate_after(st.epoch)
    criterion = torch.nn.CrossEntropyLoss()
    steps = st.train_stream.steps_per_epoch()
    log(f"search: {cfg.dataset}, {len(st.w_idx)}+{len(st.a_idx)} images, order {cfg.order}, "
        f"{sum(p.numel() for p in st.model.weights()):,} weights, device {device}, run dir {run_dir}")

    def batch(idx_pool: torch.Tensor, stream: BatchStream) -> tuple[torch.Tensor, torch.Tensor]:
        idx = idx_pool[to_device(stream.next(), device)]
        x = augment(data.train_x[idx], st.aug_gen, data.mean, data.std)
        return x, data.train_y[idx]

    stepper = None
    if cfg.cuda_graph:
        if device.type == "cuda" and st.method.plain:
            from .graphed import GraphedSearchStep
            stepper = GraphedSearchStep(st, criterion)
        else:
            log(f"note: cuda_graph needs a CUDA device and plain DARTS; device {device}, method {cfg.method} "
                "runs the eager step")

    def save() -> None:
        if stepper is not None:
            stepper.check()  # graph mode: never save a state that took a non-finite step
        save_checkpoint(run_dir / CHECKPOINT, st.state_dict())

    with StopRequest() as stop:
        while st.epoch < cfg.epochs and not st.stopped_early:
            t0 = time.perf_counter()
            # Method epoch hook (ROBUST-SPEC §5): schedules, warm-up, pruning, DARTS-PT projections; it may
            # shorten the cosine's horizon (ctx.epochs) or set the epoch's learning rate (ctx.lr).
            ctx = EpochContext(cfg.epochs, st.w_opt, accuracy=lambda: supernet_accuracy(
                st.model, data.train_x, data.train_y, st.a_idx, data.mean, data.std, cfg.eval_batch_size))
            st.method.on_epoch_start(st.model, st.epoch, ctx)
            lr = ctx.lr if ctx.lr is not None else cosine_lr(st.epoch, ctx.epochs, cfg.lr, cfg.lr_min)
            for group in st.w_opt.param_groups:
                group["lr"] = lr
            st.model.train()
            bar = Progress(steps, f"epoch {st.epoch + 1}/{cfg.epochs}", cfg.progress, interval=cfg.log_interval)
            while st.step_in_epoch < steps:
                x_t, y_t = batch(st.w_idx, st.train_stream)
                x_v, y_v = batch(st.a_idx, st.val_stream)
                x_t = poison_batch(x_t, "train", st.global_step + 1)
                x_v = poison_batch(x_v, "val", st.global_step + 1)
                if stepper is None:
                    _search_step(st, criterion, x_t, y_t, x_v, y_v, lr)
                else:
                    stepper.step(x_t, y_t, x_v, y_v, lr)
                    if (st.step_in_epoch + 1) % cfg.log_interval == 0 or st.step_in_epoch + 1 == steps:
                        stepper.check()
                end_of_step(st, stop, t0, save, bar, run_dir / CHECKPOINT)
                if bar.enabled and (st.step_in_epoch % cfg.log_interval == 0 or st.step_in_epoch == steps):
                    s = st.sums.tolist()
                    bar.update(st.step_in_epoch, {"loss": s[0] / max(s[2], 1), "acc": s[1] / max(s[2], 1),
                                                  "val_loss": s[3] / max(st.step_in_epoch, 1)}, force=True)
            bar.close()
            s = st.sums.tolist()
            val_loss, val_acc = evaluate(st.model, data.train_x, data.train_y, st.a_idx, data.mean, data.std,
                                         cfg.eval_batch_size)
            st.wall += time.perf_counter() - t0
            genotype = st.method.genotype(st.model)
            record = {
                "epoch": st.epoch, "lr": lr,
                "train_loss": s[0] / max(s[2], 1), "train_acc": s[1] / max(s[2], 1),
                "arch_batch_loss": s[3] / max(steps, 1),
                "valid_loss": val_loss, "valid_acc": val_acc,
                "alphas_normal": torch.softmax(st.model.alphas_normal.detach().double(), -1).cpu().tolist(),
                "alphas_reduce": torch.softmax(st.model.alphas_reduce.detach().double(), -1).cpu().tolist(),
                "genotype": genotype_to_dict(genotype),
                "epoch_seconds": time.perf_counter() - t0, "wall_seconds": st.wall,
                **st.method.log(),
            }
            log(f"epoch {st.epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.4f} acc "
                f"{record['train_acc']:.3f} | valid loss {val_loss:.4f} acc {val_acc:.3f} | lr {lr:.5f}")
            collapsed = too_many_skips(genotype, cfg.max_skip_normal)
            if collapsed:
                st.stopped_early = True
                record["stopped_early"] = True
                log(f"stopping early: the normal cell has {skip_count(genotype)} skip connections, more than "
                    f"max_skip_normal={cfg.max_skip_normal}; genotype.json keeps the last cell within the limit")
            st.epoch += 1
            st.step_in_epoch = 0
            st.sums.zero_()
            st.train_stream.new_epoch()
            metrics.append(record)
            if not collapsed or not (run_dir / "genotype.json").exists():
                save_genotype(genotype, run_dir / "genotype.json")
                save_cell_pictures(genotype, run_dir)
            save_search_pictures([r for r in metrics.read() if "epoch" in r], run_dir, st.model.primitives)
            save()
    history = [r for r in metrics.read() if "epoch" in r]
    from ..space.genotype import load_genotype

    return SearchResult(run_dir, load_genotype(run_dir / "genotype.json", kind="cnn"), st.model.alphas_normal.detach().cpu(),
                        st.model.alphas_reduce.detach().cpu(), history)


def skip_count(genotype: Genotype) -> int:
    return sum(op == "skip_connect" for op, _ in genotype.normal)


def too_many_skips(genotype: Genotype, limit: int | None) -> bool:
    return limit is not None and skip_count(genotype) > limit


def _search_step(st: _State, criterion, x_t, y_t, x_v, y_v, lr: float) -> None:
    """One bilevel step (spec §3.3): the alpha step first, then the weight step with the updated alphas."""
    model, cfg = st.model, st.cfg
    out = {}
    if st.method.updates_alpha(st.epoch):  # method hooks (ROBUST-SPEC §5): warm-up, extra α-loss terms
        out = st.architect.step(make_loss_fn(model, x_t, y_t, criterion),
                                st.method.alpha_loss_fn(model, make_loss_fn(model, x_v, y_v, criterion)),
                                lr, st.w_opt, st.global_step)
    st.w_opt.zero_grad(set_to_none=True)
    with st.method.weight_step(model, x_t, y_t, criterion):  # method hook: α transform (SDARTS)
        logits = model(x_t)
        loss = criterion(logits, y_t)
        loss.backward()
    for a in model.arch_parameters():  # the weight pass must not leave gradients on alpha
        a.grad = None
    norm = torch.nn.utils.clip_grad_norm_(model.weights(), cfg.grad_clip)
    # One host synchronisation for both checks, still before the optimizer step touches anything.
    loss_ok, norm_ok = torch.isfinite(torch.stack([loss.detach(), norm.detach()])).tolist()
    if not loss_ok:
        raise NonFiniteError("training loss", st.global_step, "weights")
    if not norm_ok:
        raise NonFiniteError("weight gradient norm", st.global_step, "weights")
    st.w_opt.step()
    with torch.no_grad():
        n = y_t.numel()
        val_loss = out.get("val_loss") if isinstance(out, dict) else None
        st.sums += torch.stack([loss.detach().double() * n, (logits.argmax(1) == y_t).sum().double(),
                                torch.full((), float(n), device=loss.device, dtype=torch.float64),
                                (val_loss.detach().double() if val_loss is not None
                                 else torch.zeros((), device=loss.device, dtype=torch.float64))])


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
             mean, std, batch_size: int) -> tuple[float, float]:
    """Eval-mode pass (running BN statistics) over ``images[index]``, normalised only. Monitoring only."""
    was = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    correct = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, len(index), batch_size):
        idx = index[start:start + batch_size]
        x = augment(images[idx], None, mean, std, train=False)
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        loss_sum += F.cross_entropy(out, labels[idx], reduction="sum").double()
        correct += (out.argmax(1) == labels[idx]).sum().double()
    model.train(was)
    n = max(len(index), 1)
    return loss_sum.item() / n, correct.item() / n


def derive_from_run(run_dir: str | Path) -> Genotype:
    """Re-derive the genotype from a run's checkpoint (``dartsnas derive RUN``)."""
    from ..space.derive import derive_genotype

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT if run_dir.is_dir() else run_dir
    ck = load_checkpoint(path, expect_kind=KIND)
    try:
        cfg = SearchConfig.from_dict(ck["config"])
        model = ck["model"]
        method = build_method(cfg.method, cfg.search_space, cfg.method_args)
        if method.plain:
            return derive_genotype(model["alphas_normal"], model["alphas_reduce"], cfg.num_nodes)
        # A method's selection may need its supernet and state (edge β, pruning masks, PT decisions).
        net = SearchNetwork(cfg.init_channels, model["classifier.weight"].shape[0], cfg.layers, cfg.num_nodes,
                            stem_multiplier=cfg.stem_multiplier, **method.network_options())
        method.attach(net)
        method.load_state_dict(ck["method"])
        method.restore(net, None)
        net.load_state_dict(model)
        return method.genotype(net)
    except (KeyError, ConfigError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"holds no alphas or config ({e})", str(path)) from None
