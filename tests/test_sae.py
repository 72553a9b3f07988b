"""SAEs: training with sae-lens, the on-disk round trip, the shipped SAEs, Gemma Scope ids, and the SAE-codes stage."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch
from sae_lens import SAE, TopKSAE, TopKSAEConfig
from safetensors import safe_open

from geomis.activations import TokenActivations, token_selection
from geomis.atomic_io import atomic_folder
from geomis.chat.tokens import TokenizedChat, pad_left, tokenize_chats
from geomis.cli.commands import main
from geomis.models.profiles import PROFILES
from geomis.sae import loading as sae_loading
from geomis.sae.codes import aggregate_codes, encode_tokens
from geomis.sae.corpus import (
    bundled_corpus,
    collect_corpus_activations,
    first_occurrence_masks,
    is_held_out,
    kept_token_masks,
    select_tokens,
)
from geomis.sae.loading import (
    MAIN_SAE_NAME,
    SAELoadError,
    decoder_directions,
    default_sae_for,
    gemma_scope_sae_id,
    load_default_sae,
    load_gemma_scope,
    load_profile_sae,
    load_sae_from_disk,
    load_shipped_sae,
    shipped_sae_names,
    validate_gemma_scope_id,
)
from geomis.sae.quality import reconstruction_metrics, splice_metrics
from geomis.sae.training import (
    TRAINING_RECORD_FILE,
    SAETrainingConfig,
    SAETrainingError,
    check_output,
    fit_topk_sae,
    save_inference_sae,
)

# --------------------------------------------------------------------------------------------- synthetic training


def _synthetic_activations(n: int = 3000, d_in: int = 32, n_features: int = 48, seed: int = 0) -> torch.Tensor:
    """Sparse non-negative combinations of random directions plus an offset: data a small SAE can learn."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d_in, generator=generator)
    active = torch.rand(n, n_features, generator=generator) < 0.06
    codes = active * torch.rand(n, n_features, generator=generator) * 4
    return codes @ directions + 2.0


SMALL = SAETrainingConfig(width=96, k=6, epochs=6, batch_size=128, lr=1e-2, seed=3)


@pytest.fixture(scope="module")
def small_training_sae():
    """A small TopK SAE trained with sae-lens's SAETrainer on synthetic activations."""
    return fit_topk_sae(_synthetic_activations(), SMALL)


def test_training_learns_and_same_seed_gives_same_sae(small_training_sae) -> None:
    data = _synthetic_activations()
    metrics = reconstruction_metrics(small_training_sae, data)
    assert metrics.explained_variance > 0.8
    assert metrics.l0 == pytest.approx(SMALL.k, abs=0.5)
    again = fit_topk_sae(data, SMALL)
    other_seed = fit_topk_sae(data, replace(SMALL, seed=4))
    state, state_again = small_training_sae.state_dict(), again.state_dict()
    assert all(torch.equal(state[name], state_again[name]) for name in state)
    assert not torch.equal(state["W_dec"], other_seed.state_dict()["W_dec"])


def test_save_load_round_trip_gives_identical_encode_decode(small_training_sae, tmp_path) -> None:
    data = _synthetic_activations()[:200]
    save_inference_sae(small_training_sae, tmp_path / "f32", {"model_name": "synthetic", "layer": 3}, "float32")
    loaded = load_sae_from_disk(tmp_path / "f32")
    assert isinstance(loaded.sae, TopKSAE) and loaded.layer == 3 and loaded.model_name == "synthetic"
    with torch.no_grad():
        codes = loaded.sae.encode(data)
        # the inference SAE (decoder norms folded into the encoder) matches the training SAE it came from
        torch.testing.assert_close(codes, small_training_sae.encode(data), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loaded.sae.decode(codes), small_training_sae.decode(small_training_sae.encode(data)),
                                   rtol=1e-4, atol=1e-5)
        # and a second save/load of the loaded SAE is bit-identical
        loaded.sae.save_model(tmp_path / "again")
        again = SAE.load_from_disk(tmp_path / "again")
        assert torch.equal(again.encode(data), codes)
        assert torch.equal(again.decode(codes), loaded.sae.decode(codes))
    assert decoder_directions(loaded.sae).norm(dim=-1).sub(1).abs().max() < 1e-5


