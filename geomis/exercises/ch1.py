"""Checks for Chapter 1's exercises: the student's function against geomis.toy on seeded cases and edge cases.

Each `check_*` takes the student's function, runs it next to the geomis implementation on a few fixed inputs
(random weights from seeded generators, plus edge cases such as a dropped feature or a target that never fires),
and prints a line starting with ✅, or raises `ExerciseFailure` naming the case and what differed. When the output
matches a known mistake (a missing ReLU, the cosine in place of the dot product, ...) the message says so.
All exercises work on one instance of the toy model: W has shape (hidden, features), one column per feature.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from geomis.exercises.check import (
    Case,
    ExerciseFailure,
    Mistake,
    Tolerance,
    call_student,
    check_function,
    compare_tensors,
    passed,
    seeded_generator,
)
from geomis.toy.models import (
    ToyModel,
    ToyModelConfig,
    feature_dimensionality,
    generate_batch,
    importance_weighted_mse,
)
from geomis.toy.spillover import amplify_loss, direction_overlaps

__all__ = [
    "check_sparse_batch",
    "check_toy_forward",
    "check_importance_loss",
    "check_dimensions_per_feature",
    "check_encoder_sgd_step",
    "check_spillover_prediction",
    "check_closest_features",
    "reference_sparse_batch",
    "reference_toy_forward",
    "reference_importance_loss",
    "reference_dimensions_per_feature",
    "reference_encoder_sgd_step",
    "reference_spillover_prediction",
    "reference_closest_features",
]

StudentFunction = Callable[..., Any]


# ---------------------------------------------------------------------------------------------------------------
# References: the geomis implementations, reshaped to the exercises' single-instance signatures.
# ---------------------------------------------------------------------------------------------------------------


def _single_instance(W: Tensor, b: Tensor | None = None) -> ToyModel:
    """A one-instance ToyModel holding W (hidden, features) and b (features,); b defaults to zeros."""
    n_hidden, n_features = W.shape
    cfg = ToyModelConfig(n_features=n_features, n_hidden=n_hidden)
    bias = torch.zeros(n_features) if b is None else b
    with torch.random.fork_rng(devices=[]):  # ToyModel draws (and then overwrites) initial weights
        return ToyModel.from_weights(W[None].float(), bias[None].float(), cfg)


def reference_sparse_batch(batch_size: int, n_features: int, p: float, generator: torch.Generator) -> Tensor:
    """geomis.toy.models.generate_batch for one instance: shape (batch, features), present w.p. p, U[0, 1]."""
    cfg = ToyModelConfig(n_features=n_features, n_hidden=1, feature_probability=(p,))
    return generate_batch(cfg, batch_size, generator)[:, 0]


@torch.no_grad()
def reference_toy_forward(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
    """geomis.toy.models.ToyModel.forward for one instance: ReLU(W^T W x + b), shape (batch, features)."""
    return _single_instance(W, b)(x[:, None])[:, 0]


def reference_importance_loss(x: Tensor, x_hat: Tensor, importance: Tensor) -> Tensor:
    """geomis.toy.models.importance_weighted_mse for one instance: mean_batch sum_i I_i (x_i - x'_i)^2, a scalar."""
    return importance_weighted_mse(x[:, None], x_hat[:, None], importance)[0]


def reference_dimensions_per_feature(W: Tensor) -> Tensor:
    """geomis.toy.models.feature_dimensionality for one instance, shape (features,)."""
    return feature_dimensionality(_single_instance(W))[0]


def reference_encoder_sgd_step(E: Tensor, W: Tensor, b: Tensor, x: Tensor, target: int, lr: float) -> Tensor:
    """E after one SGD step on geomis.toy.spillover.amplify_loss (W and b frozen), shape (hidden, features)."""
    encoder = E.detach().clone().requires_grad_(True)
    loss = amplify_loss(encoder, W.detach(), b.detach(), x, target)
    (grad,) = torch.autograd.grad(loss, encoder)
    return (encoder - lr * grad).detach()


def reference_spillover_prediction(W: Tensor, target: int, alpha: float) -> Tensor:
    """First-order change alpha <d_j, d_t> of every feature's pre-activation, from direction_overlaps."""
    dot, _ = direction_overlaps(_single_instance(W), 0, target)
    return alpha * dot


def reference_closest_features(W: Tensor, target: int, k: int) -> Tensor:
    """The k features j != t with the largest cos(d_j, d_t), most similar first (direction_overlaps' cosine)."""
    _, cosine = direction_overlaps(_single_instance(W), 0, target)
    cosine[target] = -torch.inf
    return cosine.topk(k).indices


# ---------------------------------------------------------------------------------------------------------------
# Seeded inputs.
# ---------------------------------------------------------------------------------------------------------------


def _weights(seed: int, n_hidden: int, n_features: int, spread_norms: bool = True) -> Tensor:
    """Random feature directions; with `spread_norms`, lengths between 0.3 and 1.5 so that dot and cosine differ."""
    generator = seeded_generator(seed)
    W = torch.randn(n_hidden, n_features, generator=generator)
    W = W / W.norm(dim=0, keepdim=True)
    if spread_norms:
        W = W * (0.3 + 1.2 * torch.rand(n_features, generator=generator))
    return W


def _sparse_inputs(seed: int, batch: int, n_features: int, p: float) -> Tensor:
    """Sparse inputs as the chapter draws them (through geomis, so the cases do not depend on the student's code)."""
    return reference_sparse_batch(batch, n_features, p, seeded_generator(seed))


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1.1: sparse feature batches (a statistical check: the draws cannot match the reference's exactly).
# ---------------------------------------------------------------------------------------------------------------

_BATCH_CASES: tuple[tuple[str, int, int, float], ...] = (
    ("p = 0.1", 8192, 20, 0.1),
    ("p = 0.5", 8192, 20, 0.5),
    ("dense (p = 1)", 4096, 5, 1.0),
    ("very sparse (p = 0.02)", 8192, 40, 0.02),
)


def _batch_statistics(x: Tensor) -> dict[str, float]:
    """The statistics the check compares: share present, mean and spread of present values, features per input."""
    present = x != 0
    values = x[present].double()
    return {
        "present": float(present.double().mean()),
        "mean": float(values.mean()) if values.numel() else float("nan"),
        "std": float(values.std()) if values.numel() > 1 else float("nan"),
        "row_std": float(present.double().sum(-1).std()),
    }


def check_sparse_batch(sparse_batch: StudentFunction) -> None:
    """Check `sparse_batch(batch_size, n_features, p, generator)` against geomis.toy.models.generate_batch."""
    exercise = "sparse_batch"
    cases = []
    for index, (name, batch, n_features, p) in enumerate(_BATCH_CASES):
        case = Case(name, (batch, n_features, p, seeded_generator(100 + index)))
        cases.append(case)
        x = call_student(exercise, sparse_batch, case, global_seed=1)
        if not isinstance(x, Tensor):
            raise ExerciseFailure(f"❌ {exercise} returned a {type(x).__name__} on case '{name}'; expected a tensor")
        fail = f"❌ {exercise} is wrong on case '{name}' (batch {batch}, {n_features} features, p = {p})"
        if tuple(x.shape) != (batch, n_features):
            raise ExerciseFailure(f"{fail}: the output has shape {tuple(x.shape)}, expected {(batch, n_features)} "
                                  "(one row per input, one column per feature).")
        if not x.is_floating_point():
            raise ExerciseFailure(f"{fail}: the output has dtype {x.dtype}; feature values are real numbers.")
        if bool((x < 0).any()) or bool((x > 1).any()):
            raise ExerciseFailure(f"{fail}: values range from {float(x.min()):.3g} to {float(x.max()):.3g}; a "
                                  "present feature takes a value uniform in [0, 1], an absent one is exactly 0.")
        got = _batch_statistics(x)
        want = _batch_statistics(reference_sparse_batch(batch, n_features, p, seeded_generator(900 + index)))
        if abs(got["present"] - want["present"]) > 0.01:
            swapped = abs(got["present"] - (1 - p)) < 0.01 and p != 0.5
            raise ExerciseFailure(
                f"{fail}: {got['present']:.3f} of the entries are non-zero, the reference gives "
                f"{want['present']:.3f}." + (" That is 1 - p: p is the probability that a feature is *present*, "
                                             "the sparsity S = 1 - p is the probability that it is absent."
                                             if swapped else ""))
        if abs(got["mean"] - want["mean"]) > 0.03 or abs(got["std"] - want["std"]) > 0.03:
            raise ExerciseFailure(
                f"{fail}: the non-zero values have mean {got['mean']:.3f} and standard deviation {got['std']:.3f}; "
                f"values uniform in [0, 1] give about {want['mean']:.3f} and {want['std']:.3f}. Multiply the "
                "presence mask by uniform values (torch.rand), not by ones or by normal values.")
        if abs(got["row_std"] - want["row_std"]) > 0.15 * want["row_std"] + 0.05:
            raise ExerciseFailure(
                f"{fail}: the number of present features per input has standard deviation {got['row_std']:.2f}, "
                f"the reference gives {want['row_std']:.2f}. Each feature must be present independently of the "
                "others: draw one coin per entry, not one per input.")
        again = call_student(exercise, sparse_batch, Case(name, (batch, n_features, p, seeded_generator(100 + index))),
                             global_seed=2)
        if not (isinstance(again, Tensor) and torch.equal(again, x)):
            raise ExerciseFailure(
                f"{fail}: two calls with generators seeded alike gave different batches. Draw every random "
                "number from the `generator` argument (torch.rand(..., generator=generator)), so a seed fixes "
                "the data.")
    passed(exercise, cases, "draws batches distributed like geomis' generate_batch")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1.2: the forward pass.
# ---------------------------------------------------------------------------------------------------------------


def _forward_cases() -> list[Case]:
    W = _weights(1, 5, 20)
    b = 0.1 * torch.randn(20, generator=seeded_generator(2))
    x = _sparse_inputs(3, 16, 20, 0.3)
    negative = -0.3 * torch.ones(20)
    W2 = _weights(4, 2, 5, spread_norms=False)
    return [
        Case("random weights and bias", (W, b, x)),
        Case("negative bias (the ReLU clips)", (W, negative, x)),
        Case("zero input (output = ReLU(b))", (W, b, torch.zeros(4, 20))),
        Case("one input, 5 features in 2 dims", (W2, torch.full((5,), -0.1), _sparse_inputs(5, 1, 5, 0.6))),
    ]


def check_toy_forward(toy_forward: StudentFunction) -> None:
    """Check `toy_forward(W, b, x)` = ReLU(W^T W x + b) against geomis.toy.models.ToyModel."""
    mistakes = [
        Mistake("leave out the ReLU", lambda W, b, x: x @ W.T @ W + b),
        Mistake("leave out the bias", lambda W, b, x: torch.relu(x @ W.T @ W)),
        Mistake("add the bias after the ReLU", lambda W, b, x: torch.relu(x @ W.T @ W) + b),
    ]
    check_function("toy_forward", toy_forward, reference_toy_forward, _forward_cases(), mistakes=mistakes,
                   what="matches geomis' ToyModel")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1.3: the importance-weighted loss.
# ---------------------------------------------------------------------------------------------------------------


def _loss_cases() -> list[Case]:
    x = _sparse_inputs(10, 32, 20, 0.3)
    x_hat = torch.relu(x + 0.2 * torch.randn(32, 20, generator=seeded_generator(11)))
    decay = 0.9 ** torch.arange(20, dtype=torch.float32)
    return [
        Case("importance 0.9^i", (x, x_hat, decay)),
        Case("equal importance", (x, x_hat, torch.ones(20))),
        Case("perfect reconstruction (loss 0)", (x, x.clone(), decay)),
        Case("one input, one important feature", (x[:1], x_hat[:1], torch.eye(20)[3])),
    ]


def check_importance_loss(importance_loss: StudentFunction) -> None:
    """Check `importance_loss(x, x_hat, importance)` against geomis.toy.models.importance_weighted_mse."""
    mistakes = [
        Mistake("leave out the importance weights", lambda x, x_hat, imp: ((x - x_hat) ** 2).sum(-1).mean()),
        Mistake("average over the features instead of summing them",
                lambda x, x_hat, imp: (imp * (x - x_hat) ** 2).mean()),
        Mistake("sum over the batch instead of averaging", lambda x, x_hat, imp: (imp * (x - x_hat) ** 2).sum()),
        Mistake("put the importance inside the square",
                lambda x, x_hat, imp: ((imp * (x - x_hat)) ** 2).sum(-1).mean()),
        Mistake("forget to square the error", lambda x, x_hat, imp: (imp * (x - x_hat)).sum(-1).mean()),
    ]
    check_function("importance_loss", importance_loss, reference_importance_loss, _loss_cases(),
                   mistakes=mistakes, what="matches geomis' importance_weighted_mse")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1.4: dimensions per feature.
# ---------------------------------------------------------------------------------------------------------------


def _dimension_cases() -> list[Case]:
    angles = torch.arange(5) * 2 * torch.pi / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])
    antipodal = torch.tensor([[1.0, -1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0, 0.0]])
    dropped = _weights(21, 5, 20)
    dropped[:, [4, 11]] = 0.0
    return [
        Case("random directions of different lengths", (_weights(20, 5, 20),)),
        Case("a pentagon in a plane (2/5 each)", (pentagon,)),
        Case("two antipodal pairs and a dropped feature", (antipodal,)),
        Case("two dropped features (d_j = 0)", (dropped,)),
    ]


