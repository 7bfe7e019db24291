"""``dartsnas search`` (CNN or recurrent cell) and ``dartsnas derive`` (the genotype from a search checkpoint)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError
from .common import (
    add_config_options,
    add_model_options,
    apply_dataset_inference,
    follow_resumed_kind,
    launch,
    named_dataset,
    resolve_config,
    run_kind,
)


def _search_parser(sub) -> None:
    from ..loops.rnn_search import RNNSearchConfig
    from ..loops.search import SearchConfig

    p = sub.add_parser(
        "search",
        help="search a cell: CNN (CIFAR-10, built-in data) or recurrent with --space rnn (PTB, built-in corpus)",
        description="DARTS architecture search. Defaults are the paper's (50 epochs on CIFAR-10); "
        "with no dataset and no --data-dir given, a quick search on the built-in data. "
        "--data-dir without --dataset takes the dataset the folder holds.",
    )
    add_config_options(p, [*SearchConfig.PRESETS, "with --space rnn: " + ", ".join(RNNSearchConfig.PRESETS)])
    p.add_argument(
        "--space",
        choices=["cnn", "darts-7", "rnn", "nb201"],
        default="cnn",
        help="cell type: cnn (the DARTS space, 8 ops, default), darts-7 (the DARTS space without none), "
        "rnn, or nb201 (NAS-Bench-201)",
    )
    p.add_argument(
        "--method",
        help="darts (default), pc-darts, darts-minus, beta-darts, sdarts-rs, sdarts-adv, "
        "drnas, gdas, darts-pt, blank; a+b composes (e.g. sdarts-rs+darts-pt)",
    )
    p.add_argument("--dataset", help="cifar10 or builtin (rnn: ptb, wikitext2, builtin)")
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="dataset folder (or $DARTSNAS_DATA)")
    p.add_argument("--download", action="store_true", help="fetch CIFAR-10 if missing (needs internet)")
    p.add_argument("--order", type=str, help="1 (first order) or 2 (second order, unrolled)")
    p.add_argument("--epochs", type=str)
    p.add_argument("--batch-size", dest="batch_size", type=str)
    p.add_argument("--seed", type=str)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--subset", type=str, help="use only the first N images of each half")
    add_model_options(p)
    p.set_defaults(func=_cmd_search)


def _cmd_search(args: argparse.Namespace) -> int:
    follow_resumed_kind(args, "search")
    if args.space == "rnn":
        return _rnn_search(args)
    from ..data.images import DATASETS
    from ..loops.search import SearchConfig, run_search

    apply_dataset_inference(args, "cnn", DATASETS)
    if args.space in ("nb201", "darts-7"):
        args.set.insert(0, f"space={args.space}")
    names = [
        "dataset",
        "data_dir",
        "download",
        "order",
        "epochs",
        "batch_size",
        "seed",
        "device",
        "subset",
        "layers",
        "init_channels",
        "lr",
        "method",
    ]
    if not args.resume and not args.preset and not named_dataset(args) and not args.config:
        args.preset = "quick"  # no dataset named: the quick search on the built-in data
    cfg = resolve_config(SearchConfig, args, names)
    result = launch(args, cfg, "cnn-search", "search", run_search)
    if result is None:
        return 0
    if not result.history:  # a rank other than 0 of a data-parallel search: rank 0 reports
        return 0
    print(f"genotype: {result.run_dir / 'genotype.json'}")
    if cfg.space == "nb201":
        print(f"cell:     {result.run_dir / 'cell.svg'}, results: {result.run_dir / 'results.json'}")
    else:
        print(f"cells:    {result.run_dir / 'normal.svg'}, {result.run_dir / 'reduce.svg'}")
    return 0


def _rnn_search(args: argparse.Namespace) -> int:
    """``dartsnas search --space rnn``: the recurrent cell (spec §8)."""
    from ..data.text import CORPORA
    from ..loops.rnn_search import RNNSearchConfig, run_rnn_search

    for name, flag in (("subset", "--subset"), ("layers", "--layers"), ("init_channels", "--init-channels")):
        if getattr(args, name, None) is not None:
            raise ConfigError(
                f"{flag} is for image search; recurrent search uses --set nhid=N, "
                "max_steps_per_epoch=N or eval_tokens=N"
            )
    if args.download:
        raise ConfigError("--download is for CIFAR-10; PTB and WikiText-2 are read from --data-dir")
    if args.method not in (None, "darts"):
        raise ConfigError(f"--method {args.method}: the robust methods search CNN cells; recurrent search is DARTS")
    apply_dataset_inference(args, "rnn", CORPORA)
    names = ["dataset", "data_dir", "order", "epochs", "batch_size", "seed", "device", "lr"]
    if not args.resume and not args.preset and not named_dataset(args) and not args.config:
        args.preset = "quick"  # no dataset named: the quick search on the built-in corpus
    cfg = resolve_config(RNNSearchConfig, args, names)
    result = launch(args, cfg, "rnn-search", "rnn-search", run_rnn_search)
    if result is None:
        return 0
    final = result.final
    if final:
        print(f"valid ppl {final['valid_ppl']:.2f} after {final['epoch'] + 1} epochs")
    print(f"genotype: {result.run_dir / 'genotype.json'}")
    print(f"cell:     {result.run_dir / 'recurrent.svg'}")
    return 0


def _derive_parser(sub) -> None:
    p = sub.add_parser("derive", help="re-derive the genotype from a search run's checkpoint")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--write", action="store_true", help="also (re)write RUN/genotype.json and the pictures")
    p.set_defaults(func=_cmd_derive)


def _cmd_derive(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..errors import CheckpointError
    from ..loops.common import CHECKPOINT
    from ..space.genotype import genotype_to_json, save_genotype

    run = Path(args.run)
    path = run / CHECKPOINT if run.is_dir() else run
    # A training run is refused by its kind, before its checkpoint is read: the checkpoint loader's advice
    # (fall back to .prev) is for damaged files, not for the wrong kind of run.
    kind = run_kind(path.parent)
    if kind is None or kind in ("cnn-search", "rnn-search"):
        kind = load_checkpoint(path).get("kind")
    if kind not in ("cnn-search", "rnn-search"):
        raise CheckpointError(
            f"is a {kind} run, not a search; derive reads a search run's alphas (a training "
            "run's cell is its genotype.json)",
            str(run),
        )
    if kind == "rnn-search":
        from ..loops.rnn_search import derive_from_run
    else:
        from ..loops.search import derive_from_run
    g = derive_from_run(run)
    print(genotype_to_json(g))
    if args.write:
        from ..lock import locked
        from ..plot import save_cell_pictures

        folder = run if run.is_dir() else run.parent
        with locked(folder, create=False):  # not while a search is writing this run
            save_genotype(g, folder / "genotype.json")
            save_cell_pictures(g, folder)
    return 0


PARSERS = [_search_parser, _derive_parser]
