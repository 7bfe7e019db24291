"""Use a found cell in your own code (issue 12, item 8): build_model, load_model, export_model, `dartsnas export`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import dartsnas
from dartsnas.checkpoint import load_checkpoint
from dartsnas.errors import CheckpointError, ConfigError, GenotypeError, RunDirError
from dartsnas.export import ImageClassifier, LanguageModel, example_inputs

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cnn = dartsnas.train(
        dartsnas.TrainConfig.build("tiny", overrides=["epochs=1"], progress=False), run_dir=root / "cnn"
    ).run_dir
    rnn = dartsnas.train(
        dartsnas.RNNTrainConfig.build("tiny", overrides=["epochs=1"], progress=False), run_dir=root / "rnn"
    ).run_dir
    return {"cnn": Path(cnn), "rnn": Path(rnn)}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("auxiliary_head"))


def test_build_model_sizes():
    # Independent figures: the paper's networks (3.3M weights on CIFAR-10; spec §7.1's 23M on PTB).
    assert _count(dartsnas.build_model("DARTS_V2")) == 3_349_342
    assert _count(dartsnas.build_model(dartsnas.PUBLISHED["DARTS_V2"], auxiliary=True)) == 3_349_342
    assert _count(dartsnas.build_model("RNN_DARTS_V2", dataset="ptb", ntoken=10_000)) == 22_960_000
    imagenet = dartsnas.build_model("DARTS_V2", dataset="imagenet")
    assert imagenet.classifier.out_features == 1000 and len(imagenet.cells) == 14
    small = dartsnas.build_model("DARTS_V2", init_channels=8, layers=5, num_classes=3)
    assert small(torch.randn(2, 3, 16, 16))[0].shape == (2, 3)
    with pytest.raises(ConfigError):
        dartsnas.build_model("DARTS_V2", init_channels=7)
    with pytest.raises(ConfigError):
        dartsnas.build_model("DARTS_V2", n=100)  # a recurrent setting for a CNN cell
    with pytest.raises(GenotypeError):
        dartsnas.build_model("NOT_A_CELL")


@pytest.mark.parametrize("kind", ["cnn", "rnn"])
def test_load_model_has_the_trained_weights(runs, kind):
    run = runs[kind]
    model = dartsnas.load_model(run)
    assert isinstance(model, torch.nn.Module) and not model.training
    ck = load_checkpoint(run / ("best.pt" if kind == "rnn" else "checkpoint.pt"))
    state = model.state_dict()
    assert set(state) == set(ck["model"])
    for name, tensor in ck["model"].items():
        assert torch.equal(state[name], tensor), name
    if kind == "cnn":
        x = torch.randn(4, 3, 16, 16)
        logits, aux = model(x)
        assert aux is None and logits.shape == (4, model.classifier.out_features)
        assert torch.equal(model(x)[0], logits)  # eval mode: no drop-path, fixed BN statistics


def test_load_model_errors(runs, tmp_path):
    with pytest.raises(RunDirError):
        dartsnas.load_model(tmp_path / "nowhere")
    with pytest.raises(RunDirError, match="config.json"):
        dartsnas.load_model(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(runs["cnn"], bad)
    (bad / "genotype.json").unlink()
    with pytest.raises(GenotypeError, match="genotype.json"):
        dartsnas.load_model(bad)
    (bad / "genotype.json").write_text(dartsnas.space.genotype.genotype_to_json(dartsnas.PUBLISHED["DARTS_V1"]))
    with pytest.raises(CheckpointError, match="another genotype"):
        dartsnas.load_model(bad)
    shutil.copy(runs["cnn"] / "genotype.json", bad / "genotype.json")
    raw = (bad / "checkpoint.pt").read_bytes()
    (bad / "checkpoint.pt").write_bytes(raw[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        dartsnas.load_model(bad)
    (bad / "checkpoint.pt").unlink()
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        dartsnas.load_model(bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "kind": "cnn-search"}))
    with pytest.raises(RunDirError, match="train its cell first"):
        dartsnas.load_model(bad)


def _reference(run: Path, batch: int):
    model = dartsnas.load_model(run)
    wrapped = (LanguageModel(model) if hasattr(model, "ntoken") else ImageClassifier(model)).eval()
    inputs = example_inputs(run, model, batch_size=batch)
    with torch.no_grad():
        out = wrapped(*inputs)
    return inputs, out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("kind", ["cnn", "rnn"])
def test_torchscript_matches_pytorch(runs, kind, tmp_path):
    out = dartsnas.export_model(runs[kind], "torchscript", tmp_path / "m.pt")
    loaded = torch.jit.load(str(out))
    inputs, ref = _reference(runs[kind], batch=5)  # another batch size than the export's example
    with torch.no_grad():
        got = loaded(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["cnn", "rnn"])
def test_onnx_matches_pytorch(runs, kind, tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs the optional extra 'onnx'")
    import onnx

    out = dartsnas.export_model(runs[kind], "onnx", tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(str(out)))
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed; the model was only checked")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inputs, ref = _reference(runs[kind], batch=3)
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.shape == tuple(b.shape)
        assert abs(torch.from_numpy(a) - b).max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["cnn", "rnn"])
def test_state_dict_export_loads_with_weights_only(runs, kind, tmp_path):
    """dartsnas checkpoints have a checksum header (a bare torch.load refuses them); the export does not."""
    with pytest.raises(Exception):  # noqa: B017 (whatever torch.load raises on the header, it must refuse)
        torch.load(runs[kind] / "checkpoint.pt", weights_only=True)
    out = dartsnas.export_model(runs[kind], "state_dict", tmp_path / "model.pt")
    state = torch.load(out, weights_only=True)
    model = dartsnas.load_model(runs[kind])
    assert set(state) == set(model.state_dict())
    cfg = json.loads((runs[kind] / "config.json").read_text())
    if kind == "cnn":
        fresh = dartsnas.build_model(
            runs[kind] / "genotype.json",
            init_channels=cfg["init_channels"],
            layers=cfg["layers"],
            num_classes=model.classifier.out_features,
            auxiliary=cfg["auxiliary"],
        )
    else:
        fresh = dartsnas.build_model(runs[kind] / "genotype.json", ntoken=model.ntoken, n=cfg["nhid"])
    fresh.load_state_dict(state)
    fresh.eval()
    inputs, ref = _reference(runs[kind], batch=2)
    wrapped = LanguageModel(fresh) if kind == "rnn" else ImageClassifier(fresh)
    with torch.no_grad():
        got = wrapped(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_cli_export(runs, tmp_path, cli_main):
    def cli(*args):  # in-process: exit codes and one-line errors of ``main``
        return cli_main("export", *args)

    r = cli(str(runs["cnn"]), "--format", "torchscript", "--out", str(tmp_path / "m.pt"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.pt").exists() and not list(tmp_path.glob("*.tmp"))
    r = cli(str(runs["cnn"]), "--format", "pickle", "--out", str(tmp_path / "x"))
    assert r.returncode == ConfigError.exit_code and "Traceback" not in r.stderr
    r = cli(str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "x.onnx"))
    assert r.returncode == RunDirError.exit_code and len(r.stderr.strip().splitlines()) == 1
    # an image size the network's reductions shrink to nothing: one line with the smallest size it takes
    r = cli(str(runs["cnn"]), "--format", "torchscript", "--out", str(tmp_path / "s.pt"), "--image-size", "1")
    assert r.returncode == ConfigError.exit_code and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--image-size 1: too small" in r.stderr and not (tmp_path / "s.pt").exists()
    smallest = int(r.stderr.strip().rsplit(" ", 1)[1])
    r = cli(str(runs["cnn"]), "--format", "torchscript", "--out", str(tmp_path / "s.pt"), "--image-size", str(smallest))
    assert r.returncode == 0 and (tmp_path / "s.pt").exists(), r.stderr
    # the same check from Python (export_model), not only on the command line
    from dartsnas.export import export_model

    with pytest.raises(ConfigError, match=f"the smallest size it takes is {smallest}"):
        export_model(runs["cnn"], "torchscript", tmp_path / "api.pt", image_size=smallest - 1)
    assert not (tmp_path / "api.pt").exists()
