"""The `model:` section: which backbone to build and how."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from partial_fc import models
from partial_fc.config.typed import coerce_fields
from partial_fc.config.errors import ConfigError, did_you_mean
from partial_fc.models.norms import NormKind

# Fields of ModelConfig passed to every builder; `options` carries the rest.
_COMMON_ARGUMENTS = ("embedding_dim", "input_size", "dropout", "fp16", "norm")


@dataclass(frozen=True)
class ModelConfig:
    """Backbone choice. `options` holds the arguments only some backbones take, e.g.
    ``{scale: 2}`` for mobilefacenet or ``{widths: [16, 32, 64, 128]}`` for iresnet_tiny."""

    name: str = "iresnet50"
    embedding_dim: int = 512
    input_size: int = 112
    dropout: float = 0.0
    # Backbone body under autocast (float16 on CUDA, bfloat16 on CPU); embeddings stay float32.
    fp16: bool = False
    # "group"/"none" make a sample's embedding independent of the rest of its batch.
    norm: NormKind = "batch"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coerce_fields(self)
        choices = models.names()
        if self.name not in choices:
            hint = did_you_mean(self.name, choices)
            raise ConfigError("name", f"must be one of {choices}, got {self.name!r}{hint}")
        if self.embedding_dim < 1:
            raise ConfigError("embedding_dim", f"must be >= 1, got {self.embedding_dim}")
        if self.input_size < 1:
            raise ConfigError("input_size", f"must be >= 1, got {self.input_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout}")
        extra = [a for a in models.arguments(self.name) if a not in _COMMON_ARGUMENTS]
        for key in self.options:
            if key in _COMMON_ARGUMENTS:
                raise ConfigError(
                    f"options.{key}", f"repeats a model field; set model.{key} instead"
                )
            if key not in extra:
                raise ConfigError(
                    f"options.{key}",
                    f"is not an option of {self.name}{did_you_mean(key, extra)}; "
                    f"valid options: {extra}",
                )

    def build(self) -> nn.Module:
        """The backbone, freshly initialised (on the current default device)."""
        return models.build(
            self.name,
            embedding_dim=self.embedding_dim,
            input_size=self.input_size,
            dropout=self.dropout,
            fp16=self.fp16,
            norm=self.norm,
            **self.options,
        )
