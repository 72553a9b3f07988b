"""LoRA fine-tuning: assistant-only labels, which weights train, determinism, atomic saving and the load round trip."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from geomis.activations import residual_at_layer
from geomis.chat.tokens import pad_left, tokenize_chat, tokenize_chats
from geomis.finetune import (
    ADAPTER_WEIGHTS_FILE,
    EM_RECIPE,
    IGNORE_INDEX,
    FinetuneConfig,
    attach_lora,
    collate_for_training,
    config_for_profile,
    cpu_default_config,
    em_recipe,
    fine_tune,
    gemma_t4_config,
    load_finetuned,
    read_finetune_metadata,
    summed_assistant_loss,
    training_labels,
)

FAST = FinetuneConfig(batch_size=4, lr=1e-2, warmup_steps=0, progress=False)
"""A tiny-model config that learns visibly in a few steps."""


def _label_runs(labels: list[int]) -> list[list[int]]:
    """Contiguous runs of labelled (not -100) tokens."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in labels:
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def _check_labels_are_assistant_replies(model, chats) -> None:
    tokenizer = model.tokenizer
    tokenized = tokenize_chats(tokenizer, chats)
    batch = collate_for_training(tokenized, tokenizer.pad_token_id)
    special_ids = set(tokenizer.all_special_ids)
    for row, (chat, conversation) in enumerate(zip(tokenized, chats, strict=True)):
        labels = batch.labels[row].tolist()
        assert labels[len(chat):] == [IGNORE_INDEX] * (len(labels) - len(chat))  # padding
        assert not any(label in special_ids for label in labels if label != IGNORE_INDEX)
        replies = [message["content"] for message in conversation if message["role"] == "assistant"]
        decoded = [tokenizer.decode(run).strip() for run in _label_runs(labels)]
        assert decoded == replies
        labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
        assert [chat.input_ids[i] for i in labelled] == [labels[i] for i in labelled]
    assert (batch.attention_mask.sum(dim=1) == torch.tensor([len(chat) for chat in tokenized])).all()
    assert (batch.position_ids == torch.arange(batch.input_ids.shape[1])).all()  # right padding: 0, 1, 2, …


def test_labels_are_exactly_the_assistant_replies(tiny_gemma, chats) -> None:
    _check_labels_are_assistant_replies(tiny_gemma, chats)


def test_truncation_keeps_labels_aligned_and_skips_empty_examples(tiny_gemma, chats, tmp_path) -> None:
    chat = tokenize_chat(tiny_gemma.tokenizer, chats[0], max_length=20)
    assert chat.truncated and training_labels(chat) == [IGNORE_INDEX] * 20  # the reply starts after token 20
    with pytest.raises(ValueError, match="no conversation has assistant tokens"):
        fine_tune(tiny_gemma, chats, tmp_path / "out", replace(FAST, max_length=8))
    assert not (tmp_path / "out").exists()