def test_float16_weights_load_back_as_float32(small_training_sae, tmp_path) -> None:
    save_inference_sae(small_training_sae, tmp_path / "f16", {"model_name": "synthetic", "layer": 3}, "float16")
    with safe_open(tmp_path / "f16" / "sae_weights.safetensors", framework="pt") as weights:
        assert {weights.get_tensor(name).dtype for name in weights.keys()} == {torch.float16}  # noqa: SIM118
    loaded = load_sae_from_disk(tmp_path / "f16")
    assert all(parameter.dtype == torch.float32 for parameter in loaded.sae.parameters())
    data = _synthetic_activations()
    full = reconstruction_metrics(small_training_sae, data).explained_variance
    assert reconstruction_metrics(loaded.sae, data).explained_variance == pytest.approx(full, abs=0.01)


def test_output_is_never_replaced_without_force(tmp_path) -> None:
    out = tmp_path / "sae"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(SAETrainingError, match="already exists; pass --force"), atomic_folder(out) as staging:
        (staging / "new").write_text("new")
        check_output(out, force=False)  # train_sae_to_dir's last check before its staging folder replaces ``out``
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"] and [p.name for p in out.iterdir()] == ["old"]
    with atomic_folder(out) as staging:
        (staging / "new").write_text("new")
        check_output(out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    assert [p.name for p in out.iterdir()] == ["new"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(SAETrainingError, match="is not a folder"):
        check_output(tmp_path / "file", force=True)


# ------------------------------------------------------------------------------------------------------- corpus


def test_default_corpus_is_the_ten_named_sets_with_a_stable_disjoint_holdout() -> None:
    from geomis.chat.records import bundled_dataset_names
    from geomis.sae.corpus import DEFAULT_SAE_DATASETS

    split = bundled_corpus()
    names = set(DEFAULT_SAE_DATASETS)
    assert len(names) == 10 and names < set(bundled_dataset_names())  # a new bundled file does not join silently
    assert "generic_toxic_reference" not in names
    assert {c.dataset for c in split.train} == names == {c.dataset for c in split.held_out}
    train_ids = {(c.dataset, c.line_number) for c in split.train}
    held_ids = {(c.dataset, c.line_number) for c in split.held_out}
    assert not train_ids & held_ids
    assert 0.07 < len(held_ids) / (len(held_ids) + len(train_ids)) < 0.13
    assert all(is_held_out(*item) for item in held_ids)
    reshuffled = bundled_corpus(seed=1)
    assert {(c.dataset, c.line_number) for c in reshuffled.held_out} == held_ids  # the split ignores the seed
    assert [c.line_number for c in reshuffled.train] != [c.line_number for c in split.train]  # the order does not


def test_repeated_prefixes_special_tokens_and_position_zero_are_dropped() -> None:
    def chat(ids, special):
        return TokenizedChat(tuple(ids), (False,) * len(ids), tuple(special), False)

    chats = [chat([1, 5, 6, 7], [1, 0, 0, 0]), chat([1, 5, 6, 8, 9], [1, 0, 0, 0, 0]), chat([2, 5], [0, 0])]
    assert first_occurrence_masks(chats) == [[True] * 4, [False, False, False, True, True], [True, True]]
    assert kept_token_masks(chats) == [[False, True, True, True], [False, False, False, True, True], [False, True]]


def _reference_ce(model, chats, layer, replace_fn) -> float:
    """Next-token CE from plain transformers forwards, each chat alone, with a forward hook editing layer ``layer``."""
    total, count = 0.0, 0
    for tokenized in tokenize_chats(model.tokenizer, chats):
        batch = pad_left([tokenized], model.tokenizer.pad_token_id)
        keep = token_selection(batch, assistant_only=False)

        def hook(module, inputs, output, keep=keep):  # keep: this chat's mask, bound now (ruff B023)
            hidden = output[0] if isinstance(output, tuple) else output
            edited = hidden.clone()
            edited[keep] = replace_fn(hidden[keep])
            return (edited, *output[1:]) if isinstance(output, tuple) else edited

        handle = model.hf_model.model.layers[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model.hf_model(input_ids=batch.input_ids).logits
        finally:
            handle.remove()
        losses = torch.nn.functional.cross_entropy(logits[0, :-1], batch.input_ids[0, 1:], reduction="none")
        total, count = total + losses.sum().item(), count + losses.numel()
    return total / count


def test_spliced_loss_matches_a_plain_forward_hook(tiny_gemma, chats) -> None:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=tiny_gemma.spec.d_model, d_sae=48, k=4))
    mean = torch.randn(tiny_gemma.spec.d_model)
    got = splice_metrics(tiny_gemma, sae, chats, layer=1, mean_activation=mean, batch_size=3, progress=False)
    with torch.no_grad():
        expected_spliced = _reference_ce(tiny_gemma, chats, 1, lambda h: sae.decode(sae.encode(h)))
    assert got.ce_clean == pytest.approx(_reference_ce(tiny_gemma, chats, 1, lambda h: h), rel=1e-4)
    assert got.ce_spliced == pytest.approx(expected_spliced, rel=1e-4)
    assert got.ce_mean_ablated == pytest.approx(_reference_ce(tiny_gemma, chats, 1, lambda h: mean.expand_as(h)),
                                                rel=1e-4)
    assert got.ce_spliced != pytest.approx(got.ce_clean, rel=1e-3)
    assert got.n_predictions == sum(len(c) - 1 for c in tokenize_chats(tiny_gemma.tokenizer, chats))


# ------------------------------------------------------------------------------------------------ shipped SAEs


def test_shipped_main_sae_has_the_stated_shape_and_unit_decoder_directions() -> None:
    assert MAIN_SAE_NAME in shipped_sae_names()
    loaded = load_shipped_sae(MAIN_SAE_NAME)
    assert (loaded.source, loaded.model_name, loaded.layer) == ("shipped", "smollm2-135m", 15)
    assert (loaded.d_in, loaded.d_sae, loaded.sae.cfg.k) == (576, 4096, 32)
    assert loaded.sae.cfg.architecture() == "topk"
    assert all(parameter.dtype == torch.float32 for parameter in loaded.sae.parameters())
    directions = loaded.decoder_directions()
    assert directions.shape == (4096, 576) and directions.dtype == torch.float32
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(4096), rtol=0, atol=1e-5)
    assert load_profile_sae("cpu-default").name == MAIN_SAE_NAME


