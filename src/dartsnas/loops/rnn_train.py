"""Training a recurrent cell from scratch (spec §7.3, §7.4, §7.6): PTB, WikiText-2 or the built-in corpus.

Usage::

    from dartsnas.loops.rnn_train import RNNTrainConfig, run_rnn_train
    result = run_rnn_train(RNNTrainConfig.build("quick"), run_dir="runs/rnn-train-quick")
    print(result.results["test_ppl"])

    dartsnas train --space rnn                                   # quick run on the built-in corpus (~1 min)
    dartsnas train --space rnn --dataset ptb --data-dir ../shared/data --genotype DARTS
    dartsnas train --space rnn --dataset wikitext2 --data-dir ../shared/data --genotype runs/rnn-search/genotype.json
    dartsnas eval runs/rnn-train-...                             # valid and test perplexity of the best weights

The loop: segments of variable length (max(5, int(N(μ, 5))) ≤ 55, μ = 35 or 17.5), lr 20·ℓ/35 per step,
loss NLL + TAR (β = 10⁻³), clip 0.25, SGD with weight decay. After every epoch the validation loss (B = 10)
decides three things: the best checkpoint (``best.pt``, the weights used for the final test), the
NT-ASGD switch (``should_switch_to_asgd``: more than ``nonmono`` = 5 earlier SGD-phase losses and the
current one above the minimum of all but the 5 most recent), and an optional early stop.

Averaged SGD is implemented here, not with ``torch.optim.ASGD``: after the switch the optimizer stays plain
SGD at the same lr and weight decay (which is what ASGD with λ = 0 does to the weights) and a running
average of the weights after each step since the switch is kept (t0 = 0: the first step after the switch
starts the average). Validation, ``best.pt`` and the test use the averaged weights. One documented
difference: ``torch.optim.ASGD`` updates its step size η *after* each step, so with the per-step lr scaling
it applies the previous step's scaled lr; here each step uses its own. The effect is negligible.

"Until convergence" is not specified (§11.9): ``epochs`` is the paper's cap (8000), and
``early_stop_patience=N`` stops after N epochs without a better validation loss (default: off).

Reliability: checkpoint after every epoch and on SIGTERM/SIGINT (mid-epoch: hidden state, stream position,
RNGs, optimizer, average, validation history), exact resume, refusal of corrupt/incompatible checkpoints.
A non-finite training loss, gradient norm or validation loss is caught before the update; as the spec
says (§7.6), the run then reloads the last checkpoint (weights, optimizer, average, data position) and
continues, up to ``nan_retries`` times per checkpoint (``Run.reload``; a fresh run saves its initial state
first, so a NaN in the first epoch has a checkpoint to go back to). The random streams are not rewound: the
retry draws new segment lengths and dropout masks (rewinding them would replay the step that failed). When
the retries are used up the run stops with exit code 6 and the last checkpoint as it was.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, save_checkpoint, seed_everything
from ..config import ConfigBase, require
from ..data.text import CORPORA, Corpus, batchify, get_segment, load_corpus
from ..errors import CheckpointError, ConfigError, GenotypeError, NonFiniteError
from ..evalnet.rnn import RNNEvalModel
from ..lm import tar_penalty
from ..space.genotype import RNNGenotype, genotype_from_dict, genotype_to_dict, load_genotype, save_genotype
from .common import TrainingResult, nan_fault, resolve_device, set_determinism, write_json
from .engine import Run, Task
from .rnn_common import evaluate_lm, scaled_lr, train_seq_len
from .rnn_search import _exp, steps_estimate
from .state import LoopState, Sums, saved_as, transient

KIND = "rnn-train"
BEST_KIND = "rnn-train-best"
BEST = "best.pt"


@dataclass(kw_only=True)
class RNNTrainConfig(ConfigBase):
    """Recurrent training from scratch with the PTB settings as defaults (§7.4); preset paper-wt2 for WikiText-2."""

    KIND = KIND  # the module's run kind (config.json "kind")
    genotype: str = "DARTS"  # a published name (DARTS, DARTS_V1, ENAS), a genotype.json or a search run
    dataset: str = "ptb"  # ptb, wikitext2, builtin
    data_dir: str | None = None
    nhid: int = 850  # emsize = nhid
    batch_size: int = 64
    bptt: int = 35
    max_seq_len_delta: int = 20  # segments are at most bptt + 20 rows
    lr: float = 20.0
    weight_decay: float = 8e-7
    grad_clip: float = 0.25
    dropout: float = 0.75
    dropouth: float = 0.25
    dropoutx: float = 0.75
    dropouti: float = 0.2
    dropoute: float = 0.1
    tar_beta: float = 1e-3
    asgd: bool = True  # switch to averaged SGD by the non-monotone rule
    nonmono: int = 5
    epochs: int = 8000  # the cap of "until convergence"
    early_stop_patience: int | None = None  # stop after this many epochs without a better validation loss
    seed: int = 1267
    max_steps_per_epoch: int | None = None
    eval_tokens: int | None = None  # cap the per-epoch validation (quick runs)
    test_tokens: int | None = None  # cap the final test (quick runs)
    eval_batch_size: int = 10
    test_batch_size: int = 1
    device: str = "auto"
    # GPU runs repeat bit for bit only with deterministic kernels (slower); CPU runs always do.
    deterministic: bool = False
    log_interval: int = 200
    progress: bool = True
    # Evaluate the test set at the end (§7.6). Selection and random-baseline trainings set it false: the
    # protocol never reads a test set before the final evaluation (spec §9).
    eval_test: bool = True
    tensorboard: bool = False  # also write the metrics records as TensorBoard scalars (RUN/tensorboard)
    # After a non-finite loss or gradient norm, reload the last checkpoint and continue (§7.6), at most this
    # many times per checkpoint; then stop with exit 6. Harmless on resume: a run without NaNs is unchanged.
    nan_retries: int = 3

    HARMLESS = ConfigBase.HARMLESS | frozenset(
        {"data_dir", "test_batch_size", "test_tokens", "eval_test", "tensorboard", "deterministic", "nan_retries"}
    )

    PRESETS = {
        "paper-ptb": {},
        "paper-wt2": {"dataset": "wikitext2", "nhid": 700, "dropouth": 0.15, "weight_decay": 5e-7},
        # About a minute on a loaded 2-core CPU: the built-in corpus, a small model, lighter dropout.
        "quick": {
            "dataset": "builtin",
            "nhid": 96,
            "batch_size": 32,
            "bptt": 20,
            "max_seq_len_delta": 10,
            "epochs": 16,
            "max_steps_per_epoch": 60,
            "dropout": 0.25,
            "dropouth": 0.1,
            "dropoutx": 0.25,
            "dropouti": 0.1,
            "dropoute": 0.05,
            "nonmono": 3,
            "eval_tokens": 2000,
            "test_tokens": 1000,
            "log_interval": 10,
        },
        "tiny": {
            "dataset": "builtin",
            "nhid": 8,
            "batch_size": 4,
            "bptt": 8,
            "max_seq_len_delta": 4,
            "epochs": 4,
            "max_steps_per_epoch": 3,
            "dropout": 0.2,
            "dropouth": 0.1,
            "dropoutx": 0.2,
            "dropouti": 0.1,
            "dropoute": 0.05,
            "nonmono": 1,
            "eval_tokens": 200,
            "test_tokens": 60,
            "eval_batch_size": 4,
            "log_interval": 1,
        },
    }

    def check(self) -> list[str]:
        p: list[str] = []
        require(
            p, self.dataset in CORPORA, f"dataset: unknown dataset {self.dataset!r}; available: {', '.join(CORPORA)}"
        )
        for name in (
            "nhid",
            "batch_size",
            "bptt",
            "epochs",
            "eval_batch_size",
            "test_batch_size",
            "log_interval",
            "nonmono",
        ):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        require(p, self.bptt >= 2, f"bptt: must be at least 2, got {self.bptt}")
        for name in ("max_steps_per_epoch", "eval_tokens", "test_tokens", "early_stop_patience"):
            v = getattr(self, name)
            require(p, v is None or v > 0, f"{name}: must be positive, got {v}")
        require(p, self.lr > 0, f"lr: must be positive, got {self.lr}")
        require(p, self.grad_clip > 0, f"grad_clip: must be positive, got {self.grad_clip}")
        for name in ("weight_decay", "tar_beta", "max_seq_len_delta", "nan_retries"):
            require(p, getattr(self, name) >= 0, f"{name}: must be non-negative, got {getattr(self, name)}")
        for name in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute"):
            require(p, 0 <= getattr(self, name) < 1, f"{name}: must be in [0, 1), got {getattr(self, name)}")
        return p


RNNTrainResult = TrainingResult  # the same record for CNN and recurrent training


def should_switch_to_asgd(earlier: Sequence[float], current: float, nonmono: int = 5) -> bool:
    """§7.6 non-monotone trigger: more than ``nonmono`` earlier (SGD-phase) validation losses, and
    ``current`` exceeds the minimum of all of them except the ``nonmono`` most recent."""
    earlier = list(earlier)
    return len(earlier) > nonmono and current > min(earlier[:-nonmono])


def resolve_rnn_genotype(spec: str) -> RNNGenotype:
    g = load_genotype(spec, kind="rnn")
    if not isinstance(g, RNNGenotype):
        raise GenotypeError("is not a recurrent genotype", spec)
    return g


def build_model(cfg: RNNTrainConfig, ntoken: int, genotype: RNNGenotype) -> RNNEvalModel:
    return RNNEvalModel(
        ntoken,
        genotype,
        n=cfg.nhid,
        dropout=cfg.dropout,
        dropouth=cfg.dropouth,
        dropoutx=cfg.dropoutx,
        dropouti=cfg.dropouti,
        dropoute=cfg.dropoute,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # the tied matrix once


@dataclass(init=False, eq=False)
class _State(LoopState):
    """Everything that changes during a recurrent training (saved generically, see ``loops.state``)."""

    model: RNNEvalModel
    opt: torch.optim.SGD = saved_as("optimizer")
    len_gen: torch.Generator = saved_as("seq_len")
    pos: int = saved_as("position")  # row of the training stream where the next segment starts
    hidden: torch.Tensor | None
    asgd: bool  # averaged SGD switched on
    switch_epoch: int | None  # 0-based index of the first averaged-SGD epoch
    avg: list[torch.Tensor] | None = saved_as("average")  # running average of the weights since the switch
    avg_count: int = saved_as("average_count")
    sgd_val_losses: list[float]  # the history the switch rule looks at
    best_val: float
    best_epoch: int  # 0-based index of the best epoch so far
    stopped_early: bool
    final_valid_loss: float | None  # the last epoch's validation loss (the selection score)
    cfg: RNNTrainConfig = transient()
    device: torch.device = transient()
    genotype: RNNGenotype = transient()
    ntoken: int = transient()
    params: list[torch.nn.Parameter] = transient()

    def __init__(self, cfg: RNNTrainConfig, ntoken: int, genotype: RNNGenotype, device: torch.device):
        LoopState.__init__(self)
        self.cfg, self.device, self.genotype, self.ntoken = cfg, device, genotype, ntoken
        self.model = build_model(cfg, ntoken, genotype).to(device)
        self.params = self.model.weights()
        self.opt = torch.optim.SGD(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.len_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1)
        self.pos = 0
        self.hidden = None
        self.asgd = False
        self.switch_epoch = None
        self.avg = None
        self.avg_count = 0
        self.sgd_val_losses = []
        self.best_val = math.inf
        self.best_epoch = -1
        self.stopped_early = False
        self.final_valid_loss = None

    @contextlib.contextmanager
    def averaged(self):
        """Inside, the model holds the averaged weights (after the switch); the live ones come back after."""
        if self.avg is None:
            yield
            return
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_copy_(self.params, self.avg)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, saved)

    def update_average(self) -> None:
        with torch.no_grad():
            self.avg_count += 1
            if self.avg is None:
                self.avg = [p.detach().clone() for p in self.params]
            else:
                torch._foreach_lerp_(self.avg, [p.detach() for p in self.params], 1.0 / self.avg_count)


# The running sums of a recurrent training epoch: Σ NLL·rows and Σ rows of the training segments.
SUMS = ("nll", "rows")


class RNNTrainTask(Task):
    """Recurrent training as a driver task (§7.4, §7.6): SGD then averaged SGD, best weights in best.pt."""

    kind = KIND

    def __init__(self, cfg: RNNTrainConfig, corpus: Corpus, genotype: RNNGenotype, device: torch.device):
        self.cfg, self.device, self.corpus = cfg, device, corpus
        self.train = batchify(corpus.train, cfg.batch_size).to(device)
        self.valid = batchify(corpus.valid, cfg.eval_batch_size).to(device)
        self.eval_rows = _rows(cfg.eval_tokens, cfg.eval_batch_size)
        seed_everything(cfg.seed)
        self.state = _State(cfg, corpus.ntoken, genotype, device)
        self.sums = Sums(SUMS, device)
        self.best_path: Path | None = None
        self.nan_retries = cfg.nan_retries

    def steps_per_epoch(self) -> int:
        return steps_estimate(self.train.size(0), self.cfg.bptt, self.cfg.max_steps_per_epoch)

    def begin_epoch(self) -> None:
        self.state.model.train()

    def batches(self):
        st, cfg = self.state, self.cfg
        while st.pos < self.train.size(0) - 2 and (
            cfg.max_steps_per_epoch is None or st.step_in_epoch < cfg.max_steps_per_epoch
        ):
            seq_len = train_seq_len(st.len_gen, cfg.bptt, cfg.max_seq_len_delta)
            x, y = get_segment(self.train, st.pos, seq_len)
            yield x, y, seq_len

    def step(self, batch) -> dict[str, torch.Tensor]:
        x, y, seq_len = batch
        out = _train_step(self.state, x, y, seq_len)
        self.state.pos += seq_len
        return out

    def stats(self, s: dict[str, float]) -> dict[str, float]:
        return {"ppl": _exp(s["nll"] / max(s["rows"], 1))}

    def end_of_epoch(self, s: dict[str, float]) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        with st.averaged():
            valid_loss, valid_ppl = evaluate_lm(st.model, self.valid, cfg.bptt, self.eval_rows)
        if not math.isfinite(valid_loss):
            raise NonFiniteError("validation loss", st.global_step, "validation")
        st.final_valid_loss = valid_loss
        record = {
            "epoch": st.epoch,
            "lr": cfg.lr,
            "optimizer": "asgd" if st.asgd else "sgd",
            "steps": st.step_in_epoch,
            "train_loss": s["nll"] / max(s["rows"], 1),
            "train_ppl": _exp(s["nll"] / max(s["rows"], 1)),
            "valid_loss": valid_loss,
            "valid_ppl": valid_ppl,
        }
        if valid_loss < st.best_val:
            st.best_val, st.best_epoch = valid_loss, st.epoch
            with st.averaged():
                save_checkpoint(self.best_path, _best_payload(st, valid_loss))
            record["best"] = True
        if not st.asgd:
            if cfg.asgd and should_switch_to_asgd(st.sgd_val_losses, valid_loss, cfg.nonmono):
                st.asgd, st.switch_epoch = True, st.epoch + 1
                record["switch_to_asgd"] = True
            st.sgd_val_losses.append(valid_loss)
        if cfg.early_stop_patience is not None and st.epoch - st.best_epoch >= cfg.early_stop_patience:
            st.stopped_early = True
            record["stopped_early"] = True
        return record

    def summary(self, r: dict[str, Any]) -> str:
        return (
            f"epoch {r['epoch'] + 1}/{self.cfg.epochs} ({r['optimizer']}): {r['steps']} steps | train ppl "
            f"{r['train_ppl']:.2f} | valid ppl {r['valid_ppl']:.2f}{' *' if r.get('best') else ''} | "
            f"{r['epoch_seconds']:.1f}s{'; switching to averaged SGD' if r.get('switch_to_asgd') else ''}"
        )

    def new_epoch(self) -> None:
        st = self.state
        st.pos, st.hidden = 0, None

    def after_epoch(self, record: dict[str, Any], run: Run) -> None:
        _save_curves(run.history(), run.path)

    def finished(self) -> bool:
        return self.state.stopped_early

    def extra_state(self) -> dict[str, Any]:
        return {"genotype": genotype_to_dict(self.state.genotype), "ntoken": self.state.ntoken}

    def load_extra(self, ck: dict[str, Any]) -> None:
        st = self.state
        if st.avg is not None and [a.shape for a in st.avg] != [p.shape for p in st.params]:
            raise ValueError("the weight average does not fit the model")


def _best_payload(st: _State, valid_loss: float) -> dict[str, Any]:
    return {
        "kind": BEST_KIND,
        "config": st.cfg.to_dict(),
        "genotype": genotype_to_dict(st.genotype),
        "ntoken": st.ntoken,
        "model": st.model.state_dict(),
        "epoch": st.epoch,
        "valid_loss": valid_loss,
        "averaged": st.avg is not None,
    }


def _data(cfg: RNNTrainConfig, corpus: Corpus | None) -> Corpus:
    return corpus if corpus is not None else load_corpus(cfg.dataset, cfg.data_dir)


def _rows(tokens: int | None, batch: int) -> int | None:
    return None if tokens is None else max(2, tokens // batch)


def run_rnn_train(
    cfg: RNNTrainConfig, run_dir: str | Path | None = None, resume: bool = False, log=None, corpus: Corpus | None = None
) -> RNNTrainResult:
    """Train (or continue training) a recurrent genotype; writes config, metrics, checkpoints, results, pictures.

    Messages go to ``log`` (a callable taking one string), else to the ``dartsnas`` logger.
    """
    from ..plot import save_cell_pictures

    run = Run(cfg, KIND, run_dir, resume, "rnn-train", log)
    ck = run.checkpoint
    if ck is not None:
        try:
            genotype = genotype_from_dict(ck["genotype"])
        except (KeyError, GenotypeError) as e:
            raise CheckpointError(f"holds no usable genotype ({e})", str(run.checkpoint_path)) from None
    else:
        genotype = resolve_rnn_genotype(cfg.genotype)
    device = resolve_device(cfg.device)
    set_determinism(device, cfg.deterministic)  # cudnn.benchmark on CUDA unless deterministic
    corpus = _data(cfg, corpus)
    task = RNNTrainTask(cfg, corpus, genotype, device)
    task.best_path = run.path / BEST
    if ck is not None and int(ck.get("ntoken", -1)) != corpus.ntoken:
        raise CheckpointError(
            f"vocabulary size: checkpoint={ck.get('ntoken')}, corpus={corpus.ntoken}", str(run.checkpoint_path)
        )
    st = task.state
    n_params = count_parameters(st.model)
    run.start(
        task,
        files=[
            ("genotype.json", lambda folder: save_genotype(genotype, folder / "genotype.json")),
            ("cell pictures", lambda folder: save_cell_pictures(genotype, folder)),
        ],
    )
    run.log(
        f"rnn train: {cfg.genotype} on {cfg.dataset}, {corpus.ntoken:,} words, train {tuple(task.train.shape)}, "
        f"{n_params:,} weights, device {device}, run dir {run.path}"
    )
    run.loop(task)

    history = run.history()
    best = load_checkpoint(run.path / BEST, expect_kind=BEST_KIND)
    test_loss = test_ppl = None
    if cfg.eval_test:  # final test on the best weights, batch 1 (§7.6)
        model = build_model(cfg, corpus.ntoken, genotype).to(device)
        model.load_state_dict(best["model"])
        test = batchify(corpus.test, cfg.test_batch_size).to(device)
        test_loss, test_ppl = evaluate_lm(model, test, cfg.bptt, _rows(cfg.test_tokens, cfg.test_batch_size))
    cuda = device.type == "cuda"
    final = st.final_valid_loss
    results = {
        "genotype": cfg.genotype,
        "dataset": cfg.dataset,
        "epochs_run": st.epoch,
        "epochs": cfg.epochs,
        # epoch numbers count from 1, as in every message (the metrics records keep the 0-based index)
        "best_epoch": int(best["epoch"]) + 1,
        "valid_loss": float(best["valid_loss"]),
        "valid_ppl": _exp(float(best["valid_loss"])),
        # the selection score (same rule as CNN selection: the final epoch's validation score)
        "final_valid_loss": final,
        "final_valid_ppl": _exp(final) if final is not None else None,
        "test_loss": test_loss,
        "test_ppl": test_ppl,
        "test_batch_size": cfg.test_batch_size,
        "test_tokens": cfg.test_tokens,
        "eval_test": cfg.eval_test,
        "asgd_from_epoch": st.switch_epoch + 1 if st.switch_epoch is not None else None,
        "stopped_early": st.stopped_early,
        "params": n_params,
        "wall_seconds": st.wall,
        "gpu_hours": st.wall / 3600 if cuda else 0.0,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
    }
    write_json(run.path / "results.json", results)
    run.record({"event": "final", **results})
    test_text = f"test ppl {test_ppl:.2f}" if test_ppl is not None else "test set not evaluated (eval_test=false)"
    run.log(f"best valid ppl {results['valid_ppl']:.2f} (epoch {results['best_epoch']}), {test_text}")
    return RNNTrainResult(run.path, results, history)


def _train_step(st: _State, x: torch.Tensor, y: torch.Tensor, seq_len: int) -> dict[str, torch.Tensor]:
    """One weight step: NLL + TAR, clip, SGD at lr·ℓ/bptt; then the running average after the switch.
    Returns the step's sums (``SUMS``) as device scalars."""
    cfg, model = st.cfg, st.model
    lr = scaled_lr(cfg.lr, seq_len, cfg.bptt)
    for group in st.opt.param_groups:
        group["lr"] = lr
    st.opt.zero_grad(set_to_none=True)
    res = model(x, st.hidden, y)
    loss = res.nll + tar_penalty(res.raw_output, cfg.tar_beta)
    if nan_fault("train", st.global_step + 1):
        loss = loss + float("nan")
    if not torch.isfinite(loss).item():
        raise NonFiniteError("training loss", st.global_step, "weights")
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(st.params, cfg.grad_clip)
    if not torch.isfinite(norm).item():
        raise NonFiniteError("weight gradient norm", st.global_step, "weights")
    st.opt.step()
    for group in st.opt.param_groups:
        group["lr"] = cfg.lr
    if st.asgd:
        st.update_average()
    st.hidden = res.hidden.detach()
    with torch.no_grad():
        n = x.size(0)
        return {
            "nll": res.nll.detach().double() * n,
            "rows": torch.full((), float(n), dtype=torch.float64, device=st.device),
        }


