"""Argument and input checks shared by the backbones; errors name the value and the fix."""

from __future__ import annotations

from torch import Tensor


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_common(
    name: str, *, embedding_dim: int, input_size: int, dropout: float, min_input_size: int
) -> None:
    """Validate the arguments every backbone takes."""
    if not _is_int(embedding_dim) or embedding_dim < 1:
        raise ValueError(f"{name}: embedding_dim must be a positive int, got {embedding_dim!r}")
    if not _is_int(input_size) or input_size < min_input_size:
        raise ValueError(
            f"{name}: input_size must be an int >= {min_input_size}, got {input_size!r}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{name}: dropout must be in [0, 1), got {dropout!r}")


def check_input(name: str, x: Tensor, input_size: int) -> None:
    """Fail on a wrong image shape here rather than as a matmul error in the last layer."""
    if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != input_size or x.shape[3] != input_size:
        raise ValueError(
            f"{name} expects images of shape (N, 3, {input_size}, {input_size}), "
            f"got {tuple(x.shape)}; set input_size to match the data"
        )


def conv_out(size: int, *, stride: int) -> int:
    """Spatial size after a 3x3 conv with padding 1 (or a 1x1 conv without padding)."""
    return (size - 1) // stride + 1
