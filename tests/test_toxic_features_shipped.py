"""The toxic feature set shipped for the default settings: found by its key, and equal to a fresh derivation."""

from __future__ import annotations

import json

import pytest

from geomis.features.toxic import (
    DEFAULT_NEUTRAL,
    DEFAULT_TOXIC,
    ToxicFeatureConfig,
    derive_toxic_features,
    reference_data,
    sae_weights_id,
    shipped_toxic_file,
    toxic_cache_key,
)
from geomis.sae.loading import MAIN_SAE_NAME, load_shipped_sae


def _default_key() -> str:
    sae = load_shipped_sae(MAIN_SAE_NAME)
    return toxic_cache_key("smollm2-135m", sae.name, sae_weights_id(sae), sae.layer, ToxicFeatureConfig(),
                           reference_data(None, DEFAULT_TOXIC).sha256, reference_data(None, DEFAULT_NEUTRAL).sha256)


def test_the_default_toxic_set_is_shipped_under_its_current_key() -> None:
    key = _default_key()
    path = shipped_toxic_file(key)
    assert path is not None, "re-derive the toxic set and copy it to geomis/artifacts/toxic-features/ (see the README)"
    stored = json.loads(path.read_text())
    assert stored["key"] == key and len(stored["indices"]) == stored["k"] == 100
    assert len(set(stored["indices"])) == 100
    assert shipped_toxic_file("0" * 64) is None


@pytest.mark.slow
def test_the_shipped_toxic_set_equals_a_fresh_derivation(smollm2) -> None:
    sae = load_shipped_sae(MAIN_SAE_NAME)
    shipped = derive_toxic_features(smollm2, sae)
    assert shipped.from_cache
    fresh = derive_toxic_features(smollm2, sae, config=ToxicFeatureConfig(use_cache=False))
    assert not fresh.from_cache
    assert fresh.feature_set.index_list() == shipped.feature_set.index_list()
