"""Command-line ``--set a.b=c`` overrides, merged into the parsed YAML before it is typed.

Values are parsed with ``yaml.safe_load``, as if written in the file: ``a.b=0.1`` is a float,
``a.c=[1,2]`` a list, ``x=null`` None, ``name=iresnet50`` a string. Keys are checked against the
config's dataclasses, so a typo fails here and names the valid keys.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from partial_fc.config.typed import field_types, type_name
from partial_fc.config.errors import ConfigError, unknown_key


def parse_override(text: str) -> tuple[list[str], Any]:
    """'model.dropout=0.1' -> (['model', 'dropout'], 0.1)."""
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError("", f"override {text!r} must look like section.key=value")
    dotted = ".".join(parts)
    if not raw.strip():
        raise ConfigError(
            dotted,
            f"has no value in override {text!r}; "
            f"write {dotted}=null for None or {dotted}='' for an empty string",
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(
            dotted, f"has a value that is not valid YAML in override {text!r}: {err}"
        ) from err
    return parts, value


def _section_type(tp: Any) -> Any:
    """The dataclass or dict type that `tp` (possibly ``X | None``) opens into, else None."""
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict or tp is dict:
        return tp
    if typing.get_origin(tp) is not None and type(None) in typing.get_args(tp):
        arms = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(arms) == 1:
            return _section_type(arms[0])
    return None


def _check_path(cls: type, parts: list[str]) -> None:
    """Every part of `parts` must name a field of the dataclass it walks into."""
    tp: Any = cls
    for depth, part in enumerate(parts):
        if tp is Any:
            return  # free-form data below this point
        here = ".".join(parts[:depth])
        section = _section_type(tp)
        if section is None:
            raise ConfigError(
                here, f"is {type_name(tp)}, not a section; cannot set '{part}' inside it"
            )
        if dataclasses.is_dataclass(section):
            fields = field_types(section)
            if part not in fields:
                raise unknown_key(part, here, fields)
            tp = fields[part]
        else:
            args = typing.get_args(section)
            tp = args[1] if args else Any


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str], cls: type) -> dict[str, Any]:
    """A copy of `data` with each ``a.b=c`` in `overrides` set, in order (the last one wins)."""
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for text in overrides:
        parts, value = parse_override(text)
        try:
            _check_path(cls, parts)
        except ConfigError as err:
            raise ConfigError(err.key, f"{err.detail} (from override {text!r})") from err
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(
                    ".".join(parts[: depth + 1]),
                    f"is {child!r} in the file, not a mapping; cannot apply override {text!r}",
                )
            node = child
        node[parts[-1]] = value
    return out
