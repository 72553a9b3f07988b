"""Checks for Chapter 5's exercises: the target direction of a feature set, the spillover law's prediction for every
feature, the Spearman correlation of a prediction with measured shifts with its feature-permutation p, and where a
feature set's mean cosine with a direction falls among random feature sets.

Each `check_*` runs the student's function next to the geomis implementation (geomis.experiments.mechanism) on
seeded cases and edge cases, then prints a line starting with ✅ or raises `ExerciseFailure` naming the case, what
differed and, when it recognises it, the mistake. The two resampling exercises cannot match the reference draw for
draw: their p-values are compared with a Monte-Carlo tolerance, as in Chapter 3. Shapes follow sae-lens: ``W_enc``
is ``(d_model, d_sae)``, ``W_dec`` is ``(d_sae, d_model)``; a feature set is a 1-D tensor of feature indices.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from scipy import stats as scipy_stats
from torch import Tensor

from geomis.exercises.check import (
    Case,
    ExerciseFailure,
    Mistake,
    Tolerance,
    call_student,
    check_function,
    describe_args,
    passed,
    require_callable,
    seeded_generator,
)
from geomis.experiments.mechanism import direction_cosines, spillover_prediction, target_direction

__all__ = [
    "check_target_direction",
    "check_spillover_prediction",
    "check_spearman_p",
    "check_cosine_placement",
    "reference_target_direction",
    "reference_spillover_prediction",
    "reference_spearman_p",
    "reference_cosine_placement",
]

StudentFunction = Callable[..., Any]
N_RESAMPLES = 2000
"""Permutations (or random feature sets) each resampling case asks for."""
RHO_TOLERANCE = 1e-5
"""How far the student's Spearman rho may be from scipy's (rounding only)."""


def _seed_from(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0


def _unit_rows(matrix: Tensor) -> Tensor:
    return matrix / matrix.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _slack(p: float, n: int) -> float:
    """Allowed distance between two Monte-Carlo p-values of ``n`` draws each (4 standard errors, plus 0.01)."""
    return 4 * math.sqrt(max(p * (1 - p), 1e-4) / n) + 0.01


# ---------------------------------------------------------------------------------------------------------------
# References.
# ---------------------------------------------------------------------------------------------------------------


def reference_target_direction(W_dec: Tensor, features: Tensor) -> Tensor:  # noqa: N803
    """(d_model,) the mean of the features' unit decoder rows, as geomis.experiments.mechanism.target_direction."""
    return target_direction(W_dec, features)


def reference_spillover_prediction(W_enc: Tensor, direction: Tensor) -> Tensor:  # noqa: N803
    """(d_sae,) ``direction @ W_enc``: each feature's first-order pre-activation change per unit step along it."""
    return spillover_prediction(W_enc, direction)


def _centred_ranks(values: Tensor) -> Tensor:
    ranks = torch.from_numpy(scipy_stats.rankdata(values.double().numpy()))
    return ranks - ranks.mean()


def _permutations(n: int, count: int, generator: torch.Generator | None) -> Tensor:
    """(count, n) random permutations of range(n), drawn with ``generator``."""
    return torch.argsort(torch.rand(count, n, generator=generator, dtype=torch.float64), dim=1)


def reference_spearman_p(prediction: Tensor, shift: Tensor, n_permutations: int = N_RESAMPLES,
                         generator: torch.Generator | None = None) -> Tensor:
    """(rho, p): Spearman's rho (average ranks for ties) and the one-sided p of permuting the prediction."""
    result: Any = scipy_stats.spearmanr(prediction.double().numpy(), shift.double().numpy())
    x, y = _centred_ranks(prediction), _centred_ranks(shift)
    observed = float(x @ y)  # Spearman's numerator: its denominator does not change under permutations
    null = x[_permutations(len(x), n_permutations, generator)] @ y
    p = (1 + int((null >= observed - 1e-9).sum())) / (1 + n_permutations)
    return torch.tensor([float(result.statistic), p], dtype=torch.float64)


