"""Toy models of superposition: configuration, data, training and the geometry they learn."""

from __future__ import annotations

import math

import pytest
import torch

from geomis.toy.models import (
    ToyModel,
    ToyModelConfig,
    TrainConfig,
    count_represented,
    feature_dimensionality,
    feature_importance,
    feature_norms,
    generate_batch,
    gram_matrix,
    importance_weighted_mse,
    superposition_interference,
    train_toy_model,
)

N_FEATURES, N_HIDDEN = 12, 4
FAST = TrainConfig(steps=600, batch_size=512, lr=1e-2, seed=0)


@pytest.fixture(scope="module")
def dense_and_sparse() -> ToyModelConfig:
    return ToyModelConfig.from_sparsities([0.0, 0.95], n_features=N_FEATURES, n_hidden=N_HIDDEN, importance_decay=0.9)


@pytest.fixture(scope="module")
def trained(dense_and_sparse: ToyModelConfig):
    return train_toy_model(dense_and_sparse, FAST, progress=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_features": 5, "n_hidden": 5}, "n_hidden"),
        ({"n_features": 5, "n_hidden": 8}, "n_hidden"),
        ({"n_features": 5, "n_hidden": 0}, "n_hidden"),
        ({"feature_probability": (0.0,)}, r"\(0, 1\]"),
        ({"feature_probability": (0.5, 1.5)}, r"\(0, 1\]"),
        ({"feature_probability": ()}, "at least one"),
        ({"importance_decay": 0.0}, "importance_decay"),
    ],
)
def test_bad_config_raises_clear_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ToyModelConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"batch_size": 0}, {"lr": 0.0}])
def test_bad_train_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_from_sparsities_and_instances() -> None:
    cfg = ToyModelConfig.from_sparsities([0.0, 0.9], n_features=6, n_hidden=2)
    assert cfg.feature_probability == pytest.approx((1.0, 0.1))
    assert cfg.n_instances == 2


def test_shapes_and_forward(dense_and_sparse: ToyModelConfig) -> None:
    model = ToyModel(dense_and_sparse, generator=torch.Generator().manual_seed(0))
    x = generate_batch(dense_and_sparse, 7, torch.Generator().manual_seed(1))
    assert model.W.shape == (2, N_HIDDEN, N_FEATURES)
    assert model.b.shape == (2, N_FEATURES)
    assert x.shape == (7, 2, N_FEATURES)
    assert model.encode(x).shape == (7, 2, N_HIDDEN)
    out = model(x)
    assert out.shape == x.shape
    assert (out >= 0).all()
    # forward is exactly ReLU(W^T W x + b) for one instance done by hand
    i = 1
    by_hand = torch.relu(x[:, i] @ model.W[i].T @ model.W[i] + model.b[i])
    torch.testing.assert_close(out[:, i], by_hand)


def test_batch_has_each_instance_sparsity() -> None:
    cfg = ToyModelConfig(n_features=50, n_hidden=5, feature_probability=(1.0, 0.3, 0.02))
    x = generate_batch(cfg, 4000, torch.Generator().manual_seed(0))
    present = (x > 0).float().mean(dim=(0, 2))
    assert present.tolist() == pytest.approx([1.0, 0.3, 0.02], abs=0.01)
    assert x.min() >= 0 and x.max() <= 1
    # present features are uniform on [0, 1]: mean 1/2
    assert x[:, 0].mean().item() == pytest.approx(0.5, abs=0.01)


def test_importance_and_weighted_loss() -> None:
    cfg = ToyModelConfig(n_features=3, n_hidden=1, importance_decay=0.5)
    importance = feature_importance(cfg)
    torch.testing.assert_close(importance, torch.tensor([1.0, 0.5, 0.25]))
    x = torch.zeros(2, 1, 3)
    x_hat = torch.tensor([[[1.0, 1.0, 1.0]], [[0.0, 2.0, 0.0]]])
    # sample 1: 1 + 0.5 + 0.25 = 1.75; sample 2: 0.5 * 4 = 2.0; mean 1.875
    torch.testing.assert_close(importance_weighted_mse(x, x_hat, importance), torch.tensor([1.875]))


def test_training_reduces_loss(trained) -> None:
    first, last = trained.losses[:10].mean(0), trained.losses[-50:].mean(0)
    assert trained.losses.shape == (FAST.steps, 2)
    assert (last < 0.5 * first).all(), (first, last)


def test_dense_learns_m_orthogonal_features(trained) -> None:
    model = trained.model
    norms = feature_norms(model)[0]
    assert int(count_represented(model)[0]) == N_HIDDEN
    # the most important features win the m dimensions ...
    assert (norms[:N_HIDDEN] > 0.9).all()
    # ... and are mutually orthogonal
    keep = norms > 0.5
    gram = gram_matrix(model)[0][keep][:, keep]
    off_diagonal = gram - torch.diag(torch.diagonal(gram))
    assert off_diagonal.abs().max() < 0.1
    assert feature_dimensionality(model)[0][keep].min() > 0.95


def test_sparse_represents_more_features_than_dimensions(trained) -> None:
    model = trained.model
    n_sparse = int(count_represented(model)[1])
    assert n_sparse > N_HIDDEN + 2, n_sparse
    keep = feature_norms(model)[1] > 0.5
    # sharing directions: the represented features interfere and own less than a dimension each
    assert superposition_interference(model)[1][keep].mean() > 0.5
    assert feature_dimensionality(model)[1][keep].mean() < 0.7


def test_seeding_is_reproducible(dense_and_sparse: ToyModelConfig) -> None:
    short = TrainConfig(steps=30, batch_size=64, seed=3)
    a = train_toy_model(dense_and_sparse, short, progress=False)
    b = train_toy_model(dense_and_sparse, short, progress=False)
    c = train_toy_model(dense_and_sparse, TrainConfig(steps=30, batch_size=64, seed=4), progress=False)
    torch.testing.assert_close(a.model.W, b.model.W, rtol=0, atol=0)
    torch.testing.assert_close(a.losses, b.losses, rtol=0, atol=0)
    assert not torch.allclose(a.model.W, c.model.W)


def _model_from_columns(columns: list[tuple[float, float]]) -> ToyModel:
    cfg = ToyModelConfig(n_features=len(columns), n_hidden=2)
    W = torch.tensor(columns).T.unsqueeze(0)
    return ToyModel.from_weights(W, torch.zeros(1, len(columns)), cfg)


def test_geometry_measures_on_hand_made_directions() -> None:
    # a regular pentagon: each feature owns 2/5 of a dimension
    angles = [2 * math.pi * k / 5 for k in range(5)]
    pentagon = _model_from_columns([(math.cos(a), math.sin(a)) for a in angles])
    torch.testing.assert_close(feature_dimensionality(pentagon)[0], torch.full((5,), 0.4))
    torch.testing.assert_close(feature_norms(pentagon)[0], torch.ones(5))
    # an antipodal pair plus an orthogonal feature, and a dropped one
    mixed = _model_from_columns([(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, 0.0)])
    torch.testing.assert_close(feature_dimensionality(mixed)[0], torch.tensor([0.5, 0.5, 1.0, 0.0]))
    torch.testing.assert_close(superposition_interference(mixed)[0][:3], torch.tensor([1.0, 1.0, 0.0]))
    assert count_represented(mixed).tolist() == [3]


def test_from_weights_checks_shapes() -> None:
    cfg = ToyModelConfig(n_features=3, n_hidden=2)
    with pytest.raises(ValueError, match="expected W"):
        ToyModel.from_weights(torch.zeros(1, 3, 2), torch.zeros(1, 3), cfg)
