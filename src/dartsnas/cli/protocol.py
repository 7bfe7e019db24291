"""``dartsnas select | random | evaluate-final | report``: the paper's protocol (spec §9) as commands.

The work happens in ``dartsnas.protocol`` and ``dartsnas.report_table``; runs go to local processes or, with
``--launcher slurm``, to SLURM jobs through submitit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import (
    LAUNCHER_FIELDS,
    add_launcher_options,
    add_scheduler_options,
    add_show_config,
    add_threads_option,
    infer_dataset,
    show_config,
)

_EPILOG = (
    "Presets: paper (4 second-order searches, 100-epoch CIFAR-10 / 300-epoch PTB selection, 24/8 random "
    "cells, 10 final trainings), paper-first-order, quick (built-in data, minutes on a CPU), tiny (seconds "
    "per run). Every run is a `dartsnas search|train` process in EXPERIMENT/runs/; --resume continues an "
    "interrupted experiment without redoing finished runs."
)


def _common(p: argparse.ArgumentParser, final_opts: bool = True) -> None:
    p.add_argument(
        "--experiment", "-e", metavar="DIR", help="the experiment directory (default experiments/<command>-<time>)"
    )
    p.add_argument("--preset", metavar="NAME", help="paper (default), paper-first-order, quick, tiny")
    p.add_argument("--space", choices=["cnn", "rnn"], help="cell type (default cnn)")
    p.add_argument("--dataset", help="cifar10 / ptb, or builtin (default: the presets' dataset)")
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="dataset folder (or $DARTSNAS_DATA)")
    p.add_argument("--search-preset", dest="search_preset", metavar="NAME", help="preset of each search")
    p.add_argument("--train-preset", dest="train_preset", metavar="NAME", help="preset of each training")
    p.add_argument(
        "--select-epochs",
        dest="select_epochs",
        type=str,
        help="epochs of each selection training (paper 100 CIFAR-10, 300 PTB)",
    )
    p.add_argument("--select-seed", dest="select_seed", type=str, help="training seed of the selection runs")
    add_scheduler_options(p, "any protocol field, e.g. --set sample_seed=3")
    p.add_argument(
        "--search-set",
        dest="search_set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override of every search (repeatable), e.g. --search-set layers=5",
    )
    p.add_argument(
        "--train-set",
        dest="train_set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override of every training (repeatable), e.g. --train-set batch_size=64",
    )
    add_show_config(p)
    add_threads_option(p)
    add_launcher_options(p)
    if final_opts:
        p.add_argument("--final", action="store_true", help="then train the chosen cell --final-runs times")
        p.add_argument("--final-runs", dest="final_runs", type=str, help="final trainings (paper 10)")
        p.add_argument("--final-epochs", dest="final_epochs", type=str, help="epochs of each final training")


_FIELDS = [
    "space",
    "dataset",
    "data_dir",
    "search_preset",
    "train_preset",
    "select_epochs",
    "select_seed",
    "jobs",
    "devices",
    "order",
    "searches",
    "seeds",
    "search_epochs",
    "samples",
    "sample_seed",
    "final_runs",
    "final_epochs",
    "final_seed",
    "threads",
    *LAUNCHER_FIELDS,
]


def _config(args: argparse.Namespace, join: bool = False):
    """The protocol config from the options; with --resume (or ``join``) the experiment's own config plus them."""
    from ..protocol import Experiment, ProtocolConfig

    overrides = list(args.set)
    for name in _FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            overrides.append(f"{name}={v}")
    lists = {
        k: getattr(args, k) for k in ("search_set", "train_set", "final_set", "slurm_setup") if getattr(args, k, None)
    }
    data_dir = args.data_dir or next((s.split("=", 1)[1] for s in args.set if s.startswith("data_dir=")), None)
    if (
        data_dir
        and not args.dataset
        and not (args.resume or join)
        and not any(s.startswith("dataset=") for s in args.set)
    ):
        # --data-dir alone: the dataset the folder holds, never the presets' built-in data (issue 12 item 3)
        from ..data.text import CORPORA

        space = args.space or "cnn"
        dataset, folder = infer_dataset(data_dir, space, CORPORA if space == "rnn" else ("cifar10", "builtin"))
        overrides = [o for o in overrides if not o.startswith(("dataset=", "data_dir="))]
        overrides += [f"dataset={dataset}", f"data_dir={folder}"]
    if args.resume or join:
        if not args.experiment:
            raise ConfigError("--resume needs --experiment DIR")
        if args.preset:
            raise ConfigError("--preset cannot be combined with --resume (the experiment keeps its config)")
        exp = Experiment(args.experiment)
        if exp.exists():
            saved = exp.read().get("config", {})
            return ProtocolConfig.build(overrides=overrides, **{**saved, **lists})
        exp.check_resumable(True)  # a mistyped --experiment: nothing read, nothing created
    return ProtocolConfig.build(args.preset, overrides, **lists)


# ------------------------------------------------------------------------------------------- select


