"""The method registry: a name -> validated hyper-parameters -> components (ROBUST-SPEC §3, §5).

``build_method("beta-darts")`` gives the method with its paper's hyper-parameters in its default space;
``build_method("pc-darts", args="K=2,warmup_epochs=1")`` overrides some (typed, checked: a bad value is a
``ConfigError``). Names compose with ``+`` where the papers compose them: ``sdarts-rs+darts-pt``,
``blank+darts-pt``.

A method's hyper-parameters may have per-space defaults (``MethodParams.space_defaults``): on NB201,
DARTS-PT tunes 25 epochs at a constant learning rate and has no topology step (§3.6). Values given in ``args``
win over them; ``check_space`` refuses the options that do not apply to a space.

``PROTOCOLS`` holds each method's search protocol in the DARTS space as ``SearchConfig`` overrides (batch,
learning rates, epochs), for the presets; the hooks do not depend on them. ``NB201_PROTOCOLS`` does the same
on NB201 and becomes the ``nb201-<method>`` presets (loops/search_hooks.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..config import ConfigBase, require
from ..errors import ConfigError
from .base import SPACES, Component, Method
from .pt import PerturbationSelection
from .variants import (
    AuxSkip,
    BetaDecay,
    Blank,
    DirichletMixing,
    GumbelHard,
    PartialChannels,
    Perturb,
)


@dataclass(kw_only=True)
class MethodParams(ConfigBase):
    """Base of the hyper-parameter records; ``default_space`` is the space the method's paper searched."""

    default_space: ClassVar[str] = "darts"
    #: per space, the defaults that differ from the fields' (applied unless given in the method's arguments)
    space_defaults: ClassVar[dict[str, dict[str, Any]]] = {}

    def check_epochs(self, epochs: int) -> list[str]:
        return []

    def check_space(self, space: str) -> list[str]:
        return []


@dataclass(kw_only=True)
class DartsParams(MethodParams):
    pass


@dataclass(kw_only=True)
class PCDartsParams(MethodParams):
    K: int = 4  # CIFAR-10 (ImageNet: 2)
    warmup_epochs: int = 15  # no α/β step in epochs 0-14 (ImageNet: 35)
    edge_norm: bool = True

    def check(self) -> list[str]:
        p: list[str] = []
        require(p, self.K >= 1, f"K: must be at least 1, got {self.K}")
        require(p, self.warmup_epochs >= 0, f"warmup_epochs: must be non-negative, got {self.warmup_epochs}")
        return p

    def check_epochs(self, epochs: int) -> list[str]:
        return (
            []
            if self.warmup_epochs < epochs
            else [
                f"warmup_epochs: {self.warmup_epochs} leaves no α step in {epochs} epochs "
                f"(shorten it, e.g. --set method_args=warmup_epochs={max(0, epochs // 2)})"
            ]
        )


@dataclass(kw_only=True)
class DartsMinusParams(MethodParams):
    schedule: str = "linear"

    def check(self) -> list[str]:
        p: list[str] = []
        require(p, self.schedule in ("linear", "cosine"), f"schedule: 'linear' or 'cosine', got {self.schedule!r}")
        return p


@dataclass(kw_only=True)
class BetaDartsParams(MethodParams):
    default_space: ClassVar[str] = "darts-7"  # the SDARTS family searches without `none`
    lam_max: float = 50.0
    horizon: int = 100  # hard-coded in the release (§3.3)

    def check(self) -> list[str]:
        p: list[str] = []
        require(p, self.lam_max >= 0, f"lam_max: must be non-negative, got {self.lam_max}")
        require(p, self.horizon > 0, f"horizon: must be positive, got {self.horizon}")
        return p


@dataclass(kw_only=True)
class SDartsParams(MethodParams):
    default_space: ClassVar[str] = "darts-7"
    eps_min: float = 0.03
    eps_max: float = 0.3
    attack_steps: int = 7  # ADV only

    def check(self) -> list[str]:
        p: list[str] = []
        require(p, 0 <= self.eps_min <= self.eps_max, f"eps_min/eps_max: need 0 <= {self.eps_min} <= {self.eps_max}")
        require(p, self.attack_steps >= 1, f"attack_steps: must be positive, got {self.attack_steps}")
        return p


