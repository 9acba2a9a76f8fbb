"""Typed configs: strict YAML -> dataclass loading, ``--set`` overrides, atomic dump.

    cfg = load_yaml("configs/demo.yaml", TrainConfig, overrides=["model.dropout=0.1"])
    dump_yaml(cfg, run_dir / "config.yaml")   # load_yaml of that file gives cfg back

Unknown keys, wrong types and invalid values raise ConfigError (a ValueError) naming the dotted
key; unknown keys also list the valid ones and the closest match.
"""

from partial_fc.config.errors import ConfigError
from partial_fc.config.model import ModelConfig
from partial_fc.config.overrides import apply_overrides, parse_override
from partial_fc.config.typed import coerce, coerce_fields, field_types, from_dict, to_dict, type_name
from partial_fc.config.yaml_io import dump_yaml, load_yaml, to_yaml

__all__ = [
    "ConfigError",
    "ModelConfig",
    "apply_overrides",
    "coerce",
    "coerce_fields",
    "dump_yaml",
    "field_types",
    "from_dict",
    "load_yaml",
    "parse_override",
    "to_dict",
    "to_yaml",
    "type_name",
]