def _cosine_dimensions(W: Tensor) -> Tensor:
    unit = W / W.norm(dim=0, keepdim=True).clamp_min(1e-8)
    return W.norm(dim=0) ** 2 / ((unit.T @ unit) ** 2).sum(-1).clamp_min(1e-8)


def check_dimensions_per_feature(dimensions_per_feature: StudentFunction) -> None:
    """Check `dimensions_per_feature(W)` against geomis.toy.models.feature_dimensionality."""
    mistakes = [
        Mistake("normalise every direction, not just d_j (sum_k cos(d_j, d_k)^2 in the denominator)",
                _cosine_dimensions),
        Mistake("forget to square the overlaps",
                lambda W: W.norm(dim=0) ** 2 / (W / W.norm(dim=0).clamp_min(1e-8)).T.matmul(W).sum(-1)),
        Mistake("leave d_j out of its own sum (only k != j in the denominator)",
                lambda W: W.norm(dim=0) ** 2 / (((W / W.norm(dim=0).clamp_min(1e-8)).T @ W) ** 2).sum(-1).sub(
                    W.norm(dim=0) ** 2).clamp_min(1e-8)),
    ]
    check_function("dimensions_per_feature", dimensions_per_feature, reference_dimensions_per_feature,
                   _dimension_cases(), mistakes=mistakes, what="matches geomis' feature_dimensionality")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2.1: one SGD step on the encoder.
