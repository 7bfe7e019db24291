"""CNN search-step throughput at the reference's settings (spec §1.4, §3; docs PERFORMANCE.md).

C=16, 8 cells, 4 nodes, batch 64 train + 64 validation of synthetic 32x32 images already on the device,
first and/or second order. Every mode drives the real search code: a ``loops.search._State`` (network, both
optimizers, ``Architect``) stepped by ``loops.search._search_step`` (eager modes) or by
``loops.graphed.GraphedSearchStep`` (graph modes, the same step captured as one CUDA graph). Warm-up steps,
then timed steps between ``torch.cuda.synchronize()`` calls. Prints one JSON object (and writes it with
``--out``). Not a test.

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

    PYTHONPATH=src python benchmarks/search_step.py --device cuda --order 1 2 --out search_bench.json
    PYTHONPATH=src python benchmarks/search_step.py --device cuda --order 1 2 --steps 10 --warmup 3 \
        --steps2 5 --modes2 eager,fused,fused+graph,graph --time-budget 170 --out search_bench.json
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/search_step.py --device cpu --threads 1 \\
        --batch-size 8 --steps 2 --warmup 1 --order 1 --modes eager,fused
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from dartsnas.data.images import ImageData  # noqa: E402
from dartsnas.loops.common import resolve_device  # noqa: E402
from dartsnas.loops.search import SUMS, SearchConfig, _search_step, _State  # noqa: E402
from dartsnas.loops.state import Sums  # noqa: E402

ALL_MODES = ("eager", "fused", "fused+cl", "fused+bf16", "graph", "fused+graph", "fused+graph+bf16")


def _state(args, order: int, fused: bool, device: torch.device) -> _State:
    cfg = SearchConfig.build("paper", order=order, batch_size=args.batch_size, init_channels=args.init_channels,
                             layers=args.layers, fused_ops=fused, device=str(device), progress=False)
    # _State reads only the number of images and classes from the data; two images suffice.
    data = ImageData("synthetic", torch.zeros(2, 3, 32, 32, dtype=torch.uint8, device=device),
                     torch.zeros(2, dtype=torch.long, device=device),
                     torch.zeros(2, 3, 32, 32, dtype=torch.uint8, device=device),
                     torch.zeros(2, dtype=torch.long, device=device), (0.5,) * 3, (0.25,) * 3, 10)
    torch.manual_seed(args.seed)
    st = _State(cfg, data, device)
    st.model.train()
    return st


def run_mode(args, mode: str, order: int, device: torch.device) -> dict:
    parts = set(mode.split("+"))
    unknown = parts - {"eager", "fused", "cl", "bf16", "graph"}
    if unknown or mode not in ALL_MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(ALL_MODES)}")
    cuda = device.type == "cuda"
    if "graph" in parts and not cuda:
        raise RuntimeError("graph modes need CUDA")
    st = _state(args, order, "fused" in parts, device)
    fmt = torch.channels_last if "cl" in parts else torch.contiguous_format
    if "cl" in parts:
        st.model.to(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    B = args.batch_size
    x_t = torch.randn(B, 3, 32, 32, device=device, generator=gen).contiguous(memory_format=fmt)
    x_v = torch.randn(B, 3, 32, 32, device=device, generator=gen).contiguous(memory_format=fmt)
    y_t = torch.randint(0, 10, (B,), device=device, generator=gen)
    y_v = torch.randint(0, 10, (B,), device=device, generator=gen)
    criterion = torch.nn.CrossEntropyLoss()
    lr = st.cfg.lr
    if "bf16" in parts:
        def amp():
            return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    else:
        amp = nullcontext
    sums = Sums(SUMS, device)  # the loop driver's named running sums
    if "graph" in parts:
        from dartsnas.loops.graphed import GraphedSearchStep
        stepper = GraphedSearchStep(st, criterion, autocast=amp)

        def step():
            sums.add(stepper.step(x_t, y_t, x_v, y_v, lr))
            st.global_step += 1
    else:
        stepper = None

        def step():
            with amp():
                sums.add(_search_step(st, criterion, x_t, y_t, x_v, y_v, lr))
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
    totals = sums.values()
    finite = all(map(lambda v: v == v and abs(v) != float("inf"), totals.values()))
    return {
        "mode": mode, "order": order, "steps": args.steps, "warmup": args.warmup,
        "seconds": round(dt, 4), "warmup_seconds": round(warm_s, 3),
        "steps_per_s": round(args.steps / dt, 4),
        "images_per_s": round(2 * B * args.steps / dt, 2),  # train + validation batch
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 1e9, 3) if cuda else None,
        "mean_train_loss": totals["loss"] / max(totals["count"], 1), "finite": finite,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--order", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--modes", default=None, help=f"comma list of {', '.join(ALL_MODES)} "
                   "(default: all on CUDA, eager,fused on CPU)")
    p.add_argument("--modes2", default=None, help="modes for order 2 only (default: --modes)")
    p.add_argument("--steps2", type=int, default=None, help="timed steps for order 2 only (default: --steps)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on CUDA, 2 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on CUDA, 1 on CPU)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--init-channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; modes not started before it runs out are reported as skipped")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="(the reference turns it on)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    args.steps = args.steps if args.steps is not None else (20 if cuda else 2)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    modes = args.modes.split(",") if args.modes else (list(ALL_MODES) if cuda else ["eager", "fused"])
    modes2 = args.modes2.split(",") if args.modes2 else modes
    steps1 = args.steps
    steps2 = args.steps2 if args.steps2 is not None else args.steps
    result = {
        "benchmark": "cnn-search-step",
        "settings": {"init_channels": args.init_channels, "layers": args.layers, "num_nodes": 4,
                     "batch_size": args.batch_size, "val_batch_size": args.batch_size, "image_size": 32,
                     "steps": steps1, "warmup": args.warmup, "orders": args.order, "modes": modes,
                     "modes_order2": modes2, "steps_order2": steps2,
                     "cudnn_benchmark": bool(cuda and not args.no_cudnn_benchmark),
                     "data": "synthetic, on the device", "threads": torch.get_num_threads()},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(),
        "reference_h100_steps_per_s": {"1": 0.883, "2": 0.254},
        "results": [],
    }
    for order in args.order:
        args.steps = steps2 if order == 2 else steps1
        for mode in (modes2 if order == 2 else modes):
            elapsed = time.perf_counter() - t_start
            if args.time_budget is not None and elapsed > args.time_budget:
                result["results"].append({"mode": mode, "order": order, "skipped": f"time budget ({elapsed:.0f} s)"})
                continue
            try:
                r = run_mode(args, mode, order, device)
            except Exception as e:  # report and go on: this runs unattended
                r = {"mode": mode, "order": order, "error": f"{type(e).__name__}: {e}"[:2000],
                     "traceback": traceback.format_exc()[-3000:]}
            finally:
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.empty_cache()
            result["results"].append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
            if args.out:  # after every mode, so that a killed run still leaves what it measured
                Path(args.out).write_text(json.dumps({**result, "partial": True}, indent=1) + "\n")
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
