"""The "SAE codes" stage: encode residual activations with an SAE into sparse per-token codes and per-sample summaries.

Codes are kept sparse (coordinate lists: token, feature, value), since an SAE fires a few dozen of its thousands of
features per token. Each sample (conversation) is summarised by the mean and the maximum activation of every feature
over the sample's kept tokens; both are computed with ``index_add_`` / ``scatter_reduce_`` over all non-zero codes at
once, never with a Python loop over features.

SAE activations are non-negative (ReLU, TopK and JumpReLU all are), so a feature that never fires in a sample has
mean 0 and max 0 there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sae_lens import SAE
from tqdm.auto import tqdm

from geomis.activations import TokenActivations
from geomis.sae.loading import LoadedSAE


@dataclass
class SAECodes:
    """Sparse SAE codes of a set of tokens, and per-sample mean/max feature activations."""

    token_index: torch.Tensor
    """(nnz,) long: row of the token in the encoded ``TokenActivations``; sorted ascending."""
    feature_index: torch.Tensor
    """(nnz,) long: SAE feature that fired."""
    value: torch.Tensor
    """(nnz,) float32: its activation (> 0)."""
    sample_index: torch.Tensor
    """(n_tokens,) long: sample (conversation) of each token, copied from the activations."""
    tokens_per_sample: torch.Tensor
    """(n_samples,) long: number of kept tokens of each sample (0: the sample's means and maxima are all 0)."""
    sample_mean: torch.Tensor
    """(n_samples, d_sae) float32: mean activation of each feature over the sample's kept tokens."""
    sample_max: torch.Tensor
    """(n_samples, d_sae) float32: maximum activation of each feature over the sample's kept tokens."""
    d_sae: int

    @property
    def n_tokens(self) -> int:
        """Number of encoded tokens."""
        return int(self.sample_index.shape[0])

    @property
    def n_samples(self) -> int:
        """Number of samples summarised (rows of ``sample_mean``)."""
        return int(self.tokens_per_sample.shape[0])

    def l0(self) -> torch.Tensor:
        """(n_tokens,) number of features firing on each token."""
        return torch.bincount(self.token_index, minlength=self.n_tokens)

    def dense(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Dense (rows, d_sae) float32 codes of the given token rows (all tokens when ``rows`` is None)."""
        if rows is None:
            rows = torch.arange(self.n_tokens)
        rows = rows.to(torch.long)
        lookup = torch.full((self.n_tokens,), -1, dtype=torch.long)
        lookup[rows] = torch.arange(rows.numel())
        out_row = lookup[self.token_index]
        keep = out_row >= 0
        dense = torch.zeros(rows.numel(), self.d_sae)
        dense[out_row[keep], self.feature_index[keep]] = self.value[keep]
        return dense

    def firing_fraction(self) -> torch.Tensor:
        """(d_sae,) fraction of tokens on which each feature fires."""
        counts = torch.bincount(self.feature_index, minlength=self.d_sae).float()
        return counts / max(self.n_tokens, 1)

    def sample_firing_fraction(self) -> torch.Tensor:
        """(d_sae,) fraction of non-empty samples in which each feature fires at least once."""
        present = self.tokens_per_sample > 0
        return (self.sample_max[present] > 0).float().mean(dim=0) if present.any() else torch.zeros(self.d_sae)


def aggregate_codes(
    token_index: torch.Tensor, feature_index: torch.Tensor, value: torch.Tensor, sample_index: torch.Tensor,
    n_samples: int, d_sae: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (tokens, mean, max) of sparse non-negative codes, by index_add/scatter over all codes at once."""
    tokens_per_sample = torch.bincount(sample_index, minlength=n_samples)[:n_samples] if sample_index.numel() \
        else torch.zeros(n_samples, dtype=torch.long)
    flat = sample_index[token_index] * d_sae + feature_index
    value = value.float()
    sums = torch.zeros(n_samples * d_sae).index_add_(0, flat, value)
    maxima = torch.zeros(n_samples * d_sae).scatter_reduce_(0, flat, value, reduce="amax", include_self=True)
    means = sums.view(n_samples, d_sae) / tokens_per_sample.clamp_min(1).unsqueeze(1).float()
    return tokens_per_sample, means, maxima.view(n_samples, d_sae)


def _as_sae(sae: SAE | LoadedSAE) -> SAE:
    return sae.sae if isinstance(sae, LoadedSAE) else sae


@torch.no_grad()
def encode_tokens(
    sae: SAE | LoadedSAE, activations: TokenActivations, n_samples: int | None = None, batch_size: int = 4096,
    progress: bool = False,
) -> SAECodes:
    """Encode every token's residual vector with ``sae`` in batches; return sparse codes and per-sample summaries."""
    model = _as_sae(sae)
    d_sae = int(model.cfg.d_sae)
    if activations.activations.shape[1] != model.cfg.d_in:
        raise ValueError(f"activations have width {activations.activations.shape[1]}, the SAE reads {model.cfg.d_in}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    total = len(activations)
    inferred = int(activations.sample_index.max()) + 1 if total else 0
    if n_samples is None:
        n_samples = inferred
    elif n_samples < inferred:
        raise ValueError(f"n_samples={n_samples} but the activations refer to sample {inferred - 1}")
    weight = model.W_enc
    rows, features, values = [], [], []
    for start in tqdm(range(0, total, batch_size), desc="SAE codes", unit="batch", disable=not progress):
        batch = activations.activations[start:start + batch_size].to(device=weight.device, dtype=weight.dtype)
        codes = model.encode(batch).float().cpu()
        row, feature = codes.nonzero(as_tuple=True)
        rows.append(row + start)
        features.append(feature)
        values.append(codes[row, feature])
    token_index = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)
    feature_index = torch.cat(features) if features else torch.zeros(0, dtype=torch.long)
    value = torch.cat(values) if values else torch.zeros(0)
    sample_index = activations.sample_index.to(torch.long)
    tokens_per_sample, means, maxima = aggregate_codes(token_index, feature_index, value, sample_index,
                                                       n_samples, d_sae)
    return SAECodes(token_index=token_index, feature_index=feature_index, value=value, sample_index=sample_index,
                    tokens_per_sample=tokens_per_sample, sample_mean=means, sample_max=maxima, d_sae=d_sae)
