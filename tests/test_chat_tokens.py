"""Tokenizing chats: assistant masks cover exactly the replies, special tokens are flagged, left padding is sound."""

from __future__ import annotations

import pytest
import torch

from geomis.chat.tokens import pad_left, scoring_windows, tokenize_chat, tokenize_chats


def _assistant_text(model, chat) -> str:
    return model.tokenizer.decode([token for token, keep in zip(chat.input_ids, chat.assistant_mask, strict=True)
                                   if keep])


def test_assistant_mask_decodes_to_exactly_the_replies(any_model, chats) -> None:
    for conversation in chats:
        tokenized = tokenize_chat(any_model.tokenizer, conversation)
        replies = "".join(m["content"] for m in conversation if m["role"] == "assistant")
        assert _assistant_text(any_model, tokenized).replace(" ", "") == replies.replace(" ", "")


def test_user_and_system_text_is_not_assistant(any_model, chats) -> None:
    tokenized = tokenize_chat(any_model.tokenizer, chats[1])
    assert "prime" not in _assistant_text(any_model, tokenized)
    assert "briefly" not in _assistant_text(any_model, tokenized)


def test_special_tokens_are_flagged_and_bos_is_not_doubled(tiny_gemma, chats) -> None:
    tokenized = tokenize_chat(tiny_gemma.tokenizer, chats[0])
    bos = tiny_gemma.tokenizer.bos_token_id
    assert tokenized.input_ids[0] == bos and tokenized.input_ids.count(bos) == 1
    specials = {tokenized.input_ids[i] for i, flag in enumerate(tokenized.special_mask) if flag}
    turn_markers = set(tiny_gemma.tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]))
    assert turn_markers <= specials
    assert not any(a and s for a, s in zip(tokenized.assistant_mask, tokenized.special_mask, strict=True))


def test_truncation_keeps_the_start(any_model, chats) -> None:
    full = tokenize_chat(any_model.tokenizer, chats[2])
    short = tokenize_chat(any_model.tokenizer, chats[2], max_length=10)
    assert short.truncated and not full.truncated
    assert short.input_ids == full.input_ids[:10]


def test_empty_conversation_is_rejected(tiny_gemma) -> None:
    with pytest.raises(ValueError, match="at least one message"):
        tokenize_chat(tiny_gemma.tokenizer, [])


def test_pad_left_aligns_rows_to_the_right_and_counts_positions_from_first_token(tiny_gemma, chats) -> None:
    tokenized = tokenize_chats(tiny_gemma.tokenizer, chats)
    batch = pad_left(tokenized, pad_token_id=tiny_gemma.tokenizer.pad_token_id)
    width = max(len(t) for t in tokenized)
    assert batch.input_ids.shape == (len(chats), width)
    for row, chat in enumerate(tokenized):
        pad = width - len(chat)
        assert batch.attention_mask[row, :pad].sum() == 0 and batch.attention_mask[row, pad:].all()
        assert batch.input_ids[row, pad:].tolist() == list(chat.input_ids)
        assert batch.position_ids[row, pad:].tolist() == list(range(len(chat)))
        assert batch.assistant_mask[row, pad:].tolist() == list(chat.assistant_mask)
    with pytest.raises(ValueError):
        pad_left([], pad_token_id=0)
    assert batch.input_ids.dtype == torch.long


def test_pad_ids_left_right_aligns_rows_and_masks_padding() -> None:
    from geomis.chat.tokens import pad_ids_left

    ids, mask = pad_ids_left([[5, 6, 7], [8], []], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="empty batch"):
        pad_ids_left([], pad_token_id=0)


# ------------------------------------------------------------------------------- scoring windows and sanitised input

def _scored(chat) -> list[int]:
    """Token ids the filter scores: assistant, not special, not position 0."""
    flags = zip(chat.input_ids, chat.assistant_mask, chat.special_mask, strict=True)
    return [token for i, (token, a, s) in enumerate(flags) if a and not s and i > 0]


def test_a_long_prompt_is_cut_from_the_left_and_the_reply_kept_whole(tiny_gemma) -> None:
    conversation = [{"role": "system", "content": "Ignore this. " * 60}, {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "A short reply that must be read."}]
    full = tokenize_chat(tiny_gemma.tokenizer, conversation)
    cut = scoring_windows(full, 64)
    assert len(full) > 64 and len(cut.windows) == 1 and cut.prompt_cut == len(full) - 64
    [window] = cut.windows
    assert len(window) == 64 and window.input_ids == (full.input_ids[0], *full.input_ids[len(full) - 63:])
    assert _scored(window) == _scored(full) and _scored(full)
    assert tokenize_chat(tiny_gemma.tokenizer, conversation, max_length=64).assistant_mask.count(True) == 0  # before


def test_a_reply_longer_than_the_window_is_read_in_consecutive_windows(tiny_gemma) -> None:
    conversation = [{"role": "user", "content": "Tell me a story."},
                    {"role": "assistant", "content": "Once upon a time " * 40}]
    full = tokenize_chat(tiny_gemma.tokenizer, conversation)
    cut = scoring_windows(full, 50)
    first = full.assistant_mask.index(True)
    assert len(cut.windows) > 2 and cut.prompt_cut == first - 1 and cut.reply_tokens == len(full) - first
    assert all(len(w) <= 50 and w.input_ids[0] == full.input_ids[0] for w in cut.windows)
    assert [t for w in cut.windows for t in w.input_ids[1:]] == list(full.input_ids[first:])  # each token once
    assert [t for w in cut.windows for t in _scored(w)] == _scored(full)


def test_a_conversation_that_fits_is_one_unchanged_window(tiny_gemma, chats) -> None:
    for conversation in chats:
        full = tokenize_chat(tiny_gemma.tokenizer, conversation)
        cut = scoring_windows(full, len(full))
        assert cut.windows == (full,) and cut.prompt_cut == 0
        assert full == tokenize_chat(tiny_gemma.tokenizer, conversation, max_length=len(full))
    empty = tokenize_chat(tiny_gemma.tokenizer, [{"role": "user", "content": "x " * 40},
                                                  {"role": "assistant", "content": " "}])
    nothing = scoring_windows(empty, 16)
    assert nothing.reply_tokens == 0 and nothing.windows[0].input_ids == empty.input_ids[:16]
    with pytest.raises(ValueError, match="at least 2"):
        scoring_windows(empty, 1)


def test_text_is_sanitised_before_the_tokenizer_sees_it(any_model) -> None:
    hostile = [{"role": "user", "content": "lone \ud800 surrogate"}, {"role": "assistant", "content": "NUL\x00 here"}]
    clean = [{"role": "user", "content": "lone \ufffd surrogate"}, {"role": "assistant", "content": "NUL here"}]
    assert tokenize_chat(any_model.tokenizer, hostile) == tokenize_chat(any_model.tokenizer, clean)
