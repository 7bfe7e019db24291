"""Use a found cell in your own code: build its evaluation network, load a trained run, export it.

- ``build_model(genotype, ...)``: the evaluation network of a genotype (spec §5 CIFAR-10, §6 ImageNet,
  §7.1 recurrent), untrained, as an ordinary ``nn.Module``;
- ``load_model(run_dir)``: a training run's network with its trained weights, in eval mode (CNN: the last
  checkpoint's weights; recurrent: ``best.pt``, the weights ``dartsnas eval`` reports);
- ``export_model(run_dir, format, out)``: TorchScript, ONNX, or a plain ``state_dict`` file that
  ``torch.load(out, weights_only=True)`` reads (dartsnas checkpoints carry a checksum header and are read
  with ``dartsnas.checkpoint.load_checkpoint``, not with a bare ``torch.load``).

Exported CNNs map images (N, C, H, W) to logits (N, classes); the auxiliary head is a training device
(spec §5) and is left out. Exported recurrent models map tokens (T, N) and a hidden state (N, n) to
log-probabilities (T, N, ntoken) and the next hidden state; the time loop is unrolled, so T is fixed
at export (``seq_len``, default 1: feed text a token at a time, or choose the segment length you use).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .data.text import CORPUS_FOLDERS
from .errors import CheckpointError, ConfigError, GenotypeError, RunDirError
from .space.genotype import AnyGenotype, Genotype, RNNGenotype, genotype_to_dict, load_genotype

FORMATS = ("torchscript", "onnx", "state_dict")
# Evaluation settings per dataset (spec §5 CIFAR-10: C 36, 20 cells; §6 ImageNet mobile: C 48, 14 cells).
_CNN_DEFAULTS = {"cifar10": (36, 20, 10, 32), "imagenet": (48, 14, 1000, 224)}
_IMAGE_SIZE = {"cifar10": 32, "imagenet": 224, "builtin": 16}
# The dataset names build_model takes (the spellings of the data folders too); builtin is the CIFAR network.
_CNN_ALIASES = {"cifar10": "cifar10", "cifar-10": "cifar10", "imagenet": "imagenet", "builtin": "builtin"}
_RNN_ALIASES = {s.lower(): name for name, folders in CORPUS_FOLDERS.items() for s in (name, *folders)} | {
    "builtin": "ptb"
}


def build_model(
    genotype: AnyGenotype | str,
    dataset: str | None = None,
    *,
    init_channels: int | None = None,
    layers: int | None = None,
    num_classes: int | None = None,
    auxiliary: bool = False,
    drop_path_prob: float = 0.0,
    in_channels: int = 3,
    ntoken: int = 10000,
    **rnn_settings: Any,
) -> nn.Module:
    """The evaluation network of ``genotype`` (a Genotype, or a name / file / text ``load_genotype`` reads).

    CNN genotypes: ``dataset`` ``"cifar10"`` (the default; NetworkCIFAR, C=36, 20 cells, 10 classes) or
    ``"imagenet"`` (NetworkImageNet, C=48, 14 cells, 1000 classes); ``init_channels``, ``layers``,
    ``num_classes`` override. Recurrent genotypes: an RNNEvalModel with the §7.4 settings of ``dataset``
    (``"ptb"``, the default, or ``"wikitext2"``; ``"builtin"`` gets the PTB ones) for a vocabulary of
    ``ntoken``; ``rnn_settings`` (``n``, ``dropout``, ...) override. An unknown dataset name or bad sizes
    raise ConfigError.
    """
    g = load_genotype(genotype) if isinstance(genotype, (str, Path)) else genotype
    if isinstance(g, RNNGenotype):
        from .evalnet.rnn import RNNEvalModel

        corpus = _RNN_ALIASES.get(str(dataset or "ptb").lower())
        if corpus is None:
            raise ConfigError(
                f"build_model: unknown dataset {dataset!r} for a recurrent cell; one of ptb, wikitext2 "
                "(the §7.4 settings; override them with n=..., dropout=...)"
            )
        try:
            return RNNEvalModel.for_corpus(corpus, ntoken, g, **rnn_settings)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"build_model: {e}") from None
    if not isinstance(g, Genotype):
        raise GenotypeError(f"expected a Genotype or RNNGenotype, got {type(g).__name__}", "genotype")
    if rnn_settings:
        raise ConfigError(f"build_model: {sorted(rnn_settings)} apply to recurrent genotypes only")
    from .evalnet.cnn import NetworkCIFAR, NetworkImageNet

    name = _CNN_ALIASES.get(str(dataset or "cifar10").lower())
    if name is None:
        raise ConfigError(
            f"build_model: unknown dataset {dataset!r} for a CNN cell; one of cifar10, imagenet, builtin "
            "(for another class count pass num_classes=N, e.g. the CIFAR network with num_classes=100)"
        )
    C, L, K, _ = _CNN_DEFAULTS["imagenet" if name == "imagenet" else "cifar10"]
    cls = NetworkImageNet if name == "imagenet" else NetworkCIFAR
    try:
        return cls(
            g,
            C=init_channels or C,
            num_classes=num_classes or K,
            layers=layers or L,
            auxiliary=auxiliary,
            drop_path_prob=drop_path_prob,
            in_channels=in_channels,
        )
    except ValueError as e:
        raise ConfigError(f"build_model: {e}") from None


def _read_run(run_dir: Path) -> tuple[dict[str, Any], AnyGenotype]:
    if not run_dir.is_dir():
        raise RunDirError("not a run directory", str(run_dir))
    path = run_dir / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise RunDirError("no config.json here (not a dartsnas run directory)", str(run_dir)) from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"cannot read ({e})", str(path)) from None
    if not isinstance(config, dict):
        raise RunDirError("is not a JSON object", str(path))
    kind = config.get("kind")
    if kind in ("cnn-search", "rnn-search", "search"):
        raise RunDirError(
            f"is a {kind} run; train its cell first (dartsnas train --genotype {run_dir}) and load the training run",
            str(run_dir),
        )
    if kind not in ("cnn-train", "rnn-train"):
        raise RunDirError(f"unknown run kind {kind!r} in config.json (expected cnn-train or rnn-train)", str(path))
    return config, load_genotype(run_dir / "genotype.json", kind="rnn" if kind == "rnn-train" else "cnn")


def load_model(run_dir: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A trained run's network with its weights, in eval mode (a plain ``nn.Module``).

    Reads the run's ``config.json``, ``genotype.json`` and checkpoint (``checkpoint.pt`` for CNN trainings,
    ``best.pt`` for recurrent ones); a missing or inconsistent file raises RunDirError, GenotypeError or
    CheckpointError naming it. CNNs return ``(logits, None)`` as in training; recurrent models return an
    ``LMOutput`` (``dartsnas.lm``).
    """
    run_dir = Path(run_dir)
    config, genotype = _read_run(run_dir)
    rnn = config["kind"] == "rnn-train"
    path = run_dir / ("best.pt" if rnn else "checkpoint.pt")
    ck = load_checkpoint(path, expect_kind="rnn-train-best" if rnn else "cnn-train", map_location=map_location)
    if ck.get("genotype") != genotype_to_dict(genotype):
        raise CheckpointError("was trained with another genotype than the run's genotype.json", str(path))
    state = ck.get("model")
    if not isinstance(state, dict):
        raise CheckpointError("holds no model weights", str(path))
    try:
        if rnn:
            model = _rnn_from_config(genotype, config, int(ck["ntoken"]))
        else:
            model = _cnn_from_config(genotype, config, state)
        model.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(
            f"weights do not fit the run's network ({type(e).__name__}: {str(e)[:200]})", str(path)
        ) from None
    return model.to(map_location).eval()


