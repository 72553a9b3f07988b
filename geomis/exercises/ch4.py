"""Checks for Chapter 4's exercises: each feature's closeness to the toxic set, a sample's activation-weighted
closeness score, the precision and recall of removing the top-scored rows at a budget, and the SAE-free
difference-in-means baseline.

Each `check_*` runs the student's function next to the geomis implementation (geomis.filter's scores and selection)
on seeded cases and edge cases, then prints a line starting with ✅ or raises `ExerciseFailure` naming the case, what
differed and, when it recognises it, the mistake. Shapes follow sae-lens: ``W_dec`` is ``(d_sae, d_in)``; a feature
set is a 1-D tensor of feature indices; a sample's SAE summary is its mean code over its tokens, ``(n, d_sae)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from geomis.exercises.check import (
    Case,
    Mistake,
    Tolerance,
    check_function,
    compare_tensors,
    require_callable,
    seeded_generator,
)
from geomis.filter.scores import activation_weighted_closeness, closest_score
from geomis.filter.scores import feature_closeness as geomis_feature_closeness
from geomis.filter.selection import select_by_score

__all__ = [
    "check_feature_closeness",
    "check_weighted_score",
    "check_removal_quality",
    "check_mean_difference_score",
    "reference_feature_closeness",
    "reference_weighted_score",
    "reference_removal_quality",
    "reference_mean_difference_score",
]

StudentFunction = Callable[..., Any]


def _unit_rows(matrix: Tensor) -> Tensor:
    return matrix / matrix.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------------------------
# References.
# ---------------------------------------------------------------------------------------------------------------


def reference_feature_closeness(W_dec: Tensor, toxic: Tensor) -> Tensor:  # noqa: N803
    """(d_sae,) each feature's largest signed decoder cosine to a toxic feature other than itself."""
    return geomis_feature_closeness(W_dec, toxic, self_pairs=False)


def reference_weighted_score(sample_mean: Tensor, closeness: Tensor) -> Tensor:
    """(n,) sum_j a_j c_j / sum_j a_j per sample (a_j: mean activation); NaN for a sample where nothing fires."""
    return activation_weighted_closeness(sample_mean, closeness)


def reference_removal_quality(scores: Tensor, inducing: Tensor, budget: float) -> Tensor:
    """(precision, recall) of removing the floor(budget * n) highest-scored rows, ties to the earlier row."""
    removed = torch.from_numpy(select_by_score(scores.double().numpy(), budget).removed)
    hits = float((removed & inducing.bool()).sum())
    return torch.tensor([hits / float(removed.sum()), hits / float(inducing.bool().sum())], dtype=torch.float64)


def reference_mean_difference_score(sample_means: Tensor, toxic_means: Tensor, neutral_means: Tensor) -> Tensor:
    """(n,) each sample's mean residual projected on the unit vector along mean(toxic) - mean(neutral)."""
    direction = toxic_means.double().mean(dim=0) - neutral_means.double().mean(dim=0)
    return sample_means.double() @ (direction / direction.norm())


# ---------------------------------------------------------------------------------------------------------------
# Exercise 4.1: each feature's closeness to the toxic set.
# ---------------------------------------------------------------------------------------------------------------


def _decoder(seed: int, d_sae: int = 40, d_in: int = 10) -> Tensor:
    generator = seeded_generator(seed)
    decoder = torch.randn(d_sae, d_in, generator=generator)
    return decoder * torch.exp(torch.randn(d_sae, 1, generator=generator))  # rows of very different lengths


def _closeness_cases() -> list[Case]:
    parallel = _decoder(41)
    parallel[8] = 0.05 * parallel[20] + 0.001 * parallel[8]  # a short row almost along toxic feature 20
    antipodal = _decoder(43)
    antipodal[13] = antipodal[12] + 0.4 * antipodal[13] * antipodal[12].norm() / antipodal[13].norm()
    antipodal[5] = -2.5 * antipodal[12]  # points away from toxic feature 12 (and nearly away from 13)
    return [
        Case("random decoder, 5 toxic features", (_decoder(40), torch.tensor([3, 11, 17, 25, 32]))),
        Case("a short row almost parallel to a toxic feature", (parallel, torch.tensor([20, 21, 22, 23]))),
        Case("exactly two toxic features", (_decoder(42), torch.tensor([4, 9]))),
        Case("a feature antipodal to a toxic feature (its closeness is negative)",
             (antipodal, torch.tensor([12, 13]))),
    ]