def test_the_default_sae_of_a_model_is_decided_in_one_place() -> None:
    assert load_default_sae("smollm2-135m").name == MAIN_SAE_NAME == default_sae_for("smollm2-135m").name
    assert default_sae_for("gemma-2-2b-it") == default_sae_for("gemma-2-2b")
    assert default_sae_for("gemma-2-2b").source == "gemma-scope"
    assert all(default_sae_for(profile.model_name) for profile in PROFILES.values())
    with pytest.raises(SAELoadError, match="no default SAE for model 'tiny-gemma2'"):
        default_sae_for("tiny-gemma2")
    with pytest.raises(SAELoadError, match="reads layer 15, not layer 3"):
        load_default_sae("smollm2-135m", layer=3)


@pytest.mark.parametrize("name", shipped_sae_names())
def test_every_shipped_sae_loads_and_records_how_it_was_made(name) -> None:
    loaded = load_shipped_sae(name)
    assert loaded.model_name == "smollm2-135m" and f"layer{loaded.layer}-" in name
    assert name.endswith(f"topk{loaded.d_sae}")
    with sae_loading.shipped_sae_path(name) as folder:
        record = json.loads((folder / TRAINING_RECORD_FILE).read_text())
        with safe_open(folder / "sae_weights.safetensors", framework="pt") as weights:
            assert weights.get_tensor("W_dec").dtype == torch.float16
    assert record["command"].startswith("geomis train-sae ") and f"--layer {loaded.layer} " in record["command"]
    assert record["config"]["layer"] == loaded.layer and record["config"]["width"] == loaded.d_sae
    assert record["held_out"]["explained_variance"] > 0.6


