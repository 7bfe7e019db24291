"""CUDA-graph mode for the methods of the method interface (issue 11 item 1), checked on CPU.

The graph step's body (``loops/graphed.py``, run uncaptured with ``eager=True``) must compute what the eager
``_search_step`` computes for every method whose in-step hooks are graph-safe, across epoch boundaries (the
search task recaptures at every epoch start of a non-plain method: schedules, warm-up, pruning and widening,
DARTS-PT's projections). And the body must not call anything that synchronises with the host, which would
break the capture on a GPU: a TorchFunctionMode lists such calls on CPU (the GPU test
``tests/test_gpu.py`` proves the same with ``torch.cuda.set_sync_debug_mode("error")``).
"""

from __future__ import annotations

import os
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

from dartsnas.data.images import ImageData
from dartsnas.loops.graphed import GraphedSearchStep
from dartsnas.loops.search import SearchConfig, SearchTask
from dartsnas.methods import build_method

torch.set_num_threads(1)

# method -> method_args for a tiny run in which every epoch hook acts within 3 epochs
GRAPH_SAFE = {
    "darts": "",
    "pc-darts": "K=2,warmup_epochs=1",
    "darts-minus": "",
    "beta-darts": "",
    "sdarts-rs": "",
    "drnas": "reg=kl",
    "drnas-progressive": "partial_channels=4,prune_epoch=1,prune_keep=3,widen_to=2",
    "darts-pt": "tune_epochs=2,interval=1,seed=1",
    "sdarts-rs+darts-pt": "tune_epochs=2,interval=1,seed=1",
    "blank+darts-pt": "tune_epochs=2,interval=1,seed=1",
}
NOT_GRAPH_SAFE = {"sdarts-adv": "attack_steps=2", "gdas": ""}

# Tensor methods that wait for the device (or fail under capture)
SYNCING = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "cpu", "numpy"}
SYNCING |= {"_is_all_true", "_is_any_true", "masked_select", "unique"}


class HostSyncCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name in SYNCING:
            # Adam reads its step counter with .item() unless capturable, which the graph switches on while
            # capturing (torch's own capturable path; on CPU it cannot be switched on): not ours to list
            frames = traceback.extract_stack()[:-1]
            if not any(f.filename.endswith(os.path.join("torch", "optim", "adam.py")) for f in frames):
                where = next(f for f in reversed(frames) if "dartsnas" in f.filename or "torch" not in f.filename)
                self.calls.append(f"{name} at {os.path.basename(where.filename)}:{where.lineno}")
        return func(*args, **(kwargs or {}))


def _name(method: str) -> str:
    return "drnas" if method == "drnas-progressive" else method


def _data(n=16, hw=8):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, 3, hw, hw), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return ImageData("synthetic", x, y, x, y, (0.5,) * 3, (0.25,) * 3, 10)


def _task(method: str, order: int = 1) -> SearchTask:
    space = "nb201" if method == "drnas-progressive" else "darts"
    cfg = SearchConfig.build(
        "tiny",
        order=order,
        device="cpu",
        space=space,
        method=_name(method),
        method_args=GRAPH_SAFE.get(method, NOT_GRAPH_SAFE.get(method, "")),
        init_channels=8,
        epochs=3 if "darts-pt" not in method else 4,
        progress=False,
    )
    torch.manual_seed(0)
    return SearchTask(cfg, _data(), torch.device("cpu"), lambda *a: None)


