"""The first-order spillover law: Δf_j ≈ α <d_j, d_t> when fine-tuning amplifies feature t."""

from __future__ import annotations

import pytest
import torch

from geomis.toy.models import ToyModel, ToyModelConfig, TrainConfig, train_toy_model
from geomis.toy.spillover import (
    AmplifyConfig,
    direction_overlaps,
    fine_tune_to_amplify,
    fit_line,
    measure_feature_changes,
    plant_direction,
    planted_spillover,
    spillover_law,
)

SPARSE = 1  # instance index of the sparse model in the fixture


@pytest.fixture(scope="module")
def model() -> ToyModel:
    cfg = ToyModelConfig.from_sparsities([0.0, 0.95], n_features=12, n_hidden=4, importance_decay=0.9)
    return train_toy_model(cfg, TrainConfig(steps=600, batch_size=512, lr=1e-2, seed=0), progress=False).model


@pytest.fixture()
def hand_made() -> ToyModel:
    """Three features in two dimensions with known overlaps: <d_1, d_0> = 0.6, <d_2, d_0> = 0."""
    cfg = ToyModelConfig(n_features=3, n_hidden=2, feature_probability=(0.5,))
    W = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, 1.0]]).unsqueeze(0)
    return ToyModel.from_weights(W, torch.zeros(1, 3), cfg)


def test_hand_made_model_matches_the_formula_exactly(hand_made: ToyModel) -> None:
    lr = 0.1
    cfg = AmplifyConfig(target=0, steps=1, lr=lr, batch_size=256, seed=1)
    tuned = fine_tune_to_amplify(hand_made, cfg)
    W = hand_made.W[0].detach()
    x = tuned.inputs
    # one SGD step on -mean ReLU(f_0): E' = E + lr * d_0 ⊗ mean_b[1(f_0 > 0) x_b]
    fires = (x @ W.T @ W[:, 0] > 0).float()
    expected_encoder = W + lr * torch.outer(W[:, 0], (fires[:, None] * x).mean(0))
    torch.testing.assert_close(tuned.encoder, expected_encoder)

    changes = measure_feature_changes(hand_made, 0, 0, tuned)
    alpha = lr * ((fires[:, None] * x).mean(0) @ x.T).mean()
    # Δf_j = α <d_j, d_0> with <d_j, d_0> = (1, 0.6, 0)
    torch.testing.assert_close(changes.pre_activation, alpha * torch.tensor([1.0, 0.6, 0.0]), atol=1e-6, rtol=1e-5)
    assert changes.alpha == pytest.approx(float(alpha), rel=1e-5)
    assert changes.along_target == pytest.approx(1.0, abs=1e-6)
    # the orthogonal feature's output cannot move either
    assert changes.output[2].abs() < 1e-7
    assert changes.output[0] > changes.output[1] > 0


def test_overlaps_of_hand_made_model(hand_made: ToyModel) -> None:
    dot, cosine = direction_overlaps(hand_made, 0, 0)
    torch.testing.assert_close(dot, torch.tensor([1.0, 0.6, 0.0]))
    torch.testing.assert_close(cosine, torch.tensor([1.0, 0.6, 0.0]))


def test_readout_and_bias_stay_frozen(model: ToyModel) -> None:
    before = (model.W.detach().clone(), model.b.detach().clone())
    tuned = fine_tune_to_amplify(model, AmplifyConfig(target=0, instance=SPARSE))
    assert torch.equal(model.W, before[0]) and torch.equal(model.b, before[1])
    assert not torch.allclose(tuned.encoder, before[0][SPARSE])


def test_spillover_law_holds_in_trained_sparse_model(model: ToyModel) -> None:
    result = spillover_law(model, AmplifyConfig(target=0, instance=SPARSE))
    others = torch.arange(12) != 0
    assert result.dot[others].abs().max() > 0.3  # superposition: the target shares directions
    assert result.fit_dot.pearson_r > 0.9
    assert result.fit_dot.slope == pytest.approx(result.changes.alpha, rel=1e-3)
    assert abs(result.fit_dot.intercept) < 1e-3
    assert result.changes.alpha > 0
    # the target itself sits on the same line: Δf_t = α ||d_t||^2
    expected_target = result.changes.alpha * float(result.dot[0])
    assert float(result.changes.pre_activation[0]) == pytest.approx(expected_target, rel=1e-3)


