"""A short real-data search, eager against CUDA-graph mode, through the real loop (``run_search``).

Both runs use the fused forward (``fused_ops``), so that they differ only in the graph: the fused and the
plain forward differ by float rounding, which Adam's sign-like first steps amplify in the alphas.

One epoch of the paper's search network on a CIFAR-10 subset (``.gpu_data/cifar10-subset.npz``, written by
``.gpu/prepare_data.py``): 672 + 672 images, so 11 steps with a short last batch (a second graph capture).
Both runs use deterministic cuDNN; the script reports the relative difference of the final alphas and of
the weights, the genotypes, and the wall time of each run, as JSON (``--out``). Exit status 1 when the alphas
differ by more than ``--tol`` relative (default 1e-4: eleven steps in float32, not the 1e-5 of three steps).

    PYTHONPATH=src python .gpu/real_search.py --data .gpu_data/cifar10-subset.npz --out /tmp/real.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dartsnas.loops.search import SearchConfig, run_search


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm((a - b).double()) / torch.linalg.vector_norm(b.double()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=".gpu_data/cifar10-subset.npz")
    p.add_argument("--subset", type=int, default=672)
    p.add_argument("--order", type=int, default=1, choices=[1, 2])
    p.add_argument("--tol", type=float, default=1e-4)
    p.add_argument("--out", default=None)
    p.add_argument("--device", default="cuda", help="cpu: checks this script only (graph mode is CUDA-only)")
    p.add_argument("--small", action="store_true", help="a small network (C=4, 3 cells, batch 16): script check")
    a = p.parse_args()
    small = {"init_channels": 4, "layers": 3, "batch_size": 16} if a.small else {}
    cuda = a.device.startswith("cuda")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, graph in (("eager", False), ("graph", True)):
            cfg = SearchConfig.build(
                "paper",
                dataset="cifar10",
                data_dir=a.data,
                subset=a.subset,
                epochs=1,
                order=a.order,
                device=a.device,
                progress=False,
                deterministic=True,
                fused_ops=True,
                cuda_graph=graph,
                log_interval=5,
                **small,
            )
            t = time.perf_counter()
            res = run_search(cfg, run_dir=Path(tmp) / name, log=lambda *x: None)
            if cuda:
                torch.cuda.synchronize()
            runs[name] = {
                "seconds": round(time.perf_counter() - t, 1),
                "result": res,
                "genotype": str(res.genotype),
                "final": {k: res.final.get(k) for k in ("train_loss", "valid_loss", "valid_acc")},
            }
    e, g = runs["eager"]["result"], runs["graph"]["result"]
    report = {
        "device": torch.cuda.get_device_name() if cuda else a.device,
        "small": a.small,
        "torch": torch.__version__,
        "subset": a.subset,
        "order": a.order,
        "rel_alphas_normal": _rel(g.alphas_normal, e.alphas_normal),
        "rel_alphas_reduce": _rel(g.alphas_reduce, e.alphas_reduce),
        "same_genotype": runs["eager"]["genotype"] == runs["graph"]["genotype"],
        "runs": {k: {kk: vv for kk, vv in v.items() if kk != "result"} for k, v in runs.items()},
        "tolerance": a.tol,
    }
    report["passed"] = max(report["rel_alphas_normal"], report["rel_alphas_reduce"]) <= a.tol
    text = json.dumps(report, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
