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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.func import functional_call

from ..architect import Architect
from ..checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint, seed_everything
from ..config import ConfigBase, require
from ..data.text import CORPORA, Corpus, batchify, get_segment, load_corpus
from ..errors import CheckpointError, ConfigError, NonFiniteError
from ..lm import tar_penalty
from ..space.genotype import RNNGenotype, genotype_to_dict, save_genotype
from ..supernet.rnn import TIED_EMBEDDING, RNNSearchModel
from .common import (nan_fault, bilevel_state, load_bilevel_state, end_of_step, check_resume_config, CHECKPOINT, Metrics, Progress, StopRequest, default_run_dir, prepare_run_dir, resolve_device, write_json)
from .rnn_common import evaluate_lm, rng_devices, scaled_lr, search_seq_len

KIND = "rnn-search"


@dataclass(kw_only=True)
class RNNSearchConfig(ConfigBase):
    """Recurrent search with the reference's PTB defaults (spec §7.4, §7.5). emsize = nhid = ``nhid``."""

    dataset: str = "ptb"                 # ptb, wikitext2 or builtin
    data_dir: str | None = None
    nhid: int = 300                      # embedding and hidden size (the reference requires them equal)
    num_nodes: int = 8
    batch_size: int = 256                # training and α streams
    bptt: int = 35
    lr: float = 20.0
    weight_decay: float = 5e-7
    grad_clip: float = 0.25
    dropout: float = 0.75                # output (locked)
    dropouth: float = 0.25               # node states (variational)
    dropoutx: float = 0.75               # cell input (variational)
    dropouti: float = 0.2                # embedding output (locked)
    dropoute: float = 0.0                # embedding rows
    tar_beta: float = 1e-3               # temporal activation regulariser
    epochs: int = 50
    seed: int = 3
    arch_lr: float = 3e-3
    arch_beta1: float = 0.9
    arch_beta2: float = 0.999
    arch_weight_decay: float = 1e-3
    order: Literal[1, 2] = 1
    freeze_tied_embedding: bool = True   # §7.5 quirk: the virtual step keeps the tied embedding at w
    same_masks_in_arch_step: bool = True  # one set of dropout masks per step for the architect's closures
    max_steps_per_epoch: int | None = None  # cap the steps of each epoch (short real-data runs)
    eval_tokens: int | None = None       # cap the end-of-epoch validation to about this many tokens
    eval_batch_size: int = 10
    device: str = "auto"
    # GPU runs repeat bit for bit only with deterministic kernels (slower); CPU runs always do.
    deterministic: bool = False
    log_interval: int = 20
    progress: bool = True

    HARMLESS = ConfigBase.HARMLESS | frozenset({"data_dir", "deterministic"})

    PRESETS = {
        "paper": {},
        "paper-second-order": {"order": 2},
        # About a minute on a loaded 2-core CPU: the built-in corpus, a small cell, lighter dropout.
        "quick": {"dataset": "builtin", "nhid": 48, "batch_size": 32, "bptt": 20, "epochs": 6,
                  "max_steps_per_epoch": 25, "dropout": 0.25, "dropouth": 0.1, "dropoutx": 0.25,
                  "dropouti": 0.1, "eval_tokens": 2000, "log_interval": 5},
        # Seconds, for the tests.
        "tiny": {"dataset": "builtin", "nhid": 8, "num_nodes": 4, "batch_size": 4, "bptt": 8, "epochs": 3,
                 "max_steps_per_epoch": 3, "dropout": 0.2, "dropouth": 0.1, "dropoutx": 0.2, "dropouti": 0.1,
                 "eval_tokens": 200, "eval_batch_size": 4, "log_interval": 1},
    }

    def check(self) -> list[str]:
        p: list[str] = []
        require(p, self.dataset in CORPORA, f"dataset: unknown dataset {self.dataset!r}; available: {', '.join(CORPORA)}")
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


