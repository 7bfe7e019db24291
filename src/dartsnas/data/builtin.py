"""A small image dataset generated deterministically in code: no files, no downloads.

Ten classes, each a coloured grating: the colour (5 hues) and the orientation (horizontal or vertical)
together name the class; phase, contrast, brightness and noise vary per image. A small convolutional
network learns it within a minute or two on a laptop CPU, which is what the quick start and the tests
need; it says nothing about CIFAR-10 accuracy.
"""

from __future__ import annotations

import math

import torch

PALETTE = torch.tensor(
    [
        [0.9, 0.2, 0.2],
        [0.2, 0.8, 0.2],
        [0.2, 0.3, 0.9],
        [0.9, 0.8, 0.1],
        [0.7, 0.2, 0.8],
    ]
)


def make_builtin_images(
    num_train: int = 2048, num_test: int = 512, size: int = 16, seed: int = 0, num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (train_x uint8 N×3×S×S, train_y int64, test_x, test_y); identical for identical arguments."""
    gen = torch.Generator().manual_seed(seed)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        y = y[torch.randperm(n, generator=gen)]
        colour = PALETTE[y % len(PALETTE)]  # n×3
        vertical = (y // len(PALETTE)) % 2 == 1  # n
        freq = 2 * math.pi / (3.0 + 2.0 * torch.rand(n, generator=gen))
        phase = 2 * math.pi * torch.rand(n, generator=gen)
        coords = torch.arange(size, dtype=torch.float32)
        along = torch.where(
            vertical[:, None, None],
            coords[None, None, :].expand(n, size, size),
            coords[None, :, None].expand(n, size, size),
        )
        wave = torch.sin(freq[:, None, None] * along + phase[:, None, None])  # n×S×S
        contrast = 0.1 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
        base = 0.3 + 0.3 * torch.rand(n, 1, 1, 1, generator=gen)
        img = base + contrast * wave[:, None] * colour[:, :, None, None] * 1.5
        img = img + 0.3 * torch.randn(n, 3, size, size, generator=gen)
        return (img.clamp(0, 1) * 255).round().to(torch.uint8), y.long()

    train_x, train_y = make(num_train)
    test_x, test_y = make(num_test)
    return train_x, train_y, test_x, test_y
