"""The CNN architecture search loop (spec §3): bilevel steps, per-epoch metrics, checkpoints, resume.

Usage::

    from dartsnas.loops.search import SearchConfig, run_search
    result = run_search(SearchConfig.build("quick"), run_dir="runs/quick")
    print(result.genotype)

Data-parallel under ``torchrun`` (RANK/WORLD_SIZE in the environment, plain DARTS): ``batch_size`` stays the
global batch and the learning rates are the one-process recipe's. Every rank draws the same global batch
indices and the same augmentation random numbers, loads and augments only its contiguous slice, and
computes its slice's share of the global-batch loss; the weight gradients, the virtual step's gradients
and the α gradient are averaged over the ranks (``architect.Architect``'s ``reduce``), so every rank keeps
the same weights and alphas and derives the same genotype (checked every epoch). BatchNorm normalises
each slice with its own statistics, as a one-process run that forwards the slices separately would; the
running statistics are averaged over the ranks at every epoch end and checkpoint. Only rank 0 writes files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..architect import Architect, make_loss_fn, weight_gradients
from ..checkpoint import load_checkpoint, seed_everything
from ..config import ConfigBase, require
from ..data.images import DATASETS, BatchStream, ImageData, augment, load_images, to_device
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..methods import EpochContext, Method
from ..methods.pt import supernet_accuracy
from ..space.genotype import Genotype, genotype_to_dict, save_genotype
from . import search_hooks
from .common import CHECKPOINT, poison_batch, set_determinism
from .engine import Ranks, Run, Task
from .search_hooks import NB201_METHOD_PRESETS, NB201_PRESETS
from .state import LoopState, Sums, saved_as, transient

KIND = "cnn-search"
FUSED_DEFAULT = False


@dataclass(kw_only=True)
class SearchConfig(ConfigBase):
    """CNN search on CIFAR-10 with the reference's defaults (spec §1.4, §3)."""

    KIND = KIND  # the module's run kind (config.json "kind")
    ALIASES = {"space": {"cnn": "darts"}}  # the CLI spells the DARTS space --space cnn
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    train_portion: float = 0.5
    subset: int | None = None  # use only the first N images of each half (quick real-data runs)
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
    # rounding. cuda_graph: replay the whole step as one CUDA graph (loops/graphed.py; CUDA, one process and a
    # graph-safe method, else ignored with a note); non-finite values are then detected after the fact, at the
    # next logging interval or checkpoint.
    fused_ops: bool = FUSED_DEFAULT
    cuda_graph: bool = False
    # GPU runs repeat bit for bit only with deterministic kernels (slower); CPU runs always do.
    deterministic: bool = False
    # Guard against the collapse to parameter-free cells (the normal cell filling with skip connections):
    # stop the search at the first epoch whose derived normal cell has more than this many skip_connect
    # edges and keep the last cell within the limit (an early-stopping rule in the spirit of DARTS+; off by
    # default, as in the paper).
    max_skip_normal: int | None = None
    tensorboard: bool = False  # also write the metrics records as TensorBoard scalars (RUN/tensorboard)
    # Search space (darts: 8 ops; darts-7: no none; nb201) and collapse diagnostics (ROBUST-SPEC §1, §2, §5;
    # loops/search_hooks.py). nb201_cells is N, the
    # search cells per stage of the NB201 supernet; image_size downsamples the images (the CPU proxy);
    # split=nb201 takes the benchmark's CIFAR-10 split file (AutoDL); hessian logs λ_max every epoch;
    # early_stop=hessian applies DARTS-ES (§2.1).
    space: Literal["darts", "darts-7", "nb201"] = "darts"
    nb201_cells: int = 5
    image_size: int | None = None
    split: Literal["halves", "nb201"] = "halves"
    nesterov: bool = False
    hessian: bool = False
    hessian_batch: int = 64
    early_stop: Literal["none", "hessian"] = "none"
    # The search method (ROBUST-SPEC §5; dartsnas.methods): a registry name ("a+b" composes) and hyper-parameter
    # overrides "key=value,...". Plain DARTS ("darts") is the method whose hooks are all identities.
    method: str = "darts"
    method_args: str = ""

    # Where the data comes from does not change the run (the dataset name does), as for the other loops.
    HARMLESS = ConfigBase.HARMLESS | {"fused_ops", "cuda_graph", "data_dir", "download", "tensorboard", "deterministic"}

    PRESETS = {
        "paper": {},
        "paper-second-order": {"order": 2},
        # A few minutes on a laptop CPU: the built-in dataset and a small supernet.
        "quick": {
            "dataset": "builtin",
            "init_channels": 8,
            "layers": 3,
            "epochs": 8,
            "batch_size": 32,
            "arch_lr": 3e-3,
            "log_interval": 4,
            "subset": 256,
        },
        "tiny": {
            "dataset": "builtin",
            "init_channels": 4,
            "layers": 3,
            "num_nodes": 2,
            "epochs": 2,
            "batch_size": 16,
            "subset": 64,
            "log_interval": 2,
        },
        **NB201_PRESETS,
        **NB201_METHOD_PRESETS,
    }

    def check(self) -> list[str]:
        p: list[str] = []
        require(
            p, self.dataset in DATASETS, f"dataset: unknown dataset {self.dataset!r}; available: {', '.join(DATASETS)}"
        )
        require(p, 0.0 < self.train_portion < 1.0, f"train_portion: must be in (0, 1), got {self.train_portion}")
        require(p, self.subset is None or self.subset > 0, f"subset: must be positive, got {self.subset}")
        for name in (
            "init_channels",
            "layers",
            "num_nodes",
            "stem_multiplier",
            "epochs",
            "batch_size",
            "log_interval",
            "eval_batch_size",
        ):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        require(p, self.layers >= 3, f"layers: must be at least 3 (two reduction cells), got {self.layers}")
        for name in ("lr", "arch_lr"):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("lr_min", "weight_decay", "arch_weight_decay", "grad_clip"):
            require(p, getattr(self, name) >= 0, f"{name}: must be non-negative, got {getattr(self, name)}")
        require(
            p,
            self.max_skip_normal is None or 0 <= self.max_skip_normal <= 2 * self.num_nodes,
            f"max_skip_normal: must be in 0..{2 * self.num_nodes}, got {self.max_skip_normal}",
        )
        require(p, self.lr_min <= self.lr, f"lr_min: {self.lr_min} exceeds lr {self.lr}")
        p += search_hooks.check_config(self)
        try:
            p += search_hooks.build_method_for(self).check_config(
                self.init_channels, self.layers, self.num_nodes, self.epochs
            )
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


