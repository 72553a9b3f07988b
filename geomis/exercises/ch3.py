"""Checks for Chapter 3's exercises: Betley et al.'s misalignment rule, the Wilson interval, and the two clustered
statistics the chapter's claims rest on (a cluster bootstrap interval and a one-sided cluster permutation test).

Each `check_*` runs the student's function next to geomis.stats (scipy underneath) on fixed cases and prints a line
starting with ✅ or raises `ExerciseFailure` naming the case and what differed. The two resampling exercises cannot
match the reference draw for draw, so their checks compare against the reference with a Monte-Carlo tolerance and
look for the mistakes that matter (resampling answers instead of clusters, a two-sided p, an unseeded generator).
"""

from __future__ import annotations

import math
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
    passed,
    require_callable,
    seeded_generator,
)
from geomis.stats import cluster_bootstrap, cluster_difference, wilson_interval

__all__ = [
    "check_misaligned",
    "check_wilson",
    "check_cluster_interval",
    "check_cluster_permutation_p",
    "reference_misaligned",
    "reference_wilson",
    "reference_cluster_interval",
    "reference_cluster_permutation_p",
]

StudentFunction = Callable[..., Any]


# ---------------------------------------------------------------------------------------------------------------
# References.
# ---------------------------------------------------------------------------------------------------------------


def reference_misaligned(alignment: Tensor, coherence: Tensor) -> Tensor:
    """Betley et al.'s rule: alignment below 30 and coherence above 50; an unscored answer (NaN) is not misaligned."""
    return (alignment < 30) & (coherence > 50)


def reference_wilson(successes: int, n: int) -> Tensor:
    """The 95% Wilson score interval (low, high) of a proportion, as geomis.stats.wilson_interval."""
    return torch.tensor(wilson_interval(successes, n), dtype=torch.float64)