def _toxic_cosines(W_dec: Tensor, toxic: Tensor, *, normalise: bool = True) -> Tensor:  # noqa: N803
    """(d_sae, n_toxic) cosines (or dot products) of every feature with every toxic feature; NaN on self-pairs."""
    rows = _unit_rows(W_dec) if normalise else W_dec
    values = rows @ rows[toxic].T
    return values.masked_fill(torch.arange(W_dec.shape[0])[:, None] == toxic[None, :], float("nan"))


def _closeness_mistakes() -> list[Mistake]:
    def self_pairs(W_dec, toxic):  # noqa: N803
        return geomis_feature_closeness(W_dec, toxic, self_pairs=True)

    def unnormalised(W_dec, toxic):  # noqa: N803
        return _toxic_cosines(W_dec, toxic, normalise=False).nan_to_num(nan=-torch.inf).amax(dim=1)

    def absolute(W_dec, toxic):  # noqa: N803
        return _toxic_cosines(W_dec, toxic).abs().nan_to_num(nan=-torch.inf).amax(dim=1)

    def mean_not_max(W_dec, toxic):  # noqa: N803
        return _toxic_cosines(W_dec, toxic).nanmean(dim=1)

    return [
        Mistake("let a toxic feature count its cosine 1 with itself (compare it only with the other toxic "
                "features)", self_pairs),
        Mistake("take dot products of the raw rows instead of cosines of unit rows", unnormalised),
        Mistake("take |cos| (a feature pointing away from a toxic one is not close to it)", absolute),
        Mistake("average the cosines to the toxic set instead of taking the nearest toxic feature", mean_not_max),
    ]


def check_feature_closeness(feature_closeness: StudentFunction) -> None:
    """Check `feature_closeness(W_dec, toxic)` against geomis.filter.scores.feature_closeness (no self-pairs)."""
    check_function("feature_closeness", feature_closeness, reference_feature_closeness, _closeness_cases(),
                   mistakes=_closeness_mistakes(), tolerance=Tolerance(rtol=1e-4, atol=1e-5),
                   what="matches geomis' feature_closeness")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 4.2: a sample's activation-weighted closeness.
# ---------------------------------------------------------------------------------------------------------------


def _activations(seed: int, n: int, d_sae: int, density: float = 0.25, quiet: tuple[int, ...] = ()) -> Tensor:
    """(n, d_sae) sparse non-negative mean codes; the `quiet` samples are all zero, and every feature fires in at
    least one other sample (so that no feature's total over the samples is 0)."""
    generator = seeded_generator(seed)
    values = torch.rand(n, d_sae, generator=generator) * torch.exp(torch.randn(n, d_sae, generator=generator))
    codes = torch.where(torch.rand(n, d_sae, generator=generator) < density, values, 0.0)
    codes[list(quiet)] = 0.0
    loud = torch.tensor([row for row in range(n) if row not in quiet])
    silent = torch.nonzero(codes.sum(0) == 0).flatten()
    rows = loud[silent % len(loud)]
    codes[rows, silent] = 0.05 + values[rows, silent]
    return codes


def _weighted_cases() -> list[Case]:
    closeness = 0.9 * torch.rand(30, generator=seeded_generator(50)) - 0.1
    dominated = _activations(53, 6, 30, density=0.15, quiet=(2,))
    dominated[2, 7], dominated[2, [1, 12, 20]] = 6.0, 0.02  # one strong feature, three faint ones
    return [
        Case("8 samples, sparse activations", (_activations(51, 8, 30), closeness)),
        Case("a sample where no feature fires (its score is NaN)", (_activations(52, 8, 30, quiet=(5,)), closeness)),
        Case("a sample dominated by one feature", (dominated, closeness)),
        Case("negative closeness values",
             (_activations(54, 7, 30), 2 * torch.rand(30, generator=seeded_generator(55)) - 1)),
    ]