class _MethodCheckpoint:
    """The search method's checkpoint entry. It is restored before the supernet and its optimiser because a
    method may change their structure (DrNAS's widening rebuilds operations before their weights load)."""

    def __init__(self, method: Method, model: torch.nn.Module):
        self.method, self.model = method, model
        self.weight_optimizer: torch.optim.Optimizer | None = None

    def state_dict(self) -> dict[str, Any]:
        return self.method.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state)
        self.method.restore(self.model, self.weight_optimizer)


@dataclass(init=False, eq=False)
class _State(LoopState):
    """Everything that changes during a search (saved generically, see ``loops.state``).

    ``model`` is the supernet of the search space: any module with ``weights()``, ``arch_parameters()``,
    ``genotype()`` and ``arch_record()`` (the space's fields of the per-epoch record) plugs in.
    """

    method_state: _MethodCheckpoint = saved_as("method")  # restored first: a method may rebuild the supernet
    model: torch.nn.Module
    w_opt: torch.optim.SGD = saved_as("weight_optimizer")
    a_opt: torch.optim.Adam = saved_as("arch_optimizer")
    train_stream: BatchStream
    val_stream: BatchStream
    aug_gen: torch.Generator = saved_as("augment")
    stopped_early: bool = False
    cfg: SearchConfig = transient()
    method: Method = transient()
    architect: Architect = transient()
    w_idx: torch.Tensor = transient()
    a_idx: torch.Tensor = transient()

    def __init__(self, cfg: SearchConfig, data: ImageData, device: torch.device, model: torch.nn.Module | None = None):
        LoopState.__init__(self)
        self.cfg = cfg
        w_idx, a_idx = search_hooks.search_indices(cfg, data.train_x.shape[0])
        self.w_idx, self.a_idx = w_idx.to(device), a_idx.to(device)
        self.method = search_hooks.build_method_for(cfg)
        if model is None:
            model = search_hooks.build_search_model(cfg, data.num_classes, self.method)
        self.model = model.to(device)
        self.method.attach(self.model)
        self.method_state = _MethodCheckpoint(self.method, self.model)
        self.w_opt = torch.optim.SGD(
            self.model.weights(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
        )
        self.method_state.weight_optimizer = self.w_opt
        self.a_opt = torch.optim.Adam(
            self.model.arch_parameters(),
            lr=cfg.arch_lr,
            betas=(cfg.arch_beta1, cfg.arch_beta2),
            weight_decay=cfg.arch_weight_decay,
        )
        self.architect = Architect(
            self.model,
            self.a_opt,
            order=cfg.order,
            weight_momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            hvp=cfg.hvp,
        )
        self.train_stream = BatchStream(len(w_idx), cfg.batch_size, cfg.seed * 1000 + 1, epoch_mode=True)
        self.val_stream = BatchStream(len(a_idx), cfg.batch_size, cfg.seed * 1000 + 2, epoch_mode=False)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 3)
        self.stopped_early = False


