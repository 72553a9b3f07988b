"""The toxic feature sets shipped for the default settings: found by their keys, and equal to a fresh derivation.

Two defaults are shipped: the filter's (each of the three SAEs trained on neutral text, with the generic references)
and ``derive_toxic_features``'s own (the first SAE with the first, advice-voiced references, which Chapter 3 reads).
"""

from __future__ import annotations

import json

import pytest

from geomis.features.toxic import (
    BUNDLED_PREFIX,
    DEFAULT_NEUTRAL,
    DEFAULT_TOXIC,
    ToxicFeatureConfig,
    derive_toxic_features,
    reference_data,
    sae_weights_id,
    shipped_toxic_file,
    toxic_cache_key,
)
from geomis.filter.config import DEFAULT_REFERENCE
from geomis.sae.loading import FILTER_SAES, MAIN_SAE_NAME, load_shipped_sae

SHIPPED = [(MAIN_SAE_NAME, (DEFAULT_TOXIC, DEFAULT_NEUTRAL))] + [
    (name, DEFAULT_REFERENCE) for name in FILTER_SAES["smollm2-135m"]]


def _key(sae_name: str, reference: tuple[str, str]) -> str:
    sae = load_shipped_sae(sae_name)
    toxic, neutral = (reference_data(BUNDLED_PREFIX + name, name).sha256 for name in reference)
    return toxic_cache_key("smollm2-135m", sae.name, sae_weights_id(sae), sae.layer, ToxicFeatureConfig(), toxic,
                           neutral)


@pytest.mark.parametrize(("sae_name", "reference"), SHIPPED)
def test_the_default_toxic_sets_are_shipped_under_their_current_keys(sae_name: str,
                                                                     reference: tuple[str, str]) -> None:
    key = _key(sae_name, reference)
    path = shipped_toxic_file(key)
    assert path is not None, "re-derive the toxic set and copy it to geomis/artifacts/toxic-features/ (see the README)"
    stored = json.loads(path.read_text())
    assert stored["key"] == key and len(stored["indices"]) == stored["k"] == 100
    assert len(set(stored["indices"])) == 100
    assert stored["inputs"]["sae"] == sae_name and stored["inputs"]["toxic"]["name"] == BUNDLED_PREFIX + reference[0]
    assert shipped_toxic_file("0" * 64) is None


def test_a_bundled_set_can_be_named_as_reports_name_it() -> None:
    named = reference_data(BUNDLED_PREFIX + DEFAULT_REFERENCE[0], DEFAULT_TOXIC)
    assert named.name == "bundled:generic_toxic_reference" and len(named.records) == 200
    assert named.sha256 == reference_data(None, DEFAULT_REFERENCE[0]).sha256
    assert named.sha256 != reference_data(None, DEFAULT_TOXIC).sha256


@pytest.mark.slow
@pytest.mark.parametrize(("sae_name", "reference"), [SHIPPED[0], SHIPPED[1]])
def test_a_shipped_toxic_set_equals_a_fresh_derivation(smollm2, sae_name: str, reference: tuple[str, str]) -> None:
    sae = load_shipped_sae(sae_name)
    toxic, neutral = (BUNDLED_PREFIX + name for name in reference)
    shipped = derive_toxic_features(smollm2, sae, toxic, neutral)
    assert shipped.from_cache
    fresh = derive_toxic_features(smollm2, sae, toxic, neutral, config=ToxicFeatureConfig(use_cache=False))
    assert not fresh.from_cache
    # The set is what the filter uses. Its members and their correlations must match; the order of two near-tied
    # members may not: on another CPU a TopK encode can flip at its threshold for a token, moving one feature's
    # correlation by ~3e-4 (seen once, 2026-12-03) while the others agree to 1e-7.
    assert set(fresh.feature_set.index_list()) == set(shipped.feature_set.index_list())
    fresh_values = dict(zip(fresh.feature_set.index_list(), fresh.feature_set.values.tolist(), strict=True))
    for feature, value in zip(shipped.feature_set.index_list(), shipped.feature_set.values.tolist(), strict=True):
        assert abs(fresh_values[feature] - value) < 1e-3, feature
