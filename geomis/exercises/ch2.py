"""Checks for Chapter 2's exercises: an SAE's TopK encoding, the point-biserial feature statistic, the mean
nearest cosine between feature sets, and the spillover law's encoder-decoder cosines.

Each `check_*` runs the student's function next to the geomis implementation (or sae-lens's, for the encoder) on
seeded cases and edge cases, then prints a line starting with ✅ or raises `ExerciseFailure` naming the case, what
differed and, when it recognises it, the mistake. Shapes follow sae-lens: ``W_enc`` is ``(d_in, d_sae)``,
``W_dec`` is ``(d_sae, d_in)``; a feature set is a 1-D tensor of feature indices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from geomis.exercises.check import Case, Mistake, Tolerance, check_function, compare_tensors, seeded_generator
from geomis.features.geometry import nearest_cosines, pairwise_cosines
from geomis.features.sets import point_biserial_correlation

__all__ = [
    "check_topk_encode",
    "check_point_biserial",
    "check_mean_nearest_cosine",
    "check_spillover_cosines",
    "reference_topk_encode",
    "reference_point_biserial",
    "reference_mean_nearest_cosine",
    "reference_spillover_cosines",
]

StudentFunction = Callable[..., Any]


def _unit_rows(matrix: Tensor) -> Tensor:
    return matrix / matrix.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------------------------
# References.
# ---------------------------------------------------------------------------------------------------------------


def reference_topk_encode(h: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> Tensor:  # noqa: N803
    """TopK SAE codes as sae-lens computes them: the k largest pre-activations per token, through a ReLU."""
    pre = (h - b_dec) @ W_enc + b_enc
    values, indices = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def reference_point_biserial(codes: Tensor, labels: Tensor) -> Tensor:
    """Per feature, the correlation of its per-chat activation with the 0/1 label (0 for a constant feature)."""
    return point_biserial_correlation(codes, labels).float()


def reference_mean_nearest_cosine(W_dec: Tensor, source: Tensor, reference: Tensor) -> Tensor:  # noqa: N803
    """Mean over source features of the largest decoder cosine to another feature of the reference set."""
    values = nearest_cosines(_unit_rows(W_dec), source, reference).max_cos
    return values[~torch.isnan(values)].mean()


def reference_spillover_cosines(W_enc: Tensor, W_dec: Tensor, source: Tensor,  # noqa: N803
                                reference: Tensor) -> Tensor:
    """cos(e_r, d_s) for every source feature s (rows) and reference feature r (columns); NaN where s == r."""
    return pairwise_cosines(_unit_rows(W_dec), source, reference, reference_rows=_unit_rows(W_enc.T))


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2.1: TopK encoding.
# ---------------------------------------------------------------------------------------------------------------


def _sae_weights(seed: int, d_in: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor]:
    generator = seeded_generator(seed)
    W_enc = torch.randn(d_in, d_sae, generator=generator) / d_in ** 0.5  # noqa: N806
    return W_enc, 0.1 * torch.randn(d_sae, generator=generator), 0.5 * torch.randn(d_in, generator=generator)


def _encode_cases() -> list[Case]:
    W_enc, b_enc, b_dec = _sae_weights(1, 12, 48)  # noqa: N806
    h = torch.randn(6, 12, generator=seeded_generator(2)) + b_dec
    negative = -2.0 * torch.ones(48)
    return [
        Case("6 tokens, k = 4", (h, W_enc, b_enc, b_dec, 4)),
        Case("negative encoder bias (some kept values are below 0)", (h, W_enc, negative, b_dec, 5)),
        Case("one token, k = 1", (h[:1], W_enc, b_enc, b_dec, 1)),
        Case("k = every feature", (h[:3], W_enc, b_enc, b_dec, 48)),
    ]


def _encode_mistakes() -> list[Mistake]:
    def no_b_dec(h, W_enc, b_enc, b_dec, k):  # noqa: N803
        return reference_topk_encode(h, W_enc, b_enc, torch.zeros_like(b_dec), k)

    def no_relu(h, W_enc, b_enc, b_dec, k):  # noqa: N803
        pre = (h - b_dec) @ W_enc + b_enc
        values, indices = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    def relu_first(h, W_enc, b_enc, b_dec, k):  # noqa: N803
        return torch.relu((h - b_dec) @ W_enc + b_enc)

    def over_tokens(h, W_enc, b_enc, b_dec, k):  # noqa: N803
        pre = (h - b_dec) @ W_enc + b_enc
        values, indices = pre.topk(min(k, pre.shape[0]), dim=0)
        return torch.zeros_like(pre).scatter(0, indices, values.relu())

    def by_magnitude(h, W_enc, b_enc, b_dec, k):  # noqa: N803
        pre = (h - b_dec) @ W_enc + b_enc
        indices = pre.abs().topk(k, dim=-1).indices
        return torch.zeros_like(pre).scatter(-1, indices, pre.gather(-1, indices).relu())

    return [
        Mistake("forget to subtract b_dec from the input", no_b_dec),
        Mistake("keep the k largest pre-activations without the ReLU (negative values stay)", no_relu),
        Mistake("apply only a ReLU and keep every positive feature (no top-k)", relu_first),
        Mistake("take the top k over the tokens (dim 0) instead of over the features of each token", over_tokens),
        Mistake("pick the k largest by absolute value", by_magnitude),
    ]


def check_topk_encode(topk_encode: StudentFunction) -> None:
    """Check `topk_encode(h, W_enc, b_enc, b_dec, k)` against sae-lens's TopK encoding."""
    check_function("topk_encode", topk_encode, reference_topk_encode, _encode_cases(), mistakes=_encode_mistakes(),
                   tolerance=Tolerance(rtol=1e-4, atol=1e-5), what="matches sae-lens's TopK encoder")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2.2: the point-biserial correlation.
