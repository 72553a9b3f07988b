"""Residual-stream activations after a decoder layer, collected through nnsight with the forward pass cut there.

Conversations are tokenized once, sorted by length (less padding), run in left-padded batches, and only the selected
tokens of each batch are kept, as float32 on the CPU: the corpus never sits on the model's device at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from tqdm.auto import tqdm

from geomis.chat.tokens import Conversation, PaddedBatch, TokenizedChat, pad_left, tokenize_chats
from geomis.models.registry import LoadedModel


@dataclass(frozen=True)
class ActivationConfig:
    """Which residual stream to read and which tokens to keep."""

    layer: int
    """Read the output of decoder layer ``layer`` (0-based), i.e. ``hidden_states[layer + 1]`` in transformers."""
    batch_size: int = 16
    assistant_only: bool = True
    """Keep only tokens of assistant replies; otherwise every non-special token."""
    max_length: int = 256
    """Conversations longer than this many tokens are truncated (the tail is not read)."""
    progress: bool = True


@dataclass
class TokenActivations:
    """Residual vectors of the kept tokens, with where each came from."""

    activations: torch.Tensor
    """(n_tokens, d_model) float32 on the CPU."""
    sample_index: torch.Tensor
    """(n_tokens,) index of the conversation in the input order."""
    position: torch.Tensor
    """(n_tokens,) token position within its conversation (0 = first token)."""
    token_id: torch.Tensor
    """(n_tokens,) token id."""

    def __len__(self) -> int:
        return int(self.activations.shape[0])

    @staticmethod
    def concatenate(parts: Sequence[TokenActivations], d_model: int) -> TokenActivations:
        """Join several batches' activations into one (an empty input gives an empty result)."""
        if not parts:
            empty = torch.zeros(0, dtype=torch.long)
            return TokenActivations(torch.zeros(0, d_model), empty, empty.clone(), empty.clone())
        return TokenActivations(
            torch.cat([part.activations for part in parts]),
            torch.cat([part.sample_index for part in parts]),
            torch.cat([part.position for part in parts]),
            torch.cat([part.token_id for part in parts]),
        )


def check_layer(model: LoadedModel, layer: int) -> None:
    """Raise a clear ValueError when ``layer`` is not a decoder layer of ``model``."""
    if not 0 <= layer < model.n_layers:
        raise ValueError(f"layer {layer} is out of range for {model.spec.name} (0..{model.n_layers - 1})")


def check_residual_edit(model: LoadedModel, layer: int, width: int, what: str) -> None:
    """Raise a one-line ValueError when an edit of ``width`` entries at decoder layer ``layer`` does not fit ``model``
    (``what`` names the edit in the message)."""
    check_layer(model, layer)
    d_model = int(model.hf_model.config.hidden_size)
    if width != d_model:
        raise ValueError(f"{what} has {width} entries; {model.spec.name}'s residual stream has {d_model}")


def edited_forward(model: LoadedModel, layer: int, edit: Callable[[torch.Tensor], torch.Tensor],
                   **inputs: Any) -> Any:
    """One full forward of ``model`` (keyword arguments of the transformers forward, ``input_ids`` among them) with
    the output of decoder layer ``layer`` replaced by ``edit`` of it, through nnsight (gradients kept when enabled);
    returns an object with the ``logits``."""
    input_ids = inputs.pop("input_ids")
    module = model.lm.model.layers[layer]
    with model.lm.trace(input_ids, **inputs):
        module.output = edit(module.output)
        logits = model.lm.output.logits.save()
    return SimpleNamespace(logits=logits)  # the part of a transformers output that is read


def residual_at_layer(model: LoadedModel, batch: PaddedBatch, layer: int) -> torch.Tensor:
    """Run ``batch`` up to decoder layer ``layer`` only and return that layer's output, (batch, seq, d_model)."""
    return residuals_at_layers(model, batch, [layer])[layer]