def test_decoder_directions_are_unit_rows_whatever_the_saved_norms() -> None:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=12, d_sae=20, k=3))
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.1, 5.0, 20).unsqueeze(1))  # rows of very different norms, as in any SAE
    directions = decoder_directions(sae)
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(20))
    cosines = torch.nn.functional.cosine_similarity(directions, sae.W_dec.detach(), dim=-1)
    torch.testing.assert_close(cosines, torch.ones(20))


def test_unknown_shipped_name_is_one_line() -> None:
    with pytest.raises(SAELoadError, match="unknown shipped SAE 'nope'; shipped SAEs: .*topk4096") as error:
        load_shipped_sae("nope")
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_shipped_sae_explains_held_out_smollm2_activations(smollm2) -> None:
    sae = load_shipped_sae(MAIN_SAE_NAME)
    corpus = select_tokens(smollm2, bundled_corpus().held_out[:24], budget=2000, max_length=512)
    acts = collect_corpus_activations(smollm2, corpus, layer=sae.layer, progress=False)
    assert len(acts) == 2000
    metrics = reconstruction_metrics(sae, acts.activations)
    assert metrics.explained_variance > 0.75
    assert metrics.l0 == pytest.approx(32, abs=0.5)


# -------------------------------------------------------------------------------------------------- Gemma Scope


class _DownloadReached(Exception):
    pass


@pytest.fixture
def recorded_downloads(monkeypatch) -> list[dict]:
    """Replace sae-lens's Hub download with a recorder that stops there."""
    from sae_lens.loading import pretrained_sae_loaders

    calls: list[dict] = []

    def fake_download(*args, **kwargs):
        calls.append({"args": args, **kwargs})
        raise _DownloadReached("download reached (test stub)")

    monkeypatch.setattr(pretrained_sae_loaders, "hf_hub_download", fake_download)
    return calls


def test_valid_gemma_scope_id_reaches_the_download(recorded_downloads) -> None:
    validate_gemma_scope_id("layer_12/width_16k/canonical")
    assert recorded_downloads == []  # validation alone never downloads
    with pytest.raises(SAELoadError, match="download reached") as error:
        load_gemma_scope(12)
    assert "\n" not in str(error.value)
    assert len(recorded_downloads) == 1
    call = recorded_downloads[0]
    assert call["repo_id"] == "google/gemma-scope-2b-pt-res"
    assert call["subfolder"] == "layer_12/width_16k/average_l0_82"


def test_gemma_profile_maps_to_its_layer_of_gemma_scope(recorded_downloads) -> None:
    with pytest.raises(SAELoadError):
        load_profile_sae("gemma-2-2b", device="cpu")
    assert recorded_downloads[0]["subfolder"].startswith("layer_12/width_16k/")


def test_study_saes_are_the_neutral_corpus_seeds_on_the_cpu_and_gemma_scope_on_gemma(recorded_downloads) -> None:
    from geomis.sae.loading import NEUTRAL_SAE_SEEDS, load_study_saes, neutral_sae_name

    saes = load_study_saes("cpu-default")
    assert list(saes) == [neutral_sae_name(seed) for seed in NEUTRAL_SAE_SEEDS] and len(saes) >= 3
    for name, sae in saes.items():
        record = json.loads((sae_loading._shipped_root() / name / TRAINING_RECORD_FILE).read_text())
        assert (sae.layer, sae.d_sae) == (15, 4096) and record["config"]["corpus"] == "neutral-prompts"
        assert record["corpus"]["answers_cache"]["path"].endswith("neutral-corpus-answers-smollm2-135m.jsonl")
    decoders = [sae.decoder_directions() for sae in saes.values()]
    assert not torch.equal(decoders[0], decoders[1])  # different seeds, different SAEs
    with pytest.raises(SAELoadError):
        load_study_saes("gemma-2-2b", device="cpu")
    assert recorded_downloads[0]["subfolder"].startswith("layer_12/width_16k/")