# ---------------------------------------------------------------------------------------------------------------


def _biserial_cases() -> list[Case]:
    generator = seeded_generator(10)
    codes = torch.rand(30, 8, generator=generator)
    labels = (torch.arange(30) % 3 == 0).long()
    codes[labels == 1, 2] += 1.0  # feature 2 fires more on label 1
    codes[labels == 1, 5] -= 0.4  # feature 5 less
    constant = codes.clone()
    constant[:, 4] = 0.5  # a feature that never changes (0.5: its mean is exact, its spread exactly 0)
    rare = torch.zeros(20, 6)
    rare[:2, 1] = 3.0  # a rare feature, only on label 1
    rare[5:8, 3] = 0.2
    rare_labels = torch.tensor([1] * 4 + [0] * 16)
    return [
        Case("30 chats, a third labelled 1", (codes, labels)),
        Case("a constant feature (correlation 0)", (constant, labels)),
        Case("rare features, 4 positives", (rare + 0.01 * torch.rand(20, 6, generator=generator), rare_labels)),
        Case("boolean labels", (codes[:12], labels[:12].bool())),
    ]


def _biserial_mistakes() -> list[Mistake]:
    def mean_difference(codes, labels):
        labels = labels.bool()
        return codes[labels].mean(0) - codes[~labels].mean(0)

    def standardised_difference(codes, labels):
        labels = labels.bool()
        return (codes[labels].mean(0) - codes[~labels].mean(0)) / codes.std(0).clamp_min(1e-12)

    def nan_for_constant(codes, labels):
        x = codes - codes.mean(0)
        y = labels.float() - labels.float().mean()
        return (x * y[:, None]).sum(0) / (x.norm(dim=0) * y.norm())

    return [
        Mistake("return the raw difference of the two means (not on a common scale)", mean_difference),
        Mistake("divide the difference of means by the feature's standard deviation but leave out the "
                "sqrt(p q) factor of the label's split", standardised_difference),
        Mistake("divide by a zero standard deviation for a constant feature (it should get 0)", nan_for_constant),
    ]


def check_point_biserial(point_biserial: StudentFunction) -> None:
    """Check `point_biserial(codes, labels)` against geomis.features.sets.point_biserial_correlation."""
    check_function("point_biserial", point_biserial, reference_point_biserial, _biserial_cases(),
                   mistakes=_biserial_mistakes(), tolerance=Tolerance(rtol=1e-4, atol=1e-5),
                   what="matches geomis' point_biserial_correlation")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2.3: the mean nearest cosine of one feature set to another.
# ---------------------------------------------------------------------------------------------------------------


def _decoder(seed: int, d_sae: int = 40, d_in: int = 10, spread: bool = True) -> Tensor:
    generator = seeded_generator(seed)
    decoder = torch.randn(d_sae, d_in, generator=generator)
    if spread:  # rows of very different lengths, as an SAE trained without normalisation has
        decoder *= torch.exp(torch.randn(d_sae, 1, generator=generator))
    return decoder


def _nearest_cases() -> list[Case]:
    planted = _decoder(21)
    planted[3] = 0.1 * planted[30] + 0.02 * planted[3]  # a short row almost along a reference feature
    return [
        Case("disjoint sets", (_decoder(20), torch.tensor([0, 1, 2, 3, 4]), torch.tensor([20, 21, 22, 23]))),
        Case("one source feature is also a reference feature",
             (_decoder(22), torch.tensor([5, 6, 7]), torch.tensor([7, 8, 9, 10]))),
        Case("a short row almost along a reference feature",
             (planted, torch.tensor([1, 2, 3]), torch.tensor([30, 31, 32]))),
        Case("single reference feature", (_decoder(23), torch.tensor([0, 1, 2, 3]), torch.tensor([9]))),
    ]