def _select_parser(sub) -> None:
    p = sub.add_parser(
        "select",
        help="DARTS with selection: N searches, a short training of each cell, the best",
        description="Run N searches with different seeds (paper 4), train each derived cell for "
        "the short selection budget on the weights' half of the training data, score "
        "it on the architecture half (never the test set), and pick the best.",
        epilog=_EPILOG,
    )
    _common(p)
    p.add_argument("--searches", type=str, help="number of searches (paper 4)")
    p.add_argument("--seeds", help="search seeds, comma-separated (default 1..N)")
    p.add_argument("--search-epochs", dest="search_epochs", type=str, help="epochs of each search (paper 50)")
    p.add_argument("--order", type=str, help="search order: 1 or 2 (paper preset 2)")
    p.set_defaults(func=_cmd_select)


def _cmd_select(args: argparse.Namespace) -> int:
    from ..protocol import select

    cfg = _config(args)
    if args.show_config:
        return show_config(cfg)
    res = select(cfg, args.experiment, resume=args.resume, retry_failed=args.retry_failed, run_final=args.final)
    return _done(res)


def _random_parser(sub) -> None:
    p = sub.add_parser(
        "random",
        help="the random-search baseline: N random cells, the same short training",
        description="Sample N cells uniformly from the search space (paper 24 CNN / 8 RNN) with a "
        "seeded generator, train each with the selection budget, pick the best by "
        "validation performance.",
        epilog=_EPILOG,
    )
    _common(p)
    p.add_argument("--samples", type=str, help="number of random cells (default 24 CNN, 8 RNN)")
    p.add_argument("--sample-seed", dest="sample_seed", type=str, help="seed of the cell sampler")
    p.set_defaults(func=_cmd_random)


def _cmd_random(args: argparse.Namespace) -> int:
    from ..protocol import random_baseline

    cfg = _config(args)
    if args.show_config:
        return show_config(cfg)
    res = random_baseline(
        cfg, args.experiment, resume=args.resume, retry_failed=args.retry_failed, run_final=args.final
    )
    return _done(res)


def _final_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate-final",
        help="train one cell R times with different seeds: mean ± std",
        description="Full evaluation (paper: 10 trainings on CIFAR-10) of the chosen cell of a "
        "select/random experiment (--experiment), or of --genotype in a new "
        "experiment; reports mean ± std of the test error (perplexity for rnn).",
        epilog=_EPILOG,
    )
    _common(p, final_opts=False)
    p.add_argument("--genotype", help="a published name, a genotype.json or a run folder (default: the pick)")
    p.add_argument("--runs", dest="final_runs", type=str, help="number of trainings (paper 10)")
    p.add_argument("--seed", dest="final_seed", type=str, help="first training seed (then +1, +2, ...)")
    p.add_argument("--epochs", dest="final_epochs", type=str, help="epochs of each training (paper 600)")
    p.add_argument(
        "--final-set",
        dest="final_set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override of the final trainings only (repeatable)",
    )
    p.set_defaults(func=_cmd_final)


def _cmd_final(args: argparse.Namespace) -> int:
    from ..protocol import Experiment, evaluate_final

    join = bool(
        args.experiment
        and Experiment(args.experiment).exists()
        and Experiment(args.experiment).read().get("kind") in ("select", "random")
    )
    # Joining a select/random experiment: its config (presets, data) is kept, the final options apply.
    cfg = _config(args, join=join)
    if args.show_config:
        return show_config(cfg)
    res = evaluate_final(
        cfg, args.experiment, genotype=args.genotype, resume=args.resume or join, retry_failed=args.retry_failed
    )
    return _done(res)


def _done(res) -> int:
    s = res.summary
    print(f"experiment: {res.experiment}")
    print(f"summary:    {res.experiment / 'summary.json'}")
    if s.get("failed"):
        print(f"failed runs (recorded, excluded): {', '.join(s['failed'])}")
    usable = s.get("chosen") or (s.get("final") or {}).get("n")
    return 0 if s.get("complete") and usable else 3


# ------------------------------------------------------------------------------------------- report


def _report_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="the paper's table (Markdown, CSV) and an HTML page from experiments",
        description="Build Table 1 of the paper (architecture, test error mean ± std, params, "
        "search cost in GPU-days, #ops, search method) from experiment directories, "
        "as report.md, report.csv and a self-contained report.html with the cells, "
        "the alphas over epochs and the search and training curves.",
    )
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT")
    p.add_argument(
        "--out", "-o", metavar="DIR", help="where to write (default: EXPERIMENT/report for one, else ./report)"
    )
    p.add_argument("--paper", action="store_true", help="add the paper's rows (spec §10) for comparison")
    p.add_argument("--title", default="DARTS reproduction", help="page title")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from ..report_table import write_report

    out = (
        Path(args.out)
        if args.out
        else (Path(args.experiments[0]) / "report" if len(args.experiments) == 1 else Path("report"))
    )
    paths = write_report(args.experiments, out, include_paper=args.paper, title=args.title)
    print(paths["markdown_text"], end="")
    for key in ("md", "csv", "html"):
        print(f"{key}: {paths[key]}")
    return 0


PARSERS = [_select_parser, _random_parser, _final_parser, _report_parser]
