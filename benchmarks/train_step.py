"""Training-step throughput of an evaluation network at the paper's CIFAR-10 settings (spec §5).

DARTS_V2, C=36, 20 cells, auxiliary head (weight 0.4), drop path 0.2 (the value of the last epochs), batch
96, SGD with clip 5: exactly the step ``dartsnas train`` runs (``dartsnas.loops.train.Stepper``), data path
included: a synthetic uint8 image set on the device, batches drawn by the loop's own ``_TensorData``
(index stream, device gather, crop/flip/cutout 16 and normalisation from uint8 on the device).
``--data-path off`` times the step alone on one fixed batch. Warm-up steps, then timed steps between device
synchronisations. Prints one JSON object (``--out``: also writes it). ``--src PATH`` times another checkout
(benchmarks/_common.py). Not a test.

    PYTHONPATH=src python benchmarks/train_step.py --device cuda --steps 50
    PYTHONPATH=src python benchmarks/train_step.py --device cpu --steps 3 --warmup 1
    PYTHONPATH=src python benchmarks/train_step.py --device cuda --channels-last off --bf16 off \
        --optimizer-impl for-loop
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, use_src, write_json

SRC = use_src()

import torch

from dartsnas.data.images import BatchStream, ImageData
from dartsnas.evalnet.cnn import count_parameters
from dartsnas.loops.common import resolve_device
from dartsnas.loops.train import (
    Stepper,
    TrainConfig,
    _TensorData,
    build_network,
    resolve_runtime,
)
from dartsnas.space.genotype import load_genotype

REFERENCE_H100_STEPS_PER_S = 5.14  # docs PERFORMANCE.md, measured 2026-11-27


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=50, help="timed steps (CPU: a few suffice)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--genotype", default="DARTS_V2")
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--init-channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--drop-path", type=float, default=0.2)
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--optimizer-impl", choices=["auto", "fused", "foreach", "for-loop"], default="auto")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument(
        "--cuda-graph",
        choices=["on", "off"],
        default="off",
        help="the graphed step (GraphedTrainStep); on a CPU its body runs uncaptured: a check, not a speed figure",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    p.add_argument("--images", type=int, default=None, help="synthetic uint8 images (default 16 batches)")
    p.add_argument("--data-path", choices=["on", "off"], default="on")
    p.add_argument("--deterministic", action="store_true", help="deterministic cuDNN kernels (the loops' switch)")
    p.add_argument("--src", default=None, help="import dartsnas from this src folder (default: this checkout)")
    p.add_argument("--label", default=None)
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:  # as the training loop sets it (loops.common.set_determinism)
        torch.backends.cudnn.benchmark = not args.deterministic
        torch.backends.cudnn.deterministic = args.deterministic
    cfg = TrainConfig.build(
        "paper",
        genotype=args.genotype,
        batch_size=args.batch_size,
        init_channels=args.init_channels,
        layers=args.layers,
        channels_last=args.channels_last,
        bf16=args.bf16,
        optimizer_impl=args.optimizer_impl,
        compile=args.compile,
        device=str(device),
    )
    rt = resolve_runtime(cfg, device)
    torch.manual_seed(0)
    model = build_network(cfg, load_genotype(args.genotype), 10).to(device)
    model.drop_path_prob = args.drop_path
    model.train()
    stepper = Stepper(model, cfg, rt)
    step = stepper.step
    if args.cuda_graph == "on":
        from dartsnas.loops.graphed import GraphedTrainStep

        graphed = GraphedTrainStep(stepper, eager=not cuda)

        def step(x, y, i):
            return graphed.step(x, y, cfg.lr, i)

    g = torch.Generator().manual_seed(0)
    n = args.batch_size * max(1, (args.images or 16 * args.batch_size) // args.batch_size)
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (n,), generator=g).to(device)
    data = _TensorData(
        ImageData("synthetic", images, labels, images[:2], labels[:2], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 10),
        cfg,
        device,
    )
    stream = BatchStream(n, args.batch_size, 1, epoch_mode=True)
    aug_gen = torch.Generator().manual_seed(3)

    def passes():
        # the loop's own call; a checkout from before data-parallel training (--src) took no rank slice
        if "local" in inspect.signature(data.train_batches).parameters:
            return data.train_batches(stream, aug_gen, stepper.local_slice)
        return data.train_batches(stream, aug_gen)

    batches = passes()

    def batch():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:  # as the loop: a new epoch, a new pass
            stream.new_epoch()
            batches = passes()
            return next(batches)

    fixed = batch() if args.data_path == "off" else None
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    t_warm = time.perf_counter()
    for i in range(warmup):
        step(*(fixed or batch()), i)
    sync()
    warm_s = time.perf_counter() - t_warm
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(*(fixed or batch()), warmup + i)
    sync()
    elapsed = time.perf_counter() - t0
    steps_s = args.steps / elapsed
    out = {
        "benchmark": "train_step",
        "label": args.label,
        "steps_per_s": round(steps_s, 4),
        "images_per_s": round(steps_s * args.batch_size, 2),
        "ms_per_step": round(1000 * elapsed / args.steps, 2),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if cuda else None,
        "settings": {
            "genotype": args.genotype,
            "batch_size": args.batch_size,
            "init_channels": args.init_channels,
            "layers": args.layers,
            "auxiliary_weight": cfg.auxiliary_weight,
            "drop_path": args.drop_path,
            "grad_clip": cfg.grad_clip,
            "cutout": cfg.cutout,
            "steps": args.steps,
            "warmup": warmup,
            "warmup_seconds": round(warm_s, 2),
            "images": n,
            "params": count_parameters(model, include_auxiliary=True),
        },
        "switches": {
            **rt.describe(),
            "cuda_graph": args.cuda_graph == "on",
            "graph_captured": args.cuda_graph == "on" and cuda,
            "data_path": args.data_path,
            "deterministic": args.deterministic,
        },
        "environment": environment(device, SRC),
    }
    if (args.batch_size, args.init_channels, args.layers, args.genotype) == (96, 36, 20, "DARTS_V2"):
        out["ratio_to_reference_h100"] = round(steps_s / REFERENCE_H100_STEPS_PER_S, 3)
    write_json(out, args.out)
    return out


if __name__ == "__main__":
    main()
