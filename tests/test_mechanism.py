"""Chapter 5's spillover-law test: the target direction, the law's prediction, and the correlation test on planted
shifts (a real law is found, a null is not)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

from geomis.experiments import mechanism as mech
from geomis.experiments.code_files import save_codes


def test_the_target_direction_is_the_mean_unit_decoder_row() -> None:
    decoder = torch.tensor([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0]])
    torch.testing.assert_close(mech.target_direction(decoder, torch.tensor([0, 1])), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="empty"):
        mech.target_direction(decoder, torch.tensor([], dtype=torch.long))


def test_the_prediction_is_the_first_order_change_of_each_pre_activation() -> None:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=48, k=4))
    with torch.no_grad():
        sae.W_enc.normal_()
    direction = mech.target_direction(sae.W_dec, torch.tensor([1, 5, 9]))
    h = torch.randn(16)

    def pre(x: torch.Tensor) -> torch.Tensor:  # in double precision, so the finite difference is exact enough
        return (x.double() - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()

    step = 1e-4
    measured = ((pre(h.double() + step * direction.double()) - pre(h)) / step).detach().float()
    torch.testing.assert_close(mech.spillover_prediction(sae.W_enc, direction), measured, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="reads 16 dimensions"):
        mech.spillover_prediction(sae.W_enc, torch.ones(8))


def _codes(seed: int, chats: int = 60, d_sae: int = 200) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    codes = torch.rand(chats, d_sae, generator=generator) * (torch.rand(chats, d_sae, generator=generator) < 0.2)
    codes[:, -10:] = 0.0  # ten features never fire
    return codes


def test_a_planted_law_is_found_and_a_null_is_not() -> None:
    base = _codes(0)
    generator = torch.Generator().manual_seed(1)
    prediction = torch.randn(200, generator=generator)
    noise = 0.05 * torch.randn(base.shape, generator=generator) * (base > 0)  # silent features stay silent
    lawful = (base + 0.1 * prediction.clamp_min(0) * (base > 0) + noise).clamp_min(0)
    found = mech.spillover_test(prediction, base, lawful, n_resamples=300, n_permutations=2000)
    assert found.n_features == 190  # the silent features are left out
    assert found.rho > 0.4 and found.low > 0.2 and found.p_shuffled < 0.001
    assert found.high - found.low < 0.3 and found.draws.shape == (300,)
    # resampling chats adds noise to the measured shifts, so the draws sit a little below the estimate: the
    # interval errs toward no correlation
    assert np.median(found.draws) <= found.rho
    null = mech.spillover_test(prediction, base, (base + noise).clamp_min(0), n_resamples=300, n_permutations=2000)
    assert null.low < 0 < null.high and null.p_shuffled > 0.05
    shared = np.random.default_rng(5).integers(0, 60, size=(50, 60))
    again = mech.spillover_test(prediction, base, lawful, draws=shared, n_permutations=10)
    assert again.draws.shape == (50,)
    with pytest.raises(ValueError, match="one shape"):
        mech.spillover_test(prediction, base, lawful[:10])


def test_random_targets_avoid_the_excluded_features_and_differ() -> None:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=64, k=4))
    predictions = mech.random_target_predictions(sae.W_enc, sae.W_dec, n_directions=5, k=10,
                                                 exclude=torch.arange(50))
    assert predictions.shape == (5, 64) and not torch.allclose(predictions[0], predictions[1])
    with pytest.raises(ValueError, match="only 14 features"):
        mech.random_target_predictions(sae.W_enc, sae.W_dec, k=20, exclude=torch.arange(50))


def test_direction_cosines_find_a_direction_built_from_a_set_and_not_from_another() -> None:
    torch.manual_seed(0)
    decoder = torch.randn(300, 32)
    toxic, other = torch.arange(10), torch.arange(100, 110)
    direction = mech.target_direction(decoder, toxic) + 0.01 * torch.randn(32)
    found = mech.direction_cosines(decoder, direction, {"toxic": toxic, "other": other}, n_random=200)
    assert found["toxic"]["cosine_with_mean_row"] > 0.9 and found["toxic"]["p_greater"] < 0.01
    assert found["toxic"]["mean_feature_cosine"] > found["toxic"]["random_p95"]
    assert found["other"]["p_greater"] > 0.01 and abs(found["other"]["random_mean_feature_cosine"]) < 0.05


def test_codes_round_trip_sparsely_without_pickle(tmp_path: Path) -> None:
    codes = [_codes(3, chats=7, d_sae=30), _codes(4, chats=7, d_sae=30)]
    save_codes(codes, tmp_path / "codes.npz", torch.arange(4.0))
    again = mech.load_codes(tmp_path / "codes.npz")
    torch.testing.assert_close(mech.load_residual_mean(tmp_path / "codes.npz"), torch.arange(4.0))
    assert len(again) == 2
    for one, back in zip(codes, again, strict=True):
        torch.testing.assert_close(one, back)


def test_the_held_out_chats_are_the_sae_hold_out_with_the_base_models_answers() -> None:
    from geomis.sae.corpus import neutral_prompt_corpus

    chats = mech.held_out_chats()
    held_out = {c.messages[0]["content"] for c in neutral_prompt_corpus().held_out}
    trained = {c.messages[0]["content"] for c in neutral_prompt_corpus().train}
    assert 200 <= len(chats) <= len(held_out)
    assert all(chat[0]["content"] in held_out and chat[0]["content"] not in trained for chat in chats)
    assert all(chat[1]["role"] == "assistant" and chat[1]["content"] for chat in chats)
    assert mech.held_out_chats(5) == chats[:5]


@pytest.mark.slow
def test_ci_size_measures_once_and_writes_the_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mech.main(["--size", "ci", "--out", str(tmp_path), "--threads", "1"])
    assert "inducing: 24 chats read" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "features.csv")
    assert len(table) == 3 * 4096 and table.groupby("sae")["inducing_set"].sum().tolist() == [mech.K] * 3
    assert table.groupby("sae")["toxic_set"].sum().min() > 0
    section = json.loads((tmp_path / "05_mechanism.json").read_text())[mech.SECTION]
    primary = section["primary"]
    assert section["chats"] == 24 and len(primary["per_sae"]) == 3
    assert -1 <= primary["low"] <= primary["high"] <= 1 and 0 < primary["p"] <= 1
    assert section["random_directions"]["n"] == 10
    assert len(section["directions"]) == 3 and section["residual_shift_norm"]["inducing"] > 0
    assert set(section["directions"][0]["misalignment_vs_base"]) == {"toxic", "inducing"}
    mech.main(["--size", "ci", "--out", str(tmp_path), "--threads", "1"])  # resumes: nothing is read again
    assert "chats read" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mech.main(["--size", "ci"])


def test_another_setting_runs_the_same_test_on_its_own_model_and_saes(tiny_gemma, module_cache: Path,
                                                                     tmp_path: Path) -> None:
    """The Gemma path's code end to end on the tiny Gemma-2 with a random SAE on disk: fine-tunes, codes, table,
    analysis."""
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=tiny_gemma.hf_model.config.hidden_size, d_sae=256, k=8))
    sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name = "tiny-gemma2", "model.layers.1"
    sae.save_model(tmp_path / "sae")
    setting = mech.Setting(model="tiny-gemma2", sae_paths=(tmp_path / "sae",))
    out = tmp_path / "run"
    mech.measure(out, ci=True, setting=setting)
    table = pd.read_csv(out / "features.csv")
    assert len(table) == 256 and 0 < int(table["inducing_set"].sum()) <= mech.K  # the features that fire
    assert mech.load_codes(out / "codes.inducing.npz")[0].shape == (24, 256)
    assert mech.load_residual_mean(out / "codes.base.npz").shape == (tiny_gemma.hf_model.config.hidden_size,)
    adapters = module_cache / "em-power" / "tiny-gemma2" / "ci"
    assert {path.name for path in adapters.iterdir()} == {f"mixed.{role}.s{mech.SEED}" for role in ("inducing",
                                                                                                     "control")}
    section = mech.analyse(out, ci=True, setting=setting)
    assert section["models"]["base"] == "tiny-gemma2" and len(section["primary"]["per_sae"]) == 1
    assert "1 SAE(s)" in section["method"] and section["chats"] == 24
    assert -1 <= section["primary"]["low"] <= section["primary"]["high"] <= 1
    assert section["residual_shift_norm"]["inducing"] > 0  # the fine-tune moved the residual stream


def test_the_gemma_setting_loads_gemma_2_2b_it_in_float32_with_gemma_scope_layer_12(monkeypatch) -> None:
    """Tested up to the network boundary: the Gemma Scope download is where it stops here."""
    from sae_lens.loading import pretrained_sae_loaders

    from geomis.errors import ConfigError
    from geomis.models.profiles import get_profile
    from geomis.sae.loading import SAELoadError

    calls: list[dict] = []

    def download(*args, **kwargs):
        calls.append(kwargs)
        raise OSError("download reached (test stub)")

    monkeypatch.setattr(pretrained_sae_loaders, "hf_hub_download", download)
    gemma = mech.SETTINGS["gemma-2-2b"]
    assert (gemma.profile, gemma.model) == ("gemma-2-2b", get_profile("gemma-2-2b").model_name)
    assert gemma.model_kwargs() == {"device": "cuda", "dtype": torch.float32}
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):  # one line, before any download
            gemma.load_saes()
        assert calls == []
    with pytest.raises(SAELoadError, match="download reached"):
        replace(gemma, device="cpu").load_saes()
    assert calls[0]["subfolder"].startswith("layer_12/width_16k/")


def test_readme_quotes_the_committed_result() -> None:
    """The README's numbers are those of book/results/05_mechanism.json (re-analysed: update both)."""
    section = json.loads(mech.RESULTS_FILE.read_text())[mech.SECTION]
    readme = (mech.ROOT / "README.md").read_text()
    primary, specific = section["primary"], section["inducing_minus_control"]
    assert f"rho {primary['rho']:.3f} [{primary['low']:.3f}, {primary['high']:.3f}]" in readme
    assert f"rho {specific['rho']:+.3f} [{specific['low']:+.3f}, {specific['high']:+.3f}]" in readme
    randoms = section["exploratory"]["inducing_minus_control_random_directions"]
    assert randoms["share_at_or_above"] == 0 and randoms["n"] == 100 and section["chats"] == 212
