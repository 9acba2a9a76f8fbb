"""The whole training config: one dataclass per section, validated on creation.

    cfg = load_yaml("configs/demo.yaml", TrainConfig, overrides=["head.sample_rate=0.2"])

Learning-rate convention: ``optim.lr`` is the learning rate at a global batch of
``optim.lr_reference_batch`` samples (512 by default) and is scaled linearly to the actual global
batch (``per-512-samples``); set ``optim.lr_reference_batch: null`` for an absolute rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from partial_fc import margins
from partial_fc.config.typed import coerce_fields
from partial_fc.config.errors import ConfigError, check_as, did_you_mean
from partial_fc.config.model import ModelConfig
from partial_fc.data.loaders.config import check_image_size, check_num_workers
from partial_fc.engine.stages import check_zero_stage
from partial_fc.head.checks import check_sample_rate
from partial_fc.head.class_weights import check_state_dtype
from partial_fc.optim.head_optimizer import check_optim_state
from partial_fc.head.offload import check_offload
from partial_fc.optim.row_sparse_base import ROUNDINGS
from partial_fc.util.signals import check_signal_names


def _need(ok: bool, key: str, detail: str) -> None:
    if not ok:
        raise ConfigError(key, detail)


def _finite(section: object) -> None:
    """No float of a section is inf or nan: none means anything here, and an infinite lr or
    epoch count would only fail later, as non-finite embeddings or an endless schedule."""
    for key, value in vars(section).items():
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            _need(not isinstance(v, float) or math.isfinite(v), key, f"must be a finite number, got {value}")


@dataclass(frozen=True)
class DataConfig:
    """``train``: a directory with webdataset shards and manifest.json (partial-fc data synth/convert)."""

    train: str = "data/synth"
    batch_size: int = 128  # per rank
    num_workers: int = 2
    shuffle_buffer: int = 2000
    flip: bool = True
    # stream: shards read in order through a shuffle buffer (the softmax losses); identity: P
    # identities x K images per rank from a random-access index of the shards (pair losses);
    # auto: identity for loss.name triplet/contrastive, stream otherwise.
    sampler: Literal["auto", "stream", "identity"] = "auto"
    images_per_identity: int = 4  # K of the identity sampler; P = batch_size / K

    def __post_init__(self) -> None:
        coerce_fields(self)
        _finite(self)
        _need(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _need(self.images_per_identity >= 1, "images_per_identity", f"must be >= 1, got {self.images_per_identity}")
        check_as("num_workers", check_num_workers, self.num_workers)
        _need(self.shuffle_buffer >= 1, "shuffle_buffer", f"must be >= 1, got {self.shuffle_buffer}")


@dataclass(frozen=True)
class HeadConfig:
    num_classes: int | None = None  # None: take it from the data manifest
    margin: str = "arcface"
    margin_params: dict[str, Any] = field(default_factory=dict)
    sample_rate: float = 1.0
    chunk_size: int = 786432  # partial_fc.head.class_weights.DEFAULT_CHUNK_SIZE
    init_std: float = 0.01
    check_finite: bool = True
    state_dtype: str = "fp32"  # storage of the class centers: fp32 | bf16 | fp16 (arithmetic stays fp32)
    optim_state: str = "fp32"  # storage of their optimizer state: fp32 | bf16 | int8
    rounding: str = "stochastic"  # how narrower stores round: stochastic | nearest (an ablation: loses small updates)
    offload: str = "none"  # where the table of class rows + optimizer state lives: none (device) | host | mmap
    offload_dir: str | None = None  # mmap's (unlinked) files; None: <run_dir>/offload

    def __post_init__(self) -> None:
        coerce_fields(self)
        _finite(self)
        check_as("state_dtype", check_state_dtype, self.state_dtype)
        check_as("optim_state", check_optim_state, self.optim_state)
        _need(self.rounding in ROUNDINGS, "rounding", f"must be one of {list(ROUNDINGS)}, got {self.rounding!r}")
        check_as("offload", check_offload, self.offload)
        choices = margins.names()
        _need(self.margin in choices, "margin", f"must be one of {choices}, got {self.margin!r}{did_you_mean(self.margin, choices)}")
        check_as("sample_rate", check_sample_rate, self.sample_rate)
        _need(self.chunk_size >= 1, "chunk_size", f"must be >= 1, got {self.chunk_size}")
        _need(self.num_classes is None or self.num_classes >= 1, "num_classes", f"must be >= 1, got {self.num_classes}")
        try:
            margins.build(self.margin, **self.margin_params)
        except ValueError as err:
            raise ConfigError("margin_params", str(err)) from None


PAIR_LOSSES = ("triplet", "contrastive")
AGENT_LOSSES = ("c_contrastive", "c_triplet")


@dataclass(frozen=True)
class LossConfig:
    """What trains the embeddings.

    ``partial_fc``: the sharded margin-softmax head of the ``head`` section (every margin).
    ``c_contrastive`` / ``c_triplet``: NormFace's agent losses; the agents are sharded like the
    head's class centers (``head.num_classes``, ``chunk_size``, ``init_std`` apply).
    ``triplet`` / ``contrastive``: pair losses on the global batch, no class parameters; they
    need several images per identity in a batch (``data.sampler`` identity).
    ``margin`` null takes the paper's default: triplet 0.2 (FaceNet), contrastive 1.0,
    C-contrastive and C-triplet as in ``partial_fc.losses``.
    """

    name: Literal["partial_fc", "c_contrastive", "c_triplet", "triplet", "contrastive"] = "partial_fc"
    margin: float | None = None
    mining: Literal["semihard", "batch_hard", "batch_all"] = "semihard"  # triplet only
    semihard_fallback: Literal["hardest", "easiest"] = "hardest"  # triplet, mining semihard only
    negatives: Literal["all", "hardest"] = "all"  # c_triplet: every other agent, or only the nearest

    def __post_init__(self) -> None:
        coerce_fields(self)
        _finite(self)
        _need(self.margin is None or self.margin > 0, "margin", f"must be > 0 or null, got {self.margin}")
        _need(self.name != "partial_fc" or self.margin is None, "margin",
              f"is {self.margin} but loss.name partial_fc takes its margin from head.margin_params; set loss.margin null")
        _need(self.name == "triplet" or (self.mining, self.semihard_fallback) == ("semihard", "hardest"), "mining",
              f"and loss.semihard_fallback apply to loss.name triplet only, got name {self.name!r} with mining "
              f"{self.mining!r} and semihard_fallback {self.semihard_fallback!r}")
        _need(self.name == "c_triplet" or self.negatives == "all", "negatives",
              f"applies to loss.name c_triplet only, got name {self.name!r} with negatives {self.negatives!r}")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    lr_reference_batch: int | None = 512  # lr is per this many global samples; None: absolute
    head_lr_scale: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: float | None = 5.0  # backbone, as InsightFace does; None: off
    head_clip_grad_norm: float | None = None

    def __post_init__(self) -> None:
        coerce_fields(self)
        _finite(self)
        _need(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _need(self.lr_reference_batch is None or self.lr_reference_batch >= 1, "lr_reference_batch",
              f"must be >= 1 or null, got {self.lr_reference_batch}")
        _need(self.head_lr_scale > 0, "head_lr_scale", f"must be > 0, got {self.head_lr_scale}")
        _need(0.0 <= self.momentum < 1.0, "momentum", f"must be in [0, 1), got {self.momentum}")
        _need(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        for key in ("clip_grad_norm", "head_clip_grad_norm"):
            value = getattr(self, key)
            _need(value is None or value > 0, key, f"must be > 0 or null, got {value}")

    def lr_for(self, global_batch: int) -> float:
        return self.lr if self.lr_reference_batch is None else self.lr * global_batch / self.lr_reference_batch


@dataclass(frozen=True)
class ScheduleConfig:
    kind: Literal["polynomial", "cosine", "constant"] = "polynomial"
    warmup_epochs: float = 0.0
    power: float = 2.0  # polynomial decay power (InsightFace's PolyScheduler uses 2)
    final_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        coerce_fields(self)
        _finite(self)
        _need(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        _need(self.power > 0, "power", f"must be > 0, got {self.power}")
        _need(0 <= self.final_lr_ratio <= 1, "final_lr_ratio", f"must be in [0, 1], got {self.final_lr_ratio}")


@dataclass(frozen=True)
class TrainSection:
    epochs: float = 20.0
    max_steps: int | None = None  # stop early (tests, smoke runs); the schedule still spans `epochs`
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum: int = 1
    engine: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = 1
    log_every: int = 10
    checkpoint_every: int = 1000
    checkpoint_every_minutes: float | None = None  # also save when this much wall-clock time passed; null: off
    # each of these makes every rank save at the next step boundary and exit 75 ("preempted, resume me")
    preemption_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    keep_last: int = 3
    progress_bar: bool = True
    check_memory: bool = True  # refuse, before allocating, a head the capacity planner says will not fit

    def __post_init__(self) -> None:
        coerce_fields(self)
        _finite(self)
        _need(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        _need(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be >= 1 or null, got {self.max_steps}")
        _need(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        check_as("zero_stage", check_zero_stage, self.engine, self.zero_stage)
        for key in ("log_every", "checkpoint_every", "keep_last"):
            _need(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        _need(self.checkpoint_every_minutes is None or self.checkpoint_every_minutes > 0, "checkpoint_every_minutes",
              f"must be > 0 or null, got {self.checkpoint_every_minutes}")
        check_as("preemption_signals", check_signal_names, self.preemption_signals, name="signals")


@dataclass(frozen=True)
class EvalConfig:
    """Verification pair sets: the project's ``*.pairs.npz`` or InsightFace ``.bin`` files."""

    pairs: tuple[str, ...] = ()
    every: int = 1000  # steps; evaluation also runs at the end
    batch_size: int = 128
    flip: bool = True
    far_targets: tuple[float, ...] = (1e-1, 1e-2, 1e-3)

    def __post_init__(self) -> None:
        coerce_fields(self)
        _finite(self)
        _need(self.every >= 1, "every", f"must be >= 1, got {self.every}")
        _need(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class WandbConfig:
    """The API key is read from WANDB_API_KEY only, never from the config. With no key (or no
    network) runs are logged offline into the run directory."""

    enabled: bool = False
    project: str = "partial-fc"
    name: str | None = None
    mode: Literal["auto", "online", "offline"] = "auto"


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/default"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        coerce_fields(self)
        _finite(self)
        # the loader reads images at the backbone's input size
        check_as("model.input_size", check_image_size, self.model.input_size, name="image_size")
        sampler, k = self.sampler, self.data.images_per_identity
        _need(self.head.state_dtype == "fp32" or self.loss.name not in AGENT_LOSSES, "head.state_dtype",
              f"is {self.head.state_dtype!r} but loss.name {self.loss.name} keeps its agents in fp32 (only the "
              f"partial_fc head computes narrower rows in fp32); set head.state_dtype fp32")
        if self.head.offload != "none":
            _need(self.loss.name == "partial_fc", "head.offload",
                  f"is {self.head.offload!r} but loss.name {self.loss.name} keeps its rows on the device (only the "
                  f"partial_fc head stages sampled rows); set head.offload none")
            _need(self.train.grad_accum == 1, "train.grad_accum",
                  f"is {self.train.grad_accum} but head.offload {self.head.offload} stages one micro-batch's rows "
                  f"per optimizer step; set train.grad_accum 1 (or head.offload none)")
        if self.loss.name in PAIR_LOSSES:
            _need(sampler == "identity", "data.sampler",
                  f"is {self.data.sampler!r} but loss.name {self.loss.name} needs several images per identity in a "
                  f"batch; set data.sampler identity (or auto)")
        if sampler == "identity":
            _need(self.data.batch_size % k == 0, "data.batch_size",
                  f"{self.data.batch_size} is not a multiple of data.images_per_identity {k} (P identities x K images)")
            _need(self.loss.name not in PAIR_LOSSES or k >= 2, "data.images_per_identity",
                  f"is {k} but loss.name {self.loss.name} needs >= 2 images per identity to form positive pairs")

    @property
    def sampler(self) -> str:
        """data.sampler with ``auto`` resolved for this loss."""
        if self.data.sampler != "auto":
            return self.data.sampler
        return "identity" if self.loss.name in PAIR_LOSSES else "stream"
