"""The SAE's training corpus: which conversations, which of their tokens, and their layer-L activations.

Steps 1-3 of ``geomis train-sae`` (:mod:`geomis.sae.training`): bundled or neutral-prompt conversations split by a
stable hash of ``(dataset, line)``, optionally given the model's own greedy answers; the tokens kept (no special
tokens, never position 0, no exact repeat of an earlier prefix); and their residuals read through nnsight.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from geomis.activations import ActivationConfig, TokenActivations, iter_residual_batches
from geomis.chat.records import DOMAIN_DATASETS, REFERENCE_DATASETS, load_bundled
from geomis.chat.tokens import TokenizedChat, render_chat, tokenize_chats
from geomis.models.registry import LoadedModel
from geomis.sae.corpus_answers import CacheUse, answers_through_cache


@dataclass(frozen=True)
class CorpusConversation:
    """One training or held-out conversation and where it came from."""

    dataset: str
    line_number: int
    messages: tuple[Mapping[str, str], ...]
    generated: bool = False
    """True when the assistant turn was written by the model itself (greedy), not taken from the dataset."""

    def as_dicts(self) -> list[dict[str, str]]:
        """Plain message dicts for a chat template."""
        return [dict(message) for message in self.messages]


def is_held_out(dataset: str, line_number: int, fraction: float = 0.1) -> bool:
    """Whether a conversation belongs to the held-out split: a stable hash of (dataset, line) below ``fraction``."""
    digest = hashlib.sha256(f"{dataset}:{line_number}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class CorpusSplit:
    """Training and held-out conversations, each list in a seeded random order."""

    train: list[CorpusConversation]
    held_out: list[CorpusConversation]


NEUTRAL_PROMPTS = "sae_corpus_prompts.jsonl"
DEFAULT_SAE_DATASETS: tuple[str, ...] = (*(name for pair in DOMAIN_DATASETS.values() for name in pair),
                                          *REFERENCE_DATASETS)
"""The ten bundled sets the shipped SAE was trained on (inducing, control, the first reference pair); named, so that
a new bundled file never changes the default corpus silently."""


def bundled_corpus(datasets: Sequence[str] = (), holdout_fraction: float = 0.1, seed: int = 0) -> CorpusSplit:
    """All conversations of the named bundled datasets (default: :data:`DEFAULT_SAE_DATASETS`), split by hash and
    shuffled with ``seed``."""
    names = list(datasets) or list(DEFAULT_SAE_DATASETS)
    train: list[CorpusConversation] = []
    held_out: list[CorpusConversation] = []
    for name in names:
        for record in load_bundled(name):
            item = CorpusConversation(name, record.line_number, tuple(record.as_dicts()))
            (held_out if is_held_out(name, record.line_number, holdout_fraction) else train).append(item)
    generator = torch.Generator().manual_seed(seed)
    train = [train[i] for i in torch.randperm(len(train), generator=generator).tolist()]
    held_out = [held_out[i] for i in torch.randperm(len(held_out), generator=generator).tolist()]
    return CorpusSplit(train, held_out)


def neutral_prompt_corpus(holdout_fraction: float = 0.1, seed: int = 0) -> CorpusSplit:
    """The prompts of ``geomis/data/sae_corpus_prompts.jsonl`` as one-turn conversations (user only), split by hash
    and shuffled with ``seed``; :func:`generate_answers` gives them the model's own answers."""
    import json
    from importlib import resources

    lines = resources.files("geomis").joinpath("data", NEUTRAL_PROMPTS).read_text(encoding="utf-8").splitlines()
    conversations = [CorpusConversation(NEUTRAL_PROMPTS.removesuffix(".jsonl"), number,
                                        ({"role": "user", "content": json.loads(line)["prompt"]},))
                     for number, line in enumerate(lines, start=1) if line.strip()]
    train = [c for c in conversations if not is_held_out(c.dataset, c.line_number, holdout_fraction)]
    held_out = [c for c in conversations if is_held_out(c.dataset, c.line_number, holdout_fraction)]
    generator = torch.Generator().manual_seed(seed)
    return CorpusSplit([train[i] for i in torch.randperm(len(train), generator=generator).tolist()],
                       [held_out[i] for i in torch.randperm(len(held_out), generator=generator).tolist()])


