"""Genotypes: the discrete cells DARTS derives (spec §4.1), their JSON file format and a safe parser.

A CNN genotype holds, per cell type, a flat list of (operation, input) pairs; pairs 2i and 2i+1 build
intermediate node i+2. Inputs 0 and 1 are the cell's two inputs. A recurrent genotype holds one
(activation, predecessor) pair per node. The parser never evaluates code: it accepts JSON only and
reports the first bad field with its path (``normal[3].input: 5 is not an earlier node (0..4)``).

Example::

    >>> from dartsnas.space.genotype import PUBLISHED, genotype_to_json, parse_genotype
    >>> g = PUBLISHED["DARTS_V2"]
    >>> parse_genotype(genotype_to_json(g)) == g
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..errors import GenotypeError
from .nb201 import NB201Genotype, nb201_from_dict, nb201_to_dict
from .ops import EXTRA_PRIMITIVES, PRIMITIVES

SCHEMA_VERSION = 1
CNN_OPS = tuple(p for p in PRIMITIVES if p != "none") + EXTRA_PRIMITIVES
RNN_PRIMITIVES: tuple[str, ...] = ("none", "tanh", "relu", "sigmoid", "identity")
RNN_OPS = RNN_PRIMITIVES[1:]


@dataclass(frozen=True, slots=True)
class Genotype:
    """A convolutional cell pair: ``normal``/``reduce`` as ((op, input), ...) and their concat nodes."""

    normal: tuple[tuple[str, int], ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[tuple[str, int], ...]
    reduce_concat: tuple[int, ...]

    @property
    def kind(self) -> str:
        return "cnn"

    @property
    def num_nodes(self) -> int:
        return len(self.normal) // 2


@dataclass(frozen=True, slots=True)
class RNNGenotype:
    """A recurrent cell: ``recurrent[i] = (activation, predecessor)`` builds node i+1; ``concat`` is averaged."""

    recurrent: tuple[tuple[str, int], ...]
    concat: tuple[int, ...]

    @property
    def kind(self) -> str:
        return "rnn"

    @property
    def num_nodes(self) -> int:
        return len(self.recurrent)


AnyGenotype = Union[Genotype, RNNGenotype, NB201Genotype]


def _cnn(normal, normal_concat, reduce, reduce_concat) -> Genotype:
    return Genotype(tuple(map(tuple, normal)), tuple(normal_concat), tuple(map(tuple, reduce)), tuple(reduce_concat))


# Published and reference genotypes (spec §4.3, §7.6).
PUBLISHED: dict[str, AnyGenotype] = {
    "DARTS_V1": _cnn(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)], [2, 3, 4, 5],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)], [2, 3, 4, 5]),
    "DARTS_V2": _cnn(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)], [2, 3, 4, 5],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)], [2, 3, 4, 5]),
    "NASNet": _cnn(
        [("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 0), ("sep_conv_3x3", 0),
         ("avg_pool_3x3", 1), ("skip_connect", 0), ("avg_pool_3x3", 0), ("avg_pool_3x3", 0),
         ("sep_conv_3x3", 1), ("skip_connect", 1)], [2, 3, 4, 5, 6],
        [("sep_conv_5x5", 1), ("sep_conv_7x7", 0), ("max_pool_3x3", 1), ("sep_conv_7x7", 0),
         ("avg_pool_3x3", 1), ("sep_conv_5x5", 0), ("skip_connect", 3), ("avg_pool_3x3", 2),
         ("sep_conv_3x3", 2), ("max_pool_3x3", 1)], [4, 5, 6]),
    "AmoebaNet": _cnn(
        [("avg_pool_3x3", 0), ("max_pool_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 2),
         ("sep_conv_3x3", 0), ("avg_pool_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 1),
         ("skip_connect", 0), ("avg_pool_3x3", 1)], [4, 5, 6],
        [("avg_pool_3x3", 0), ("sep_conv_3x3", 1), ("max_pool_3x3", 0), ("sep_conv_7x7", 2),
         ("sep_conv_7x7", 0), ("avg_pool_3x3", 1), ("max_pool_3x3", 0), ("max_pool_3x3", 1),
         ("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)], [3, 4, 6]),
    "RNN_DARTS_V2": RNNGenotype(
        (("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5),
         ("tanh", 3), ("relu", 5)), tuple(range(1, 9))),
    "RNN_DARTS_V1": RNNGenotype(
        (("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1), ("relu", 5),
         ("relu", 1)), tuple(range(1, 9))),
    "RNN_ENAS": RNNGenotype(
        (("tanh", 0), ("tanh", 1), ("relu", 1), ("tanh", 3), ("tanh", 3), ("relu", 3), ("relu", 4),
         ("relu", 7), ("relu", 8), ("relu", 8), ("relu", 8)), (2, 5, 6, 9, 10, 11)),
}
PUBLISHED["DARTS"] = PUBLISHED["DARTS_V2"]
PUBLISHED["RNN_DARTS"] = PUBLISHED["RNN_DARTS_V2"]


# ---------------------------------------------------------------------------------------------- JSON

def genotype_to_dict(g: AnyGenotype) -> dict[str, Any]:
    if isinstance(g, NB201Genotype):
        return {"schema_version": SCHEMA_VERSION, "kind": "nb201", **nb201_to_dict(g)}
    if isinstance(g, Genotype):
        return {
            "schema_version": SCHEMA_VERSION, "kind": "cnn",
            "normal": [{"op": op, "input": i} for op, i in g.normal], "normal_concat": list(g.normal_concat),
            "reduce": [{"op": op, "input": i} for op, i in g.reduce], "reduce_concat": list(g.reduce_concat),
        }
    return {"schema_version": SCHEMA_VERSION, "kind": "rnn",
            "recurrent": [{"op": op, "input": i} for op, i in g.recurrent], "concat": list(g.concat)}


def genotype_to_json(g: AnyGenotype) -> str:
    return json.dumps(genotype_to_dict(g), indent=2)


def save_genotype(g: AnyGenotype, path: str | Path) -> None:
    from ..checkpoint import atomic_write_text  # local import: checkpoint is a leaf too, avoid cycles

    atomic_write_text(Path(path), genotype_to_json(g) + "\n")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_pairs(data: Any, field: str, allowed_ops: tuple[str, ...], first_node: int, per_node: int,
                 num_nodes: int | None) -> tuple[tuple[str, int], ...]:
    if not isinstance(data, list):
        raise GenotypeError(f"expected a list of {{op, input}} pairs, got {type(data).__name__}", field)
    if num_nodes is not None and len(data) != num_nodes * per_node:
        raise GenotypeError(f"expected {num_nodes * per_node} edges ({per_node} per node), got {len(data)}", field)
    if len(data) == 0 or len(data) % per_node:
        raise GenotypeError(f"expected a positive multiple of {per_node} edges ({per_node} per node), got {len(data)}",
                            field)
    pairs = []
    for k, item in enumerate(data):
        path = f"{field}[{k}]"
        if isinstance(item, list) and len(item) == 2:  # also accept [op, input]
            item = {"op": item[0], "input": item[1]}
        if not isinstance(item, dict):
            raise GenotypeError("expected an object {\"op\": ..., \"input\": ...}", path)
        extra = set(item) - {"op", "input"}
        if extra:
            raise GenotypeError(f"unknown key(s) {sorted(extra)}", path)
        op, src = item.get("op"), item.get("input")
        if not isinstance(op, str) or op not in allowed_ops:
            raise GenotypeError(f"unknown operation {op!r}; expected one of {', '.join(allowed_ops)}", f"{path}.op")
        node = first_node + k // per_node
        if not _is_int(src) or not 0 <= src < node:
            raise GenotypeError(f"{src!r} is not an earlier node (0..{node - 1})", f"{path}.input")
        pairs.append((op, src))
    return tuple(pairs)


def _parse_concat(data: Any, field: str, lo: int, hi: int) -> tuple[int, ...]:
    if not isinstance(data, list) or not data:
        raise GenotypeError("expected a non-empty list of node indices", field)
    for k, v in enumerate(data):
        if not _is_int(v) or not lo <= v <= hi:
            raise GenotypeError(f"{v!r} is out of range ({lo}..{hi})", f"{field}[{k}]")
    if len(set(data)) != len(data):
        raise GenotypeError("duplicate node index", field)
    return tuple(data)


def genotype_from_dict(data: Any, num_nodes: int | None = None) -> AnyGenotype:
    """Validate a decoded JSON object and build the genotype; raises GenotypeError with the field path."""
    if not isinstance(data, dict):
        raise GenotypeError(f"expected a JSON object, got {type(data).__name__}", "genotype")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise GenotypeError(f"unsupported schema version {version!r} (this dartsnas reads {SCHEMA_VERSION})",
                            "schema_version")
    kind = data.get("kind", "rnn" if "recurrent" in data else "cnn")
    if kind == "cnn":
        allowed = {"schema_version", "kind", "normal", "normal_concat", "reduce", "reduce_concat"}
        extra = set(data) - allowed
        if extra:
            raise GenotypeError(f"unknown key(s) {sorted(extra)}", "genotype")
        for key in ("normal", "normal_concat", "reduce", "reduce_concat"):
            if key not in data:
                raise GenotypeError("missing", key)
        normal = _parse_pairs(data["normal"], "normal", CNN_OPS, 2, 2, num_nodes)
        n = len(normal) // 2
        reduce = _parse_pairs(data["reduce"], "reduce", CNN_OPS, 2, 2, n)
        return Genotype(normal, _parse_concat(data["normal_concat"], "normal_concat", 2, n + 1),
                        reduce, _parse_concat(data["reduce_concat"], "reduce_concat", 2, n + 1))
    if kind == "rnn":
        extra = set(data) - {"schema_version", "kind", "recurrent", "concat"}
        if extra:
            raise GenotypeError(f"unknown key(s) {sorted(extra)}", "genotype")
        for key in ("recurrent", "concat"):
            if key not in data:
                raise GenotypeError("missing", key)
        rec = _parse_pairs(data["recurrent"], "recurrent", RNN_OPS, 1, 1, num_nodes)
        return RNNGenotype(rec, _parse_concat(data["concat"], "concat", 1, len(rec)))
    if kind == "nb201":
        return nb201_from_dict(data)
    raise GenotypeError(f"unknown kind {kind!r}; expected 'cnn', 'rnn' or 'nb201'", "kind")


def parse_genotype(text: str, num_nodes: int | None = None) -> AnyGenotype:
    """Parse genotype JSON text. Never evaluates code; anything but JSON is refused."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise GenotypeError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", "genotype") from None
    except UnicodeDecodeError:
        raise GenotypeError("not valid UTF-8 JSON", "genotype") from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise GenotypeError("not valid JSON (nested too deeply)", "genotype") from None
    except ValueError as e:  # e.g. an integer literal beyond Python's int-string digit limit
        raise GenotypeError(f"not valid JSON ({e})", "genotype") from None
    return genotype_from_dict(data, num_nodes)


def load_genotype(spec: str | Path, kind: str | None = None) -> AnyGenotype:
    """A published name (``DARTS_V2``), a ``genotype.json`` path, or a run directory holding one."""
    name = str(spec)
    if kind == "rnn" and f"RNN_{name}" in PUBLISHED and not Path(name).exists():
        g = PUBLISHED[f"RNN_{name}"]  # checked first: DARTS/DARTS_V1/DARTS_V2 also name CNN cells
    elif name in PUBLISHED and not Path(name).exists():
        g = PUBLISHED[name]
    else:
        path = Path(name)
        if path.is_dir():
            path = path / "genotype.json"
        if not path.is_file():
            names = ", ".join(k for k in PUBLISHED)
            raise GenotypeError(f"no such file, and not a published genotype name ({names})", str(path))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GenotypeError(f"cannot read: {e}", str(path)) from None
        try:
            g = parse_genotype(text)
        except GenotypeError as e:
            raise GenotypeError(e.message, f"{path}: {e.path}" if e.path else str(path)) from None
    if kind is not None and g.kind != kind:
        raise GenotypeError(f"is a {g.kind.upper()} genotype, but a {kind.upper()} one is needed", name)
    return g