# ---------------------------------------------------------------------------------------------------------------


def _sgd_cases() -> list[Case]:
    W = _weights(30, 5, 20)
    b = -0.1 * torch.rand(20, generator=seeded_generator(31))
    x = _sparse_inputs(32, 64, 20, 0.2)
    x[:, 0] = torch.rand(64, generator=seeded_generator(33))
    E = W + 0.3 * torch.randn(5, 20, generator=seeded_generator(34))
    off = b.clone()
    off[0] = -100.0
    b_half = b.clone()
    b_half[7] = -0.4
    return [
        Case("encoder = readout, target 0", (W.clone(), W, b, x, 0, 0.05)),
        Case("encoder differs from readout", (E, W, b, x, 0, 0.05)),
        Case("target off on some inputs", (W.clone(), W, b_half, x, 7, 0.5)),
        Case("target never fires (no change)", (E, W, off, x, 0, 0.05)),
    ]


def _step_mistake(mask: bool = True, sign: float = 1.0, reduce: str = "mean", direction_from: str = "W"):
    """A hand-derived SGD step with one thing changed: the mask, the sign, the batch reduction or d_t's source."""

    def step(E: Tensor, W: Tensor, b: Tensor, x: Tensor, target: int, lr: float) -> Tensor:
        d_t = (W if direction_from == "W" else E)[:, target]
        active = ((x @ E.T) @ d_t + b[target] > 0).float() if mask else torch.ones(x.shape[0])
        total = active @ x
        if reduce == "mean":
            total = total / x.shape[0]
        return E + sign * lr * torch.outer(d_t, total)

    return step