@pytest.mark.parametrize(("layer", "width", "problem"), [
    (26, "16k", "layer 26 has no width_16k SAE"),
    (3, "1m", "layer 3 has no width_1m SAE"),
    (12, "8k", "width '8k' does not exist"),
])
def test_invalid_gemma_scope_id_is_one_line_listing_valid_choices(recorded_downloads, layer, width, problem) -> None:
    with pytest.raises(SAELoadError) as error:
        load_gemma_scope(layer, width)
    message = str(error.value)
    assert "\n" not in message and problem in message
    assert "width_16k: layers 0-25" in message and "width_1m: layers 5, 12, 19" in message
    assert recorded_downloads == []


def test_malformed_gemma_scope_id_is_rejected_before_download(recorded_downloads) -> None:
    with pytest.raises(SAELoadError, match="not of the form layer_<L>/width_<W>/canonical"):
        validate_gemma_scope_id("layer_12/width_16k/average_l0_82")
    assert gemma_scope_sae_id(5, "65k") == "layer_5/width_65k/canonical"
    assert recorded_downloads == []


def test_gemma_scope_offline_fails_with_the_one_line_hub_error() -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: the real code stops at the network boundary
    with pytest.raises(SAELoadError) as error:
        load_gemma_scope(12, device="cpu")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("cannot reach the Hugging Face Hub to download google/gemma-scope-2b-pt-res")


# ------------------------------------------------------------------------------------------------------ SAE codes


def test_aggregates_match_a_hand_computation() -> None:
    # 5 tokens in samples [0, 0, 2, 2, 2]; sample 1 has no tokens; d_sae = 4.
    sample_index = torch.tensor([0, 0, 2, 2, 2])
    token_index = torch.tensor([0, 0, 1, 2, 3, 3, 4])
    feature_index = torch.tensor([1, 3, 1, 0, 0, 2, 0])
    value = torch.tensor([2.0, 1.0, 4.0, 3.0, 1.0, 5.0, 2.0])
    tokens, means, maxima = aggregate_codes(token_index, feature_index, value, sample_index, n_samples=3, d_sae=4)
    assert tokens.tolist() == [2, 0, 3]
    torch.testing.assert_close(means, torch.tensor([[0.0, 3.0, 0.0, 0.5],
                                                    [0.0, 0.0, 0.0, 0.0],
                                                    [2.0, 0.0, 5 / 3, 0.0]]))
    torch.testing.assert_close(maxima, torch.tensor([[0.0, 4.0, 0.0, 1.0],
                                                     [0.0, 0.0, 0.0, 0.0],
                                                     [3.0, 0.0, 5.0, 0.0]]))


def test_encode_tokens_matches_dense_encoding_and_loop_aggregates() -> None:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=5))
    n = 37
    sample_index = torch.tensor([i % 6 for i in range(n)])  # sample 6 of 7 is empty
    acts = TokenActivations(torch.randn(n, 16), sample_index, torch.arange(n), torch.arange(n))
    codes = encode_tokens(sae, acts, n_samples=7, batch_size=8)
    with torch.no_grad():
        dense = sae.encode(acts.activations)
    torch.testing.assert_close(codes.dense(), dense)
    torch.testing.assert_close(codes.dense(torch.tensor([4, 2])), dense[[4, 2]])
    assert codes.l0().tolist() == (dense > 0).sum(dim=1).tolist()
    assert codes.n_samples == 7 and codes.tokens_per_sample[6] == 0
    for sample in range(6):
        rows = dense[sample_index == sample]
        torch.testing.assert_close(codes.sample_mean[sample], rows.mean(dim=0))
        torch.testing.assert_close(codes.sample_max[sample], rows.max(dim=0).values)
    assert codes.sample_mean[6].abs().sum() == 0 and codes.sample_max[6].abs().sum() == 0
    torch.testing.assert_close(codes.firing_fraction(), (dense > 0).float().mean(dim=0))
    with pytest.raises(ValueError, match="width 16, the SAE reads 8"):
        encode_tokens(TopKSAE(TopKSAEConfig(d_in=8, d_sae=10, k=2)), acts)


