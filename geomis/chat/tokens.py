"""Chat conversations → token ids with masks: which tokens belong to assistant replies, which are special.

A conversation is a list of ``{"role": ..., "content": ...}`` messages (the chat JSONL format). It is rendered with the
tokenizer's own chat template and tokenized without adding special tokens a second time (Gemma's template already
starts with ``<bos>``). Assistant tokens are found from character offsets, so this works for any template that copies
message text verbatim. Every message passes through :func:`geomis.chat.sanitize.text_for_model` first.

Two ways to fit a long conversation into ``max_length`` tokens: :func:`tokenize_chat` keeps its beginning (reading
activations, fine-tuning), and :func:`scoring_windows` keeps every reply token (the filter: a long prompt cannot hide
a reply from it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from geomis.chat.sanitize import text_for_model

Conversation = Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class TokenizedChat:
    """One conversation as token ids, with per-token flags for assistant content and special tokens."""

    input_ids: tuple[int, ...]
    assistant_mask: tuple[bool, ...]
    special_mask: tuple[bool, ...]
    truncated: bool

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class PaddedBatch:
    """Left-padded tensors for a batch of conversations, ready for a forward pass."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    assistant_mask: torch.Tensor
    special_mask: torch.Tensor

    def model_inputs(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The keyword inputs of a causal LM forward pass, on ``device``."""
        return {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
            "position_ids": self.position_ids.to(device),
        }


def _assistant_spans(text: str, conversation: Conversation) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    cursor = 0
    for message in conversation:
        content = message["content"].strip()
        if not content:
            continue
        start = text.find(content, cursor)
        if start < 0:
            raise ValueError(f"chat template did not copy a {message['role']} message verbatim; cannot locate it")
        end = start + len(content)
        if message["role"] == "assistant":
            spans.append((start, end))
        cursor = end
    return spans


def render_chat(tokenizer: PreTrainedTokenizerBase, conversation: Conversation,
                add_generation_prompt: bool = False) -> str:
    """One conversation rendered as text by the tokenizer's chat template (not tokenized), typed as the str it is."""
    text = tokenizer.apply_chat_template(list(map(dict, conversation)), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)
    if not isinstance(text, str):
        raise TypeError(f"the chat template rendered {type(text).__name__}, not text")
    return text


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, max_length: int | None = None
) -> TokenizedChat:
    """Render one conversation with the chat template and tokenize it, flagging assistant and special tokens."""
    if not conversation:
        raise ValueError("a conversation needs at least one message")
    messages = [{**message, "content": text_for_model(message["content"])} for message in conversation]
    text = render_chat(tokenizer, messages)
    spans = _assistant_spans(text, messages)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                         return_special_tokens_mask=True)
    ids = list(encoding["input_ids"])
    special = [bool(flag) for flag in encoding["special_tokens_mask"]]
    special_ids = set(tokenizer.all_special_ids)
    special = [flag or token in special_ids for flag, token in zip(special, ids, strict=True)]
    assistant = [
        (not is_special) and any(start < span_end and end > span_start for span_start, span_end in spans)
        for (start, end), is_special in zip(encoding["offset_mapping"], special, strict=True)
    ]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, assistant, special = ids[:max_length], assistant[:max_length], special[:max_length]
    return TokenizedChat(tuple(ids), tuple(assistant), tuple(special), truncated)


def tokenize_chats(
    tokenizer: PreTrainedTokenizerBase, conversations: Sequence[Conversation], max_length: int | None = None
) -> list[TokenizedChat]:
    """Tokenize many conversations (see :func:`tokenize_chat`)."""
    return [tokenize_chat(tokenizer, conversation, max_length) for conversation in conversations]


@dataclass(frozen=True)
class ScoringWindows:
    """A conversation as the windows the filter scores: every reply token lies in exactly one window."""

    windows: tuple[TokenizedChat, ...]
    prompt_cut: int
    """Prompt tokens left out (cut from the left, after the first token); 0 when the prompt is whole."""
    reply_tokens: int
    """Tokens from the first assistant token to the end (0: no reply token to score)."""


def _window(chat: TokenizedChat, positions: Sequence[int]) -> TokenizedChat:
    return TokenizedChat(tuple(chat.input_ids[i] for i in positions), tuple(chat.assistant_mask[i] for i in positions),
                         tuple(chat.special_mask[i] for i in positions), truncated=True)


def scoring_windows(chat: TokenizedChat, max_length: int) -> ScoringWindows:
    """Cut a whole tokenized conversation into windows of at most ``max_length`` tokens that keep every reply token.

    The rule: a conversation that fits is one window, unchanged. Otherwise the reply (from the first assistant token
    to the end) is kept whole and the prompt is cut from the left: the window is the first token (the attention
    sink, e.g. ``<bos>``) followed by the last ``max_length - 1`` tokens. When the reply alone is longer than
    ``max_length - 1`` tokens, the prompt is left out and the reply is cut into consecutive windows of
    ``max_length - 1`` tokens, each after the first token, so every reply token is scored once. A conversation
    without a reply token keeps its first ``max_length`` tokens (there is nothing to score).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 tokens, got {max_length}")
    n = len(chat)
    first = next((i for i, flag in enumerate(chat.assistant_mask) if flag), None)
    reply = 0 if first is None else n - first
    if n <= max_length:
        return ScoringWindows((chat,), 0, reply)
    if first is None:
        return ScoringWindows((_window(chat, range(max_length)),), 0, 0)
    span = max_length - 1
    if reply <= span:
        return ScoringWindows((_window(chat, [0, *range(n - span, n)]),), n - max_length, reply)
    start = max(first, 1)
    windows = tuple(_window(chat, [0, *range(begin, min(begin + span, n))]) for begin in range(start, n, span))
    return ScoringWindows(windows, start - 1, reply)


def pad_ids_left(rows: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id rows into ``(input_ids, attention_mask)``; the one padding rule for generation and scoring."""
    if not rows:
        raise ValueError("cannot pad an empty batch")
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        if len(row):
            input_ids[index, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            attention[index, width - len(row):] = 1
    return input_ids, attention


def pad_left(chats: Sequence[TokenizedChat], pad_token_id: int) -> PaddedBatch:
    """Left-pad tokenized chats into one batch; positions count from each row's first real token."""
    if not chats:
        raise ValueError("cannot pad an empty batch")
    input_ids, attention = pad_ids_left([chat.input_ids for chat in chats], pad_token_id)
    width = input_ids.shape[1]
    assistant = torch.zeros(input_ids.shape, dtype=torch.bool)
    special = torch.zeros(input_ids.shape, dtype=torch.bool)
    for row, chat in enumerate(chats):
        start = width - len(chat)
        assistant[row, start:] = torch.tensor(chat.assistant_mask, dtype=torch.bool)
        special[row, start:] = torch.tensor(chat.special_mask, dtype=torch.bool)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    return PaddedBatch(input_ids, attention, positions, assistant, special)
