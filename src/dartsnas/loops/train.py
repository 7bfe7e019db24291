"""Training a derived architecture from scratch (spec §5 CIFAR-10, §6 ImageNet): the second stage of DARTS.

Usage::

    from dartsnas.loops.train import TrainConfig, run_train
    result = run_train(TrainConfig.build("quick"), run_dir="runs/train-quick")
    print(result.results["test_error_percent"])

One process, or data-parallel under ``torchrun`` (RANK/WORLD_SIZE in the environment): every rank draws
the same global batch indices (same stream, same augmentation random numbers), loads and augments only
its own contiguous slice of ``batch_size / world_size`` images, and DistributedDataParallel averages the
gradients, so the global
batch and the learning rate are the recipe's. Only rank 0 writes files.

Reliability (RELIABILITY.md): an atomic checkpoint after every epoch and on SIGTERM/SIGINT (mid-epoch,
with the data position, every RNG and the running sums), bit-exact resume on CPU, refusal of foreign or
incompatible checkpoints, and a non-finite loss or gradient norm stops the run before the optimizer step.
Tests inject faults through ``DARTSNAS_FAULT`` as every loop does (``loops.common.inject_fault`` and
``nan_fault``: ``kill_at_step:N``, ``term_at_step:N``, ``nan_train_at_step:N``, N counted from 1).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_checkpoint, save_checkpoint, seed_everything
from ..config import ConfigBase, require
from ..data.images import BatchStream, ImageData, augment, load_images, to_device
from ..errors import CheckpointError, ConfigError, DataError, GenotypeError, NonFiniteError
from ..evalnet.cnn import NetworkCIFAR, NetworkImageNet, count_parameters
from ..evalnet.flops import count_multiply_adds
from ..space.genotype import Genotype, genotype_from_dict, genotype_to_dict, load_genotype, save_genotype
from .common import CHECKPOINT, TrainingResult, nan_fault, resolve_device, set_determinism, write_json
from .engine import Ranks, Run, Task
from .state import LoopState, Sums, saved_as, transient

KIND = "cnn-train"
TRAIN_DATASETS = ("cifar10", "builtin", "imagenet")
Switch = Literal["auto", "on", "off"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(kw_only=True)
class TrainConfig(ConfigBase):
    """Training from scratch with the paper's CIFAR-10 recipe as defaults (spec §5); preset "imagenet" is §6."""

    KIND = KIND  # the module's run kind (config.json "kind")
    genotype: str = "DARTS_V2"  # a published name, a genotype.json, or a search run folder
    dataset: str = "cifar10"  # cifar10, builtin, imagenet
    data_dir: str | None = None
    download: bool = False
    subset: int | None = None  # train on the first N training images only (quick real-data runs)
    test_subset: int | None = None  # evaluate on the first N test images only
    # "search_valid": train on D_w and evaluate on D_alpha, the two halves of the training set that the search
    # uses (spec §9 selection runs); the test set is then never read. "test": the test set (the default).
    eval_split: Literal["test", "search_valid"] = "test"
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2  # final value; ramped as drop_path_prob * epoch / epochs
    epochs: int = 600
    batch_size: int = 96  # the global batch (split over ranks and accumulation steps)
    lr: float = 0.025
    lr_schedule: Literal["cosine", "exponential"] = "cosine"
    lr_min: float = 0.0  # cosine floor
    lr_gamma: float = 0.97  # exponential decay per epoch
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    cutout: int = 16
    label_smoothing: float = 0.0
    accum_steps: int = 1  # split each global batch into this many micro-batches
    seed: int = 0
    device: str = "auto"
    # GPU runs repeat bit for bit only with deterministic kernels (slower); CPU runs always do.
    deterministic: bool = False
    # Speed switches. "auto" turns on what is safe and pays on CUDA; on CPU everything stays off (bit-exact
    # resume). Measured on one H100 (benchmarks/train_step.py, DARTS_V2 C36 20 cells batch 96): fp32 for-loop
    # SGD 5.42 steps/s; + channels-last + fused SGD 6.15; + bf16 autocast 5.90 (the step is launch-bound,
    # so bf16 only halves memory, 6.7 -> 3.4 GB); torch.compile had not finished compiling after 170 s.
    channels_last: Switch = "auto"  # auto = on on CUDA
    bf16: Switch = "auto"  # bfloat16 autocast, CUDA only; auto = off (no gain, other numerics)
    optimizer_impl: Literal["auto", "fused", "foreach", "for-loop"] = "auto"  # auto = fused on CUDA
    compile: Switch = "auto"  # torch.compile of the network; auto = off (compile time, no gain shown)
    sync_bn: Switch = "auto"  # SyncBatchNorm under DDP; auto = on for multi-GPU CUDA runs
    # Replay the whole training step as one CUDA graph (loops/graphed.py GraphedTrainStep): CUDA, one process,
    # accum_steps=1, compile off; recaptured when the drop-path probability changes (every epoch). Off by default
    # until the GPU tests have passed on a GPU; elsewhere the eager step runs (a note says so).
    cuda_graph: bool = False
    workers: int = 8  # ImageNet loader processes
    log_interval: int = 50
    progress: bool = True
    eval_batch_size: int = 256
    tensorboard: bool = False  # also write the metrics records as TensorBoard scalars (RUN/tensorboard)

    HARMLESS = ConfigBase.HARMLESS | frozenset(
        {
            "channels_last",
            "bf16",
            "optimizer_impl",
            "compile",
            "workers",
            "data_dir",
            "download",
            "tensorboard",
            "deterministic",
            "cuda_graph",
        }
    )

    PRESETS = {
        "paper": {},
        "imagenet": {
            "dataset": "imagenet",
            "epochs": 250,
            "batch_size": 128,
            "lr": 0.1,
            "lr_schedule": "exponential",
            "lr_gamma": 0.97,
            "label_smoothing": 0.1,
            "weight_decay": 3e-5,
            "init_channels": 48,
            "layers": 14,
            "drop_path_prob": 0.0,
            "cutout": 0,
            "eval_batch_size": 128,
        },
        # About a minute on a 2-core laptop CPU: the built-in 16x16 data and a small network.
        # About half a minute on a laptop CPU; the auxiliary head (419k weights) would dwarf this 37k-weight net.
        "quick": {
            "dataset": "builtin",
            "init_channels": 8,
            "layers": 5,
            "epochs": 8,
            "batch_size": 32,
            "lr": 0.05,
            "cutout": 4,
            "auxiliary": False,
            "subset": 512,
            "test_subset": 256,
            "log_interval": 4,
        },
        "tiny": {
            "dataset": "builtin",
            "init_channels": 4,
            "layers": 3,
            "epochs": 3,
            "batch_size": 16,
            "cutout": 8,
            "subset": 48,
            "test_subset": 32,
            "log_interval": 1,
            "eval_batch_size": 32,
        },
    }

    def check(self) -> list[str]:
        p: list[str] = []
        require(
            p,
            self.dataset in TRAIN_DATASETS,
            f"dataset: unknown dataset {self.dataset!r}; available: {', '.join(TRAIN_DATASETS)}",
        )
        for name in (
            "init_channels",
            "layers",
            "epochs",
            "batch_size",
            "accum_steps",
            "log_interval",
            "eval_batch_size",
        ):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        require(p, self.init_channels % 2 == 0, f"init_channels: must be even, got {self.init_channels}")
        for name in ("subset", "test_subset"):
            v = getattr(self, name)
            require(p, v is None or v > 0, f"{name}: must be positive, got {v}")
        require(p, self.lr > 0, f"lr: must be positive, got {self.lr}")
        for name in ("lr_min", "weight_decay", "grad_clip", "auxiliary_weight", "cutout", "workers"):
            require(p, getattr(self, name) >= 0, f"{name}: must be non-negative, got {getattr(self, name)}")
        require(p, self.lr_min <= self.lr, f"lr_min: {self.lr_min} exceeds lr {self.lr}")
        require(p, 0 < self.lr_gamma <= 1, f"lr_gamma: must be in (0, 1], got {self.lr_gamma}")
        require(p, 0 <= self.momentum < 1, f"momentum: must be in [0, 1), got {self.momentum}")
        require(p, 0 <= self.drop_path_prob < 1, f"drop_path_prob: must be in [0, 1), got {self.drop_path_prob}")
        require(p, 0 <= self.label_smoothing < 1, f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        require(
            p,
            self.eval_split == "test" or self.dataset != "imagenet",
            f"eval_split: {self.eval_split!r} needs cifar10 or builtin (ImageNet has no search split)",
        )
        require(
            p,
            self.batch_size >= self.accum_steps,
            f"accum_steps: {self.accum_steps} exceeds batch_size {self.batch_size}",
        )
        return p


TrainResult = TrainingResult  # the same record for CNN and recurrent training


# ------------------------------------------------------------------------------------------- schedules


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Set once per epoch. Cosine (§5): lr_min + (lr - lr_min)(1 + cos(pi e/E))/2; exponential (§6): lr*gamma^e."""
    if cfg.lr_schedule == "exponential":
        return cfg.lr * cfg.lr_gamma**epoch
    return cfg.lr_min + (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2


def drop_path_probability(cfg: TrainConfig, epoch: int) -> float:
    """§5: drop_path_prob * e / E for 0-based epoch e: 0 at the start, just under the final value at the end."""
    return cfg.drop_path_prob * epoch / cfg.epochs


# ------------------------------------------------------------------------------------------- speed switches


@dataclass(kw_only=True)
class Runtime(Ranks):
    """The resolved speed switches and the process layout of a run."""

    device: torch.device
    channels_last: bool = False
    bf16: bool = False
    optimizer_impl: str = "for-loop"
    compile: bool = False
    sync_bn: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "world_size": self.world,
            "channels_last": self.channels_last,
            "bf16": self.bf16,
            "optimizer_impl": self.optimizer_impl,
            "compile": self.compile,
            "sync_bn": self.sync_bn,
        }


def resolve_runtime(cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> Runtime:
    cuda = device.type == "cuda"

    def switch(value: str, auto: bool, name: str, cuda_only: bool = False) -> bool:
        on = auto if value == "auto" else value == "on"
        if on and cuda_only and not cuda:
            raise ConfigError(f"{name}: 'on' needs a CUDA device (this run uses {device})")
        return on

    impl = cfg.optimizer_impl
    if impl == "auto":
        impl = "fused" if cuda else "for-loop"
    sync = switch(cfg.sync_bn, cuda and world > 1, "sync_bn", cuda_only=True)
    return Runtime(
        device=device,
        rank=rank,
        world=world,
        channels_last=switch(cfg.channels_last, cuda, "channels_last"),
        bf16=switch(cfg.bf16, False, "bf16", cuda_only=True),
        optimizer_impl=impl,
        compile=switch(cfg.compile, False, "compile"),
        sync_bn=sync and world > 1,
    )


def make_optimizer(params, cfg: TrainConfig, impl: str) -> torch.optim.SGD:
    kw: dict[str, Any] = {}
    if impl == "fused":
        kw["fused"] = True
    elif impl == "foreach":
        kw["foreach"] = True
    else:
        kw["foreach"] = False
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kw)


def build_network(cfg: TrainConfig, genotype: Genotype, num_classes: int) -> nn.Module:
    cls = NetworkImageNet if cfg.dataset == "imagenet" else NetworkCIFAR
    try:
        return cls(
            genotype,
            C=cfg.init_channels,
            num_classes=num_classes,
            layers=cfg.layers,
            auxiliary=cfg.auxiliary,
            drop_path_prob=0.0,
        )
    except ValueError as e:
        raise ConfigError(f"network: {e}") from None


class Stepper:
    """One optimisation step on a global batch: this rank's slice, micro-batches, clip, finiteness check, SGD."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, rt: Runtime):
        self.model, self.cfg, self.rt = model, cfg, rt
        if rt.channels_last:
            model.to(memory_format=torch.channels_last)
        self.net: nn.Module = model
        if rt.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [rt.device.index] if rt.device.type == "cuda" else None
            self.net = DDP(model, device_ids=ids)
        if rt.compile:
            self.net = torch.compile(self.net)
        self.opt = make_optimizer(model.parameters(), cfg, rt.optimizer_impl)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def autocast(self):
        if self.rt.bf16:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def local_slice(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part [lo, hi) of a global batch of n images."""
        per, extra = divmod(n, self.rt.world)
        lo = self.rt.rank * per + min(self.rt.rank, extra)
        return lo, lo + per + (1 if self.rt.rank < extra else 0)

    def step(self, x: torch.Tensor, y: torch.Tensor, global_step: int) -> dict[str, torch.Tensor]:
        """Train on this rank's slice (x, y) of the global batch (``local_slice``; the data sources cut it);
        return this rank's sums (``SUMS``: Σ main loss·m, Σ aux loss·m, correct, images m) as device scalars."""
        cfg, rt = self.cfg, self.rt
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n_local = x.shape[0]
        # Loss weights so that the DDP average over ranks is the global-batch mean.
        micro = [
            c
            for c in zip(torch.tensor_split(x, cfg.accum_steps), torch.tensor_split(y, cfg.accum_steps))
            if c[0].shape[0] > 0
        ]
        self.opt.zero_grad(set_to_none=True)
        sums = torch.zeros(4, device=x.device, dtype=torch.float64)
        loss_check = torch.zeros((), device=x.device)
        for i, (xm, ym) in enumerate(micro):
            sync = i == len(micro) - 1 or not rt.distributed
            ctx = self.net.no_sync() if not sync and hasattr(self.net, "no_sync") else contextlib.nullcontext()
            with ctx:
                with self.autocast():
                    logits, aux = self.net(xm)
                    main = self.criterion(logits.float(), ym)
                    loss = main
                    aux_loss = torch.zeros((), device=x.device)
                    if aux is not None and cfg.auxiliary_weight > 0:
                        aux_loss = self.criterion(aux.float(), ym)
                        loss = loss + cfg.auxiliary_weight * aux_loss
                if nan_fault("train", global_step + 1):
                    loss = loss * float("nan")
                loss_check = loss_check + loss.detach()
                (loss * (xm.shape[0] / max(n_local, 1))).backward()
            with torch.no_grad():
                m = ym.shape[0]
                sums += torch.stack(
                    [
                        main.detach().double() * m,
                        aux_loss.detach().double() * m,
                        (logits.argmax(1) == ym).sum().double(),
                        torch.full((), float(m), device=x.device, dtype=torch.float64),
                    ]
                )
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        # One host sync per step checks both the loss and the (all-reduced) gradient norm.
        finite = torch.isfinite(torch.stack([loss_check.float(), norm.float()]))
        if not bool(finite.all().item()):
            what = "training loss" if not bool(finite[0].item()) else "gradient norm"
            raise NonFiniteError(what, global_step, "weights")
        self.opt.step()
        return dict(zip(SUMS, sums.unbind()))


# ------------------------------------------------------------------------------------------- data


class _TensorData:
    """CIFAR-10 / built-in images held on the device, augmented there a whole batch at once."""

    def __init__(self, data: ImageData, cfg: TrainConfig, device: torch.device):
        self.data, self.cfg, self.device = data, cfg, device
        n = data.train_x.shape[0] if cfg.subset is None else min(cfg.subset, data.train_x.shape[0])
        self.num_train = n
        self.num_test = data.test_x.shape[0] if cfg.test_subset is None else min(cfg.test_subset, data.test_x.shape[0])
        self.num_classes = data.num_classes
        self.input_shape = tuple(data.train_x.shape[1:])

    def train_batches(
        self, stream: BatchStream, gen: torch.Generator, local: Callable[[int], tuple[int, int]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's slice ``local(n)`` of each global batch of n; the augmentation's random numbers are
        drawn for the whole batch (``augment``'s ``part``), so every image comes out as in one process."""
        d = self.data
        while stream.pos < stream.num:
            pick = stream.next()
            lo, hi = local(len(pick))
            idx = to_device(pick[lo:hi], self.device)
            yield (
                augment(d.train_x[idx], gen, d.mean, d.std, cutout=self.cfg.cutout, part=(lo, len(pick))),
                d.train_y[idx],
            )

    def test_batches(self, rank: int, world: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        d = self.data
        idx_all = torch.arange(self.num_test, device=self.device)[rank::world]
        for start in range(0, len(idx_all), batch_size):
            idx = idx_all[start : start + batch_size]
            yield augment(d.test_x[idx], None, d.mean, d.std, train=False), d.test_y[idx]


class _FolderData:
    """ImageNet in the class-per-folder layout (train/ and val/), read with torchvision (extra ``imagenet``).

    The batch order comes from the checkpointed stream, so a resume continues at the same image; the
    augmentation inside loader workers uses per-worker RNGs and is not bit-reproducible across a resume.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.train_set, self.val_set = load_image_folder(cfg.data_dir)
        self.num_train = len(self.train_set) if cfg.subset is None else min(cfg.subset, len(self.train_set))
        self.num_test = len(self.val_set) if cfg.test_subset is None else min(cfg.test_subset, len(self.val_set))
        self.num_classes = len(self.train_set.classes)
        self.input_shape = (3, 224, 224)

    def _loader(self, dataset, batches: list[list[int]]):
        return torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )

    def train_batches(
        self, stream: BatchStream, gen: torch.Generator, local: Callable[[int], tuple[int, int]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's slice ``local(n)`` of each global batch of n: only those images are decoded."""
        perm = stream.perm.tolist()
        bs = stream.batch_size
        batches = [perm[p : p + bs] for p in range(stream.pos, stream.num, bs)]
        sizes = [len(b) for b in batches]
        mine = [b[slice(*local(len(b)))] for b in batches]
        for n, (x, y) in zip(sizes, self._loader(self.train_set, mine)):
            stream.pos += n
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def test_batches(self, rank: int, world: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = list(range(self.num_test))[rank::world]
        batches = [idx[p : p + batch_size] for p in range(0, len(idx), batch_size)]
        for x, y in self._loader(self.val_set, batches):
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def load_image_folder(data_dir: str | Path | None):
    """(train, val) torchvision ImageFolder datasets with the §6 transforms; DataError when anything is missing."""
    if not data_dir:
        raise DataError(
            "no data folder given: pass --data-dir, the folder holding train/ and val/ (one sub-folder per class)",
            "imagenet",
        )
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError("no such folder (pass --data-dir to point at the ImageNet train/ and val/ folders)", str(root))
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise DataError(
                f"missing the {part}/ folder (expected {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG)",
                str(root),
            )
    try:
        from torchvision import datasets, transforms
    except ImportError:
        raise DataError(
            "reading ImageNet needs torchvision and pillow: pip install 'dartsnas[imagenet]'", "imagenet"
        ) from None
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
            transforms.ToTensor(),
            norm,
        ]
    )
    val_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), norm])
    try:
        return (datasets.ImageFolder(str(root / "train"), train_tf), datasets.ImageFolder(str(root / "val"), val_tf))
    except (OSError, RuntimeError, FileNotFoundError) as e:
        raise DataError(f"cannot read the image folders ({e})", str(root)) from None


def _load_data(cfg: TrainConfig, device: torch.device, data: ImageData | None):
    if cfg.dataset == "imagenet":
        return _FolderData(cfg, device)
    if data is None:
        data = load_images(cfg.dataset, cfg.data_dir, device, cfg.download)
    else:
        data = data.to(device)
    if cfg.eval_split == "search_valid":  # D_w / D_alpha exactly as the search splits them (train_portion 0.5)
        half = data.train_x.shape[0] // 2
        data = ImageData(
            data.name,
            data.train_x[:half],
            data.train_y[:half],
            data.train_x[half:],
            data.train_y[half:],
            data.mean,
            data.std,
            data.num_classes,
        )
    return _TensorData(data, cfg, device)


# ------------------------------------------------------------------------------------------- distributed


def init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world, device). Under torchrun (RANK and WORLD_SIZE set, world > 1) joins the process group."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "RANK" not in os.environ or world <= 1:
        return 0, 1, resolve_device(cfg.device)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        from ..distributed import init_process_group  # a fresh store key space per torchrun restart

        init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, dist.get_world_size(), device


# ------------------------------------------------------------------------------------------- state

# The running sums of a training epoch (per rank; all-reduced for records and checkpoints).
SUMS = ("loss", "aux_loss", "correct", "count")
BEST_KIND = "cnn-train-best"
BEST = "best.pt"


def keeps_best(cfg: TrainConfig) -> bool:
    """ImageNet training keeps the weights of its best top-1 epoch in ``best.pt``, as the reference does
    (spec §6); CIFAR-10 training reports the final epoch (§5) and keeps no best."""
    return cfg.dataset == "imagenet"


@dataclass(init=False, eq=False)
class _State(LoopState):
    """Everything that changes during a training (saved generically, see ``loops.state``)."""

    model: nn.Module
    opt: torch.optim.SGD = saved_as("optimizer")
    stream: BatchStream
    aug_gen: torch.Generator = saved_as("augment")
    best_top1: float = -1.0  # ImageNet: the best top-1 so far (``keeps_best``)
    best_epoch: int = -1  # its 0-based epoch index
    cfg: TrainConfig = transient()
    genotype: Genotype = transient()
    rt: Runtime = transient()
    stepper: Stepper = transient()

    def __init__(self, cfg: TrainConfig, genotype: Genotype, data, rt: Runtime):
        LoopState.__init__(self)
        self.cfg, self.genotype, self.rt = cfg, genotype, rt
        seed_everything(cfg.seed)
        model = build_network(cfg, genotype, data.num_classes)
        if rt.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(rt.device)
        if rt.rank > 0:  # own drop-path masks per rank; rank 0 draws what a single process would
            torch.manual_seed(cfg.seed + 7919 * rt.rank)
        self.stepper = Stepper(self.model, cfg, rt)
        self.opt = self.stepper.opt
        self.stream = BatchStream(data.num_train, cfg.batch_size, cfg.seed * 1000 + 1, epoch_mode=True)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 3)
        self.best_top1, self.best_epoch = -1.0, -1


