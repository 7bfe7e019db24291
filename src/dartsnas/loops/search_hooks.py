"""What the CNN search loop needs to search more than one space and to watch for collapse (ROBUST-SPEC §1, §2).

The loop (loops/search.py) calls these few functions at fixed points; all space- and diagnostics-specific
logic lives here, so a rewritten loop re-applies the same hook lines:

* ``build_search_model(cfg, num_classes)``: the DARTS ``SearchNetwork`` or the NB201 supernet;
* ``prepare_images(cfg, data)``: optional downsampling (the NB201 proxy) and ``augment_padding(cfg)``;
* ``search_split(cfg, n_train)``: index halves, or the NB201 split file's interleaved halves (AutoDL);
* ``SearchMonitor``: per-epoch diagnostics (λ_max, entropies, skip/none counts, NB201 table accuracies), the
  DARTS-ES early stop, and ``results.json`` with the search's cost and the final NB201 cell's table row.

The table is read for logging only: nothing it says reaches a gradient or a choice of the search (§2.2, §5).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.images import ImageData
from ..diagnostics import darts_es, epoch_diagnostics, fixed_batch
from ..errors import ConfigError, DartsError, DataError
from ..methods import NB201_PROTOCOLS, Method, build_method
from ..methods.registry import DRNAS_NB201_PROGRESSIVE
from ..space.genotype import genotype_from_dict

SPLIT_FILE = Path("nasbench201") / "cifar10-split.json"

_NB201 = {
    "space": "nb201",
    "init_channels": 16,
    "nb201_cells": 5,
    "batch_size": 64,
    "lr": 0.025,
    "lr_min": 0.001,
    "momentum": 0.9,
    "grad_clip": 5.0,
    "arch_lr": 3e-4,
    "arch_beta1": 0.5,
    "arch_beta2": 0.999,
    "arch_weight_decay": 1e-3,
    "order": 1,
    "dataset": "cifar10",
    "hessian": True,
}
NB201_PRESETS: dict[str, dict[str, Any]] = {
    # ROBUST-SPEC §1.6, SDARTS / DrNAS / β-DARTS / DARTS-PT column: w on images 0–24,999, α on 25,000–49,999,
    # first-order α step then w step (the loop's order).
    "nb201": {**_NB201, "epochs": 100, "weight_decay": 3e-4},
    # §1.6, AutoDL DARTS-V1 column (``--order 2`` for V2): Nesterov, weight decay 5e-4, the split file.
    "nb201-autodl": {**_NB201, "epochs": 50, "weight_decay": 5e-4, "nesterov": True, "split": "nb201"},
    # The CPU proxy (notes/nb201.md): C = 8, N = 1, 16×16 images, the 6,000 + 6,000 images of subset-15k.npz
    # (the first 6,000 of each half of the full training set).
    "nb201-proxy": {
        **_NB201,
        "epochs": 20,
        "weight_decay": 3e-4,
        "init_channels": 8,
        "nb201_cells": 1,
        "image_size": 16,
        "subset": 6000,
        "log_interval": 20,
    },
}
# One preset per method on NB201, ``nb201-<method>`` (notes/nbmethods.md): the method's NB201 protocol.
NB201_METHOD_PRESETS: dict[str, dict[str, Any]] = {
    f"nb201-{name}": {**NB201_PRESETS[base], **over, "method": name} for name, (base, over) in NB201_PROTOCOLS.items()
}
# DrNAS's progressive NB201 variant (ROBUST-SPEC §3.5): the nb201-drnas protocol, pruned and widened at epoch 50.
NB201_METHOD_PRESETS["nb201-drnas-progressive"] = {
    **NB201_METHOD_PRESETS["nb201-drnas"],
    "method_args": DRNAS_NB201_PROGRESSIVE,
}
# The supernet options a method may ask for that the NB201 supernet builds (ROBUST-SPEC §3.1, §3.2).
NB201_OPTIONS = frozenset({"primitives", "partial_channels", "edge_norm", "aux_skip"})


def check_config(cfg: Any) -> list[str]:
    """The config checks of the fields above (added to ``SearchConfig.check``)."""
    p = []
    if cfg.nb201_cells <= 0:
        p.append(f"nb201_cells: must be positive, got {cfg.nb201_cells}")
    if cfg.image_size is not None and not 4 <= cfg.image_size <= 64:
        p.append(f"image_size: must be in 4..64 pixels, got {cfg.image_size}")
    if cfg.hessian_batch <= 0:
        p.append(f"hessian_batch: must be positive, got {cfg.hessian_batch}")
    if cfg.space == "nb201" and cfg.fused_ops:
        p.append("fused_ops: the fused cell forward exists for the DARTS space only")
    if cfg.split == "nb201" and cfg.dataset != "cifar10":
        p.append(f"split: the NB201 split file indexes CIFAR-10's training set, not {cfg.dataset!r}")
    return p


def build_method_for(cfg: Any) -> Method:
    """The config's search method (ROBUST-SPEC §5) in the config's space (darts, darts-7 or nb201)."""
    return build_method(cfg.method, cfg.space, cfg.method_args, cfg.epochs)


def build_search_model(cfg: Any, num_classes: int, method: Method) -> nn.Module:
    """The supernet of ``cfg.space`` with the structural options the method asks for."""
    if cfg.space == "nb201":
        from ..supernet.nb201 import NB201SearchNetwork

        opts = method.network_options()
        other = sorted(set(opts) - NB201_OPTIONS)
        if other:
            raise ConfigError(f"method: {cfg.method} asks for {', '.join(other)}, which the NB201 supernet lacks")
        return NB201SearchNetwork(cfg.init_channels, cfg.nb201_cells, num_classes, **opts)
    from ..supernet.network import SearchNetwork

    return SearchNetwork(
        cfg.init_channels,
        num_classes,
        cfg.layers,
        cfg.num_nodes,
        stem_multiplier=cfg.stem_multiplier,
        fused=cfg.fused_ops,
        **method.network_options(),
    )


def prepare_images(cfg: Any, data: ImageData) -> ImageData:
    """Downsample every image to ``cfg.image_size`` (area averaging, kept as uint8) when it is set."""
    size = cfg.image_size
    if size is None or size == data.image_size:
        return data

    def shrink(x: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, len(x), 4096):  # bounded float memory
            part = F.interpolate(x[start : start + 4096].float(), size=(size, size), mode="area")
            out.append(part.round_().clamp_(0, 255).to(torch.uint8))
        return torch.cat(out) if out else x

    return ImageData(
        data.name,
        shrink(data.train_x),
        data.train_y,
        shrink(data.test_x),
        data.test_y,
        data.mean,
        data.std,
        data.num_classes,
    )


def augment_padding(cfg: Any) -> int:
    """Crop padding: 4 at CIFAR's 32 pixels (DARTS-SPEC §3.1), scaled with ``image_size`` (16 → 2, as the
    benchmark pads ImageNet16, ROBUST-SPEC §1.5)."""
    return 4 if cfg.image_size is None else max(1, cfg.image_size // 8)


def _find_split_file(data_dir: str | None) -> Path:
    roots: list[Path] = []
    if data_dir:
        d = Path(data_dir)
        roots += [d, *list(d.parents)[:2]]
    if os.environ.get("DARTSNAS_DATA"):
        roots.append(Path(os.environ["DARTSNAS_DATA"]))
    for root in roots:
        if (root / SPLIT_FILE).is_file():
            return root / SPLIT_FILE
    raise DataError(
        f"cannot find {SPLIT_FILE} (split=nb201); looked beside {', '.join(map(str, roots)) or 'nothing'}", "split"
    )


def search_split(cfg: Any, n_train: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(w indices, α indices) from the benchmark's CIFAR-10 split file (ROBUST-SPEC §1.5, §1.6) when
    ``cfg.split == "nb201"``; None keeps the loop's index halves."""
    if cfg.split != "nb201":
        return None
    path = _find_split_file(cfg.data_dir)
    try:
        d = json.loads(path.read_text())
        w, a = [int(i) for i in d["train"]], [int(i) for i in d["valid"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"not a split file ({type(e).__name__}: {e})", str(path)) from None
    if not w or not a or max(w + a) >= n_train or min(w + a) < 0 or set(w) & set(a):
        raise DataError(
            f"indices must be disjoint and within the {n_train:,} training images "
            "(split=nb201 needs the full CIFAR-10 training set)",
            str(path),
        )
    return torch.tensor(w), torch.tensor(a)


def search_indices(cfg: Any, n_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(D_w indices, D_α indices) of a search: the first ``train_portion`` of the training images and the rest
    (DARTS-SPEC §3.1), or the split file's halves (``search_split``), each cut to ``subset`` when it is set."""
    split = int(math.floor(n_train * cfg.train_portion))
    w_idx, a_idx = search_split(cfg, n_train) or (torch.arange(0, split), torch.arange(split, n_train))
    if cfg.subset is not None:
        w_idx, a_idx = w_idx[: cfg.subset], a_idx[: cfg.subset]
    return w_idx, a_idx


class SearchMonitor:
    """Per-epoch diagnostics of a search (ROBUST-SPEC §2.2) and the NB201 table row of its cell (§1.7)."""

    def __init__(self, cfg: Any, data: ImageData, a_idx: torch.Tensor, log: Callable[[str], None] = print):
        self.cfg = cfg
        self.log = log
        self.device = data.train_x.device
        self.batch = None
        if cfg.hessian or cfg.early_stop == "hessian":
            # A fixed, seeded batch of the α half (§2.1), the same tensor every epoch.
            self.batch = fixed_batch(
                data.train_x, data.train_y, a_idx, cfg.hessian_batch, cfg.seed * 1000 + 4, data.mean, data.std
            )
        self.table = None
        if cfg.space == "nb201":
            from ..space.lookup import load_table, resolve_table

            try:
                self.table = load_table(resolve_table(None, cfg.data_dir))
            except DartsError as e:
                log(f"note: no NB201 table accuracies in the metrics ({e})")

    def epoch_record(self, model: nn.Module, genotype: Any) -> dict[str, Any]:
        # A sampling method's forward (DrNAS, GDAS) draws from the global generators: fork them, so that the
        # diagnostics leave the search's random stream (and so its numbers) as they were.
        cuda = (
            [torch.cuda.current_device()]
            if torch.cuda.is_available() and self.batch is not None and self.batch[0].is_cuda
            else []
        )
        with torch.random.fork_rng(devices=cuda):
            rec = epoch_diagnostics(model, genotype, self.batch, self.cfg.arch_weight_decay, self.cfg.seed)
        if self.table is not None:
            rec.update(self._table_fields(genotype))
        return rec

    def _table_fields(self, genotype: Any) -> dict[str, Any]:
        from ..space.lookup import lookup

        row = lookup(genotype, self.table)
        return {
            "table_row": row.index,
            "table_cifar10": row.cifar10,
            "table_cifar100": row.cifar100,
            "table_imagenet16": row.imagenet16,
        }

    def early_stop(self, history: list[dict[str, Any]]) -> Any:
        """With ``early_stop=hessian``: the genotype DARTS-ES returns (§2.1) when it fires on this epoch."""
        if self.cfg.early_stop != "hessian":
            return None
        lambdas = [r.get("hessian_eig") for r in history]
        if any(not isinstance(v, (int, float)) for v in lambdas):
            return None
        before = darts_es(lambdas)
        if before is None:
            return None
        self.log(
            f"stopping early (DARTS-ES): λ_max local average {sum(lambdas[-5:]) / 5:.4g} exceeds 1.3 × that of "
            f"epoch {before + 1}; genotype.json keeps epoch {before + 1}'s cell"
        )
        return genotype_from_dict(history[before]["genotype"])

    def finish(self, run_dir: Path, genotype: Any, wall_seconds: float) -> dict[str, Any]:
        """Write ``results.json``: the final cell, the search cost (``search_cost``) and, on NB201, the cell's
        table row and accuracies (logged too)."""
        from ..checkpoint import atomic_write_text

        res: dict[str, Any] = {
            "space": self.cfg.space,
            "method": self.cfg.method,
            "searched_on": self.cfg.dataset,
            **search_cost(self.device, wall_seconds),
        }
        if self.cfg.space != "nb201":
            from ..space.genotype import genotype_to_dict

            res["genotype"] = genotype_to_dict(genotype)
            atomic_write_text(run_dir / "results.json", json.dumps(res, indent=2) + "\n")
            return res
        res.update({"arch_str": genotype.arch_str(), "table": None})
        if self.table is not None:
            from ..space.lookup import lookup

            row = lookup(genotype, self.table)
            res["table"] = {**row.to_dict(), "path": str(self.table.path)}
            self.log(
                f"NB201 cell {row.arch_str}: table row {row.index}, test accuracy CIFAR-10 {row.cifar10:.2f} %, "
                f"CIFAR-100 {row.cifar100:.2f} %, ImageNet16-120 {row.imagenet16:.2f} %"
            )
        atomic_write_text(run_dir / "results.json", json.dumps(res, indent=2) + "\n")
        return res


def search_cost(device: torch.device, wall_seconds: float) -> dict[str, Any]:
    """A search's cost for ``results.json`` (issue 10 item 3): its wall time (summed over resumes) as GPU- or
    CPU-hours by the device it ran on, and the peak memory of this process: on a GPU the CUDA allocator's
    ``max_memory_allocated`` (tensors only, not the caching allocator's reserve), on a CPU the process's peak
    resident set size from ``getrusage`` (everything the process held: Python, torch, the dataset). After a
    resume the peak is the last process's."""
    hours = wall_seconds / 3600.0
    if device.type == "cuda":
        return {
            "wall_seconds": wall_seconds,
            "device": torch.cuda.get_device_name(device),
            "gpu_hours": hours,
            "cpu_hours": 0.0,
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_memory_source": "cuda_max_memory_allocated",
        }
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {
        "wall_seconds": wall_seconds,
        "device": "cpu",
        "gpu_hours": 0.0,
        "cpu_hours": hours,
        "peak_memory_bytes": int(rss if sys.platform == "darwin" else rss * 1024),
        "peak_memory_source": "cpu_peak_rss",
    }
