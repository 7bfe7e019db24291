"""Count the ATen operations that launch kernels (views excluded) in one training forward + backward of the
search network, plain against fused (``supernet/fused.py``), and the bytes they write; with ``--search-step``
also in one whole eager search step (``loops.search._search_step``, first and second order; SGD and Adam in
their foreach form, torch's default on CUDA, unless ``--cpu-optimizers``: a foreach call counts as one
operation, though on a GPU it launches one kernel per chunk of tensors). A device-independent proxy for the
launch-bound GPU step (docs PERFORMANCE.md: the step is bound by kernel launches). Not a test.

    OMP_NUM_THREADS=1 python benchmarks/op_count.py                  # paper network, batch 2, CPU
    OMP_NUM_THREADS=1 python benchmarks/op_count.py --src /other/checkout/src --out ops.json
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, use_src, write_json

SRC = use_src()

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dartsnas.data.images import ImageData
from dartsnas.loops.search import SearchConfig, _search_step, _State
from dartsnas.supernet.network import SearchNetwork

# Allocation and aliasing ops that launch no kernel of their own.
_FREE = {"empty", "empty_strided", "_unsafe_view", "lift_fresh", "new_empty_strided"}


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__.split(".")[0]
        if not func.is_view and name not in _FREE:
            self.ops[name] += 1
            if isinstance(out, torch.Tensor):
                self.bytes += out.numel() * out.element_size()
        return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--search-step", action="store_true", help="also count one eager search step per order")
    p.add_argument(
        "--cpu-optimizers",
        action="store_true",
        help="count torch's CPU optimizers as they run on a CPU (a per-parameter loop); by default SGD and Adam "
        "are switched to their foreach form, torch's default on CUDA, so that the count is the GPU step's",
    )
    p.add_argument("--src", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    result = {
        "benchmark": "op-count",
        "settings": {
            "init_channels": a.init_channels,
            "layers": a.layers,
            "batch_size": a.batch_size,
            "pass": "train forward + backward",
            "optimizers": "per-parameter loop (CPU default)" if a.cpu_optimizers else "foreach (the CUDA default)",
        },
        "environment": environment(torch.device("cpu"), SRC),
        "results": {},
    }
    for fused in (False, True):
        torch.manual_seed(0)
        net = SearchNetwork(a.init_channels, 10, a.layers, 4, fused=fused)
        x = torch.randn(a.batch_size, 3, 32, 32)
        y = torch.randint(0, 10, (a.batch_size,))
        with _Count() as c:
            torch.nn.functional.cross_entropy(net(x), y).backward()
        result["results"]["fused" if fused else "plain"] = {
            "ops": sum(c.ops.values()),
            "mb_written": round(c.bytes / 1e6, 1),
            "top": c.ops.most_common(10),
        }
    if a.search_step:
        z = torch.zeros(4 * a.batch_size, 3, 32, 32, dtype=torch.uint8)
        data = ImageData(
            "synthetic",
            z,
            torch.zeros(len(z), dtype=torch.long),
            z,
            torch.zeros(len(z), dtype=torch.long),
            (0.5,) * 3,
            (0.25,) * 3,
            10,
        )
        for order in (1, 2):
            for fused in (False, True):
                cfg = SearchConfig.build(
                    "paper",
                    order=order,
                    fused_ops=fused,
                    init_channels=a.init_channels,
                    layers=a.layers,
                    batch_size=a.batch_size,
                    device="cpu",
                    progress=False,
                )
                torch.manual_seed(0)
                st = _State(cfg, data, torch.device("cpu"))
                if not a.cpu_optimizers:  # on CUDA, torch's SGD and Adam default to foreach=True
                    for opt in (st.w_opt, st.a_opt):
                        for group in opt.param_groups:
                            group["foreach"] = True
                x = torch.randn(2, a.batch_size, 3, 32, 32)
                y = torch.randint(0, 10, (2, a.batch_size))
                _search_step(st, torch.nn.CrossEntropyLoss(), x[0], y[0], x[1], y[1], 0.025)  # optimizer state
                with _Count() as c:
                    _search_step(st, torch.nn.CrossEntropyLoss(), x[0], y[0], x[1], y[1], 0.025)
                result["results"][f"search-step-order{order}-{'fused' if fused else 'plain'}"] = {
                    "ops": sum(c.ops.values()),
                    "mb_written": round(c.bytes / 1e6, 1),
                    "top": c.ops.most_common(10),
                }
    write_json(result, a.out)
    return result


if __name__ == "__main__":
    main()
