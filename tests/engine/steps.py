"""Shared pieces of the engine tests: a BN-free backbone, a fixed global batch, the loss scaling
and the single-process reference. Worker functions live here so spawned ranks can import them."""

from __future__ import annotations

import io
import contextlib
import os

import torch

from partial_fc.engine import OptimizerSpec, build_engine
from partial_fc.models import build

GLOBAL_BATCH, STEPS, EMB = 8, 2, 16


def backbone(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)  # the same initialisation on every rank
    return build("iresnet_tiny", norm="none", input_size=32, embedding_dim=EMB)


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=g), torch.randn(GLOBAL_BATCH, EMB, generator=g))
            for _ in range(STEPS)]


def local_loss(emb: torch.Tensor, target: torch.Tensor, world_size: int, grad_accum: int) -> torch.Tensor:
    """The global loss is L = (1/B) sum over all B samples of |f(x) - t|^2. A rank can only form its
    own samples' part g_r = (1/B) sum_local, and L's gradient is sum_r grad g_r. DDP and DeepSpeed
    *average* over N ranks, and ``engine.backward`` divides by grad_accum, so each rank
    back-propagates N * grad_accum * g_r: the same x N that PartialFC's backbone_grad_average
    applies to the embedding gradient in training."""
    return world_size * grad_accum * ((emb - target) ** 2).sum() / GLOBAL_BATCH


def reference(spec: OptimizerSpec) -> dict[str, torch.Tensor]:
    """Plain single-process torch optimizer on the full global batch."""
    model = backbone()
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay) \
        if spec.name == "sgd" else torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    for images, target in batches():
        (((model(images) - target) ** 2).sum() / GLOBAL_BATCH).backward()
        opt.step()
        opt.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(engine, rank: int, world_size: int, data) -> None:
    b = GLOBAL_BATCH // world_size
    m = b // engine.grad_accum
    for images, target in data:
        for micro in range(engine.grad_accum):
            lo = rank * b + micro * m
            emb = engine.forward(images[lo : lo + m])
            engine.backward(local_loss(emb, target[lo : lo + m], world_size, engine.grad_accum))
            applied = engine.step()
            assert applied == (micro == engine.grad_accum - 1)


@contextlib.contextmanager
def _launcher_env(rank: int):
    """LOCAL_RANK as torchrun would set it (DeepSpeed insists on it), restored afterwards so an
    in-process world-size-1 run does not leave a half-set launcher environment behind."""
    old = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = str(rank)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = old


def train(rank: int, world_size: int, name: str, spec: OptimizerSpec, kw: dict) -> dict[str, torch.Tensor]:
    with _launcher_env(rank):
        engine = build_engine(name, backbone(), optimizer=spec, **kw)
        train_steps(engine, rank, world_size, batches())
        return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


def round_trip(rank: int, world_size: int, name: str, spec: OptimizerSpec, kw: dict) -> dict:
    """Step once, save through torch.save/torch.load(weights_only=True) into a differently
    initialised engine, then take the second step on both: the parameters must agree."""
    with _launcher_env(rank):
        first, second = batches()
        engine = build_engine(name, backbone(), optimizer=spec, **kw)
        train_steps(engine, rank, world_size, [first])
        buffer = io.BytesIO()
        torch.save(engine.state_dict(), buffer)
        state = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
        restored = build_engine(name, backbone(seed=7), optimizer=spec, **kw)
        restored.load_state_dict(state)
        train_steps(engine, rank, world_size, [second])
        train_steps(restored, rank, world_size, [second])
        return {"original": {k: v.detach().clone() for k, v in engine.module.state_dict().items()},
                "restored": {k: v.detach().clone() for k, v in restored.module.state_dict().items()}}


def assert_same(actual: dict, expected: dict) -> None:
    # float32; the ranks only change the order of a few sums (local batch, all-reduce), which
    # moves results by a few float32 ulps after two steps
    for key, value in expected.items():
        torch.testing.assert_close(actual[key].float(), value.float(), rtol=1e-5, atol=1e-6, msg=key)
