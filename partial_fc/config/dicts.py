"""Dataclass <-> plain dict (the YAML data model), strictly typed in the dict -> dataclass way."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from partial_fc.config.coerce import coerce
from partial_fc.config.errors import ConfigError, join_key, unknown_key

T = TypeVar("T")


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