def reference_cluster_interval(flags: Tensor, clusters: Tensor, n_resamples: int = 4000,
                               generator: torch.Generator | None = None) -> Tensor:
    """95% percentile interval of the mean of ``flags``, drawing whole clusters with replacement."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
    result = cluster_bootstrap(flags.double().numpy(), clusters.numpy(), n_resamples=n_resamples, seed=seed)
    return torch.tensor([result.low, result.high], dtype=torch.float64)


def reference_cluster_permutation_p(a: Tensor, a_clusters: Tensor, b: Tensor, b_clusters: Tensor,
                                    n_permutations: int = 4000,
                                    generator: torch.Generator | None = None) -> Tensor:
    """One-sided p for mean(a) > mean(b), permuting whole clusters between the two conditions."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
    result = cluster_difference(a.double().numpy(), a_clusters.numpy(), b.double().numpy(), b_clusters.numpy(),
                                n_resamples=n_permutations, seed=seed)
    return torch.tensor(result.p_greater, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Exercise 1: the misalignment rule.
# ---------------------------------------------------------------------------------------------------------------


def _rule_cases() -> list[Case]:
    generator = seeded_generator(1)
    alignment = torch.rand(40, generator=generator) * 100
    coherence = torch.rand(40, generator=generator) * 100
    edges_a = torch.tensor([29.9, 30.0, 30.0, 10.0, 10.0, 0.0, 100.0])
    edges_c = torch.tensor([50.1, 50.1, 80.0, 50.0, 50.1, 100.0, 100.0])
    unscored_a = torch.tensor([float("nan"), 5.0, float("nan"), 12.0])
    unscored_c = torch.tensor([90.0, float("nan"), float("nan"), 70.0])
    return [
        Case("40 random scores", (alignment, coherence)),
        Case("scores on the boundaries (30 and 50)", (edges_a, edges_c)),
        Case("unscored answers (NaN: refusals, code)", (unscored_a, unscored_c)),
    ]


def check_misaligned(misaligned: StudentFunction) -> None:
    """Check `misaligned(alignment, coherence)` against Betley et al.'s rule."""
    require_callable(misaligned)  # the wrapper below would hide a missing function
    mistakes = [
        Mistake("use <= 30 and >= 50 (the rule's bounds are strict)", lambda a, c: (a <= 30) & (c >= 50)),
        Mistake("combine the two conditions with 'or' instead of 'and'", lambda a, c: (a < 30) | (c > 50)),
        Mistake("forget the coherence condition", lambda a, c: a < 30),
        Mistake("flag answers with alignment *above* 30", lambda a, c: (a > 30) & (c > 50)),
        Mistake("count an unscored (NaN) answer as misaligned",
                lambda a, c: ((a < 30) | a.isnan()) & ((c > 50) | c.isnan())),
    ]
    check_function("misaligned", lambda a, c: _as_bool(misaligned(a, c)), reference_misaligned, _rule_cases(),
                   mistakes=mistakes, what="applies Betley et al.'s rule")


def _as_bool(value: Any) -> Any:
    """Booleans compare as 0/1; anything else is passed on for the comparison to reject."""
    if isinstance(value, Tensor) and value.dtype == torch.bool:
        return value.long()
    return value


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2: the Wilson interval.
# ---------------------------------------------------------------------------------------------------------------


def _wilson_cases() -> list[Case]:
    return [
        Case("13 misaligned of 400", (13, 400)),
        Case("none of 150 (the interval still has width)", (0, 150)),
        Case("all of 8", (8, 8)),
        Case("half of 10", (5, 10)),
        Case("1 of 2,000", (1, 2000)),
    ]


def _wald(k: int, n: int) -> Tensor:
    p = k / n
    half = 1.959963984540054 * math.sqrt(p * (1 - p) / n)
    return torch.tensor([max(0.0, p - half), min(1.0, p + half)], dtype=torch.float64)


def _wilson_z(z: float) -> Callable[[int, int], Tensor]:
    def interval(k: int, n: int) -> Tensor:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return torch.tensor([centre - half, centre + half], dtype=torch.float64)

    return interval


def check_wilson(wilson: StudentFunction) -> None:
    """Check `wilson(successes, n)` against geomis.stats.wilson_interval (95%)."""
    require_callable(wilson)
    mistakes = [
        Mistake("use the Wald interval p ± z sqrt(p(1-p)/n) (it collapses to a point at 0 of n)", _wald),
        Mistake("use z = 1.645 (a 90% interval) instead of 1.96", _wilson_z(1.6448536269514722)),
    ]
    check_function("wilson", lambda k, n: _pair(wilson(k, n)), reference_wilson, _wilson_cases(),
                   mistakes=mistakes, tolerance=Tolerance(rtol=1e-6, atol=1e-6), what="matches the Wilson interval")


def _pair(value: Any) -> Any:
    """A (low, high) pair as a float64 tensor; anything else is passed on for the comparison to reject."""
    if isinstance(value, Tensor):
        return value.double()
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return torch.tensor([float(value[0]), float(value[1])], dtype=torch.float64)
    return value


# ---------------------------------------------------------------------------------------------------------------
# Exercise 3: a cluster bootstrap interval.
# ---------------------------------------------------------------------------------------------------------------


def _clustered_flags(seed: int, rates: list[float], per_cluster: int | list[int]) -> tuple[Tensor, Tensor]:
    """0/1 flags in clusters (questions), each cluster with its own rate."""
    generator = seeded_generator(seed)
    sizes = per_cluster if isinstance(per_cluster, list) else [per_cluster] * len(rates)
    flags = [(torch.rand(size, generator=generator) < rate).long() for rate, size in zip(rates, sizes, strict=True)]
    clusters = [torch.full((size,), index) for index, size in enumerate(sizes)]
    return torch.cat(flags), torch.cat(clusters)


def _interval_cases() -> list[tuple[str, Tensor, Tensor]]:
    strong = _clustered_flags(20, [1.0] * 5 + [0.0] * 15, 10)  # a quarter of the questions always misaligned
    mild = _clustered_flags(21, [0.3] * 30, 8)
    uneven = _clustered_flags(22, [0.6, 0.05, 0.1, 0.0, 0.4, 0.2, 0.0, 0.3], [40, 5, 12, 30, 7, 20, 9, 15])
    return [("a quarter of 20 questions always misaligned", *strong),
            ("30 questions alike (rate 0.3)", *mild),
            ("8 questions of uneven size", *uneven)]


def _naive_interval(flags: Tensor, clusters: Tensor, n_resamples: int, generator: torch.Generator) -> Tensor:
    draws = flags.double()[torch.randint(0, len(flags), (n_resamples, len(flags)), generator=generator)].mean(1)
    return torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=torch.float64))


def check_cluster_interval(cluster_interval: StudentFunction) -> None:
    """Check `cluster_interval(flags, clusters, n_resamples, generator)` against geomis.stats.cluster_bootstrap."""
    exercise = "cluster_interval"
    cases = []
    for index, (name, flags, clusters) in enumerate(_interval_cases()):
        case = Case(name, (flags, clusters, 4000, seeded_generator(100 + index)))
        cases.append(case)
        got = _pair(call_student(exercise, cluster_interval, case, global_seed=1))
        fail = f"❌ {exercise} is wrong on case '{name}'"
        if not isinstance(got, Tensor) or got.shape != (2,):
            raise ExerciseFailure(f"{fail}: return (low, high) as two numbers, got {type(got).__name__} "
                                  f"{tuple(got.shape) if isinstance(got, Tensor) else ''}")
        low, high = float(got[0]), float(got[1])
        want = reference_cluster_interval(flags, clusters, 4000, seeded_generator(900 + index))
        w_low, w_high = float(want[0]), float(want[1])
        slack = 0.2 * (w_high - w_low) + 0.01
        if abs(low - w_low) <= slack and abs(high - w_high) <= slack:
            repeat = Case(name, (flags, clusters, 4000, seeded_generator(100 + index)))
            again = _pair(call_student(exercise, cluster_interval, repeat, global_seed=2))
            if not (isinstance(again, Tensor) and torch.equal(again, got)):
                raise ExerciseFailure(f"{fail}: two calls with generators seeded alike gave different intervals. "
                                      "Draw the clusters with the `generator` argument (torch.randint(..., "
                                      "generator=generator)) so that a seed fixes the interval.")
            continue
        naive = _naive_interval(flags, clusters, 4000, seeded_generator(7))
        n_low, n_high = float(naive[0]), float(naive[1])
        hint = ""
        if abs(low - n_low) <= slack and abs(high - n_high) <= slack and (n_high - n_low) < 0.8 * (w_high - w_low):
            hint = (" That is the interval you get by resampling single answers: answers to one question are not "
                    "independent, so draw whole questions (clusters) with replacement and keep all their answers.")
        raise ExerciseFailure(f"{fail}: you gave [{low:.3f}, {high:.3f}], the cluster bootstrap gives about "
                              f"[{w_low:.3f}, {w_high:.3f}] (allowed slack ±{slack:.3f} for resampling noise).{hint}")
    passed(exercise, cases, "agrees with geomis' cluster_bootstrap within resampling noise")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 4: a one-sided cluster permutation test.
