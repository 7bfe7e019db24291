"""The protocol's configuration: one experiment's stages, presets, the runs' presets and overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import ConfigBase, require

DEFAULT_SAMPLES = {"cnn": 24, "rnn": 8}  # spec §9, §11.5
DEFAULT_SELECT_EPOCHS = {"cnn": 100, "rnn": 300}  # spec §9


@dataclass(kw_only=True)
class ProtocolConfig(ConfigBase):
    """One protocol experiment. Defaults are the paper's (4 second-order searches, 100/300-epoch selection)."""

    space: Literal["cnn", "rnn"] = "cnn"
    dataset: str | None = None  # passed to the searches and trainings (default: their presets')
    data_dir: str | None = None
    search_preset: str = "paper"  # a SearchConfig / RNNSearchConfig preset
    train_preset: str = "paper"  # a TrainConfig / RNNTrainConfig preset ("paper" = paper-ptb for rnn)
    order: Literal[1, 2] = 2  # search order (Table 1: DARTS second order)
    searches: int = 4
    seed: int = 1  # searches use seeds seed, seed+1, ... unless ``seeds`` is given
    seeds: str | None = None  # explicit search seeds, comma-separated
    search_epochs: int | None = None  # None: the search preset's (paper 50)
    select_epochs: int | None = None  # None: 100 (CNN) / 300 (RNN) with a paper preset, else the preset's
    select_seed: int = 0  # the training seed of every selection run (same for all cells)
    samples: int | None = None  # random baseline: None = 24 (CNN) / 8 (RNN)
    sample_seed: int = 0  # the random cells' generator
    final_runs: int = 10  # trainings of the final cell (paper: 10 on CIFAR-10)
    final_seed: int = 0  # final trainings use seeds final_seed, final_seed+1, ...
    final_epochs: int | None = None  # None: the train preset's (paper 600)
    search_set: list = field(default_factory=list)  # extra key=value overrides of the searches
    train_set: list = field(default_factory=list)  # ... of every training (selection and final)
    final_set: list = field(default_factory=list)  # ... of the final trainings only
    jobs: int = 1  # runs at a time
    devices: str | None = None  # "cpu" or GPU ids "0,1,..."; None: every visible GPU, else CPU
    threads: int | None = None  # CPU threads of each run; None: dartsnas.threads.choose_threads
    # Where the runs execute: local processes, SLURM jobs (submitit), or submitit's local executor (the same
    # job path on this machine, for testing a cluster setup).
    launcher: Literal["local", "slurm", "submitit-local"] = "local"
    slurm_partition: str | None = None
    slurm_gpus: int = 1  # GPUs per run (0: CPU jobs)
    slurm_cpus: int = 8  # CPUs per run
    slurm_time: int = 2880  # minutes per job; a run cut by the limit continues with --resume
    slurm_mem: int | None = None  # GB per run; None: the partition's default
    slurm_account: str | None = None
    slurm_setup: list = field(default_factory=list)  # shell lines run before each job (module load ...)

    HARMLESS = ConfigBase.HARMLESS | frozenset(
        {
            "jobs",
            "devices",
            "data_dir",
            "final_runs",
            "threads",
            "launcher",
            "slurm_partition",
            "slurm_gpus",
            "slurm_cpus",
            "slurm_time",
            "slurm_mem",
            "slurm_account",
            "slurm_setup",
        }
    )

    PRESETS = {
        "paper": {},
        "paper-first-order": {"order": 1},
        # Minutes on a laptop CPU: the built-in data, the loops' quick presets.
        "quick": {
            "search_preset": "quick",
            "train_preset": "quick",
            "order": 1,
            "searches": 2,
            "samples": 3,
            "final_runs": 2,
        },
        # Seconds per run, for the tests.
        "tiny": {
            "search_preset": "tiny",
            "train_preset": "tiny",
            "order": 1,
            "searches": 2,
            "search_epochs": 1,
            "samples": 3,
            "final_runs": 2,
        },
    }

    def check(self) -> list[str]:
        p: list[str] = []
        for name in ("searches", "jobs", "final_runs"):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("slurm_cpus", "slurm_time"):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        require(p, self.slurm_gpus >= 0, f"slurm_gpus: must be non-negative, got {self.slurm_gpus}")
        for name in ("search_epochs", "select_epochs", "samples", "final_epochs", "threads", "slurm_mem"):
            v = getattr(self, name)
            require(p, v is None or v > 0, f"{name}: must be positive, got {v}")
        require(
            p,
            isinstance(self.slurm_setup, list) and all(isinstance(x, str) for x in self.slurm_setup),
            f"slurm_setup: expected a list of shell lines, got {self.slurm_setup!r}",
        )
        for name in ("search_set", "train_set", "final_set"):
            v = getattr(self, name)
            ok = isinstance(v, list) and all(isinstance(s, str) and "=" in s for s in v)
            require(p, ok, f"{name}: expected a list of key=value strings, got {v!r}")
        if self.seeds is not None:
            try:
                seeds = self.search_seeds()
                require(p, len(set(seeds)) == len(seeds), f"seeds: duplicate seed in {self.seeds!r}")
            except ValueError:
                p.append(f"seeds: expected comma-separated integers, got {self.seeds!r}")
        if self.devices is not None and self.devices != "cpu":
            ok = all(s.strip().isdigit() for s in self.devices.split(","))
            require(p, ok, f"devices: expected 'cpu' or GPU ids like '0,1', got {self.devices!r}")
        if not p:
            p.extend(self._check_presets())
        return p

    def _check_presets(self) -> list[str]:
        p: list[str] = []
        s_cls, t_cls = loop_configs(self.space)
        require(
            p,
            self.search_preset in s_cls.PRESETS,
            f"search_preset: unknown {self.space} search preset {self.search_preset!r}; "
            f"available: {', '.join(s_cls.PRESETS)}",
        )
        require(
            p,
            self.resolved_train_preset() in t_cls.PRESETS,
            f"train_preset: unknown {self.space} train preset {self.train_preset!r}; "
            f"available: {', '.join(t_cls.PRESETS)}",
        )
        return p

    # ------------------------------------------------------------------ derived values
    def search_seeds(self) -> list[int]:
        if self.seeds is not None:
            return [int(s) for s in str(self.seeds).split(",") if s.strip()]
        return [self.seed + i for i in range(self.searches)]

    def resolved_train_preset(self) -> str:
        if self.space == "rnn" and self.train_preset == "paper":
            return "paper-ptb"
        return self.train_preset

    def resolved_select_epochs(self) -> int | None:
        if self.select_epochs is not None:
            return self.select_epochs
        return DEFAULT_SELECT_EPOCHS[self.space] if self.resolved_train_preset().startswith("paper") else None

    def resolved_samples(self) -> int:
        return self.samples if self.samples is not None else DEFAULT_SAMPLES[self.space]

    def search_config(self, seed: int | None = None):
        """The search config one search run gets (what its command line builds)."""
        s_cls, _ = loop_configs(self.space)
        over = self._common_overrides() + [f"order={self.order}"] + list(self.search_set)
        if self.search_epochs is not None:
            over.append(f"epochs={self.search_epochs}")
        if seed is not None:
            over.append(f"seed={seed}")
        return s_cls.build(self.search_preset, over)

    def _common_overrides(self) -> list[str]:
        out = []
        if self.dataset is not None:
            out.append(f"dataset={self.dataset}")
        if self.data_dir is not None:
            out.append(f"data_dir={self.data_dir}")
        return out


def loop_configs(space: str):
    """(search config class, train config class) of a space."""
    if space == "rnn":
        from ..loops.rnn_search import RNNSearchConfig
        from ..loops.rnn_train import RNNTrainConfig

        return RNNSearchConfig, RNNTrainConfig
    from ..loops.search import SearchConfig
    from ..loops.train import TrainConfig

    return SearchConfig, TrainConfig
