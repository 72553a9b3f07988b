"""Chapter 3's exercise checks: each passes an independently written solution and fails plausible wrong answers and
a stub with a message that says what is wrong."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from geomis.exercises import ch3

# ---------------------------------------------------------------------------------------------------------------
# Worked solutions, written without geomis.stats.
# ---------------------------------------------------------------------------------------------------------------


def misaligned(alignment: Tensor, coherence: Tensor) -> Tensor:
    return torch.logical_and(alignment.nan_to_num(100.0) < 30, coherence.nan_to_num(0.0) > 50)


def wilson(successes: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = successes / n
    centre = (successes + z * z / 2) / (n + z * z)
    half = z * math.sqrt(n) / (n + z * z) * math.sqrt(p * (1 - p) + z * z / (4 * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_interval(flags: Tensor, clusters: Tensor, n_resamples: int, generator: torch.Generator) -> Tensor:
    labels = clusters.unique()
    sums = torch.stack([flags[clusters == c].double().sum() for c in labels])
    sizes = torch.stack([(clusters == c).double().sum() for c in labels])
    drawn = torch.randint(0, len(labels), (n_resamples, len(labels)), generator=generator)
    means = sums[drawn].sum(1) / sizes[drawn].sum(1)
    return torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))


def cluster_permutation_p(a: Tensor, a_clusters: Tensor, b: Tensor, b_clusters: Tensor, n_permutations: int,
                          generator: torch.Generator) -> float:
    groups = [a[a_clusters == c].double() for c in a_clusters.unique()]
    groups += [b[b_clusters == c].double() for c in b_clusters.unique()]
    n_a = len(a_clusters.unique())

    def difference(order: list[int]) -> float:
        first = torch.cat([groups[i] for i in order[:n_a]])
        second = torch.cat([groups[i] for i in order[n_a:]])
        return float(first.mean() - second.mean())

    observed = difference(list(range(len(groups))))
    at_least = sum(difference(torch.randperm(len(groups), generator=generator).tolist()) >= observed - 1e-12
                   for _ in range(n_permutations))
    return (1 + at_least) / (1 + n_permutations)


SOLUTIONS: dict[str, Callable[..., Any]] = {
    "check_misaligned": misaligned,
    "check_wilson": wilson,
    "check_cluster_interval": cluster_interval,
    "check_cluster_permutation_p": cluster_permutation_p,
}


def _answer_bootstrap(flags, clusters, n_resamples, generator):
    drawn = torch.randint(0, len(flags), (n_resamples, len(flags)), generator=generator)
    return torch.quantile(flags.double()[drawn].mean(1), torch.tensor([0.025, 0.975], dtype=torch.float64))


def _unseeded(flags, clusters, n_resamples, generator):
    return cluster_interval(flags, clusters, n_resamples, torch.Generator().manual_seed(int(torch.randint(9, (1,)))))


def _two_sided(a, ca, b, cb, n, generator):
    p = cluster_permutation_p(a, ca, b, cb, n, generator)
    return min(1.0, 2 * min(p, 1 - p))


def _answer_permutation(a, ca, b, cb, n, generator):
    values = torch.cat([a, b]).double()
    observed = float(a.double().mean() - b.double().mean())
    hits = sum(float(values[o[:len(a)]].mean() - values[o[len(a):]].mean()) >= observed - 1e-12
               for o in (torch.randperm(len(values), generator=generator) for _ in range(n)))
    return (1 + hits) / (1 + n)


# (check, wrong function, phrases the message must contain)
WRONG: list[tuple[str, str, Callable[..., Any], tuple[str, ...]]] = [
    ("rule: non-strict", "check_misaligned", lambda a, c: (a <= 30) & (c >= 50),
     ("boundaries", "bounds are strict")),
    ("rule: or", "check_misaligned", lambda a, c: (a < 30) | (c > 50), ("'or' instead of 'and'",)),
    ("rule: NaN counted", "check_misaligned", lambda a, c: ((a < 30) | a.isnan()) & ((c > 50) | c.isnan()),
     ("unscored", "NaN) answer as misaligned")),
    ("rule: floats", "check_misaligned", lambda a, c: torch.where((a < 30) & (c > 50), 0.5, 0.0),
     ("entries differ",)),
    ("wilson: Wald", "check_wilson", lambda k, n: ch3._wald(k, n), ("Wald interval",)),
    ("wilson: 90%", "check_wilson", lambda k, n: ch3._wilson_z(1.6448536269514722)(k, n), ("z = 1.645",)),
    ("wilson: one number", "check_wilson", lambda k, n: k / n, ("shape",)),
    ("interval: answers resampled", "check_cluster_interval", _answer_bootstrap,
     ("a quarter of 20 questions", "resampling single answers")),
    ("interval: unseeded", "check_cluster_interval", _unseeded, ("seeded alike",)),
    ("interval: one number", "check_cluster_interval", lambda f, c, n, g: f.double().mean(), ("(low, high)",)),
    ("permutation: two-sided", "check_cluster_permutation_p", _two_sided, ("two-sided",)),
    ("permutation: answers permuted", "check_cluster_permutation_p", _answer_permutation,
     ("carried by a few questions", "permuting single answers")),
    ("permutation: 1 - p", "check_cluster_permutation_p",
     lambda a, ca, b, cb, n, g: 1 - cluster_permutation_p(a, ca, b, cb, n, g) + 1 / (1 + n), ("1 - p",)),
]


