"""The one error type of the config machinery: a ValueError that knows the dotted key at fault."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any


def join_key(prefix: str, key: str) -> str:
    """'model' + 'name' -> 'model.name'; an index attaches without a dot: 'a' + '[0]' -> 'a[0]'."""
    if not prefix:
        return key
    if not key:
        return prefix
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


class ConfigError(ValueError):
    """A bad config value. ``str(err)`` is ``f"{key} {detail}"``; `key` is a dotted path.

    Raise it from a dataclass's ``__post_init__`` with the field name as key
    (``ConfigError("sample_rate", f"must be in (0, 1], got {v}")``); `from_dict` prefixes the
    path of the section, so the user reads ``head.sample_rate must be in (0, 1], got 2``.
    """

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"{key} {detail}" if key else detail)

    def under(self, prefix: str) -> ConfigError:
        """The same error with `prefix` (the section's dotted path) in front of its key."""
        return ConfigError(join_key(prefix, self.key), self.detail) if prefix else self


def did_you_mean(word: str, choices: Iterable[str], *, section: str = "") -> str:
    """' (did you mean 'section.x'?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {join_key(section, close[0])!r}?)" if close else ""


def unknown_key(key: str, section: str, valid: Iterable[str]) -> ConfigError:
    """Error for `key` not being a field of the section at dotted path `section`."""
    valid = sorted(valid)
    where = f"'{section}'" if section else "the top level"
    hint = did_you_mean(key, valid, section=section)
    return ConfigError(
        join_key(section, key), f"is not a valid key{hint}; valid keys at {where}: {valid}"
    )


def check_as(key: str, check: Callable[..., None], *args: Any, name: str | None = None) -> None:
    """Run ``check`` (a validator that lives beside the code using the value and raises
    ValueError "NAME ...") and raise its error as a ConfigError for the field ``key``, so the
    config reports the dotted key while the rule is written once. The check's own word for the
    value (its message's first word: ``name``, by default the key's last part) gives way to the key."""
    try:
        check(*args)
    except ValueError as err:
        message, word = str(err), (name or key.rsplit(".", 1)[-1]) + " "
        raise ConfigError(key, message.removeprefix(word) if message.startswith(word) else f"is invalid: {message}") from None