def check_encoder_sgd_step(encoder_sgd_step: StudentFunction) -> None:
    """Check `encoder_sgd_step(E, W, b, x, target, lr)` against an autograd step on geomis' amplify_loss."""
    mistakes = [
        Mistake("forget the ReLU's derivative (count inputs on which the target is off)", _step_mistake(mask=False)),
        Mistake("step uphill (add the gradient instead of subtracting it)", _step_mistake(sign=-1.0)),
        Mistake("sum over the inputs instead of averaging", _step_mistake(reduce="sum")),
        Mistake("take d_t from the encoder E instead of the frozen readout W", _step_mistake(direction_from="E")),
    ]
    check_function("encoder_sgd_step", encoder_sgd_step, reference_encoder_sgd_step, _sgd_cases(),
                   mistakes=mistakes, what="matches an SGD step on geomis' amplify_loss")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3.1: the first-order spillover prediction.
# ---------------------------------------------------------------------------------------------------------------


def _spillover_cases() -> list[Case]:
    dropped = _weights(41, 5, 20)
    dropped[:, 6] = 0.0
    return [
        Case("random directions, alpha = 0.7", (_weights(40, 5, 20), 0, 0.7)),
        Case("a dropped feature, last target", (dropped, 19, 1.3)),
        Case("negative alpha", (_weights(42, 3, 8), 2, -0.5)),
    ]


def _cosine_prediction(W: Tensor, target: int, alpha: float) -> Tensor:
    return alpha * (W.T @ W[:, target]) / (W.norm(dim=0) * W[:, target].norm()).clamp_min(1e-8)


