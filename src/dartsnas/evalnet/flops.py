"""Multiply-add counter for the evaluation networks (spec §6, §11.8).

Convention (per sample, eval mode, so no auxiliary head and no drop path):

* ``nn.Conv2d``: ``Cout * Hout * Wout * (Cin / groups) * kh * kw`` multiply-adds (the kernel size as
  written; dilation adds no work). The bias, when there is one, is not counted.
* ``nn.Linear``: ``in_features * out_features`` per row (rows = everything but the feature dimension).
* Not counted: batch norm, ReLU, pooling (average or max), additions between op outputs, concatenation.

With this convention DARTS_V2 in the ImageNet mobile network at 224x224 gives about 530M, not the 574M
the paper quotes; the paper's convention is unknown, so §6 treats the figure as a soft check.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["count_multiply_adds"]


def count_multiply_adds(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass of ``model`` for one sample, counted with forward hooks.

    ``input_shape`` is (C, H, W), or (N, C, H, W) in which case the count is still per sample. The model
    runs once in eval mode under ``torch.no_grad()`` on a zero input of the model's dtype and device;
    its previous training/eval mode is restored afterwards.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W) with positive sizes, got {tuple(input_shape)}")
    batch = shape[0]
    total = [0]

    def conv_hook(module: nn.Conv2d, inputs, output: torch.Tensor) -> None:
        kh, kw = module.kernel_size
        per_output = (module.in_channels // module.groups) * kh * kw
        total[0] += (output.numel() // batch) * per_output

    def linear_hook(module: nn.Linear, inputs, output: torch.Tensor) -> None:
        rows = output.numel() // module.out_features // batch
        total[0] += rows * module.in_features * module.out_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, dtype=dtype, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(total[0])
