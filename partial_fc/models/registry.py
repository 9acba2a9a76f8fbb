"""Name -> backbone builder. Builders take keyword arguments only and return an nn.Module."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

Builder = Callable[..., nn.Module]

_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder under `name`; a name can be taken only once."""

    def add(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return add


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_BUILDERS)


def _builder(name: str) -> Builder:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}{_suggest(name, names())}; choose from {names()}")
    return _BUILDERS[name]


def arguments(name: str) -> list[str]:
    """The keyword arguments the builder of `name` accepts, in declaration order."""
    return list(inspect.signature(_builder(name)).parameters)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone `name`; unknown names and arguments are errors listing the valid ones."""
    builder = _builder(name)
    valid = arguments(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"model {name!r} got unknown argument(s) {unknown}{_suggest(unknown[0], valid)}; "
            f"valid arguments: {valid}"
        )
    return builder(**kwargs)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
