"""A pickle reader that builds only bytes, bools, lists, tuples and numpy arrays.

InsightFace's verification sets (.bin) are pickles, and unpickling runs whatever callable the
file names: a crafted .bin can call os.system. This Unpickler's find_class admits only the
globals such files need and refuses anything else before it is imported or called, naming it.
"""

from __future__ import annotations

import codecs
import io
import pickle
from typing import Any, BinaryIO

import numpy as np

try:  # numpy >= 2 moved numpy.core to numpy._core; pickles name either
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle reached for a global outside the allow-list. A ValueError too: it is bad input,
    reported as one line like every other."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, 'latin1'); allow
    # exactly that, not codecs.encode with an arbitrary codec.
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise UnsafePickleError(f"_codecs.encode is allowed only as encode(str, 'latin1'), got encoding {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "bool"): bool,
    ("builtins", "list"): list,
    ("builtins", "tuple"): tuple,
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
for _package in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_package}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"{_package}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED[(f"{_package}.numeric", "_frombuffer")] = _numeric._frombuffer

# Python 2 names of the same things.
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        key = (_PY2_MODULES.get(module, module), name)
        if key not in _ALLOWED:
            allowed = sorted(f"{m}.{n}" for m, n in _ALLOWED)
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: not one of the types a verification "
                f"set needs ({', '.join(allowed)})"
            )
        return _ALLOWED[key]


def restricted_load(stream: BinaryIO | bytes, *, encoding: str = "bytes") -> Any:
    """Unpickle with the allow-list. ``encoding='bytes'`` reads Python 2 str as bytes, which is
    what InsightFace's JPEG strings are."""
    if isinstance(stream, bytes | bytearray):
        stream = io.BytesIO(stream)
    return RestrictedUnpickler(stream, encoding=encoding).load()
