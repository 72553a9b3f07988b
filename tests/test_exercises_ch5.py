"""Chapter 5's exercise checks: each passes an independently written solution, fails plausible wrong answers and a
stub with a message that says what is wrong, and its reference agrees with the geomis code it stands for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import stats as scipy_stats
from torch import Tensor

from geomis.exercises import ExerciseFailure, ch5
from geomis.experiments import mechanism


def _spearman(x: Any, y: Any) -> float:
    result: Any = scipy_stats.spearmanr(x, y)
    return float(result.statistic)


# ---------------------------------------------------------------------------------------------------------------
# Worked solutions, written without geomis.
# ---------------------------------------------------------------------------------------------------------------


def target_direction(W_dec: Tensor, features: Tensor) -> Tensor:  # noqa: N803
    return F.normalize(W_dec[features], dim=-1).mean(dim=0)


def spillover_prediction(W_enc: Tensor, direction: Tensor) -> Tensor:  # noqa: N803
    return torch.einsum("df,d->f", W_enc, direction)


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks, ties sharing the mean of the ranks they span."""
    below = (values[None, :] < values[:, None]).sum(1).double()
    equal = (values[None, :] == values[:, None]).sum(1).double()
    return below + (equal + 1) / 2


def _correlation(a: Tensor, b: Tensor) -> Tensor:
    a, b = a - a.mean(-1, keepdim=True), b - b.mean()
    return (a @ b) / (a.norm(dim=-1) * b.norm())


def spearman_p(prediction: Tensor, shift: Tensor, n_permutations: int, generator: torch.Generator
               ) -> tuple[float, float]:
    x, y = _average_ranks(prediction.double()), _average_ranks(shift.double())
    rho = float(_correlation(x, y))
    shuffled = torch.stack([x[torch.randperm(len(x), generator=generator)] for _ in range(n_permutations)])
    at_least = int((_correlation(shuffled, y) >= rho - 1e-12).sum())
    return rho, (1 + at_least) / (1 + n_permutations)


def cosine_placement(W_dec: Tensor, direction: Tensor, features: Tensor, n_random: int,  # noqa: N803
                     generator: torch.Generator) -> float:
    cosines = F.cosine_similarity(W_dec.double(), direction.double()[None], dim=-1)
    observed = cosines[features].mean()
    random = torch.stack([cosines[torch.randperm(len(cosines), generator=generator)[:len(features)]].mean()
                          for _ in range(n_random)])
    return float((1 + (random >= observed).sum()) / (1 + n_random))


SOLUTIONS: dict[str, Callable[..., Any]] = {
    "check_target_direction": target_direction,
    "check_spillover_prediction": spillover_prediction,
    "check_spearman_p": spearman_p,
    "check_cosine_placement": cosine_placement,
}

# ---------------------------------------------------------------------------------------------------------------
# Wrong answers.
# ---------------------------------------------------------------------------------------------------------------


def _pearson_p(prediction, shift, n, generator):
    x, y = prediction.double(), shift.double()
    r = float(_correlation(x, y))
    shuffled = torch.stack([x[torch.randperm(len(x), generator=generator)] for _ in range(n)])
    return r, (1 + int((_correlation(shuffled, y) >= r - 1e-12).sum())) / (1 + n)


def _ordinal_ranks(prediction, shift, n, generator):
    return spearman_p(prediction.argsort().argsort(), shift.argsort().argsort(), n, generator)


def _two_sided(prediction, shift, n, generator):
    x, y = _average_ranks(prediction.double()), _average_ranks(shift.double())
    rho = float(_correlation(x, y))
    shuffled = torch.stack([x[torch.randperm(len(x), generator=generator)] for _ in range(n)])
    return rho, (1 + int((_correlation(shuffled, y).abs() >= abs(rho) - 1e-12).sum())) / (1 + n)


def _doubled(prediction, shift, n, generator):
    rho, p = spearman_p(prediction, shift, n, generator)
    return rho, min(1.0, 2 * min(p, 1 - p + 1 / (1 + n)))


def _lower_tail(prediction, shift, n, generator):
    rho, p = spearman_p(-prediction, shift, n, generator)
    return -rho, p


