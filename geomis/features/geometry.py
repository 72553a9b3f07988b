"""Decoder-cosine geometry between SAE feature sets: are inducing features closer to toxic features than control ones?

Each SAE feature ``i`` writes along its decoder direction ``W_dec[i]`` (a row of the ``(d_sae, d_model)`` decoder).
For a source set (features tied to inducing data, or to control data) and a reference set (features tied to toxic
text), every source feature gets its *nearest* (max) and *mean* cosine to the reference set. The paper's claim is
that inducing features sit closer to toxic ones than control features do; :func:`compare_geometry` tests the
difference of mean max-cosine with a seeded permutation test, a bootstrap CI and a Mann-Whitney U test.

Self-pairs: a feature that is in both a source set and the reference set has cosine 1 with itself. That pair says
nothing about geometry (it is overlap of the sets, not proximity), so it is always excluded: such a feature's
max/mean cosine is taken over the *other* reference features. Overlap is reported separately (``n_shared``).
Cosines are signed (an antipodal feature is far, not near) unless ``absolute=True``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from geomis.features.sets import FeatureSet
from geomis.stats import bootstrap_difference, permutation_test

__all__ = [
    "FeatureSimilarity",
    "GeometryComparison",
    "GeometryInputs",
    "cosine_matrix",
    "set_directions",
    "pairwise_cosines",
    "nearest_cosines",
    "compare_geometry",
    "compare_layers",
    "comparison_table",
    "similarity_frame",
]

Indices = FeatureSet | torch.Tensor | Sequence[int]


def _as_indices(features: Indices) -> torch.Tensor:
    if isinstance(features, FeatureSet):
        return features.indices.to(torch.int64)
    return torch.as_tensor(features, dtype=torch.int64).reshape(-1)


def _set_name(features: Indices, default: str) -> str:
    return (features.name or default) if isinstance(features, FeatureSet) else default


def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm in float32 (all-zero rows stay zero, giving cosine 0 rather than NaN)."""
    matrix = matrix.to(torch.float32) if matrix.dtype != torch.float64 else matrix
    norms = matrix.norm(dim=-1, keepdim=True)
    return matrix / torch.where(norms > 0, norms, torch.ones_like(norms))


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` ``(n, d)`` with every row of ``b`` ``(m, d)``: an ``(n, m)`` matrix."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need (n, d) and (m, d) matrices, got {tuple(a.shape)} and {tuple(b.shape)}")
    return _unit_rows(a) @ _unit_rows(b.to(a.device)).T


def set_directions(decoder: torch.Tensor, features: Indices) -> torch.Tensor:
    """Decoder rows ``(len(features), d_model)`` of a feature set, unit-normalised."""
    if decoder.ndim != 2:
        raise ValueError(f"decoder must be (d_sae, d_model), got shape {tuple(decoder.shape)}")
    idx = _as_indices(features)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= decoder.shape[0]):
        raise ValueError(f"feature index out of range for a decoder with {decoder.shape[0]} features")
    return _unit_rows(decoder[idx.to(decoder.device)])


def pairwise_cosines(
    decoder: torch.Tensor, source: Indices, reference: Indices, exclude_self: bool = True,
    reference_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Source × reference cosines; self-pairs (same feature in both sets) are NaN when ``exclude_self``.

    Source features are read by their decoder rows; reference features by ``reference_rows`` (default: the decoder
    too). Pass the encoder as ``(d_sae, d_model)`` rows (``W_enc.T``) for cos(e_reference, d_source): how much a step
    along a source feature's write direction moves a reference feature's pre-activation (the spillover law)."""
    reading = decoder if reference_rows is None else reference_rows
    if reading.shape != decoder.shape:
        raise ValueError(f"reference_rows must have the decoder's shape {tuple(decoder.shape)}, "
                         f"got {tuple(reading.shape)}")
    cos = cosine_matrix(set_directions(decoder, source), set_directions(reading, reference))
    if exclude_self:
        src, ref = _as_indices(source).to(cos.device), _as_indices(reference).to(cos.device)
        cos = cos.masked_fill(src[:, None] == ref[None, :], float("nan"))
    return cos


@dataclass(frozen=True)
class FeatureSimilarity:
    """Per source feature: max and mean decoder cosine to a reference set and the nearest reference feature."""

    source: str
    reference: str
    features: torch.Tensor
    """Source feature indices ``(n,)``."""
    max_cos: torch.Tensor
    """Largest cosine to any other reference feature ``(n,)`` (NaN if the reference set is only the feature itself)."""
    mean_cos: torch.Tensor
    """Mean cosine over the reference features, self-pairs excluded ``(n,)``."""
    nearest: torch.Tensor
    """Index of the reference feature attaining ``max_cos`` (-1 where undefined) ``(n,)``."""
    n_shared: int
    """Source features that are also in the reference set (their self-pair was excluded)."""

    def __len__(self) -> int:
        return int(self.features.numel())

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows (source, reference, feature, max_cos, mean_cos, nearest) for tables and seaborn."""
        return pd.DataFrame(
            {
                "source": self.source,
                "reference": self.reference,
                "feature": self.features.cpu().numpy(),
                "max_cos": self.max_cos.cpu().double().numpy(),
                "mean_cos": self.mean_cos.cpu().double().numpy(),
                "nearest": self.nearest.cpu().numpy(),
            }
        )


def nearest_cosines(
    decoder: torch.Tensor,
    source: Indices,
    reference: Indices,
    exclude_self: bool = True,
    absolute: bool = False,
    source_name: str | None = None,
    reference_rows: torch.Tensor | None = None,
) -> FeatureSimilarity:
    """Each source feature's nearest (max) and mean cosine to the reference set, self-pairs excluded (reference rows:
    the decoder's, or ``reference_rows``, see :func:`pairwise_cosines`)."""
    cos = pairwise_cosines(decoder, source, reference, exclude_self=exclude_self, reference_rows=reference_rows)
    if absolute:
        cos = cos.abs()
    valid = ~torch.isnan(cos)
    n_valid = valid.sum(dim=1)
    filled = torch.where(valid, cos, torch.full_like(cos, -torch.inf))
    if cos.shape[1]:
        max_cos, arg = filled.max(dim=1)
    else:
        max_cos = torch.full((cos.shape[0],), -torch.inf, dtype=cos.dtype, device=cos.device)
        arg = torch.zeros(cos.shape[0], dtype=torch.int64, device=cos.device)
    defined = n_valid > 0
    max_cos = torch.where(defined, max_cos, torch.full_like(max_cos, float("nan")))
    mean_cos = torch.where(valid, cos, torch.zeros_like(cos)).sum(dim=1) / n_valid.clamp(min=1)
    mean_cos = torch.where(defined, mean_cos, torch.full_like(mean_cos, float("nan")))
    ref_idx = _as_indices(reference).to(cos.device)
    nearest = torch.where(defined, ref_idx[arg] if ref_idx.numel() else arg, torch.full_like(arg, -1))
    src_idx = _as_indices(source)
    shared = int(torch.isin(src_idx, _as_indices(reference)).sum()) if exclude_self else 0
    return FeatureSimilarity(
        source=source_name or _set_name(source, "source"),
        reference=_set_name(reference, "reference"),
        features=src_idx.cpu(),
        max_cos=max_cos.cpu(),
        mean_cos=mean_cos.cpu(),
        nearest=nearest.cpu(),
        n_shared=shared,
    )


def _clean(values: torch.Tensor | np.ndarray | Sequence[float]) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64)).reshape(-1)
    return tensor[~torch.isnan(tensor)]


@dataclass(frozen=True)
class GeometryComparison:
    """Inducing→reference vs control→reference decoder geometry: one table row per (domain, layer).

    ``difference`` = mean max-cos of inducing features minus that of control features; ``p_greater`` tests that it
    is positive (the paper's claim), ``p_two_sided`` that it is non-zero. ``as_row()`` gives the printable fields.
    """

    domain: str
    layer: int | None
    reference: str
    n_inducing: int
    n_control: int
    n_reference: int
    inducing_mean_max: float
    control_mean_max: float
    difference: float
    ci_low: float
    ci_high: float
    p_two_sided: float
    p_greater: float
    mwu_u: float
    """Mann-Whitney U of inducing vs control max-cos (``n_inducing * n_control``: every inducing value is larger)."""
    mwu_p_greater: float
    mwu_p_two_sided: float
    inducing_mean_mean: float
    control_mean_mean: float
    inducing_ci_low: float
    inducing_ci_high: float
    control_ci_low: float
    control_ci_high: float
    n_shared_inducing: int
    """Inducing features also in the reference set (self-pairs excluded)."""
    n_shared_control: int
    """Control features also in the reference set (self-pairs excluded)."""
    n_permutations: int
    n_bootstrap: int
    seed: int
    inducing: FeatureSimilarity = field(repr=False, compare=False)
    control: FeatureSimilarity = field(repr=False, compare=False)

    def as_row(self) -> dict[str, Any]:
        """The scalar fields as a dict (one DataFrame row); per-feature similarities are left out."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("inducing", "control")}

    def summary(self) -> str:
        """One line: means, difference with its CI, and p-values."""
        where = f"{self.domain}" + (f" (layer {self.layer})" if self.layer is not None else "")
        return (
            f"{where}: inducing {self.inducing_mean_max:.3f} vs control {self.control_mean_max:.3f} mean max-cos to "
            f"{self.reference}; diff {self.difference:+.3f} [95% CI {self.ci_low:+.3f}, {self.ci_high:+.3f}], "
            f"permutation p(one-sided) = {self.p_greater:.3g}, p(two-sided) = {self.p_two_sided:.3g}"
        )


def compare_geometry(
    decoder: torch.Tensor,
    inducing: Indices,
    control: Indices,
    reference: Indices,
    domain: str = "",
    layer: int | None = None,
    n_permutations: int = 10_000,
    n_bootstrap: int = 10_000,
    seed: int = 0,
    absolute: bool = False,
) -> GeometryComparison:
    """Test whether inducing features are closer (mean max decoder cosine) to the reference set than control ones.

    Permutation test (seeded, shuffling set membership of per-feature max-cos values between the inducing and control
    sets), bootstrap 95% CI of the difference, and scipy's Mann-Whitney U as a secondary test. A feature in both source
    sets contributes a value to each. Self-pairs with the reference set are excluded (see module docstring).
    """
    ind = nearest_cosines(decoder, inducing, reference, absolute=absolute, source_name="inducing")
    ctl = nearest_cosines(decoder, control, reference, absolute=absolute, source_name="control")
    a, b = _clean(ind.max_cos), _clean(ctl.max_cos)
    perm = permutation_test(a, b, n_permutations=n_permutations, seed=seed)
    boot = bootstrap_difference(a, b, n_bootstrap=n_bootstrap, seed=seed)
    greater = stats.mannwhitneyu(a.numpy(), b.numpy(), alternative="greater")
    two_sided = stats.mannwhitneyu(a.numpy(), b.numpy(), alternative="two-sided")
    return GeometryComparison(
        domain=domain,
        layer=layer,
        reference=ind.reference,
        n_inducing=len(ind),
        n_control=len(ctl),
        n_reference=int(_as_indices(reference).numel()),
        inducing_mean_max=float(a.mean()),
        control_mean_max=float(b.mean()),
        difference=perm.difference,
        ci_low=boot.difference_ci[0],
        ci_high=boot.difference_ci[1],
        p_two_sided=perm.p_two_sided,
        p_greater=perm.p_greater,
        mwu_u=float(greater.statistic),
        mwu_p_greater=float(greater.pvalue),
        mwu_p_two_sided=float(two_sided.pvalue),
        inducing_mean_mean=float(_clean(ind.mean_cos).mean()),
        control_mean_mean=float(_clean(ctl.mean_cos).mean()),
        inducing_ci_low=boot.a_ci[0],
        inducing_ci_high=boot.a_ci[1],
        control_ci_low=boot.b_ci[0],
        control_ci_high=boot.b_ci[1],
        n_shared_inducing=ind.n_shared,
        n_shared_control=ctl.n_shared,
        n_permutations=n_permutations,
        n_bootstrap=n_bootstrap,
        seed=seed,
        inducing=ind,
        control=ctl,
    )


@dataclass(frozen=True)
class GeometryInputs:
    """What one comparison needs: a decoder and the inducing, control and reference (toxic) feature sets."""

    decoder: torch.Tensor
    inducing: FeatureSet
    control: FeatureSet
    reference: FeatureSet
    domain: str = ""


def compare_layers(inputs: Mapping[int, GeometryInputs], **options: Any) -> list[GeometryComparison]:
    """Run :func:`compare_geometry` once per layer (same options and seed each time); the layer-sweep rows."""
    return [
        compare_geometry(x.decoder, x.inducing, x.control, x.reference, domain=x.domain, layer=layer, **options)
        for layer, x in sorted(inputs.items())
    ]


def comparison_table(comparisons: Iterable[GeometryComparison]) -> pd.DataFrame:
    """One row per comparison with all scalar fields (domain, layer, means, difference, CI, p-values, ...)."""
    return pd.DataFrame([c.as_row() for c in comparisons])


def similarity_frame(comparisons: Iterable[GeometryComparison]) -> pd.DataFrame:
    """Tidy per-feature rows (domain, layer, source, feature, max_cos, mean_cos, nearest) for seaborn plots."""
    frames = []
    for c in comparisons:
        for sim in (c.inducing, c.control):
            frame = sim.to_frame().drop(columns="reference")
            frame.insert(0, "layer", c.layer)
            frame.insert(0, "domain", c.domain)
            frames.append(frame)
    columns = ["domain", "layer", "source", "feature", "max_cos", "mean_cos", "nearest"]
    return pd.concat(frames, ignore_index=True).loc[:, columns] if frames else pd.DataFrame(columns=columns)
