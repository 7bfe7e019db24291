"""Image datasets held on the training device and augmented there in whole batches.

``load_images`` returns uint8 tensors (N×3×H×W) already on the device; ``BatchStream`` yields shuffled
index batches from an explicit generator whose state is checkpointed; ``augment`` does random crop with
padding, horizontal flip, normalisation and optional cutout on a whole batch at once (spec §3.1, §5).
No data loader, no per-image Python work.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError
from .builtin import make_builtin_images

CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)
BUILTIN_MEAN = (0.45, 0.45, 0.45)
BUILTIN_STD = (0.2, 0.2, 0.2)
DATASETS = ("builtin", "cifar10")


@dataclass
class ImageData:
    name: str
    train_x: torch.Tensor  # uint8, N×3×H×W, on the device
    train_y: torch.Tensor  # int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_classes: int

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def to(self, device: torch.device | str) -> ImageData:
        """The same images and labels on ``device`` (no copy where they already are)."""
        return replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )


def default_data_dir(name: str) -> Path | None:
    """``$DARTSNAS_DATA`` when the variable is set: the data root, where the loader of ``name`` finds its folder
    (for CIFAR-10 ``cifar10/cifar-10-batches-py``, see ``cifar.cifar_places``)."""
    root = os.environ.get("DARTSNAS_DATA")
    return Path(root) if root else None


def load_images(
    name: str, data_dir: str | Path | None = None, device: str | torch.device = "cpu", download: bool = False
) -> ImageData:
    if name == "builtin":
        tx, ty, vx, vy = make_builtin_images()
        return ImageData(
            "builtin", tx.to(device), ty.to(device), vx.to(device), vy.to(device), BUILTIN_MEAN, BUILTIN_STD, 10
        )
    if name == "cifar10":
        from .cifar import load_cifar10

        path = Path(data_dir) if data_dir else default_data_dir("cifar10")
        if path is None:
            raise DataError(
                "no data folder given: pass --data-dir (the folder holding data_batch_1..5 and "
                "test_batch, a folder holding cifar10/cifar-10-batches-py/, or a .npz subset) or set DARTSNAS_DATA",
                "cifar10",
            )
        tx, ty, vx, vy = load_cifar10(path, download=download)
        return ImageData(
            "cifar10", tx.to(device), ty.to(device), vx.to(device), vy.to(device), CIFAR_MEAN, CIFAR_STD, 10
        )
    raise DataError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}", "dataset")


class BatchStream:
    """Shuffled batches of indices into ``num`` items, from an explicit CPU generator.

    ``epoch_mode=True``: one pass per epoch, the last batch may be short (the weight stream).
    ``epoch_mode=False``: an endless stream of full batches, reshuffled whenever fewer than a batch
    remain (the architecture stream: a persistent shuffled iterator, a documented deviation from the
    reference's fresh iterator per step, spec §3.1).
    """

    def __init__(self, num: int, batch_size: int, seed: int, epoch_mode: bool):
        if num <= 0:
            raise DataError("no images to draw batches from", "dataset")
        self.num, self.batch_size, self.epoch_mode = num, min(batch_size, num), epoch_mode
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(num, generator=self.gen)
        self.pos = 0

    def steps_per_epoch(self) -> int:
        return -(-self.num // self.batch_size)

    def new_epoch(self) -> None:
        self.perm = torch.randperm(self.num, generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if not self.epoch_mode and self.pos + self.batch_size > self.num:
            self.new_epoch()
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += len(idx)
        return idx

    def state_dict(self) -> dict[str, Any]:
        return {"perm": self.perm.clone(), "pos": self.pos, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])
        self.gen.set_state(state["gen"])


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move a small CPU tensor (indices, random draws) to ``device`` without stalling the host.

    A plain copy from pageable memory to a GPU waits for the stream, i.e. for every kernel queued before
    it; going through pinned memory makes the copy asynchronous. On the CPU this returns ``t`` itself.
    """
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


@functools.lru_cache(maxsize=16)
def _channel_constants(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """Normalisation constants as a 1×C×1×1 tensor, made once per device instead of once per batch."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, len(values), 1, 1)  # as x.float()


def augment(
    x: torch.Tensor,
    gen: torch.Generator,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    pad: int = 4,
    flip: bool = True,
    cutout: int = 0,
    train: bool = True,
    part: tuple[int, int] | None = None,
) -> torch.Tensor:
    """uint8 batch -> normalised float batch; random crop (zero padding), flip and cutout when ``train``.

    Random numbers come from ``gen`` (CPU) so a checkpoint reproduces them; the pixel work runs on
    ``x.device`` for the whole batch. ``part=(lo, n)``: ``x`` is the images lo, lo+1, ... of a batch of n
    (one rank's slice under DDP); the random numbers are drawn for all n, as for the whole batch, and
    those of the slice are used, so ``gen`` advances and the slice's images come out exactly as there.
    """
    device = x.device
    B, C, H, W = x.shape
    lo, n = (0, B) if part is None else part

    def draw(sample: Callable[[int], torch.Tensor]) -> torch.Tensor:
        return to_device(sample(n)[lo : lo + B], device)

    m = _channel_constants(tuple(mean), device)
    s = _channel_constants(tuple(std), device)
    out = (x.float() / 255.0 - m) / s
    if not train:
        return out
    if pad > 0:
        # Zero padding of the raw image = padding with -mean/std after normalisation.
        padded = torch.nn.functional.pad(x.float() / 255.0, (pad, pad, pad, pad))
        oy = draw(lambda k: torch.randint(0, 2 * pad + 1, (k,), generator=gen))
        ox = draw(lambda k: torch.randint(0, 2 * pad + 1, (k,), generator=gen))
        rows = oy[:, None] + torch.arange(H, device=device)[None]  # B×H
        cols = ox[:, None] + torch.arange(W, device=device)[None]  # B×W
        b = torch.arange(B, device=device)[:, None, None]
        crop = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # B×H×W×C
        out = (crop.permute(0, 3, 1, 2) - m) / s
    if flip:
        mask = draw(lambda k: torch.rand(k, generator=gen) < 0.5)
        out = torch.where(mask[:, None, None, None], out.flip(3), out)
    if cutout > 0:
        cy = draw(lambda k: torch.randint(0, H, (k,), generator=gen))
        cx = draw(lambda k: torch.randint(0, W, (k,), generator=gen))
        ys = torch.arange(H, device=device)[None, :, None]
        xs = torch.arange(W, device=device)[None, None, :]
        half = cutout // 2
        hole = (
            (ys >= (cy - half)[:, None, None])
            & (ys < (cy + cutout - half)[:, None, None])
            & (xs >= (cx - half)[:, None, None])
            & (xs < (cx + cutout - half)[:, None, None])
        )
        out = out.masked_fill(hole[:, None], 0.0)
    return out.contiguous()
