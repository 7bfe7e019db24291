"""Genotypes: the discrete cells DARTS derives (spec §4.1), their JSON file format and a safe parser.

A CNN genotype holds, per cell type, a flat list of (operation, input) pairs; pairs 2i and 2i+1 build
intermediate node i+2. Inputs 0 and 1 are the cell's two inputs. A recurrent genotype holds one
(activation, predecessor) pair per node. The parser never evaluates code: it accepts JSON, or the text form
the original DARTS code prints (``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)``)
read by walking its syntax tree for literals and ``range(a, b)`` only, and reports the first bad field with its
path (``normal[3].input: 5 is not an earlier node (0..4)``).

Example::

    >>> from dartsnas.space.genotype import PUBLISHED, genotype_to_json, parse_genotype
    >>> g = PUBLISHED["DARTS_V2"]
    >>> parse_genotype(genotype_to_json(g)) == g
    True
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


AnyGenotype = Genotype | RNNGenotype | NB201Genotype


def _cnn(normal, normal_concat, reduce, reduce_concat) -> Genotype:
    return Genotype(tuple(map(tuple, normal)), tuple(normal_concat), tuple(map(tuple, reduce)), tuple(reduce_concat))


# Published and reference genotypes (spec §4.3, §7.6).
PUBLISHED: dict[str, AnyGenotype] = {
    "DARTS_V1": _cnn(
        [
            ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0),
            ("skip_connect", 0),
            ("sep_conv_3x3", 1),
            ("skip_connect", 0),
            ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0),
            ("skip_connect", 2),
        ],
        [2, 3, 4, 5],
        [
            ("max_pool_3x3", 0),
            ("max_pool_3x3", 1),
            ("skip_connect", 2),
            ("max_pool_3x3", 0),
            ("max_pool_3x3", 0),
            ("skip_connect", 2),
            ("skip_connect", 2),
            ("avg_pool_3x3", 0),
        ],
        [2, 3, 4, 5],
    ),
    "DARTS_V2": _cnn(
        [
            ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 0),
            ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1),
            ("skip_connect", 0),
            ("skip_connect", 0),
            ("dil_conv_3x3", 2),
        ],
        [2, 3, 4, 5],
        [
            ("max_pool_3x3", 0),
            ("max_pool_3x3", 1),
            ("skip_connect", 2),
            ("max_pool_3x3", 1),
            ("max_pool_3x3", 0),
            ("skip_connect", 2),
            ("skip_connect", 2),
            ("max_pool_3x3", 1),
        ],
        [2, 3, 4, 5],
    ),
    "NASNet": _cnn(
        [
            ("sep_conv_5x5", 1),
            ("sep_conv_3x3", 0),
            ("sep_conv_5x5", 0),
            ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 1),
            ("skip_connect", 0),
            ("avg_pool_3x3", 0),
            ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1),
            ("skip_connect", 1),
        ],
        [2, 3, 4, 5, 6],
        [
            ("sep_conv_5x5", 1),
            ("sep_conv_7x7", 0),
            ("max_pool_3x3", 1),
            ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1),
            ("sep_conv_5x5", 0),
            ("skip_connect", 3),
            ("avg_pool_3x3", 2),
            ("sep_conv_3x3", 2),
            ("max_pool_3x3", 1),
        ],
        [4, 5, 6],
    ),
    "AmoebaNet": _cnn(
        [
            ("avg_pool_3x3", 0),
            ("max_pool_3x3", 1),
            ("sep_conv_3x3", 0),
            ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0),
            ("avg_pool_3x3", 3),
            ("sep_conv_3x3", 1),
            ("skip_connect", 1),
            ("skip_connect", 0),
            ("avg_pool_3x3", 1),
        ],
        [4, 5, 6],
        [
            ("avg_pool_3x3", 0),
            ("sep_conv_3x3", 1),
            ("max_pool_3x3", 0),
            ("sep_conv_7x7", 2),
            ("sep_conv_7x7", 0),
            ("avg_pool_3x3", 1),
            ("max_pool_3x3", 0),
            ("max_pool_3x3", 1),
            ("conv_7x1_1x7", 0),
            ("sep_conv_3x3", 5),
        ],
        [3, 4, 6],
    ),
    "RNN_DARTS_V2": RNNGenotype(
        (
            ("sigmoid", 0),
            ("relu", 1),
            ("relu", 1),
            ("identity", 1),
            ("tanh", 2),
            ("sigmoid", 5),
            ("tanh", 3),
            ("relu", 5),
        ),
        tuple(range(1, 9)),
    ),
    "RNN_DARTS_V1": RNNGenotype(
        (("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1), ("relu", 5), ("relu", 1)),
        tuple(range(1, 9)),
    ),
    "RNN_ENAS": RNNGenotype(
        (
            ("tanh", 0),
            ("tanh", 1),
            ("relu", 1),
            ("tanh", 3),
            ("tanh", 3),
            ("relu", 3),
            ("relu", 4),
            ("relu", 7),
            ("relu", 8),
            ("relu", 8),
            ("relu", 8),
        ),
        (2, 5, 6, 9, 10, 11),
    ),
}
PUBLISHED["DARTS"] = PUBLISHED["DARTS_V2"]
PUBLISHED["RNN_DARTS"] = PUBLISHED["RNN_DARTS_V2"]


# ---------------------------------------------------------------------------------------------- JSON


def genotype_to_dict(g: AnyGenotype) -> dict[str, Any]:
    if isinstance(g, NB201Genotype):
        return {"schema_version": SCHEMA_VERSION, "kind": "nb201", **nb201_to_dict(g)}
    if isinstance(g, Genotype):
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "cnn",
            "normal": [{"op": op, "input": i} for op, i in g.normal],
            "normal_concat": list(g.normal_concat),
            "reduce": [{"op": op, "input": i} for op, i in g.reduce],
            "reduce_concat": list(g.reduce_concat),
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "rnn",
        "recurrent": [{"op": op, "input": i} for op, i in g.recurrent],
        "concat": list(g.concat),
    }


def genotype_to_json(g: AnyGenotype) -> str:
    return json.dumps(genotype_to_dict(g), indent=2)


def save_genotype(g: AnyGenotype, path: str | Path) -> None:
    from ..checkpoint import atomic_write_text  # local import: checkpoint is a leaf too, avoid cycles

    atomic_write_text(Path(path), genotype_to_json(g) + "\n")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_pairs(
    data: Any, field: str, allowed_ops: tuple[str, ...], first_node: int, per_node: int, num_nodes: int | None
) -> tuple[tuple[str, int], ...]:
    if not isinstance(data, list):
        raise GenotypeError(f"expected a list of {{op, input}} pairs, got {type(data).__name__}", field)
    if num_nodes is not None and len(data) != num_nodes * per_node:
        raise GenotypeError(f"expected {num_nodes * per_node} edges ({per_node} per node), got {len(data)}", field)
    if len(data) == 0 or len(data) % per_node:
        raise GenotypeError(
            f"expected a positive multiple of {per_node} edges ({per_node} per node), got {len(data)}", field
        )
    pairs = []
    for k, item in enumerate(data):
        path = f"{field}[{k}]"
        if isinstance(item, list) and len(item) == 2:  # also accept [op, input]
            item = {"op": item[0], "input": item[1]}
        if not isinstance(item, dict):
            raise GenotypeError('expected an object {"op": ..., "input": ...}', path)
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
        raise GenotypeError(
            f"unsupported schema version {version!r} (this dartsnas reads {SCHEMA_VERSION})", "schema_version"
        )
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
        return Genotype(
            normal,
            _parse_concat(data["normal_concat"], "normal_concat", 2, n + 1),
            reduce,
            _parse_concat(data["reduce_concat"], "reduce_concat", 2, n + 1),
        )
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


# ------------------------------------------------------------------------------- the original's text form

# Field order of the original code's namedtuples, for positional arguments.
_TEXT_FIELDS = {4: ("normal", "normal_concat", "reduce", "reduce_concat"), 2: ("recurrent", "concat")}
MAX_TEXT_CHARS = 1_000_000


def _is_text_form(text: str) -> bool:
    """True for text that looks like a ``Genotype(...)`` expression or a Python file defining one."""
    head = text.lstrip()
    return not head.startswith("{") and "Genotype(" in head[:100_000]


def _literal(node: ast.AST, where: str) -> Any:
    """The value of a literal node: str, int, list/tuple of those, or ``range(a[, b[, c]])`` with int bounds.

    Anything else (names, attributes, other calls, operators) is refused without being evaluated.
    """
    if isinstance(node, ast.Constant) and (isinstance(node.value, str) or _is_int(node.value)):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and _is_int(node.operand.value)
    ):
        return -node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e, f"{where}[{k}]") for k, e in enumerate(node.elts)]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "range"
        and not node.keywords
        and 1 <= len(node.args) <= 3
    ):
        bounds = [_literal(a, f"{where}: range argument") for a in node.args]
        if not all(_is_int(b) for b in bounds) or any(abs(b) > 10_000 for b in bounds):
            raise GenotypeError("range() takes small integers only", where)
        return list(range(*bounds))
    raise GenotypeError(
        f"only strings, integers, lists, tuples and range(a, b) are allowed here, found "
        f"{_describe(node)} (line {getattr(node, 'lineno', '?')})",
        where,
    )


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        try:
            return f"a call of {ast.unparse(node.func)[:40]}"
        except Exception:  # noqa: BLE001 - unparse of a pathological tree; the type name still says enough
            return "a call"
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r:.40}"
    return f"a {type(node).__name__} expression"


def _genotype_call(tree: ast.Module) -> ast.Call:
    """The one ``Genotype(...)`` call of a parsed text: an expression, or an assignment in a .py file (other
    statements such as imports and the namedtuple definition are ignored, never run)."""
    calls: list[tuple[str, ast.Call]] = []
    for stmt in tree.body:
        value = stmt.value if isinstance(stmt, (ast.Expr, ast.Assign)) else None
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "Genotype":
            name = (
                stmt.targets[0].id
                if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name)
                else "<expression>"
            )
            calls.append((name, value))
        elif isinstance(stmt, ast.Expr):
            raise GenotypeError(f"expected Genotype(...), found {_describe(stmt.value)}", "genotype")
    if not calls:
        raise GenotypeError("no Genotype(...) expression found", "genotype")
    if len(calls) > 1:
        names = ", ".join(n for n, _ in calls)
        raise GenotypeError(f"holds {len(calls)} genotypes ({names}); keep one Genotype(...) per file", "genotype")
    return calls[0][1]


def parse_genotype_text(text: str, num_nodes: int | None = None) -> AnyGenotype:
    """Parse the original code's ``Genotype(...)`` text form (CNN or recurrent), inline or a file's content.

    The text is parsed into a syntax tree and only literal nodes and ``range(...)`` are read; nothing is
    evaluated, so ``Genotype(normal=__import__('os')...)`` is refused with the field it appears in.
    """
    if len(text) > MAX_TEXT_CHARS:
        raise GenotypeError(f"text form is {len(text)} characters long (at most {MAX_TEXT_CHARS})", "genotype")
    try:
        tree = ast.parse(text, mode="exec")
    except SyntaxError as e:
        raise GenotypeError(
            f"not a Genotype(...) expression ({e.msg} at line {e.lineno} column {e.offset})", "genotype"
        ) from None
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, nesting beyond the parser's limit
        raise GenotypeError(f"not a Genotype(...) expression ({type(e).__name__})", "genotype") from None
    call = _genotype_call(tree)
    if call.args and call.keywords:
        raise GenotypeError("give the fields either all by name or all by position", "genotype")
    try:
        if call.args:
            fields = _TEXT_FIELDS.get(len(call.args))
            if fields is None:
                raise GenotypeError(f"expected 4 (CNN) or 2 (recurrent) fields, got {len(call.args)}", "genotype")
            data = {f: _literal(a, f) for f, a in zip(fields, call.args)}
        else:
            data = {}
            for kw in call.keywords:
                if kw.arg is None:
                    raise GenotypeError("**-arguments are not allowed", "genotype")
                data[kw.arg] = _literal(kw.value, kw.arg)
    except RecursionError:
        raise GenotypeError("nested too deeply", "genotype") from None
    data["kind"] = "rnn" if "recurrent" in data else "cnn"
    return genotype_from_dict(data, num_nodes)


def genotype_to_text(g: AnyGenotype) -> str:
    """The original code's text form of ``g`` (what its ``print(genotype)`` shows)."""

    def pairs(ps):
        return "[" + ", ".join(f"({op!r}, {i})" for op, i in ps) + "]"

    def concat(c):
        c = list(c)
        return f"range({c[0]}, {c[-1] + 1})" if c == list(range(c[0], c[-1] + 1)) else repr(c)

    if isinstance(g, Genotype):
        return (
            f"Genotype(normal={pairs(g.normal)}, normal_concat={concat(g.normal_concat)}, "
            f"reduce={pairs(g.reduce)}, reduce_concat={concat(g.reduce_concat)})"
        )
    return f"Genotype(recurrent={pairs(g.recurrent)}, concat={concat(g.concat)})"