def _nearest_mistakes() -> list[Mistake]:
    def unnormalised(W_dec, source, reference):  # noqa: N803
        dots = W_dec[source] @ W_dec[reference].T
        dots = dots.masked_fill(source[:, None] == reference[None, :], float("nan"))
        return dots.nan_to_num(nan=-torch.inf).max(1).values.mean()

    def self_pairs(W_dec, source, reference):  # noqa: N803
        unit = _unit_rows(W_dec)
        return (unit[source] @ unit[reference].T).max(1).values.mean()

    def mean_not_max(W_dec, source, reference):  # noqa: N803
        values = nearest_cosines(_unit_rows(W_dec), source, reference).mean_cos
        return values[~torch.isnan(values)].mean()

    def absolute(W_dec, source, reference):  # noqa: N803
        values = nearest_cosines(_unit_rows(W_dec), source, reference, absolute=True).max_cos
        return values[~torch.isnan(values)].mean()

    return [
        Mistake("take dot products of the raw rows instead of cosines of unit rows", unnormalised),
        Mistake("let a feature that is in both sets count its cosine 1 with itself", self_pairs),
        Mistake("average all cosines to the reference set instead of taking the nearest one", mean_not_max),
        Mistake("take |cos| (a feature pointing away from a toxic one is not close to it)", absolute),
    ]


def check_mean_nearest_cosine(mean_nearest_cosine: StudentFunction) -> None:
    """Check `mean_nearest_cosine(W_dec, source, reference)` against geomis' nearest_cosines."""
    check_function("mean_nearest_cosine", mean_nearest_cosine, reference_mean_nearest_cosine, _nearest_cases(),
                   mistakes=_nearest_mistakes(), tolerance=Tolerance(rtol=1e-4, atol=1e-5),
                   what="matches geomis' nearest_cosines")


# ---------------------------------------------------------------------------------------------------------------
# Exercise 2.4: the spillover law's encoder-decoder cosines.
# ---------------------------------------------------------------------------------------------------------------


def _spillover_cases() -> list[Case]:
    W_dec = _decoder(30, 24, 8)  # noqa: N806
    W_enc = (W_dec + 0.8 * torch.randn(24, 8, generator=seeded_generator(31))).T.contiguous()  # noqa: N806
    tilted = W_enc.clone()
    tilted[:, 12] = -W_dec[2]  # feature 12 reads exactly against feature 2's write direction
    return [
        Case("random untied SAE", (W_enc, W_dec, torch.tensor([0, 1, 2]), torch.tensor([10, 11, 12, 13]))),
        Case("a feature in both sets (NaN on its self-pair)",
             (W_enc, W_dec, torch.tensor([4, 5]), torch.tensor([5, 6, 7]))),
        Case("a reference feature that reads against a source feature",
             (tilted, W_dec, torch.tensor([2, 3]), torch.tensor([12, 14]))),
        Case("tied weights (encoder = decoder)",
             (W_dec.T.contiguous(), W_dec, torch.tensor([0, 1]), torch.tensor([2, 3, 4]))),
    ]


def _compare_with_nan(got: Tensor, expected: Tensor, case: Case) -> str | None:
    """Like `compare_tensors`, with NaN expected (and required) exactly on the self-pairs."""
    if tuple(got.shape) != tuple(expected.shape):
        return f"the output has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    expected_nan, got_nan = torch.isnan(expected), torch.isnan(got.double())
    if not torch.equal(expected_nan, got_nan):
        if bool(expected_nan.any()) and not bool(got_nan.any()):
            return ("a feature in both sets has a number on its self-pair; its cosine with itself says nothing "
                    "about geometry: set those entries to NaN")
        return (f"NaN at {torch.nonzero(got_nan).tolist()}, expected NaN only on self-pairs "
                f"{torch.nonzero(expected_nan).tolist()}")
    return compare_tensors(got.double().nan_to_num(0.0), expected.double().nan_to_num(0.0), case,
                           Tolerance(rtol=1e-4, atol=1e-5))


def _spillover_mistakes() -> list[Mistake]:
    def decoder_decoder(W_enc, W_dec, source, reference):  # noqa: N803
        return pairwise_cosines(_unit_rows(W_dec), source, reference)

    def swapped(W_enc, W_dec, source, reference):  # noqa: N803
        return pairwise_cosines(_unit_rows(W_enc.T), source, reference, reference_rows=_unit_rows(W_dec))

    def unnormalised(W_enc, W_dec, source, reference):  # noqa: N803
        dots = W_dec[source] @ W_enc[:, reference]
        return dots.masked_fill(source[:, None] == reference[None, :], float("nan"))

    return [
        Mistake("compare decoder rows with decoder rows (the paper's geometry, not the law's)", decoder_decoder),
        Mistake("swap the roles: read the source features by their encoder rows and the reference by its "
                "decoder rows", swapped),
        Mistake("use dot products of the raw weights instead of cosines", unnormalised),
    ]


def check_spillover_cosines(spillover_cosines: StudentFunction) -> None:
    """Check `spillover_cosines(W_enc, W_dec, source, reference)` = cos(e_r, d_s) against geomis'
    pairwise_cosines with encoder rows."""
    check_function("spillover_cosines", spillover_cosines, reference_spillover_cosines, _spillover_cases(),
                   mistakes=_spillover_mistakes(), compare=_compare_with_nan, mistake_compare=_compare_with_nan,
                   what="matches geomis' pairwise_cosines(reference_rows=encoder)")
