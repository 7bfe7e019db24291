"""Methods × seeds on one space and dataset as one experiment (issue 9 item 6, issue 10 items 3-4).

A *compare* experiment runs one ``dartsnas search`` per (method, seed) through the protocol's ``Runner`` (so
``jobs``, ``resume``, failed-run semantics and the SLURM launcher are the protocol's) and summarizes them per
method: the final cells, on NB201 their table accuracies (mean ± std over seeds), the search cost and peak
memory each search wrote to its ``results.json``, and the collapse diagnostics per epoch. Layout::

    EXP/experiment.json                kind "compare", space, methods, the resolved CompareConfig
    EXP/runs/search-<method>-seed<N>/  one search run each
    EXP/status/, EXP/logs/             per run, as in every protocol experiment
    EXP/random.json                    NB201 only, with random_samples > 0: the table-lookup random baseline
    EXP/random_search.json             NB201 only, with random_search > 0: the trained random search, per seed
    EXP/summary.json                   per run and per method (rewritten after every run)

The random baseline (``random_samples`` = N) draws N cells uniformly from the 5^6 NB201 cells per seed and
looks them up in the table: no training, zero cost. The table holds test accuracies only, so the baseline
selects nothing: it reports the mean accuracy of a uniformly random cell (per seed, then mean ± std over
seeds), the level a search must beat. The random search (``random_search`` = N,
``protocol.random_search``) trains N drawn cells per seed for ``random_search_epochs`` epochs each on the
search's data, selects the best by validation accuracy and only then looks it up: a baseline with about one
search's budget, run in this process after the searches, one seed at a time (a resume skips finished seeds).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ConfigBase, require
from ..errors import ConfigError, RunDirError
from ..loops.common import write_json
from .experiment import (
    EXPERIMENT_FILE,
    SUMMARY_FILE,
    Experiment,
    ExperimentResult,
    Task,
    _now,
    _read_json,
)
from .random_search import RANDOM_SEARCH_EPOCHS
from .runner import Runner, check_devices

KIND = "compare"
RANDOM_FILE = "random.json"
RANDOM_SEARCH_FILE = "random_search.json"
DEFAULT_PRESET = {"nb201": "nb201-proxy", "cnn": "paper", "darts-7": "paper"}


@dataclass(kw_only=True)
class CompareConfig(ConfigBase):
    """One comparison: every method of ``methods`` searched once per seed of ``seeds`` with the same settings."""

    space: Literal["nb201", "cnn", "darts-7"] = "nb201"  # the search's --space (cnn = the DARTS space)
    methods: str = "darts"  # comma-separated method names (a+b compositions allowed)
    seeds: str = "1,2,3"  # comma-separated search seeds, the same for every method
    preset: str | None = None  # the searches' preset; None: nb201-proxy (NB201), paper (DARTS space)
    dataset: str | None = None
    data_dir: str | None = None
    order: int | None = None  # None: the preset's
    search_epochs: int | None = None  # None: the preset's
    search_set: list = field(default_factory=list)  # key=value overrides of every search
    method_args: list = field(default_factory=list)  # "METHOD=key=value,..." per method
    random_samples: int = 0  # NB201: random cells looked up per seed (0: no random baseline)
    random_search: int = 0  # NB201: cells trained per seed by the random search (0: none; protocol/random_search.py)
    random_search_epochs: int = RANDOM_SEARCH_EPOCHS  # training epochs of each of those cells
    # DARTS space: one training of each search's derived cell (final-<method>-seed<N>), for test error mean ± std
    final: bool = False
    train_preset: str = "paper"
    final_epochs: int | None = None  # None: the train preset's (paper 600)
    final_seed: int = 0  # the training seed of every final run (the same for every cell)
    train_set: list = field(default_factory=list)  # key=value overrides of every final training
    # The Runner's fields, as in ProtocolConfig (the runs go to local processes or SLURM jobs alike).
    jobs: int = 1
    devices: str | None = None
    threads: int | None = None
    launcher: Literal["local", "slurm", "submitit-local"] = "local"
    slurm_partition: str | None = None
    slurm_gpus: int = 1
    slurm_cpus: int = 8
    slurm_time: int = 2880
    slurm_mem: int | None = None
    slurm_account: str | None = None
    slurm_setup: list = field(default_factory=list)

    HARMLESS = ConfigBase.HARMLESS | frozenset(
        {
            "jobs",
            "devices",
            "data_dir",
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
        # Seconds per run (tests, smoke checks): the tiny settings of each space.
        "tiny-nb201": {
            "space": "nb201",
            "preset": "nb201-proxy",
            "seeds": "1,2",
            "search_epochs": 1,
            "search_set": ["subset=64", "batch_size=32", "hessian_batch=16"],
        },
        "tiny": {"space": "cnn", "preset": "tiny", "seeds": "1,2", "search_epochs": 1},
    }

    def check(self) -> list[str]:
        p: list[str] = []
        try:
            methods = self.method_list()
            require(p, bool(methods), "methods: give at least one method")
            require(p, len(set(methods)) == len(methods), f"methods: duplicate method in {self.methods!r}")
        except ValueError as e:
            p.append(str(e))
        try:
            seeds = self.seed_list()
            require(p, bool(seeds), "seeds: give at least one seed")
            require(p, len(set(seeds)) == len(seeds), f"seeds: duplicate seed in {self.seeds!r}")
        except ValueError:
            p.append(f"seeds: expected comma-separated integers, got {self.seeds!r}")
        for name in ("jobs", "slurm_cpus", "slurm_time"):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        require(p, self.slurm_gpus >= 0, f"slurm_gpus: must be non-negative, got {self.slurm_gpus}")
        require(p, self.random_samples >= 0, f"random_samples: must be non-negative, got {self.random_samples}")
        require(
            p,
            self.random_samples == 0 or self.space == "nb201",
            "random_samples: the table-lookup random baseline exists for NB201 only (the DARTS space has no "
            "table; use `dartsnas random` for its trained baseline)",
        )
        require(p, self.random_search >= 0, f"random_search: must be non-negative, got {self.random_search}")
        require(
            p,
            self.random_search == 0 or self.space == "nb201",
            "random_search: the trained random search exists for NB201 only (its selected cell is looked up in "
            "the table; use `dartsnas random` in the DARTS space)",
        )
        require(
            p,
            self.random_search_epochs > 0,
            f"random_search_epochs: must be positive, got {self.random_search_epochs}",
        )
        require(
            p,
            not self.final or self.space != "nb201",
            "final: NB201 cells are looked up in the table, not trained (final trainings are for the DARTS space)",
        )
        require(p, self.order in (None, 1, 2), f"order: must be 1 or 2, got {self.order}")
        for name in ("search_epochs", "final_epochs", "threads", "slurm_mem"):
            v = getattr(self, name)
            require(p, v is None or v > 0, f"{name}: must be positive, got {v}")
        for name in ("search_set", "train_set", "slurm_setup"):
            v = getattr(self, name)
            require(
                p,
                isinstance(v, list) and all(isinstance(s, str) for s in v),
                f"{name}: expected a list of strings, got {v!r}",
            )
        for name in ("search_set", "train_set"):
            v = getattr(self, name)
            require(p, all("=" in s for s in v if isinstance(s, str)), f"{name}: expected key=value strings, got {v!r}")
        if not p:
            try:
                unknown = sorted(set(self.method_arg_map()) - set(self.method_list()))
                require(p, not unknown, f"method_args: for methods not compared: {', '.join(unknown)}")
            except ValueError as e:
                p.append(str(e))
        if self.devices is not None and self.devices != "cpu":
            ok = all(s.strip().isdigit() for s in self.devices.split(","))
            require(p, ok, f"devices: expected 'cpu' or GPU ids like '0,1', got {self.devices!r}")
        return p

    # ------------------------------------------------------------------ derived values
    def method_list(self) -> list[str]:
        return [m.strip() for m in str(self.methods).split(",") if m.strip()]

    def seed_list(self) -> list[int]:
        return [int(s) for s in str(self.seeds).split(",") if s.strip()]

    def method_arg_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.method_args:
            name, sep, args = str(item).partition("=")
            if not sep or not name.strip() or not args.strip():
                raise ValueError(f"method_args: expected METHOD=key=value,..., got {item!r}")
            out[name.strip()] = args.strip()
        return out

    def resolved_preset(self) -> str:
        return self.preset or DEFAULT_PRESET[self.space]

    def search_overrides(self, method: str, seed: int | None = None) -> list[str]:
        """The ``key=value`` overrides one search gets (its command line builds the same config)."""
        over = [f"method={method}"]
        if self.space != "cnn":
            over.insert(0, f"space={self.space}")
        if self.dataset is not None:
            over.append(f"dataset={self.dataset}")
        if self.data_dir is not None:
            over.append(f"data_dir={self.data_dir}")
        if self.order is not None:
            over.append(f"order={self.order}")
        if self.search_epochs is not None:
            over.append(f"epochs={self.search_epochs}")
        args = self.method_arg_map().get(method)
        if args:
            over.append(f"method_args={args}")
        over += list(self.search_set)
        if seed is not None:
            over.append(f"seed={seed}")
        return over

    def train_overrides(self) -> list[str]:
        """The ``key=value`` overrides of every final training."""
        over = [f"dataset={self.dataset}"] if self.dataset is not None else []
        if self.data_dir is not None:
            over.append(f"data_dir={self.data_dir}")
        if self.final_epochs is not None:
            over.append(f"epochs={self.final_epochs}")
        return over + list(self.train_set)

    def search_config(self, method: str, seed: int | None = None):
        from ..loops.search import SearchConfig

        return SearchConfig.build(self.resolved_preset(), self.search_overrides(method, seed))


def run_name(method: str, seed: int) -> str:
    return f"search-{method}-seed{seed}"


def _search_argv(cfg: CompareConfig, method: str, seed: int, run_dir: Path) -> tuple[list[str], list[str]]:
    space = ["--space", cfg.space]
    argv = ["search", *space, "--preset", cfg.resolved_preset(), "--run-dir", str(run_dir), "--no-progress"]
    # space= is the --space option's own override; the rest travel as --set, in the config's order.
    argv += [a for kv in cfg.search_overrides(method, seed) if not kv.startswith("space=") for a in ("--set", kv)]
    return argv, ["search", *space, "--resume", str(run_dir), "--no-progress"]


def final_name(method: str, seed: int) -> str:
    return f"final-{method}-seed{seed}"


def _train_argv(cfg: CompareConfig, genotype: Path, run_dir: Path) -> tuple[list[str], list[str]]:
    argv = [
        "train",
        "--space",
        "cnn",
        "--preset",
        cfg.train_preset,
        "--genotype",
        str(genotype),
        "--seed",
        str(cfg.final_seed),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    argv += [a for kv in cfg.train_overrides() for a in ("--set", kv)]
    return argv, ["train", "--space", "cnn", "--resume", str(run_dir), "--no-progress"]


def _check(cfg: CompareConfig) -> bool:
    """Build every method's search config and read the data once, before anything is created: a bad method,
    a method not wired for the space, a bad override or missing data stop here with one message. Returns
    whether every run is small (built-in data)."""
    problems: list[str] = []
    configs = []
    for m in cfg.method_list():
        try:
            configs.append(cfg.search_config(m, seed=cfg.seed_list()[0]))
        except ConfigError as e:
            problems += [f"{m}: {x}" for x in e.problems] if getattr(e, "problems", None) else [f"{m}: {e}"]
    if cfg.final:
        from ..loops.train import TrainConfig

        try:
            train = TrainConfig.build(cfg.train_preset, cfg.train_overrides())
            if train.dataset not in ("cifar10", "builtin"):
                problems.append(f"train_preset: final trainings of searched cells run on CIFAR-10, not {train.dataset}")
        except ConfigError as e:
            problems += [f"final training: {x}" for x in e.problems]
    if problems:
        raise ConfigError(problems)
    check_devices(cfg, [c.device for c in configs] + ([train.device] if cfg.final else []))
    for dataset, data_dir in sorted({(c.dataset, c.data_dir) for c in configs}, key=str):
        if dataset != "builtin":
            from ..data.images import load_images

            load_images(dataset, data_dir)
    if cfg.random_samples or cfg.random_search:
        from ..space.lookup import load_table, resolve_table

        load_table(resolve_table(None, configs[0].data_dir))
    return all(c.dataset == "builtin" for c in configs)


def _create(exp: Experiment, cfg: CompareConfig, resume: bool) -> None:
    from .. import __version__

    if exp.exists():
        if not resume:
            raise RunDirError(
                "already holds an experiment; pass --resume to continue it or choose another --experiment",
                str(exp.path),
            )
        data = exp.read()
        if data.get("kind") != KIND:
            raise RunDirError(f"holds a {data.get('kind')!r} experiment, not {KIND!r}", str(exp.path))
        try:
            old = CompareConfig.from_dict(data.get("config", {}))
        except ConfigError as e:
            raise RunDirError(f"holds an unreadable compare config ({e})", str(exp.path)) from None
        bad, _ = cfg.diff(old)
        if bad:
            raise ConfigError(
                [
                    "the experiment was started with another config (resume keeps it): "
                    + "; ".join(bad).replace("checkpoint=", "experiment=")
                ]
            )
        data["config"] = cfg.to_dict()
        exp.write(data)
        return
    exp.check_resumable(resume)
    try:
        for sub in ("runs", "status", "logs"):
            (exp.path / sub).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create ({e.strerror or e})", str(exp.path)) from None
    exp.write(
        {
            "kind": KIND,
            "space": cfg.space,
            "methods": cfg.method_list(),
            "seeds": cfg.seed_list(),
            "created": _now(),
            "dartsnas_version": __version__,
            "config": cfg.to_dict(),
        }
    )


def compare(
    cfg: CompareConfig,
    experiment: str | Path | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    log=print,
) -> ExperimentResult:
    """Search every method with every seed (one run each, ``cfg.jobs`` at a time), add the NB201 random
    baseline when asked, and summarize per method (``summary.json``)."""
    exp = Experiment(experiment or Path("experiments") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    exp.check_resumable(resume)
    small = _check(cfg)
    with exp.lock():
        _create(exp, cfg, resume)
        if cfg.random_samples and not (exp.path / RANDOM_FILE).exists():
            write_json(exp.path / RANDOM_FILE, random_baseline_nb201(cfg))
        tasks = []
        for seed in cfg.seed_list():  # seed-major: with several jobs every method gets its first seed early
            for m in cfg.method_list():
                name = run_name(m, seed)
                argv, res = _search_argv(cfg, m, seed, exp.run_dir(name))
                tasks.append(Task(name, "search", argv, res, meta={"method": m, "seed": seed}))
        if cfg.final:  # after every search: the trainings wait for their search and never delay the next one
            for seed in cfg.seed_list():
                for m in cfg.method_list():
                    name, search = final_name(m, seed), run_name(m, seed)
                    argv, res = _train_argv(cfg, exp.run_dir(search) / "genotype.json", exp.run_dir(name))
                    tasks.append(Task(name, "final", argv, res, deps=[search], meta={"method": m, "seed": seed}))
        Runner(exp, cfg, resume, retry_failed, log, small, on_change=lambda: summarize_compare(exp.path)).run(tasks)
        if cfg.random_search:
            run_random_search(exp.path, cfg, log)
        summary = summarize_compare(exp.path)
    for m in summary["methods"]:
        log(_method_line(m, summary["space"]))
    rsearch = summary.get("random_search")
    if rsearch and rsearch.get("cifar10"):
        acc = rsearch["cifar10"]
        log(
            f"random search ({rsearch['samples']} cells × {rsearch['epochs_each']} epochs): {rsearch['seeds']} "
            f"seed(s), CIFAR-10 table accuracy {_pm(acc)} %"
        )
    if summary["failed"]:
        log(f"failed (excluded): {', '.join(summary['failed'])}")
    return ExperimentResult(exp.path, summary)


def _method_line(m: dict[str, Any], space: str) -> str:
    head = f"{m['method']}: {m['n']} of {m['runs']} run(s) done"
    if space == "nb201" and m.get("cifar10"):
        acc = m["cifar10"]
        head += f", CIFAR-10 table accuracy {_pm(acc)} %"
    return head


def _pm(stat: dict[str, Any]) -> str:
    """mean ± std, or the mean alone for one value (a "± 0.00" would read as a measured std)."""
    return f"{stat['mean']:.2f}" + (f" ± {stat['std']:.2f}" if stat.get("n", 2) > 1 else "")


# ============================================================================================ random baseline


def random_baseline_nb201(cfg: CompareConfig) -> dict[str, Any]:
    """``random_samples`` uniformly drawn NB201 cells per seed, looked up in the table (no training)."""
    from ..space.lookup import load_table, lookup, resolve_table
    from ..space.nb201 import EDGES, NB201_PRIMITIVES, NB201Genotype

    c = cfg.search_config("darts")
    table = load_table(resolve_table(None, c.data_dir))
    per_seed = []
    for seed in cfg.seed_list():
        rng = random.Random(seed)
        cells = []
        for _ in range(cfg.random_samples):
            g = NB201Genotype(tuple((rng.choice(NB201_PRIMITIVES), j) for _, j in EDGES))
            row = lookup(g, table)
            cells.append(row.to_dict())
        acc = {k: sum(x[k] for x in cells) / len(cells) for k in ("cifar10", "cifar100", "imagenet16_120")}
        per_seed.append({"seed": seed, "cells": cells, "mean": acc})
    return {
        "samples": cfg.random_samples,
        "table": str(table.path),
        "per_seed": per_seed,
        "selection": "none (the table has test accuracies only): the mean of the drawn cells",
        "cost_hours": 0.0,
    }


def run_random_search(path: Path, cfg: CompareConfig, log=print) -> dict[str, Any]:
    """The trained random search of every seed, in this process, ``random_search.json`` rewritten after each
    seed; seeds already in the file are kept (a resume continues with the next seed)."""
    import torch

    from ..loops.common import resolve_device
    from .random_search import random_search_nb201

    out_path = path / RANDOM_SEARCH_FILE
    old = _read_json(out_path)
    done = {s["seed"]: s for s in (old.get("per_seed") or []) if isinstance(s, dict)} if isinstance(old, dict) else {}
    if cfg.devices == "cpu":
        device = torch.device("cpu")
    elif cfg.devices:
        device = resolve_device(f"cuda:{cfg.devices.split(',')[0].strip()}")
    else:
        device = resolve_device("auto")
    if device.type == "cpu":  # the searches' thread choice (protocol runner), for this process's trainings
        from ..threads import choose_threads

        torch.set_num_threads(choose_threads(False, explicit=cfg.threads)[0])
    out = {
        "samples": cfg.random_search,
        "epochs_each": cfg.random_search_epochs,
        "selection": "best validation accuracy on the D_alpha images (ties: the first drawn); table read after",
        "per_seed": [],
    }
    data = None
    for seed in cfg.seed_list():
        if seed not in done:
            c = cfg.search_config("darts", seed)
            if data is None:
                from ..data.images import load_images

                data = load_images(c.dataset, c.data_dir, "cpu", c.download)
            log(f"random search seed {seed}: {cfg.random_search} cells × {cfg.random_search_epochs} epochs")
            done[seed] = random_search_nb201(
                c, seed, cfg.random_search, cfg.random_search_epochs, data=data, device=device, log=log
            )
        out["per_seed"] = [done[s] for s in cfg.seed_list() if s in done]
        write_json(out_path, out)
    return out


# ============================================================================================ summary


def mean_std(values: list[float]) -> dict[str, Any] | None:
    """Mean and sample standard deviation (n − 1; 0 for one value) of finite values; None when there are none."""
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return None
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": vals}


def _history(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and rec.get("event") != "final":
                out.append(rec)
    return out


def _eval_params(gdict: Any) -> int | None:
    """Weights of the evaluation network of a DARTS-space cell at C = 36, 20 cells, CIFAR-10, without the
    auxiliary head (the paper's Table 1 count)."""
    from ..errors import GenotypeError
    from ..evalnet.cnn import NetworkCIFAR, count_parameters
    from ..space.genotype import Genotype, genotype_from_dict

    try:
        g = genotype_from_dict(gdict)
    except (GenotypeError, KeyError, TypeError, ValueError):
        return None
    if not isinstance(g, Genotype):
        return None
    return count_parameters(NetworkCIFAR(g, 36, 10, 20, auxiliary=True), include_auxiliary=False)


def summarize_compare(path: str | Path) -> dict[str, Any]:
    """Read every run of a compare experiment; per method: cells, accuracies (NB201), cost, peak memory,
    diagnostics per epoch. Failed and unfinished runs are listed and left out of the statistics."""
    exp = Experiment(path)
    data = exp.read()
    space = data.get("space", "nb201")
    methods = list(data.get("methods") or [])
    seeds = list(data.get("seeds") or [])
    runs, per_method = [], []
    for m in methods:
        rows = []
        for seed in seeds:
            name = run_name(m, seed)
            st = exp.status(name)
            run_dir = exp.run_dir(name)
            res = _read_json(run_dir / "results.json")
            res = res if isinstance(res, dict) else {}
            status = st.get("status", "pending")
            if status == "done" and not res:
                status, st = "failed", {**st, "error": "finished without results.json"}
            hist = _history(run_dir)
            row = {
                "name": name,
                "method": m,
                "seed": seed,
                "status": status,
                "error": st.get("error"),
                "device": res.get("device") or st.get("device"),
                "wall_seconds": res.get("wall_seconds"),
                "gpu_hours": res.get("gpu_hours"),
                "cpu_hours": res.get("cpu_hours"),
                "peak_memory_bytes": res.get("peak_memory_bytes"),
                "peak_memory_source": res.get("peak_memory_source"),
                "lambda_max": [r.get("hessian_eig") for r in hist],
                "skip_count": [r.get("skip_count") for r in hist],
                "epochs": len(hist),
            }
            if space == "nb201":
                table = res.get("table") or {}
                row.update(
                    {
                        "arch_str": res.get("arch_str"),
                        "table_row": table.get("row"),
                        "cifar10": table.get("cifar10"),
                        "cifar100": table.get("cifar100"),
                        "imagenet16_120": table.get("imagenet16_120"),
                    }
                )
            else:
                gdict = res.get("genotype") or (_read_json(run_dir / "genotype.json") if status == "done" else None)
                row.update({"genotype": gdict, "params": _eval_params(gdict) if status == "done" else None})
                if (data.get("config") or {}).get("final"):
                    row["final"] = _final_row(exp, final_name(m, seed))
            rows.append(row)
        runs += rows
        per_method.append(_method_stats(m, rows, space))
    random_base = _read_json(exp.path / RANDOM_FILE)
    random_search = _read_json(exp.path / RANDOM_SEARCH_FILE)
    summary = {
        "experiment": str(exp.path),
        "kind": KIND,
        "space": space,
        "methods": per_method,
        "seeds": seeds,
        "config": data.get("config", {}),
        "runs": runs,
        "random": _random_stats(random_base) if isinstance(random_base, dict) else None,
        "random_search": _random_search_stats(random_search) if isinstance(random_search, dict) else None,
        "complete": all(r["status"] in ("done", "failed") for r in runs)
        and all(r["final"]["status"] in ("done", "failed") for r in runs if r.get("final") and r["status"] == "done"),
        "failed": [r["name"] for r in runs if r["status"] == "failed"]
        + [r["final"]["name"] for r in runs if r.get("final") and r["final"]["status"] == "failed"],
        "updated": _now(),
    }
    write_json(exp.path / SUMMARY_FILE, summary)
    return summary


def _final_row(exp: Experiment, name: str) -> dict[str, Any]:
    """The final training of one search's cell: status, test error, its own cost."""
    st = exp.status(name)
    res = _read_json(exp.run_dir(name) / "results.json")
    res = res if isinstance(res, dict) else {}
    status = st.get("status", "pending")
    err = res.get("test_error_percent")
    if status == "done" and not (isinstance(err, (int, float)) and math.isfinite(err)):
        status, st = "failed", {**st, "error": "finished without a test error"}
    return {
        "name": name,
        "status": status,
        "error": st.get("error"),
        "test_error_percent": err,
        "params": res.get("params"),
        "gpu_hours": res.get("gpu_hours"),
        "cpu_hours": res.get("cpu_hours"),
    }


def _method_stats(method: str, rows: list[dict[str, Any]], space: str) -> dict[str, Any]:
    done = [r for r in rows if r["status"] == "done"]
    out: dict[str, Any] = {
        "method": method,
        "runs": len(rows),
        "n": len(done),
        "failed": [r["name"] for r in rows if r["status"] == "failed"],
        "gpu_hours": mean_std([r["gpu_hours"] for r in done if r.get("gpu_hours")]),
        "cpu_hours": mean_std([r["cpu_hours"] for r in done if r.get("cpu_hours")]),
        "peak_memory_bytes": max(
            (r["peak_memory_bytes"] for r in done if isinstance(r.get("peak_memory_bytes"), int)), default=None
        ),
        "peak_memory_source": sorted({r["peak_memory_source"] for r in done if r.get("peak_memory_source")}),
    }
    if space == "nb201":
        for key in ("cifar10", "cifar100", "imagenet16_120"):
            out[key] = mean_std([r.get(key) for r in done])
        out["cells"] = [
            {"seed": r["seed"], "arch_str": r.get("arch_str"), "table_row": r.get("table_row")} for r in done
        ]
    else:
        out["cells"] = [{"seed": r["seed"], "genotype": r.get("genotype"), "params": r.get("params")} for r in done]
        out["params"] = mean_std([r["params"] for r in done if r.get("params")])
        finals = [r["final"] for r in done if r.get("final")]
        if finals:
            out["test_error"] = mean_std([f["test_error_percent"] for f in finals if f["status"] == "done"])
            out["final_failed"] = [f["name"] for f in finals if f["status"] == "failed"]
    return out


def _random_stats(rb: dict[str, Any]) -> dict[str, Any]:
    per_seed = rb.get("per_seed") or []
    out = {"samples": rb.get("samples"), "seeds": len(per_seed), "selection": rb.get("selection")}
    for key in ("cifar10", "cifar100", "imagenet16_120"):
        out[key] = mean_std([(s.get("mean") or {}).get(key) for s in per_seed])
    return out


def _random_search_stats(rs: dict[str, Any]) -> dict[str, Any]:
    """The selected cells' table accuracies (mean ± std over seeds) and the cost per seed."""
    per_seed = [s for s in rs.get("per_seed") or [] if isinstance(s, dict)]
    out: dict[str, Any] = {
        "samples": rs.get("samples"),
        "epochs_each": rs.get("epochs_each"),
        "seeds": len(per_seed),
        "selection": rs.get("selection"),
        "cells": [
            {
                "seed": s.get("seed"),
                "arch_str": s.get("arch_str"),
                "table_row": (s.get("table") or {}).get("row"),
                "valid_acc": s.get("valid_acc"),
            }
            for s in per_seed
        ],
        "gpu_hours": mean_std([s.get("gpu_hours") for s in per_seed if s.get("gpu_hours")]),
        "cpu_hours": mean_std([s.get("cpu_hours") for s in per_seed if s.get("cpu_hours")]),
    }
    for key in ("cifar10", "cifar100", "imagenet16_120"):
        out[key] = mean_std([(s.get("table") or {}).get(key) for s in per_seed])
    return out


def load_compare(path: str | Path) -> dict[str, Any]:
    """The experiment's compare summary, recomputed from its runs."""
    return summarize_compare(path)


def is_compare(path: str | Path) -> bool:
    data = _read_json(Path(path) / EXPERIMENT_FILE)
    return isinstance(data, dict) and data.get("kind") == KIND