def _batches(steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x_t, x_v = torch.randn(2, 4, 3, 8, 8, generator=gen)
        y_t, y_v = torch.randint(0, 10, (2, 4), generator=gen)
        yield x_t, y_t, x_v, y_v


def _run(method: str, graphed: bool, order: int = 1, steps: int = 2):
    task = _task(method, order)
    st = task.state
    if graphed:
        task.use_graph, task.graph_eager = True, True  # what cuda_graph=true sets on CUDA; uncaptured here
    sums, graphs = [], []
    torch.manual_seed(5)  # the methods' own draws (Dirichlet, uniform noise) follow the same stream
    for epoch in range(st.cfg.epochs):
        st.epoch = epoch
        task.begin_epoch()
        graphs.append(task.graphed)
        for i, batch in enumerate(_batches(steps, seed=10 + epoch)):
            st.step_in_epoch = i
            sums.append({k: v.clone() for k, v in task.step(batch).items()})
            st.global_step += 1
        task.check()
    return task, sums, graphs


def _state(task):
    st = task.state
    out = {f"model.{k}": v for k, v in st.model.state_dict().items()}
    for i, p in enumerate(st.model.weights()):
        m = st.w_opt.state.get(p, {}).get("momentum_buffer")
        if m is not None:
            out[f"momentum.{i}"] = m
    for i, a in enumerate(st.model.arch_parameters()):
        for k, v in st.a_opt.state.get(a, {}).items():
            out[f"adam.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(float(v))
    return out


@pytest.fixture
def float64_images(monkeypatch):
    """DARTS-PT's projections measure the supernet on augmented images (float32): in float64 runs, cast them."""
    from dartsnas.data import images

    real = images.augment
    monkeypatch.setattr(images, "augment", lambda *a, **k: real(*a, **k).to(torch.get_default_dtype()))


@pytest.mark.parametrize("method", sorted(GRAPH_SAFE))
def test_graph_step_of_every_graph_safe_method_equals_the_eager_step(method, float64_images):
    torch.set_default_dtype(torch.float64)
    try:
        eager, sums_e, _ = _run(method, graphed=False)
        graph, sums_g, graphs = _run(method, graphed=True)
    finally:
        torch.set_default_dtype(torch.float32)
    assert build_method(_name(method)).graph_safe
    # the plain method keeps one step object; every other method gets a new one at each epoch start
    plain = eager.state.method.plain
    assert (len({id(g) for g in graphs}) == 1) == plain
    a, b = _state(eager), _state(graph)
    # the graph creates Adam's state before the first α step (zeros, step 0: what Adam's lazy start would
    # make); a method that never steps α (blank) keeps it so
    extra = b.keys() - a.keys()
    assert a.keys() <= b.keys() and len(a) > 10 and all(k.startswith("adam.") for k in extra)
    assert all(not b[k].any() for k in extra)
    for k in a:
        torch.testing.assert_close(b[k].double(), a[k].double(), rtol=1e-9, atol=1e-11, msg=k)
    for se, sg in zip(sums_e, sums_g):
        for k in se:
            torch.testing.assert_close(sg[k], se[k], rtol=1e-9, atol=1e-11, msg=k)
    assert eager.state.method.genotype(eager.state.model) == graph.state.method.genotype(graph.state.model)
    # the epoch hooks did act in these runs
    comps = {type(c).__name__: c for c in graph.state.method.components}
    if "PerturbationSelection" in comps:
        assert any(comps["PerturbationSelection"].decided)
    if method == "drnas-progressive":
        assert comps["DirichletMixing"].widened and comps["DirichletMixing"].masks is not None


@pytest.mark.parametrize("method", ["beta-darts", "drnas", "sdarts-rs"])
def test_graph_step_second_order_with_hooks_equals_the_eager_step(method, float64_images):
    torch.set_default_dtype(torch.float64)
    try:
        eager, _, _ = _run(method, graphed=False, order=2)
        graph, _, _ = _run(method, graphed=True, order=2)
    finally:
        torch.set_default_dtype(torch.float32)
    a, b = _state(eager), _state(graph)
    for k in a:
        torch.testing.assert_close(b[k].double(), a[k].double(), rtol=1e-9, atol=1e-11, msg=k)


def _body_calls(method: str, order: int = 1) -> list[str]:
    task = _task(method, order)
    st = task.state
    st.epoch = 2 if "darts-pt" not in method else 3  # past warm-ups and pruning; DARTS-PT in its tuning
    task.begin_epoch()
    runner = GraphedSearchStep(st, task.criterion, eager=True)
    batch = next(_batches(1, seed=1))
    runner.step(*batch, task.lr)  # first call outside the mode: lazy state (masks moved, buffers created)
    with HostSyncCalls() as mode:
        runner.step(*batch, task.lr)
    return mode.calls


@pytest.mark.parametrize("method", sorted(GRAPH_SAFE))
def test_graph_body_calls_nothing_that_waits_for_the_host(method):
    assert _body_calls(method) == []


def test_graph_body_second_order_calls_nothing_that_waits_for_the_host():
    assert _body_calls("beta-darts", order=2) == []


@pytest.mark.parametrize("method", sorted(NOT_GRAPH_SAFE))
def test_methods_that_sync_are_marked_and_the_detector_sees_them(method):
    """SDARTS-ADV reads its losses on the host; GDAS retries its sample on the host and runs only sampled ops."""
    assert not build_method(method).graph_safe
    assert _body_calls(method) != []


def test_search_task_falls_back_to_eager_for_methods_that_are_not_graph_safe(monkeypatch):
    logged = []
    cfg = SearchConfig.build("tiny", device="cpu", method="gdas", cuda_graph=True, progress=False)
    task = SearchTask(cfg, _data(), torch.device("cpu"), logged.append)
    assert not task.use_graph and task.graphed is None and any("eager step runs" in m for m in logged)


def test_search_graph_step_is_built_after_the_optimizer_state_is_loaded():
    """A resume replaces the optimizers' state tensors: the graph must hold the loaded ones (it is made at the
    first epoch start, after the engine has loaded the checkpoint)."""
    task = _task("darts")
    st = task.state
    task.use_graph, task.graph_eager = True, True
    x_t, y_t, x_v, y_v = next(_batches(1, seed=1))
    from dartsnas.loops.search import _search_step

    _search_step(st, task.criterion, x_t, y_t, x_v, y_v, 0.025)  # momentum buffers and Adam state exist
    st.w_opt.load_state_dict(st.w_opt.state_dict())
    st.a_opt.load_state_dict(st.a_opt.state_dict())
    task.begin_epoch()
    bufs = [st.w_opt.state[p]["momentum_buffer"] for p in st.model.weights()]
    assert all(a is b for a, b in zip(task.graphed.bufs, bufs))
