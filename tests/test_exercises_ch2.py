"""Chapter 2's exercise checks: each passes an independently written solution, fails plausible wrong answers and a
stub with a message that says what is wrong, and its reference agrees with the libraries it stands for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from sae_lens import TopKSAE, TopKSAEConfig
from torch import Tensor

from geomis.exercises import ch2

# ---------------------------------------------------------------------------------------------------------------
# Worked solutions, written without geomis.
# ---------------------------------------------------------------------------------------------------------------


def topk_encode(h: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int) -> Tensor:  # noqa: N803
    pre = torch.einsum("ti,if->tf", h - b_dec, W_enc) + b_enc
    threshold = pre.topk(k, dim=-1).values[:, -1:]
    return torch.where(pre >= threshold, pre.clamp_min(0), 0.0)


def point_biserial(codes: Tensor, labels: Tensor) -> Tensor:
    y = labels.double()
    x = codes.double()
    covariance = ((x - x.mean(0)) * (y - y.mean())[:, None]).mean(0)
    spread = x.std(0, unbiased=False) * y.std(unbiased=False)
    return torch.where(spread > 0, covariance / spread.clamp_min(1e-300), 0.0).float()


def mean_nearest_cosine(W_dec: Tensor, source: Tensor, reference: Tensor) -> Tensor:  # noqa: N803
    best = []
    for s in source.tolist():
        others = [r for r in reference.tolist() if r != s]
        if others:
            cosines = torch.nn.functional.cosine_similarity(W_dec[s][None], W_dec[others], dim=-1)
            best.append(cosines.max())
    return torch.stack(best).mean()


def spillover_cosines(W_enc: Tensor, W_dec: Tensor, source: Tensor, reference: Tensor) -> Tensor:  # noqa: N803
    d = torch.nn.functional.normalize(W_dec[source], dim=-1)
    e = torch.nn.functional.normalize(W_enc[:, reference].T, dim=-1)
    out = d @ e.T
    out[source[:, None] == reference[None, :]] = float("nan")
    return out


SOLUTIONS: dict[str, Callable[..., Any]] = {
    "check_topk_encode": topk_encode,
    "check_point_biserial": point_biserial,
    "check_mean_nearest_cosine": mean_nearest_cosine,
    "check_spillover_cosines": spillover_cosines,
}


# (check, wrong function, phrases the message must contain)
WRONG: list[tuple[str, str, Callable[..., Any], tuple[str, ...]]] = [
    ("encode: no b_dec", "check_topk_encode",
     lambda h, W, b, bd, k: topk_encode(h, W, b, torch.zeros_like(bd), k), ("subtract b_dec",)),
    ("encode: no ReLU", "check_topk_encode",
     lambda h, W, b, bd, k: torch.zeros(h.shape[0], W.shape[1]).scatter(
         -1, ((h - bd) @ W + b).topk(k).indices, ((h - bd) @ W + b).topk(k).values),
     ("negative encoder bias", "without the ReLU")),
    ("encode: ReLU only", "check_topk_encode", lambda h, W, b, bd, k: torch.relu((h - bd) @ W + b),
     ("6 tokens, k = 4", "no top-k")),
    ("encode: W_enc transposed", "check_topk_encode", lambda h, W, b, bd, k: topk_encode(h, W.T, b, bd, k),
     ("raised RuntimeError",)),
    ("biserial: mean difference", "check_point_biserial",
     lambda c, y: c[y.bool()].mean(0) - c[~y.bool()].mean(0), ("raw difference of the two means",)),
    ("biserial: NaN for constant", "check_point_biserial",
     lambda c, y: ((c - c.mean(0)) * (y.float() - y.float().mean())[:, None]).sum(0)
     / ((c - c.mean(0)).norm(dim=0) * (y.float() - y.float().mean()).norm()),
     ("a constant feature", "nan", "divided by zero")),
    ("biserial: labels flipped", "check_point_biserial", lambda c, y: -point_biserial(c, y),
     ("30 chats, a third labelled 1", "entries differ")),
    ("nearest: raw dot products", "check_mean_nearest_cosine",
     lambda W, s, r: (W[s] @ W[r].T).max(1).values.mean(), ("disjoint sets", "dot products")),
    ("nearest: self-pairs", "check_mean_nearest_cosine",
     lambda W, s, r: (torch.nn.functional.normalize(W[s], dim=-1)
                      @ torch.nn.functional.normalize(W[r], dim=-1).T).max(1).values.mean(),
     ("one source feature is also a reference feature", "cosine 1 with itself")),
    ("nearest: mean of all cosines", "check_mean_nearest_cosine",
     lambda W, s, r: (torch.nn.functional.normalize(W[s], dim=-1)
                      @ torch.nn.functional.normalize(W[r], dim=-1).T).mean(),
     ("disjoint sets", "average all cosines")),
    ("spillover: decoder-decoder", "check_spillover_cosines",
     lambda We, Wd, s, r: spillover_cosines(Wd.T, Wd, s, r), ("random untied SAE", "decoder rows with decoder rows")),
    ("spillover: no NaN on self-pairs", "check_spillover_cosines",
     lambda We, Wd, s, r: spillover_cosines(We, Wd, s, r).nan_to_num(1.0), ("set those entries to NaN",)),
    ("spillover: roles swapped", "check_spillover_cosines",
     lambda We, Wd, s, r: spillover_cosines(Wd.T, We.T, s, r), ("swap the roles",)),
]


def test_the_encoder_reference_is_sae_lens_topk() -> None:
    generator = torch.Generator().manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=12, d_sae=48, k=5, dtype="float32", device="cpu"))
    with torch.no_grad():
        for parameter in (sae.W_enc, sae.b_enc, sae.b_dec):
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    h = torch.randn(7, 12, generator=generator)
    expected = sae.encode(h).detach()
    got = ch2.reference_topk_encode(h, sae.W_enc.detach(), sae.b_enc.detach(), sae.b_dec.detach(), 5)
    assert torch.allclose(got, expected, atol=1e-5)
    assert int((got > 0).sum(-1).max()) <= 5