def parse_genotype(text: str, num_nodes: int | None = None) -> AnyGenotype:
    """Parse genotype JSON text, or the original code's ``Genotype(...)`` text form. Never evaluates code."""
    if _is_text_form(text):
        return parse_genotype_text(text, num_nodes)
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
    """A published name (``DARTS_V2``), a genotype file (JSON, or the original's ``Genotype(...)`` text in a
    .txt/.py file), a run directory holding ``genotype.json``, or the text itself (JSON or ``Genotype(...)``)."""
    name = str(spec)
    if kind == "rnn" and f"RNN_{name}" in PUBLISHED and not _exists(name):
        g = PUBLISHED[f"RNN_{name}"]  # checked first: DARTS/DARTS_V1/DARTS_V2 also name CNN cells
    elif name in PUBLISHED and not _exists(name):
        g = PUBLISHED[name]
    elif not _exists(name) and (_is_text_form(name) or name.lstrip().startswith("{")):
        g = parse_genotype(name)  # inline text, not a path (a path this long would fail: File name too long)
    else:
        path = Path(name)
        if _is_dir(path):
            path = path / "genotype.json"
        if not _is_file(path):
            names = ", ".join(k for k in PUBLISHED)
            raise GenotypeError(
                f"no such file, not a Genotype(...) or JSON text, and not a published genotype name ({names})",
                _shown(str(path)),
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GenotypeError(f"cannot read: {e}", str(path)) from None
        try:
            g = parse_genotype(text)
        except GenotypeError as e:
            raise GenotypeError(e.message, f"{path}: {e.path}" if e.path else str(path)) from None
    if kind is not None and g.kind != kind:
        raise GenotypeError(f"is a {g.kind.upper()} genotype, but a {kind.upper()} one is needed", _shown(name))
    return g


def _shown(name: str, limit: int = 120) -> str:
    """A name for an error message, shortened so that a long inline genotype keeps the message readable."""
    return name if len(name) <= limit else f"{name[:limit]}... ({len(name)} characters)"


def _exists(name: str) -> bool:
    """``Path.exists`` that answers False for names the OS refuses (too long, a NUL byte) instead of raising."""
    try:
        return Path(name).exists()
    except (OSError, ValueError):
        return False


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