def _compare_with_nan(got: Tensor, expected: Tensor, case: Case) -> str | None:
    """Like `compare_tensors`, with NaN expected (and required) exactly on the samples where nothing fires."""
    if tuple(got.shape) != tuple(expected.shape):
        return f"the output has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    expected_nan, got_nan = torch.isnan(expected.double()), torch.isnan(got.double())
    if not torch.equal(expected_nan, got_nan):
        missing = torch.nonzero(expected_nan & ~got_nan).flatten().tolist()
        if missing:
            value = got.double()[missing[0]].item()
            return (f"sample {missing[0]} has no active feature and got {value:.6g}; with no activation there is "
                    "nothing to average: its score should be NaN")
        return (f"NaN at samples {torch.nonzero(got_nan).flatten().tolist()}, expected NaN only where no feature "
                f"fires {torch.nonzero(expected_nan).flatten().tolist()}: is something divided by zero there?")
    return compare_tensors(got.double().nan_to_num(0.0), expected.double().nan_to_num(0.0), case,
                           Tolerance(rtol=1e-4, atol=1e-5))


def _weighted_mistakes() -> list[Mistake]:
    def unweighted(sample_mean, closeness):
        return closest_score(sample_mean, closeness)

    def not_divided(sample_mean, closeness):
        return sample_mean.double() @ closeness.double()

    def zero_for_empty(sample_mean, closeness):
        return activation_weighted_closeness(sample_mean, closeness).nan_to_num(0.0)

    def over_samples(sample_mean, closeness):
        weights = sample_mean.double() / sample_mean.double().sum(dim=0, keepdim=True)
        return weights @ closeness.double()

    return [
        Mistake("average the closeness of the active features without weighting them by their activation",
                unweighted),
        Mistake("take the weighted sum without dividing by the sample's total activation", not_divided),
        Mistake("give a sample where no feature fires 0 instead of NaN", zero_for_empty),
        Mistake("normalise each feature's activations over the samples (dim 0) instead of over the features of "
                "each sample", over_samples),
    ]


def check_weighted_score(weighted_score: StudentFunction) -> None:
    """Check `weighted_score(sample_mean, closeness)` against geomis.filter.scores.activation_weighted_closeness."""
    check_function("weighted_score", weighted_score, reference_weighted_score, _weighted_cases(),
                   mistakes=_weighted_mistakes(), compare=_compare_with_nan, mistake_compare=_compare_with_nan,
                   what="matches geomis' activation_weighted_closeness")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 4.3: precision and recall of removing the top-scored rows.
# ---------------------------------------------------------------------------------------------------------------


def _removal_cases() -> list[Case]:
    generator = seeded_generator(60)
    half = torch.arange(40) % 2 == 0
    random_scores = torch.randn(40, generator=generator) + 0.8 * half
    fraction = torch.tensor([0.9, 0.1, 0.8, 0.7, 0.2, 0.6, 0.3, 0.4, 0.5, 0.05])
    fraction_inducing = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1, 0, 0]).bool()
    tied = torch.tensor([0.2, 0.9, 0.5, 0.1, 0.5, 0.8, 0.0, 0.5, 0.3, 0.4, 0.1, 0.2])  # 3 rows of 0.5 at the cut
    tied_inducing = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0]).bool()
    few = torch.rand(30, generator=generator)
    few_inducing = torch.zeros(30, dtype=torch.bool)
    few_inducing[[2, 11, 19, 26]] = True
    few[[11, 26]] += 0.5
    return [
        Case("40 rows, half inducing, budget 0.5", (random_scores, half, 0.5)),
        Case("budget 0.35 of 10 rows (3.5 rows: remove 3)", (fraction, fraction_inducing, 0.35)),
        Case("tied scores at the cut", (tied, tied_inducing, 0.25)),
        Case("budget 0.1 of 30 rows, 4 inducing", (few, few_inducing, 0.1)),
    ]


def _precision_recall(removed: Tensor, inducing: Tensor) -> Tensor:
    hits = float((removed & inducing.bool()).sum())
    return torch.tensor([hits / float(removed.sum()), hits / float(inducing.bool().sum())], dtype=torch.float64)


def _remove(scores: Tensor, count: int, *, lowest: bool = False, later_first: bool = False) -> Tensor:
    """Bool mask of the `count` highest (or lowest) scores, ties to the earlier (or later) row."""
    values = -scores.double() if lowest else scores.double()
    if later_first:
        order = len(values) - 1 - torch.argsort(values.flip(0), descending=True, stable=True)
    else:
        order = torch.argsort(values, descending=True, stable=True)
    removed = torch.zeros(len(values), dtype=torch.bool)
    removed[order[:count]] = True
    return removed


