"""``dartsnas compare``: several search methods × seeds on one space and dataset, as one experiment.

The work happens in ``dartsnas.protocol.compare``; every search is a ``dartsnas search`` run scheduled by the
protocol's runner (local processes or SLURM jobs, ``--jobs``, ``--resume``, failed runs recorded and excluded).
``dartsnas report EXP`` turns the experiment into the comparison table.
"""

from __future__ import annotations

import argparse

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
    "Example: dartsnas compare --methods darts,beta-darts --seeds 1,2,3 --space nb201 --preset nb201-proxy "
    "--data-dir data/cifar10 -e experiments/cmp --random-samples 100; then dartsnas report experiments/cmp. "
    "Repeated NB201 searches of one method: --methods darts --seeds 1,2,3."
)

_FIELDS = [
    "space",
    "methods",
    "seeds",
    "preset",
    "dataset",
    "data_dir",
    "order",
    "search_epochs",
    "random_samples",
    "random_search",
    "train_preset",
    "final_epochs",
    "final_seed",
    "jobs",
    "devices",
    "threads",
    *LAUNCHER_FIELDS,
]


def _compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="search several methods × seeds on one space and dataset (one experiment)",
        description="Run one search per method and seed with otherwise identical settings, each a "
        "`dartsnas search` run in EXPERIMENT/runs/search-<method>-seed<N>/, and "
        "summarize per method: the final cells, on NB201 their table test accuracies "
        "(mean ± std over seeds), search cost and peak memory. `dartsnas report "
        "EXPERIMENT` writes the comparison table and page.",
        epilog=_EPILOG,
    )
    p.add_argument("--methods", "-m", help="comma-separated methods (default darts), e.g. darts,pc-darts,beta-darts")
    p.add_argument("--seeds", help="comma-separated search seeds, the same for every method (default 1,2,3)")
    p.add_argument("--space", choices=["nb201", "cnn", "darts-7"], help="search space (default nb201)")
    p.add_argument(
        "--preset",
        metavar="NAME",
        help="preset of every search (default nb201-proxy on NB201, paper in the DARTS space)",
    )
    p.add_argument("--dataset", help="cifar10 or builtin (default: the preset's)")
    p.add_argument(
        "--data-dir",
        dest="data_dir",
        metavar="DIR",
        help="dataset folder (or $DARTSNAS_DATA); the NB201 table is found beside it",
    )
    p.add_argument("--order", type=str, help="search order 1 or 2 (default: the preset's)")
    p.add_argument("--epochs", dest="search_epochs", type=str, help="epochs of every search (default: the preset's)")
    p.add_argument(
        "--search-set",
        dest="search_set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override of every search (repeatable), e.g. --search-set subset=1280",
    )
    p.add_argument(
        "--method-args",
        dest="method_args",
        action="append",
        default=None,
        metavar="METHOD=ARGS",
        help="method_args of one method (repeatable), e.g. --method-args pc-darts=K=2,warmup_epochs=5",
    )
    p.add_argument(
        "--random-samples",
        dest="random_samples",
        type=str,
        metavar="N",
        help="NB201: add the random baseline, N uniformly drawn cells per seed looked up in the table "
        "(no training, zero cost; reports the mean accuracy of a random cell)",
    )
    p.add_argument(
        "--random-search",
        dest="random_search",
        nargs="?",
        const="20",
        type=str,
        metavar="N",
        help="NB201: add the trained random search, N drawn cells per seed (default 20) each trained "
        "random_search_epochs epochs (default 10, --set random_search_epochs=E) on the search's data, the best by "
        "validation accuracy looked up in the table; about the cost of one first-order proxy search",
    )
    p.add_argument(
        "--final",
        action="store_true",
        help="DARTS space: then train each search's cell once (final-<method>-seed<N>) for the test error "
        "mean ± std over seeds",
    )
    p.add_argument(
        "--train-preset", dest="train_preset", metavar="NAME", help="preset of the final trainings (default paper)"
    )
    p.add_argument("--final-epochs", dest="final_epochs", type=str, help="epochs of each final training (paper 600)")
    p.add_argument("--final-seed", dest="final_seed", type=str, help="training seed of every final run (default 0)")
    p.add_argument(
        "--train-set",
        dest="train_set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override of every final training (repeatable)",
    )
    p.add_argument(
        "--experiment", "-e", metavar="DIR", help="the experiment directory (default experiments/compare-<time>)"
    )
    add_scheduler_options(p, "any compare field, e.g. --set random_samples=100")
    add_show_config(p)
    add_threads_option(p)
    add_launcher_options(p)
    p.set_defaults(func=_cmd_compare)


def _config(args: argparse.Namespace):
    from ..protocol import Experiment
    from ..protocol.compare import CompareConfig

    overrides = list(args.set)
    for name in _FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            overrides.append(f"{name}={v}")
    if args.final:
        overrides.append("final=true")
    lists = {
        k: getattr(args, k) for k in ("search_set", "method_args", "train_set", "slurm_setup") if getattr(args, k, None)
    }
    data_dir = args.data_dir or next((s.split("=", 1)[1] for s in args.set if s.startswith("data_dir=")), None)
    if data_dir and not args.dataset and not args.resume and not any(s.startswith("dataset=") for s in args.set):
        # --data-dir alone: the dataset the folder holds, never the presets' built-in data
        dataset, folder = infer_dataset(data_dir, "cnn", ("cifar10", "builtin"))
        overrides = [o for o in overrides if not o.startswith(("dataset=", "data_dir="))]
        overrides += [f"dataset={dataset}", f"data_dir={folder}"]
    if args.resume:
        if not args.experiment:
            raise ConfigError("--resume needs --experiment DIR")
        exp = Experiment(args.experiment)
        if exp.exists():
            saved = exp.read().get("config", {})
            return CompareConfig.build(overrides=overrides, **{**saved, **lists})
        exp.check_resumable(True)  # a mistyped --experiment: nothing read, nothing created
    return CompareConfig.build(None, overrides, **lists)


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..protocol.compare import compare

    cfg = _config(args)
    if args.show_config:
        return show_config(cfg)
    res = compare(cfg, args.experiment, resume=args.resume, retry_failed=args.retry_failed)
    s = res.summary
    print(f"experiment: {res.experiment}")
    print(f"summary:    {res.experiment / 'summary.json'}  (table: dartsnas report {res.experiment})")
    if s.get("failed"):
        print(f"failed runs (recorded, excluded): {', '.join(s['failed'])}")
    return 0 if s.get("complete") and any(m["n"] for m in s["methods"]) else 3


PARSERS = [_compare_parser]