def _cnn_from_config(g: AnyGenotype, config: dict[str, Any], state: dict[str, Any]) -> nn.Module:
    from .evalnet.cnn import NetworkCIFAR, NetworkImageNet

    imagenet = config.get("dataset") == "imagenet"
    stem = state["stem0.0.weight" if imagenet else "stem.0.weight"]
    cls = NetworkImageNet if imagenet else NetworkCIFAR
    # Classes and input channels are read from the weights, so the dataset need not be present.
    return cls(
        g,
        C=int(config["init_channels"]),
        num_classes=int(state["classifier.weight"].shape[0]),
        layers=int(config["layers"]),
        auxiliary=bool(config.get("auxiliary", False)),
        drop_path_prob=0.0,
        in_channels=int(stem.shape[1]),
    )


def _rnn_from_config(g: AnyGenotype, config: dict[str, Any], ntoken: int) -> nn.Module:
    from .evalnet.rnn import RNNEvalModel

    return RNNEvalModel(
        ntoken,
        g,
        n=int(config["nhid"]),
        dropout=float(config["dropout"]),
        dropouth=float(config["dropouth"]),
        dropoutx=float(config["dropoutx"]),
        dropouti=float(config["dropouti"]),
        dropoute=float(config["dropoute"]),
    )


class ImageClassifier(nn.Module):
    """An evaluation CNN as images → logits (the auxiliary head, a training device, is not called)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


class LanguageModel(nn.Module):
    """A recurrent evaluation model as (tokens (T, N), hidden (N, n)) → (log-probs (T, N, ntoken), hidden)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, tokens: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(tokens, hidden, return_log_probs=True)
        return out.log_probs, out.hidden