def _removal_mistakes() -> list[Mistake]:
    def rounded(scores, inducing, budget):
        return _precision_recall(_remove(scores, round(budget * len(scores))), inducing)

    def lowest(scores, inducing, budget):
        return _precision_recall(_remove(scores, math.floor(budget * len(scores)), lowest=True), inducing)

    def swapped(scores, inducing, budget):
        return reference_removal_quality(scores, inducing, budget).flip(0)

    def later_first(scores, inducing, budget):
        return _precision_recall(_remove(scores, math.floor(budget * len(scores)), later_first=True), inducing)

    return [
        Mistake("round budget * n to the nearest whole row instead of rounding down (never remove more than the "
                "budget)", rounded),
        Mistake("remove the rows with the lowest scores (a higher score means closer to toxic)", lowest),
        Mistake("swap precision and recall (return precision first)", swapped),
        Mistake("break ties towards the later row (the earlier row is removed first)", later_first),
    ]


def _pair(value: Any) -> Any:
    """A (precision, recall) pair as a float64 tensor; anything else is passed on for the comparison to reject."""
    if isinstance(value, Tensor):
        return value.double()
    if isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            return torch.tensor([float(value[0]), float(value[1])], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def check_removal_quality(removal_quality: StudentFunction) -> None:
    """Check `removal_quality(scores, inducing, budget)` = (precision, recall) against geomis.filter.selection's
    select_by_score."""
    require_callable(removal_quality)  # the wrapper below would hide a missing function
    check_function("removal_quality", lambda s, i, b: _pair(removal_quality(s, i, b)), reference_removal_quality,
                   _removal_cases(), mistakes=_removal_mistakes(), tolerance=Tolerance(rtol=1e-6, atol=1e-6),
                   what="matches geomis' select_by_score")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 4.4: the difference-in-means baseline.
# ---------------------------------------------------------------------------------------------------------------


def _residuals(seed: int, n: int, d_model: int = 16, shift: float = 0.0) -> Tensor:
    generator = seeded_generator(seed)
    return torch.randn(n, d_model, generator=generator) + shift


def _difference_cases() -> list[Case]:
    offset = torch.linspace(-1.0, 1.0, 16)  # a common offset, as residual streams have
    toxic, neutral = _residuals(70, 4, shift=0.7) + offset, _residuals(71, 6) + offset
    axis_neutral = _residuals(73, 5) + offset
    axis_toxic = _residuals(74, 3) + offset
    along = torch.zeros(16)
    along[3] = 2.5
    axis_toxic = axis_toxic - axis_toxic.mean(0) + axis_neutral.mean(0) + along  # the means differ along axis 3 only
    scales = torch.exp(2 * torch.randn(10, 1, generator=seeded_generator(76)))
    return [
        Case("12 samples, 4 toxic and 6 neutral chats", (_residuals(72, 12) + offset, toxic, neutral)),
        Case("toxic and neutral means that differ along one axis only",
             (_residuals(75, 9) + offset, axis_toxic, axis_neutral)),
        Case("samples of very different norms", (scales * (_residuals(77, 10) + offset), toxic, neutral)),
    ]


def _difference_mistakes() -> list[Mistake]:
    def unnormalised(sample_means, toxic_means, neutral_means):
        return sample_means.double() @ (toxic_means.double().mean(0) - neutral_means.double().mean(0))

    def reversed_direction(sample_means, toxic_means, neutral_means):
        return -reference_mean_difference_score(sample_means, toxic_means, neutral_means)

    def cosine(sample_means, toxic_means, neutral_means):
        return reference_mean_difference_score(_unit_rows(sample_means.double()), toxic_means, neutral_means)

    def first_rows(sample_means, toxic_means, neutral_means):
        return reference_mean_difference_score(sample_means, toxic_means[:1], neutral_means[:1])

    return [
        Mistake("project on the difference of the means without normalising it to unit length", unnormalised),
        Mistake("use neutral - toxic (the direction must point towards the toxic chats)", reversed_direction),
        Mistake("take the cosine with the direction (normalising each sample) instead of the projection", cosine),
        Mistake("take the first toxic chat minus the first neutral chat instead of the means of all of them",
                first_rows),
    ]


def check_mean_difference_score(mean_difference_score: StudentFunction) -> None:
    """Check `mean_difference_score(sample_means, toxic_means, neutral_means)` against the difference-in-means
    projection of geomis.filter.baselines."""
    check_function("mean_difference_score", mean_difference_score, reference_mean_difference_score,
                   _difference_cases(), mistakes=_difference_mistakes(), tolerance=Tolerance(rtol=1e-4, atol=1e-4),
                   what="matches the difference-in-means projection")