# The running sums of a search epoch: Σ loss·n and Σ correct over the weight batches, their images, and
# Σ of the α step's validation loss (see ``_search_step``).
SUMS = ("loss", "correct", "count", "arch_step_val_loss")


@dataclass(frozen=True)
class _Share:
    """Under DDP: this rank's share of the global batches' mean losses, n_local·world / n_global for the
    training and the validation batch (1 for equal slices), so that the mean over the ranks of the scaled
    slice means is the global batch's mean (the mean of the slice means for equal slices)."""

    train: float
    val: float
    world: int


class SearchTask(Task):
    """The CNN search as a driver task: bilevel steps on D_w / D_alpha batches, monitoring at epoch end."""

    kind = KIND

    def __init__(
        self,
        cfg: SearchConfig,
        data: ImageData,
        device: torch.device,
        log,
        model: torch.nn.Module | None = None,
        ranks: Ranks | None = None,
    ):
        self.cfg, self.data, self.device = cfg, data, device
        self.ranks = ranks or Ranks()
        self.state = _State(cfg, data, device, model)
        if self.ranks.distributed:
            from ..distributed import average_

            self.state.architect.reduce = average_
            short = len(self.state.w_idx) % cfg.batch_size  # the epoch's last weight batch
            if 0 < short < self.ranks.world or len(self.state.a_idx) < self.ranks.world:
                raise ConfigError(
                    f"batch_size: the last batch of an epoch ({short} images) or the α half "
                    f"({len(self.state.a_idx)}) leaves a rank of {self.ranks.world} without images; "
                    "choose batch_size or subset so that every rank gets a share"
                )
        self.sums = Sums(SUMS, device)
        self.criterion = torch.nn.CrossEntropyLoss()
        self.lr = cfg.lr
        self.pad = search_hooks.augment_padding(cfg)
        # Diagnostics (λ_max, entropies, skip/none counts), the NB201 table row of the cell, DARTS-ES.
        self.monitor = search_hooks.SearchMonitor(cfg, data, self.state.a_idx, log)
        self.past: Callable[[], list[dict[str, Any]]] = list  # the run's earlier records (set by run_search)
        self.es_genotype = None
        # CUDA-graph step: made in begin_epoch, after a resume has loaded the optimizers' state (the graph holds
        # their tensors); plain DARTS keeps it, another method gets a new one every epoch. graph_eager runs its
        # body uncaptured (CPU tests of the arithmetic).
        self.graphed = None
        self.graph_eager = False
        self.use_graph = False
        if cfg.cuda_graph:
            if device.type == "cuda" and self.state.method.graph_safe and not self.ranks.distributed:
                self.use_graph = True
            else:
                log(
                    f"note: cuda_graph needs a CUDA device, one process and a method whose step hooks are graph-safe "
                    f"(all but sdarts-adv and gdas); device {device}, method {cfg.method}: the eager step runs"
                )

    def steps_per_epoch(self) -> int:
        return self.state.train_stream.steps_per_epoch()

    def begin_epoch(self) -> None:
        st, cfg, d = self.state, self.cfg, self.data
        # Method epoch hook (ROBUST-SPEC §5): schedules, warm-up, pruning, DARTS-PT projections; it may shorten
        # the cosine's horizon (ctx.epochs) or set the epoch's learning rate (ctx.lr).
        ctx = EpochContext(
            cfg.epochs,
            st.w_opt,
            accuracy=lambda: supernet_accuracy(
                st.model, d.train_x, d.train_y, st.a_idx, d.mean, d.std, cfg.eval_batch_size
            ),
        )
        st.method.on_epoch_start(st.model, st.epoch, ctx)
        self.lr = ctx.lr if ctx.lr is not None else cosine_lr(st.epoch, ctx.epochs, cfg.lr, cfg.lr_min)
        for group in st.w_opt.param_groups:
            group["lr"] = self.lr
        st.model.train()
        if self.use_graph and (self.graphed is None or not st.method.plain):
            # A method's epoch hooks change what the step computes (β_e, λ_e, ε_e as Python numbers, the
            # warm-up, pruning masks, DARTS-PT's decided edges, DrNAS's widened weights): the graphs captured
            # for the last epoch are dropped and the step recaptured from the state as it is now.
            from .graphed import GraphedSearchStep

            if self.graphed is not None:
                self.graphed.check()
            self.graphed = GraphedSearchStep(st, self.criterion, eager=self.graph_eager)

    def _batch(self, idx_pool: torch.Tensor, stream: BatchStream) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The next batch of the stream (this rank's slice under DDP) and the rank's share (``_Share``)."""
        d, r = self.data, self.ranks
        pick = stream.next()
        n = len(pick)
        per, extra = divmod(n, r.world)  # contiguous slices; sizes differ by one at most (a short last batch)
        lo = r.rank * per + min(r.rank, extra)
        hi = lo + per + (1 if r.rank < extra else 0)
        idx = idx_pool[to_device(pick[lo:hi], self.device)]
        x = augment(d.train_x[idx], self.state.aug_gen, d.mean, d.std, pad=self.pad, part=(lo, n))
        return x, d.train_y[idx], (hi - lo) * r.world / n

    def batches(self):
        st = self.state
        steps = self.steps_per_epoch()
        while st.step_in_epoch < steps:
            x_t, y_t, s_t = self._batch(st.w_idx, st.train_stream)
            x_v, y_v, s_v = self._batch(st.a_idx, st.val_stream)
            batch = (
                poison_batch(x_t, "train", st.global_step + 1),
                y_t,
                poison_batch(x_v, "val", st.global_step + 1),
                y_v,
            )
            yield (*batch, _Share(s_t, s_v, self.ranks.world)) if self.ranks.distributed else batch

    def step(self, batch) -> dict[str, torch.Tensor]:
        if self.graphed is not None:
            return self.graphed.step(*batch, self.lr)
        if self.ranks.distributed:
            return _search_step(self.state, self.criterion, *batch[:4], self.lr, share=batch[4])
        return _search_step(self.state, self.criterion, *batch, self.lr)

    def check(self) -> None:
        if self.graphed is not None:
            self.graphed.check()

    def stats(self, s: dict[str, float]) -> dict[str, float]:
        n = max(s["count"], 1)
        return {
            "loss": s["loss"] / n,
            "acc": s["correct"] / n,
            "val_loss": s["arch_step_val_loss"] / max(self.state.step_in_epoch, 1),
        }

    def end_of_epoch(self, s: dict[str, float]) -> dict[str, Any]:
        st, cfg, d = self.state, self.cfg, self.data
        self._average_running_statistics()
        val_loss, val_acc = evaluate(st.model, d.train_x, d.train_y, st.a_idx, d.mean, d.std, cfg.eval_batch_size)
        self.genotype = st.method.genotype(st.model)
        _same_on_every_rank(self.ranks, genotype_to_dict(self.genotype))
        n = max(s["count"], 1)
        record = {
            "epoch": st.epoch,
            "lr": self.lr,
            "train_loss": s["loss"] / n,
            "train_acc": s["correct"] / n,
            "arch_step_val_loss": s["arch_step_val_loss"] / max(self.steps_per_epoch(), 1),
            "valid_loss": val_loss,
            "valid_acc": val_acc,
            **st.model.arch_record(),
            "genotype": genotype_to_dict(self.genotype),
            **st.method.log(),
        }
        record.update(self.monitor.epoch_record(st.model, self.genotype))
        self.collapsed = too_many_skips(self.genotype, cfg.max_skip_normal)
        self.es_genotype = self.ranks.on_main(lambda: self.monitor.early_stop(self.past() + [record]))
        if self.collapsed or self.es_genotype is not None:
            st.stopped_early = True
            record["stopped_early"] = True
        return record

    def summary(self, r: dict[str, Any]) -> str:
        line = (
            f"epoch {r['epoch'] + 1}/{self.cfg.epochs}: train loss {r['train_loss']:.4f} acc {r['train_acc']:.3f} "
            f"| valid loss {r['valid_loss']:.4f} acc {r['valid_acc']:.3f} | lr {r['lr']:.5f}"
        )
        if self.collapsed:
            line += (
                f"\nstopping early: the normal cell has {skip_count(self.genotype)} skip connections, more "
                f"than max_skip_normal={self.cfg.max_skip_normal}; genotype.json keeps the last cell within "
                "the limit"
            )
        return line

    def new_epoch(self) -> None:
        self.state.train_stream.new_epoch()

    def after_epoch(self, record: dict[str, Any], run: Run) -> None:
        if not self.ranks.main:
            return
        if self.es_genotype is not None:  # DARTS-ES returns the cell of the epoch it points back to
            self.write_outputs(self.es_genotype, run.path, run.history(), keep_cell=True)
        else:
            self.write_outputs(self.genotype, run.path, run.history(), keep_cell=not self.collapsed)

    def write_outputs(self, genotype: Genotype, folder: Path, history: list[dict[str, Any]], keep_cell: bool) -> None:
        """The space's per-epoch files: genotype.json and the cell pictures (unless the cell collapsed and an
        earlier one is kept), the loss curves and the alpha picture."""
        from ..plot import save_cell_pictures, save_search_pictures

        if keep_cell or not (folder / "genotype.json").exists():
            save_genotype(genotype, folder / "genotype.json")
            save_cell_pictures(genotype, folder)
        save_search_pictures(history, folder, self.state.model.primitives)

    def finished(self) -> bool:
        return self.state.stopped_early

    def _average_running_statistics(self) -> None:
        """Under DDP, one set of BN running statistics: each rank's saw only its slices. Their update is
        linear, so averaging at any step boundary (an epoch's end, a checkpoint) gives the same numbers
        later; a resumed run therefore continues as the uninterrupted one."""
        if self.ranks.distributed:
            from ..distributed import average_

            average_([b for b in self.state.model.buffers() if b.is_floating_point()])

    def extra_state(self) -> dict[str, Any]:
        self._average_running_statistics()  # collective: the driver calls this on every rank before a save
        return {"genotype": genotype_to_dict(self.state.model.genotype())}


def load_for_resume(run_dir: Path) -> dict[str, Any]:
    return load_checkpoint(run_dir / CHECKPOINT, expect_kind=KIND)


def run_search(
    cfg: SearchConfig, run_dir: str | Path | None = None, resume: bool = False, log=None, data: ImageData | None = None
) -> SearchResult:
    """Run (or continue) a search; writes config, metrics, checkpoints, genotype and pictures to ``run_dir``.

    Messages go to ``log`` (a callable taking one string), else to the ``dartsnas`` logger.
    """
    from .train import init_distributed

    rank, world, device = init_distributed(cfg)
    if world > 1:
        _check_distributed(cfg, world)
    ranks = Ranks(rank=rank, world=world)
    run = Run(cfg, KIND, run_dir, resume, "search", log, ranks=ranks)
    if data is None:
        data = load_images(cfg.dataset, cfg.data_dir, device, cfg.download)
    else:
        data = data.to(device)
    data = search_hooks.prepare_images(cfg, data)
    set_determinism(device, cfg.deterministic)
    seed_everything(cfg.seed)
    task = SearchTask(cfg, data, device, run.log, ranks=ranks)
    task.past = run.history
    run.start(task)
    st = task.state
    run.log(
        f"search: {cfg.dataset}, {len(st.w_idx)}+{len(st.a_idx)} images, order {cfg.order}, "
        f"{sum(p.numel() for p in st.model.weights()):,} weights, device {device}"
        f"{f' x{world}' if world > 1 else ''}, run dir {run.path}"
    )
    run.loop(task)
    from ..space.genotype import load_genotype

    final = load_genotype(run.path / "genotype.json", kind="nb201" if cfg.space == "nb201" else "cnn")
    if run.ranks.main:
        task.monitor.finish(run.path, final, st.wall)  # results.json: cost; NB201: the cell's table row
    alphas = [a.detach().cpu() for a in st.model.arch_parameters()]
    return SearchResult(run.path, final, alphas[0], alphas[-1], run.history())


def _check_distributed(cfg: SearchConfig, world: int) -> None:
    """What a data-parallel search supports: plain DARTS (the methods' extra randomness and state are
    not made rank-consistent), the global batch split evenly over the ranks."""
    p: list[str] = []
    require(
        p,
        cfg.batch_size % world == 0,
        f"batch_size: the global batch {cfg.batch_size} must be divisible by the {world} processes",
    )
    require(p, cfg.method == "darts", f"method: {cfg.method} does not run data-parallel; only darts does")
    if p:
        raise ConfigError(p)


def _same_on_every_rank(ranks: Ranks, value: Any) -> None:
    """Under DDP, fail loudly if the ranks disagree (they would then write and resume inconsistently)."""
    if not ranks.distributed:
        return
    import torch.distributed as dist

    seen: list[Any] = [None] * ranks.world
    dist.all_gather_object(seen, value)
    if any(v != seen[0] for v in seen):
        raise RuntimeError("data-parallel search: the ranks derived different genotypes")


def skip_count(genotype: Genotype) -> int:
    return sum(op == "skip_connect" for op, _ in genotype.normal)


def too_many_skips(genotype: Genotype, limit: int | None) -> bool:
    return limit is not None and skip_count(genotype) > limit


def _search_step(
    st: _State, criterion, x_t, y_t, x_v, y_v, lr: float, share: _Share | None = None
) -> dict[str, torch.Tensor]:
    """One bilevel step (spec §3.3): the alpha step first, then the weight step with the updated alphas.

    Returns the step's sums (device scalars, no host sync): ``loss`` = L_train·n and ``correct`` of the
    weight step on the n training images (``count``), and ``arch_step_val_loss``, the validation loss the
    alpha step differentiated: L_val(w', α) at the virtual weights w' = w − ξ∇_w L_train for order 2, and
    L_val(w, α) at the current weights for order 1 (zero if the architect reports none).

    Where method variants hook in: (1) the alpha step (``st.architect.step``: the loss functions it gets,
    extra alpha-loss terms, the mixing weights inside the model), (2) the weight step below (the model's
    forward with the just-updated alphas, any alpha transform before it), (3) nothing else touches state.

    Data-parallel (``share``, this rank's slices): every loss is the slice's share of the global-batch
    loss, the weight gradients are averaged over the ranks here, the α step's inside the architect.
    """
    model, cfg = st.model, st.cfg
    out = {}
    crit_t, crit_v = criterion, criterion
    if share is not None:
        crit_t, crit_v = _scaled(criterion, share.train), _scaled(criterion, share.val)
    # (1) alpha step on the validation batch; method hooks (ROBUST-SPEC §5): warm-up, extra α-loss terms
    if st.method.updates_alpha(st.epoch):
        out = st.architect.step(
            make_loss_fn(model, x_t, y_t, crit_t),
            st.method.alpha_loss_fn(model, make_loss_fn(model, x_v, y_v, crit_v)),
            lr,
            st.w_opt,
            st.global_step,
        )
    # (2) weight step on the training batch, with the alphas just updated; method hook: α transform (SDARTS)
    st.w_opt.zero_grad(set_to_none=True)
    with st.method.weight_step(model, x_t, y_t, criterion):
        logits = model(x_t)
        loss = criterion(logits, y_t)
        # w.r.t. the weights only: no α gradient is computed
        weight_gradients(loss if share is None else loss * share.train, model.weights())
    if share is not None:
        from ..distributed import average_

        average_([p.grad for p in model.weights() if p.grad is not None])
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
        if val_loss is not None and share is not None:  # the driver sums the ranks' values
            val_loss = val_loss / share.world
        zero = torch.zeros((), device=loss.device, dtype=torch.float64)
        return {
            "loss": loss.detach().double() * n,
            "correct": (logits.argmax(1) == y_t).sum().double(),
            "count": torch.full((), float(n), device=loss.device, dtype=torch.float64),
            "arch_step_val_loss": val_loss.detach().double() if val_loss is not None else zero,
        }


def _scaled(criterion, factor: float):
    def loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return criterion(out, y) * factor

    return loss


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, mean, std, batch_size: int
) -> tuple[float, float]:
    """The search's end-of-epoch monitoring pass over ``images[index]`` (D_alpha): eval mode (running BN
    statistics), the images normalised only (no crop, flip or cutout), plain cross-entropy; returns (mean
    loss, accuracy). It reads D_alpha, which the alpha steps train on, so it is not a held-out score; it
    is recorded as ``valid_loss``/``valid_acc`` for monitoring and changes no state (the reference
    evaluates D_alpha with its training transform instead)."""
    was = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    correct = torch.zeros((), dtype=torch.float64, device=images.device)
    for start in range(0, len(index), batch_size):
        idx = index[start : start + batch_size]
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
    from ..space.nb201 import derive_nb201

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT if run_dir.is_dir() else run_dir
    ck = load_checkpoint(path, expect_kind=KIND)
    try:
        cfg = SearchConfig.from_dict(ck["config"])
        model = ck["model"]
        method = search_hooks.build_method_for(cfg)
        if cfg.space == "nb201" and cfg.method == "darts":
            return derive_nb201(model["alphas_cell"])
        if method.plain:
            return derive_genotype(model["alphas_normal"], model["alphas_reduce"], cfg.num_nodes)
        # A method's selection may need its supernet and state (edge β, pruning masks, PT decisions).
        net = search_hooks.build_search_model(cfg, model["classifier.weight"].shape[0], method)
        method.attach(net)
        method.load_state_dict(ck["method"])
        method.restore(net, None)
        net.load_state_dict(model)
        return method.genotype(net)
    except (KeyError, ConfigError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"holds no alphas or config ({e})", str(path)) from None
