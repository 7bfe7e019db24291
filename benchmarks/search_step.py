"""CNN search-step throughput at the reference's settings (spec §1.4, §3; docs PERFORMANCE.md).

C=16, 8 cells, 4 nodes, batch 64 train + 64 validation 32x32 images, first and/or second order. Every mode
drives the real search code, data path included: a ``loops.search._State`` (network, both optimizers,
``Architect``, the two ``BatchStream``s and the augmentation generator) over a synthetic uint8 image set held
on the device, each step drawing its two batches exactly as ``run_search`` does (index stream -> pinned
copy to the device -> gather -> crop/flip/normalise from uint8 on the device, ``data.images.augment``), then
``loops.search._search_step`` (eager modes) or ``loops.graphed.GraphedSearchStep`` (graph modes, the same
step captured as one CUDA graph). ``--data-path off`` times the step alone on fixed pre-made batches (the
reference's way). Warm-up steps, then timed steps between ``torch.cuda.synchronize()`` calls. Prints one
JSON object (and writes it with ``--out``). Not a test.

Modes (comma list, ``--modes``):

* ``eager``: the default step (plain mixed operation), fp32.
* ``fused``: ``SearchConfig.fused_ops`` (supernet/fused.py), same mathematics, fewer kernels.
* ``fused+cl``: fused, model and batches in channels-last memory format.
* ``fused+bf16``: fused, bfloat16 autocast around the step (changes the arithmetic precision).
* ``graph``: plain mixed op, whole step as one CUDA graph (CUDA only).
* ``fused+graph``: fused and graphed (CUDA only).
* ``fused+graph+bf16``: fused, graphed, bf16 autocast (CUDA only).

Each mode is run for each ``--order``; a mode that fails is reported as ``{"mode", "order", "error"}`` and
the run goes on; when ``--time-budget`` seconds have passed, the remaining modes are reported as skipped.
``--src PATH`` times another checkout's code (benchmarks/_common.py).

    PYTHONPATH=src python benchmarks/search_step.py --device cuda --order 1 2 --out search_bench.json
    PYTHONPATH=src python benchmarks/search_step.py --device cuda --order 1 2 --steps 10 --warmup 3 \\
        --steps2 5 --modes2 eager,fused,fused+graph,graph --time-budget 170 --out search_bench.json
    OMP_NUM_THREADS=2 python benchmarks/search_step.py --device cpu --threads 2 --init-channels 16 \\
        --layers 5 --batch-size 32 --steps 3 --warmup 1 --order 1 --modes eager,fused
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, use_src, write_json

SRC = use_src()

import torch

from dartsnas.data.images import ImageData, augment, to_device
from dartsnas.loops.common import resolve_device
from dartsnas.loops.search import SearchConfig, _search_step, _State

try:  # the loop engine's named running sums; an older checkout (--src) keeps a 4-slot tensor on the state
    from dartsnas.loops.search import SUMS
    from dartsnas.loops.state import Sums
except ImportError:
    SUMS = Sums = None

ALL_MODES = ("eager", "fused", "fused+cl", "fused+bf16", "graph", "fused+graph", "fused+graph+bf16")
REFERENCE_H100_STEPS_PER_S = {"1": 0.883, "2": 0.254}  # docs PERFORMANCE.md, measured 2026-11-27


def synthetic_images(n: int, device: torch.device, seed: int) -> ImageData:
    """``n`` random uint8 32x32 images with labels, on the device (the search splits them 50/50)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    return ImageData("synthetic", x, y, x[:2], y[:2], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 10)


def _state(args, order: int, fused: bool, device: torch.device, data: ImageData) -> _State:
    cfg = SearchConfig.build(
        "paper",
        order=order,
        batch_size=args.batch_size,
        init_channels=args.init_channels,
        layers=args.layers,
        fused_ops=fused,
        device=str(device),
        progress=False,
    )
    torch.manual_seed(args.seed)
    st = _State(cfg, data, device)
    st.model.train()
    return st


