"""A loop's state as a dataclass, checkpointed generically, and the named running sums of an epoch.

Every loop keeps what changes during a run in one dataclass derived from ``LoopState`` (the step
counters and the wall clock). ``state_dict`` turns it into a checkpoint payload by walking its fields, so
no loop writes a field list by hand:

- objects with ``state_dict``/``load_state_dict`` (modules, optimizers, batch streams) -> their state dict;
- ``torch.Generator`` fields -> captured with the global RNGs (Python, NumPy, torch, CUDA) under ``rng``;
- tensors (also in lists) -> CPU copies, moved back to the loop's device on load;
- numbers, strings, booleans, None and lists of them -> as they are.

Fields declared with ``transient()`` (the config, data, helpers built from other fields) are not saved;
``saved_as("key")`` stores a field under another checkpoint key (the keys are part of the run-directory
format, e.g. ``weight_optimizer`` for the field ``w_opt``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch

from ..checkpoint import capture_rng, restore_rng


def transient(**kw: Any) -> Any:
    """A state field that is rebuilt, not saved (config, data, objects made from other fields)."""
    return dataclasses.field(metadata={"transient": True}, **kw)


def saved_as(key: str, **kw: Any) -> Any:
    """A state field saved under checkpoint key ``key``."""
    return dataclasses.field(metadata={"key": key}, **kw)


@dataclasses.dataclass(eq=False)
class LoopState:
    """What every loop counts: epochs done, steps done in the current epoch and in total, seconds run."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    wall: float = 0.0


def _saved_fields(state: Any) -> Iterable[tuple[str, dataclasses.Field]]:
    for f in dataclasses.fields(state):
        if not f.metadata.get("transient"):
            yield f.metadata.get("key", f.name), f


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return [_to_cpu(v) for v in value]
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def state_dict(state: Any) -> dict[str, Any]:
    """The checkpoint entries of a state dataclass (see the module docstring)."""
    out: dict[str, Any] = {}
    generators: dict[str, torch.Generator] = {}
    for key, f in _saved_fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Generator):
            generators[key] = value
        elif hasattr(value, "state_dict"):
            out[key] = value.state_dict()
        else:
            out[key] = _to_cpu(value)
    out["rng"] = capture_rng(generators)
    return out


def load_state_dict(state: Any, ck: dict[str, Any], device: torch.device, rng: bool = True) -> None:
    """Inverse of ``state_dict``. A missing or mismatching entry raises KeyError/RuntimeError/ValueError/
    TypeError, which the driver reports as a checkpoint that does not fit this run. ``rng=False`` leaves
    every random stream (global and generator fields) where it is (the driver's reload after a NaN)."""
    generators: dict[str, torch.Generator] = {}
    for key, f in _saved_fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Generator):
            generators[key] = value
        elif hasattr(value, "load_state_dict"):
            value.load_state_dict(ck[key])
        else:
            setattr(state, f.name, _to_device(ck[key], device))
    if rng:
        restore_rng(ck["rng"], generators)


class Sums:
    """An epoch's running sums by name, one float64 vector on the device.

    ``add`` stacks the step's named device scalars and adds them with one kernel, never waiting for the
    device; ``values`` reads them all with one host synchronisation (progress lines, end of the epoch).
    """

    def __init__(self, names: Iterable[str], device: torch.device):
        self.names = tuple(names)
        self.data = torch.zeros(len(self.names), dtype=torch.float64, device=device)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        if set(metrics) != set(self.names):
            raise KeyError(f"step metrics {sorted(metrics)} differ from the sums {sorted(self.names)}")
        with torch.no_grad():
            self.data += torch.stack([metrics[n].to(torch.float64) for n in self.names])

    def values(self, data: torch.Tensor | None = None) -> dict[str, float]:
        return dict(zip(self.names, (self.data if data is None else data).tolist()))

    def zero(self) -> None:
        self.data.zero_()

    def state_dict(self, data: torch.Tensor | None = None) -> dict[str, Any]:
        return {"names": list(self.names), "values": (self.data if data is None else data).detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["names"]) != list(self.names):
            raise ValueError(f"running sums {state['names']} differ from this loop's {list(self.names)}")
        self.data.copy_(state["values"])