class TrainTask(Task):
    """Training from scratch as a driver task: SGD steps on the training stream, test-set evaluation."""

    kind = KIND
    seconds_key = "seconds"

    def __init__(self, cfg: TrainConfig, genotype: Genotype, data, rt: Runtime, log=None):
        self.cfg, self.data, self.rt, self.device = cfg, data, rt, rt.device
        self.state = _State(cfg, genotype, data, rt)
        self.sums = Sums(SUMS, rt.device)
        # CUDA-graph step (cfg.cuda_graph): made in begin_epoch, after a resume has loaded the optimizer state
        # (the graph holds its tensors), and anew whenever the drop-path probability changes. graph_eager runs
        # its body uncaptured (CPU tests of the arithmetic).
        self.graphed = None
        self.graph_eager = False
        self.use_graph = False
        if cfg.cuda_graph:
            why = [
                text
                for bad, text in (
                    (rt.device.type != "cuda", f"a CUDA device (this run uses {rt.device})"),
                    (rt.distributed, "one process"),
                    (cfg.accum_steps != 1, "accum_steps=1"),
                    (rt.compile, "compile off"),
                )
                if bad
            ]
            self.use_graph = not why
            if why and log is not None:
                log(f"note: cuda_graph needs {', '.join(why)}: the eager step runs")

    def steps_per_epoch(self) -> int:
        return self.state.stream.steps_per_epoch()

    def begin_epoch(self) -> None:
        st, cfg = self.state, self.cfg
        self.lr = learning_rate(cfg, st.epoch)
        self.dp = drop_path_probability(cfg, st.epoch)
        for group in st.opt.param_groups:
            group["lr"] = self.lr
        st.model.drop_path_prob = self.dp
        st.model.train()
        if self.use_graph and (self.graphed is None or self.graphed.drop_prob != self.dp):
            from .graphed import GraphedTrainStep

            if self.graphed is not None:
                self.graphed.check()
            self.graphed = GraphedTrainStep(st.stepper, eager=self.graph_eager)

    def batches(self):
        return self.data.train_batches(self.state.stream, self.state.aug_gen, self.state.stepper.local_slice)

    def step(self, batch) -> dict[str, torch.Tensor]:
        x, y = batch
        if self.graphed is not None:
            return self.graphed.step(x, y, self.lr, self.state.global_step)
        return self.state.stepper.step(x, y, self.state.global_step)

    def check(self) -> None:
        if self.graphed is not None:
            self.graphed.check()

    def stats(self, s: dict[str, float]) -> dict[str, float]:
        n = max(s["count"], 1)
        return {"loss": s["loss"] / n, "acc": s["correct"] / n}

    def end_of_epoch(self, s: dict[str, float]) -> dict[str, Any]:
        st = self.state
        test = evaluate(st.model, self.data, self.rt, self.cfg.eval_batch_size, st.stepper.autocast)
        n = max(s["count"], 1.0)
        record = {
            "epoch": st.epoch,
            "lr": self.lr,
            "drop_path_prob": self.dp,
            "train_loss": s["loss"] / n,
            "train_aux_loss": s["aux_loss"] / n,
            "train_acc": s["correct"] / n,
            **test,
        }
        if keeps_best(self.cfg) and test["test_top1"] > st.best_top1:
            st.best_top1, st.best_epoch = test["test_top1"], st.epoch
            record["best"] = True
        return record

    def summary(self, r: dict[str, Any]) -> str:
        return (
            f"epoch {r['epoch'] + 1}/{self.cfg.epochs}: train loss {r['train_loss']:.4f} acc "
            f"{r['train_acc']:.3f} | test loss {r['test_loss']:.4f} top1 {r['test_top1']:.3f} "
            f"top5 {r['test_top5']:.3f}{' *' if r.get('best') else ''} | lr {r['lr']:.3g} "
            f"drop path {r['drop_path_prob']:.3f}"
        )

    def new_epoch(self) -> None:
        self.state.stream.new_epoch()

    def after_epoch(self, record: dict[str, Any], run: Run) -> None:
        if record.get("best") and self.rt.main:
            st = self.state
            save_checkpoint(
                run.path / BEST,
                {
                    "kind": BEST_KIND,
                    "config": self.cfg.to_dict(),
                    "genotype": genotype_to_dict(st.genotype),
                    "model": st.model.state_dict(),
                    "epoch": record["epoch"],
                    "test_top1": record["test_top1"],
                },
            )

    def _rank_rng(self) -> list[Any] | None:
        if not self.rt.distributed:
            return None
        import torch.distributed as dist

        mine = {"torch": torch.get_rng_state()}
        if self.rt.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.rt.device)
        out: list[Any] = [None] * self.rt.world
        dist.all_gather_object(out, mine)
        return out

    def extra_state(self) -> dict[str, Any]:
        """Collective under DDP (gathers every rank's RNG): the driver calls it on all ranks."""
        extra: dict[str, Any] = {"genotype": genotype_to_dict(self.state.genotype), "world_size": self.rt.world}
        ranks = self._rank_rng()
        if ranks is not None:
            extra["rank_rng"] = ranks
        return extra

    def load_extra(self, ck: dict[str, Any]) -> None:
        rt = self.rt
        ranks = ck.get("rank_rng")
        if ranks is not None and len(ranks) == rt.world:
            torch.set_rng_state(ranks[rt.rank]["torch"])
            if "cuda" in ranks[rt.rank] and rt.device.type == "cuda":
                torch.cuda.set_rng_state(ranks[rt.rank]["cuda"], rt.device)
        elif rt.rank > 0:
            torch.manual_seed(self.cfg.seed + 7919 * rt.rank + self.state.global_step)


