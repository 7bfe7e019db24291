"""The protocol's stages (spec §9): DARTS with selection, the random baseline, the final evaluation.

Each stage builds its runs' command lines (``Task``), hands them to the ``Runner`` and summarizes the outcome.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunDirError
from ..space.genotype import genotype_from_dict, genotype_to_dict, save_genotype
from ..space.sample import sample_genotypes
from .config import ProtocolConfig, loop_configs
from .experiment import Experiment, ExperimentResult, Task
from .runner import Runner, check_devices
from .summary import summarize


def _search_argv(cfg: ProtocolConfig, seed: int, run_dir: Path) -> tuple[list[str], list[str]]:
    argv = [
        "search",
        "--space",
        cfg.space,
        "--preset",
        cfg.search_preset,
        "--seed",
        str(seed),
        "--order",
        str(cfg.order),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    argv += [a for kv in cfg._common_overrides() for a in ("--set", kv)]
    if cfg.search_epochs is not None:
        argv += ["--epochs", str(cfg.search_epochs)]
    argv += [a for kv in cfg.search_set for a in ("--set", kv)]
    return argv, ["search", "--space", cfg.space, "--resume", str(run_dir), "--no-progress"]


def _train_argv(
    cfg: ProtocolConfig,
    genotype: Path,
    seed: int,
    run_dir: Path,
    epochs: int | None,
    selection: bool,
    extra: list[str] = (),
) -> tuple[list[str], list[str]]:
    argv = [
        "train",
        "--space",
        cfg.space,
        "--preset",
        cfg.resolved_train_preset(),
        "--genotype",
        str(genotype),
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    argv += [a for kv in cfg._common_overrides() for a in ("--set", kv)]
    if epochs is not None:
        argv += ["--epochs", str(epochs)]
    if selection and cfg.space == "cnn":
        argv += ["--set", "eval_split=search_valid"]  # train on D_w, score on D_alpha (spec §9 [SPEC])
    if selection and cfg.space == "rnn":
        argv += ["--set", "eval_test=false"]  # scored on the validation set; the test set stays unread (§9)
    argv += [a for kv in list(cfg.train_set) + list(extra) for a in ("--set", kv)]
    return argv, ["train", "--space", cfg.space, "--resume", str(run_dir), "--no-progress"]


def _check_loop_configs(cfg: ProtocolConfig, what: str) -> bool:
    """Build the configs the child processes will build and read their data once, so a bad override, a
    missing preset, a device the runs cannot have (``check_devices``) or missing / truncated data fails here,
    before any run (and before the experiment directory is created), not once per run. Returns whether every
    run is small (built-in data)."""
    _, t_cls = loop_configs(cfg.space)
    checked = []
    if what == "select":
        checked.append(cfg.search_config(seed=0))
    over = cfg._common_overrides() + list(cfg.train_set)
    if what in ("select", "random"):
        over.append("eval_split=search_valid" if cfg.space == "cnn" else "eval_test=false")
        if cfg.resolved_select_epochs() is not None:
            over.append(f"epochs={cfg.resolved_select_epochs()}")
    else:
        over += list(cfg.final_set)
        if cfg.final_epochs is not None:
            over.append(f"epochs={cfg.final_epochs}")
    checked.append(t_cls.build(cfg.resolved_train_preset(), over))
    check_devices(cfg, [c.device for c in checked])  # --devices, and a run device its slot cannot give it
    for source in sorted({(c.dataset, c.data_dir) for c in checked}, key=str):
        _check_data(cfg.space, *source)
    return all(c.dataset == "builtin" for c in checked)


def _check_data(space: str, dataset: str, data_dir: str | None) -> None:
    """Read the dataset the runs will read (a DataError names what is missing or damaged)."""
    if dataset == "builtin":
        return
    if space == "rnn":
        from ..data.text import load_corpus

        load_corpus(dataset, data_dir)
    elif dataset == "imagenet":
        from ..loops.train import load_image_folder

        load_image_folder(data_dir)
    else:
        from ..data.images import load_images

        load_images(dataset, data_dir)


def select(
    cfg: ProtocolConfig,
    experiment: str | Path | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    run_final: bool = False,
    log=print,
) -> ExperimentResult:
    """DARTS with selection (spec §9): S searches, a short training of each derived cell, the best by
    validation performance; optionally (``run_final``) the full evaluation of the pick."""
    exp = Experiment(experiment or _default_path("select"))
    exp.check_resumable(resume)
    small = _check_loop_configs(cfg, "select")
    with exp.lock():
        exp.create("select", cfg, resume)  # under the lock: two starts never both write experiment.json
        searches, trainings = [], []  # searches first: with several jobs they start before any training
        for seed in cfg.search_seeds():
            s_name, t_name = f"search-seed{seed}", f"select-seed{seed}"
            s_argv, s_res = _search_argv(cfg, seed, exp.run_dir(s_name))
            searches.append(Task(s_name, "search", s_argv, s_res, meta={"seed": seed}))
            t_argv, t_res = _train_argv(
                cfg,
                exp.run_dir(s_name) / "genotype.json",
                cfg.select_seed,
                exp.run_dir(t_name),
                cfg.resolved_select_epochs(),
                selection=True,
            )
            trainings.append(Task(t_name, "select", t_argv, t_res, deps=[s_name], meta={"seed": seed}))
        tasks = searches + trainings
        runner = Runner(exp, cfg, resume, retry_failed, log, small, on_change=lambda: summarize(exp.path))
        runner.run(tasks)
        summary = summarize(exp.path)
        _log_pick(summary, log)
    if run_final and summary.get("chosen"):
        return evaluate_final(cfg, exp.path, resume=True, retry_failed=retry_failed, log=log)
    return ExperimentResult(exp.path, summary)


def random_baseline(
    cfg: ProtocolConfig,
    experiment: str | Path | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    run_final: bool = False,
    log=print,
) -> ExperimentResult:
    """The random-search baseline (spec §9): N uniformly sampled cells, the same short training, the same pick."""
    exp = Experiment(experiment or _default_path("random"))
    exp.check_resumable(resume)
    small = _check_loop_configs(cfg, "random")
    with exp.lock():
        exp.create("random", cfg, resume)  # under the lock: two starts never both write experiment.json
        num_nodes = cfg.search_config().num_nodes
        tasks = []
        for k, g in enumerate(sample_genotypes(cfg.space, cfg.resolved_samples(), cfg.sample_seed, num_nodes)):
            path = exp.path / "genotypes" / f"random-{k}.json"
            if not path.exists():
                save_genotype(g, path)
            name = f"random-{k}"
            argv, res = _train_argv(
                cfg, path, cfg.select_seed, exp.run_dir(name), cfg.resolved_select_epochs(), selection=True
            )
            tasks.append(Task(name, "random", argv, res, meta={"index": k}))
        Runner(exp, cfg, resume, retry_failed, log, small, on_change=lambda: summarize(exp.path)).run(tasks)
        summary = summarize(exp.path)
        _log_pick(summary, log)
    if run_final and summary.get("chosen"):
        return evaluate_final(cfg, exp.path, resume=True, retry_failed=retry_failed, log=log)
    return ExperimentResult(exp.path, summary)


def evaluate_final(
    cfg: ProtocolConfig,
    experiment: str | Path | None = None,
    genotype: str | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    log=print,
) -> ExperimentResult:
    """R full trainings of one cell with seeds final_seed.. (spec §5/§7.6); mean ± std of the test metric.

    In an existing select/random experiment the cell defaults to its pick and the runs join that experiment;
    otherwise ``genotype`` (a published name, a genotype.json or a run folder) starts a "final" experiment.
    """
    from ..space.genotype import load_genotype

    exp = Experiment(experiment or _default_path("final"))
    exp.check_resumable(resume)
    if exp.exists() and exp.read().get("kind") in ("select", "random"):
        data = exp.read()
        stored = ProtocolConfig.from_dict(data["config"])
        # The final stage may bring its own settings; everything else is the experiment's.
        final_fields = {
            "final_runs",
            "final_seed",
            "final_epochs",
            "final_set",
            "jobs",
            "devices",
            "threads",
            "launcher",
        }
        mine = {k: v for k, v in cfg.to_dict().items() if k in final_fields or k.startswith("slurm_")}
        cfg = stored.replace(**mine)
        if genotype is None:
            chosen = summarize(exp.path).get("chosen")
            if not chosen:
                raise RunDirError(
                    "has no chosen cell yet (finish the selection first, or pass --genotype)", str(exp.path)
                )
            g = genotype_from_dict(chosen["genotype"])
            source = chosen["run"]
        else:
            g = load_genotype(genotype, kind=cfg.space)
            source = str(genotype)
        prev = data.get("final")
        if prev:
            if prev.get("genotype") != genotype_to_dict(g):
                raise ConfigError(
                    "the experiment's final evaluation uses another genotype "
                    f"({prev.get('source')}); use a new --experiment for this one"
                )
            bad = [
                f"{k}: experiment={prev.get(k)!r}, now={getattr(cfg, k)!r}"
                for k in ("final_seed", "final_epochs", "final_set")
                if prev.get(k) != getattr(cfg, k)
            ]
            if bad:
                raise ConfigError(["the final evaluation was started with other settings: " + "; ".join(bad)])
        small = _check_loop_configs(cfg, "final")
        data["final"] = {
            "genotype": genotype_to_dict(g),
            "source": source,
            "final_runs": cfg.final_runs,
            "final_seed": cfg.final_seed,
            "final_epochs": cfg.final_epochs,
            "final_set": cfg.final_set,
        }
        exp.write(data)
    else:
        if genotype is None:
            raise ConfigError("evaluate-final: give --genotype (or --experiment of a finished select/random run)")
        g = load_genotype(genotype, kind=cfg.space)
        small = _check_loop_configs(cfg, "final")
        extra = {
            "final": {
                "genotype": genotype_to_dict(g),
                "source": str(genotype),
                "final_runs": cfg.final_runs,
                "final_seed": cfg.final_seed,
                "final_epochs": cfg.final_epochs,
                "final_set": cfg.final_set,
            }
        }
        exp.create("final", cfg, resume, extra)
        if resume:
            data = exp.read()
            if data.get("final", {}).get("genotype") != genotype_to_dict(g):
                raise ConfigError("the experiment evaluates another genotype; resume it without --genotype change")
            data["final"]["final_runs"] = cfg.final_runs
            exp.write(data)
    with exp.lock():
        path = exp.path / "genotypes" / "final.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_genotype(g, path)
        tasks = []
        for r in range(cfg.final_runs):
            seed = cfg.final_seed + r
            name = f"final-seed{seed}"
            argv, res = _train_argv(
                cfg, path, seed, exp.run_dir(name), cfg.final_epochs, selection=False, extra=cfg.final_set
            )
            tasks.append(Task(name, "final", argv, res, meta={"seed": seed}))
        # ``resume`` for the runs: a final stage added to an experiment continues its own runs.
        Runner(exp, cfg, True, retry_failed, log, small, on_change=lambda: summarize(exp.path)).run(tasks)
        summary = summarize(exp.path)
    fin = summary.get("final") or {}
    if fin.get("n"):
        m = fin["metric"]
        log(
            f"final: {m} {fin['mean']:.3f}"
            + (f" ± {fin['std']:.3f} over {fin['n']} runs" if fin["n"] > 1 else " (1 run)")
            + (f"; {len(fin['failed'])} failed" if fin.get("failed") else "")
        )
    return ExperimentResult(exp.path, summary)


def _default_path(kind: str) -> Path:
    return Path("experiments") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}"


def _log_pick(summary: dict[str, Any], log) -> None:
    chosen = summary.get("chosen")
    failed = [r["name"] for r in summary.get("runs", []) if r.get("status") == "failed"]
    pending = [r["name"] for r in summary.get("runs", []) if r.get("status") not in ("done", "failed")]
    if chosen:
        log(
            f"chosen: {chosen['run']} ({chosen['metric']} {chosen['score']:.4g}); genotype in "
            f"{summary['experiment']}/genotypes/chosen.json"
        )
    else:
        log("no cell chosen: no selection run finished")
    if failed:
        log(f"failed (excluded from the pick): {', '.join(failed)}")
    if pending:
        log(f"unfinished (continue with --resume): {', '.join(pending)}")
