"""The saved-for-backward byte counter (dartsnas.memory) against hand counts, and PC-DARTS's saving on a tiny
DARTS-space supernet (issue 10 item 4; ROBUST-SPEC §3.1). benchmarks/memory.py uses the same functions."""

from __future__ import annotations

import torch

from dartsnas.loops.search import SearchConfig
from dartsnas.memory import SavedTensorMeter, measure_search_step, saved_tensor_bytes

torch.set_num_threads(1)

F32 = 4  # bytes per float32


def test_linear_relu_by_hand():
    """addmm saves its input for the weight's gradient (and the weight only when the input needs a gradient);
    ReLU saves its output; the bias needs nothing."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    x = torch.randn(4, 5)

    def run(inp):
        return lambda: torch.relu(lin(inp)).sum().backward()

    hand = (4 * 5 + 4 * 3) * F32
    assert saved_tensor_bytes(run(x), exclude=lin.parameters()) == {
        "peak_bytes": hand,
        "total_bytes": hand,
        "held_after_bytes": 0,
    }
    xg = x.clone().requires_grad_(True)
    assert saved_tensor_bytes(run(xg))["peak_bytes"] == hand + 5 * 3 * F32  # + the weight, for x's gradient
    assert saved_tensor_bytes(run(xg), exclude=lin.parameters())["peak_bytes"] == hand  # parameters excluded


def test_each_storage_counts_once_and_the_peak_is_what_is_held_at_once():
    y = torch.randn(10, requires_grad=True)
    # y·y saves y twice (as each factor); two views of one storage are one storage
    assert saved_tensor_bytes(lambda: (y * y).sum().backward())["peak_bytes"] == 10 * F32
    v = torch.randn(2, 5, requires_grad=True)
    assert saved_tensor_bytes(lambda: (v[0] * v[1]).sum().backward())["peak_bytes"] == 10 * F32
    with SavedTensorMeter() as m:
        for _ in range(2):  # two graphs one after the other: the first is released before the second
            (y * y).sum().backward()
    assert (m.peak_bytes, m.total_bytes, m.current_bytes) == (40, 80, 0)
    with SavedTensorMeter() as m:
        a, b = (y * y).sum(), y.exp().sum()  # two graphs alive together: y, and exp's output
        assert m.current_bytes == 80
        (a + b).backward()
    assert (m.peak_bytes, m.current_bytes) == (80, 0)


def test_a_partial_backward_releases_everything_and_gradients_are_unchanged():
    """A backward w.r.t. some tensors only (the α step) leaves nodes untraversed; the meter must not keep
    them alive (no reference cycle through a saved output), and must not change any gradient."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3), torch.nn.Sigmoid())
    x = torch.randn(2, 3, 8, 8)
    last = list(net[2].parameters())
    with SavedTensorMeter() as m:
        g = torch.autograd.grad(net(x).sum(), last)  # the first conv's node is never run
    assert m.peak_bytes > 0 and m.current_bytes == 0
    ref = torch.autograd.grad(net(x).sum(), last)
    assert all(torch.equal(a, b) for a, b in zip(g, ref))
    with SavedTensorMeter():
        full = torch.autograd.grad(net(x).square().sum(), list(net.parameters()))
    full_ref = torch.autograd.grad(net(x).square().sum(), list(net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(full, full_ref))


def tiny(method: str) -> SearchConfig:
    # K = 4 splits C = 8, 16, 32 into even groups; 50 epochs so that PC-DARTS's warm-up leaves α steps
    over = {"method": method, "init_channels": 8, "layers": 3, "num_nodes": 2, "epochs": 50, "progress": False}
    return SearchConfig.build("tiny", {**over, "device": "cpu"})


def test_pc_darts_saves_fewer_bytes_than_darts_on_a_tiny_supernet():
    darts, pc = [measure_search_step(tiny(m), 2) for m in ("darts", "pc-darts")]
    for r in (darts, pc):
        assert r["alpha_step"] and r["held_after_bytes"] == 0
        # the α pass and the weight pass run the same forward, so each holds the same tensors, one after the other
        assert r["total_bytes"] == 2 * r["peak_bytes"]
    assert pc["peak_bytes"] < darts["peak_bytes"]
    # activations are linear in the batch: doubling it doubles the part above the batch-free constant
    pc4 = measure_search_step(tiny("pc-darts"), 4)
    darts4 = measure_search_step(tiny("darts"), 4)
    assert pc4["peak_bytes"] < darts4["peak_bytes"]
    assert (pc4["peak_bytes"] - pc["peak_bytes"]) < (darts4["peak_bytes"] - darts["peak_bytes"])
