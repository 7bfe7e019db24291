"""The recurrent architecture search loop (spec §7.5): PTB (or the built-in corpus), first or second order.

Usage::

    from dartsnas.loops.rnn_search import RNNSearchConfig, run_rnn_search
    result = run_rnn_search(RNNSearchConfig.build("quick"), run_dir="runs/rnn-quick")
    print(result.genotype)

    dartsnas search --space rnn                          # quick search on the built-in corpus (~1 min, CPU)
    dartsnas search --space rnn --dataset ptb --data-dir ../shared/data          # the paper's search
    dartsnas search --space rnn --dataset ptb --data-dir ../shared/data --order 2 \\
        --set max_steps_per_epoch=100 --epochs 3          # a few hundred steps

One step (§7.5): the training segment at row ``pos`` has length ℓ (35, or 17 with p = 0.05); the α batch
is the 35-row window of the validation stream (B = 256) at ``pos mod (rows − 1)``. The two streams keep
separate hidden states, zeroed at the start of every epoch and carried (detached) across steps. First the
α step (the generic ``Architect``; for order 2 with the recurrent knobs: no momentum, the training gradient
clipped to 0.25 inside the virtual step, κ applied uncapped, the tied embedding kept at w), then the
weight step: NLL + TAR (β = 10⁻³), clip 0.25, SGD. The learning rate of both (and the η handed to the
architect) is lr·ℓ/35 for that step.

Dropout masks and the second order. The closures the architect calls (train loss at w, w + εv, w − εv;
validation loss at w') each run a full forward that draws fresh variational masks. With independent masks
the finite difference (g⁺ − g⁻)/2ε would mostly measure mask noise divided by a tiny ε, so every closure
call of one step runs inside ``torch.random.fork_rng`` seeded with one per-step seed (one for the training
closures, one for the validation closure), drawn once from the global generator: within a step the three
training forwards see identical masks. The global stream is left where it was, so the weight step's masks
do not depend on how many closure calls the architect made. (``same_masks_in_arch_step=false`` turns this
off; the reference draws fresh masks per call.)

Reliability: checkpoint after every epoch and on SIGTERM/SIGINT (mid-epoch, with both hidden states, the
stream position, every RNG and the optimizer states), exact resume, refusal of foreign/corrupt/incompatible
checkpoints, and a non-finite loss, gradient norm or α gradient stops the run before any optimizer step
(exit code 6); the reference crashes with a bare ``raise`` there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.func import functional_call

from ..architect import Architect
from ..checkpoint import load_checkpoint, seed_everything
from ..config import ConfigBase, require
from ..data.text import CORPORA, Corpus, batchify, get_segment, load_corpus
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..lm import tar_penalty
from ..space.genotype import RNNGenotype, genotype_to_dict, save_genotype
from ..supernet.rnn import TIED_EMBEDDING, RNNSearchModel
from .common import CHECKPOINT, nan_fault, resolve_device, set_determinism
from .engine import Run, Task
from .rnn_common import evaluate_lm, rng_devices, scaled_lr, search_seq_len
from .state import LoopState, Sums, saved_as, transient

KIND = "rnn-search"


@dataclass(kw_only=True)
class RNNSearchConfig(ConfigBase):
    """Recurrent search with the reference's PTB defaults (spec §7.4, §7.5). emsize = nhid = ``nhid``."""

    KIND = KIND  # the module's run kind (config.json "kind")
    dataset: str = "ptb"  # ptb, wikitext2 or builtin
    data_dir: str | None = None
    nhid: int = 300  # embedding and hidden size (the reference requires them equal)
    num_nodes: int = 8
    batch_size: int = 256  # training and α streams
    bptt: int = 35
    lr: float = 20.0
    weight_decay: float = 5e-7
    grad_clip: float = 0.25
    dropout: float = 0.75  # output (locked)
    dropouth: float = 0.25  # node states (variational)
    dropoutx: float = 0.75  # cell input (variational)
    dropouti: float = 0.2  # embedding output (locked)
    dropoute: float = 0.0  # embedding rows
    tar_beta: float = 1e-3  # temporal activation regulariser
    epochs: int = 50
    seed: int = 3
    arch_lr: float = 3e-3
    arch_beta1: float = 0.9
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    order: Literal[1, 2] = 1
    freeze_tied_embedding: bool = True  # §7.5 quirk: the virtual step keeps the tied embedding at w
    same_masks_in_arch_step: bool = True  # one set of dropout masks per step for the architect's closures
    max_steps_per_epoch: int | None = None  # cap the steps of each epoch (short real-data runs)
    eval_tokens: int | None = None  # cap the end-of-epoch validation to about this many tokens
    eval_batch_size: int = 10
    device: str = "auto"
    # GPU runs repeat bit for bit only with deterministic kernels (slower); CPU runs always do.
    deterministic: bool = False
    log_interval: int = 20
    progress: bool = True
    tensorboard: bool = False  # also write the metrics records as TensorBoard scalars (RUN/tensorboard)

    HARMLESS = ConfigBase.HARMLESS | frozenset({"data_dir", "tensorboard", "deterministic"})

    PRESETS = {
        "paper": {},
        "paper-second-order": {"order": 2},
        # About a minute on a loaded 2-core CPU: the built-in corpus, a small cell, lighter dropout.
        "quick": {
            "dataset": "builtin",
            "nhid": 48,
            "batch_size": 32,
            "bptt": 20,
            "epochs": 6,
            "max_steps_per_epoch": 25,
            "dropout": 0.25,
            "dropouth": 0.1,
            "dropoutx": 0.25,
            "dropouti": 0.1,
            "eval_tokens": 2000,
            "log_interval": 5,
        },
        # Seconds, for the tests.
        "tiny": {
            "dataset": "builtin",
            "nhid": 8,
            "num_nodes": 4,
            "batch_size": 4,
            "bptt": 8,
            "epochs": 3,
            "max_steps_per_epoch": 3,
            "dropout": 0.2,
            "dropouth": 0.1,
            "dropoutx": 0.2,
            "dropouti": 0.1,
            "eval_tokens": 200,
            "eval_batch_size": 4,
            "log_interval": 1,
        },
    }

    def check(self) -> list[str]:
        p: list[str] = []
        require(
            p, self.dataset in CORPORA, f"dataset: unknown dataset {self.dataset!r}; available: {', '.join(CORPORA)}"
        )
        for name in ("nhid", "num_nodes", "batch_size", "bptt", "epochs", "eval_batch_size", "log_interval"):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        require(p, self.bptt >= 2, f"bptt: must be at least 2, got {self.bptt}")
        for name in ("max_steps_per_epoch", "eval_tokens"):
            v = getattr(self, name)
            require(p, v is None or v > 0, f"{name}: must be positive, got {v}")
        for name in ("lr", "arch_lr"):
            require(p, getattr(self, name) > 0, f"{name}: must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "arch_weight_decay", "tar_beta"):
            require(p, getattr(self, name) >= 0, f"{name}: must be non-negative, got {getattr(self, name)}")
        require(p, self.grad_clip > 0, f"grad_clip: must be positive, got {self.grad_clip}")
        for name in ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute"):
            require(p, 0 <= getattr(self, name) < 1, f"{name}: must be in [0, 1), got {getattr(self, name)}")
        for name in ("arch_beta1", "arch_beta2"):
            require(p, 0 <= getattr(self, name) < 1, f"{name}: must be in [0, 1), got {getattr(self, name)}")
        return p


@dataclass
class RNNSearchResult:
    run_dir: Path
    genotype: RNNGenotype
    alphas: torch.Tensor
    history: list[dict[str, Any]]

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass(init=False, eq=False)
class _State(LoopState):
    """Everything that changes during a recurrent search (saved generically, see ``loops.state``)."""

    model: RNNSearchModel
    w_opt: torch.optim.SGD = saved_as("weight_optimizer")
    a_opt: torch.optim.Adam = saved_as("arch_optimizer")
    len_gen: torch.Generator = saved_as("seq_len")  # segment lengths
    pos: int = saved_as("position")  # row of the training stream where the next segment starts
    hidden: torch.Tensor | None = None  # training-stream hidden state (B, n), or None = zeros
    hidden_valid: torch.Tensor | None = None  # α-stream hidden state
    cfg: RNNSearchConfig = transient()
    device: torch.device = transient()
    architect: Architect = transient()

    def __init__(self, cfg: RNNSearchConfig, ntoken: int, device: torch.device):
        LoopState.__init__(self)
        self.cfg = cfg
        self.device = device
        self.model = RNNSearchModel(
            ntoken, cfg.nhid, cfg.num_nodes, cfg.dropout, cfg.dropouth, cfg.dropoutx, cfg.dropouti, cfg.dropoute
        ).to(device)
        self.w_opt = torch.optim.SGD(self.model.weights(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(
            self.model.arch_parameters(),
            lr=cfg.arch_lr,
            betas=(cfg.arch_beta1, cfg.arch_beta2),
            weight_decay=cfg.arch_weight_decay,
        )
        self.architect = Architect(
            self.model,
            self.a_opt,
            order=cfg.order,
            use_momentum=False,
            virtual_clip=cfg.grad_clip,
            weight_decay=cfg.weight_decay,
            frozen_in_virtual_step=(TIED_EMBEDDING,) if cfg.freeze_tied_embedding else (),
        )
        self.len_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1)
        self.pos = 0
        self.hidden = None
        self.hidden_valid = None


# The running sums of a recurrent search epoch: Σ NLL·ℓ and Σ ℓ of the training segments, Σ of the α step's
# validation loss and the number of α steps (float64 on the device: no host sync per step).
SUMS = ("nll", "rows", "arch_loss", "arch_steps")


def steps_estimate(rows: int, bptt: int, cap: int | None) -> int:
    """About how many steps an epoch takes (for the progress bar): the rows over the mean segment length."""
    mean_len = 0.95 * bptt + 0.05 * max(1, int(bptt / 2))
    n = max(1, math.ceil((rows - 2) / mean_len))
    return min(n, cap) if cap is not None else n


class RNNSearchTask(Task):
    """The recurrent search as a driver task (§7.5)."""

    kind = KIND

    def __init__(self, cfg: RNNSearchConfig, corpus: Corpus, device: torch.device):
        self.cfg, self.device = cfg, device
        self.train = batchify(corpus.train, cfg.batch_size).to(device)
        self.search = batchify(corpus.valid, cfg.batch_size).to(device)  # the α stream (§7.5)
        self.valid = batchify(corpus.valid, cfg.eval_batch_size).to(device)  # the end-of-epoch check
        self.eval_rows = None if cfg.eval_tokens is None else max(2, cfg.eval_tokens // cfg.eval_batch_size)
        seed_everything(cfg.seed)
        self.state = _State(cfg, corpus.ntoken, device)
        self.sums = Sums(SUMS, device)

    def steps_per_epoch(self) -> int:
        return steps_estimate(self.train.size(0), self.cfg.bptt, self.cfg.max_steps_per_epoch)

    def begin_epoch(self) -> None:
        self.state.model.train()

    def batches(self):
        st, cfg = self.state, self.cfg
        while st.pos < self.train.size(0) - 2 and (
            cfg.max_steps_per_epoch is None or st.step_in_epoch < cfg.max_steps_per_epoch
        ):
            seq_len = search_seq_len(st.len_gen, cfg.bptt)
            x, y = get_segment(self.train, st.pos, seq_len)
            xv, yv = get_segment(self.search, st.pos % (self.search.size(0) - 1), cfg.bptt)
            yield x, y, xv, yv, seq_len

    def step(self, batch) -> dict[str, torch.Tensor]:
        *segments, seq_len = batch
        out = _search_step(self.state, *segments, seq_len)
        self.state.pos += seq_len
        return out

    def stats(self, s: dict[str, float]) -> dict[str, float]:
        return {"ppl": _exp(s["nll"] / max(s["rows"], 1)), "arch_ppl": _exp(s["arch_loss"] / max(s["arch_steps"], 1))}

    def end_of_epoch(self, s: dict[str, float]) -> dict[str, Any]:
        st, cfg = self.state, self.cfg
        valid_loss, valid_ppl = evaluate_lm(st.model, self.valid, cfg.bptt, self.eval_rows)
        self.genotype = st.model.genotype()
        train_loss = s["nll"] / max(s["rows"], 1)
        arch_loss = s["arch_loss"] / max(s["arch_steps"], 1)
        return {
            "epoch": st.epoch,
            "lr": cfg.lr,
            "steps": st.step_in_epoch,
            "tokens": int(s["rows"]) * cfg.batch_size,
            "train_loss": train_loss,
            "train_ppl": _exp(train_loss),
            "arch_loss": arch_loss,
            "arch_ppl": _exp(arch_loss),
            "valid_loss": valid_loss,
            "valid_ppl": valid_ppl,
            **st.model.arch_record(),
            "genotype": genotype_to_dict(self.genotype),
        }

    def summary(self, r: dict[str, Any]) -> str:
        return (
            f"epoch {r['epoch'] + 1}/{self.cfg.epochs}: {r['steps']} steps | train ppl {r['train_ppl']:.2f} "
            f"| α-batch ppl {r['arch_ppl']:.2f} | valid ppl {r['valid_ppl']:.2f} | {r['epoch_seconds']:.1f}s"
        )

    def new_epoch(self) -> None:
        st = self.state
        st.pos = 0
        st.hidden = st.hidden_valid = None  # zeroed at the start of every epoch (§7.3)

    def after_epoch(self, record: dict[str, Any], run: Run) -> None:
        from ..plot import save_cell_pictures

        save_genotype(self.genotype, run.path / "genotype.json")
        save_cell_pictures(self.genotype, run.path)
        _save_curves(run.history(), run.path)

    def extra_state(self) -> dict[str, Any]:
        return {"genotype": genotype_to_dict(self.state.model.genotype())}


def run_rnn_search(
    cfg: RNNSearchConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    log=None,
    corpus: Corpus | None = None,
) -> RNNSearchResult:
    """Run (or continue) a recurrent search; writes config, metrics, checkpoints, genotype and pictures.

    Messages go to ``log`` (a callable taking one string), else to the ``dartsnas`` logger.
    """
    run = Run(cfg, KIND, run_dir, resume, "rnn-search", log)
    device = resolve_device(cfg.device)
    set_determinism(device, cfg.deterministic)  # cudnn.benchmark on CUDA unless deterministic
    if corpus is None:
        corpus = load_corpus(cfg.dataset, cfg.data_dir)
    task = RNNSearchTask(cfg, corpus, device)
    run.start(task)
    st = task.state
    run.log(
        f"rnn search: {cfg.dataset}, {corpus.ntoken:,} words, train {tuple(task.train.shape)}, α stream "
        f"{tuple(task.search.shape)}, order {cfg.order}, {sum(p.numel() for p in st.model.weights()):,} weights + "
        f"{st.model.alphas.numel()} α, device {device}, run dir {run.path}"
    )
    run.loop(task)
    return RNNSearchResult(run.path, st.model.genotype(), st.model.alphas.detach().cpu(), run.history())


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def _save_curves(history: list[dict[str, Any]], run_dir: Path) -> None:
    from ..checkpoint import atomic_write_text
    from ..plot import curves_svg

    atomic_write_text(
        run_dir / "perplexity.svg",
        curves_svg(history, [("train_ppl", "train"), ("arch_ppl", "α batch"), ("valid_ppl", "valid")], "perplexity"),
    )


def _closure(
    model: RNNSearchModel,
    x: torch.Tensor,
    y: torch.Tensor,
    hidden,
    seed: int | None,
    devices: list,
    poison: bool,
    box: dict,
):
    """``loss_fn(overrides)`` for the architect: plain NLL of one segment from ``hidden``.

    With ``seed``, the forward runs in a forked RNG seeded with it, so every call draws the same dropout
    masks. ``box["hidden"]`` receives the (detached) hidden state of the last call.
    """

    def loss_fn(overrides=None) -> torch.Tensor:
        def forward():
            if overrides is None:
                return model(x, hidden, y)
            return functional_call(model, overrides, (x, hidden, y), strict=False)

        if seed is None:
            out = forward()
        else:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                out = forward()
        box["hidden"] = out.hidden.detach()
        loss = out.nll
        return loss + float("nan") if poison else loss

    return loss_fn


def _search_step(st: _State, x, y, xv, yv, seq_len: int) -> dict[str, torch.Tensor]:
    """One step of §7.5: the α step on the validation window, then the weight step on the training segment.

    ``seq_len`` is the drawn segment length (it scales the learning rate, as in the reference, even where
    the segment is cut short at the end of the stream). Returns the step's sums (``SUMS``) as device scalars.
    """
    model, cfg = st.model, st.cfg
    step = st.global_step + 1  # 1-based, for the fault hooks
    lr = scaled_lr(cfg.lr, seq_len, cfg.bptt)
    n_rows = x.size(0)
    devices = rng_devices(st.device)
    if cfg.same_masks_in_arch_step:
        seeds = torch.randint(0, 2**62, (2,)).tolist()  # drawn once per step from the global stream
    else:
        seeds = [None, None]
    box_t: dict = {}
    box_v: dict = {}
    train_fn = _closure(model, x, y, st.hidden, seeds[0], devices, False, box_t) if cfg.order == 2 else None
    val_fn = _closure(model, xv, yv, st.hidden_valid, seeds[1], devices, nan_fault("val", step), box_v)
    out = st.architect.step(train_fn, val_fn, lr, st.w_opt, st.global_step)
    st.hidden_valid = box_v["hidden"]

    for group in st.w_opt.param_groups:
        group["lr"] = lr
    st.w_opt.zero_grad(set_to_none=True)
    res = model(x, st.hidden, y)
    loss = res.nll + tar_penalty(res.raw_output, cfg.tar_beta)
    if nan_fault("train", step):
        loss = loss + float("nan")
    if not torch.isfinite(loss).item():
        raise NonFiniteError("training loss", st.global_step, "weights")
    loss.backward()
    for a in model.arch_parameters():  # the weight pass must not leave gradients on α
        a.grad = None
    norm = torch.nn.utils.clip_grad_norm_(model.weights(), cfg.grad_clip)
    if not torch.isfinite(norm).item():
        raise NonFiniteError("weight gradient norm", st.global_step, "weights")
    st.w_opt.step()
    for group in st.w_opt.param_groups:
        group["lr"] = cfg.lr
    st.hidden = res.hidden.detach()
    with torch.no_grad():
        return {
            "nll": res.nll.detach().double() * n_rows,
            "rows": torch.full((), float(n_rows), dtype=torch.float64, device=st.device),
            "arch_loss": out["val_loss"].double(),
            "arch_steps": torch.ones((), dtype=torch.float64, device=st.device),
        }


def derive_from_run(run_dir: str | Path) -> RNNGenotype:
    """Re-derive the recurrent genotype from a search run's checkpoint (``dartsnas derive RUN``)."""
    from ..space.derive import derive_rnn_genotype

    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT if run_dir.is_dir() else run_dir
    ck = load_checkpoint(path, expect_kind=KIND)
    try:
        cfg = RNNSearchConfig.from_dict(ck["config"])
        return derive_rnn_genotype(ck["model"]["alphas"], cfg.num_nodes)
    except (KeyError, ConfigError) as e:
        raise CheckpointError(f"holds no alphas or config ({e})", str(path)) from None