class _State:
    """Everything that changes during a search, so that checkpoint and resume see one object."""

    def __init__(self, cfg: RNNSearchConfig, ntoken: int, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.model = RNNSearchModel(ntoken, cfg.nhid, cfg.num_nodes, cfg.dropout, cfg.dropouth, cfg.dropoutx,
                                    cfg.dropouti, cfg.dropoute).to(device)
        self.w_opt = torch.optim.SGD(self.model.weights(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.a_opt = torch.optim.Adam(self.model.arch_parameters(), lr=cfg.arch_lr,
                                      betas=(cfg.arch_beta1, cfg.arch_beta2), weight_decay=cfg.arch_weight_decay)
        self.architect = Architect(
            self.model, self.a_opt, order=cfg.order, use_momentum=False, virtual_clip=cfg.grad_clip,
            weight_decay=cfg.weight_decay,
            frozen_in_virtual_step=(TIED_EMBEDDING,) if cfg.freeze_tied_embedding else ())
        self.len_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 1)  # segment lengths
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.pos = 0                    # row of the training stream where the next segment starts
        self.hidden = None              # training-stream hidden state (B, n), or None = zeros
        self.hidden_valid = None        # α-stream hidden state
        # NLL·ℓ sum, ℓ sum, α-batch loss sum, α steps (float64 on the device: no host sync per step)
        self.sums = torch.zeros(4, device=device, dtype=torch.float64)
        self.wall = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {
            **bilevel_state(self, KIND),
            "position": self.pos,
            "hidden": self.hidden.cpu() if self.hidden is not None else None,
            "hidden_valid": self.hidden_valid.cpu() if self.hidden_valid is not None else None,
            "rng": capture_rng({"seq_len": self.len_gen}),
        }

    def load_state_dict(self, ck: dict[str, Any], path: Path) -> None:
        try:
            load_bilevel_state(self, ck)
            self.pos = int(ck["position"])
            self.hidden = ck["hidden"].to(self.device) if ck["hidden"] is not None else None
            self.hidden_valid = ck["hidden_valid"].to(self.device) if ck["hidden_valid"] is not None else None
            restore_rng(ck["rng"], {"seq_len": self.len_gen})
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"does not match this search ({type(e).__name__}: {str(e)[:200]})", str(path)) from None




def steps_estimate(rows: int, bptt: int, cap: int | None) -> int:
    """About how many steps an epoch takes (for the progress bar): the rows over the mean segment length."""
    mean_len = 0.95 * bptt + 0.05 * max(1, int(bptt / 2))
    n = max(1, math.ceil((rows - 2) / mean_len))
    return min(n, cap) if cap is not None else n


def run_rnn_search(cfg: RNNSearchConfig, run_dir: str | Path | None = None, resume: bool = False,
                   log=print, corpus: Corpus | None = None) -> RNNSearchResult:
    """Run (or continue) a recurrent search; writes config, metrics, checkpoints, genotype and pictures."""
    from ..plot import save_cell_pictures

    run_dir = prepare_run_dir(run_dir or default_run_dir("rnn-search"), resume, log)
    ck = None
    if resume:
        ck = load_checkpoint(run_dir / CHECKPOINT, expect_kind=KIND)
        check_resume_config(cfg, ck, run_dir / CHECKPOINT, log)
    device = resolve_device(cfg.device)
    from .common import set_determinism
    set_determinism(device, cfg.deterministic)  # cudnn.benchmark on CUDA unless deterministic
    if corpus is None:
        corpus = load_corpus(cfg.dataset, cfg.data_dir)
    train = batchify(corpus.train, cfg.batch_size).to(device)
    search = batchify(corpus.valid, cfg.batch_size).to(device)     # the α stream (§7.5)
    valid = batchify(corpus.valid, cfg.eval_batch_size).to(device)  # the end-of-epoch check
    eval_rows = None if cfg.eval_tokens is None else max(2, cfg.eval_tokens // cfg.eval_batch_size)
    seed_everything(cfg.seed)
    st = _State(cfg, corpus.ntoken, device)
    if ck is not None:
        st.load_state_dict(ck, run_dir / CHECKPOINT)
        log(f"resumed {run_dir} at epoch {st.epoch}, step {st.step_in_epoch}")
    write_json(run_dir / "config.json", {"kind": KIND, **cfg.to_dict()})
    metrics = Metrics(run_dir / "metrics.jsonl")
    metrics.truncate_after(st.epoch)
    steps = steps_estimate(train.size(0), cfg.bptt, cfg.max_steps_per_epoch)
    log(f"rnn search: {cfg.dataset}, {corpus.ntoken:,} words, train {tuple(train.shape)}, α stream "
        f"{tuple(search.shape)}, order {cfg.order}, {sum(p.numel() for p in st.model.weights()):,} weights + "
        f"{st.model.alphas.numel()} α, device {device}, run dir {run_dir}")

    def save() -> None:
        save_checkpoint(run_dir / CHECKPOINT, st.state_dict())

    with StopRequest() as stop:
        while st.epoch < cfg.epochs:
            t0 = time.perf_counter()
            st.model.train()
            if st.step_in_epoch == 0:
                st.hidden = st.hidden_valid = None  # zeroed at the start of every epoch (§7.3)
                st.pos = 0
            bar = Progress(steps, f"epoch {st.epoch + 1}/{cfg.epochs}", cfg.progress, interval=cfg.log_interval)
            while st.pos < train.size(0) - 2 and (cfg.max_steps_per_epoch is None
                                                  or st.step_in_epoch < cfg.max_steps_per_epoch):
                seq_len = search_seq_len(st.len_gen, cfg.bptt)
                x, y = get_segment(train, st.pos, seq_len)
                xv, yv = get_segment(search, st.pos % (search.size(0) - 1), cfg.bptt)
                _search_step(st, x, y, xv, yv, seq_len)
                st.pos += seq_len
                end_of_step(st, stop, t0, save, bar, run_dir / CHECKPOINT)
                if bar.enabled and st.step_in_epoch % cfg.log_interval == 0:
                    s = st.sums.tolist()
                    bar.update(min(st.step_in_epoch, steps), {"ppl": _exp(s[0] / max(s[1], 1)),
                                                              "arch_ppl": _exp(s[2] / max(s[3], 1))}, force=True)
            bar.close()
            s = st.sums.tolist()
            valid_loss, valid_ppl = evaluate_lm(st.model, valid, cfg.bptt, eval_rows)
            st.wall += time.perf_counter() - t0
            genotype = st.model.genotype()
            train_loss = s[0] / max(s[1], 1)
            arch_loss = s[2] / max(s[3], 1)
            record = {
                "epoch": st.epoch, "lr": cfg.lr, "steps": st.step_in_epoch, "tokens": int(s[1]) * cfg.batch_size,
                "train_loss": train_loss, "train_ppl": _exp(train_loss),
                "arch_loss": arch_loss, "arch_ppl": _exp(arch_loss),
                "valid_loss": valid_loss, "valid_ppl": valid_ppl,
                "alphas": torch.softmax(st.model.alphas.detach().double(), -1).cpu().tolist(),
                "genotype": genotype_to_dict(genotype),
                "epoch_seconds": time.perf_counter() - t0, "wall_seconds": st.wall,
            }
            log(f"epoch {st.epoch + 1}/{cfg.epochs}: {st.step_in_epoch} steps | train ppl {record['train_ppl']:.2f} "
                f"| α-batch ppl {record['arch_ppl']:.2f} | valid ppl {valid_ppl:.2f} | {record['epoch_seconds']:.1f}s")
            st.epoch += 1
            st.step_in_epoch = 0
            st.pos = 0
            st.hidden = st.hidden_valid = None
            st.sums.zero_()
            metrics.append(record)
            save_genotype(genotype, run_dir / "genotype.json")
            save_cell_pictures(genotype, run_dir)
            _save_curves(metrics, run_dir)
            save()
    history = [r for r in metrics.read() if "epoch" in r]
    return RNNSearchResult(run_dir, st.model.genotype(), st.model.alphas.detach().cpu(), history)


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def _save_curves(metrics: Metrics, run_dir: Path) -> None:
    from ..checkpoint import atomic_write_text
    from ..plot import curves_svg

    history = [r for r in metrics.read() if "epoch" in r]
    atomic_write_text(run_dir / "perplexity.svg", curves_svg(
        history, [("train_ppl", "train"), ("arch_ppl", "α batch"), ("valid_ppl", "valid")], "perplexity"))


def _closure(model: RNNSearchModel, x: torch.Tensor, y: torch.Tensor, hidden, seed: int | None,
             devices: list, poison: bool, box: dict):
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


def _search_step(st: _State, x, y, xv, yv, seq_len: int) -> None:
    """One step of §7.5: the α step on the validation window, then the weight step on the training segment.

    ``seq_len`` is the drawn segment length (it scales the learning rate, as in the reference, even where
    the segment is cut short at the end of the stream).
    """
    model, cfg = st.model, st.cfg
    step = st.global_step + 1  # 1-based, for the fault hooks
    lr = scaled_lr(cfg.lr, seq_len, cfg.bptt)
    n_rows = x.size(0)
    devices = rng_devices(st.device)
    if cfg.same_masks_in_arch_step:
        seeds = torch.randint(0, 2 ** 62, (2,)).tolist()  # drawn once per step from the global stream
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
        st.sums += torch.stack([res.nll.detach().double() * n_rows,
                                torch.full((), float(n_rows), dtype=torch.float64, device=st.sums.device),
                                out["val_loss"].double(),
                                torch.ones((), dtype=torch.float64, device=st.sums.device)])


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


def cli_main(args) -> int:
    """``dartsnas search --space rnn ...`` (forwarded by ``dartsnas.cli``)."""
    from ..cli import _resolve_config

    if getattr(args, "subset", None) is not None:
        raise ConfigError("--subset is for image search; use --set max_steps_per_epoch=N or eval_tokens=N")
    if getattr(args, "download", False):
        raise ConfigError("--download is for CIFAR-10; PTB and WikiText-2 are read from --data-dir")
    names = ["dataset", "data_dir", "order", "epochs", "batch_size", "seed", "device"]
    if not args.resume and not args.preset and not args.dataset and not args.config and not any(
            s.startswith("dataset=") for s in args.set):
        args.preset = "quick"  # no dataset named: the quick search on the built-in corpus
    cfg = _resolve_config(RNNSearchConfig, args, names)
    if getattr(args, "show_config", False):
        import json

        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from ..cli import run_target

    run_dir, resume = run_target(args)
    result = run_rnn_search(cfg, run_dir=run_dir, resume=resume)
    final = result.final
    if final:
        print(f"valid ppl {final['valid_ppl']:.2f} after {final['epoch'] + 1} epochs")
    print(f"genotype: {result.run_dir / 'genotype.json'}")
    print(f"cell:     {result.run_dir / 'recurrent.svg'}")
    return 0
