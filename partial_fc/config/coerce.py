"""Check a value parsed from YAML against a type annotation, converting where it is lossless.

Supported annotations: bool, int, float, str, pathlib.Path, None, Any, ``X | None`` and other
unions, ``Literal[...]``, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]`` and
nested dataclasses. An int is accepted for a float; a bool is not accepted for an int or float
(YAML's ``yes``/``true`` meaning 1 is a typo more often than an intent).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from partial_fc.config.errors import ConfigError, did_you_mean, join_key

# PyYAML follows YAML 1.1, where `1e-3` (no dot) is a string, not a float; accept that spelling.
_SUPPORTED = "bool, int, float, str, Path, None, Any, unions, Literal, list, tuple, dict, dataclass"

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
        from partial_fc.config.dicts import from_dict  # dicts imports this module

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