def check_spillover_prediction(predict_spillover: StudentFunction) -> None:
    """Check `predict_spillover(W, target, alpha)` = alpha <d_j, d_t> against geomis' direction_overlaps."""
    mistakes = [
        Mistake("use the cosine cos(d_j, d_t) instead of the dot product <d_j, d_t>", _cosine_prediction),
        Mistake("forget to multiply by alpha", lambda W, target, alpha: W.T @ W[:, target]),
        Mistake("set the target's own entry to zero (it changes too, by alpha ||d_t||^2)",
                lambda W, target, alpha: (alpha * W.T @ W[:, target]).index_fill(0, torch.tensor([target]), 0.0)),
    ]
    check_function("predict_spillover", predict_spillover, reference_spillover_prediction, _spillover_cases(),
                   mistakes=mistakes, what="matches alpha * <d_j, d_t> from geomis' direction_overlaps")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3.2: the features closest to a target.
# ---------------------------------------------------------------------------------------------------------------


def _closest_cases() -> list[Case]:
    planted = _weights(51, 5, 20)
    d_t = planted[:, 0] / planted[:, 0].norm()
    planted[:, 3] = 0.2 * (0.95 * d_t + 0.31 * planted[:, 9] / planted[:, 9].norm())  # short but well aligned
    planted[:, 8] = 2.0 * (0.6 * d_t + 0.8 * planted[:, 12] / planted[:, 12].norm())  # long, less aligned
    dropped = _weights(52, 5, 20)
    dropped[:, [2, 5]] = 0.0
    return [
        Case("random directions, k = 3", (_weights(50, 5, 20), 0, 3)),
        Case("a short aligned and a long less aligned feature", (planted, 0, 2)),
        Case("dropped features, k = 5", (dropped, 7, 5)),
        Case("every other feature, k = n - 1", (_weights(53, 3, 8), 4, 7)),
    ]


def _compare_closest(got: Tensor, expected: Tensor, case: Case) -> str | None:
    """Same cosines, in the same order, as the reference's indices (ties may be broken either way)."""
    W, target, k = case.args
    if got.dim() != 1 or got.numel() != k:
        return f"expected {k} indices in a 1-D tensor, got shape {tuple(got.shape)}"
    if got.is_floating_point() or got.is_complex():
        return f"expected integer feature indices, got dtype {got.dtype} (cosines instead of indices?)"
    indices = [int(i) for i in got]
    if any(not 0 <= i < W.shape[1] for i in indices):
        return f"indices {indices} are not all feature indices in [0, {W.shape[1]})"
    if target in indices:
        return f"the list {indices} contains the target {target} itself"
    if len(set(indices)) != len(indices):
        return f"the list {indices} repeats a feature"
    _, cosine = direction_overlaps(_single_instance(W), 0, target)
    problem = compare_tensors(cosine[got.long()], cosine[expected], case, Tolerance(rtol=0.0, atol=1e-6))
    if problem is None:
        return None
    return (f"you returned {indices} with cosines {[round(float(c), 3) for c in cosine[got.long()]]}, the "
            f"closest features are {[int(i) for i in expected]} with cosines "
            f"{[round(float(c), 3) for c in cosine[expected]]}")


def check_closest_features(closest_features: StudentFunction) -> None:
    """Check `closest_features(W, target, k)` against the cosines of geomis' direction_overlaps."""

    def by_score(score: Callable[[Tensor, int], Tensor], keep_target: bool = False, largest: bool = True):
        def closest(W: Tensor, target: int, k: int) -> Tensor:
            values = score(W, target).clone()
            if not keep_target:
                values[target] = -torch.inf if largest else torch.inf
            return values.topk(k, largest=largest).indices

        return closest

    def cosine(W: Tensor, target: int) -> Tensor:
        return (W.T @ W[:, target]) / (W.norm(dim=0) * W[:, target].norm()).clamp_min(1e-8)

    mistakes = [
        Mistake("rank by the dot product <d_j, d_t> instead of the cosine", by_score(lambda W, t: W.T @ W[:, t])),
        Mistake("keep the target itself in the list", by_score(cosine, keep_target=True)),
        Mistake("rank by |cos| (a feature pointing away from the target is not close to it)",
                by_score(lambda W, t: cosine(W, t).abs())),
        Mistake("return the least similar features", by_score(cosine, largest=False)),
    ]
    check_function("closest_features", closest_features, reference_closest_features, _closest_cases(),
                   mistakes=mistakes, compare=_compare_closest, what="finds the same features as geomis' cosines")