def _no_plus_ones(prediction, shift, n, generator):
    rho, p = spearman_p(prediction, shift, n, generator)
    return rho, round(p * (1 + n) - 1) / n


def _global_rng(prediction, shift, n, generator):
    return spearman_p(prediction, shift, n, torch.Generator().manual_seed(int(torch.randint(1000, (1,)))))


def _placement(statistic: Callable[[Tensor], Tensor], d_sae: int, features: Tensor, n: int,
               generator: torch.Generator, *, plus_one: int = 1, lower: bool = False) -> float:
    observed = statistic(features)
    random = torch.stack([statistic(torch.randperm(d_sae, generator=generator)[:len(features)]) for _ in range(n)])
    count = int((random <= observed).sum()) if lower else int((random >= observed).sum())
    return (plus_one + count) / (plus_one + n)


def _cosines(W_dec: Tensor, direction: Tensor) -> Tensor:  # noqa: N803
    return F.cosine_similarity(W_dec.double(), direction.double()[None], dim=-1)


def _dots(W, d, f, n, g):  # noqa: N803
    values = W.double() @ d.double()
    return _placement(lambda s: values[s].mean(), W.shape[0], f, n, g)


def _mean_row(W, d, f, n, g):  # noqa: N803
    units = F.normalize(W.double(), dim=-1)
    return _placement(lambda s: F.cosine_similarity(units[s].mean(0), d.double(), dim=0), W.shape[0], f, n, g)


def _absolute(W, d, f, n, g):  # noqa: N803
    values = _cosines(W, d).abs()
    return _placement(lambda s: values[s].mean(), W.shape[0], f, n, g)


def _placement_no_plus_ones(W, d, f, n, g):  # noqa: N803
    values = _cosines(W, d)
    return _placement(lambda s: values[s].mean(), W.shape[0], f, n, g, plus_one=0)


def _placement_lower(W, d, f, n, g):  # noqa: N803
    values = _cosines(W, d)
    return _placement(lambda s: values[s].mean(), W.shape[0], f, n, g, lower=True)


def _placement_global(W, d, f, n, g):  # noqa: N803
    return cosine_placement(W, d, f, n, torch.Generator().manual_seed(int(torch.randint(1000, (1,)))))


