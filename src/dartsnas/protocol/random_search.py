"""The trained random-search baseline on NAS-Bench-201 (issue 10, Measure: "random search with the same budget").

Per seed: draw ``samples`` cells uniformly from the 5^6 NB201 cells (``random.Random(seed)``, one
``choice`` of ``NB201_PRIMITIVES`` per edge in edge order: the same draws as the zero-cost baseline of
``protocol.compare``), train each cell's discrete network (``evalnet.nb201.NB201Network``, the supernet's
skeleton at the search preset's C and N) on the search's D_w images for ``epochs_each`` epochs, measure its
accuracy on the D_α images, and select the cell with the best validation accuracy (ties: the first drawn).
Only then is the selected cell looked up in the table: the table never reaches a choice (ROBUST-SPEC §2.2,
§5); nothing is read from it before the last training ends.

The training is the search's weight half, from the search config (``SearchConfig``, the preset plus the
compare's overrides): its images (``prepare_images``: the proxy's 16×16 downsampling), its split (the index
halves, or the split file with ``split=nb201``; ``subset``), its augmentation (random crop with the preset's
padding, flip), SGD with its momentum, Nesterov flag and weight decay, the cosine learning rate from ``lr`` to
``lr_min`` over ``epochs_each`` epochs, gradient clipping at ``grad_clip``, ``batch_size``. The validation pass
is the search's end-of-epoch monitoring pass (``loops.search.evaluate``: eval mode, no augmentation). Every
cell of a seed sees the same batch order and augmentation draws (common random numbers, seeded from the seed
as in the search) and its weights are initialised after ``torch.manual_seed(seed)``.

Budget (notes/rsearch.md, benchmarks/rsearch_budget.py): on one CPU thread at the ``nb201-proxy`` settings one
epoch of a drawn discrete cell costs about 1/``CELL_EPOCHS_PER_SEARCH_EPOCH`` of a first-order proxy search epoch
(the figures are below), so the default ``RANDOM_SEARCH_SAMPLES`` × ``RANDOM_SEARCH_EPOCHS`` cell epochs cost about
one 20-epoch first-order proxy search. Each run records its own measured cost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..data.images import BatchStream, ImageData, augment, load_images, to_device
from ..evalnet.nb201 import NB201Network
from ..loops import search_hooks
from ..loops.search import SearchConfig, cosine_lr, evaluate
from ..space.nb201 import EDGES, NB201_PRIMITIVES, NB201Genotype

# Measured 2026-11-30 on the project's shared 2-core CPU box, OMP_NUM_THREADS=1, load average 2-5 (noisy;
# notes/rsearch.md): a first-order nb201-proxy search epoch (with its end-of-epoch diagnostics) took 31.4 s; one
# epoch of a drawn discrete proxy cell took 2.9 s with the validation pass amortised over 2 epochs (3.4 s with a
# pass per epoch; 1.4-4.6 s by the cell's ops), a ratio of 9-11. With 10 cell epochs per search epoch, the 20
# epochs of one proxy search buy 200 cell epochs: 20 cells × 10 epochs.
CELL_EPOCHS_PER_SEARCH_EPOCH = 10
RANDOM_SEARCH_EPOCHS = 10
RANDOM_SEARCH_SAMPLES = 20


def draw_cells(seed: int, samples: int) -> list[NB201Genotype]:
    """``samples`` cells drawn uniformly and independently (with replacement) from the 5^6 NB201 cells."""
    rng = random.Random(seed)
    return [NB201Genotype(tuple((rng.choice(NB201_PRIMITIVES), j) for _, j in EDGES)) for _ in range(samples)]


def select_best(valid_acc: list[float]) -> int:
    """Index of the highest validation accuracy; a tie goes to the first drawn (a strict comparison)."""
    best = 0
    for k, v in enumerate(valid_acc):
        if v > valid_acc[best]:
            best = k
    return best


def search_data(cfg: SearchConfig, device: torch.device, data: ImageData | None = None):
    """The search's images and halves: (data, D_w indices, D_α indices), as ``loops.search``'s state prepares
    them (index halves by ``train_portion`` or the split file, then ``subset``)."""
    if data is None:
        data = load_images(cfg.dataset, cfg.data_dir, device, cfg.download)
    else:
        data = data.to(device)
    data = search_hooks.prepare_images(cfg, data)
    w_idx, a_idx = search_hooks.search_indices(cfg, data.train_x.shape[0])
    return data, w_idx.to(device), a_idx.to(device)


def train_cell(
    genotype: NB201Genotype,
    cfg: SearchConfig,
    data: ImageData,
    w_idx: torch.Tensor,
    a_idx: torch.Tensor,
    epochs: int,
    seed: int,
) -> dict[str, Any]:
    """Train one cell's discrete network on D_w for ``epochs`` epochs; its D_α loss and accuracy at the end."""
    device = data.train_x.device
    torch.manual_seed(seed)
    model = NB201Network(genotype, cfg.init_channels, cfg.nb201_cells, data.num_classes).to(device)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov
    )
    stream = BatchStream(len(w_idx), cfg.batch_size, seed * 1000 + 1, epoch_mode=True)
    gen = torch.Generator().manual_seed(seed * 1000 + 3)
    pad = search_hooks.augment_padding(cfg)
    loss_sum, correct, count, finite = 0.0, 0.0, 0, True
    for epoch in range(epochs):
        if epoch > 0:
            stream.new_epoch()
        lr = cosine_lr(epoch, epochs, cfg.lr, cfg.lr_min)
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss_sum, correct, count = 0.0, 0.0, 0
        for _ in range(stream.steps_per_epoch()):
            idx = w_idx[to_device(stream.next(), device)]
            x = augment(data.train_x[idx], gen, data.mean, data.std, pad=pad)
            y = data.train_y[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if not torch.isfinite(loss):  # a diverged cell: stop training it; it is still evaluated and recorded
                finite = False
                break
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
        if not finite:
            break
    val_loss, val_acc = evaluate(model, data.train_x, data.train_y, a_idx, data.mean, data.std, cfg.eval_batch_size)
    return {
        "train_loss": loss_sum / max(count, 1),
        "train_acc": correct / max(count, 1),
        "valid_loss": val_loss,
        "valid_acc": val_acc,
        "diverged": not finite,
    }


def random_search_nb201(
    cfg: SearchConfig,
    seed: int,
    samples: int = RANDOM_SEARCH_SAMPLES,
    epochs_each: int = RANDOM_SEARCH_EPOCHS,
    data: ImageData | None = None,
    device: torch.device | str = "cpu",
    table: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One seed of the random search: draw, train, select by validation accuracy, then look the cell up.

    ``table``: the NB201 table file (None: found from ``cfg.data_dir`` or ``$DARTSNAS_DATA``), read only after
    the selection. Returns the JSON-able record of the seed: every drawn cell with its validation accuracy,
    the selected cell with its table row and accuracies, and the cost (``search_cost``: wall time as CPU- or
    GPU-hours, peak memory).
    """
    from ..space.lookup import load_table, lookup, resolve_table

    if cfg.space != "nb201":
        raise ValueError(f"random search is for the NB201 space, not {cfg.space!r}")
    device = torch.device(device)
    start = time.perf_counter()
    data, w_idx, a_idx = search_data(cfg, device, data)
    drawn, cells = draw_cells(seed, samples), []
    for k, g in enumerate(drawn):
        t0 = time.perf_counter()
        res = train_cell(g, cfg, data, w_idx, a_idx, epochs_each, seed)
        cells.append({"index": k, "arch_str": g.arch_str(), **res, "seconds": time.perf_counter() - t0})
        log(
            f"random search seed {seed}: cell {k + 1}/{samples} {g.arch_str()}: valid acc {res['valid_acc']:.4f} "
            f"({cells[-1]['seconds']:.1f} s)"
        )
    best = select_best([c["valid_acc"] for c in cells])
    wall = time.perf_counter() - start
    # The selection is final; only now is the table read (for reporting).
    tab = load_table(resolve_table(table, cfg.data_dir))
    row = lookup(drawn[best], tab)
    log(
        f"random search seed {seed}: selected cell {best + 1} {row.arch_str} "
        f"(valid acc {cells[best]['valid_acc']:.4f}): table row {row.index}, CIFAR-10 {row.cifar10:.2f} %"
    )
    return {
        "seed": seed,
        "samples": samples,
        "epochs_each": epochs_each,
        "train_images": len(w_idx),
        "valid_images": len(a_idx),
        "cells": cells,
        "selected": best,
        "arch_str": row.arch_str,
        "valid_acc": cells[best]["valid_acc"],
        "table": {**row.to_dict(), "path": str(tab.path)},
        **search_hooks.search_cost(device, wall),
    }
