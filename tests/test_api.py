"""The small typed Python API beside the CLI."""

import json

import dartsnas


def test_api_search_then_train(tmp_path):
    cfg = dartsnas.SearchConfig.build("tiny", overrides=["epochs=1"], progress=False)
    result = dartsnas.search(cfg, run_dir=tmp_path / "s")
    assert isinstance(result, dartsnas.SearchResult)
    assert isinstance(result.genotype, dartsnas.Genotype)
    saved = dartsnas.load_genotype(tmp_path / "s" / "genotype.json")
    assert saved == result.genotype
    tcfg = dartsnas.TrainConfig.build("tiny", overrides=["epochs=1"], genotype=str(tmp_path / "s"))
    trained = dartsnas.train(tcfg, run_dir=tmp_path / "t")
    assert isinstance(trained, dartsnas.TrainResult)
    assert 0 <= trained.results["test_error_percent"] <= 100
    assert json.loads((tmp_path / "t" / "results.json").read_text())["epochs"] == 1


def test_api_recurrent_configs_dispatch(tmp_path):
    cfg = dartsnas.RNNSearchConfig.build("tiny", overrides=["epochs=1"])
    result = dartsnas.search(cfg, run_dir=tmp_path / "r")
    assert isinstance(result, dartsnas.RNNSearchResult)
    assert isinstance(result.genotype, dartsnas.RNNGenotype)


def test_published_names():
    assert dartsnas.load_genotype("DARTS") == dartsnas.PUBLISHED["DARTS_V2"]
    assert "select" in dartsnas.__all__ and callable(dartsnas.report)


def test_no_submodule_shadows_an_api_name():
    """Importing a submodule sets the package's attribute of that name: a module named like an API function
    replaces the function once anything imports it (``dartsnas.report`` became the module ``report.py`` after
    the CLI's report command or the function itself had run; an xdist worker's test order showed it)."""
    import importlib
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(dartsnas.__path__)}
    assert not modules & set(dartsnas.__all__)
    importlib.import_module("dartsnas.report_table")  # the implementation of dartsnas.report
    assert callable(dartsnas.report) and dartsnas.report.__module__ == "dartsnas"


def test_build_model_names_its_dataset_or_refuses():
    """An unknown dataset name is refused (it used to give the CIFAR-10 or PTB network silently); the data
    folders' spellings are accepted; the recurrent default is PTB."""
    import pytest

    from dartsnas.errors import ConfigError

    def count(m):
        return sum(p.numel() for p in m.parameters())

    with pytest.raises(ConfigError, match="unknown dataset 'cifar100' for a CNN cell.*num_classes"):
        dartsnas.build_model("DARTS_V2", dataset="cifar100")
    with pytest.raises(ConfigError, match="unknown dataset 'cifar10' for a recurrent cell"):
        dartsnas.build_model("RNN_DARTS_V2", dataset="cifar10")
    assert count(dartsnas.build_model("DARTS_V2")) == count(dartsnas.build_model("DARTS_V2", "cifar-10")) == 3349342
    ptb = count(dartsnas.build_model("RNN_DARTS_V2"))
    assert ptb == count(dartsnas.build_model("RNN_DARTS_V2", dataset="ptb")) == 22_960_000  # spec §7.4
    wt2 = count(dartsnas.build_model("RNN_DARTS_V2", dataset="wikitext-2", ntoken=33278))
    assert wt2 == count(dartsnas.build_model("RNN_DARTS_V2", dataset="wikitext2", ntoken=33278)) == 33_127_878
