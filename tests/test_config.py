"""Strict config machinery: from_dict, --set overrides, YAML round trip, ModelConfig."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
import yaml

from partial_fc.config import (
    ConfigError,
    ModelConfig,
    coerce,
    coerce_fields,
    dump_yaml,
    from_dict,
    load_yaml,
    parse_override,
    to_dict,
)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1
    momentum: float | None = None
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        coerce_fields(self)
        if self.lr <= 0:
            raise ConfigError("lr", f"must be > 0, got {self.lr}")


@dataclass(frozen=True)
class HeadConfig:
    sample_rate: float = 1.0
    margin_rad: float = 0.5

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError("sample_rate", f"must be in (0, 1], got {self.sample_rate}")


@dataclass(frozen=True)
class RunConfig:
    name: str
    seed: int = 0
    out_dir: Path = Path("runs")
    tags: tuple[str, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coerce_fields(self)
        # A cross-section check: keys named relative to this section.
        if self.head.sample_rate < 1.0 and self.optim is None:
            raise ConfigError("optim", "must be set when head.sample_rate < 1")


@dataclass(frozen=True)
class Root:
    run: RunConfig


@dataclass(frozen=True)
class PlainCheck:
    size: int = 1

    def __post_init__(self) -> None:
        if self.size > 10:
            raise ValueError(f"size {self.size} is too big")


@dataclass(frozen=True)
class HoldsPlain:
    inner: PlainCheck = field(default_factory=PlainCheck)


# ---- from_dict ------------------------------------------------------------------------------


def test_nested_build_with_defaults_and_int_for_float() -> None:
    cfg = from_dict(RunConfig, {"name": "demo", "model": {"name": "iresnet_tiny"}, "optim": {"lr": 1}})
    assert cfg.model == ModelConfig(name="iresnet_tiny")
    assert cfg.head == HeadConfig()
    assert cfg.optim == OptimConfig(lr=1.0)
    assert type(cfg.optim.lr) is float  # an int is accepted for a float and stored as one
    assert cfg.out_dir == Path("runs") and cfg.tags == ()


def test_unknown_top_level_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, {"name": "demo", "sed": 1})
    message = str(info.value)
    assert message.startswith("sed is not a valid key (did you mean 'seed'?)")
    valid = "['extra', 'head', 'model', 'name', 'optim', 'out_dir', 'seed', 'tags']"
    assert f"valid keys at the top level: {valid}" in message
    assert isinstance(info.value, ValueError) and info.value.key == "sed"


def test_unknown_nested_key_names_dotted_key_and_suggests() -> None:
    head = (
        r"^head\.sample_rat is not a valid key \(did you mean 'head\.sample_rate'\?\); "
        r"valid keys at 'head': \['margin_rad', 'sample_rate'\]$"
    )
    with pytest.raises(ValueError, match=head):
        from_dict(RunConfig, {"name": "demo", "head": {"sample_rat": 0.1}})
    deep = r"^run\.model\.embeding_dim is not a valid key \(did you mean 'run\.model\.embedding_dim'\?\)"
    with pytest.raises(ValueError, match=deep):
        from_dict(Root, {"run": {"name": "x", "model": {"embeding_dim": 128}}})


def test_unknown_key_without_close_match_has_no_suggestion() -> None:
    with pytest.raises(ValueError, match=r"^zzz is not a valid key; valid keys at the top level"):
        from_dict(RunConfig, {"name": "demo", "zzz": 1})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"seed": True}, r"^seed expects int, got True \(bool\)$"),
        ({"seed": "3"}, r"^seed expects int, got '3' \(str\)$"),
        ({"seed": 1.5}, r"^seed expects int, got 1\.5 \(float\)$"),
        ({"name": 5}, r"^name expects str, got 5 \(int\)$"),
        ({"head": {"margin_rad": "half"}}, r"^head\.margin_rad expects float, got 'half' \(str\)$"),
        ({"head": {"margin_rad": False}}, r"^head\.margin_rad expects float, got False \(bool\)$"),
        ({"head": {"margin_rad": [0.5]}}, r"^head\.margin_rad expects float, got \[0\.5\] \(list\)$"),
        ({"model": {"fp16": "yes"}}, r"^model\.fp16 expects bool, got 'yes' \(str\)$"),
        ({"model": {"fp16": 1}}, r"^model\.fp16 expects bool, got 1 \(int\)$"),
        ({"model": 5}, r"^model expects a mapping of keys to values \(ModelConfig\), got 5 \(int\)$"),
        ({"tags": "a,b"}, r"^tags expects tuple\[str, \.\.\.\], got 'a,b' \(str\)$"),
        ({"tags": ["a", 2]}, r"^tags\[1\] expects str, got 2 \(int\)$"),
        ({"optim": {"milestones": [10, "x"]}}, r"^optim\.milestones\[1\] expects int, got 'x' \(str\)$"),
        ({"optim": {"momentum": "high"}}, r"^optim\.momentum expects float, got 'high' \(str\)$"),
        ({"optim": 0.1}, r"^optim expects a mapping of keys to values \(OptimConfig\), got 0\.1"),
    ],
)
def test_wrong_types_name_key_value_and_expected_type(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_dict(RunConfig, {"name": "demo", **data})


def test_optional_accepts_none_and_value() -> None:
    assert from_dict(RunConfig, {"name": "d", "optim": None}).optim is None
    cfg = from_dict(RunConfig, {"name": "d", "optim": {"momentum": None}})
    assert cfg.optim is not None and cfg.optim.momentum is None
    assert from_dict(OptimConfig, {"momentum": 0.9}).momentum == 0.9


def test_union_of_several_types_tries_each() -> None:
    tp = int | str | None
    assert coerce(3, tp, "k") == 3 and coerce("x", tp, "k") == "x" and coerce(None, tp, "k") is None
    with pytest.raises(ConfigError, match=r"^k expects int \| str \| None, got 1\.5 \(float\)$"):
        coerce(1.5, tp, "k")


def test_literal_lists_choices_and_suggests() -> None:
    assert from_dict(OptimConfig, {"schedule": "step"}).schedule == "step"
    expected = (
        r"^optim\.schedule must be one of \['cosine', 'step', 'constant'\], "
        r"got 'cosin' \(did you mean 'cosine'\?\)$"
    )
    with pytest.raises(ValueError, match=expected):
        from_dict(OptimConfig, {"schedule": "cosin"}, path="optim")


def test_literal_compares_types_not_just_equality() -> None:
    # True == 1 and 1.0 == 1 in Python; neither is the literal 1.
    assert coerce(1, Literal[1, 2], "k") == 1
    for value in (True, 1.0):
        with pytest.raises(ConfigError, match=r"must be one of \[1, 2\]"):
            coerce(value, Literal[1, 2], "k")


def test_bare_containers_hold_anything() -> None:
    assert coerce({"a": [1, None]}, dict, "k") == {"a": [1, None]}
    assert coerce([1, "x"], list, "k") == [1, "x"]
    assert coerce([1, "x"], tuple, "k") == (1, "x")
    with pytest.raises(ConfigError, match=r"^k expects list\[Any\], got 'abc' \(str\)$"):
        coerce("abc", list, "k")


def test_fixed_length_tuple() -> None:
    assert coerce([1, 2.5], tuple[int, float], "k") == (1, 2.5)
    with pytest.raises(ConfigError, match=r"^k expects 2 items"):
        coerce([1, 2, 3], tuple[int, float], "k")


def test_float_in_exponent_notation_written_without_dot() -> None:
    # PyYAML (YAML 1.1) reads `lr: 1e-3` as the string '1e-3'; a float field accepts it.
    data = yaml.safe_load("lr: 1e-3\n")
    assert data == {"lr": "1e-3"}
    assert from_dict(OptimConfig, data).lr == pytest.approx(1e-3)
    assert from_dict(RunConfig, {"name": "1e-3"}).name == "1e-3"  # a str field keeps it a string


def test_missing_required_key() -> None:
    with pytest.raises(ValueError, match=r"^run\.name is required and has no default; add it$"):
        from_dict(Root, {"run": {}})


def test_post_init_errors_carry_the_dotted_key() -> None:
    with pytest.raises(ValueError, match=r"^head\.sample_rate must be in \(0, 1\], got 2\.0$"):
        from_dict(RunConfig, {"name": "d", "head": {"sample_rate": 2}})
    with pytest.raises(ValueError, match=r"^run\.head\.sample_rate must be in \(0, 1\], got 0\.0$"):
        from_dict(Root, {"run": {"name": "d", "head": {"sample_rate": 0}}})
    with pytest.raises(ValueError, match=r"^run\.optim must be set when head\.sample_rate < 1$"):
        from_dict(Root, {"run": {"name": "d", "head": {"sample_rate": 0.1}}})
    with pytest.raises(ValueError, match=r"^run\.optim\.lr must be > 0, got -1\.0$"):
        from_dict(Root, {"run": {"name": "d", "optim": {"lr": -1}}})


def test_plain_value_error_from_post_init_gets_the_section() -> None:
    with pytest.raises(ValueError, match=r"^inner is invalid: size 11 is too big$"):
        from_dict(HoldsPlain, {"inner": {"size": 11}})
    with pytest.raises(ValueError, match=r"^size 11 is too big$"):  # top level: left as raised
        from_dict(PlainCheck, {"size": 11})


def test_direct_construction_is_typed_too() -> None:
    with pytest.raises(ValueError, match=r"^embedding_dim expects int, got '512' \(str\)$"):
        ModelConfig(embedding_dim="512")  # type: ignore[arg-type]
    assert OptimConfig(milestones=(3, 4)).milestones == [3, 4]  # type: ignore[arg-type]


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match=r"expects a mapping of keys to values \(RunConfig\), got \[1"):
        from_dict(RunConfig, [1])


def test_to_dict_is_plain_yaml_data() -> None:
    cfg = RunConfig(name="d", out_dir=Path("/tmp/x"), tags=("a", "b"), optim=OptimConfig(milestones=[5]))
    data = to_dict(cfg)
    assert data["out_dir"] == "/tmp/x" and data["tags"] == ["a", "b"]
    assert data["optim"] == {"lr": 0.1, "momentum": None, "schedule": "cosine", "milestones": [5]}
    assert list(data) == ["name", "seed", "out_dir", "tags", "model", "head", "optim", "extra"]
    yaml.safe_dump(data)  # raises on anything safe_dump cannot write (tuples, Paths)


# ---- overrides and YAML files ---------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_parse_override_values_as_yaml() -> None:
    assert parse_override("a.b=0.1") == (["a", "b"], 0.1)
    assert parse_override("a.c=[1,2]") == (["a", "c"], [1, 2])
    assert parse_override("x=null") == (["x"], None)
    assert parse_override("name=iresnet50") == (["name"], "iresnet50")
    assert parse_override("s=a=b") == (["s"], "a=b")  # only the first '=' splits
    assert parse_override("s=''") == (["s"], "")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed", r"override 'seed' must look like section\.key=value"),
        ("a..b=1", r"override 'a\.\.b=1' must look like"),
        ("seed=", r"^seed has no value in override 'seed='; write seed=null"),
        ("seed=[1,", r"^seed has a value that is not valid YAML"),
    ],
)
def test_malformed_override(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_override(text)


def test_load_yaml_with_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path, "name: demo\nmodel:\n  name: iresnet_tiny\n  input_size: 56\noptim:\n  lr: 0.5\n"
    )
    cfg = load_yaml(
        path,
        RunConfig,
        overrides=[
            "model.dropout=0.1",
            "optim.milestones=[1,2]",
            "optim.momentum=0.9",
            "optim.momentum=null",  # the last override of a key wins
            "head.margin_rad=0.35",  # section absent from the file
            "extra.note=hello",  # free-form dict section
            "extra.deep.er=1",  # and below it, anything
        ],
    )
    assert cfg.model == ModelConfig(name="iresnet_tiny", input_size=56, dropout=0.1)
    assert cfg.optim == OptimConfig(lr=0.5, milestones=[1, 2], momentum=None)
    assert cfg.head.margin_rad == 0.35
    assert cfg.extra == {"note": "hello", "deep": {"er": 1}}
    assert cfg.name == "demo"


def test_override_sets_a_section_to_null(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\noptim:\n  lr: 0.5\n")
    assert load_yaml(path, RunConfig, overrides=["optim=null"]).optim is None
    # and re-opens a null section
    path = write(tmp_path, "name: demo\noptim: null\n")
    assert load_yaml(path, RunConfig, overrides=["optim.lr=0.2"]).optim == OptimConfig(lr=0.2)


def test_override_to_unknown_key_lists_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\n")
    expected = (
        r"^model\.embeding_dim is not a valid key \(did you mean 'model\.embedding_dim'\?\); "
        r"valid keys at 'model': \[.*'embedding_dim'.*\] \(from override 'model\.embeding_dim=128'\)$"
    )
    with pytest.raises(ValueError, match=expected):
        load_yaml(path, RunConfig, overrides=["model.embeding_dim=128"])
    with pytest.raises(ValueError, match=r"^sede is not a valid key \(did you mean 'seed'\?\)"):
        load_yaml(path, RunConfig, overrides=["sede=1"])


def test_override_into_a_scalar_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\n")
    with pytest.raises(ValueError, match=r"^seed is int, not a section; cannot set 'x' inside it"):
        load_yaml(path, RunConfig, overrides=["seed.x=1"])


def test_override_value_is_type_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "name: demo\n")
    with pytest.raises(ValueError, match=r"^seed expects int, got 'abc' \(str\)$"):
        load_yaml(path, RunConfig, overrides=["seed=abc"])


def test_overrides_do_not_touch_the_callers_data() -> None:
    from partial_fc.config import apply_overrides

    data = {"name": "demo", "optim": {"lr": 0.5}}
    out = apply_overrides(data, ["optim.lr=0.2"], RunConfig)
    assert data == {"name": "demo", "optim": {"lr": 0.5}} and out["optim"]["lr"] == 0.2


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert load_yaml(path, OptimConfig) == OptimConfig()
    assert load_yaml(path, RunConfig, overrides=["name=x"]) == RunConfig(name="x")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must hold a mapping of config keys at the top level, got list"):
        load_yaml(write(tmp_path, "- 1\n- 2\n"), RunConfig)
    with pytest.raises(ValueError, match=r"cfg\.yaml is not valid YAML"):
        load_yaml(write(tmp_path, "name: [unclosed\n"), RunConfig)


def test_dump_and_load_round_trip(tmp_path: Path) -> None:
    cfg = RunConfig(
        name="round trip: with 'quotes' # and a hash",
        seed=7,
        out_dir=Path("/data/runs/x y"),
        tags=("a", "yes", "1e-3", "null"),  # strings YAML would otherwise read as other types
        model=ModelConfig(
            name="mobilefacenet",
            embedding_dim=128,
            dropout=0.1,
            norm="group",
            options={"scale": 2, "blocks": [2, 8, 12, 4]},
        ),
        head=HeadConfig(sample_rate=0.1, margin_rad=0.1 + 0.2),  # 0.30000000000000004 must survive
        optim=OptimConfig(lr=1e-8, momentum=None, schedule="step", milestones=[10, 20]),
        extra={"nested": {"k": [1.5, None, True]}},
    )
    path = dump_yaml(cfg, tmp_path / "run" / "config.yaml")
    assert path == tmp_path / "run" / "config.yaml"
    loaded = load_yaml(path, RunConfig)
    assert loaded == cfg
    assert loaded.head.margin_rad == 0.1 + 0.2
    assert os.listdir(path.parent) == ["config.yaml"]  # no temp file left behind
    # A second round trip writes byte-identical text.
    again = dump_yaml(loaded, tmp_path / "again.yaml")
    assert again.read_text() == path.read_text()


def test_dump_is_atomic_when_writing_fails(tmp_path: Path) -> None:
    path = dump_yaml(RunConfig(name="first"), tmp_path / "config.yaml")
    before = path.read_text()
    unwritable = RunConfig(name="second", extra={"object": object()})
    with pytest.raises(yaml.representer.RepresenterError):
        dump_yaml(unwritable, path)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["config.yaml"]


# ---- ModelConfig ----------------------------------------------------------------------------


def test_model_name_is_checked_against_the_registry() -> None:
    expected = (
        r"^model\.name must be one of \['iresnet100', .*'mobilefacenet'\], "
        r"got 'iresnet5' \(did you mean 'iresnet50'\?\)$"
    )
    with pytest.raises(ValueError, match=expected):
        from_dict(ModelConfig, {"name": "iresnet5"}, path="model")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"embedding_dim": 0}, r"^model\.embedding_dim must be >= 1, got 0$"),
        ({"input_size": -1}, r"^model\.input_size must be >= 1, got -1$"),
        ({"dropout": 1.0}, r"^model\.dropout must be in \[0, 1\), got 1\.0$"),
        ({"norm": "bn"}, r"^model\.norm must be one of \['batch', 'group', 'none'\], got 'bn'$"),
        (
            {"options": {"scale": 2}},
            r"^model\.options\.scale is not an option of iresnet50; valid options: \[\]$",
        ),
        (
            {"name": "mobilefacenet", "options": {"scael": 2}},
            r"^model\.options\.scael is not an option of mobilefacenet \(did you mean 'scale'\?\); "
            r"valid options: \['scale', 'blocks'\]$",
        ),
        (
            {"options": {"fp16": True}},
            r"^model\.options\.fp16 repeats a model field; set model\.fp16 instead$",
        ),
    ],
)
def test_model_config_validation(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_dict(ModelConfig, data, path="model")


def test_model_config_builds_the_backbone(tmp_path: Path) -> None:
    text = (
        "name: iresnet_tiny\nembedding_dim: 32\ninput_size: 32\nnorm: none\n"
        "options:\n  widths: [4, 8, 16, 32]\n"
    )
    path = write(tmp_path, text)
    cfg = load_yaml(path, ModelConfig, overrides=["dropout=0.2"])
    net = cfg.build()
    assert net.layer4[0].conv1.out_channels == 32 and net.dropout.p == 0.2
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 32)


# ---- TrainConfig: each rule written once, where the value is used --------------------------


def _train_cfg(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    from partial_fc.config.train import TrainConfig

    return load_yaml(write(tmp_path, "model: {name: iresnet_tiny, input_size: 32}\n"), TrainConfig, overrides=list(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=.inf", r"^optim\.lr must be a finite number, got inf$"),
        ("optim.lr=.nan", r"^optim\.lr must be a finite number, got nan$"),
        ("optim.betas=[0.9, .inf]", r"^optim\.betas must be a finite number, got \(0\.9, inf\)$"),
        ("train.epochs=.inf", r"^train\.epochs must be a finite number, got inf$"),
        ("schedule.warmup_epochs=.inf", r"^schedule\.warmup_epochs must be a finite number, got inf$"),
        ("data.num_workers=1000", r"^data\.num_workers must be in \[0, 64\] \(DataLoader processes per rank; "),
        ("model.input_size=7", r"^model\.input_size must be in \[16, 1024\] pixels, got 7$"),
        ("head.sample_rate=0", r"^head\.sample_rate must be in \(0, 1\], got 0\.0$"),
        ("train.zero_stage=2", r"^train\.zero_stage must be 1 with engine 'ddp' \(DDP has no ZeRO stages\), got 2"),
    ],
)
def test_train_config_rejects_with_the_dotted_key(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _train_cfg(tmp_path, override)


def test_config_and_the_code_that_uses_a_value_share_one_check(tmp_path: Path) -> None:
    from partial_fc.data.loaders.config import TrainLoaderConfig
    from partial_fc.engine.stages import check_zero_stage
    from partial_fc.head.checks import check_sample_rate
    from partial_fc.head.partial_fc import PartialFC

    # the head's own error and the config's differ only by the dotted key in front
    with pytest.raises(ValueError, match=r"^sample_rate must be in \(0, 1\], got 1\.5$"):
        check_sample_rate(1.5)
    with pytest.raises(ValueError, match=r"sample_rate must be in \(0, 1\], got 1\.5$"):
        PartialFC(10, 4, margin="arcface", sample_rate=1.5)
    with pytest.raises(ConfigError, match=r"^head\.sample_rate must be in \(0, 1\], got 1\.5$"):
        _train_cfg(tmp_path, "head.sample_rate=1.5")
    with pytest.raises(ValueError, match=r"^zero_stage must be one of \[1, 2\] with engine 'deepspeed', got 3"):
        check_zero_stage("deepspeed", 3)
    with pytest.raises(ConfigError, match=r"^train\.zero_stage must be one of \[1, 2\] with engine 'deepspeed', got 3"):
        _train_cfg(tmp_path, "train.engine=deepspeed", "train.zero_stage=3")
    assert _train_cfg(tmp_path, "train.engine=deepspeed", "train.zero_stage=2").train.zero_stage == 2
    # the loader names its own field; the training config names the one the user sets
    with pytest.raises(ValueError, match=r"^data\.image_size must be in \[16, 1024\] pixels, got 7$"):
        TrainLoaderConfig(shards=("a.tar",), batch_size=1, steps_per_epoch=1, image_size=7)
    with pytest.raises(ValueError, match=r"^data\.num_workers must be in \[0, 64\]"):
        TrainLoaderConfig(shards=("a.tar",), batch_size=1, steps_per_epoch=1, num_workers=65)


def test_missing_config_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from partial_fc.cli import main

    missing = tmp_path / "nope.yaml"
    assert main(["train", "--config", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"partial-fc train: error: --config {missing} does not exist; give a YAML file (see configs/, e.g. configs/demo.yaml)\n"
    assert main(["train", "--config", str(tmp_path)]) == 2
    assert f"--config {tmp_path} is a directory" in capsys.readouterr().err