def reference_cosine_placement(W_dec: Tensor, direction: Tensor, features: Tensor,  # noqa: N803
                               n_random: int = N_RESAMPLES, generator: torch.Generator | None = None) -> Tensor:
    """One-sided p of the features' mean cosine with ``direction`` among random sets, as mechanism.direction_cosines."""
    placed = direction_cosines(W_dec, direction, {"set": features}, n_random=n_random, seed=_seed_from(generator))
    return torch.tensor(placed["set"]["p_greater"], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Exercise 5.1: the target direction.
# ---------------------------------------------------------------------------------------------------------------


def _decoder(seed: int, d_sae: int = 40, d_model: int = 12) -> Tensor:
    generator = seeded_generator(seed)
    decoder = torch.randn(d_sae, d_model, generator=generator)
    return decoder * torch.exp(torch.randn(d_sae, 1, generator=generator))  # rows of very different lengths


def _direction_cases() -> list[Case]:
    opposite = _decoder(11)
    opposite[7] = -3.0 * opposite[30]  # unit rows 7 and 30 cancel
    small = _decoder(12, d_sae=6, d_model=10)
    return [
        Case("rows of very different lengths, 6 features", (_decoder(10), torch.tensor([2, 9, 14, 21, 33, 38]))),
        Case("a single feature (d_t is its unit row)", (_decoder(13), torch.tensor([17]))),
        Case("two features pointing in opposite directions (d_t is 0)", (opposite, torch.tensor([7, 30]))),
        Case("every feature of an SAE with fewer features than dimensions", (small, torch.arange(6))),
        Case("features listed out of order", (_decoder(14), torch.tensor([31, 4, 18, 0, 25, 12, 39, 7]))),
    ]


def _direction_mistakes() -> list[Mistake]:
    def raw_rows(W_dec, features):  # noqa: N803
        return W_dec.double()[features].mean(dim=0)

    def normalised_mean(W_dec, features):  # noqa: N803
        mean = W_dec.double()[features].mean(dim=0)
        return mean / mean.norm()

    def summed(W_dec, features):  # noqa: N803
        return _unit_rows(W_dec.double()[features]).sum(dim=0)

    def columns(W_dec, features):  # noqa: N803
        rows = W_dec.double()[features]
        return (rows / rows.norm(dim=0, keepdim=True)).mean(dim=0)

    def unit_mean(W_dec, features):  # noqa: N803
        mean = _unit_rows(W_dec.double()[features]).mean(dim=0)
        return mean / mean.norm()

    return [
        Mistake("average the raw decoder rows without normalising them (long rows would outvote short ones)",
                raw_rows),
        Mistake("normalise the mean of the raw rows instead of normalising each row before averaging",
                normalised_mean),
        Mistake("sum the unit rows instead of averaging them", summed),
        Mistake("normalise over dim 0 (the columns) instead of scaling each row to unit length (dim=-1)", columns),
        Mistake("scale the mean of the unit rows to unit length as well (d_t is their plain mean: its length says "
                "how much the rows agree)", unit_mean),
    ]


def check_target_direction(target_direction: StudentFunction) -> None:
    """Check `target_direction(W_dec, features)` against geomis.experiments.mechanism.target_direction."""
    check_function("target_direction", target_direction, reference_target_direction, _direction_cases(),
                   mistakes=_direction_mistakes(), tolerance=Tolerance(rtol=1e-4, atol=1e-5),
                   what="matches geomis' target_direction")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 5.2: the spillover law's prediction.
# ---------------------------------------------------------------------------------------------------------------


def _encoder(seed: int, d_model: int = 12, d_sae: int = 40) -> Tensor:
    generator = seeded_generator(seed)
    encoder = torch.randn(d_model, d_sae, generator=generator)
    return encoder * torch.exp(torch.randn(1, d_sae, generator=generator))  # columns of very different lengths


def _prediction_cases() -> list[Case]:
    along = torch.zeros(12)
    along[5] = 0.3
    return [
        Case("d_model 12, d_sae 40, a target direction of length < 1",
             (_encoder(20), target_direction(_decoder(21), torch.tensor([1, 6, 8, 19, 27])))),
        Case("a square encoder (d_model = d_sae = 16)",
             (_encoder(22, d_model=16, d_sae=16), target_direction(_decoder(23, d_model=16), torch.tensor([3, 4])))),
        Case("a direction along one axis (0.3 times unit vector 5)", (_encoder(24), along)),
        Case("the zero direction (no step, no change)", (_encoder(25), torch.zeros(12))),
    ]


def _prediction_mistakes() -> list[Mistake]:
    def rows(W_enc, direction):  # noqa: N803
        return W_enc.double() @ direction.double()

    def unit_direction(W_enc, direction):  # noqa: N803
        return (direction.double() / direction.double().norm()) @ W_enc.double()

    def cosines(W_enc, direction):  # noqa: N803
        return direction.double() @ (W_enc.double() / W_enc.double().norm(dim=0, keepdim=True))

    def relu(W_enc, direction):  # noqa: N803
        return (direction.double() @ W_enc.double()).relu()

    def wrong_sum(W_enc, direction):  # noqa: N803
        return (W_enc.double() * direction.double()[:, None]).sum(dim=1)

    return [
        Mistake("multiply W_enc @ direction (W_enc is (d_model, d_sae): feature j reads the column W_enc[:, j], so "
                "the prediction is direction @ W_enc)", rows),
        Mistake("normalise the direction to unit length (the law scales with the step's length)", unit_direction),
        Mistake("take cosines with unit encoder columns instead of the dot products <W_enc[:, j], d_t>", cosines),
        Mistake("pass the result through a ReLU (the law is about pre-activations, which can fall)", relu),
        Mistake("sum over dim 1 (the features) instead of over the model dimensions (dim 0)", wrong_sum),
    ]


SHAPE_HINT = (" W_enc is (d_model, d_sae) as in sae-lens and feature j reads the column W_enc[:, j]: the prediction "
              "is direction @ W_enc, one number per feature, shape (d_sae,).")


def check_spillover_prediction(spillover_prediction: StudentFunction) -> None:
    """Check `spillover_prediction(W_enc, direction)` against geomis.experiments.mechanism.spillover_prediction."""
    try:
        check_function("spillover_prediction", spillover_prediction, reference_spillover_prediction,
                       _prediction_cases(), mistakes=_prediction_mistakes(), tolerance=Tolerance(rtol=1e-4, atol=1e-5),
                       what="matches geomis' spillover_prediction")
    except ExerciseFailure as failure:
        cause, message = failure.__cause__, str(failure)
        shape_error = isinstance(cause, (RuntimeError, IndexError, ValueError)) and any(
            word in str(cause) for word in ("shape", "size", "dimension", "mismatch"))
        if (shape_error or "the output has shape" in message) and "Your output is" not in message:
            message = message.replace("\n", " ")
            raise ExerciseFailure(message + ("" if message.endswith(".") else ".") + SHAPE_HINT) from cause
        raise


# ---------------------------------------------------------------------------------------------------------------
# Exercise 5.3: Spearman's rho and its feature-permutation p.
# ---------------------------------------------------------------------------------------------------------------


def _spearman_inputs() -> list[tuple[str, Tensor, Tensor]]:
    generator = seeded_generator(30)
    curved_x = torch.randn(80, generator=generator)
    curved_y = torch.exp(2.5 * curved_x) + 0.3 * torch.randn(80, generator=generator)
    weak_x = torch.randn(120, generator=generator)
    weak_y = 0.09 * weak_x + torch.randn(120, generator=generator)
    against_x = torch.randn(60, generator=generator)
    against_y = -against_x + 0.8 * torch.randn(60, generator=generator)
    tied_x = torch.round(torch.randn(100, generator=generator) * 4) / 4  # a few distinct values
    moved = torch.rand(100, generator=generator) < 0.35
    tied_y = torch.where(moved, 0.5 * tied_x + torch.randn(100, generator=generator), 0.0)  # most did not move
    few_x = torch.tensor([0.3, -1.2, 0.8, 2.1, -0.4, 0.0, 1.5, -2.0])
    few_y = torch.tensor([0.5, -0.1, 0.2, 3.0, 0.4, -0.6, 0.9, -0.3])
    return [("a monotone, curved relation with outliers", curved_x, curved_y),
            ("hardly any relation (p near 0.5)", weak_x, weak_y),
            ("the prediction runs against the shift (negative rho)", against_x, against_y),
            ("many features that did not move (ties at 0) and a prediction with ties", tied_x, tied_y),
            ("8 features", few_x, few_y)]


def _spearman_cases() -> list[Case]:
    return [Case(name, (x, y, N_RESAMPLES, seeded_generator(300 + index)))
            for index, (name, x, y) in enumerate(_spearman_inputs())]


def _pearson_p(x: Tensor, y: Tensor, n: int, generator: torch.Generator | None, *, two_sided: bool = False,
               ranks: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """(r, p) of Pearson's r between ``ranks(x)`` and ``ranks(y)`` (the raw values when ``ranks`` is None)."""
    a, b = (x.double(), y.double()) if ranks is None else (ranks(x), ranks(y))
    a, b = a - a.mean(), b - b.mean()
    r = float(a @ b / (a.norm() * b.norm()))
    null = a[_permutations(len(a), n, generator)] @ b
    observed = float(a @ b)
    exceed = (null.abs() >= abs(observed) - 1e-9) if two_sided else (null >= observed - 1e-9)
    return torch.tensor([r, (1 + int(exceed.sum())) / (1 + n)], dtype=torch.float64)


def _ordinal_ranks(values: Tensor) -> Tensor:
    return torch.argsort(torch.argsort(values.double(), stable=True), stable=True).double()


TWO_SIDED = ("take a two-sided p (comparing |rho|, or doubling the smaller tail): the law predicts a positive "
             "correlation, so count only the permuted rho at least as large as the observed one")


def _spearman_mistakes() -> list[Mistake]:
    def pearson(x, y, n, generator):
        return _pearson_p(x, y, n, generator)

    def ordinal(x, y, n, generator):
        return _pearson_p(x, y, n, generator, ranks=_ordinal_ranks)

    def two_sided(x, y, n, generator):
        return _pearson_p(x, y, n, generator, two_sided=True, ranks=_centred_ranks)

    def doubled(x, y, n, generator):
        rho, p = reference_spearman_p(x, y, n, generator).tolist()
        return torch.tensor([rho, min(1.0, 2 * min(p, 1 - p))], dtype=torch.float64)

    def lower(x, y, n, generator):
        rho, p = reference_spearman_p(-x, y, n, generator).tolist()
        return torch.tensor([-rho, p], dtype=torch.float64)

    return [
        Mistake("compute Pearson's r on the raw values: this looks like Pearson's r, not Spearman's rho (correlate "
                "the ranks of the two, so that only the order counts)", pearson),
        Mistake("rank tied values by their position (argsort().argsort()) instead of giving them their average "
                "rank, as scipy.stats.rankdata does", ordinal),
        Mistake(TWO_SIDED, two_sided),
        Mistake(TWO_SIDED, doubled),
        Mistake("count the permuted rho at most as large as the observed one (the lower tail): count those at least "
                "as large", lower),
    ]


def _as_pair(value: Any) -> Tensor | None:
    """A (rho, p) pair as a float64 tensor, or None when it is not two numbers."""
    if isinstance(value, Tensor):
        value = value.detach().flatten().tolist() if value.numel() == 2 else None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        try:
            return torch.tensor([float(value[0]), float(value[1])], dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _has_ties(*values: Tensor) -> bool:
    return any(len(torch.unique(v)) < len(v) for v in values)


def _gap(got: Tensor, wrong: Tensor, n: int, *, rho_only: bool) -> float:
    """Distance in allowed slacks: rho exactly, p within resampling noise (rho alone when ``rho_only``)."""
    got, wrong = got.double().flatten(), wrong.double().flatten()
    if got.shape != wrong.shape:
        return math.inf
    p_gap = abs(float(got[-1] - wrong[-1])) / _slack(float(wrong[-1]), n)
    if len(got) == 1:
        return p_gap
    rho_gap = abs(float(got[0] - wrong[0])) / RHO_TOLERANCE
    return rho_gap if rho_only else max(rho_gap, p_gap)


def _known_mistake(mistakes: Sequence[Mistake], case: Case, got: Tensor, n: int, *, rho_only: bool = False) -> str:
    """' Your output is what you get if you ...' for the mistake nearest ``got`` within the allowed slack, else ''."""
    found: list[tuple[float, int]] = []
    args = tuple(seeded_generator(7) if isinstance(a, torch.Generator) else a for a in case.args)
    for index, mistake in enumerate(mistakes):
        with torch.random.fork_rng(devices=[]):
            wrong = torch.as_tensor(mistake.function(*args))
        gap = _gap(got, wrong, n, rho_only=rho_only)
        if gap <= 1:
            found.append((gap, index))
    if not found:
        return ""
    return f" Your output is what you get if you {mistakes[min(found)[1]].description}."


def _require_seeded(exercise: str, function: StudentFunction, case: Case, got: float, seed: int,
                    drawn: str) -> None:
    """Fail when the same seeded generator and a different global seed give a different answer."""
    again = Case(case.name, tuple(seeded_generator(seed) if isinstance(a, torch.Generator) else a for a in case.args))
    value = call_student(exercise, function, again, global_seed=2)
    pair = _as_pair(value)
    second = float(pair[1]) if pair is not None else float(value)
    if second != got:
        raise ExerciseFailure(f"❌ {exercise} is wrong on case '{case.name}': two calls with generators seeded "
                              f"alike gave different p-values ({got:.4f} and {second:.4f}). Draw the {drawn} with "
                              "the `generator` argument (torch.randperm(n, generator=generator)) so that a seed fixes "
                              "the result.")


def check_spearman_p(spearman_p: StudentFunction) -> None:
    """Check `spearman_p(prediction, shift, n_permutations, generator)` = (rho, p): spearmanr and a permutation p."""
    exercise = "spearman_p"
    require_callable(spearman_p)
    cases = _spearman_cases()
    mistakes = _spearman_mistakes()
    for index, case in enumerate(cases):
        x, y, n = case.args[0], case.args[1], case.args[2]
        raw = call_student(exercise, spearman_p, case, global_seed=1)
        fail = f"❌ {exercise} is wrong on case '{case.name}' ({describe_args(case)})"
        got = _as_pair(raw)
        if got is None:
            raise ExerciseFailure(f"{fail}: return two numbers (rho, p), got a {type(raw).__name__}")
        rho, p = float(got[0]), float(got[1])
        want = reference_spearman_p(x, y, n, seeded_generator(900 + index))
        want_rho, want_p = float(want[0]), float(want[1])
        if not abs(rho - want_rho) <= RHO_TOLERANCE:
            hint = _known_mistake(mistakes, case, got, n, rho_only=True)
            if not hint and abs(p - want_rho) <= RHO_TOLERANCE:
                hint = " It looks like (p, rho): return (rho, p) in that order."
            elif not hint and _has_ties(x, y):
                hint = (" This case has tied values: give tied values their average rank (scipy.stats.rankdata "
                        "does; argsort().argsort() does not).")
            raise ExerciseFailure(f"{fail}: rho = {rho:.6g}, Spearman's rho is {want_rho:.6g}.{hint}")
        if not 0 < p <= 1:
            raise ExerciseFailure(f"{fail}: p = {p:.4g} is not in (0, 1]. Count the observed arrangement as one of "
                                  "the permutations: p = (1 + #{permuted rho >= observed}) / (1 + n_permutations).")
        slack = _slack(want_p, n)
        if abs(p - want_p) > slack:
            hint = _known_mistake(mistakes, case, got, n)
            raise ExerciseFailure(f"{fail}: you gave p = {p:.4f}, the one-sided permutation test gives about "
                                  f"{want_p:.4f} (allowed slack ±{slack:.3f} for resampling noise).{hint}")
        _require_seeded(exercise, spearman_p, case, p, 300 + index, "random permutations")
    passed(exercise, cases, "agrees with scipy's spearmanr and a permutation test within resampling noise")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 5.4: where a feature set's mean cosine with a direction falls among random sets.
# ---------------------------------------------------------------------------------------------------------------


def _placement_inputs() -> list[tuple[str, Tensor, Tensor, Tensor]]:
    d_sae, d_model = 200, 12
    generator = seeded_generator(40)
    direction = torch.randn(d_model, generator=generator) * 3.0
    unit = direction / direction.norm()

    def rows_near(base: Tensor, cosine: float, count: int, length: float) -> Tensor:
        """``count`` rows of the given ``length`` whose cosine with ``base`` (unit) is ``cosine``."""
        noise = torch.randn(count, d_model, generator=generator)
        noise = _unit_rows(noise - (noise @ base)[:, None] * base)
        return length * (cosine * base + math.sqrt(1 - cosine**2) * noise)

    short = _decoder(41, d_sae=d_sae, d_model=d_model)
    aligned = torch.tensor([5, 40, 77, 120, 151, 188])
    short[aligned] = rows_near(unit, 0.6, len(aligned), 0.05)  # short rows along the direction, among long ones

    alike = _decoder(42, d_sae=d_sae, d_model=d_model)
    close = torch.tensor([3, 19, 58, 64, 99, 130, 160, 171])
    common = rows_near(unit, 0.33, 1, 1.0)[0]  # the direction the set's rows share
    alike[close] = rows_near(common, 0.97, len(close), 1.0)  # the set's rows agree with one another

    away = _decoder(43, d_sae=d_sae, d_model=d_model)
    opposed = torch.tensor([11, 48, 93, 142, 197])
    away[opposed] = rows_near(-unit, 0.5, len(opposed), 2.0)

    single = _decoder(44, d_sae=d_sae, d_model=d_model)
    single[60] = rows_near(unit, 0.3, 1, 0.7)[0]
    return [("short rows close to the direction, among long random rows", short, direction, aligned),
            ("8 features that agree with one another, fairly close to the direction", alike, direction, close),
            ("features pointing away from the direction", away, direction, opposed),
            ("a single feature", single, direction, torch.tensor([60]))]


def _placement_cases() -> list[Case]:
    return [Case(name, (W_dec, direction, features, N_RESAMPLES, seeded_generator(400 + index)))
            for index, (name, W_dec, direction, features) in enumerate(_placement_inputs())]


def _placement_p(statistic: Callable[[Tensor], float], d_sae: int, features: Tensor, n_random: int,
                 generator: torch.Generator | None, *, lower: bool = False) -> float:
    """One-sided p of ``statistic(features)`` among ``statistic`` of ``n_random`` random sets of the same size."""
    observed = statistic(features)
    null = torch.tensor([statistic(torch.randperm(d_sae, generator=generator)[:len(features)])
                         for _ in range(n_random)], dtype=torch.float64)
    exceed = (null <= observed + 1e-12) if lower else (null >= observed - 1e-12)
    return (1 + int(exceed.sum())) / (1 + n_random)


def _placement_mistakes() -> list[Mistake]:
    def mean_of(per_feature: Tensor) -> Callable[[Tensor], float]:
        return lambda chosen: float(per_feature[chosen].mean())

    def cosines(W_dec: Tensor, direction: Tensor) -> Tensor:  # noqa: N803
        return _unit_rows(W_dec.double()) @ (direction.double() / direction.double().norm())

    def dots(W_dec, direction, features, n, generator):  # noqa: N803
        per_feature = W_dec.double() @ direction.double()
        return _placement_p(mean_of(per_feature), W_dec.shape[0], features, n, generator)

    def mean_row(W_dec, direction, features, n, generator):  # noqa: N803
        units, along = _unit_rows(W_dec.double()), direction.double() / direction.double().norm()

        def cosine_of_mean(chosen: Tensor) -> float:
            mean = units[chosen].mean(dim=0)
            return float(mean @ along / mean.norm())

        return _placement_p(cosine_of_mean, W_dec.shape[0], features, n, generator)

    def absolute(W_dec, direction, features, n, generator):  # noqa: N803
        return _placement_p(mean_of(cosines(W_dec, direction).abs()), W_dec.shape[0], features, n, generator)

    def lower(W_dec, direction, features, n, generator):  # noqa: N803
        return _placement_p(mean_of(cosines(W_dec, direction)), W_dec.shape[0], features, n, generator, lower=True)

    return [
        Mistake("take dot products of the raw decoder rows with the direction instead of cosines of unit rows",
                dots),
        Mistake("take the cosine of the set's mean unit row with the direction instead of the mean of the features' "
                "cosines (for random sets too)", mean_row),
        Mistake("take |cos| (a feature pointing away from the direction is not close to it)", absolute),
        Mistake("count the random sets whose mean cosine is at most the observed one: count those at least as large",
                lower),
    ]


def check_cosine_placement(cosine_placement: StudentFunction) -> None:
    """Check `cosine_placement(W_dec, direction, features, n_random, generator)` against mechanism.direction_cosines."""
    exercise = "cosine_placement"
    require_callable(cosine_placement)
    cases = _placement_cases()
    mistakes = _placement_mistakes()
    for index, case in enumerate(cases):
        W_dec, direction, features, n = case.args[:4]  # noqa: N806
        raw = call_student(exercise, cosine_placement, case, global_seed=1)
        fail = f"❌ {exercise} is wrong on case '{case.name}' ({describe_args(case)})"
        try:
            got = float(raw)
        except (TypeError, ValueError, RuntimeError):
            raise ExerciseFailure(f"{fail}: return one number, the p-value, got a {type(raw).__name__}") from None
        if not 0 < got <= 1:
            raise ExerciseFailure(f"{fail}: p = {got:.4g} is not in (0, 1]. Count the observed set as one of the "
                                  "random sets: p = (1 + #{random mean >= observed}) / (1 + n_random).")
        want = float(reference_cosine_placement(W_dec, direction, features, n, seeded_generator(900 + index)))
        slack = _slack(want, n)
        if abs(got - want) > slack:
            hint = _known_mistake(mistakes, case, torch.tensor([got]), n)
            raise ExerciseFailure(f"{fail}: you gave p = {got:.4f}, placing the mean cosine among random sets gives "
                                  f"about {want:.4f} (allowed slack ±{slack:.3f} for resampling noise).{hint}")
        _require_seeded(exercise, cosine_placement, case, got, 400 + index, "random feature sets")
    passed(exercise, cases, "agrees with geomis' direction_cosines within resampling noise")
