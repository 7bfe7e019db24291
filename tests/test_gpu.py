"""GPU tests (marker ``gpu``; skipped without CUDA): the CUDA-graph search step against the eager step at the
paper's settings, no host synchronisation inside the steady-state graph step, the fused forward on the GPU,
bf16 autocast and channels-last smoke runs. Their CPU counterparts (the graph step's arithmetic run
uncaptured, the fused forward in float64) are in tests/test_fused.py.

    PYTHONPATH=src python -m pytest tests/test_gpu.py -m gpu -q
    PYTHONPATH=src python tests/test_gpu.py --out results.json     # without pytest (same tests, plain runner)

The prepared device script ``.gpu/go.sh`` runs these first. Tolerances: alphas and weights of the graphed
and the eager search agree to 1e-5 relative after a few steps (issue 11); cuDNN runs in deterministic mode
here so that both paths use the same kernels.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import torch

try:
    import pytest
except ImportError:  # the device machine may lack pytest: ``python tests/test_gpu.py`` needs none
    pytest = None

if str(Path(__file__).resolve().parents[1] / "src") not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dartsnas.data.images import ImageData, augment, to_device
from dartsnas.loops.search import SearchConfig, _search_step, _State

CUDA = torch.cuda.is_available()
if pytest is not None:
    pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]

REL = 1e-5
PAPER = {"init_channels": 16, "layers": 8, "batch_size": 64}


@contextlib.contextmanager
def deterministic_cudnn():
    saved = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved


def _data(device, n: int = 512) -> ImageData:
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    y = torch.randint(0, 10, (n,), generator=g).to(device)
    return ImageData("synthetic", x, y, x[:2], y[:2], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 10)


def _state(order: int, fused: bool, data: ImageData, **over) -> _State:
    cfg = SearchConfig.build("paper", order=order, fused_ops=fused, device="cuda", progress=False, **{**PAPER, **over})
    torch.manual_seed(0)
    st = _State(cfg, data, torch.device("cuda"))
    st.model.train()
    return st


def _batches(st: _State, data: ImageData, device):
    """The search loop's own data path (run_search's batch()): index stream, device gather, augmentation."""

    def one(pool, stream):
        if stream.epoch_mode and stream.pos >= stream.num:
            stream.new_epoch()
        idx = pool[to_device(stream.next(), device)]
        return augment(data.train_x[idx], st.aug_gen, data.mean, data.std), data.train_y[idx]

    return (*one(st.w_idx, st.train_stream), *one(st.a_idx, st.val_stream))


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm((x - y).double()) for x, y in zip(a, b)]))
    den = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(y.double()) for y in b]))
    return float(num / den)


def _graph_vs_eager(order: int, fused: bool, steps: int = 3) -> dict:
    from dartsnas.loops.graphed import GraphedSearchStep

    device = torch.device("cuda")
    data = _data(device)
    crit = torch.nn.CrossEntropyLoss()
    with deterministic_cudnn():
        eager, graphed = _state(order, fused, data), _state(order, fused, data)
        runner = GraphedSearchStep(graphed, crit)
        for step in range(steps):
            lr = 0.025 - 0.002 * step  # a changing rate: the graph reads it from a device tensor
            batch = _batches(eager, data, device)
            _batches(graphed, data, device)  # keep the graphed state's streams in step (same draws)
            for group in eager.w_opt.param_groups:
                group["lr"] = lr
            _search_step(eager, crit, *batch, lr)
            runner.step(*batch, lr)
            eager.global_step += 1
            graphed.global_step += 1
        runner.check()
        torch.cuda.synchronize()
    out = {
        "alphas": [_rel([a], [b]) for a, b in zip(graphed.model.arch_parameters(), eager.model.arch_parameters())],
        "weights": _rel(graphed.model.weights(), eager.model.weights()),
        "buffers": _rel([b.float() for b in graphed.model.buffers()], [b.float() for b in eager.model.buffers()]),
    }
    assert all(r <= REL for r in out["alphas"]), out
    assert out["weights"] <= REL, out
    assert torch.allclose(graphed.sums, eager.sums, rtol=1e-5), (graphed.sums, eager.sums)
    return out


def test_graph_matches_eager_first_order_plain():
    _graph_vs_eager(1, fused=False)


def test_graph_matches_eager_first_order_fused():
    _graph_vs_eager(1, fused=True)


def test_graph_matches_eager_second_order_plain():
    _graph_vs_eager(2, fused=False)


def test_graph_matches_eager_second_order_fused():
    _graph_vs_eager(2, fused=True)


def _no_sync(order: int, with_data_path: bool) -> None:
    from dartsnas.loops.graphed import GraphedSearchStep

    device = torch.device("cuda")
    data = _data(device)
    st = _state(order, True, data)
    runner = GraphedSearchStep(st, torch.nn.CrossEntropyLoss())
    batch = _batches(st, data, device)
    runner.step(*batch, 0.025)  # first call: warm-up and capture (host syncs allowed there)
    st.global_step += 1
    torch.cuda.synchronize()
    for _ in range(2):  # the steady state: copy the batch in, replay
        if with_data_path:
            torch.cuda.set_sync_debug_mode("error")
            try:
                batch = _batches(st, data, device)
                runner.step(*batch, 0.024)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        else:
            batch = _batches(st, data, device)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                runner.step(*batch, 0.024)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        st.global_step += 1
    runner.check()


def test_steady_state_graph_step_has_no_host_sync_first_order():
    _no_sync(1, with_data_path=False)


def test_steady_state_graph_step_has_no_host_sync_second_order():
    _no_sync(2, with_data_path=False)


def test_steady_state_step_with_data_path_has_no_host_sync():
    _no_sync(1, with_data_path=True)


def test_fused_forward_backward_match_plain_on_gpu():
    from dartsnas.supernet.network import SearchNetwork

    torch.manual_seed(0)
    with deterministic_cudnn():
        plain = SearchNetwork(16, 10, 8).cuda()
        fused = SearchNetwork(16, 10, 8, fused=True).cuda()
        fused.load_state_dict(plain.state_dict())
        x = torch.randn(32, 3, 32, 32, device="cuda")
        y = torch.randint(0, 10, (32,), device="cuda")
        outs = []
        for net in (plain, fused):
            out = net(x)
            torch.nn.functional.cross_entropy(out, y).backward()
            outs.append(out.detach())
    assert _rel([outs[1]], [outs[0]]) <= 1e-4
    assert _rel([p.grad for p in fused.weights()], [p.grad for p in plain.weights()]) <= 1e-4
    assert _rel([a.grad for a in fused.arch_parameters()], [a.grad for a in plain.arch_parameters()]) <= 1e-4
    assert _rel([b.float() for b in fused.buffers()], [b.float() for b in plain.buffers()]) <= 1e-4


def _smoke(order: int, fused: bool, bf16: bool, channels_last: bool, graph: bool) -> None:
    device = torch.device("cuda")
    data = _data(device)
    st = _state(order, fused, data)
    crit = torch.nn.CrossEntropyLoss()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        st.model.to(memory_format=torch.channels_last)

    def amp():
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if bf16 else contextlib.nullcontext()

    runner = None
    if graph:
        from dartsnas.loops.graphed import GraphedSearchStep

        runner = GraphedSearchStep(st, crit, autocast=amp)
    for _ in range(3):
        x_t, y_t, x_v, y_v = _batches(st, data, device)
        x_t, x_v = x_t.contiguous(memory_format=fmt), x_v.contiguous(memory_format=fmt)
        if runner is None:
            with amp():
                _search_step(st, crit, x_t, y_t, x_v, y_v, 0.025)
        else:
            runner.step(x_t, y_t, x_v, y_v, 0.025)
        st.global_step += 1
    if runner is not None:
        runner.check()
    assert bool(torch.isfinite(st.sums).all())
    assert all(bool(torch.isfinite(p).all()) for p in st.model.parameters())


def test_bf16_fused_eager_and_graph_smoke():
    _smoke(1, fused=True, bf16=True, channels_last=False, graph=False)
    _smoke(1, fused=True, bf16=True, channels_last=False, graph=True)


def test_channels_last_fused_eager_and_graph_smoke():
    _smoke(1, fused=True, bf16=False, channels_last=True, graph=False)
    _smoke(2, fused=True, bf16=False, channels_last=True, graph=True)


def _main() -> int:
    """Plain runner: every test_ function, one line each, and a JSON summary with ``--out FILE``."""
    import json
    import traceback

    if not CUDA:
        print("no CUDA device: nothing to run")
        return 0
    out_path = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
    results, failed = [], 0
    for name, fn in list(globals().items()):
        if not (name.startswith("test_") and callable(fn)):
            continue
        t = time.perf_counter()
        try:
            fn()
            status, detail = "passed", ""
        except Exception:  # noqa: BLE001  (report every test)
            status, detail = "failed", traceback.format_exc()[-3000:]
            failed += 1
        results.append({"test": name, "status": status, "seconds": round(time.perf_counter() - t, 1), "detail": detail})
        print(f"{status:7s} {results[-1]['seconds']:7.1f} s  {name}", flush=True)
        if detail:
            print(detail, flush=True)
        torch.cuda.empty_cache()
    if out_path:
        Path(out_path).write_text(
            json.dumps(
                {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, indent=1
            )
            + "\n"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_main())