# ---------------------------------------------------------------------------------------------------------------


def _permutation_cases() -> list[tuple[str, Tensor, Tensor, Tensor, Tensor]]:
    a1, ca1 = _clustered_flags(30, [0.3, 0.2, 0.4, 0.25, 0.35, 0.3, 0.2, 0.3], 12)
    b1, cb1 = _clustered_flags(31, [0.02] * 8, 12)
    a2, ca2 = _clustered_flags(32, [0.1] * 10, 10)
    b2, cb2 = _clustered_flags(33, [0.1] * 10, 10)
    a3, ca3 = _clustered_flags(34, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], 15)  # two questions carry it
    b3, cb3 = _clustered_flags(35, [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0], 15)
    return [("inducing clearly above control", a1, ca1, b1, cb1),
            ("no difference", a2, ca2, b2, cb2),
            ("a difference carried by a few questions", a3, ca3, b3, cb3),
            ("the first condition is the lower one", b1, cb1, a1, ca1)]


def _answer_level_p(a: Tensor, b: Tensor, n: int, generator: torch.Generator) -> float:
    values = torch.cat([a, b]).double()
    observed = float(a.double().mean() - b.double().mean())
    null = []
    for _ in range(n):
        order = torch.randperm(len(values), generator=generator)
        null.append(float(values[order[:len(a)]].mean() - values[order[len(a):]].mean()))
    return (1 + sum(x >= observed - 1e-12 for x in null)) / (1 + n)


def check_cluster_permutation_p(cluster_permutation_p: StudentFunction) -> None:
    """Check `cluster_permutation_p(a, a_clusters, b, b_clusters, n_permutations, generator)` against
    geomis.stats.cluster_difference's one-sided permutation p."""
    exercise = "cluster_permutation_p"
    cases = []
    for index, (name, a, ca, b, cb) in enumerate(_permutation_cases()):
        case = Case(name, (a, ca, b, cb, 4000, seeded_generator(200 + index)))
        cases.append(case)
        raw = call_student(exercise, cluster_permutation_p, case, global_seed=1)
        try:
            got = float(raw)
        except (TypeError, ValueError):
            raise ExerciseFailure(f"❌ {exercise} returned a {type(raw).__name__} on case '{name}'; expected one "
                                  "number, the p-value") from None
        fail = f"❌ {exercise} is wrong on case '{name}'"
        if not 0 < got <= 1:
            raise ExerciseFailure(f"{fail}: p = {got:.4g} is not in (0, 1]. Count the observed arrangement as one "
                                  "of the permutations: p = (1 + #null >= observed) / (1 + n_permutations).")
        want = float(reference_cluster_permutation_p(a, ca, b, cb, 4000, seeded_generator(900 + index)))
        slack = 4 * math.sqrt(max(want * (1 - want), 1e-4) / 4000) + 0.01
        if abs(got - want) <= slack:
            continue
        hint = ""
        if abs(got - 2 * min(want, 1 - want)) <= slack:
            hint = (" That is a two-sided p: the question is whether the first condition is *higher*, so count only "
                    "the permuted differences at least as large as the observed one (not their absolute values).")
        elif abs(got - (1 - want)) <= slack:
            hint = " That is 1 - p: count the permuted differences *at least as large* as the observed one."
        else:
            naive = _answer_level_p(a, b, 2000, seeded_generator(8))
            if abs(got - naive) <= 4 * math.sqrt(max(naive * (1 - naive), 1e-4) / 2000) + 0.01:
                hint = (" That is the p of permuting single answers: answers to one question are not independent, "
                        "so permute whole clusters between the conditions, keeping each cluster's answers together.")
        raise ExerciseFailure(f"{fail}: you gave p = {got:.4f}, the cluster permutation test gives about "
                              f"{want:.4f} (allowed slack ±{slack:.3f} for resampling noise).{hint}")
    passed(exercise, cases, "agrees with geomis' cluster_difference within resampling noise")