# (label, check, wrong function, phrases the message must contain)
WRONG: list[tuple[str, str, Callable[..., Any], tuple[str, ...]]] = [
    ("direction: raw rows", "check_target_direction", lambda W, f: W[f].mean(0),
     ("rows of very different lengths", "without normalising them")),
    ("direction: normalised mean", "check_target_direction", lambda W, f: F.normalize(W[f].mean(0), dim=0),
     ("normalise the mean of the raw rows",)),
    ("direction: sum", "check_target_direction", lambda W, f: F.normalize(W[f], dim=-1).sum(0),
     ("sum the unit rows",)),
    ("direction: columns normalised", "check_target_direction", lambda W, f: F.normalize(W[f], dim=0).mean(0),
     ("dim 0",)),
    ("direction: unit mean", "check_target_direction",
     lambda W, f: F.normalize(F.normalize(W[f], dim=-1).mean(0), dim=0), ("plain mean",)),
    ("direction: averaged over the wrong axis", "check_target_direction",
     lambda W, f: F.normalize(W[f], dim=-1).mean(1), ("the output has shape (6,), expected (12,)",)),
    ("prediction: W_enc @ direction", "check_spillover_prediction", lambda W, d: W @ d,
     ("raised RuntimeError", "d_model 12, d_sae 40", "direction @ W_enc, one number per feature")),
    ("prediction: direction @ W_enc.T", "check_spillover_prediction", lambda W, d: d @ W.T,
     ("raised RuntimeError", "feature j reads the column W_enc[:, j]")),
    ("prediction: unit direction", "check_spillover_prediction", lambda W, d: F.normalize(d, dim=0) @ W,
     ("normalise the direction",)),
    ("prediction: cosines", "check_spillover_prediction", lambda W, d: d @ F.normalize(W, dim=0),
     ("cosines with unit encoder columns",)),
    ("prediction: ReLU", "check_spillover_prediction", lambda W, d: (d @ W).relu(), ("ReLU",)),
    ("prediction: summed over the features", "check_spillover_prediction", lambda W, d: (W * d[:, None]).sum(1),
     ("the output has shape (12,), expected (40,)", "sum over dim 1")),
    ("prediction: one number per model dimension", "check_spillover_prediction", lambda W, d: W.sum(1) + d,
     ("the output has shape (12,), expected (40,)", "shape (d_sae,)")),
    ("spearman: Pearson", "check_spearman_p", _pearson_p,
     ("a monotone, curved relation", "Pearson's r, not Spearman's rho")),
    ("spearman: ordinal ranks", "check_spearman_p", _ordinal_ranks, ("ties at 0", "average rank")),
    ("spearman: two-sided", "check_spearman_p", _two_sided, ("hardly any relation", "two-sided")),
    ("spearman: doubled smaller tail", "check_spearman_p", _doubled, ("hardly any relation", "two-sided")),
    ("spearman: lower tail", "check_spearman_p", _lower_tail, ("at most as large",)),
    ("spearman: no +1s", "check_spearman_p", _no_plus_ones, ("is not in (0, 1]", "(1 + #")),
    ("spearman: (p, rho)", "check_spearman_p", lambda x, y, n, g: spearman_p(x, y, n, g)[::-1],
     ("(rho, p) in that order",)),
    ("spearman: global generator", "check_spearman_p", _global_rng, ("seeded alike",)),
    ("spearman: rho only", "check_spearman_p", lambda x, y, n, g: spearman_p(x, y, n, g)[0],
     ("return two numbers (rho, p)",)),
    ("placement: dot products", "check_cosine_placement", _dots,
     ("short rows", "dot products of the raw decoder rows")),
    ("placement: cosine of the mean row", "check_cosine_placement", _mean_row,
     ("agree with one another", "cosine of the set's mean unit row")),
    ("placement: |cos|", "check_cosine_placement", _absolute, ("take |cos|",)),
    ("placement: no +1s", "check_cosine_placement", _placement_no_plus_ones, ("is not in (0, 1]", "(1 + #")),
    ("placement: lower tail", "check_cosine_placement", _placement_lower, ("at most the observed",)),
    ("placement: global generator", "check_cosine_placement", _placement_global, ("seeded alike",)),
    ("placement: the observed mean cosine", "check_cosine_placement",
     lambda W, d, f, n, g: float(_cosines(W, d)[f].mean()), ("short rows", "placing the mean cosine")),
]

# ---------------------------------------------------------------------------------------------------------------
# The references stand for geomis' own code.
# ---------------------------------------------------------------------------------------------------------------


def test_the_target_direction_reference_is_the_mean_unit_row() -> None:
    for case in ch5._direction_cases():
        W_dec, features = case.args  # noqa: N806
        expected = torch.stack([W_dec[j].double() / W_dec[j].double().norm() for j in features.tolist()]).mean(0)
        torch.testing.assert_close(ch5.reference_target_direction(W_dec, features).double(), expected,
                                   rtol=1e-5, atol=1e-6)


def test_the_prediction_reference_reads_each_encoder_column() -> None:
    for case in ch5._prediction_cases():
        W_enc, direction = case.args  # noqa: N806
        expected = torch.tensor([float(W_enc[:, j].double() @ direction.double()) for j in range(W_enc.shape[1])],
                                dtype=torch.float64)
        torch.testing.assert_close(ch5.reference_spillover_prediction(W_enc, direction).double(), expected,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", range(len(ch5._spearman_cases())))
def test_the_spearman_reference_agrees_with_the_mechanism_test(index: int) -> None:
    prediction, shift, n, _ = ch5._spearman_cases()[index].args
    base = torch.full((3, len(shift)), 10.0)  # every feature fires, so every feature is counted
    result = mechanism.spillover_test(prediction, base, base + shift, n_resamples=2, n_permutations=n, seed=index)
    rho, p = ch5.reference_spearman_p(prediction, shift, n, torch.Generator().manual_seed(index)).tolist()
    assert rho == pytest.approx(_spearman(prediction.numpy(), shift.numpy()), abs=1e-12)
    assert rho == pytest.approx(result.rho, abs=1e-5)  # float32 codes
    assert abs(p - result.p_shuffled) <= ch5._slack(p, n)


def test_the_placement_reference_is_direction_cosines_p() -> None:
    W_dec, direction, features, n, _ = ch5._placement_cases()[1].args  # noqa: N806
    generator = torch.Generator().manual_seed(5)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(5)))
    expected = mechanism.direction_cosines(W_dec, direction, {"s": features}, n_random=n, seed=seed)["s"]["p_greater"]
    assert float(ch5.reference_cosine_placement(W_dec, direction, features, n, generator)) == expected


