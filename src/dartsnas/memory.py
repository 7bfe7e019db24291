"""Memory of a search step, measured (issue 10 item 4: PC-DARTS's saving is the point of it, ROBUST-SPEC §3.1).

On a GPU a supernet's step memory is dominated by the activations autograd saves for the backward pass: every
candidate operation on every edge keeps its intermediate tensors until the backward has used them. This module
counts them, on any device, with ``torch.autograd.graph.saved_tensors_hooks``:

* every tensor autograd saves is wrapped in a handle; the handle lives exactly as long as autograd keeps the
  saved tensor (it is dropped when the backward releases the graph), so a ``weakref.finalize`` on it says when
  the tensor stops being held;
* bytes are counted per storage (a view, a tensor saved twice or by two operations count once: the memory is
  the storage's), while at least one handle holds it; ``peak_bytes`` is the largest total held at once. A step
  that runs two forward/backward passes one after the other (the α step, then the weight step) peaks at the
  larger pass, not at their sum, because the first pass's saved tensors are gone before the second starts;
* storages of ``exclude`` (the model's parameters and buffers: they exist whether or not a step runs) are left
  out, so the figure is the activation memory the step adds.

The count is exact and deterministic (it does not depend on an allocator), so it is the same on a CPU and on a
GPU for the same step; on a GPU ``measure_search_step`` also reports ``torch.cuda.max_memory_allocated``.

Example::

    >>> lin = torch.nn.Linear(5, 3)
    >>> with SavedTensorMeter(exclude=lin.parameters()) as m:
    ...     torch.relu(lin(torch.randn(4, 5))).sum().backward()
    >>> m.peak_bytes  # the input (4×5) and the ReLU output (4×3), float32
    128
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


def _storage_key(t: Tensor) -> tuple[str, int, int] | None:
    """(device, address, bytes) of ``t``'s storage; None for a tensor without one (empty, sparse, meta)."""
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    n = s.nbytes()
    return None if n == 0 else (str(t.device), s.data_ptr(), n)


class _Handle:
    """What the pack hook returns in place of the tensor: autograd holds it as long as the saved tensor.

    It keeps the tensor detached: a saved output keeps its ``grad_fn`` otherwise, and the node would hold the
    handle that holds the node, a cycle the garbage collector cannot see (a leak of every graph the backward
    did not traverse, such as the weights' side of the α step).
    """

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor):
        self.tensor = tensor.detach()


class SavedTensorMeter:
    """Context manager: the bytes of the tensors autograd saves for backward inside it (see the module).

    ``peak_bytes``: the most held at once; ``total_bytes``: every distinct storage saved, summed over the
    whole block (a storage freed and its address reused later counts again); ``current_bytes``: held now.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()):
        self.excluded = {k[:2] for k in map(_storage_key, exclude) if k is not None}
        self.held: dict[tuple[str, int], list[int]] = {}  # storage -> [bytes, handles holding it]
        self.current_bytes = 0
        self.peak_bytes = 0
        self.total_bytes = 0
        self._hooks: Any = None

    def _pack(self, t: Tensor) -> _Handle:
        h = _Handle(t)
        key = _storage_key(t)
        if key is None or key[:2] in self.excluded:
            return h
        entry = self.held.get(key[:2])
        if entry is None:
            self.held[key[:2]] = [key[2], 1]
            self.current_bytes += key[2]
            self.total_bytes += key[2]
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        else:
            entry[1] += 1
        weakref.finalize(h, self._release, key[:2])
        return h

    def _release(self, key: tuple[str, int]) -> None:
        entry = self.held[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current_bytes -= entry[0]
            del self.held[key]

    @staticmethod
    def _unpack(h: _Handle) -> Tensor:
        return h.tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def saved_tensor_bytes(fn: Callable[[], Any], exclude: Iterable[Tensor] = ()) -> dict[str, int]:
    """Run ``fn()`` under a ``SavedTensorMeter``; its ``peak_bytes``, ``total_bytes`` and the bytes still held
    at the end (``held_after_bytes``: 0 when every backward released its graph)."""
    with SavedTensorMeter(exclude) as m:
        fn()
    return {"peak_bytes": m.peak_bytes, "total_bytes": m.total_bytes, "held_after_bytes": m.current_bytes}


def measure_search_step(cfg: Any, batch_size: int, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """The saved-for-backward bytes of one search step of ``cfg`` (a ``SearchConfig``; its space, method and
    order) at ``batch_size``, on random 32×32 (or ``cfg.image_size``) inputs.

    The step is the search loop's own (``loops.search._State`` and ``_search_step``: α step, then weight step),
    run once to warm up and once measured, at an epoch past any warm-up so that the α step runs. Parameters
    and buffers are excluded. On CUDA the result also holds ``cuda_max_allocated_bytes`` (the allocator's peak
    during the measured step) and ``cuda_before_bytes`` (allocated before it: model, optimiser states).
    """
    from .data.images import ImageData
    from .loops.search import _search_step, _State

    dev = torch.device(device)
    size = cfg.image_size or 32
    g = torch.Generator().manual_seed(seed)
    n = 2 * batch_size
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    data = ImageData("random", images, labels, images[:2], labels[:2], (0.5,) * 3, (0.25,) * 3, 10)
    torch.manual_seed(seed)
    st = _State(cfg, data, dev)
    st.model.train()
    st.epoch = next((e for e in range(cfg.epochs) if st.method.updates_alpha(e)), 0)  # past PC-DARTS's warm-up
    criterion = torch.nn.CrossEntropyLoss()

    def batch() -> tuple[Tensor, Tensor]:
        x = torch.randn(batch_size, 3, size, size, generator=g).to(dev)
        return x, torch.randint(0, 10, (batch_size,), generator=g).to(dev)

    def step() -> None:
        x_t, y_t = batch()
        x_v, y_v = batch()
        _search_step(st, criterion, x_t, y_t, x_v, y_v, cfg.lr)
        st.global_step += 1

    step()  # warm-up: optimiser states exist, as in every step after the first
    state = list(st.model.parameters()) + list(st.model.buffers())
    state += [t for s in st.w_opt.state.values() for t in s.values() if isinstance(t, Tensor)]
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    out: dict[str, Any] = saved_tensor_bytes(step, exclude=state)
    out.update(
        batch_size=batch_size,
        weights=sum(p.numel() for p in st.model.weights()),
        alpha_step=st.method.updates_alpha(st.epoch),
    )
    if cuda:
        torch.cuda.synchronize(dev)
        out.update(cuda_before_bytes=before, cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(dev))
    return out
