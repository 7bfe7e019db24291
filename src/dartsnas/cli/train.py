"""``dartsnas train`` (a cell from scratch, CNN or recurrent) and ``dartsnas eval`` (re-evaluate a training run).

Under ``torchrun`` the same ``train`` command runs data-parallel.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .common import (
    add_config_options,
    add_model_options,
    apply_dataset_inference,
    follow_resumed_kind,
    launch,
    named_dataset,
    positive_int,
    resolve_config,
)


def _train_parser(sub) -> None:
    from ..loops.rnn_train import RNNTrainConfig
    from ..loops.train import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a cell from scratch (CIFAR-10, ImageNet, PTB/WikiText-2 or the built-in data)",
        description="Train a derived or published cell from scratch. Defaults are the paper's CIFAR-10 recipe "
        "(600 epochs, batch 96, cosine lr 0.025, cutout, auxiliary head, drop path 0.2); "
        "--dataset imagenet uses the §6 recipe. With no dataset and no --data-dir given, a quick run "
        "on the built-in data; --data-dir without --dataset takes the dataset the folder holds. "
        "Data-parallel: torchrun --nproc_per_node=K -m dartsnas train ...",
    )
    add_config_options(p, [*TrainConfig.PRESETS, "with --space rnn: " + ", ".join(RNNTrainConfig.PRESETS)])
    p.add_argument("--space", choices=["cnn", "rnn"], default="cnn", help="cell type (default cnn)")
    p.add_argument("--genotype", help="DARTS_V2, DARTS_V1, NASNet, AmoebaNet, a genotype.json or a search run folder")
    p.add_argument("--dataset", help="cifar10, imagenet or builtin (rnn: ptb, wikitext2, builtin)")
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="dataset folder (or $DARTSNAS_DATA)")
    p.add_argument("--download", action="store_true", help="fetch CIFAR-10 if missing (needs internet)")
    p.add_argument("--epochs", type=str)
    p.add_argument("--batch-size", dest="batch_size", type=str, help="global batch (all ranks together)")
    p.add_argument("--seed", type=str)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--subset", type=str, help="train on the first N training images only")
    add_model_options(p)
    p.set_defaults(func=_cmd_train)


_NAMES = [
    "genotype",
    "dataset",
    "data_dir",
    "download",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "device",
    "subset",
    "init_channels",
    "layers",
]


def _count(n: int, digits: int = 2) -> str:
    """3.35M (574M with digits=0, from 10M on), or the exact number below 100,000 (a tiny network is not "0M")."""
    if n < 1e5:
        return f"{n:,}"
    return f"{n / 1e6:.{digits if n >= 1e7 else 2}f}M"


def _cmd_train(args: argparse.Namespace) -> int:
    follow_resumed_kind(args, "train")
    if args.space == "rnn":
        return _rnn_train(args)
    from ..loops.train import TrainConfig, run_train

    apply_dataset_inference(args, "cnn", ("cifar10", "imagenet", "builtin"))
    if not args.resume and not args.preset and not args.config:
        if named_dataset(args) == "imagenet":
            args.preset = "imagenet"
        elif not named_dataset(args):
            args.preset = "quick"  # no dataset named: the quick run on the built-in data
    cfg = resolve_config(TrainConfig, args, _NAMES)
    result = launch(args, cfg, "cnn-train", "train", run_train)
    if result is None:
        return 0
    r = result.results
    if result.history:
        print(
            f"test error {r['test_error_percent']:.2f}% (top-5 {r['test_top5_error_percent']:.2f}%), "
            f"{_count(r['params'])} params ({_count(r['params_with_auxiliary'])} with aux), "
            f"{_count(r['multiply_adds'], 0)} multiply-adds"
        )
        print(f"results:  {result.run_dir / 'results.json'}")
        print(f"curves:   {result.run_dir / 'loss.svg'}, {result.run_dir / 'accuracy.svg'}")
    return 0


def _rnn_train(args: argparse.Namespace) -> int:
    """``dartsnas train --space rnn``: a recurrent cell on PTB / WikiText-2 (spec §8)."""
    from ..data.text import CORPORA
    from ..loops.rnn_train import RNNTrainConfig, run_rnn_train

    for name, flag in (("subset", "--subset"), ("init_channels", "--init-channels"), ("layers", "--layers")):
        if getattr(args, name, None) is not None:
            raise ConfigError(f"{flag} is for image training; recurrent runs use --set nhid=N, max_steps_per_epoch=N")
    if args.download:
        raise ConfigError("--download is for CIFAR-10; PTB and WikiText-2 are read from --data-dir")
    apply_dataset_inference(args, "rnn", CORPORA)
    names = ["genotype", "dataset", "data_dir", "epochs", "batch_size", "lr", "seed", "device"]
    if not args.resume and not args.preset and not args.config:
        named = named_dataset(args)
        if named in (None, "builtin"):
            args.preset = "quick"  # no dataset named (or the built-in corpus): the quick run
        elif named == "wikitext2":
            args.preset = "paper-wt2"
    cfg = resolve_config(RNNTrainConfig, args, names)
    result = launch(args, cfg, "rnn-train", "rnn-train", run_rnn_train)
    if result is None:
        return 0
    r = result.results
    test = f"test ppl {r['test_ppl']:.2f}" if r["test_ppl"] is not None else "test set not evaluated (eval_test=false)"
    print(f"valid ppl {r['valid_ppl']:.2f}, {test}, {_count(r['params'])} params")
    print(f"results:  {result.run_dir / 'results.json'}")
    print(f"curves:   {result.run_dir / 'perplexity.svg'}; cell: {result.run_dir / 'recurrent.svg'}")
    return 0


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="re-evaluate a training run's checkpoint on the test set")
    p.add_argument("run", metavar="RUN", help="a training run folder (or its checkpoint.pt)")
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="dataset folder, if it moved")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, help="evaluation batch size")
    p.add_argument(
        "--full",
        action="store_true",
        help="recurrent runs: the whole valid and test sets, "
        "not the run's eval_tokens/test_tokens caps (quick and tiny presets)",
    )
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint
    from ..loops.common import CHECKPOINT

    run = Path(args.run)
    kind = load_checkpoint(run / CHECKPOINT if run.is_dir() else run).get("kind")
    if kind in ("cnn-search", "rnn-search"):  # a search, not a damaged training checkpoint: no .prev advice
        folder = run if run.is_dir() else run.parent
        space = " --space rnn" if kind == "rnn-search" else ""
        raise CheckpointError(
            f"is a search run ({kind}), not a training run; train its cell first (dartsnas train{space} "
            f"--genotype {folder / 'genotype.json'} ...) and evaluate that training run",
            str(folder),
        )
    if kind == "rnn-train":
        from ..loops.rnn_train import eval_run

        out = eval_run(args.run, args.data_dir, args.device or "auto", args.batch_size, full=args.full)
        out["epoch"] += 1  # best.pt stores the 0-based index of its epoch; a user reads epochs from 1
        for split in ("valid", "test"):
            used, total = out[f"{split}_tokens"], out[f"{split}_tokens_total"]
            if used < total:  # quick and tiny runs cap their evaluation: say so rather than pass it off as the test
                cap = "test_tokens" if split == "test" else "eval_tokens"
                print(
                    f"note: {split} perplexity is over the first {used:,} of {total:,} {split} tokens (the run's "
                    f"{cap} cap); add --full to evaluate all of them",
                    file=sys.stderr,
                )
    else:
        from ..loops.train import evaluate_run

        # The CNN checkpoint's "epoch" counts finished epochs: already the 1-based number of the last one.
        out = evaluate_run(args.run, args.data_dir, args.device, args.batch_size)
    print(json.dumps(out, indent=2))
    return 0


PARSERS = [_train_parser, _eval_parser]
