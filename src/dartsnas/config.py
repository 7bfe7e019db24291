"""Validated configuration dataclasses: the paper's defaults, presets by name, ``key=value`` overrides.

Every problem is reported at once: unknown keys (with a did-you-mean), wrong types, out-of-range values.
``ConfigBase`` is shared by every config of the package (search, train, recurrent, experiments).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, name: str, from_string: bool) -> Any:
    """Convert ``value`` to the field type ``tp``; raise ValueError with a message naming the field."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (from_string and str(value).lower() in ("none", "null"))):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name, from_string)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        v = value
        if from_string and isinstance(value, str) and all(isinstance(c, int) for c in choices):
            try:
                v = int(value)
            except ValueError:
                pass
        if v not in choices:
            raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return v
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_string and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if from_string and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if from_string and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{name}: expected a string, got {value!r}")
    return value


@dataclass(kw_only=True)
class ConfigBase:
    """Base of every config. Subclasses add fields with defaults and ``check()`` for ranges."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    # Fields that may change on resume without making the checkpoint incompatible.
    HARMLESS: ClassVar[frozenset[str]] = frozenset({"log_interval", "device", "progress", "eval_batch_size"})
    # Folder fields, stored absolute: a run's config then names the same data from any working directory, and a
    # relative path in an older run's config compares equal to the same folder given absolute.
    PATHS: ClassVar[frozenset[str]] = frozenset({"data_dir"})
    # The run kind written into a run's config.json ("kind"), so that a run's own config file can be read back.
    KIND: ClassVar[str | None] = None
    # Other spellings accepted for a field's values, e.g. {"space": {"cnn": "darts"}}.
    ALIASES: ClassVar[dict[str, dict[str, Any]]] = {}

    def check(self) -> list[str]:
        return []

    def __post_init__(self) -> None:
        problems = []
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            try:
                setattr(self, f.name, _coerce(getattr(self, f.name), hints[f.name], f.name, from_string=False))
            except ValueError as e:
                problems.append(str(e))
        for name in self.PATHS & {f.name for f in fields(self)}:
            value = getattr(self, name)
            if isinstance(value, str) and value:  # absolute, so that the run's config.json works from anywhere
                setattr(self, name, os.path.abspath(os.path.expanduser(value)))
        if not problems:
            problems = self.check()
        if problems:
            raise ConfigError(problems)

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def _unknown(cls, key: str) -> str:
        close = difflib.get_close_matches(key, cls.field_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{key}: unknown field{hint}"

    @classmethod
    def _alias(cls, key: str, value: Any) -> Any:
        names = cls.ALIASES.get(key, {})
        return names[value] if isinstance(value, str) and value in names else value

    @classmethod
    def from_dict(cls, data: dict[str, Any], from_string: bool = False):
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected an object, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        names = set(cls.field_names())
        problems, values = [], {}
        for key, value in data.items():
            if key not in names:
                problems.append(cls._unknown(key))
                continue
            try:
                values[key] = _coerce(cls._alias(key, value), hints[key], key, from_string)
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    @classmethod
    def build(
        cls,
        preset: str | None = None,
        overrides: list[str] | dict[str, Any] | None = None,
        config_file: str | Path | None = None,
        **kwargs: Any,
    ):
        """Defaults <- preset <- config file (JSON) <- ``key=value`` overrides <- keyword arguments."""
        data: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.PRESETS:
                raise ConfigError(f"preset: unknown preset {preset!r}; available: {', '.join(cls.PRESETS) or 'none'}")
            data.update(cls.PRESETS[preset])
        if config_file is not None:
            try:
                loaded = json.loads(Path(config_file).read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"{config_file}: cannot read config file ({e})") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{config_file}: expected a JSON object")
            kind = loaded.pop("kind", None)  # a run's own config.json names its kind
            if kind is not None and cls.KIND is not None and kind != cls.KIND:
                raise ConfigError(
                    f"{config_file}: the config of a {kind!r} run; this command takes {cls.KIND!r} configs"
                )
            data.update(loaded)
        strings: dict[str, Any] = {}
        problems = []
        if isinstance(overrides, dict):
            strings.update(overrides)
        else:
            for item in overrides or []:
                if "=" not in item:
                    problems.append(f"{item}: overrides are written key=value")
                    continue
                key, value = item.split("=", 1)
                strings[key.strip().replace("-", "_")] = value.strip()
        if problems:
            raise ConfigError(problems)
        merged = {**data, **{k: v for k, v in kwargs.items() if v is not None}}
        # Parse string overrides with coercion; the rest as typed values. Report everything at once.
        hints = typing.get_type_hints(cls)
        names = set(cls.field_names())
        for key, value in strings.items():
            if key not in names:
                problems.append(cls._unknown(key))
                continue
            try:
                merged[key] = _coerce(cls._alias(key, value), hints[key], key, from_string=isinstance(value, str))
            except ValueError as e:
                problems.append(str(e))
        unknown = [cls._unknown(k) for k in merged if k not in names]
        if problems or unknown:
            raise ConfigError(problems + unknown)
        return cls.from_dict(merged)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def diff(self, other: ConfigBase) -> tuple[list[str], list[str]]:
        """(incompatible differences, harmless differences) as ``field: ours=…, theirs=…`` strings."""
        bad, harmless = [], []
        a, b = self.to_dict(), other.to_dict()
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                line = f"{key}: checkpoint={b.get(key)!r}, config={a.get(key)!r}"
                (harmless if key in self.HARMLESS else bad).append(line)
        return bad, harmless


def require(problems: list[str], cond: bool, message: str) -> None:
    if not cond:
        problems.append(message)
