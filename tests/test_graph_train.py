"""The CUDA-graph training step (loops/graphed.py GraphedTrainStep), its arithmetic checked on CPU uncaptured:
equal to the eager ``Stepper.step`` over epochs with a changing drop-path probability and learning rate
(float64), a new graph object whenever the drop-path probability changes, built after a resume has loaded the
optimizer state, the non-finite flag, and the configurations it refuses."""

from __future__ import annotations

import pytest
import torch

from dartsnas.errors import NonFiniteError
from dartsnas.loops.graphed import GraphedTrainStep
from dartsnas.loops.train import TrainConfig, TrainTask, _load_data, resolve_runtime
from dartsnas.space.genotype import PUBLISHED

DARTS_V2 = PUBLISHED["DARTS_V2"]

torch.set_num_threads(1)


def _task(**over):
    cfg = TrainConfig.build("tiny", device="cpu", progress=False, **over)
    device = torch.device("cpu")
    return TrainTask(cfg, DARTS_V2, _load_data(cfg, device, None), resolve_runtime(cfg, device), log=print)


def _batches(steps, seed, n=8, hw=16):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield (
            torch.randn(n, 3, hw, hw, generator=g).to(torch.get_default_dtype()),
            torch.randint(0, 10, (n,), generator=g),
        )


def _run(graph: bool, epochs=3, steps=3):
    torch.manual_seed(0)
    task = _task(epochs=epochs)
    st = task.state
    task.use_graph, task.graph_eager = graph, graph
    objects, sums = [], []
    torch.manual_seed(4)  # drop-path masks
    for epoch in range(epochs):
        st.epoch = epoch
        task.begin_epoch()
        objects.append(task.graphed)
        for batch in _batches(steps, seed=20 + epoch):
            sums.append({k: v.clone() for k, v in task.step(batch).items()})
            st.global_step += 1
        task.check()
    return task, objects, sums


def test_graph_train_step_equals_the_eager_step_over_epochs():
    torch.set_default_dtype(torch.float64)
    try:
        eager, _, sums_e = _run(False)
        graph, objects, sums_g = _run(True)
    finally:
        torch.set_default_dtype(torch.float32)
    assert eager.cfg.auxiliary and eager.cfg.drop_path_prob > 0  # both paths exercised
    # drop path 0, 0.067, 0.133 over the 3 epochs: a new graph object each epoch
    assert len({id(o) for o in objects}) == 3 and all(o is not None for o in objects)
    a, b = eager.state, graph.state
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        torch.testing.assert_close(y.double(), x.double(), rtol=1e-9, atol=1e-12, msg=k)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(
            b.opt.state[q]["momentum_buffer"], a.opt.state[p]["momentum_buffer"], rtol=1e-9, atol=1e-12
        )
    for se, sg in zip(sums_e, sums_g):
        for k in se:
            torch.testing.assert_close(sg[k], se[k], rtol=1e-9, atol=1e-11, msg=k)


def test_graph_train_step_is_built_after_the_optimizer_state_is_loaded():
    """A resume loads the optimizer's state (new tensors): the graph must hold those, not the ones of before."""
    task = _task()
    st = task.state
    task.use_graph, task.graph_eager = True, True
    x, y = next(_batches(1, seed=1))
    st.stepper.step(x, y, 0)  # momentum buffers exist now
    saved = st.opt.state_dict()
    st.opt.load_state_dict(saved)  # what the engine's resume does: the state's tensors are replaced
    task.begin_epoch()
    bufs = [st.opt.state[p]["momentum_buffer"] for p in st.model.parameters()]
    assert all(a is b for a, b in zip(task.graphed.bufs, bufs))


def test_graph_train_step_flags_a_non_finite_loss_late_and_says_how_late():
    task = _task()
    st = task.state
    task.use_graph, task.graph_eager = True, True
    task.begin_epoch()
    batches = list(_batches(3, seed=2))
    batches[1][0][0, 0, 0, 0] = float("nan")
    for x, y in batches:
        task.step((x, y))
        st.global_step += 1
    with pytest.raises(NonFiniteError) as e:
        task.check()
    assert e.value.step == 1 and e.value.steps_after == 1 and e.value.phase == "weights"


def test_cuda_graph_on_cpu_or_with_accumulation_falls_back_with_a_note():
    notes = []
    cfg = TrainConfig.build("tiny", device="cpu", progress=False, cuda_graph=True, accum_steps=2)
    device = torch.device("cpu")
    task = TrainTask(cfg, DARTS_V2, _load_data(cfg, device, None), resolve_runtime(cfg, device), log=notes.append)
    assert not task.use_graph
    assert notes and "a CUDA device" in notes[0] and "accum_steps=1" in notes[0]
    with pytest.raises(ValueError):
        task.state.stepper.cfg = cfg
        GraphedTrainStep(task.state.stepper, eager=True)