@dataclass(kw_only=True)
class DrNASParams(MethodParams):
    default_space: ClassVar[str] = "darts-7"
    reg: str = "l2"  # "l2": Adam weight decay 1e-3 on α; "kl": + reg_scale·KL, weight decay 0
    reg_scale: float = 1e-3
    partial_channels: int = 1
    prune_epoch: int | None = None
    prune_keep: int = 4
    widen_to: int | None = None  # progressive: K after pruning (paper, DARTS space: 6 -> 4; NB201: 4 -> 2)

    def check(self) -> list[str]:
        p: list[str] = []
        require(p, self.reg in ("l2", "kl"), f"reg: 'l2' or 'kl', got {self.reg!r}")
        require(p, self.reg_scale >= 0, f"reg_scale: must be non-negative, got {self.reg_scale}")
        require(p, self.partial_channels >= 1, f"partial_channels: must be positive, got {self.partial_channels}")
        require(p, self.prune_keep >= 1, f"prune_keep: must be positive, got {self.prune_keep}")
        require(
            p,
            self.widen_to is None or (self.prune_epoch is not None and 1 <= self.widen_to < self.partial_channels),
            f"widen_to: needs prune_epoch and 1 <= widen_to < partial_channels ({self.partial_channels}), "
            f"got {self.widen_to}",
        )
        return p

    def check_epochs(self, epochs: int) -> list[str]:
        return (
            [f"prune_epoch: {self.prune_epoch} is never reached in {epochs} epochs (set method_args)"]
            if self.prune_epoch is not None and self.prune_epoch >= epochs
            else []
        )


# DrNAS's progressive variant on NB201 (ROBUST-SPEC §3.5): K 4 -> 2, 5 -> 3 ops, 50 + 50 epochs; the
# ``nb201-drnas-progressive`` preset (the ``nb201`` preset's 100 epochs with these method arguments).
DRNAS_NB201_PROGRESSIVE = "partial_channels=4,prune_epoch=50,prune_keep=3,widen_to=2"


@dataclass(kw_only=True)
class GDASParams(MethodParams):
    tau_max: float = 10.0
    tau_min: float = 0.1

    def check(self) -> list[str]:
        p: list[str] = []
        require(p, 0 < self.tau_min <= self.tau_max, f"tau_min/tau_max: need 0 < {self.tau_min} <= {self.tau_max}")
        return p


@dataclass(kw_only=True)
class PTParams(MethodParams):
    default_space: ClassVar[str] = "darts-7"
    # §3.6 on NB201: 25 tuning epochs (projections at 0, 5, 10, 15, 20, 24), constant lr, no topology step
    space_defaults: ClassVar[dict[str, dict[str, Any]]] = {
        "nb201": {"tune_epochs": 25, "cosine": False, "topology": False}
    }
    tune_epochs: int | None = None  # None: 5 per projection + 1 (86 in the DARTS space); NB201 default: 25
    interval: int = 5
    tune_lr: float = 0.0025
    tune_lr_min: float = 0.001
    cosine: bool = True  # NB201: constant
    topology: bool = True  # DARTS space: two inputs per node; NB201: none
    seed: int | None = None  # edge/node order; None: drawn from the run's seed

    def check(self) -> list[str]:
        p: list[str] = []
        require(
            p,
            self.tune_epochs is None or self.tune_epochs >= 1,
            f"tune_epochs: must be positive, got {self.tune_epochs}",
        )
        require(p, self.interval >= 1, f"interval: must be positive, got {self.interval}")
        require(
            p,
            0 < self.tune_lr_min <= self.tune_lr,
            f"tune_lr_min/tune_lr: need 0 < {self.tune_lr_min} <= {self.tune_lr}",
        )
        return p

    def check_space(self, space: str) -> list[str]:
        return (
            ["topology: NB201 keeps every edge, so DARTS-PT has no topology step there (topology=false)"]
            if space == "nb201" and self.topology
            else []
        )


@dataclass
class Entry:
    params: type[MethodParams]
    build: Callable[[Any], list[Component]]


