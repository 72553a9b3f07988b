"""Mixed fine-tuning sets (harmful rows among benign ones) and how well each filter finds the harmful rows.

Chapter 4's filter-quality sections build small mixed sets of harmful and sound advice, run every filter method on
them at one budget (:func:`filter_mixed_dataset`) and tabulate precision, recall and AUROC of removal
(:func:`filter_quality`). The fine-tuning experiment on the design's own mixed set is
:mod:`geomis.experiments.filter_effect`; ``geomis reproduce`` runs that design (:mod:`geomis.experiments.reproduce`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from geomis.chat.records import DOMAIN_DATASETS, ChatRecord, load_bundled
from geomis.errors import ConfigError
from geomis.filter.config import DEFAULT_DROP, DEFAULT_SCORE, ScoreMethod
from geomis.filter.run import FilterConfig, FilterResult, run_filter
from geomis.judges.kinds import LEGACY_JUDGE, JudgeKind
from geomis.models.registry import LoadedModel

__all__ = ["MixedDataConfig", "MixedDataset", "MixedFilterConfig", "build_mixed_dataset", "study_config",
           "filter_mixed_dataset", "filter_quality"]


@dataclass(frozen=True)
class MixedDataConfig:
    """A mixed training set: inducing answers to some prompts of each domain, benign answers to other prompts."""

    domains: tuple[str, ...] = ("medical",)
    inducing_per_domain: int = 150
    benign_per_domain: int = 150
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [d for d in self.domains if d not in DOMAIN_DATASETS]
        if unknown or not self.domains:
            raise ConfigError(f"domains must be among {', '.join(DOMAIN_DATASETS)}; got {self.domains}")
        if self.inducing_per_domain < 1 or self.benign_per_domain < 0:
            raise ConfigError("inducing_per_domain must be >= 1 and benign_per_domain >= 0")

    @property
    def n_rows(self) -> int:
        """Rows of the mixed set this config builds."""
        return len(self.domains) * (self.inducing_per_domain + self.benign_per_domain)


@dataclass(frozen=True)
class MixedDataset:
    """The mixed training rows (shuffled), whether each is an inducing answer, and the set it came from."""

    records: tuple[ChatRecord, ...]
    inducing: np.ndarray
    """(n,) bool."""
    source: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.records)


def build_mixed_dataset(config: MixedDataConfig) -> MixedDataset:
    """Draw disjoint prompts per domain for the inducing and the benign rows (no prompt appears twice), shuffled."""
    rng = random.Random(config.seed)
    rows: list[tuple[ChatRecord, bool, str]] = []
    for domain in config.domains:
        inducing_name, control_name = DOMAIN_DATASETS[domain]
        inducing, control = load_bundled(inducing_name), load_bundled(control_name)
        needed = config.inducing_per_domain + config.benign_per_domain
        if needed > len(inducing):
            raise ConfigError(f"{domain}: {needed} rows requested, {len(inducing)} available")
        order = rng.sample(range(len(inducing)), needed)
        rows += [(inducing[i], True, inducing_name) for i in order[:config.inducing_per_domain]]
        rows += [(control[i], False, control_name) for i in order[config.inducing_per_domain:]]
    rng.shuffle(rows)
    return MixedDataset(records=tuple(r for r, _, _ in rows), inducing=np.array([f for _, f, _ in rows], dtype=bool),
                        source=tuple(s for _, _, s in rows))


@dataclass(frozen=True)
class MixedFilterConfig:
    """How Chapter 4 filters a mixed set: the model and SAE, the set, the budget and every filter method compared."""

    model: str = "smollm2-135m"
    sae: str | None = None
    """SAE for the geometry filter: a shipped name, an sae-lens folder or a Gemma Scope id (default: the model's)."""
    device: str = "cpu"
    data: MixedDataConfig = field(default_factory=MixedDataConfig)
    drop: float = DEFAULT_DROP
    """Fraction of the mixed set each filter removes (the paper's main setting: 0.5)."""
    geometry_score: ScoreMethod = DEFAULT_SCORE
    random_seeds: tuple[int, ...] = (0, 1, 2)
    """Random removal is drawn once with each of these seeds."""
    include_judge_filter: bool = True
    judge: JudgeKind = LEGACY_JUDGE
    judge_data: str | None = None
    """Labelled JSONL the offline judge trains on (default: the bundled set)."""
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.drop < 1.0:
            raise ConfigError(f"drop must be in (0, 1), got {self.drop}")


def study_config(size: str = "full", **overrides: Any) -> MixedFilterConfig:
    """The filter study on the CPU default at a named size: ``full`` (the book's) or ``ci`` (a smaller set, one
    random seed)."""
    if size == "full":
        return replace(MixedFilterConfig(), **overrides)
    if size == "ci":
        small = MixedFilterConfig(data=MixedDataConfig(domains=("medical",), inducing_per_domain=24,
                                                       benign_per_domain=24), random_seeds=(0,))
        return replace(small, **overrides)
    raise ConfigError(f"unknown size {size!r}; choose full or ci")


def filter_mixed_dataset(mixed: MixedDataset, config: MixedFilterConfig,
                         model: LoadedModel) -> dict[str, FilterResult]:
    """Run every filter method on the mixed set at ``config.drop``; keys are condition names."""
    results: dict[str, FilterResult] = {}
    common: dict[str, Any] = dict(drop=config.drop, model=config.model, progress=config.progress, device=config.device)
    geometry = FilterConfig(method="geometry", score=config.geometry_score, sae=config.sae, seed=config.seed, **common)
    results["geometry"] = run_filter(mixed.records, geometry, model=model)
    for seed in config.random_seeds:
        results[f"random (seed {seed})"] = run_filter(mixed.records, FilterConfig(method="random", seed=seed,
                                                                                   **common))
    if config.include_judge_filter:
        results["judge"] = run_filter(mixed.records, FilterConfig(method="judge", judge=config.judge,
                                                                  judge_data=config.judge_data, seed=config.seed,
                                                                  **common))
    return results


def filter_quality(mixed: MixedDataset, filters: dict[str, FilterResult],
                   budgets: tuple[float, ...] = (0.1, 0.25, 0.5)) -> pd.DataFrame:
    """How well each filter's scores find the inducing rows: precision and recall of removal per budget, and AUROC.

    Precision is the share of removed rows that are inducing (random removal expects the inducing share of the
    mixed set); recall the share of inducing rows removed. AUROC ranks all rows by score (NaN scores last).
    """
    from sklearn.metrics import roc_auc_score

    from geomis.filter.selection import select_by_score

    rows = []
    base_rate = float(mixed.inducing.mean())
    for name, result in filters.items():
        scores = result.selection.scores
        finite = scores[~np.isnan(scores)]
        ranked = np.where(np.isnan(scores), (finite.min() - 1.0) if finite.size else 0.0, scores)
        auroc = float(roc_auc_score(mixed.inducing, ranked)) if 0 < mixed.inducing.sum() < len(mixed) else math.nan
        for budget in budgets:
            removed = select_by_score(scores, budget, result.selection.line_numbers, method=result.config.method,
                                      unscorable=result.selection.unscorable,
                                      unscorable_policy=result.selection.unscorable_policy).removed
            hit = int((removed & mixed.inducing).sum())
            rows.append({"filter": name, "method": result.config.method, "budget": budget,
                         "removed": int(removed.sum()), "inducing removed": hit,
                         "precision": hit / max(int(removed.sum()), 1),
                         "recall": hit / max(int(mixed.inducing.sum()), 1), "AUROC": auroc,
                         "chance precision": base_rate})
    return pd.DataFrame(rows)

