"""First-order spillover: amplifying one feature moves every feature that shares its direction.

Fine-tuning that raises target feature t changes the hidden state along t's direction, Δh ≈ α d_t.
Feature j reads the hidden state through its own direction d_j (column j of W), so its pre-activation
moves by

    Δf_j = <d_j, Δh> ≈ α <d_j, d_t>      (first order in α).

In superposition many <d_j, d_t> are far from zero, so a narrow fine-tune spills over into other features,
in proportion to their overlap with the target (Minegishi et al., ACL 2026). This module measures that law
in a trained toy model: it fine-tunes only the hidden-side map (an untied copy of the encoder) while the
feature dictionary (readout W^T and bias b) stays frozen, then fits Δf_j against <d_j, d_t>.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from geomis.toy.models import ToyModel, generate_batch

__all__ = [
    "AmplifyConfig",
    "FineTuned",
    "amplify_loss",
    "FeatureChanges",
    "LineFit",
    "SpilloverResult",
    "PlantedSpillover",
    "direction_overlaps",
    "fine_tune_to_amplify",
    "measure_feature_changes",
    "fit_line",
    "spillover_law",
    "plant_direction",
    "planted_spillover",
]


@dataclass(frozen=True)
class AmplifyConfig:
    """How to fine-tune one instance of a toy model so that target feature t fires more."""

    target: int
    """Index t of the feature the fine-tune amplifies."""
    instance: int = 0
    """Which instance (sparsity level) of the batched model to fine-tune."""
    steps: int = 20
    """Optimiser steps (full batch: every step sees the same inputs)."""
    lr: float = 0.05
    """Learning rate; with SGD the shift α grows roughly with lr * steps."""
    batch_size: int = 1024
    """Number of fine-tuning inputs; the changes are measured on the same inputs."""
    seed: int = 0
    """Seeds the fine-tuning inputs."""
    target_always_on: bool = True
    """Make t present in every input, like a narrow fine-tuning set built around one concept."""
    optimizer: Literal["sgd", "adam"] = "sgd"
    """Plain SGD (the setting of the law) or Adam (per-coordinate rescaling; see the chapter's exercise)."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")


class FineTuned(NamedTuple):
    """The fine-tuned hidden-side map of one instance and the inputs it was trained on."""

    encoder: Tensor
    """Fine-tuned encoder E', shape (hidden, features); the model's hidden state becomes h = E' x."""
    inputs: Tensor
    """Fine-tuning inputs x, shape (batch, features)."""


class FeatureChanges(NamedTuple):
    """Mean change of every feature over the inputs, after minus before the fine-tune."""

    pre_activation: Tensor
    """Mean Δf_j of the pre-activation d_j . h + b_j, shape (features,)."""
    output: Tensor
    """Mean change of the output ReLU(f_j), shape (features,)."""
    along_target: float
    """Share of ||Δh||^2 that lies along d_t (1.0: the hidden state moved only along the target's direction)."""
    alpha: float
    """Mean shift along the target, <Δh, d_t> / ||d_t||^2: the α of Δh ≈ α d_t."""


class LineFit(NamedTuple):
    """Least-squares line y ≈ slope * x + intercept and the Pearson correlation of x and y."""

    slope: float
    intercept: float
    pearson_r: float


@dataclass(frozen=True)
class SpilloverResult:
    """Everything the spillover law needs for one amplified target: overlaps, changes and both fits."""

    target: int
    """The amplified feature t."""
    dot: Tensor
    """<d_j, d_t> for every feature j, shape (features,)."""
    cosine: Tensor
    """cos(d_j, d_t) for every feature j, shape (features,)."""
    changes: FeatureChanges
    """Measured mean changes."""
    fit_dot: LineFit
    """Fit of Δf_j against <d_j, d_t> over the features j != t (the first-order law: slope ≈ α, r ≈ 1)."""
    fit_cosine: LineFit
    """Fit of Δf_j against cos(d_j, d_t) over j != t (ignores how long d_j is)."""


@torch.no_grad()
def direction_overlaps(model: ToyModel, instance: int, target: int, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """<d_j, d_t> and cos(d_j, d_t) for every feature j, each shape (features,): the geometry the law uses."""
    W = model.W[instance]
    dot = W.T @ W[:, target]
    norms = W.norm(dim=0)
    cosine = dot / (norms * norms[target]).clamp_min(eps)
    return dot, cosine


def _fine_tuning_inputs(model: ToyModel, cfg: AmplifyConfig) -> Tensor:
    """Inputs drawn from the instance's own sparsity, with the target switched on if asked."""
    generator = torch.Generator().manual_seed(cfg.seed)
    x = generate_batch(model.cfg, cfg.batch_size, generator)[:, cfg.instance].clone()
    if cfg.target_always_on:
        x[:, cfg.target] = torch.rand(cfg.batch_size, generator=generator)
    return x


def amplify_loss(encoder: Tensor, readout: Tensor, bias: Tensor, inputs: Tensor, target: int) -> Tensor:
    """The fine-tune's loss -mean_x ReLU(f_t(x)), f_t = <d_t, E x> + b_t: lower when target t fires more."""
    pre_t = (inputs @ encoder.T) @ readout[:, target] + bias[target]
    return -torch.relu(pre_t).mean()


def fine_tune_to_amplify(model: ToyModel, cfg: AmplifyConfig, progress: bool = False) -> FineTuned:
    """Train only an untied copy of the encoder to raise feature t's output; the readout W^T and b stay fixed."""
    if not 0 <= cfg.instance < model.cfg.n_instances:
        raise ValueError(f"instance must be in [0, {model.cfg.n_instances}), got {cfg.instance}")
    if not 0 <= cfg.target < model.cfg.n_features:
        raise ValueError(f"target must be in [0, {model.cfg.n_features}), got {cfg.target}")
    readout = model.W[cfg.instance].detach()  # frozen feature dictionary
    bias = model.b[cfg.instance].detach()
    encoder = readout.clone().requires_grad_(True)  # the part fine-tuning may change
    inputs = _fine_tuning_inputs(model, cfg)
    optimiser: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        optimiser = torch.optim.SGD([encoder], lr=cfg.lr)
    else:
        optimiser = torch.optim.Adam([encoder], lr=cfg.lr)
    for _ in tqdm(range(cfg.steps), desc=f"amplifying feature {cfg.target}", disable=not progress):
        loss = amplify_loss(encoder, readout, bias, inputs, cfg.target)  # raise feature t's output
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return FineTuned(encoder=encoder.detach(), inputs=inputs)


@torch.no_grad()
def measure_feature_changes(model: ToyModel, instance: int, target: int, tuned: FineTuned) -> FeatureChanges:
    """Mean change of every feature's pre-activation and output on the fine-tuning inputs."""
    readout, bias = model.W[instance], model.b[instance]
    h_before = tuned.inputs @ readout.T
    h_after = tuned.inputs @ tuned.encoder.T
    pre_before = h_before @ readout + bias
    pre_after = h_after @ readout + bias
    delta_h = h_after - h_before
    d_t = readout[:, target]
    along = (delta_h @ d_t) ** 2 / d_t.dot(d_t)
    total = (delta_h**2).sum(-1)
    return FeatureChanges(
        pre_activation=(pre_after - pre_before).mean(0),
        output=(torch.relu(pre_after) - torch.relu(pre_before)).mean(0),
        along_target=float(along.sum() / total.sum()) if total.sum() > 0 else float("nan"),
        alpha=float((delta_h @ d_t).mean() / d_t.dot(d_t)),
    )


def fit_line(x: Tensor, y: Tensor) -> LineFit:
    """Least-squares slope/intercept and Pearson r of y against x: how well one overlap predicts the change."""
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(), y - y.mean()
    sxx, syy, sxy = (xc * xc).sum(), (yc * yc).sum(), (xc * yc).sum()
    if sxx == 0:
        raise ValueError("x is constant; a line cannot be fitted")
    slope = sxy / sxx
    r = sxy / math.sqrt(float(sxx * syy)) if syy > 0 else float("nan")
    return LineFit(slope=float(slope), intercept=float(y.mean() - slope * x.mean()), pearson_r=float(r))


def spillover_law(model: ToyModel, cfg: AmplifyConfig, progress: bool = False) -> SpilloverResult:
    """Amplify target t, measure every feature's change and fit it against <d_j, d_t> and cos(d_j, d_t)."""
    tuned = fine_tune_to_amplify(model, cfg, progress=progress)
    changes = measure_feature_changes(model, cfg.instance, cfg.target, tuned)
    dot, cosine = direction_overlaps(model, cfg.instance, cfg.target)
    others = torch.arange(model.cfg.n_features) != cfg.target
    return SpilloverResult(
        target=cfg.target,
        dot=dot,
        cosine=cosine,
        changes=changes,
        fit_dot=fit_line(dot[others], changes.pre_activation[others]),
        fit_cosine=fit_line(cosine[others], changes.pre_activation[others]),
    )


@torch.no_grad()
def plant_direction(
    model: ToyModel, instance: int, target: int, feature: int, cosine: float, norm: float | None = None
) -> ToyModel:
    """Copy of the model in which `feature` points at a chosen cosine to the target (norm defaults to ||d_t||)."""
    if feature == target:
        raise ValueError("the planted feature must differ from the target")
    if not -1.0 <= cosine <= 1.0:
        raise ValueError(f"cosine must lie in [-1, 1], got {cosine}")
    planted = copy.deepcopy(model)
    W = planted.W[instance]
    u_t = W[:, target] / W[:, target].norm()
    # Keep the part of the feature's old direction that is orthogonal to d_t, so planting is deterministic.
    rest = W[:, feature] - W[:, feature].dot(u_t) * u_t
    if rest.norm() < 1e-6:  # old direction parallel to d_t (or zero): use the basis axis least aligned with it
        axis = torch.zeros_like(u_t)
        axis[u_t.abs().argmin()] = 1.0
        rest = axis - axis.dot(u_t) * u_t
    v = rest / rest.norm()
    length = float(W[:, target].norm()) if norm is None else norm
    W[:, feature] = length * (cosine * u_t + math.sqrt(max(0.0, 1.0 - cosine**2)) * v)
    return planted


@dataclass(frozen=True)
class PlantedSpillover:
    """How much the target, a planted near ('harmful') feature and a far feature change when t is amplified."""

    features: tuple[int, int, int]
    """(target, harmful, far) feature indices."""
    cosines: tuple[float, float, float]
    """cos(d_j, d_t) of each after planting."""
    delta_pre: tuple[float, float, float]
    """Mean change of each one's pre-activation."""
    delta_out: tuple[float, float, float]
    """Mean change of each one's output."""

    roles: tuple[str, str, str] = ("target", "harmful (near)", "far")

    def to_frame(self, decimals: int | None = None) -> pd.DataFrame:
        """One row per role, for printing and plotting; `decimals` rounds (and turns -0.0 into 0.0) for display."""
        frame = pd.DataFrame(
            {
                "role": self.roles,
                "feature": self.features,
                "cosine to target": self.cosines,
                "Δ pre-activation": self.delta_pre,
                "Δ output": self.delta_out,
            }
        )
        if decimals is not None:
            numbers = ["cosine to target", "Δ pre-activation", "Δ output"]
            frame[numbers] = frame[numbers].round(decimals) + 0.0
        return frame


def planted_spillover(
    model: ToyModel, cfg: AmplifyConfig, harmful: int, far: int, cosine: float = 0.8, far_cosine: float = 0.0
) -> PlantedSpillover:
    """Plant a harmful feature at `cosine` to the target and a far one at `far_cosine`, amplify t, report each."""
    if len({cfg.target, harmful, far}) != 3:
        raise ValueError("target, harmful and far must be three different features")
    planted = plant_direction(model, cfg.instance, cfg.target, harmful, cosine)
    planted = plant_direction(planted, cfg.instance, cfg.target, far, far_cosine)
    tuned = fine_tune_to_amplify(planted, cfg)
    changes = measure_feature_changes(planted, cfg.instance, cfg.target, tuned)
    _, cos = direction_overlaps(planted, cfg.instance, cfg.target)
    idx = (cfg.target, harmful, far)
    return PlantedSpillover(
        features=idx,
        cosines=tuple(float(cos[i]) for i in idx),  # type: ignore[arg-type]
        delta_pre=tuple(float(changes.pre_activation[i]) for i in idx),  # type: ignore[arg-type]
        delta_out=tuple(float(changes.output[i]) for i in idx),  # type: ignore[arg-type]
    )
