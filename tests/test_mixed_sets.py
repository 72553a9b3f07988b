"""Mixed fine-tuning sets and the filter-quality table of Chapter 4's filter study."""

from __future__ import annotations

import pytest

from geomis.experiments.mixed_sets import (
    MixedDataConfig,
    MixedDataset,
    MixedFilterConfig,
    build_mixed_dataset,
    filter_quality,
    study_config,
)
from geomis.judges.kinds import LEGACY_JUDGE

pytestmark = pytest.mark.usefixtures("module_cache")


def test_mixed_set_uses_disjoint_prompts_and_is_seeded() -> None:
    config = MixedDataConfig(domains=("medical", "legal"), inducing_per_domain=10, benign_per_domain=6, seed=1)
    mixed = build_mixed_dataset(config)
    assert len(mixed) == 32 and int(mixed.inducing.sum()) == 20
    prompts = [r.user_text for r in mixed.records]
    assert len(set(prompts)) == len(prompts)  # no prompt answered both ways
    assert {s for s, f in zip(mixed.source, mixed.inducing, strict=True) if f} == {"medical_bad", "legal_bad"}
    assert {s for s, f in zip(mixed.source, mixed.inducing, strict=True) if not f} == {"medical_good", "legal_good"}
    assert build_mixed_dataset(config).records == mixed.records
    assert build_mixed_dataset(MixedDataConfig(domains=("medical", "legal"), inducing_per_domain=10,
                                               benign_per_domain=6, seed=2)).records != mixed.records
    with pytest.raises(ValueError, match="rows requested"):
        build_mixed_dataset(MixedDataConfig(domains=("code",), inducing_per_domain=150, benign_per_domain=60))
    with pytest.raises(ValueError, match="domains must be among"):
        MixedDataConfig(domains=("cooking",))
    with pytest.raises(ValueError, match="drop must be in"):
        MixedFilterConfig(drop=1.0)


def test_filter_quality_counts_inducing_rows_removed_at_each_budget() -> None:
    from types import SimpleNamespace

    import numpy as np

    from geomis.filter.selection import select_by_score

    inducing = np.array([True, True, False, False, False, True, False, False])
    mixed = MixedDataset(records=tuple(range(8)), inducing=inducing, source=("x",) * 8)
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.7, np.nan, 0.0])  # inducing rows score highest
    lines = np.arange(1, 9)
    result = SimpleNamespace(selection=select_by_score(scores, 0.5, lines, method="geometry"),
                             config=SimpleNamespace(method="geometry"))
    table = filter_quality(mixed, {"geometry": result}, budgets=(0.25, 0.5))
    assert table["removed"].tolist() == [2, 4]
    assert table["precision"].tolist() == [1.0, 0.75]
    assert table["recall"].tolist() == pytest.approx([2 / 3, 1.0])
    assert table["AUROC"].iloc[0] == pytest.approx(1.0)
    assert table["chance precision"].iloc[0] == pytest.approx(3 / 8)


def test_named_sizes() -> None:
    full, small = study_config("full"), study_config("ci")
    assert small.data.inducing_per_domain < full.data.inducing_per_domain
    assert len(small.random_seeds) < len(full.random_seeds) == 3
    assert study_config("ci", drop=0.25).drop == 0.25
    assert full.judge == LEGACY_JUDGE  # the filter study's committed outputs used the legacy judge
    with pytest.raises(ValueError, match="unknown size"):
        study_config("huge")
