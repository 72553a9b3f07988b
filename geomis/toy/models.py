"""Toy models of superposition: n sparse features squeezed into m < n hidden dimensions.

The model is the ReLU output model of Elhage et al. (2022), "Toy Models of Superposition":

    h  = W x                 (m hidden dims, W has one column d_i per feature)
    x' = ReLU(W^T h + b)     (reconstruct all n features from h)

trained with an importance-weighted squared error. Several independent instances, each with its own feature
sparsity, are trained at once from one weight tensor of shape (instances, hidden, features).
Everything is seeded and runs on the CPU in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

__all__ = [
    "ToyModelConfig",
    "TrainConfig",
    "ToyModel",
    "TrainResult",
    "feature_importance",
    "generate_batch",
    "importance_weighted_mse",
    "train_toy_model",
    "feature_norms",
    "gram_matrix",
    "superposition_interference",
    "feature_dimensionality",
    "count_represented",
]


@dataclass(frozen=True)
class ToyModelConfig:
    """Shape and data distribution of a batch of toy models (one instance per feature probability)."""

    n_features: int = 20
    """n: number of input features."""
    n_hidden: int = 5
    """m: hidden dimensions; must be smaller than n_features, otherwise nothing needs to share space."""
    feature_probability: tuple[float, ...] = (1.0,)
    """Per instance: probability p = 1 - sparsity that a feature is present; one instance per entry (a float: one)."""
    importance_decay: float = 1.0
    """Feature i has importance decay**i in the loss (1.0: all features equally important)."""

    def __post_init__(self) -> None:
        given = self.feature_probability
        probs = (float(given),) if isinstance(given, (int, float)) else tuple(float(p) for p in given)
        object.__setattr__(self, "feature_probability", probs)
        if self.n_features < 2:
            raise ValueError(f"n_features must be at least 2, got {self.n_features}")
        if not 1 <= self.n_hidden < self.n_features:
            raise ValueError(
                f"n_hidden must satisfy 1 <= n_hidden < n_features (superposition needs m < n), "
                f"got n_hidden={self.n_hidden}, n_features={self.n_features}"
            )
        if not probs:
            raise ValueError("feature_probability needs at least one entry (one per instance)")
        bad = [p for p in probs if not 0.0 < p <= 1.0]
        if bad:
            raise ValueError(f"feature_probability entries must lie in (0, 1], got {bad}")
        if not self.importance_decay > 0.0:
            raise ValueError(f"importance_decay must be positive, got {self.importance_decay}")

    @property
    def n_instances(self) -> int:
        """Number of independent models trained side by side (one per feature probability)."""
        return len(self.feature_probability)

    @classmethod
    def from_sparsities(
        cls, sparsities: Sequence[float], n_features: int = 20, n_hidden: int = 5, importance_decay: float = 1.0
    ) -> ToyModelConfig:
        """Build a config from sparsities S (p = 1 - S), the way the literature states them."""
        return cls(
            n_features=n_features,
            n_hidden=n_hidden,
            feature_probability=tuple(1.0 - s for s in sparsities),
            importance_decay=importance_decay,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for `train_toy_model` (Adam on fresh synthetic batches)."""

    steps: int = 1000
    """Number of optimiser steps; every step draws a fresh batch."""
    batch_size: int = 1024
    """Samples per step, per instance."""
    lr: float = 1e-2
    """Adam learning rate."""
    seed: int = 0
    """Seeds both the weight initialisation and the data stream."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


def feature_importance(cfg: ToyModelConfig) -> Tensor:
    """Importance weight of each feature, decay**i, shape (features,): how much its error counts."""
    return cfg.importance_decay ** torch.arange(cfg.n_features, dtype=torch.float32)


def generate_batch(cfg: ToyModelConfig, batch_size: int, generator: torch.Generator) -> Tensor:
    """Sparse inputs for all instances, shape (batch, instances, features), each with its own sparsity."""
    probs = torch.tensor(cfg.feature_probability).view(1, -1, 1)
    values = torch.rand(batch_size, cfg.n_instances, cfg.n_features, generator=generator)
    present = torch.rand(batch_size, cfg.n_instances, cfg.n_features, generator=generator) < probs
    return values * present


class ToyModel(nn.Module):
    """Batched ReLU output model: h = W x, x' = ReLU(W^T h + b), with W of shape (instances, hidden, features)."""

    def __init__(self, cfg: ToyModelConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        shape = (cfg.n_instances, cfg.n_hidden, cfg.n_features)
        # Xavier-normal scale, drawn from an explicit generator so that a seed fixes the model.
        std = math.sqrt(2.0 / (cfg.n_hidden + cfg.n_features))
        self.W = nn.Parameter(torch.randn(shape, generator=generator) * std)
        self.b = nn.Parameter(torch.zeros(cfg.n_instances, cfg.n_features))

    @classmethod
    def from_weights(cls, W: Tensor, b: Tensor, cfg: ToyModelConfig) -> ToyModel:
        """Wrap given weights W (instances, hidden, features) and b (instances, features), e.g. a hand-made W."""
        model = cls(cfg)
        if W.shape != model.W.shape or b.shape != model.b.shape:
            raise ValueError(
                f"expected W {tuple(model.W.shape)} and b {tuple(model.b.shape)}, "
                f"got {tuple(W.shape)} and {tuple(b.shape)}"
            )
        with torch.no_grad():
            model.W.copy_(W)
            model.b.copy_(b)
        return model

    def encode(self, x: Tensor) -> Tensor:
        """Hidden state h = W x, (batch, instances, features) -> (batch, instances, hidden)."""
        return torch.einsum("ihf,bif->bih", self.W, x)

    def pre_activation(self, h: Tensor) -> Tensor:
        """Feature pre-activations W^T h + b, (batch, instances, hidden) -> (batch, instances, features)."""
        return torch.einsum("ihf,bih->bif", self.W, h) + self.b

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction x' = ReLU(W^T W x + b), same shape as x."""
        return torch.relu(self.pre_activation(self.encode(x)))


def importance_weighted_mse(x: Tensor, x_hat: Tensor, importance: Tensor) -> Tensor:
    """Per-instance loss mean_batch sum_i I_i (x_i - x'_i)^2, shape (instances,): what the model minimises."""
    return (importance * (x - x_hat) ** 2).sum(-1).mean(0)


@dataclass
class TrainResult:
    """A trained batch of toy models with its loss curve."""

    model: ToyModel
    """The trained model (all instances)."""
    losses: Tensor
    """Per-step loss of every instance, shape (steps, instances)."""
    config: TrainConfig
    """The settings that produced it."""


def train_toy_model(cfg: ToyModelConfig, train: TrainConfig, progress: bool = True) -> TrainResult:
    """Train every instance with Adam on fresh sparse batches; seeded, so equal configs give equal weights."""
    generator = torch.Generator().manual_seed(train.seed)
    model = ToyModel(cfg, generator=generator)
    importance = feature_importance(cfg)
    optimiser = torch.optim.Adam(model.parameters(), lr=train.lr)
    losses = torch.empty(train.steps, cfg.n_instances)
    for step in tqdm(range(train.steps), desc="training toy models", disable=not progress):
        x = generate_batch(cfg, train.batch_size, generator)
        per_instance = importance_weighted_mse(x, model(x), importance)
        optimiser.zero_grad()
        # Instances share no parameters, so the sum trains each one independently.
        per_instance.sum().backward()
        optimiser.step()
        losses[step] = per_instance.detach()
    model.eval()
    return TrainResult(model=model, losses=losses, config=train)


@torch.no_grad()
def feature_norms(model: ToyModel) -> Tensor:
    """Length ||d_i|| of every feature direction, shape (instances, features): ~1 represented, ~0 dropped."""
    return model.W.norm(dim=1)


@torch.no_grad()
def gram_matrix(model: ToyModel) -> Tensor:
    """W^T W, shape (instances, features, features): diagonal = squared norms, off-diagonal = interference."""
    return torch.einsum("ihf,ihg->ifg", model.W, model.W)


@torch.no_grad()
def superposition_interference(model: ToyModel, eps: float = 1e-8) -> Tensor:
    """sum_{j != i} (d_i_hat . d_j)^2 per feature, shape (instances, features): how much i shares its direction."""
    unit = model.W / model.W.norm(dim=1, keepdim=True).clamp_min(eps)
    overlap = torch.einsum("ihf,ihg->ifg", unit, model.W) ** 2
    return overlap.sum(-1) - torch.diagonal(overlap, dim1=-2, dim2=-1)


@torch.no_grad()
def feature_dimensionality(model: ToyModel, eps: float = 1e-8) -> Tensor:
    """Dimensions each feature owns, ||d_i||^2 / sum_j (d_i_hat . d_j)^2, shape (instances, features).

    1 = a dimension of its own, 1/2 = an antipodal pair, 2/5 = a pentagon in a plane, ~0 = not represented.
    """
    norms_sq = feature_norms(model) ** 2
    return norms_sq / (norms_sq + superposition_interference(model, eps)).clamp_min(eps)


@torch.no_grad()
def count_represented(model: ToyModel, threshold: float = 0.5) -> Tensor:
    """Number of features with ||d_i|| > threshold per instance, shape (instances,): > n_hidden means superposition."""
    return (feature_norms(model) > threshold).sum(-1)