def resolve_genotype(spec: str) -> Genotype:
    g = load_genotype(spec)
    if not isinstance(g, Genotype):
        raise GenotypeError("is a recurrent genotype; use --space rnn to train it", spec)
    return g


# ------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, data, rt: Runtime, batch_size: int, autocast=None) -> dict[str, float]:
    """Eval mode (running BN statistics, no drop path, no aux head), plain cross-entropy, top-1/top-5.

    Under DDP each rank evaluates every world-th test image and the sums are all-reduced.
    """
    was = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)  # loss, top1, top5, count
    for x, y in data.test_batches(rt.rank, rt.world, batch_size):
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast() if autocast else contextlib.nullcontext():
            out, _ = model(x)
        out = out.float()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top == y[:, None]
        sums += torch.stack(
            [
                F.cross_entropy(out, y, reduction="sum").double(),
                hit[:, 0].sum().double(),
                hit.any(1).sum().double(),
                torch.full((), float(y.numel()), device=rt.device, dtype=torch.float64),
            ]
        )
    model.train(was)
    s = rt.all_reduce(sums).tolist()
    n = max(s[3], 1.0)
    return {"test_loss": s[0] / n, "test_top1": s[1] / n, "test_top5": s[2] / n}


def evaluate_run(
    run_dir: str | Path, data_dir: str | None = None, device: str = "auto", batch_size: int | None = None
) -> dict[str, Any]:
    """Re-evaluate a training run's checkpoint on the test set (``dartsnas eval RUN``)."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT if run_dir.is_dir() else run_dir
    ck = load_checkpoint(path, expect_kind=KIND)
    try:
        cfg = TrainConfig.from_dict(ck["config"])
        genotype = genotype_from_dict(ck["genotype"])
    except (KeyError, ConfigError, GenotypeError) as e:
        raise CheckpointError(f"holds no usable config or genotype ({e})", str(path)) from None
    changes: dict[str, Any] = {"device": device}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    cfg = cfg.replace(**changes)
    dev = resolve_device(cfg.device)
    rt = Runtime(device=dev)
    data = _load_data(cfg, dev, None)
    model = build_network(cfg, genotype, data.num_classes).to(dev)
    try:
        model.load_state_dict(ck["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"weights do not fit the network ({str(e)[:200]})", str(path)) from None
    out = evaluate(model, data, rt, batch_size or cfg.eval_batch_size)
    return {
        "run": str(run_dir),
        "epoch": int(ck.get("epoch", 0)),
        "complete": ck.get("epoch") == cfg.epochs,
        **out,
        "test_error_percent": 100.0 * (1.0 - out["test_top1"]),
        "num_test": data.num_test,
    }


# ------------------------------------------------------------------------------------------- the loop


def run_train(
    cfg: TrainConfig, run_dir: str | Path | None = None, resume: bool = False, log=None, data: ImageData | None = None
) -> TrainResult:
    """Train (or continue training) a genotype from scratch; writes config, metrics, checkpoints, results, curves.

    Messages go to ``log`` (a callable taking one string), else to the ``dartsnas`` logger.
    """
    rank, world, device = init_distributed(cfg)
    set_determinism(device, cfg.deterministic)  # cudnn.benchmark on CUDA unless deterministic
    rt = resolve_runtime(cfg, device, rank, world)
    run = Run(cfg, KIND, run_dir, resume, "train", log, ranks=rt)
    ck = run.checkpoint
    if ck is not None:
        try:
            genotype = genotype_from_dict(ck["genotype"])
        except (KeyError, GenotypeError) as e:
            raise CheckpointError(f"holds no usable genotype ({e})", str(run.checkpoint_path)) from None
        if int(ck.get("world_size", 1)) != world:
            run.log(
                f"note: resuming a {ck.get('world_size', 1)}-process run with {world} process(es); the "
                "data order and learning rate are unchanged, per-rank random numbers are re-seeded"
            )
    else:
        genotype = resolve_genotype(cfg.genotype)
    data = _load_data(cfg, device, data)
    task = TrainTask(cfg, genotype, data, rt, log=run.log)
    st = task.state
    n_params = count_parameters(st.model, include_auxiliary=False)
    n_params_aux = count_parameters(st.model, include_auxiliary=True)
    madds = count_multiply_adds(st.model, data.input_shape)
    run.start(task, files=[("genotype.json", lambda folder: save_genotype(genotype, folder / "genotype.json"))])
    run.log(
        f"train: {cfg.genotype} on {cfg.dataset}, {data.num_train} images, {task.steps_per_epoch()} steps/epoch, "
        f"{n_params:,} weights (+aux {n_params_aux - n_params:,}), {madds / 1e6:.1f}M multiply-adds, "
        f"device {device} x{world}, run dir {run.path}"
    )
    run.loop(task)
    history = run.history()
    last = history[-1] if history else {}
    cuda = device.type == "cuda"
    hours = st.wall * world / 3600.0
    results = {
        "genotype": cfg.genotype,
        "dataset": cfg.dataset,
        "epochs": cfg.epochs,
        "test_error_percent": 100.0 * (1.0 - last.get("test_top1", float("nan"))),
        "test_top5_error_percent": 100.0 * (1.0 - last.get("test_top5", float("nan"))),
        "test_top1": last.get("test_top1"),
        "test_top5": last.get("test_top5"),
        "test_loss": last.get("test_loss"),
        "num_test": data.num_test,
        "eval_split": cfg.eval_split,
        "params": n_params,
        "params_with_auxiliary": n_params_aux,
        "multiply_adds": madds,
        "input_shape": list(data.input_shape),
        "wall_seconds": st.wall,
        "gpu_hours": hours if cuda else 0.0,
        "cpu_hours": 0.0 if cuda else hours,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        **{k: v for k, v in rt.describe().items() if k != "device"},
        "torch": torch.__version__,
    }
    if keeps_best(cfg) and st.best_epoch >= 0:
        # best.pt holds these weights; best_epoch counts from 1 like every epoch number a user reads
        results.update(
            {
                "best_epoch": st.best_epoch + 1,
                "best_test_top1": st.best_top1,
                "best_test_error_percent": 100.0 * (1.0 - st.best_top1),
            }
        )
    if rt.main:
        write_json(run.path / "results.json", results)
        run.record({"event": "final", **results})
        _save_curves(history, run.path)
    return TrainResult(run.path, results, history)


def _save_curves(history: list[dict[str, Any]], run_dir: Path) -> None:
    from ..checkpoint import atomic_write_text
    from ..plot import curves_svg

    atomic_write_text(
        run_dir / "loss.svg", curves_svg(history, [("train_loss", "train loss"), ("test_loss", "test loss")], "loss")
    )
    atomic_write_text(
        run_dir / "accuracy.svg",
        curves_svg(
            history, [("train_acc", "train acc"), ("test_top1", "test top-1"), ("test_top5", "test top-5")], "accuracy"
        ),
    )