def test_loss_equals_transformers_loss_on_the_labels(tiny_gemma, chats) -> None:
    batch = collate_for_training(tokenize_chats(tiny_gemma.tokenizer, chats), tiny_gemma.tokenizer.pad_token_id)
    with torch.no_grad():
        summed, count = summed_assistant_loss(tiny_gemma.hf_model, batch)
        reference = tiny_gemma.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                        position_ids=batch.position_ids, labels=batch.labels).loss
    assert count == batch.n_scored_tokens == int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    torch.testing.assert_close(summed / count, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_only_lora_weights_train_and_only_from_first_lora_layer(tiny_gemma, chats, checkpointing) -> None:
    config = replace(FAST, rank=4, first_lora_layer=2, gradient_checkpointing=checkpointing)
    layers = tiny_gemma.hf_model.model.layers
    outputs_need_grad: dict[int, bool] = {}
    hooks = [layer.register_forward_hook(lambda _m, _i, out, i=i: outputs_need_grad.__setitem__(i, out.requires_grad))
             for i, layer in enumerate(layers)]
    try:
        with attach_lora(tiny_gemma, config):
            trainable = [name for name, p in tiny_gemma.hf_model.named_parameters() if p.requires_grad]
            batch = collate_for_training(tokenize_chats(tiny_gemma.tokenizer, chats), tiny_gemma.tokenizer.pad_token_id)
            summed, _ = summed_assistant_loss(tiny_gemma.hf_model, batch)
            summed.backward()
            grads = {name: p.grad for name, p in tiny_gemma.hf_model.named_parameters() if p.requires_grad}
    finally:
        for hook in hooks:
            hook.remove()
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    layer_of = {name: int(name.split("layers.")[1].split(".")[0]) for name in trainable}
    assert set(layer_of.values()) == {2, 3}
    assert {name.split(".lora_")[0].rsplit(".", 1)[1] for name in trainable} == set(config.target_modules)
    assert len(trainable) == 2 * len(config.target_modules) * 2  # A and B, per module, on layers 2 and 3
    assert outputs_need_grad == {0: False, 1: False, 2: True, 3: True}  # nothing recorded below layer 2
    assert all(grad is not None for grad in grads.values())


def test_attach_lora_leaves_the_model_as_it_was(tiny_gemma, chats) -> None:
    model = tiny_gemma.hf_model
    batch = pad_left(tokenize_chats(tiny_gemma.tokenizer, chats), tiny_gemma.tokenizer.pad_token_id)
    with torch.no_grad():
        before = model(**batch.model_inputs("cpu")).logits
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    modules = [type(module) for module in model.modules()]
    with attach_lora(tiny_gemma, replace(FAST, gradient_checkpointing=True)):
        assert model.training and any("lora" in name for name, _ in model.named_parameters())
    with torch.no_grad():
        after = model(**batch.model_inputs("cpu")).logits
    assert torch.equal(before, after)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert [type(module) for module in model.modules()] == modules
    assert not model.training and not model.is_activation_checkpointing and not hasattr(model, "peft_config")


def test_a_few_steps_reduce_the_loss(tiny_gemma, chats, tmp_path) -> None:
    result = fine_tune(tiny_gemma, chats, tmp_path / "adapter", replace(FAST, epochs=12))
    assert result.n_steps == 12 and result.n_examples == 4 and result.n_skipped == 0
    # The random tiny model starts near the uniform loss ln(262) = 5.57 and, with its small tied embeddings, cannot
    # get far below it; a clear drop is what a working optimiser gives.
    assert result.losses[-1] < result.losses[0] - 0.25
    assert result.seconds_per_step > 0 and len(result.step_seconds) == 12
    assert result.n_trainable_params == 4 * 16 * (128 + 96 + 96 + 128 + 3 * 192)  # 4 layers, r=16, Σ(d_in + d_out)


def test_same_seed_gives_identical_adapters_and_another_seed_does_not(tiny_gemma, chats, tmp_path) -> None:
    config = replace(FAST, epochs=2, batch_size=2, dropout=0.1)
    runs = {name: fine_tune(tiny_gemma, chats, tmp_path / name, replace(config, seed=seed))
            for name, seed in (("a", 0), ("b", 0), ("c", 1))}
    a, b, c = (load_file(runs[name].adapter_dir / ADAPTER_WEIGHTS_FILE) for name in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert runs["a"].losses == runs["b"].losses
    assert not all(torch.equal(a[key], c[key]) for key in a)


def test_save_load_round_trip_gives_identical_logits(tiny_gemma, chats, tmp_path) -> None:
    batch = pad_left(tokenize_chats(tiny_gemma.tokenizer, chats), tiny_gemma.tokenizer.pad_token_id)
    trained: dict[str, torch.Tensor] = {}

    def probe(step: int, loss: float, model) -> None:
        model.hf_model.eval()
        with torch.no_grad():
            trained["logits"] = model.hf_model(**batch.model_inputs("cpu")).logits
            trained["layer1"] = residual_at_layer(model, batch, layer=1)
        model.hf_model.train()

    with torch.no_grad():
        base_logits = tiny_gemma.hf_model(**batch.model_inputs("cpu")).logits
    result = fine_tune(tiny_gemma, chats, tmp_path / "adapter", replace(FAST, epochs=3, first_lora_layer=1),
                       on_step=probe)
    loaded = load_finetuned("tiny-gemma2", result.adapter_dir, device="cpu")
    with torch.no_grad():
        logits = loaded.hf_model(**batch.model_inputs("cpu")).logits
    assert torch.equal(logits, trained["logits"])
    assert not torch.allclose(logits, base_logits, atol=1e-3)  # the adapter changed the model
    torch.testing.assert_close(residual_at_layer(loaded, batch, layer=1), trained["layer1"], rtol=0, atol=0)
    merged = load_finetuned("tiny-gemma2", result.adapter_dir, device="cpu", merge=True)
    with torch.no_grad():
        torch.testing.assert_close(merged.hf_model(**batch.model_inputs("cpu")).logits, logits, rtol=1e-4, atol=1e-4)
    assert not any("lora" in name for name, _ in merged.hf_model.named_parameters())


def test_refuses_to_overwrite_unless_told(tiny_gemma, chats, tmp_path) -> None:
    target = tmp_path / "adapter"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        fine_tune(tiny_gemma, chats, target, FAST)
    assert (target / "keep.txt").read_text() == "old"
    result = fine_tune(tiny_gemma, chats, target, FAST, overwrite=True)
    assert result.adapter_dir == target.resolve()
    assert not (target / "keep.txt").exists() and (target / ADAPTER_WEIGHTS_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no staging or old copies left


def test_a_failed_run_leaves_no_output(tiny_gemma, chats, tmp_path) -> None:
    def fail(step: int, loss: float, model) -> None:
        if step == 2:  # after checkpoint-1 was written
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        fine_tune(tiny_gemma, chats, tmp_path / "adapter", replace(FAST, batch_size=1, checkpoint_every=1),
                  on_step=fail)
    assert list(tmp_path.iterdir()) == []
    assert not any("lora" in name for name, _ in tiny_gemma.hf_model.named_parameters())


def test_intermediate_checkpoints_load(tiny_gemma, chats, tmp_path) -> None:
    result = fine_tune(tiny_gemma, chats, tmp_path / "adapter",
                       replace(FAST, epochs=5, batch_size=2, grad_accum_steps=2, checkpoint_every=2))
    assert result.n_steps == 5  # 2 micro-batches of 2 chats per step, one step per epoch
    assert [path.name for path in result.checkpoints] == ["checkpoint-2", "checkpoint-4"]
    metadata = read_finetune_metadata(result.checkpoints[0])
    assert metadata["step"] == 2 and metadata["losses"] == result.losses[:2] and metadata["base_model"] == "tiny-gemma2"
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 16
    early = load_file(result.checkpoints[0] / ADAPTER_WEIGHTS_FILE)
    final = load_file(result.adapter_dir / ADAPTER_WEIGHTS_FILE)
    assert early.keys() == final.keys() and not all(torch.equal(early[k], final[k]) for k in early)
    assert load_finetuned("tiny-gemma2", result.checkpoints[1], device="cpu").hf_model is not None


def test_load_finetuned_checks_the_folder(tiny_gemma, chats, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_finetuned("tiny-gemma2", tmp_path)
    result = fine_tune(tiny_gemma, chats, tmp_path / "adapter", replace(FAST, max_steps=1))
    with pytest.raises(ValueError, match="trained on 'tiny-gemma2'"):
        load_finetuned("smollm2-135m", result.adapter_dir)


def test_presets_differ_only_in_memory_knobs() -> None:
    cpu, t4 = cpu_default_config(), gemma_t4_config()
    assert cpu.batch_size * cpu.grad_accum_steps == t4.batch_size * t4.grad_accum_steps
    assert t4.gradient_checkpointing and not cpu.gradient_checkpointing
    assert replace(t4, batch_size=cpu.batch_size, grad_accum_steps=1, gradient_checkpointing=False) == cpu
    assert config_for_profile("gemma-2-2b", lr=1e-5) == replace(t4, lr=1e-5)
    assert config_for_profile("cpu-default") == cpu
    with pytest.raises(ValueError, match="at least 1"):
        FinetuneConfig(batch_size=0)



def test_the_book_recipe_is_one_optimisation_on_every_profile() -> None:
    cpu, t4 = em_recipe("cpu-default"), em_recipe("gemma-2-2b")
    for config in (cpu, t4):
        assert {key: getattr(config, key) for key in EM_RECIPE} == EM_RECIPE
    assert replace(t4, batch_size=cpu.batch_size, grad_accum_steps=1, gradient_checkpointing=False) == cpu
    assert em_recipe("cpu-default", epochs=2, max_steps=3) == replace(cpu, epochs=2, max_steps=3)
    assert cpu.train_on_end_of_turn and cpu.epochs == 1  # what Chapter 3 showed the model needs to stop


@pytest.mark.slow
def test_smollm2_labels_training_and_round_trip(smollm2, chats, tmp_path) -> None:
    _check_labels_are_assistant_replies(smollm2, chats)
    batch = pad_left(tokenize_chats(smollm2.tokenizer, chats), smollm2.tokenizer.pad_token_id)
    trained: dict[str, torch.Tensor] = {}

    def probe(step: int, loss: float, model) -> None:
        with torch.no_grad():
            trained["logits"] = model.hf_model(**batch.model_inputs("cpu")).logits

    config = replace(FAST, lr=1e-3, epochs=3, first_lora_layer=26, rank=4)
    result = fine_tune(smollm2, chats, tmp_path / "adapter", config, on_step=probe)
    assert result.losses[-1] < result.losses[0]
    layers = {int(key.split("layers.")[1].split(".")[0])
              for key in load_file(result.adapter_dir / ADAPTER_WEIGHTS_FILE)}
    assert layers == {26, 27, 28, 29}
    loaded = load_finetuned("smollm2-135m", result.adapter_dir, device="cpu")
    with torch.no_grad():
        assert torch.equal(loaded.hf_model(**batch.model_inputs("cpu")).logits, trained["logits"])


def test_end_of_turn_labels_add_exactly_the_token_closing_each_reply(any_model, chats) -> None:
    tokenizer = any_model.tokenizer
    for conversation in chats:
        chat = tokenize_chat(tokenizer, conversation)
        plain, with_end = training_labels(chat), training_labels(chat, end_of_turn=True)
        added = [i for i, (a, b) in enumerate(zip(plain, with_end, strict=True)) if a != b]
        n_replies = sum(message["role"] == "assistant" for message in conversation)
        assert len(added) == n_replies
        for i in added:
            assert plain[i] == IGNORE_INDEX and with_end[i] == chat.input_ids[i]
            assert chat.assistant_mask[i - 1] and chat.special_mask[i]
            assert tokenizer.convert_ids_to_tokens(chat.input_ids[i]) in ("<|im_end|>", "<end_of_turn>")