# ---------------------------------------------------------------------------------------------------------------
# The cases make the mistakes visible.
# ---------------------------------------------------------------------------------------------------------------


def test_the_spearman_cases_separate_the_mistakes() -> None:
    cases = ch5._spearman_cases()
    curved_x, curved_y = cases[0].args[:2]
    assert _spearman(curved_x, curved_y) - float(np.corrcoef(curved_x, curved_y)[0, 1]) \
        > 0.2
    tied_x, tied_y = cases[3].args[:2]
    assert ch5._has_ties(tied_x) and ch5._has_ties(tied_y)
    assert not any(ch5._has_ties(*case.args[:2]) for index, case in enumerate(cases) if index != 3)
    assert float(ch5.reference_spearman_p(*cases[2].args)[1]) > 0.99  # the negative case: one-sided p near 1


def test_the_placement_cases_separate_the_mistakes() -> None:
    p = [float(ch5.reference_cosine_placement(*case.args)) for case in ch5._placement_cases()]
    assert p[0] < 0.005 and p[1] < 0.01 and p[2] > 0.99 and 0.05 < p[3] < 0.5


# ---------------------------------------------------------------------------------------------------------------
# Other correct answers pass; the messages are one line.
# ---------------------------------------------------------------------------------------------------------------


def test_correct_answers_in_other_forms_pass(capsys: pytest.CaptureFixture[str]) -> None:
    ch5.check_target_direction(lambda W, f: target_direction(W.double(), f))
    ch5.check_spillover_prediction(lambda W, d: W.T.double() @ d.double())
    ch5.check_spearman_p(lambda x, y, n, g: torch.tensor(spearman_p(x, y, n, g)))
    ch5.check_spearman_p(lambda x, y, n, g: [np.float64(v) for v in spearman_p(x, y, n, g)])
    ch5.check_cosine_placement(lambda W, d, f, n, g: torch.tensor(cosine_placement(W, d, f, n, g)))
    assert capsys.readouterr().out.count("✅ passed") == 5


def _with_replacement(W_dec: Tensor, direction: Tensor, features: Tensor, n: int,  # noqa: N803
                      generator: torch.Generator) -> float:
    cosines = _cosines(W_dec, direction)
    random = cosines[torch.randint(0, len(cosines), (n, len(features)), generator=generator)].mean(1)
    return float((1 + (random >= cosines[features].mean()).sum()) / (1 + n))


def test_placement_draws_with_replacement_pass_within_noise(capsys: pytest.CaptureFixture[str]) -> None:
    ch5.check_cosine_placement(_with_replacement)
    assert capsys.readouterr().out.startswith("✅ passed")


def test_a_spearman_answer_from_scipy_passes(capsys: pytest.CaptureFixture[str]) -> None:
    def with_scipy(x: Tensor, y: Tensor, n: int, generator: torch.Generator) -> tuple[float, float]:
        rho = _spearman(x.numpy(), y.numpy())
        rx, ry = scipy_stats.rankdata(x.numpy()), scipy_stats.rankdata(y.numpy())
        null = [np.corrcoef(rx[torch.randperm(len(x), generator=generator).numpy()], ry)[0, 1] for _ in range(n)]
        return rho, (1 + sum(value >= rho - 1e-12 for value in null)) / (1 + n)

    ch5.check_spearman_p(with_scipy)
    assert capsys.readouterr().out.startswith("✅ passed")


def test_a_shape_error_names_the_sae_lens_layout() -> None:
    with pytest.raises(ExerciseFailure) as failure:
        ch5.check_spillover_prediction(lambda W, d: W @ d)
    message = str(failure.value)
    assert "\n" not in message and "(d_model, d_sae)" in message
