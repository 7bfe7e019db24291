"""Step throughput of the recurrent search (first and second order) and evaluation training (spec §7.4).

Runs exactly the steps the loops run (``dartsnas.loops.rnn_search._search_step`` and
``dartsnas.loops.rnn_train._train_step``), data path included: a synthetic token stream laid out by the
loops' own ``data.text.batchify`` on the device, each step cutting its segments with ``get_segment`` and
moving along the stream as the loops do (at the fixed length bptt, so that steps are comparable; the loops
draw the length at random around it). At the spec's settings:
search emsize = nhid = 300, batch 256, 35-row training segment and 35-row α window, 10,000 words; evaluation
DARTS cell, emsize = nhid = 850, batch 64, 35-row segments (the learning-rate scaling is 35/35 = 1). Tokens
per second count the training tokens and, for search, the validation (α) tokens: 2·35·256 per search step,
35·64 per training step, as the reference figures do (PERFORMANCE.md). Prints one JSON object
(``--out``: also writes it).
``--src PATH`` times another checkout (benchmarks/_common.py). Not a test.

    PYTHONPATH=src python benchmarks/rnn_step.py --device cuda --steps 20
    PYTHONPATH=src python benchmarks/rnn_step.py --device cpu --steps 2 --warmup 1 --threads 2
    PYTHONPATH=src python benchmarks/rnn_step.py --only search2 --steps 10
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, use_src, write_json

SRC = use_src()

import torch

from dartsnas.data.text import batchify, get_segment
from dartsnas.loops import rnn_search, rnn_train
from dartsnas.loops.common import resolve_device
from dartsnas.space.genotype import load_genotype

MODES = ("search1", "search2", "train")
REFERENCE_H100_STEPS_PER_S = {"search1": 0.521, "search2": 0.228, "train": 2.50}  # docs PERFORMANCE.md


class _Segments:
    """Consecutive (input, target) segments of a batchified stream, wrapping around at its end."""

    def __init__(self, source: torch.Tensor, seq_len: int):
        self.source, self.seq_len, self.pos = source, seq_len, 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.seq_len + 1 > self.source.size(0):
            self.pos = 0
        x, y = get_segment(self.source, self.pos, self.seq_len)
        self.pos += self.seq_len
        return x, y


def _peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # process high-water mark (Linux: KiB)


def bench(mode: str, device: torch.device, steps: int, warmup: int, ntoken: int, a) -> dict:
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    g = torch.Generator(device="cpu").manual_seed(1)
    if mode.startswith("search"):
        cfg = rnn_search.RNNSearchConfig.build(
            "paper",
            order=2 if mode == "search2" else 1,
            device=str(device),
            nhid=a.search_nhid,
            batch_size=a.search_batch,
        )
        st = rnn_search._State(cfg, ntoken, device)
        B, T = cfg.batch_size, cfg.bptt
        train = _Segments(batchify(torch.randint(0, ntoken, (a.rows * B,), generator=g), B).to(device), T)
        search = _Segments(batchify(torch.randint(0, ntoken, (a.rows * B,), generator=g), B).to(device), T)

        def step() -> None:
            rnn_search._search_step(st, *train.next(), *search.next(), T)
            st.global_step += 1

        tokens_per_step = 2 * T * B
        settings = {
            "nhid": cfg.nhid,
            "batch": B,
            "bptt": T,
            "order": cfg.order,
            "ntoken": ntoken,
            "nodes": cfg.num_nodes,
            "weights": sum(p.numel() for p in st.model.weights()),
        }
    else:
        cfg = rnn_train.RNNTrainConfig.build(
            "paper-ptb", device=str(device), nhid=a.train_nhid, batch_size=a.train_batch
        )
        st = rnn_train._State(cfg, ntoken, load_genotype("DARTS", kind="rnn"), device)
        B, T = cfg.batch_size, cfg.bptt
        train = _Segments(batchify(torch.randint(0, ntoken, (a.rows * B,), generator=g), B).to(device), T)

        def step() -> None:
            rnn_train._train_step(st, *train.next(), T)
            st.global_step += 1

        tokens_per_step = T * B
        settings = {
            "genotype": "DARTS",
            "nhid": cfg.nhid,
            "batch": B,
            "bptt": T,
            "ntoken": ntoken,
            "weights": rnn_train.count_parameters(st.model),
        }

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    t = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm_s = time.perf_counter() - t
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    dt = time.perf_counter() - t0
    return {
        "steps_per_s": steps / dt,
        "ratio_to_reference_h100": ((steps / dt) / REFERENCE_H100_STEPS_PER_S[mode] if a.reference_settings else None),
        "tokens_per_s": steps * tokens_per_step / dt,
        "seconds_per_step": dt / steps,
        "tokens_per_step": tokens_per_step,
        "timed_steps": steps,
        "warmup_steps": warmup,
        "warmup_seconds": warm_s,
        "peak_memory_bytes": _peak_bytes(device),
        "settings": settings,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=20, help="timed steps per mode (CPU: a few suffice)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on CUDA, 1 on CPU)")
    p.add_argument("--only", choices=MODES, action="append", help="run only these modes (repeatable)")
    p.add_argument("--ntoken", type=int, default=10000)
    p.add_argument("--search-nhid", type=int, default=300)
    p.add_argument("--search-batch", type=int, default=256)
    p.add_argument("--train-nhid", type=int, default=850)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads")
    p.add_argument("--rows", type=int, default=400, help="rows of the synthetic token streams (x batch = tokens)")
    p.add_argument("--deterministic", action="store_true", help="deterministic cuDNN kernels (the loops' switch)")
    p.add_argument("--src", default=None, help="import dartsnas from this src folder (default: this checkout)")
    p.add_argument("--label", default=None)
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    a.reference_settings = (a.ntoken, a.search_nhid, a.search_batch, a.train_nhid, a.train_batch) == (
        10000,
        300,
        256,
        850,
        64,
    )
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    cuda = device.type == "cuda"
    warmup = a.warmup if a.warmup is not None else (3 if cuda else 1)
    if cuda:  # as the loops set it (loops.common.set_determinism)
        torch.backends.cudnn.benchmark = not a.deterministic
        torch.backends.cudnn.deterministic = a.deterministic
    out = {
        "benchmark": "rnn_step",
        "label": a.label,
        "environment": environment(device, SRC),
        "switches": {"data_path": "on", "deterministic": a.deterministic},
        "results": {},
    }
    for mode in a.only or MODES:
        out["results"][mode] = bench(mode, device, a.steps, warmup, a.ntoken, a)
        if cuda:
            torch.cuda.empty_cache()
    write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