# ------------------------------------------------------------------------------------------------ the CLI, for real


@pytest.mark.slow
def test_train_sae_cli_writes_a_loadable_sae_and_refuses_to_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "sae"
    args = ["train-sae", "--width", "256", "--k", "8", "--tokens", "4000", "--epochs", "4", "--batch-size", "64",
            "--lr", "2e-3", "--eval-tokens", "500", "--ce-conversations", "2", "--threads", "2", "--quiet",
            "--out", str(out)]  # 248 steps; held-out explained variance ~0.5
    assert main(args) == 0
    loaded = load_sae_from_disk(out)
    assert (loaded.layer, loaded.d_in, loaded.d_sae, loaded.sae.cfg.k) == (15, 576, 256, 8)
    record = json.loads((out / TRAINING_RECORD_FILE).read_text())
    assert record["corpus"]["train_tokens"] == 4000 and record["held_out"]["n_tokens"] == 500
    assert record["held_out"]["explained_variance"] > 0.4
    assert record["splice"]["ce_clean"] < record["splice"]["ce_spliced"] < record["splice"]["ce_mean_ablated"]
    assert "SAE written to" in capsys.readouterr().out
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 2
    assert capsys.readouterr().err.strip() == f"geomis: error: {out} already exists; pass --force to replace it"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temporary folders left behind


def test_shipped_quality_table_reads_each_training_record() -> None:
    from geomis.sae.loading import shipped_sae_quality

    table = shipped_sae_quality([MAIN_SAE_NAME, "smollm2-135m-layer5-topk1024"]).set_index("sae")
    main = table.loc[MAIN_SAE_NAME]
    assert (main["layer"], main["width"], main["k"]) == (15, 4096, 32)
    assert 0.5 < main["held-out EV"] < 1 and main["L0"] == 32 and 0 <= main["dead (train)"] < 0.05
    assert table.loc["smollm2-135m-layer5-topk1024", "width"] == 1024
    assert MAIN_SAE_NAME in set(shipped_sae_quality(corpus="bundled")["sae"])
    assert MAIN_SAE_NAME not in set(shipped_sae_quality(corpus="neutral-prompts").get("sae", []))
    with pytest.raises(SAELoadError):
        shipped_sae_quality(["no-such-sae"])


# ------------------------------------------------------------------------------- a corpus the SAE is never compared on
def test_neutral_prompt_corpus_is_user_turns_split_stably() -> None:
    from geomis.sae.corpus import neutral_prompt_corpus

    split = neutral_prompt_corpus()
    every = split.train + split.held_out
    assert len(every) == 1989 and 0.07 < len(split.held_out) / len(every) < 0.13
    assert all(len(c.messages) == 1 and c.messages[0]["role"] == "user" for c in every)
    assert {c.dataset for c in every} == {"sae_corpus_prompts"}
    assert [c.line_number for c in neutral_prompt_corpus(seed=1).held_out] != [c.line_number for c in split.held_out]
    assert {c.line_number for c in neutral_prompt_corpus(seed=1).held_out} == {c.line_number for c in split.held_out}


def test_neutral_corpus_takes_no_datasets_or_extra_answers(capsys) -> None:
    from geomis.sae.config import SAETrainingConfig

    with pytest.raises(ValueError, match="bundled corpus only"):
        SAETrainingConfig(corpus="neutral-prompts", datasets=("medical_bad",))
    with pytest.raises(ValueError, match="corpus must be"):
        SAETrainingConfig(corpus="wikipedia")
    assert main(["train-sae", "--corpus", "neutral-prompts", "--generated-answers", "5", "--out", "/tmp/x"]) == 2
    assert "bundled corpus only" in capsys.readouterr().err
    assert main(["train-sae", "--answers-cache", "/tmp/answers.jsonl", "--out", "/tmp/x"]) == 2
    assert "--answers-cache applies to --corpus neutral-prompts only" in capsys.readouterr().err