def _save_curves(history: list[dict[str, Any]], run_dir: Path) -> None:
    from ..checkpoint import atomic_write_text
    from ..plot import curves_svg

    atomic_write_text(
        run_dir / "perplexity.svg", curves_svg(history, [("train_ppl", "train"), ("valid_ppl", "valid")], "perplexity")
    )


# ------------------------------------------------------------------------------------------- evaluation


def eval_run(
    run_dir: str | Path,
    data_dir: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    full: bool = False,
) -> dict[str, Any]:
    """Valid (B = eval_batch_size) and test (B = 1, or ``batch_size``) perplexity of a run's best weights.

    Reads ``best.pt`` beside the checkpoint (``dartsnas eval RUN``); the token caps of the run's config
    (``eval_tokens``, ``test_tokens``: quick and tiny runs) apply unless ``full``. The result says how many
    tokens were evaluated of how many (``valid_tokens``/``valid_tokens_total``, ``test_tokens``/...).
    """
    run_dir = Path(run_dir)
    folder = run_dir if run_dir.is_dir() else run_dir.parent
    path = folder / BEST
    ck = load_checkpoint(path, expect_kind=BEST_KIND)
    try:
        cfg = RNNTrainConfig.from_dict(ck["config"])
        genotype = genotype_from_dict(ck["genotype"])
    except (KeyError, ConfigError, GenotypeError) as e:
        raise CheckpointError(f"holds no usable config or genotype ({e})", str(path)) from None
    changes: dict[str, Any] = {"device": device}
    if data_dir is not None:
        changes["data_dir"] = data_dir
    cfg = cfg.replace(**changes)
    dev = resolve_device(cfg.device)
    corpus = load_corpus(cfg.dataset, cfg.data_dir)
    if corpus.ntoken != int(ck.get("ntoken", -1)):
        raise CheckpointError(f"vocabulary size: checkpoint={ck.get('ntoken')}, corpus={corpus.ntoken}", str(path))
    model = build_model(cfg, corpus.ntoken, genotype).to(dev)
    try:
        model.load_state_dict(ck["model"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"weights do not fit the model ({str(e)[:200]})", str(path)) from None
    valid = batchify(corpus.valid, cfg.eval_batch_size).to(dev)
    v_rows = None if full else _rows(cfg.eval_tokens, cfg.eval_batch_size)
    vl, vp = evaluate_lm(model, valid, cfg.bptt, v_rows)
    tb = batch_size or cfg.test_batch_size
    test = batchify(corpus.test, tb).to(dev)
    t_rows = None if full else _rows(cfg.test_tokens, tb)
    tl, tp = evaluate_lm(model, test, cfg.bptt, t_rows)
    return {
        "run": str(folder),
        "epoch": int(ck["epoch"]),
        "dataset": cfg.dataset,
        "valid_loss": vl,
        "valid_ppl": vp,
        "test_loss": tl,
        "test_ppl": tp,
        "test_batch_size": tb,
        "params": count_parameters(model),
        **_coverage("valid", valid, v_rows),
        **_coverage("test", test, t_rows),
    }


def _coverage(split: str, data: torch.Tensor, rows: int | None) -> dict[str, int]:
    """Tokens an evaluation read (``evaluate_lm`` keeps the first ``rows`` rows) and the split's total."""
    used = data.size(0) if rows is None else min(data.size(0), max(2, rows))
    return {f"{split}_tokens": used * data.size(1), f"{split}_tokens_total": data.numel()}
