"""``dartsnas train`` and ``dartsnas eval``: training a derived cell from scratch, re-evaluating a run.

Loaded by ``dartsnas.cli`` through ``PARSERS``. Under ``torchrun`` the same command runs data-parallel.
"""

from __future__ import annotations

import argparse
import json

from .cli import _add_config_options, _resolve_config
from .errors import ConfigError


def _train_parser(sub) -> None:
    from .loops.train import TrainConfig

    p = sub.add_parser(
        "train", help="train a cell from scratch (CIFAR-10, ImageNet or the built-in data)",
        description="Train a derived or published cell from scratch. Defaults are the paper's CIFAR-10 recipe "
                    "(600 epochs, batch 96, cosine lr 0.025, cutout, auxiliary head, drop path 0.2); "
                    "--dataset imagenet uses the §6 recipe. With no dataset given, a quick run on the "
                    "built-in data. Data-parallel: torchrun --nproc_per_node=K -m dartsnas train ...")
    _add_config_options(p, list(TrainConfig.PRESETS))
    p.add_argument("--space", choices=["cnn", "rnn"], default="cnn", help="cell type (default cnn)")
    p.add_argument("--genotype", help="DARTS_V2, DARTS_V1, NASNet, AmoebaNet, a genotype.json or a search run folder")
    p.add_argument("--dataset", help="cifar10, imagenet or builtin")
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="dataset folder (or $DARTSNAS_DATA)")
    p.add_argument("--download", action="store_true", help="fetch CIFAR-10 if missing (needs internet)")
    p.add_argument("--epochs", type=str)
    p.add_argument("--batch-size", dest="batch_size", type=str, help="global batch (all ranks together)")
    p.add_argument("--lr", type=str)
    p.add_argument("--seed", type=str)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--subset", type=str, help="train on the first N training images only")
    p.add_argument("--init-channels", dest="init_channels", type=str)
    p.add_argument("--layers", type=str)
    p.set_defaults(func=_cmd_train)


_NAMES = ["genotype", "dataset", "data_dir", "download", "epochs", "batch_size", "lr", "seed", "device", "subset",
          "init_channels", "layers"]


def _rnn_train(what: str):
    """The recurrent training module (written separately), or a one-line error when it is absent."""
    import importlib

    try:
        return importlib.import_module("dartsnas.loops.rnn_train")
    except ModuleNotFoundError as e:
        if e.name != "dartsnas.loops.rnn_train":
            raise
        raise ConfigError(f"{what}: recurrent training is not available in this installation") from None


def _cmd_train(args: argparse.Namespace) -> int:
    if args.space == "rnn":
        return _rnn_train("--space rnn").cli_main(args)
    from .loops.train import TrainConfig, run_train

    if not args.resume and not args.preset and not args.config:
        if args.dataset == "imagenet":
            args.preset = "imagenet"
        elif not args.dataset and not any(s.startswith("dataset=") for s in args.set):
            args.preset = "quick"  # no dataset named: the quick run on the built-in data
    cfg = _resolve_config(TrainConfig, args, _NAMES)
    from .cli import run_target

    run_dir, resume = run_target(args)
    result = run_train(cfg, run_dir=run_dir, resume=resume)
    r = result.results
    if result.history:
        print(f"test error {r['test_error_percent']:.2f}% (top-5 {r['test_top5_error_percent']:.2f}%), "
              f"{r['params'] / 1e6:.2f}M params ({r['params_with_auxiliary'] / 1e6:.2f}M with aux), "
              f"{r['multiply_adds'] / 1e6:.0f}M multiply-adds")
        print(f"results:  {result.run_dir / 'results.json'}")
        print(f"curves:   {result.run_dir / 'loss.svg'}, {result.run_dir / 'accuracy.svg'}")
    return 0


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="re-evaluate a training run's checkpoint on the test set")
    p.add_argument("run", metavar="RUN", help="a training run folder (or its checkpoint.pt)")
    p.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="dataset folder, if it moved")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="evaluation batch size")
    p.add_argument("--full", action="store_true", help="recurrent runs: the whole valid and test sets, "
                   "not the run's eval_tokens/test_tokens caps (quick and tiny presets)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .loops.common import CHECKPOINT
    from pathlib import Path

    run = Path(args.run)
    kind = load_checkpoint(run / CHECKPOINT if run.is_dir() else run).get("kind")
    if kind == "rnn-train":
        return _rnn_train("eval").eval_main(args)
    from .loops.train import evaluate_run

    print(json.dumps(evaluate_run(args.run, args.data_dir, args.device, args.batch_size), indent=2))
    return 0


PARSERS = [_train_parser, _eval_parser]
