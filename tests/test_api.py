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
