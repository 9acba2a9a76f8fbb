"""The SphereFace / ArcFace picture: 2-D and 3-D features learnt with each margin.

Eight (by default) Gaussian blobs in 16-D go through a small MLP to a 2- or 3-D feature, trained
with the real ``PartialFC`` head (single process, sample rate 1) and Adam. The normalised
features and class centers are then drawn: on the unit circle (2-D) and on the unit sphere (3-D),
one panel per margin. With a margin the classes shrink to tighter arcs with wider gaps.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from partial_fc import PartialFC, margins
from partial_fc.eval.plots import PlotFile, save_png_atomic

# Paper defaults use s = 64 for D = 512; a 2-D feature needs a smaller scale to train stably,
# and SphereFace's lambda must anneal within a few hundred steps instead of thousands.
DEMO_SCALE = 16.0
DEMO_OVERRIDES: dict[str, dict[str, float]] = {"sphereface": {"lambda_gamma": 2.0}, "lsoftmax": {"lambda_gamma": 2.0}}


def demo_margin(name: str) -> margins.Margin:
    params = dict(DEMO_OVERRIDES.get(name, {}))
    if name not in margins.REGISTRY:
        raise ValueError(f"unknown margin {name!r}; choose from {margins.names()}")
    if "scale" in inspect.signature(margins.REGISTRY[name].__init__).parameters:
        params["scale"] = DEMO_SCALE
    return margins.build(name, **params)


@dataclass(frozen=True)
class DemoFeatures:
    features: np.ndarray  # (n, dim) unit rows
    labels: np.ndarray  # (n,)
    centers: np.ndarray  # (classes * subcenters, dim) unit rows
    center_labels: np.ndarray
    loss: float  # final training loss


def train_demo(margin: str, *, dim: int, num_classes: int = 8, per_class: int = 64, steps: int = 120,
               seed: int = 0) -> DemoFeatures:
    """Train the MLP and head full-batch for ``steps`` Adam steps; all on CPU in float32."""
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(num_classes, 16, generator=g) * 2.0
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    inputs = means[labels] + torch.randn(labels.numel(), 16, generator=g)
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(16, 64), nn.PReLU(), nn.Linear(64, 64), nn.PReLU(), nn.Linear(64, dim))
    head = PartialFC(num_classes, dim, margin=demo_margin(margin), seed=seed, init_std=1.0, check_inputs=False)
    opt = torch.optim.Adam([*mlp.parameters(), *head.parameters()], lr=2e-2)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = head(mlp(inputs), labels)
        loss.backward()
        if head.weight.grad is not None and head.weight.grad.is_sparse:
            head.weight.grad = head.weight.grad.to_dense()  # the head's grads are row-sparse; Adam wants dense
        opt.step()
    with torch.no_grad():
        x = mlp(inputs)
        w = head.weight.detach()
    k = head.margin.subcenters
    unit = lambda t: (t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()  # noqa: E731
    return DemoFeatures(unit(x), labels.numpy(), unit(w), np.arange(num_classes).repeat(k), float(loss.detach()))


def _draw_2d(ax, d: DemoFeatures, colors) -> None:
    t = np.linspace(0, 2 * np.pi, 200)
    ax.plot(np.cos(t), np.sin(t), color="0.8", linewidth=0.8)
    # Jitter the radius a little so points at the same angle stay visible.
    r = 1.0 + 0.06 * np.random.default_rng(0).standard_normal(len(d.labels))
    ax.scatter(d.features[:, 0] * r, d.features[:, 1] * r, c=colors[d.labels], s=4, linewidths=0)
    for c, lab in zip(d.centers, d.center_labels):
        ax.plot([0, 1.25 * c[0]], [0, 1.25 * c[1]], color=colors[lab], linewidth=1.5)
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_3d(ax, d: DemoFeatures, colors) -> None:
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, 24), np.linspace(0, np.pi, 12))
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", linewidth=0.4)
    f = d.features[:, :3]
    ax.scatter(f[:, 0], f[:, 1], f[:, 2], c=colors[d.labels], s=3, depthshade=False)
    c = d.centers[:, :3] * 1.15
    ax.scatter(c[:, 0], c[:, 1], c[:, 2], c=colors[d.center_labels], s=40, marker="*", edgecolors="k", linewidths=0.3)
    ax.set_box_aspect((1, 1, 1))
    ax.set_axis_off()


def plot_margins(names: Sequence[str], path: str | Path, *, dims: Sequence[int] = (2, 3), num_classes: int = 8,
                 steps: int = 120, seed: int = 0) -> PlotFile:
    """One row per feature dimension (2: circle, 3: sphere), one column per margin."""
    if not names:
        raise ValueError("name at least one margin")
    bad = [d for d in dims if d not in (2, 3)]
    if bad or not dims:
        raise ValueError(f"dims must be 2 and/or 3, got {list(dims)}")
    for name in names:
        demo_margin(name)  # fail on an unknown name before any training
    from matplotlib import colormaps

    colors = np.asarray(colormaps["tab10" if num_classes <= 10 else "tab20"](np.arange(num_classes) % 20))
    fig = Figure(figsize=(2.6 * len(names), 2.8 * len(dims)))
    for row, dim in enumerate(dims):
        for col, name in enumerate(names):
            d = train_demo(name, dim=dim, num_classes=num_classes, steps=steps, seed=seed)
            index = row * len(names) + col + 1
            if dim == 2:
                ax = fig.add_subplot(len(dims), len(names), index)
                _draw_2d(ax, d, colors)
            else:
                ax = fig.add_subplot(len(dims), len(names), index, projection="3d")
                _draw_3d(ax, d, colors)
            ax.set_title(f"{name} ({dim}-D)\nloss {d.loss:.3g}", fontsize="small")
    fig.tight_layout()
    return PlotFile(save_png_atomic(fig, path), n_panels=len(fig.axes))
