"""Chapter 2: paired subsets, feature-set selection with planted answers, geometry, closest pairs, sweep SAEs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

from geomis.chat.records import DOMAIN_DATASETS, REFERENCE_DATASETS, bundled_dataset_names
from geomis.experiments.overlap import (
    OverlapConfig,
    closest_pairs,
    collect_study_activations,
    compare_domains,
    encode_study,
    load_study_data,
    select_study_features,
)
from geomis.sae.loading import SWEEP_SAES, LoadedSAE, SAELoadError, load_sweep_saes


def test_study_draws_the_same_seeded_prompt_pairs_from_inducing_and_control() -> None:
    config = OverlapConfig(domains=("medical", "code"), pairs_per_domain=20, reference_samples=15, seed=3)
    data = load_study_data(config)
    assert set(data.domains) == {"medical", "code"}
    for inducing, control in data.domains.values():
        assert len(data.sets[inducing]) == len(data.sets[control]) == 20
        assert [r.user_text for r in data.sets[inducing]] == [r.user_text for r in data.sets[control]]
        assert all(a.assistant_text != b.assistant_text
                   for a, b in zip(data.sets[inducing], data.sets[control], strict=True))
    assert len(data.sets["generic_toxic_reference"]) == len(data.sets["generic_neutral_reference"]) == 15
    again = load_study_data(config)
    assert again.sets == data.sets
    other = load_study_data(OverlapConfig(domains=("medical", "code"), pairs_per_domain=20, seed=4))
    assert other.sets["medical_bad"] != data.sets["medical_bad"]
    sizes = data.sizes()
    assert sizes["chats"].tolist() == [20, 20, 20, 20, 15, 15]


def test_none_takes_every_row() -> None:
    data = load_study_data(OverlapConfig(domains=("legal",), pairs_per_domain=None, reference_samples=None))
    assert len(data.sets["legal_bad"]) == 240 and len(data.sets["generic_toxic_reference"]) == 200


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"domains": ("medicine",)}, "unknown domain"),
    ({"domains": ()}, "domains is empty"),
    ({"pairs_per_domain": 1}, "pairs_per_domain must be at least 2"),
    ({"k": 0}, "k must be at least 1"),
    ({"reference": ("medical_bad", "medical_good")}, "reference must be"),
])
def test_bad_study_config_is_a_clear_error(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        OverlapConfig(**kwargs)


def _planted_codes(n: int, d_sae: int, hot: list[int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, d_sae, generator=generator) * 0.1
    codes[:, hot] += 1.0 + torch.rand(n, len(hot), generator=generator)
    return codes


def test_feature_sets_recover_planted_features_and_geometry_detects_planted_closeness() -> None:
    d_sae, d_model, n = 60, 24, 40
    data = load_study_data(OverlapConfig(domains=("medical",), pairs_per_domain=n, reference_samples=n))
    toxic_hot, inducing_hot, control_hot = [0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]
    codes = {
        "generic_toxic_reference": SimpleNamespace(sample_mean=_planted_codes(n, d_sae, toxic_hot, 0)),
        "generic_neutral_reference": SimpleNamespace(sample_mean=_planted_codes(n, d_sae, [], 1)),
        "medical_bad": SimpleNamespace(sample_mean=_planted_codes(n, d_sae, inducing_hot, 2)),
        "medical_good": SimpleNamespace(sample_mean=_planted_codes(n, d_sae, control_hot, 3)),
    }
    config = OverlapConfig(domains=("medical",), k=4, n_permutations=2000, n_bootstrap=500)
    features = select_study_features(codes, data, layer=7, config=config)
    assert sorted(features.toxic.index_list()) == toxic_hot
    assert sorted(features.inducing["medical"].index_list()) == inducing_hot
    assert sorted(features.control["medical"].index_list()) == control_hot
    assert features.overlap_table().iloc[0].tolist() == ["medical", 0, 0, 0]

    generator = torch.Generator().manual_seed(5)
    decoder = torch.randn(d_sae, d_model, generator=generator)
    # each inducing feature sits at cosine ~0.9 to one toxic feature
    for i, t in zip(inducing_hot, toxic_hot, strict=True):
        decoder[i] = 0.9 * decoder[t] / decoder[t].norm() + 0.44 * decoder[i] / decoder[i].norm()
    decoder = decoder / decoder.norm(dim=1, keepdim=True)
    (comparison,) = compare_domains(decoder, features, config)
    assert comparison.domain == "medical" and comparison.layer == 7
    assert comparison.inducing_mean_max > 0.8 > comparison.control_mean_max
    assert comparison.p_greater < 0.05 and comparison.ci_low > 0

    pairs = closest_pairs(decoder, features.inducing["medical"], features.toxic, n=3)
    assert len(pairs) == 3 and pairs["cosine"].is_monotonic_decreasing
    assert set(pairs["feature"]) <= set(inducing_hot)
    assert all(dict(zip(inducing_hot, toxic_hot, strict=True))[f] == t for f, t in zip(pairs["feature"],
                                                                         pairs["nearest toxic feature"], strict=True))
    assert not pairs["also toxic"].any()


def test_closest_pairs_never_pairs_a_feature_with_itself() -> None:
    decoder = torch.eye(4)
    decoder[1] = torch.tensor([0.6, 0.8, 0.0, 0.0])
    pairs = closest_pairs(decoder, torch.tensor([0, 2]), torch.tensor([0, 1]), n=5)
    row = pairs.set_index("feature").loc[0]
    assert row["nearest toxic feature"] == 1 and row["cosine"] == pytest.approx(0.6) and row["also toxic"]
    with pytest.raises(ValueError, match="n must be at least 1"):
        closest_pairs(decoder, torch.tensor([0]), torch.tensor([1]), n=0)


def test_study_runs_end_to_end_on_the_tiny_gemma_at_two_layers(tiny_gemma) -> None:
    config = OverlapConfig(domains=("career",), pairs_per_domain=4, reference_samples=4, k=5, progress=False,
                           n_permutations=200, n_bootstrap=200)
    data = load_study_data(config)
    activations = collect_study_activations(tiny_gemma, data, [0, 1], config)
    assert set(activations) == set(data.sets) and all(set(v) == {0, 1} for v in activations.values())
    torch.manual_seed(0)
    sae = LoadedSAE(sae=TopKSAE(TopKSAEConfig(d_in=tiny_gemma.spec.d_model, d_sae=32, k=4)), name="tiny",
                    model_name="tiny-gemma2", layer=1, source="shipped")
    codes = encode_study(sae, activations, data)
    assert codes["career_bad"].n_samples == 4
    features = select_study_features(codes, data, layer=1, config=config)
    (comparison,) = compare_domains(sae.decoder_directions(), features, config)
    assert comparison.n_inducing <= 5 and comparison.n_reference <= 5
    with pytest.raises(ValueError, match="no activations at layer 3"):
        encode_study(LoadedSAE(sae=sae.sae, name="x", model_name="tiny-gemma2", layer=3, source="shipped"),
                     activations, data)
    # activations of more sets than the study names (e.g. two references collected in one pass) are left alone
    extra = {**activations, "unused_set": activations["career_bad"]}
    assert set(encode_study(sae, extra, data)) == set(data.sets)
    missing = {name: acts for name, acts in activations.items() if name != "career_good"}
    with pytest.raises(ValueError, match="no activations for set 'career_good'"):
        encode_study(sae, missing, data)


def test_cpu_sweep_saes_are_the_shipped_equal_width_saes_at_their_layers() -> None:
    saes = load_sweep_saes("cpu-default")
    assert sorted(saes) == list(SWEEP_SAES["cpu-default"])
    for layer, sae in saes.items():
        assert sae.layer == layer and sae.d_sae == 1024 and sae.d_in == 576


def test_gemma_sweep_stops_at_the_hub_boundary_offline() -> None:
    with pytest.raises(SAELoadError, match="cannot reach the Hugging Face Hub"):
        load_sweep_saes("gemma-2-2b", device="cpu")


def test_every_domain_has_a_bundled_pair() -> None:
    assert set(DOMAIN_DATASETS) == {"medical", "legal", "career", "code"}
    names = set(bundled_dataset_names())
    assert {name for pair in DOMAIN_DATASETS.values() for name in pair} | set(REFERENCE_DATASETS) <= names


def test_selection_follows_the_config_domains_and_rejects_missing_ones() -> None:
    n, d_sae = 6, 12
    data = load_study_data(OverlapConfig(domains=("medical", "legal"), pairs_per_domain=n, reference_samples=n))
    codes = {name: SimpleNamespace(sample_mean=_planted_codes(n, d_sae, [i % d_sae], i))
             for i, name in enumerate(data.sets)}
    one = select_study_features(codes, data, layer=0, config=OverlapConfig(domains=("legal",), k=2))
    assert list(one.inducing) == ["legal"] and list(one.control) == ["legal"]
    with pytest.raises(ValueError, match="no career sets"):
        select_study_features(codes, data, layer=0, config=OverlapConfig(domains=("career",), k=2))


def test_the_generic_reference_is_drawn_and_used_for_the_toxic_set() -> None:
    from geomis.chat.records import GENERIC_REFERENCE_DATASETS

    config = OverlapConfig(domains=("medical",), pairs_per_domain=10, reference_samples=12,
                           reference=GENERIC_REFERENCE_DATASETS)
    data = load_study_data(config)
    assert data.reference == GENERIC_REFERENCE_DATASETS and "toxic_reference" not in data.sets
    assert len(data.sets["generic_toxic_reference"]) == 12
    assert data.sizes()["set"].tolist()[-2:] == list(GENERIC_REFERENCE_DATASETS)
    # the same rows of both files: each toxic continuation has its neutral twin
    assert [r.user_text for r in data.sets["generic_toxic_reference"]] == [
        r.user_text for r in data.sets["generic_neutral_reference"]]


class _FakeSAE:
    """Decoder and encoder rows as a LoadedSAE gives them."""

    def __init__(self, decoder: torch.Tensor, encoder: torch.Tensor) -> None:
        self._decoder, self._encoder = decoder, encoder

    def decoder_directions(self) -> torch.Tensor:
        return self._decoder / self._decoder.norm(dim=1, keepdim=True)

    def encoder_directions(self) -> torch.Tensor:
        return self._encoder / self._encoder.norm(dim=1, keepdim=True)


def test_resampled_geometry_pools_saes_and_adjusts_over_domains() -> None:
    from geomis.experiments.overlap import PRIMARY_VARIANT, VARIANTS, resampled_geometry

    d_sae, d_model, n = 60, 24, 40
    config = OverlapConfig(domains=("medical", "legal"), pairs_per_domain=n, reference_samples=n, k=4)
    data = load_study_data(config)
    toxic_hot, inducing_hot, control_hot = [0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]
    codes = {"generic_toxic_reference": _planted_codes(n, d_sae, toxic_hot, 0),
             "generic_neutral_reference": _planted_codes(n, d_sae, [], 1),
             "medical_bad": _planted_codes(n, d_sae, inducing_hot, 2),
             "medical_good": _planted_codes(n, d_sae, control_hot, 3),
             "legal_bad": _planted_codes(n, d_sae, [30, 31, 32, 33], 4),  # legal: nothing planted near toxic
             "legal_good": _planted_codes(n, d_sae, [40, 41, 42, 43], 5)}
    saes, study_codes = {}, {}
    for seed in (0, 1):
        generator = torch.Generator().manual_seed(seed)
        decoder = torch.randn(d_sae, d_model, generator=generator)
        for i, t in zip(inducing_hot, toxic_hot, strict=True):  # medical inducing features write along toxic ones
            decoder[i] = decoder[t] + 0.3 * torch.randn(d_model, generator=generator)
        encoder = torch.randn(d_sae, d_model, generator=generator)  # toxic features read elsewhere entirely
        saes[f"s{seed}"] = _FakeSAE(decoder, encoder)
        study_codes[f"s{seed}"] = {name: SimpleNamespace(sample_mean=value) for name, value in codes.items()}
    result = resampled_geometry(saes, study_codes, data, config, n_resamples=50, progress=False)  # type: ignore[arg-type]
    table = result.table.set_index(["domain", "variant", "sae"])
    assert len(table) == 2 * len(VARIANTS) * 3  # domains x variants x (two SAEs + pooled)
    medical = table.loc[("medical", PRIMARY_VARIANT.label, "pooled")]
    assert medical["low"] > 0.3 and medical["p_greater"] < 0.05
    assert medical["difference"] == pytest.approx(
        (table.loc[("medical", PRIMARY_VARIANT.label, "s0"), "difference"]
         + table.loc[("medical", PRIMARY_VARIANT.label, "s1"), "difference"]) / 2)
    assert table.loc[("legal", PRIMARY_VARIANT.label, "pooled"), "low"] < 0.3
    # read by encoder rows that point elsewhere, the planted closeness is gone
    assert table.loc[("medical", "encoder, shared dropped", "pooled"), "difference"] < 0.3 * medical["difference"]
    # Benjamini-Hochberg over the two domains: never below the raw p, the larger p unchanged
    for _, group in result.table.groupby(["variant", "sae"]):
        assert (group["p_bh"] >= group["p_greater"] - 1e-12).all()
        assert group["p_bh"].max() == pytest.approx(group["p_greater"].max())
    with pytest.raises(ValueError, match="no codes for SAE"):
        resampled_geometry(saes, {"s0": study_codes["s0"]}, data, config, n_resamples=5,  # type: ignore[arg-type]
                           progress=False)


def test_results_json_carries_design_contrasts_and_per_sae_rows() -> None:
    import json

    from geomis.experiments.overlap import PRIMARY_VARIANT, GeometryVariant, resampled_geometry, results_json

    d_sae, n = 40, 20
    config = OverlapConfig(domains=("career",), pairs_per_domain=n, reference_samples=n, k=3)
    data = load_study_data(config)
    names = ["generic_toxic_reference", "generic_neutral_reference", "career_bad", "career_good"]
    codes = {name: SimpleNamespace(sample_mean=_planted_codes(n, d_sae, [i * 4, i * 4 + 1, i * 4 + 2], i))
             for i, name in enumerate(names)}
    generator = torch.Generator().manual_seed(0)
    saes = {"a": _FakeSAE(torch.randn(d_sae, 8, generator=generator), torch.randn(d_sae, 8, generator=generator))}
    variants = (PRIMARY_VARIANT, GeometryVariant(False, "encoder"))
    result = resampled_geometry(saes, {"a": codes}, data, config, variants=variants,  # type: ignore[arg-type]
                                n_resamples=10, progress=False)
    out = results_json(result, data, config, "test", shared={"a": {"career": 2}})
    json.dumps(out)  # plain JSON
    assert out["design"].startswith("(fixed and committed") and "Benjamini-Hochberg" in out["design"]
    primary = out["contrasts"][f"career/{PRIMARY_VARIANT.label}/inducing_minus_control"]
    assert primary["primary"] and primary["n_resamples"] == 10 and primary["n_saes"] == 1
    assert primary["difference"] == pytest.approx(primary["per_sae"]["a"]["difference"])
    assert primary["low"] <= primary["high"] and 0 < primary["p"] <= 1 and primary["p_bh"] == primary["p"]
    assert not out["contrasts"]["career/encoder, shared kept/inducing_minus_control"]["primary"]
    assert out["saes"] == ["a"] and out["shared_features"] == {"a": {"career": 2}} and out["chats"]["career_bad"] == n