REGISTRY: dict[str, Entry] = {
    "darts": Entry(DartsParams, lambda p: [Component()]),
    "pc-darts": Entry(PCDartsParams, lambda p: [PartialChannels(p.K, p.warmup_epochs, p.edge_norm)]),
    "darts-minus": Entry(DartsMinusParams, lambda p: [AuxSkip(p.schedule)]),
    "beta-darts": Entry(BetaDartsParams, lambda p: [BetaDecay(p.lam_max, p.horizon)]),
    "sdarts-rs": Entry(SDartsParams, lambda p: [Perturb(False, p.eps_min, p.eps_max, p.attack_steps)]),
    "sdarts-adv": Entry(SDartsParams, lambda p: [Perturb(True, p.eps_min, p.eps_max, p.attack_steps)]),
    "drnas": Entry(
        DrNASParams,
        lambda p: (
            ([PartialChannels(p.partial_channels, 0, False)] if p.partial_channels > 1 else [])
            + [DirichletMixing(p.reg, p.reg_scale, p.prune_epoch, p.prune_keep, p.widen_to)]
        ),
    ),
    "gdas": Entry(GDASParams, lambda p: [GumbelHard(p.tau_max, p.tau_min)]),
    "blank": Entry(DartsParams, lambda p: [Blank()]),
    "darts-pt": Entry(
        PTParams,
        lambda p: [
            PerturbationSelection(p.tune_epochs, p.interval, p.tune_lr, p.tune_lr_min, p.cosine, p.topology, p.seed)
        ],
    ),
}

# Search protocols in the DARTS space (ROBUST-SPEC §3), as SearchConfig overrides.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "darts": {},
    "pc-darts": {"batch_size": 256, "lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4, "epochs": 50},
    "darts-minus": {"epochs": 50, "batch_size": 64},
    "beta-darts": {"epochs": 50},
    "sdarts-rs": {"epochs": 50},
    "sdarts-adv": {"epochs": 50},
    "drnas": {"epochs": 50, "lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4},
    "gdas": {"epochs": 250},
    "blank": {},
    "darts-pt": {"epochs": 50 + 86},  # 50 supernet epochs, then 86 tuning epochs with 18 projections
}

# Search protocols on NB201 (ROBUST-SPEC §1.6, §3): the NB201 preset each method starts from and its overrides.
# The method's NB201 hyper-parameters come from ``space_defaults``. Where no paper ran the method on NB201
# (PC-DARTS: DrNAS quotes it; DARTS-: no release) the column is this project's choice [SPEC].
NB201_PROTOCOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "pc-darts": ("nb201", {}),  # K = 4, warm-up 15, edge β; the SDARTS-family column [SPEC]
    "darts-minus": ("nb201-autodl", {}),  # the DARTS-V1 column it is compared with: E = 50 [SPEC]
    "beta-darts": ("nb201", {}),
    "sdarts-rs": ("nb201", {}),
    "sdarts-adv": ("nb201", {}),
    "drnas": ("nb201", {}),  # K = 1 (§3.5)
    "gdas": ("nb201-autodl", {"epochs": 250}),  # AutoDL GDAS column (§1.6)
    "darts-pt": ("nb201", {"epochs": 100 + 25}),  # 100 supernet epochs, then 25 tuning epochs (§3.6)
}


def parse_args(args: str | dict[str, Any] | None) -> dict[str, Any]:
    if args is None or args == "":
        return {}
    if isinstance(args, dict):
        return dict(args)
    out = {}
    for item in args.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"method_args: expected key=value[,key=value...], got {item!r}")
        out[key.strip()] = value.strip()
    return out


def build_method(
    name: str, space: str | None = None, args: str | dict[str, Any] | None = None, epochs: int | None = None
) -> Method:
    """The method ``name`` (``a+b`` composes) in ``space`` (None: the first part's default space)."""
    parts = [n.strip() for n in name.split("+")]
    unknown = [n for n in parts if n not in REGISTRY]
    if unknown:
        raise ConfigError(f"method: unknown method {unknown[0]!r}; available: {', '.join(REGISTRY)}")
    values = parse_args(args)
    space = space or REGISTRY[parts[0]].params.default_space
    if space not in SPACES:
        raise ConfigError(f"space: unknown space {space!r}; available: {', '.join(SPACES)}")
    used: set[str] = set()
    components: list[Component] = []
    problems: list[str] = []
    for n in parts:
        cls = REGISTRY[n].params
        names = {f.name for f in fields(cls)}
        mine = {k: v for k, v in values.items() if k in names}
        used |= set(mine)
        params = cls.from_dict(mine, from_string=not isinstance(args, dict))
        for k, v in cls.space_defaults.get(space, {}).items():
            if k not in mine:
                setattr(params, k, v)
        problems += [f"{n}: {msg}" for msg in params.check_space(space)]
        if epochs is not None:
            problems += [f"{n}: {msg}" for msg in params.check_epochs(epochs)]
        components += REGISTRY[n].build(params)
    extra = set(values) - used
    if extra:
        problems.append(f"method_args: {', '.join(sorted(extra))} is no hyper-parameter of {name}")
    if problems:
        raise ConfigError(problems)
    return Method(name, components, space)