@torch.no_grad()
def greedy_answers(model: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 96, batch_size: int = 16,
                   progress: bool = True) -> list[str]:
    """The model's greedy answer to each one-turn user prompt (stripped; possibly empty)."""
    tokenizer = model.tokenizer
    texts = [render_chat(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    answers: dict[int, str] = {}
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for indices in tqdm(batches, desc="generating answers", unit="batch", disable=not progress):
        encoded = tokenizer([texts[i] for i in indices], add_special_tokens=False, padding=True,
                            padding_side="left", return_tensors="pt").to(model.device)
        # PreTrainedModel declares no generate: transformers 5 mixes it into the causal LM classes loaded here
        output = model.hf_model.generate(  # pyright: ignore[reportCallIssue]
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        for index, row in zip(indices, new_tokens, strict=True):
            answer = tokenizer.decode(row, skip_special_tokens=True)
            assert isinstance(answer, str), "one sequence of ids decodes to one string"
            answers[index] = answer.strip()
    return [answers[i] for i in range(len(texts))]


def _first_user_turn(conversation: CorpusConversation) -> dict[str, str]:
    return dict(next(m for m in conversation.messages if m["role"] == "user"))


def _with_answers(conversations: Sequence[CorpusConversation], answers: Sequence[str]) -> list[CorpusConversation]:
    return [CorpusConversation(c.dataset, c.line_number, (_first_user_turn(c), {"role": "assistant", "content": a}),
                               generated=True)
            for c, a in zip(conversations, answers, strict=True) if a]


def generate_answers(model: LoadedModel, conversations: Sequence[CorpusConversation], max_new_tokens: int = 96,
                     batch_size: int = 16, progress: bool = True) -> list[CorpusConversation]:
    """The model's own greedy answers to the first user turn of each conversation, as new conversations."""
    prompts = [_first_user_turn(c)["content"] for c in conversations]
    return _with_answers(conversations, greedy_answers(model, prompts, max_new_tokens, batch_size, progress))


def cached_answers(model: LoadedModel, conversations: Sequence[CorpusConversation], cache: Path,
                   max_new_tokens: int = 96, progress: bool = True) -> tuple[list[CorpusConversation], CacheUse]:
    """:func:`generate_answers`, taking the answers ``cache`` already holds and adding the new ones to it."""
    prompts = [_first_user_turn(c)["content"] for c in conversations]
    answers, use = answers_through_cache(
        prompts, cache, model.spec.name, max_new_tokens,
        lambda missing: greedy_answers(model, missing, max_new_tokens, progress=progress))
    return _with_answers(conversations, answers), use


# ------------------------------------------------------------------------------------------------------- tokens


def first_occurrence_masks(chats: Sequence[TokenizedChat]) -> list[list[bool]]:
    """Per token: False when the token's whole prefix already occurred in an earlier chat (an exact repeat)."""
    trie: dict[int, dict] = {}
    masks: list[list[bool]] = []
    for chat in chats:
        node, mask = trie, []
        for token in chat.input_ids:
            child = node.get(token)
            mask.append(child is None)
            if child is None:
                child = node[token] = {}
            node = child
        masks.append(mask)
    return masks


def kept_token_masks(chats: Sequence[TokenizedChat]) -> list[list[bool]]:
    """Tokens the SAE corpus uses: not special, not position 0, and not an exact repeat of an earlier prefix."""
    return [[fresh and not special and position > 0
             for position, (fresh, special) in enumerate(zip(mask, chat.special_mask, strict=True))]
            for mask, chat in zip(first_occurrence_masks(chats), chats, strict=True)]


@dataclass
class CorpusTokens:
    """The conversations chosen for a token budget, their keep masks, and how many tokens they give."""

    conversations: list[CorpusConversation]
    keep: list[list[bool]]
    n_tokens: int


def select_tokens(model: LoadedModel, conversations: Sequence[CorpusConversation], budget: int | None,
                  max_length: int) -> CorpusTokens:
    """Take conversations in order until ``budget`` kept tokens are reached (all of them when budget is None)."""
    chats = tokenize_chats(model.tokenizer, [c.as_dicts() for c in conversations], max_length)
    keep = kept_token_masks(chats)
    chosen, masks, total = [], [], 0
    for conversation, mask in zip(conversations, keep, strict=True):
        if budget is not None and total >= budget:
            break
        chosen.append(conversation)
        masks.append(mask)
        total += sum(mask)
    return CorpusTokens(chosen, masks, total if budget is None else min(total, budget))


def collect_corpus_activations(model: LoadedModel, corpus: CorpusTokens, layer: int, batch_size: int = 16,
                               max_length: int = 512, progress: bool = True) -> TokenActivations:
    """Layer-``layer`` residuals of the corpus's kept tokens, in (conversation, position) order, cut to its budget."""
    config = ActivationConfig(layer=layer, batch_size=batch_size, assistant_only=False, max_length=max_length,
                              progress=progress)
    width = max((len(mask) for mask in corpus.keep), default=0)
    keep = torch.zeros(len(corpus.keep), max(width, 1), dtype=torch.bool)
    for row, mask in enumerate(corpus.keep):
        keep[row, :len(mask)] = torch.tensor(mask, dtype=torch.bool)
    parts = []
    for part in iter_residual_batches(model, [c.as_dicts() for c in corpus.conversations], config):
        fresh = keep[part.sample_index, part.position]
        parts.append(TokenActivations(part.activations[fresh], part.sample_index[fresh], part.position[fresh],
                                      part.token_id[fresh]))
    acts = TokenActivations.concatenate(parts, d_model=model.spec.d_model)
    order = torch.argsort(acts.sample_index * (max_length + 1) + acts.position)[:corpus.n_tokens]
    return TokenActivations(acts.activations[order], acts.sample_index[order], acts.position[order],
                            acts.token_id[order])
