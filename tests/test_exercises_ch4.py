"""Chapter 4's exercise checks: each passes an independently written solution, fails plausible wrong answers and a
stub with a message that says what is wrong, and its reference agrees with the geomis code it stands for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor

import geomis.filter.baselines as baselines
from geomis.exercises import ch4
from geomis.filter.quality import RemovalQualityConfig
from geomis.filter.quality import removal_quality as quality_table

# ---------------------------------------------------------------------------------------------------------------
# Worked solutions, written without geomis.
# ---------------------------------------------------------------------------------------------------------------


def feature_closeness(W_dec: Tensor, toxic: Tensor) -> Tensor:  # noqa: N803
    out = torch.empty(W_dec.shape[0])
    for j in range(W_dec.shape[0]):
        others = [t for t in toxic.tolist() if t != j]
        out[j] = F.cosine_similarity(W_dec[j][None], W_dec[others], dim=-1).max()
    return out


def weighted_score(sample_mean: Tensor, closeness: Tensor) -> Tensor:
    total = sample_mean.sum(1)
    return torch.where(total > 0, (sample_mean * closeness).sum(1) / total, float("nan"))  # float32


def removal_quality(scores: Tensor, inducing: Tensor, budget: float) -> Tensor:
    n = len(scores)
    k = int(budget * n + 1e-9)
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    hits = sum(bool(inducing[i]) for i in order[:k])
    return torch.tensor([hits / k, hits / int(inducing.sum())])


def mean_difference_score(sample_means: Tensor, toxic_means: Tensor, neutral_means: Tensor) -> Tensor:
    direction = F.normalize(toxic_means.mean(0) - neutral_means.mean(0), dim=0)
    return torch.einsum("nd,d->n", sample_means, direction)


SOLUTIONS: dict[str, Callable[..., Any]] = {
    "check_feature_closeness": feature_closeness,
    "check_weighted_score": weighted_score,
    "check_removal_quality": removal_quality,
    "check_mean_difference_score": mean_difference_score,
}


def _not_self(W: Tensor, toxic: Tensor) -> Tensor:  # noqa: N803
    return torch.arange(W.shape[0])[:, None] != toxic[None, :]


def _cosines(W: Tensor, toxic: Tensor) -> Tensor:  # noqa: N803
    units = F.normalize(W, dim=-1)
    return units @ units[toxic].T


def _select(scores: Tensor, k: int, *, reverse_ties: bool = False, lowest: bool = False) -> Tensor:
    n = len(scores)
    sign = 1.0 if lowest else -1.0
    order = sorted(range(n), key=lambda i: (sign * float(scores[i]), -i if reverse_ties else i))
    removed = torch.zeros(n, dtype=torch.bool)
    removed[order[:k]] = True
    return removed


def _quality(removed: Tensor, inducing: Tensor) -> Tensor:
    hits = float((removed & inducing).sum())
    return torch.tensor([hits / float(removed.sum()), hits / float(inducing.sum())])


# (label, check, wrong function, phrases the message must contain)
WRONG: list[tuple[str, str, Callable[..., Any], tuple[str, ...]]] = [
    ("closeness: self-pairs", "check_feature_closeness", lambda W, t: _cosines(W, t).amax(1),
     ("random decoder, 5 toxic features", "cosine 1 with itself")),
    ("closeness: raw dot products", "check_feature_closeness",
     lambda W, t: (W @ W[t].T).where(_not_self(W, t), -torch.inf).amax(1), ("dot products of the raw rows",)),
    ("closeness: |cos|", "check_feature_closeness",
     lambda W, t: _cosines(W, t).abs().where(_not_self(W, t), -torch.inf).amax(1), ("take |cos|",)),
    ("closeness: mean cosine", "check_feature_closeness",
     lambda W, t: (_cosines(W, t) * _not_self(W, t)).sum(1) / _not_self(W, t).sum(1),
     ("random decoder, 5 toxic features", "average the cosines")),
    ("closeness: toxic rows only", "check_feature_closeness", lambda W, t: feature_closeness(W, t)[t],
     ("the output has shape",)),
    ("weighted: unweighted mean", "check_weighted_score",
     lambda a, c: ((a > 0).float() @ c) / (a > 0).sum(1), ("8 samples, sparse activations", "without weighting")),
    ("weighted: not divided", "check_weighted_score", lambda a, c: a @ c, ("without dividing",)),
    ("weighted: 0 for an empty sample", "check_weighted_score", lambda a, c: weighted_score(a, c).nan_to_num(0.0),
     ("a sample where no feature fires", "should be NaN", "0 instead of NaN")),
    ("weighted: normalised over samples", "check_weighted_score", lambda a, c: (a / a.sum(0)) @ c,
     ("8 samples, sparse activations", "(dim 0)")),
    ("weighted: one score per feature", "check_weighted_score", lambda a, c: a.sum(0) * c,
     ("the output has shape",)),
    ("removal: round", "check_removal_quality",
     lambda s, i, b: _quality(_select(s, round(b * len(s))), i), ("budget 0.35 of 10 rows", "rounding down")),
    ("removal: lowest scores", "check_removal_quality",
     lambda s, i, b: _quality(_select(s, int(b * len(s)), lowest=True), i), ("40 rows", "lowest scores")),
    ("removal: swapped", "check_removal_quality", lambda s, i, b: removal_quality(s, i, b).flip(0),
     ("budget 0.35 of 10 rows", "swap precision and recall")),
    ("removal: ties to the later row", "check_removal_quality",
     lambda s, i, b: _quality(_select(s, int(b * len(s)), reverse_ties=True), i), ("tied scores", "later row")),
    ("removal: precision only", "check_removal_quality", lambda s, i, b: removal_quality(s, i, b)[0],
     ("the output has shape",)),
    ("difference: not normalised", "check_mean_difference_score",
     lambda x, t, n: x @ (t.mean(0) - n.mean(0)), ("12 samples", "without normalising")),
    ("difference: reversed", "check_mean_difference_score", lambda x, t, n: mean_difference_score(x, n, t),
     ("neutral - toxic",)),
    ("difference: cosine", "check_mean_difference_score",
     lambda x, t, n: mean_difference_score(F.normalize(x, dim=-1), t, n), ("12 samples", "cosine")),
    ("difference: first rows", "check_mean_difference_score",
     lambda x, t, n: mean_difference_score(x, t[:1], n[:1]), ("first toxic chat",)),
    ("difference: sums, not means", "check_mean_difference_score",
     lambda x, t, n: x @ F.normalize(t.sum(0) - n.sum(0), dim=0), ("entries differ",)),
]


# ---------------------------------------------------------------------------------------------------------------
# The references stand for geomis' own code.
# ---------------------------------------------------------------------------------------------------------------


def test_the_closeness_reference_agrees_with_a_brute_force_loop() -> None:
    generator = torch.Generator().manual_seed(3)
    decoder = torch.randn(60, 12, generator=generator) * torch.exp(torch.randn(60, 1, generator=generator))
    toxic = torch.tensor([41, 5, 30, 9, 17, 58, 2])
    expected = torch.tensor([max(float(F.cosine_similarity(decoder[j], decoder[t], dim=0)) for t in toxic.tolist()
                                 if t != j) for j in range(60)])
    got = ch4.reference_feature_closeness(decoder, toxic)
    assert got.shape == (60,)
    assert torch.allclose(got.double(), expected.double(), atol=1e-6)


def test_the_closeness_cases_reach_negative_values() -> None:
    case = ch4._closeness_cases()[3]
    assert float(ch4.reference_feature_closeness(*case.args).min()) < -0.5


@pytest.mark.parametrize("budget", [0.1, 0.25, 0.35, 0.5, 0.73])
def test_the_removal_reference_is_the_point_estimate_of_filter_quality(budget: float) -> None:
    generator = torch.Generator().manual_seed(4)
    inducing = torch.rand(57, generator=generator) < 0.3
    scores = torch.round((torch.rand(57, generator=generator) + 0.4 * inducing) * 8) / 8  # many ties
    table = quality_table(scores.numpy(), inducing.numpy(), RemovalQualityConfig(budgets=(budget,), n_resamples=1))
    expected = np.array([table["precision"].iloc[0], table["recall"].iloc[0]])
    got = ch4.reference_removal_quality(scores, inducing, budget).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, removal_quality(scores, inducing, budget).double().numpy(), atol=1e-6)


def test_the_mean_difference_reference_is_the_baselines_projection(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(5)
    residuals = {"samples": torch.randn(9, 16, generator=generator),
                 "toxic": torch.randn(4, 16, generator=generator) + 0.5,
                 "neutral": torch.randn(7, 16, generator=generator)}
    monkeypatch.setattr(baselines, "mean_residuals", lambda model, conversations, layer, **_: residuals[conversations])
    expected = baselines.mean_difference_scores(None, "samples", "toxic", "neutral", 3)  # type: ignore[arg-type]
    got = ch4.reference_mean_difference_score(residuals["samples"], residuals["toxic"], residuals["neutral"])
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_weighted_score_accepts_float32_and_float64_answers(capsys: pytest.CaptureFixture[str]) -> None:
    ch4.check_weighted_score(lambda a, c: weighted_score(a, c).double())
    ch4.check_weighted_score(lambda a, c: (a.double() @ c.double()) / a.double().sum(1))  # 0 / 0 is NaN already
    assert capsys.readouterr().out.count("✅") == 2


def test_every_weighted_case_has_each_feature_firing_somewhere() -> None:
    # so that the "normalise over samples" mistake is a number, not NaN everywhere
    for case in ch4._weighted_cases():
        assert bool((case.args[0].sum(0) > 0).all()), case.name


def test_removal_quality_accepts_a_pair_of_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    ch4.check_removal_quality(lambda s, i, b: tuple(float(x) for x in removal_quality(s, i, b)))
    assert capsys.readouterr().out.startswith("✅")
