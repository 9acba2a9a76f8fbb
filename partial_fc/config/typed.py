"""Typed configs from plain data (the YAML data model) and back.

``from_dict`` builds a dataclass from a parsed mapping and ``coerce`` checks each value against
its annotation; they call each other (a nested dataclass is a value, a value may be a
dataclass), so they live in one module. ``coerce_fields`` gives a config built in Python the
same checks; ``to_dict`` is the way back.

Supported annotations: bool, int, float, str, pathlib.Path, None, Any, ``X | None`` and other
unions, ``Literal[...]``, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]`` and
nested dataclasses. An int is accepted for a float; a bool is not accepted for an int or float
(YAML's ``yes``/``true`` meaning 1 is a typo more often than an intent).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from partial_fc.config.errors import ConfigError, did_you_mean, join_key, unknown_key

T = TypeVar("T")

_SUPPORTED = "bool, int, float, str, Path, None, Any, unions, Literal, list, tuple, dict, dataclass"

# PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string, not a float; accept that spelling.
_FLOAT_WITHOUT_DOT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def type_name(tp: Any) -> str:
    """A readable name for an annotation: 'int | None', "one of ['a', 'b']", 'list[float]'."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None) or tp is None:
        return "None"
    if tp is Any:
        return "Any"
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in args)
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if origin is not None:
        inner = ", ".join("..." if arg is Ellipsis else type_name(arg) for arg in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", repr(tp))


def _mismatch(key: str, value: Any, tp: Any) -> ConfigError:
    return ConfigError(key, f"expects {type_name(tp)}, got {value!r} ({type(value).__name__})")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp` or raise ConfigError naming `key`, the value and the type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if tp is type(None) or tp is None:
        if value is None:
            return None
        raise _mismatch(key, value, tp)
    if origin is typing.Literal:
        # Compare types too: True == 1 and 1.0 == 1 must not match Literal[1].
        for choice in args:
            if type(value) is type(choice) and value == choice:
                return choice
        hint = did_you_mean(value, [str(a) for a in args]) if isinstance(value, str) else ""
        raise ConfigError(key, f"must be one of {list(args)}, got {value!r}{hint}")
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, args, key, tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, path=key)
    if tp in (list, tuple, dict):
        bare = {list: list[Any], tuple: tuple[Any, ...], dict: dict[Any, Any]}
        return coerce(value, bare[tp], key)
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, args, key, tp)
    if origin is dict:
        return _coerce_mapping(value, args, key, tp)
    return _coerce_scalar(value, tp, key)


def _coerce_union(value: Any, args: tuple[Any, ...], key: str, tp: Any) -> Any:
    if value is None and type(None) in args:
        return None
    arms = [arg for arg in args if arg is not type(None)]
    if len(arms) == 1:
        # `X | None`: X's own error (e.g. a nested key) says more than "expects X | None".
        return coerce(value, arms[0], key)
    for arm in arms:
        try:
            return coerce(value, arm, key)
        except ConfigError:
            continue
    raise _mismatch(key, value, tp)


def _coerce_sequence(value: Any, origin: type, args: tuple[Any, ...], key: str, tp: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _mismatch(key, value, tp)
    if origin is list:
        item_type = args[0] if args else Any
        return [coerce(item, item_type, join_key(key, f"[{i}]")) for i, item in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(item, args[0], join_key(key, f"[{i}]")) for i, item in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(
            key, f"expects {len(args)} items ({type_name(tp)}), got {len(value)}: {value!r}"
        )
    return tuple(
        coerce(item, arg, join_key(key, f"[{i}]")) for i, (item, arg) in enumerate(zip(value, args))
    )


def _coerce_mapping(value: Any, args: tuple[Any, ...], key: str, tp: Any) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _mismatch(key, value, tp)
    key_type, value_type = args if args else (Any, Any)
    out = {}
    for k, v in value.items():
        k = coerce(k, key_type, join_key(key, f"[{k!r}]"))
        out[k] = coerce(v, value_type, join_key(key, str(k)))
    return out


def _coerce_scalar(value: Any, tp: Any, key: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_WITHOUT_DOT.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    else:
        raise TypeError(
            f"config annotation {tp!r} at '{key}' is not supported; choose from {_SUPPORTED}"
        )
    raise _mismatch(key, value, tp)



@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields of dataclass `cls`, in declaration order."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _required(cls: type) -> set[str]:
    missing = dataclasses.MISSING
    return {
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.default is missing and f.default_factory is missing
    }


def from_dict(cls: type[T], data: Any, *, path: str = "") -> T:
    """Build dataclass `cls` (and the dataclasses nested in it) from `data`, a parsed YAML mapping.

    Raises ConfigError (a ValueError) naming the dotted key for an unknown key (listing the valid
    ones and the closest match), a missing required key, a value of the wrong type, or a value
    rejected by a ``__post_init__``. `path` is the dotted location of `data` in the whole config.
    """
    types_by_name = field_types(cls)
    if not isinstance(data, Mapping):
        raise ConfigError(
            path,
            f"expects a mapping of keys to values ({cls.__name__}), "
            f"got {data!r} ({type(data).__name__})",
        )
    for key in data:
        if not isinstance(key, str) or key not in types_by_name:
            raise unknown_key(str(key), path, types_by_name)
    missing = sorted(_required(cls) - set(data))
    if missing:
        raise ConfigError(join_key(path, missing[0]), "is required and has no default; add it")
    kwargs = {
        key: coerce(value, types_by_name[key], join_key(path, key)) for key, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.under(path) from err
    except ValueError as err:
        if not path:
            raise
        raise ConfigError(path, f"is invalid: {err}") from err


def coerce_fields(obj: Any) -> None:
    """Check every field of dataclass instance `obj` against its annotation, converting in place
    (int -> float, list -> tuple, ...). Call it first in ``__post_init__`` so a config built in
    Python is as strictly typed as one read from YAML; works on frozen dataclasses."""
    for name, tp in field_types(type(obj)).items():
        object.__setattr__(obj, name, coerce(getattr(obj, name), tp, name))


def to_dict(obj: Any) -> Any:
    """Plain YAML-safe data for a (nested) dataclass: dicts in field order, lists, str paths."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: to_dict(getattr(obj, name)) for name in field_types(type(obj))}
    if isinstance(obj, Mapping):
        return {to_dict(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(item) for item in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