def test_dense_model_has_no_spillover(model: ToyModel) -> None:
    result = spillover_law(model, AmplifyConfig(target=0, instance=0))
    represented = model.W[0].detach().norm(dim=0) > 0.5
    represented[0] = False
    assert represented.sum() == 3  # the other features that own a dimension
    others = result.changes.pre_activation[represented].abs().max()
    assert others < 0.02 * float(result.changes.pre_activation[0])


def test_adam_moves_off_the_target_direction(model: ToyModel) -> None:
    sgd = spillover_law(model, AmplifyConfig(target=0, instance=SPARSE))
    adam = spillover_law(model, AmplifyConfig(target=0, instance=SPARSE, optimizer="adam", lr=0.01))
    assert sgd.changes.along_target > 0.999
    assert adam.changes.along_target < 0.99
    assert adam.fit_dot.pearson_r < sgd.fit_dot.pearson_r


def test_planted_near_feature_moves_far_feature_does_not(model: ToyModel) -> None:
    planted = planted_spillover(model, AmplifyConfig(target=0, instance=SPARSE), harmful=3, far=5, cosine=0.8)
    target, harmful, far = planted.delta_pre
    assert planted.cosines == pytest.approx((1.0, 0.8, 0.0), abs=1e-5)
    # same length as d_t, so first order predicts Δf_h / Δf_t = 0.8 and Δf_far = 0
    assert harmful / target == pytest.approx(0.8, rel=1e-3)
    assert harmful > 20 * abs(far)
    assert planted.delta_out[1] > 0.5 * planted.delta_out[0]
    assert list(planted.to_frame()["role"]) == ["target", "harmful (near)", "far"]


def test_plant_direction_sets_cosine_and_leaves_the_rest(model: ToyModel) -> None:
    original = model.W.detach().clone()
    planted = plant_direction(model, SPARSE, target=0, feature=4, cosine=-0.3)
    _, cosine = direction_overlaps(planted, SPARSE, 0)
    assert float(cosine[4]) == pytest.approx(-0.3, abs=1e-5)
    W = planted.W.detach()
    assert float(W[SPARSE, :, 4].norm()) == pytest.approx(float(W[SPARSE, :, 0].norm()), rel=1e-5)
    keep = torch.arange(12) != 4
    assert torch.equal(W[SPARSE][:, keep], original[SPARSE][:, keep])
    assert torch.equal(W[0], original[0])
    assert torch.equal(model.W, original)  # planting works on a copy


def test_fit_line_recovers_a_known_line() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    fit = fit_line(x, 2 * x + 1)
    assert fit.slope == pytest.approx(2.0)
    assert fit.intercept == pytest.approx(1.0)
    assert fit.pearson_r == pytest.approx(1.0)
    assert fit_line(x, -x).pearson_r == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="constant"):
        fit_line(torch.ones(3), x[:3])


@pytest.mark.parametrize(
    "kwargs",
    [{"target": 0, "optimizer": "rmsprop"}, {"target": 0, "steps": 0}, {"target": 0, "lr": -1.0}],
)
def test_bad_amplify_config_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        AmplifyConfig(**kwargs)


def test_bad_indices_raise(hand_made: ToyModel) -> None:
    with pytest.raises(ValueError, match="target"):
        fine_tune_to_amplify(hand_made, AmplifyConfig(target=3))
    with pytest.raises(ValueError, match="instance"):
        fine_tune_to_amplify(hand_made, AmplifyConfig(target=0, instance=1))
    with pytest.raises(ValueError, match="differ"):
        plant_direction(hand_made, 0, target=1, feature=1, cosine=0.5)
    with pytest.raises(ValueError, match="three different"):
        planted_spillover(hand_made, AmplifyConfig(target=0), harmful=0, far=2)


def test_spillover_schematic_draws_alpha_times_cosine() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from geomis.toy.figures import plot_spillover_schematic

    fig = plot_spillover_schematic(alpha=2.0, cos_near=0.75, cos_far=0.05)
    heights = [bar.get_height() for bar in fig.axes[1].patches]
    assert heights == pytest.approx([2.0, 1.5, 0.1])
    with pytest.raises(ValueError, match="cos_near must be a cosine"):
        plot_spillover_schematic(cos_near=1.5)
