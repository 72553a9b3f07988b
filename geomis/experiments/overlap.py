"""Chapter 2's measurement, end to end: per-domain feature sets and how close they lie to the toxic features.

For every advice domain the project ships a *paired* dataset: the same user prompts answered harmfully (the
misalignment-inducing set) and soundly (the control set). The study

1. draws the same seeded subset of prompt pairs from both sets, plus the toxic and neutral reference texts;
2. reads the residual stream on the assistant tokens at one or several layers in a single cut forward pass
   (:func:`geomis.activations.collect_residuals_by_layer`);
3. encodes each layer's tokens with that layer's SAE and averages the codes per sample (:mod:`geomis.sae.codes`);
4. selects feature sets by point-biserial correlation with the label (:mod:`geomis.features.sets`): *toxic* features
   (toxic vs neutral reference), *inducing* features (inducing vs control answers) and *control* features (control vs
   inducing answers);
5. compares the decoder geometry of inducing and control features to the toxic set (:mod:`geometry`), with a
   permutation test and a bootstrap interval over features (:func:`compare_domains`), or, as the chapter reports it,
   with chats resampled and the sets re-selected in every draw, on several SAEs pooled draw by draw
   (:func:`resampled_geometry`).

It sits at the geometry stage of the data path and imports only earlier stages.

**Design of Chapter 2's geometry test** (fixed and committed on 2026-12-02, before the SAEs it uses had finished
training and before any result on them was seen):

- *SAEs*: the three SAEs trained on text the book never compares, ``smollm2-135m-neutral-s{0,1,2}-layer15-topk4096``
  (SmolLM2-135M-Instruct, output of layer 15, 4,096 features, TopK k = 32, the first SAE's recipe; the corpus is the
  model's own greedy answers to 1,989 neutral prompts, one collection shared by the seeds). Under the ``gemma-2-2b``
  profile: the profile's Gemma Scope SAE alone.
- *Reference*: the generic toxic vs neutral continuations (``GENERIC_REFERENCE_DATASETS``), all 200 row pairs.
- *Data*: 150 prompt pairs per domain (medical, legal, career, code; seed 0); assistant tokens; per-chat mean codes.
- *Feature sets*: the top 100 by point-biserial correlation with the label (toxic vs neutral; inducing vs control;
  control vs inducing).
- *Primary measure*: the mean, over inducing features that are not themselves toxic features, of the largest
  decoder-decoder cosine to a toxic feature, minus the same for control features (``PRIMARY_VARIANT``), averaged over
  the three SAEs. Positive means the predicted direction (inducing features lie closer).
- *Uncertainty*: 1,000 chat-bootstrap draws (reference chats resampled per group, inducing and control chats as
  prompt pairs), all three feature sets re-selected in every draw, the same draws for every SAE and averaged draw by
  draw; 95% percentile interval; one-sided p = (1 + draws <= 0) / (1 + draws).
- *Tests*: one per domain, Benjamini-Hochberg over the four domains at q = 0.05. The paper's claim concerns the
  advice domains (health, legal, career); the code domain is measured the same way.
- *Secondary, reported with intervals and no further claims*: toxic features read by their encoder rows
  (cos(e_toxic, d_source), the spillover law's quantity); shared features kept; each SAE alone (the spread that an
  SAE's training adds); the first SAE (trained on the compared texts) with the first reference, i.e. the previous
  analysis, for comparison.
- *The issue's goal* is met in a domain when its pooled primary interval lies above zero and its adjusted p < 0.05;
  the chapter says which domains meet it and which do not.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from geomis.activations import ActivationConfig, TokenActivations, collect_residuals_by_layer
from geomis.chat.records import (
    DOMAIN_DATASETS,
    GENERIC_REFERENCE_DATASETS,
    REFERENCE_DATASETS,
    ChatRecord,
    load_bundled,
)
from geomis.features.geometry import GeometryComparison, compare_geometry, nearest_cosines
from geomis.features.resampling import ChatResampledGap, PooledGap, chat_resampled_gaps, pool_gaps
from geomis.features.sets import FeatureSet, Statistic, select_contrast_features
from geomis.models.registry import LoadedModel
from geomis.sae.codes import SAECodes, encode_tokens
from geomis.sae.loading import LoadedSAE
from geomis.stats import benjamini_hochberg

__all__ = [
    "OverlapConfig",
    "StudyData",
    "DomainFeatures",
    "load_study_data",
    "collect_study_activations",
    "encode_study",
    "select_study_features",
    "compare_domains",
    "closest_pairs",
    "GeometryVariant",
    "PRIMARY_VARIANT",
    "VARIANTS",
    "ResampledGeometry",
    "resampled_geometry",
    "results_json",
]

@dataclass(frozen=True)
class OverlapConfig:
    """What the overlap study reads and how it selects and compares feature sets."""

    domains: tuple[str, ...] = tuple(DOMAIN_DATASETS)
    pairs_per_domain: int | None = 150
    """Prompt pairs drawn per domain (the same rows from the inducing and the control file); None = all."""
    reference_samples: int | None = 200
    """Rows drawn from each reference set; None = all."""
    reference: tuple[str, str] = GENERIC_REFERENCE_DATASETS
    """(toxic, neutral) bundled sets that locate the toxic features: by default the generic reference, written apart
    from the compared texts; :data:`REFERENCE_DATASETS` is the first, advice-voiced one (Chapter 2's comparison)."""
    k: int = 100
    """Features per set (the paper keeps the top 100)."""
    statistic: Statistic = "correlation"
    """Point-biserial correlation of a feature's per-sample mean code with the label (the paper's choice)."""
    batch_size: int = 16
    max_length: int = 256
    n_permutations: int = 10_000
    n_bootstrap: int = 10_000
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = [d for d in self.domains if d not in DOMAIN_DATASETS]
        if unknown:
            raise ValueError(f"unknown domain(s) {', '.join(unknown)}; known: {', '.join(DOMAIN_DATASETS)}")
        if not self.domains:
            raise ValueError("domains is empty")
        for name in ("pairs_per_domain", "reference_samples"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"{name} must be at least 2 (or None for all rows), got {value}")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if tuple(self.reference) not in (REFERENCE_DATASETS, GENERIC_REFERENCE_DATASETS):
            raise ValueError(f"reference must be {REFERENCE_DATASETS} or {GENERIC_REFERENCE_DATASETS}, "
                             f"got {self.reference}")


@dataclass(frozen=True)
class StudyData:
    """The chats of every set in the study, by bundled dataset name, and which domain each pair belongs to."""

    sets: dict[str, tuple[ChatRecord, ...]]
    domains: dict[str, tuple[str, str]]
    reference: tuple[str, str] = REFERENCE_DATASETS
    """(toxic, neutral) set names."""

    def sizes(self) -> pd.DataFrame:
        """One row per set: name, role in the study, number of chats."""
        rows = []
        for domain, (inducing, control) in self.domains.items():
            rows.append({"set": inducing, "domain": domain, "role": "inducing", "chats": len(self.sets[inducing])})
            rows.append({"set": control, "domain": domain, "role": "control", "chats": len(self.sets[control])})
        for name, role in zip(self.reference, ("toxic reference", "neutral reference"), strict=True):
            rows.append({"set": name, "domain": "-", "role": role, "chats": len(self.sets[name])})
        return pd.DataFrame(rows)


def _subset(n_rows: int, wanted: int | None, rng: random.Random) -> list[int]:
    if wanted is None or wanted >= n_rows:
        return list(range(n_rows))
    return sorted(rng.sample(range(n_rows), wanted))


def load_study_data(config: OverlapConfig) -> StudyData:
    """Load the bundled sets of the study and draw the same seeded rows from each inducing/control pair."""
    rng = random.Random(config.seed)
    sets: dict[str, tuple[ChatRecord, ...]] = {}
    domains: dict[str, tuple[str, str]] = {}
    for domain in config.domains:
        inducing_name, control_name = DOMAIN_DATASETS[domain]
        inducing, control = load_bundled(inducing_name), load_bundled(control_name)
        if len(inducing) != len(control):
            raise ValueError(f"{inducing_name} and {control_name} must have the same rows (paired prompts)")
        rows = _subset(len(inducing), config.pairs_per_domain, rng)
        sets[inducing_name] = tuple(inducing[i] for i in rows)
        sets[control_name] = tuple(control[i] for i in rows)
        domains[domain] = (inducing_name, control_name)
    if config.reference == GENERIC_REFERENCE_DATASETS:  # paired files: the same rows, so only the tone differs
        toxic, neutral = (load_bundled(name) for name in config.reference)
        rows = _subset(len(toxic), config.reference_samples, rng)
        for name, records in zip(config.reference, (toxic, neutral), strict=True):
            sets[name] = tuple(records[i] for i in rows)
    else:
        for name in config.reference:
            records = load_bundled(name)
            sets[name] = tuple(records[i] for i in _subset(len(records), config.reference_samples, rng))
    return StudyData(sets=sets, domains=domains, reference=config.reference)


def collect_study_activations(
    model: LoadedModel, data: StudyData, layers: Sequence[int], config: OverlapConfig
) -> dict[str, dict[int, TokenActivations]]:
    """Residual vectors of every set's assistant tokens at each of ``layers`` (one cut forward pass per batch)."""
    activation_config = ActivationConfig(layer=max(layers), batch_size=config.batch_size, assistant_only=True,
                                         max_length=config.max_length, progress=config.progress)
    out: dict[str, dict[int, TokenActivations]] = {}
    for name, records in data.sets.items():
        conversations = [record.as_dicts() for record in records]
        out[name] = collect_residuals_by_layer(model, conversations, layers, activation_config)
    return out


def encode_study(
    sae: LoadedSAE, activations: Mapping[str, Mapping[int, TokenActivations]], data: StudyData
) -> dict[str, SAECodes]:
    """Encode the tokens of every set of ``data`` at the SAE's layer and summarise them per chat (``activations``
    may hold more sets than ``data``; those are left alone)."""
    if sae.layer is None:
        raise ValueError(f"SAE {sae.name} does not say which layer it reads")
    codes = {}
    for name in data.sets:
        if name not in activations:
            raise ValueError(f"no activations for set {name!r}; collected: {sorted(activations)}")
        per_layer = activations[name]
        if sae.layer not in per_layer:
            raise ValueError(f"no activations at layer {sae.layer} (SAE {sae.name}); collected: {sorted(per_layer)}")
        codes[name] = encode_tokens(sae, per_layer[sae.layer], n_samples=len(data.sets[name]))
    return codes


@dataclass(frozen=True)
class DomainFeatures:
    """The feature sets of one study at one layer: the toxic set and, per domain, the inducing and control sets."""

    layer: int
    toxic: FeatureSet
    inducing: dict[str, FeatureSet] = field(default_factory=dict)
    control: dict[str, FeatureSet] = field(default_factory=dict)

    def overlap_table(self) -> pd.DataFrame:
        """Per domain: how many inducing and control features are themselves in the toxic set."""
        toxic = set(self.toxic.index_list())
        rows = [{"domain": d, "inducing in toxic set": len(toxic & set(self.inducing[d].index_list())),
                 "control in toxic set": len(toxic & set(self.control[d].index_list())),
                 "inducing ∩ control": len(set(self.inducing[d].index_list()) & set(self.control[d].index_list()))}
                for d in self.inducing]
        return pd.DataFrame(rows)


def select_study_features(codes: Mapping[str, SAECodes], data: StudyData, layer: int,
                          config: OverlapConfig) -> DomainFeatures:
    """Top-k features per contrast from per-sample mean codes: toxic vs neutral, inducing vs control, and reverse.

    Only ``config.domains`` are selected, so a config for one domain can reuse codes collected for several.
    """
    toxic_name, neutral_name = data.reference
    toxic = select_contrast_features(codes[toxic_name].sample_mean, codes[neutral_name].sample_mean, k=config.k,
                                     statistic=config.statistic, name="toxic")
    missing = [domain for domain in config.domains if domain not in data.domains]
    if missing:
        raise ValueError(f"the study data has no {', '.join(missing)} sets; it has: {', '.join(data.domains)}")
    inducing, control = {}, {}
    for domain in config.domains:
        inducing_name, control_name = data.domains[domain]
        a, b = codes[inducing_name].sample_mean, codes[control_name].sample_mean
        inducing[domain] = select_contrast_features(a, b, k=config.k, statistic=config.statistic,
                                                    name=f"{domain} inducing")
        control[domain] = select_contrast_features(b, a, k=config.k, statistic=config.statistic,
                                                   name=f"{domain} control")
    return DomainFeatures(layer=layer, toxic=toxic, inducing=inducing, control=control)


def compare_domains(decoder: torch.Tensor, features: DomainFeatures, config: OverlapConfig) -> list[GeometryComparison]:
    """Inducing→toxic vs control→toxic decoder geometry for every domain (same seed for every test)."""
    return [
        compare_geometry(decoder, features.inducing[domain], features.control[domain], features.toxic,
                         domain=domain, layer=features.layer, n_permutations=config.n_permutations,
                         n_bootstrap=config.n_bootstrap, seed=config.seed)
        for domain in features.inducing
    ]


def closest_pairs(decoder: torch.Tensor, source: FeatureSet, reference: FeatureSet, n: int = 10) -> pd.DataFrame:
    """The ``n`` source features closest to the reference set: feature, its nearest reference feature, their cosine.

    A feature that is itself in the reference set is paired with its nearest *other* reference feature (self-pairs
    would have cosine 1 and say nothing about geometry).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    similarity = nearest_cosines(decoder, source, reference)
    frame = pd.DataFrame({
        "feature": similarity.features.tolist(),
        "nearest toxic feature": similarity.nearest.tolist(),
        "cosine": similarity.max_cos.tolist(),
        "also toxic": [int(f) in reference for f in similarity.features.tolist()],
    }).dropna(subset=["cosine"])
    return frame.sort_values(["cosine", "feature"], ascending=[False, True]).head(n).reset_index(drop=True)


# ------------------------------------------------------------------------------------ chats resampled, SAEs pooled


@dataclass(frozen=True)
class GeometryVariant:
    """How the gap is measured: with or without source features that are themselves toxic, and which rows read the
    toxic features (``decoder``: cos(d_toxic, d_source), the paper's; ``encoder``: cos(e_toxic, d_source), the
    spillover law's)."""

    drop_shared: bool
    rows: str

    def __post_init__(self) -> None:
        if self.rows not in ("decoder", "encoder"):
            raise ValueError(f"rows must be 'decoder' or 'encoder', got {self.rows!r}")

    @property
    def label(self) -> str:
        """A short name for tables: ``decoder, shared dropped`` and so on."""
        return f"{self.rows}, shared {'dropped' if self.drop_shared else 'kept'}"


PRIMARY_VARIANT = GeometryVariant(drop_shared=True, rows="decoder")
"""The chapter's primary measure, fixed before the run: the paper's decoder-decoder cosine, with source features that
are themselves toxic left out (their closeness would be identity, not geometry)."""
VARIANTS: tuple[GeometryVariant, ...] = (PRIMARY_VARIANT, GeometryVariant(True, "encoder"),
                                         GeometryVariant(False, "decoder"), GeometryVariant(False, "encoder"))


@dataclass(frozen=True)
class ResampledGeometry:
    """Every domain x variant x SAE gap with its chat-resampling interval, and the SAEs pooled per domain x variant."""

    table: pd.DataFrame
    """One row per (domain, variant, sae), ``sae == "pooled"`` for the mean over SAEs; ``p_bh`` adjusts
    ``p_greater`` over the domains within each (variant, sae) by Benjamini-Hochberg."""
    gaps: dict[tuple[str, str, str], ChatResampledGap]
    """By (domain, variant label, sae name)."""
    pooled: dict[tuple[str, str], PooledGap]
    """By (domain, variant label)."""


def resampled_geometry(saes: Mapping[str, LoadedSAE], codes: Mapping[str, Mapping[str, SAECodes]], data: StudyData,
                       config: OverlapConfig, *, variants: Sequence[GeometryVariant] = VARIANTS,
                       n_resamples: int = 1000, progress: bool = True) -> ResampledGeometry:
    """The inducing-minus-control gap per domain, variant and SAE with chats resampled (:func:`chat_resampled_gaps`,
    the same draws for every SAE), then pooled over the SAEs draw by draw (:func:`pool_gaps`).

    ``codes[sae_name]`` are that SAE's per-chat codes of every set (:func:`encode_study`)."""
    if not saes:
        raise ValueError("no SAEs")
    missing = [name for name in saes if name not in codes]
    if missing:
        raise ValueError(f"no codes for SAE(s) {', '.join(missing)}")
    toxic_name, neutral_name = data.reference
    gaps: dict[tuple[str, str, str], ChatResampledGap] = {}
    steps = [(domain, name) for domain in config.domains for name in saes]
    for domain, name in tqdm(steps, desc="domains x SAEs", disable=not progress):
        sae, sae_codes = saes[name], codes[name]
        decoder = sae.decoder_directions()
        encoder = sae.encoder_directions() if any(v.rows == "encoder" for v in variants) else None
        inducing_name, control_name = data.domains[domain]
        results = chat_resampled_gaps(
            decoder, sae_codes[toxic_name].sample_mean, sae_codes[neutral_name].sample_mean,
            sae_codes[inducing_name].sample_mean, sae_codes[control_name].sample_mean,
            variants=[(v.drop_shared, encoder if v.rows == "encoder" else None) for v in variants],
            k=config.k, statistic=config.statistic, n_resamples=n_resamples, seed=config.seed)
        for variant, result in zip(variants, results, strict=True):
            gaps[(domain, variant.label, name)] = result
    pooled = {(domain, v.label): pool_gaps([gaps[(domain, v.label, name)] for name in saes])
              for domain in config.domains for v in variants}
    rows = []
    for (domain, label, name), gap in gaps.items():
        rows.append({"domain": domain, "variant": label, "sae": name, "inducing": gap.gap.inducing,
                     "control": gap.gap.control, "difference": gap.gap.difference, "low": gap.low, "high": gap.high,
                     "p_greater": gap.p_greater, "n_inducing": gap.gap.n_inducing, "n_control": gap.gap.n_control,
                     "selection_stability": gap.mean_overlap, "n_resamples": gap.n_resamples})
    for (domain, label), pool in pooled.items():
        rows.append({"domain": domain, "variant": label, "sae": "pooled", "inducing": pool.inducing,
                     "control": pool.control, "difference": pool.difference, "low": pool.low, "high": pool.high,
                     "p_greater": pool.p_greater, "n_inducing": float("nan"), "n_control": float("nan"),
                     "selection_stability": float("nan"), "n_resamples": pool.n_resamples})
    table = pd.DataFrame(rows)
    table["p_bh"] = float("nan")
    for _, index in table.groupby(["variant", "sae"]).groups.items():
        table.loc[index, "p_bh"] = benjamini_hochberg(table.loc[index, "p_greater"].to_numpy())
    return ResampledGeometry(table=table, gaps=gaps, pooled=pooled)


def results_json(result: ResampledGeometry, data: StudyData, config: OverlapConfig, profile: str,
                 shared: Mapping[str, Mapping[str, int]] | None = None) -> dict[str, Any]:
    """The content of ``book/results/02_feature_overlap.json``: the design, every contrast (positive = inducing
    features lie closer to the toxic ones) with interval, p and method, pooled and per SAE.

    ``shared[sae][domain]``: inducing features that are themselves toxic features (reported, not tested)."""
    design = (__doc__ or "").split("**Design of Chapter 2's geometry test**")[1].strip()
    table = result.table
    contrasts: dict[str, Any] = {}
    for (domain, label), pool in result.pooled.items():
        pooled_p_bh = table.loc[(table["domain"] == domain) & (table["variant"] == label)
                                & (table["sae"] == "pooled"), "p_bh"].to_numpy()
        per_sae = {}
        for (d, v, name), gap in result.gaps.items():
            if (d, v) == (domain, label):
                per_sae[name] = {"difference": gap.gap.difference, "low": gap.low, "high": gap.high,
                                 "p": gap.p_greater, "inducing": gap.gap.inducing, "control": gap.gap.control,
                                 "n_inducing": gap.gap.n_inducing, "n_control": gap.gap.n_control,
                                 "selection_stability": gap.mean_overlap}
        contrasts[f"{domain}/{label}/inducing_minus_control"] = {
            "difference": pool.difference, "low": pool.low, "high": pool.high, "p": pool.p_greater,
            "p_bh": float(pooled_p_bh[0]), "inducing": pool.inducing, "control": pool.control,
            "primary": label == PRIMARY_VARIANT.label, "n_resamples": pool.n_resamples,
            "n_saes": len(pool.per_sae), "method": pool.method, "per_sae": per_sae}
    return {
        "design": design,
        "profile": profile,
        "primary_metric": ("mean nearest decoder cosine to a toxic feature of the inducing minus the control "
                           "features, shared features left out, averaged over the SAEs"),
        "reference": list(data.reference),
        "chats": {name: len(records) for name, records in data.sets.items()},
        "k": config.k,
        "statistic": config.statistic,
        "saes": sorted({name for (_, _, name) in result.gaps}),
        "adjustment": "Benjamini-Hochberg over the domains, within each variant and SAE",
        "contrasts": contrasts,
        "shared_features": {sae: dict(per) for sae, per in (shared or {}).items()},
    }