def example_inputs(
    run_dir: str | Path, model: nn.Module, batch_size: int = 2, seq_len: int = 1, image_size: int | None = None
) -> tuple[torch.Tensor, ...]:
    """Inputs of the exported model's shape: images at the run's dataset resolution, or tokens and a hidden state."""
    config, _ = _read_run(Path(run_dir))
    gen = torch.Generator().manual_seed(0)
    if config["kind"] == "rnn-train":
        tokens = torch.randint(0, model.ntoken, (seq_len, batch_size), generator=gen)
        return tokens, torch.zeros(batch_size, model.n)
    size = image_size or _IMAGE_SIZE.get(config.get("dataset"), 32)
    channels = model.stem0[0].in_channels if hasattr(model, "stem0") else model.stem[0].in_channels
    return (torch.randn(batch_size, channels, size, size, generator=gen),)


def _check_image_size(run_dir: str | Path, model: nn.Module, size: int) -> None:
    """Refuse an image size the CNN cannot take (its stride-2 reductions shrink the image to nothing) with
    the smallest size it does take, instead of the tracer's error."""

    def failure(s: int) -> str | None:
        try:
            with torch.no_grad():
                model(*example_inputs(run_dir, model, batch_size=1, image_size=s))
        except RuntimeError as e:
            return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return None

    why = failure(size)
    if why is None:
        return
    smallest = next((s for s in range(size + 1, max(size + 1, 65)) if failure(s) is None), None)
    if smallest is None:
        raise ConfigError(f"--image-size {size}: the network cannot run on {size}x{size} images ({why})")
    raise ConfigError(
        f"--image-size {size}: too small for this network (its stride-2 reductions shrink it to nothing); "
        f"the smallest size it takes is {smallest}"
    )


def export_model(
    run_dir: str | Path, format: str, out: str | Path, seq_len: int = 1, image_size: int | None = None
) -> Path:
    """Write a trained run's network to ``out`` as ``torchscript``, ``onnx`` or ``state_dict``; returns ``out``.

    TorchScript (``torch.jit.load(out)``) and ONNX (opset 18, a dynamic batch dimension) take the inputs
    described in the module docstring; ``state_dict`` writes the weights alone (``torch.load(out,
    weights_only=True)``, then ``load_state_dict`` into ``build_model(...)`` or ``load_model(run)``).
    """
    if format not in FORMATS:
        raise ConfigError(f"export format: {format!r}; expected one of {', '.join(FORMATS)}")
    if seq_len < 1:
        raise ConfigError(f"export seq_len: must be positive, got {seq_len}")
    out = Path(out)
    model = load_model(run_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create ({e.strerror or e})", str(out.parent)) from None
    if format == "state_dict":
        _save(lambda tmp: torch.save(model.state_dict(), tmp), out)
        return out
    rnn = isinstance(model.genotype, RNNGenotype)
    wrapped = (LanguageModel(model) if rnn else ImageClassifier(model)).eval()
    if image_size is not None and not rnn:
        if image_size < 1:
            raise ConfigError(f"--image-size: must be a positive integer, got {image_size}")
        _check_image_size(run_dir, model, image_size)
    inputs = example_inputs(run_dir, model, seq_len=seq_len, image_size=image_size)
    with torch.no_grad(), _quiet():
        if format == "torchscript":
            traced = torch.jit.trace(wrapped, inputs, check_trace=False)
            _save(lambda tmp: traced.save(str(tmp)), out)
        else:
            _export_onnx(wrapped, inputs, rnn, out)
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the tracer's and the ONNX exporter's chatter (shape-branch notes, absent torchvision kernels);
    a real failure still raises."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _export_onnx(wrapped: nn.Module, inputs: tuple[torch.Tensor, ...], rnn: bool, out: Path) -> None:
    try:
        import onnx  # noqa: F401  - the optional extra: pip install "dartsnas[onnx]"
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"ONNX export needs the optional packages onnx and onnxscript (pip install 'dartsnas[onnx]'): {e}"
        ) from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    if rnn:
        names, outputs = ["tokens", "hidden"], ["log_probs", "next_hidden"]
        shapes = ({1: batch}, {0: batch})
    else:
        names, outputs = ["images"], ["logits"]
        shapes = ({0: batch},)

    def write(tmp: Path) -> None:
        program = torch.onnx.export(
            wrapped,
            inputs,
            dynamo=True,
            input_names=names,
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=18,
            verbose=False,
        )
        program.save(str(tmp), external_data=False)

    _save(write, out)


def _save(write, out: Path) -> None:
    """Write through a temporary file and rename, so that a failed export leaves no half-written ``out``."""
    import os

    tmp = out.with_name(out.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise RunDirError(f"cannot write ({e.strerror or e})", str(out)) from None
    finally:
        if tmp.exists():
            tmp.unlink()
