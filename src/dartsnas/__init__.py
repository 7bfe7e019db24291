"""dartsnas: DARTS (Liu, Simonyan & Yang, ICLR 2019) on modern PyTorch.

Python API (every function writes an ordinary run or experiment directory, exactly as the CLI does)::

    import dartsnas
    result = dartsnas.search(dartsnas.SearchConfig.build("quick"), run_dir="runs/quick")
    print(result.genotype)                                   # a dartsnas.Genotype
    trained = dartsnas.train(dartsnas.TrainConfig.build("quick", genotype=str(result.run_dir)),
                             run_dir="runs/train")
    print(trained.results["test_error_percent"])
    g = dartsnas.load_genotype("DARTS_V2")                   # published cells by name, or a genotype.json path

    net = dartsnas.build_model("DARTS_V2", dataset="cifar10")  # an untrained evaluation network
    model = dartsnas.load_model("runs/train")                # the trained network, in eval mode

Recurrent cells take ``RNNSearchConfig`` / ``RNNTrainConfig`` in the same two functions; the paper's protocol
is ``dartsnas.select``, ``dartsnas.random_baseline``, ``dartsnas.evaluate_final`` and ``dartsnas.report``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .space.genotype import PUBLISHED, Genotype, RNNGenotype, load_genotype, parse_genotype, save_genotype  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from .loops.rnn_search import RNNSearchConfig, RNNSearchResult
    from .loops.rnn_train import RNNTrainConfig, RNNTrainResult
    from .loops.search import SearchConfig, SearchResult
    from .loops.train import TrainConfig, TrainResult
    from .protocol import ExperimentResult, ProtocolConfig

_LAZY = {
    "SearchConfig": "loops.search",
    "SearchResult": "loops.search",
    "TrainConfig": "loops.train",
    "TrainResult": "loops.train",
    "RNNSearchConfig": "loops.rnn_search",
    "RNNSearchResult": "loops.rnn_search",
    "RNNTrainConfig": "loops.rnn_train",
    "RNNTrainResult": "loops.rnn_train",
    "ProtocolConfig": "protocol",
    "ExperimentResult": "protocol",
    "build_model": "export",
    "load_model": "export",
    "export_model": "export",
}


@contextlib.contextmanager
def _run_lock_scope():
    """The run directory's lock (dartsnas.lock) is given back when the API call returns, not at exit."""
    from .lock import release_all

    try:
        yield
    finally:
        release_all()


def search(
    config: SearchConfig | RNNSearchConfig | None = None, run_dir: str | Path | None = None, resume: bool = False
) -> SearchResult | RNNSearchResult:
    """Search a cell. ``SearchConfig`` (CNN, default: the quick preset) or ``RNNSearchConfig`` (recurrent)."""
    from .loops.rnn_search import RNNSearchConfig, run_rnn_search
    from .loops.search import SearchConfig, run_search

    with _run_lock_scope():
        if isinstance(config, RNNSearchConfig):
            return run_rnn_search(config, run_dir=run_dir, resume=resume)
        return run_search(config if config is not None else SearchConfig.build("quick"), run_dir=run_dir, resume=resume)


def train(
    config: TrainConfig | RNNTrainConfig | None = None, run_dir: str | Path | None = None, resume: bool = False
) -> TrainResult | RNNTrainResult:
    """Train a cell from scratch. ``TrainConfig`` (CNN, default: the quick preset) or ``RNNTrainConfig``."""
    from .loops.rnn_train import RNNTrainConfig, run_rnn_train
    from .loops.train import TrainConfig, run_train

    with _run_lock_scope():
        if isinstance(config, RNNTrainConfig):
            return run_rnn_train(config, run_dir=run_dir, resume=resume)
        return run_train(config if config is not None else TrainConfig.build("quick"), run_dir=run_dir, resume=resume)


def select(
    config: ProtocolConfig, experiment: str | Path | None = None, resume: bool = False, run_final: bool = False
) -> ExperimentResult:
    """The paper's selection protocol: several searches, a short training of each cell, the best one."""
    from .protocol import select as _select

    return _select(config, experiment, resume=resume, run_final=run_final)


def random_baseline(
    config: ProtocolConfig, experiment: str | Path | None = None, resume: bool = False, run_final: bool = False
) -> ExperimentResult:
    """The random-search baseline: N uniformly sampled cells, trained and picked like ``select``."""
    from .protocol import random_baseline as _random

    return _random(config, experiment, resume=resume, run_final=run_final)


def evaluate_final(
    config: ProtocolConfig, experiment: str | Path | None = None, genotype: str | None = None, resume: bool = False
) -> ExperimentResult:
    """Train one cell R times with different seeds; mean ± std of the test error / perplexity."""
    from .protocol import evaluate_final as _final

    return _final(config, experiment, genotype=genotype, resume=resume)


def report(experiments: Sequence[str | Path], out_dir: str | Path, include_paper: bool = False) -> dict[str, Any]:
    """Write report.md, report.csv and a self-contained report.html for experiment directories."""
    from .report_table import write_report

    return write_report(experiments, out_dir, include_paper=include_paper)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'dartsnas' has no attribute {name!r}")


__all__ = [
    "search",
    "train",
    "select",
    "random_baseline",
    "evaluate_final",
    "report",
    "load_genotype",
    "parse_genotype",
    "save_genotype",
    "Genotype",
    "RNNGenotype",
    "PUBLISHED",
    "__version__",
    *_LAZY,
]