def run_mode(args, mode: str, order: int, device: torch.device, data: ImageData) -> dict:
    parts = set(mode.split("+"))
    unknown = parts - {"eager", "fused", "cl", "bf16", "graph"}
    if unknown or mode not in ALL_MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(ALL_MODES)}")
    cuda = device.type == "cuda"
    if "graph" in parts and not cuda:
        raise RuntimeError("graph modes need CUDA")
    st = _state(args, order, "fused" in parts, device, data)
    fmt = torch.channels_last if "cl" in parts else torch.contiguous_format
    if "cl" in parts:
        st.model.to(memory_format=torch.channels_last)
    B = args.batch_size

    def batch(idx_pool: torch.Tensor, stream) -> tuple[torch.Tensor, torch.Tensor]:
        # As run_search's batch(); the weight stream starts a new epoch when it runs out (--images is a
        # multiple of the batch, so every batch is full and a graph is captured once).
        if stream.epoch_mode and stream.pos >= stream.num:
            stream.new_epoch()
        idx = idx_pool[to_device(stream.next(), device)]
        x = augment(data.train_x[idx], st.aug_gen, data.mean, data.std)
        return x.contiguous(memory_format=fmt), data.train_y[idx]

    if args.data_path == "off":
        fixed = (*batch(st.w_idx, st.train_stream), *batch(st.a_idx, st.val_stream))

        def batches():
            return fixed
    else:

        def batches():
            return (*batch(st.w_idx, st.train_stream), *batch(st.a_idx, st.val_stream))

    criterion = torch.nn.CrossEntropyLoss()
    lr = st.cfg.lr
    if "bf16" in parts:

        def amp():
            return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    else:
        amp = nullcontext
    sums = Sums(SUMS, device) if Sums is not None else None  # the loop driver's named running sums

    def _add(out):
        if sums is not None:
            sums.add(out)

    if "graph" in parts:
        from dartsnas.loops.graphed import GraphedSearchStep

        stepper = GraphedSearchStep(st, criterion, autocast=amp)

        def step():
            _add(stepper.step(*batches(), lr))
            st.global_step += 1
    else:
        stepper = None

        def step():
            x_t, y_t, x_v, y_v = batches()
            with amp():
                _add(_search_step(st, criterion, x_t, y_t, x_v, y_v, lr))
            st.global_step += 1

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    t = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    dt = time.perf_counter() - t
    if stepper is not None:
        stepper.check()
    if sums is not None:
        totals = sums.values()
    else:
        loss, correct, count, _ = st.sums.tolist()
        totals = {"loss": loss, "correct": correct, "count": count}
    finite = all(math.isfinite(v) for v in totals.values())
    sps = args.steps / dt
    out = {
        "mode": mode,
        "order": order,
        "steps": args.steps,
        "warmup": args.warmup,
        "seconds": round(dt, 4),
        "warmup_seconds": round(warm_s, 3),
        "steps_per_s": round(sps, 4),
        "ms_per_step": round(1000 / sps, 2),
        "images_per_s": round(2 * B * sps, 2),  # train + validation batch
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if cuda else None,
        "mean_train_loss": totals["loss"] / max(totals["count"], 1),
        "finite": finite,
        "switches": {
            "fused_ops": "fused" in parts,
            "channels_last": "cl" in parts,
            "bf16_autocast": "bf16" in parts,
            "cuda_graph": "graph" in parts,
            "data_path": args.data_path,
        },
    }
    if (args.batch_size, args.init_channels, args.layers) == (64, 16, 8):
        out["ratio_to_reference_h100"] = round(sps / REFERENCE_H100_STEPS_PER_S[str(order)], 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--order", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument(
        "--modes", default=None, help=f"comma list of {', '.join(ALL_MODES)} (default: all on CUDA, eager,fused on CPU)"
    )
    p.add_argument("--modes2", default=None, help="modes for order 2 only (default: --modes)")
    p.add_argument("--steps2", type=int, default=None, help="timed steps for order 2 only (default: --steps)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument(
        "--images",
        type=int,
        default=None,
        help="synthetic uint8 images on the device (default 16 batches; rounded to whole batches)",
    )
    p.add_argument(
        "--data-path",
        choices=["on", "off"],
        default="on",
        help="on: draw and augment every batch as the search loop does; off: fixed pre-made batches",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds; modes not started before it runs out are reported as skipped",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="(the reference and the loops turn it on)")
    p.add_argument("--deterministic", action="store_true", help="deterministic cuDNN kernels (as the loops' switch)")
    p.add_argument("--src", default=None, help="import dartsnas from this src folder (default: this checkout)")
    p.add_argument("--label", default=None, help="a name for this run in the JSON (e.g. before/after)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = not (args.no_cudnn_benchmark or args.deterministic)
        torch.backends.cudnn.deterministic = args.deterministic
    args.steps = args.steps if args.steps is not None else (20 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    modes = args.modes.split(",") if args.modes else (list(ALL_MODES) if cuda else ["eager", "fused"])
    modes2 = args.modes2.split(",") if args.modes2 else modes
    steps1 = args.steps
    steps2 = args.steps2 if args.steps2 is not None else args.steps
    n_images = 2 * args.batch_size * max(1, (args.images or 32 * args.batch_size) // (2 * args.batch_size))
    data = synthetic_images(n_images, device, args.seed)
    result = {
        "benchmark": "cnn-search-step",
        "label": args.label,
        "settings": {
            "init_channels": args.init_channels,
            "layers": args.layers,
            "num_nodes": 4,
            "batch_size": args.batch_size,
            "val_batch_size": args.batch_size,
            "image_size": 32,
            "steps": steps1,
            "warmup": args.warmup,
            "orders": args.order,
            "modes": modes,
            "modes_order2": modes2,
            "steps_order2": steps2,
            "images": n_images,
            "data": (
                "synthetic uint8 images on the device, drawn and augmented as run_search does"
                if args.data_path == "on"
                else "fixed pre-made batches on the device (no data path)"
            ),
        },
        "environment": environment(device, SRC),
        "reference_h100_steps_per_s": REFERENCE_H100_STEPS_PER_S,
        "results": [],
    }
    for order in args.order:
        args.steps = steps2 if order == 2 else steps1
        for mode in modes2 if order == 2 else modes:
            elapsed = time.perf_counter() - t_start
            if args.time_budget is not None and elapsed > args.time_budget:
                result["results"].append({"mode": mode, "order": order, "skipped": f"time budget ({elapsed:.0f} s)"})
                continue
            try:
                r = run_mode(args, mode, order, device, data)
            except Exception as e:  # noqa: BLE001  (report and go on: this runs unattended)
                r = {
                    "mode": mode,
                    "order": order,
                    "error": f"{type(e).__name__}: {e}"[:2000],
                    "traceback": traceback.format_exc()[-3000:],
                }
            finally:
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.empty_cache()
            result["results"].append(r)
            print(r, file=sys.stderr, flush=True)
            if args.out:  # after every mode, so that a killed run still leaves what it measured
                write_json({**result, "partial": True}, args.out)
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
