"""A tiny random-weight Gemma-2 model with a locally built tokenizer: the Gemma code path, offline, in milliseconds.

Nothing here is trained; it exists so that tests exercise exactly the classes, chat template and module layout that
Gemma-2 2B uses (``Gemma2ForCausalLM``, ``model.layers[i]``, ``<start_of_turn>`` turns) without the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")

# A Gemma-style template written for this project: system text is folded into the first user turn, as Gemma has no
# system role; the assistant speaks as "model".
TINY_GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set system = namespace(text='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set system.text = message['content'] + '\n\n' %}"
    "{% else %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['role'] == 'user' %}{{ system.text }}{% set system.text = '' %}{% endif %}"
    "{{ message['content'] }}<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class TinyGemmaConfig:
    """Sizes of the tiny Gemma-2 model; defaults keep a forward pass well under a millisecond per token."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    max_position_embeddings: int = 512
    seed: int = 0


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Build a byte-level tokenizer (one token per byte, so any text encodes) with Gemma's special tokens."""
    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for symbol in sorted(byte_alphabet):
        vocab[symbol] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    tokenizer.chat_template = TINY_GEMMA_CHAT_TEMPLATE
    return tokenizer


def build_tiny_gemma2(config: TinyGemmaConfig = TinyGemmaConfig()) -> tuple[Gemma2ForCausalLM, PreTrainedTokenizerFast]:
    """Build a seeded random ``Gemma2ForCausalLM`` and its tokenizer for offline tests of the Gemma path."""
    tokenizer = build_tiny_tokenizer()
    model_config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        sliding_window=64,
        # a PreTrainedConfig keyword taken through **kwargs, which the strict dataclass's typed __init__ does not show
        attn_implementation="eager",  # pyright: ignore[reportCallIssue]
    )
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(config.seed)
        model = Gemma2ForCausalLM(model_config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    return model, tokenizer