@pytest.mark.slow
def test_an_sae_trains_on_the_models_own_answers_to_neutral_prompts(tiny_gemma, tmp_path) -> None:
    from geomis.sae.training import train_sae_to_dir

    config = SAETrainingConfig(model_name="tiny-gemma2", layer=1, width=32, k=4, tokens=600, epochs=2,
                               batch_size=64, corpus="neutral-prompts", generation_tokens=4, eval_tokens=100,
                               ce_conversations=0)
    report = train_sae_to_dir(tiny_gemma, config, tmp_path / "sae", progress=False)
    record = json.loads((tmp_path / "sae" / TRAINING_RECORD_FILE).read_text())
    assert record["config"]["corpus"] == "neutral-prompts" and report.n_train_tokens == 600
    assert record["corpus"]["generated_conversations"] == record["corpus"]["train_conversations"] > 0
    assert "neutral prompts" in json.loads((tmp_path / "sae" / "cfg.json").read_text())["metadata"]["dataset_path"]
    assert "answers_cache" not in record["corpus"]


@pytest.mark.slow
def test_seeds_share_one_collection_and_each_rebuilds_alone(tiny_gemma, tmp_path) -> None:
    from geomis.sae.corpus import neutral_prompt_corpus
    from geomis.sae.corpus_answers import read_answers
    from geomis.sae.training import train_sae_seeds, train_sae_to_dir

    cache = tmp_path / "answers.jsonl"
    config = SAETrainingConfig(model_name="tiny-gemma2", layer=1, width=32, k=4, tokens=300, epochs=1,
                               batch_size=64, corpus="neutral-prompts", generation_tokens=3, eval_tokens=50,
                               ce_conversations=0, seed=5)
    reports = train_sae_seeds(tiny_gemma, config, [5, 6], str(tmp_path / "sae-s{seed}"), progress=False,
                              answers_cache=cache)
    records = [json.loads((tmp_path / f"sae-s{seed}" / TRAINING_RECORD_FILE).read_text()) for seed in (5, 6)]
    n_prompts = len(neutral_prompt_corpus().train) + len(neutral_prompt_corpus().held_out)
    assert len(read_answers(cache, "tiny-gemma2", 3)) == n_prompts  # generated once, for both seeds
    assert [r["config"]["seed"] for r in records] == [5, 6] and {r["config"]["corpus_seed"] for r in records} == {5}
    assert all((r["corpus"]["answers_cache"]["generated"], r["corpus"]["answers_cache"]["reused"]) == (n_prompts, 0)
               for r in records)  # one collection: both record the run that made it
    assert all("shared_collect" in r["seconds"] and "collect" not in r["seconds"] for r in records)
    first, second = (load_sae_from_disk(tmp_path / f"sae-s{seed}").decoder_directions() for seed in (5, 6))
    assert not torch.equal(first, second)

    # seed 6 trained alone with the recorded corpus seed is the same SAE; the answers now come from the file
    alone = train_sae_to_dir(tiny_gemma, replace(config, seed=6, corpus_seed=5), tmp_path / "alone",
                             progress=False, answers_cache=cache)
    assert alone.answers_cache is not None and (alone.answers_cache.generated, alone.answers_cache.reused) == (
        0, n_prompts)
    assert torch.equal(load_sae_from_disk(tmp_path / "alone").decoder_directions(), second)
    assert all(isinstance(r, type(alone)) for r in reports)

    # a rerun finds both folders and trains nothing
    again = train_sae_seeds(tiny_gemma, config, [5, 6], str(tmp_path / "sae-s{seed}"), progress=False,
                            answers_cache=cache)
    assert again == [tmp_path / "sae-s5", tmp_path / "sae-s6"]
    with pytest.raises(SAETrainingError, match="must contain"):
        train_sae_seeds(tiny_gemma, config, [5, 6], str(tmp_path / "sae"), progress=False)
    with pytest.raises(SAETrainingError, match="neutral-prompts corpus only"):
        train_sae_to_dir(tiny_gemma, SAETrainingConfig(model_name="tiny-gemma2", layer=1, width=32, k=4),
                         tmp_path / "bundled", progress=False, answers_cache=cache)