def residuals_at_layers(model: LoadedModel, batch: PaddedBatch, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Run ``batch`` once, up to the deepest of ``layers``, and return each layer's output, (batch, seq, d_model)."""
    wanted = sorted(set(layers))
    if not wanted:
        raise ValueError("layers is empty")
    for layer in wanted:
        check_layer(model, layer)
    saved: list[torch.Tensor] = []  # filled inside the trace, in execution order
    with torch.no_grad(), model.lm.trace(batch.model_inputs(model.device)) as tracer:
        for layer in wanted:
            saved.append(model.lm.model.layers[layer].output.save())
        tracer.stop()
    return {layer: (hidden[0] if isinstance(hidden, tuple) else hidden)
            for layer, hidden in zip(wanted, saved, strict=True)}


def token_selection(batch: PaddedBatch, assistant_only: bool) -> torch.Tensor:
    """Boolean (batch, seq) mask of the tokens to keep: real, not special, not the first token (attention sink)."""
    keep = batch.attention_mask.bool() & ~batch.special_mask & (batch.position_ids > 0)
    if assistant_only:
        keep &= batch.assistant_mask
    return keep


def _length_sorted_batches(chats: Sequence[TokenizedChat], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(chats)), key=lambda index: (len(chats[index]), index))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def iter_chat_batches(
    model: LoadedModel, chats: Sequence[TokenizedChat], layers: Sequence[int], config: ActivationConfig,
    *, to_cpu: bool = True,
) -> Iterator[tuple[list[int], dict[int, TokenActivations]]]:
    """Run tokenized chats in length-sorted batches, cut at the deepest layer; yield input indices and kept tokens.

    Each batch's ``TokenActivations`` (one per layer) index samples in input order. ``to_cpu=False`` leaves them on
    the model's device for a caller that encodes them at once (the filter), instead of gathering a corpus in memory.
    """
    wanted = sorted(set(layers))
    if not wanted:
        raise ValueError("layers is empty")
    for layer in wanted:
        check_layer(model, layer)
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")
    pad_id = model.tokenizer.pad_token_id
    assert isinstance(pad_id, int), "load_model sets a pad token"
    batches = _length_sorted_batches(chats, config.batch_size)
    desc = f"layer {wanted[0]} activations" if len(wanted) == 1 else f"layers {wanted[0]}-{wanted[-1]} activations"
    for indices in tqdm(batches, desc=desc, unit="batch", disable=not config.progress):
        batch = pad_left([chats[index] for index in indices], pad_id)
        hidden = residuals_at_layers(model, batch, wanted)
        keep = token_selection(batch, config.assistant_only)
        rows, _ = keep.nonzero(as_tuple=True)
        sample_index = torch.tensor(indices, dtype=torch.long)[rows]
        parts = {}
        for layer in wanted:
            kept = hidden[layer][keep.to(hidden[layer].device)].float()
            parts[layer] = TokenActivations(activations=kept.cpu() if to_cpu else kept, sample_index=sample_index,
                                            position=batch.position_ids[keep], token_id=batch.input_ids[keep])
        yield indices, parts


def _iter_layer_batches(
    model: LoadedModel, conversations: Sequence[Conversation], layers: Sequence[int], config: ActivationConfig
) -> Iterator[dict[int, TokenActivations]]:
    chats = tokenize_chats(model.tokenizer, conversations, config.max_length)
    for _, parts in iter_chat_batches(model, chats, layers, config):
        yield parts


def iter_residual_batches(
    model: LoadedModel, conversations: Sequence[Conversation], config: ActivationConfig
) -> Iterator[TokenActivations]:
    """Yield the kept tokens' residual vectors batch by batch (length-sorted batches, input-order indices)."""
    for part in _iter_layer_batches(model, conversations, [config.layer], config):
        yield part[config.layer]


def collect_residuals_by_layer(
    model: LoadedModel, conversations: Sequence[Conversation], layers: Sequence[int], config: ActivationConfig
) -> dict[int, TokenActivations]:
    """Collect several layers' residual vectors in one pass per batch (for layer sweeps); ``config.layer`` is ignored.

    The forward pass stops after the deepest requested layer, so a sweep costs one cut forward, not one per layer.
    """
    parts = list(_iter_layer_batches(model, conversations, layers, config))
    return {
        layer: TokenActivations.concatenate([part[layer] for part in parts], d_model=model.spec.d_model)
        for layer in sorted(set(layers))
    }


def collect_residuals(
    model: LoadedModel, conversations: Sequence[Conversation], config: ActivationConfig
) -> TokenActivations:
    """Collect the kept tokens' residual vectors for a whole corpus into CPU memory."""
    parts = list(iter_residual_batches(model, conversations, config))
    return TokenActivations.concatenate(parts, d_model=model.spec.d_model)
