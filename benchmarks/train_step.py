"""Training-step throughput of an evaluation network at the paper's CIFAR-10 settings (spec §5).

DARTS_V2, C=36, 20 cells, auxiliary head (weight 0.4), drop path 0.2 (the value of the last epochs), batch
96 of 32x32 synthetic images already on the device, SGD with clip 5: exactly the step ``dartsnas train``
runs (``dartsnas.loops.train.Stepper``). Warm-up steps, then timed steps between device synchronisations.
Prints one JSON object. Not a test.

    PYTHONPATH=src python benchmarks/train_step.py --device cuda --steps 50
    PYTHONPATH=src python benchmarks/train_step.py --device cpu --steps 3 --warmup 1
    PYTHONPATH=src python benchmarks/train_step.py --device cuda --channels-last off --bf16 off --optimizer-impl for-loop
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from dartsnas.evalnet.cnn import count_parameters  # noqa: E402
from dartsnas.loops.common import resolve_device  # noqa: E402
from dartsnas.loops.train import Stepper, TrainConfig, build_network, resolve_runtime  # noqa: E402
from dartsnas.space.genotype import load_genotype  # noqa: E402


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
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    cfg = TrainConfig.build("paper", genotype=args.genotype, batch_size=args.batch_size,
                            init_channels=args.init_channels, layers=args.layers,
                            channels_last=args.channels_last, bf16=args.bf16, optimizer_impl=args.optimizer_impl,
                            compile=args.compile, device=str(device))
    rt = resolve_runtime(cfg, device)
    torch.manual_seed(0)
    model = build_network(cfg, load_genotype(args.genotype), 10).to(device)
    model.drop_path_prob = args.drop_path
    model.train()
    stepper = Stepper(model, cfg, rt)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    t_warm = time.perf_counter()
    for i in range(warmup):
        stepper.step(x, y, i)
    sync()
    warm_s = time.perf_counter() - t_warm
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for i in range(args.steps):
        stepper.step(x, y, warmup + i)
    sync()
    elapsed = time.perf_counter() - t0
    steps_s = args.steps / elapsed
    out = {
        "benchmark": "train_step",
        "steps_per_s": round(steps_s, 4), "images_per_s": round(steps_s * args.batch_size, 2),
        "ms_per_step": round(1000 * elapsed / args.steps, 2),
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3) if cuda else None,
        "settings": {"genotype": args.genotype, "batch_size": args.batch_size, "init_channels": args.init_channels,
                     "layers": args.layers, "auxiliary_weight": cfg.auxiliary_weight, "drop_path": args.drop_path,
                     "grad_clip": cfg.grad_clip, "steps": args.steps, "warmup": warmup,
                     "warmup_seconds": round(warm_s, 2), **rt.describe(),
                     "params": count_parameters(model, include_auxiliary=True)},
        "versions": {"torch": torch.__version__, "python": platform.python_version(),
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None},
        "device": torch.cuda.get_device_name(device) if cuda else
                  f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                  f"{os.cpu_count()} cores visible)",
    }
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
