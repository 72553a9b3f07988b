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
   permutation test and a bootstrap interval.

It sits at the geometry stage of the data path and imports only earlier stages.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch

from geomis.activations import ActivationConfig, TokenActivations, collect_residuals_by_layer
from geomis.chat.records import DOMAIN_DATASETS, REFERENCE_DATASETS, ChatRecord, load_bundled
from geomis.features.geometry import GeometryComparison, compare_geometry, nearest_cosines
from geomis.features.sets import FeatureSet, Statistic, select_contrast_features
from geomis.models.registry import LoadedModel
from geomis.sae.codes import SAECodes, encode_tokens
from geomis.sae.loading import LoadedSAE

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
]

@dataclass(frozen=True)
class OverlapConfig:
    """What the overlap study reads and how it selects and compares feature sets."""

    domains: tuple[str, ...] = tuple(DOMAIN_DATASETS)
    pairs_per_domain: int | None = 150
    """Prompt pairs drawn per domain (the same rows from the inducing and the control file); None = all."""
    reference_samples: int | None = 200
    """Rows drawn from each reference set; None = all."""
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


@dataclass(frozen=True)
class StudyData:
    """The chats of every set in the study, by bundled dataset name, and which domain each pair belongs to."""

    sets: dict[str, tuple[ChatRecord, ...]]
    domains: dict[str, tuple[str, str]]

    @property
    def reference(self) -> tuple[str, str]:
        """(toxic, neutral) set names."""
        return REFERENCE_DATASETS

    def sizes(self) -> pd.DataFrame:
        """One row per set: name, role in the study, number of chats."""
        rows = []
        for domain, (inducing, control) in self.domains.items():
            rows.append({"set": inducing, "domain": domain, "role": "inducing", "chats": len(self.sets[inducing])})
            rows.append({"set": control, "domain": domain, "role": "control", "chats": len(self.sets[control])})
        for name, role in zip(REFERENCE_DATASETS, ("toxic reference", "neutral reference"), strict=True):
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
    for name in REFERENCE_DATASETS:
        records = load_bundled(name)
        sets[name] = tuple(records[i] for i in _subset(len(records), config.reference_samples, rng))
    return StudyData(sets=sets, domains=domains)


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
    """Encode every set's tokens at the SAE's layer and summarise them per chat."""
    if sae.layer is None:
        raise ValueError(f"SAE {sae.name} does not say which layer it reads")
    codes = {}
    for name, per_layer in activations.items():
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
    toxic_name, neutral_name = REFERENCE_DATASETS
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
