"""dartsnas: DARTS (Liu, Simonyan & Yang, ICLR 2019) on modern PyTorch.

Python API::

    import dartsnas
    result = dartsnas.search(dartsnas.SearchConfig.build("quick"), run_dir="runs/quick")
    print(result.genotype)                      # a dartsnas.Genotype
    trained = dartsnas.train(dartsnas.TrainConfig.build("quick", genotype="DARTS_V2"), run_dir="runs/train")
    print(trained.results["test_error_percent"])
    g = dartsnas.load_genotype("DARTS_V2")      # published cells by name, or a genotype.json path
"""

from __future__ import annotations

__version__ = "0.1.0"

from .space.genotype import PUBLISHED, Genotype, RNNGenotype, load_genotype, parse_genotype, save_genotype  # noqa: E402


def search(config=None, run_dir=None, resume: bool = False):
    """Run a CNN cell search; ``config`` is a SearchConfig (default: the quick preset). Returns a SearchResult."""
    from .loops.search import SearchConfig, run_search

    return run_search(config if config is not None else SearchConfig.build("quick"), run_dir=run_dir, resume=resume)


def train(config=None, run_dir=None, resume: bool = False):
    """Train a cell from scratch; ``config`` is a TrainConfig (default: the quick preset). Returns a TrainResult."""
    from .loops.train import TrainConfig, run_train

    return run_train(config if config is not None else TrainConfig.build("quick"), run_dir=run_dir, resume=resume)


def __getattr__(name: str):
    if name in ("TrainConfig", "TrainResult"):
        from .loops import train as _t

        return getattr(_t, name)

    if name in ("SearchConfig", "SearchResult"):
        from .loops import search as _s

        return getattr(_s, name)
    raise AttributeError(name)


__all__ = ["search", "train", "TrainConfig", "TrainResult", "Genotype", "RNNGenotype", "PUBLISHED", "load_genotype", "parse_genotype", "save_genotype",
           "SearchConfig", "SearchResult", "__version__"]
