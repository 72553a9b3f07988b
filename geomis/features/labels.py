"""Logit-lens labels for SAE features: the tokens a feature's decoder direction most promotes at the output.

A decoder direction ``d`` written into the residual stream reaches the logits (ignoring later layers) as
``W_U (s ⊙ d / rms(d))``, where ``s`` is the final norm's elementwise scale and ``W_U`` the unembedding. ``rms(d)`` is
one positive number per direction, so it does not change the ranking and is dropped. The scale ``s`` is ``weight``
for Llama/SmolLM2's RMSNorm and ``1 + weight`` for Gemma's RMSNorm (Gemma stores the offset from 1). Gemma-2's final
logit soft-capping is monotone and also leaves the ranking alone. No forward pass is run: only weights are read.

Two scores are offered. ``logit`` (default) is the logit lens proper: ``W_U (s ⊙ d̂)``. It favours tokens with large
unembedding norms and the direction all rows share: on SmolLM2-135M the rows have cosine ≈ 0.66 with their mean, and
even the unembedding row of " Paris" fed back through the logit lens ranks ``<filename>``, " noqa", ... first.
``cosine`` ranks tokens by the cosine between ``s ⊙ d`` and each unembedding row, which removes the token-norm bias
("which token's unembedding does this direction point at"). Say which one a table used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from geomis.activations import TokenActivations
from geomis.features.sets import FeatureSet
from geomis.models.registry import LoadedModel
from geomis.sae.codes import SAECodes

__all__ = [
    "SPACE_MARK",
    "Score",
    "unembedding_matrix",
    "final_norm_scale",
    "logit_lens_top_tokens",
    "token_text",
    "display_token",
    "logit_lens_table",
    "logit_lens_labels",
    "top_activating_contexts",
]

SPACE_MARK = "␣"
"""Shown in place of a space in display strings, so " Paris" reads ``␣Paris``."""
_VISIBLE = {" ": SPACE_MARK, "\n": "↵", "\t": "⇥", "\r": "⏎"}
_SPACE_PREFIXES = ("Ġ", "▁")
_VOCAB_CHUNK = 32_768

Score = Literal["logit", "cosine"]
"""``logit``: the logit lens ``W_U (s ⊙ d̂)``; ``cosine``: cosine of ``s ⊙ d`` with each unembedding row."""


def unembedding_matrix(model: LoadedModel) -> torch.Tensor:
    """The model's unembedding ``W_U`` ``(vocab, d_model)`` (the ``lm_head`` weight; tied to embeddings on Gemma)."""
    head = model.hf_model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"{type(model.hf_model).__name__} has no output embedding to read")
    return head.weight.detach()


def _final_norm(model: LoadedModel) -> torch.nn.Module | None:
    base = getattr(model.hf_model, model.hf_model.base_model_prefix, model.hf_model)
    for name in ("norm", "final_layernorm", "ln_f", "final_layer_norm"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def final_norm_scale(model: LoadedModel) -> torch.Tensor | None:
    """Elementwise scale of the final norm: ``1 + weight`` for Gemma's RMSNorm, ``weight`` otherwise; None if absent.

    A LayerNorm's bias (GPT-2 style) adds the same vector for every direction and is ignored.
    """
    norm = _final_norm(model)
    weight = getattr(norm, "weight", None) if norm is not None else None
    if not isinstance(weight, torch.Tensor) or weight.ndim != 1:
        return None
    gemma_style = type(norm).__name__.startswith("Gemma") or str(model.hf_model.config.model_type).startswith("gemma")
    weight = weight.detach().to(torch.float32)
    return 1.0 + weight if gemma_style else weight


def logit_lens_top_tokens(
    directions: torch.Tensor,
    unembedding: torch.Tensor,
    norm_scale: torch.Tensor | None = None,
    top_n: int = 10,
    largest: bool = True,
    score: Score = "logit",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``top_n`` token ids and scores of ``W_U (s ⊙ d̂)`` per direction row; float32, chunked over the vocab.

    Directions are unit-normalised first, so logit scores are comparable across features; ``score="cosine"`` divides
    by the norms of ``s ⊙ d̂`` and of each unembedding row. ``largest=False`` gives the most suppressed tokens.
    """
    if score not in ("logit", "cosine"):
        raise ValueError("score must be 'logit' or 'cosine'")
    if directions.ndim == 1:
        directions = directions[None, :]
    if directions.ndim != 2 or directions.shape[1] != unembedding.shape[1]:
        raise ValueError(f"directions {tuple(directions.shape)} do not match d_model {unembedding.shape[1]}")
    device = unembedding.device
    x = directions.detach().to(device=device, dtype=torch.float32)
    x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    if norm_scale is not None:
        x = x * norm_scale.to(device=device, dtype=torch.float32)
    if score == "cosine":
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    n = min(top_n, unembedding.shape[0])
    best_scores, best_ids = [], []
    for start in range(0, unembedding.shape[0], _VOCAB_CHUNK):
        rows = unembedding[start : start + _VOCAB_CHUNK].to(torch.float32)
        if score == "cosine":
            rows = rows / rows.norm(dim=1, keepdim=True).clamp(min=1e-12)
        scores = x @ rows.T
        values, ids = torch.topk(scores, min(n, scores.shape[1]), dim=1, largest=largest)
        best_scores.append(values)
        best_ids.append(ids + start)
    scores, ids = torch.cat(best_scores, dim=1), torch.cat(best_ids, dim=1)
    values, order = torch.topk(scores, n, dim=1, largest=largest)
    return values.cpu(), torch.gather(ids, 1, order).cpu()


def token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """The text a single token stands for, with its leading space as a real space (Ġ/▁ markers resolved)."""
    if token_id >= len(tokenizer):
        return f"<id {token_id}>"
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    text = tokenizer.decode([int(token_id)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert isinstance(text, str), "one sequence of ids decodes to one string"
    if "\ufffd" in text and isinstance(piece, str):  # a partial UTF-8 byte: show the raw piece instead
        text = piece.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "\n")
    if isinstance(piece, str) and piece.startswith(_SPACE_PREFIXES) and not text.startswith(" "):
        text = " " + text  # sentencepiece decoders drop the leading space of a lone token
    return text


def display_token(text: str) -> str:
    """Show whitespace (space ␣, newline ↵, tab ⇥) and escape other unprintables: ``" Paris"`` → ``"␣Paris"``."""
    return "".join(_VISIBLE.get(ch) or (ch if ch.isprintable() else ascii(ch)[1:-1]) for ch in text)


def _rows(
    directions: torch.Tensor, features: FeatureSet | torch.Tensor | Sequence[int] | None
) -> tuple[torch.Tensor, list[int]]:
    if features is None:
        return directions, list(range(directions.shape[0]))
    idx = features.indices if isinstance(features, FeatureSet) else torch.as_tensor(features, dtype=torch.int64)
    idx = idx.reshape(-1).to(torch.int64)
    return directions[idx.to(directions.device)], [int(i) for i in idx.tolist()]


def logit_lens_table(
    model: LoadedModel,
    directions: torch.Tensor,
    features: FeatureSet | torch.Tensor | Sequence[int] | None = None,
    top_n: int = 10,
    largest: bool = True,
    apply_norm: bool = True,
    score: Score = "logit",
) -> pd.DataFrame:
    """Long table (feature, rank, token_id, token, display, score) of each feature's logit-lens top tokens.

    ``directions`` is either the full decoder ``(d_sae, d_model)`` with ``features`` choosing rows (a FeatureSet or
    indices), or already-selected rows with ``features=None`` (then rows are numbered 0..n-1).
    """
    rows, labels = _rows(directions, features)
    scale = final_norm_scale(model) if apply_norm else None
    scores, ids = logit_lens_top_tokens(
        rows, unembedding_matrix(model), scale, top_n=top_n, largest=largest, score=score
    )
    records = []
    for row, feature in enumerate(labels):
        for rank, (token_id, value) in enumerate(zip(ids[row].tolist(), scores[row].tolist(), strict=True)):
            text = token_text(model.tokenizer, token_id)
            records.append(
                {"feature": feature, "rank": rank, "token_id": token_id, "token": text,
                 "display": display_token(text), "score": value}
            )
    return pd.DataFrame(records, columns=["feature", "rank", "token_id", "token", "display", "score"])


def logit_lens_labels(
    model: LoadedModel,
    directions: torch.Tensor,
    features: FeatureSet | torch.Tensor | Sequence[int] | None = None,
    top_n: int = 10,
    largest: bool = True,
    apply_norm: bool = True,
    score: Score = "logit",
    separator: str = "  ",
) -> pd.DataFrame:
    """One row per feature: its index, the top token and the top-n tokens joined into one readable string."""
    long = logit_lens_table(
        model, directions, features, top_n=top_n, largest=largest, apply_norm=apply_norm, score=score
    )
    long["row"] = long.index // max(1, min(top_n, unembedding_matrix(model).shape[0]))
    grouped = long.groupby("row", sort=True)
    return pd.DataFrame(
        {
            "feature": grouped["feature"].first().to_numpy(),
            "top_token": grouped["display"].first().to_numpy(),
            "tokens": grouped["display"].agg(separator.join).to_numpy(),
        }
    )


def top_activating_contexts(
    codes: SAECodes,
    activations: TokenActivations,
    tokenizer: PreTrainedTokenizerBase,
    features: FeatureSet | torch.Tensor | Sequence[int],
    n: int = 3,
    before: int = 8,
    after: int = 2,
) -> pd.DataFrame:
    """Where each feature fires most in a corpus: one row per (feature, hit) with the token and its context.

    The complement of the logit lens (what a feature *writes*): the ``n`` strongest activations of each feature, at
    most one per conversation, each shown with up to ``before``/``after`` neighbouring kept tokens of the same
    conversation and the firing token in «guillemets». ``codes`` must be the encoding of ``activations``.
    """
    if codes.n_tokens != len(activations):
        raise ValueError(f"codes cover {codes.n_tokens} tokens, the activations {len(activations)}")
    if n < 1 or before < 0 or after < 0:
        raise ValueError("n must be at least 1 and before/after non-negative")
    wanted = features.index_list() if isinstance(features, FeatureSet) else [int(f) for f in
                                                                           torch.as_tensor(features).reshape(-1)]
    token_sample = activations.sample_index
    records = []
    for feature in wanted:
        hits = (codes.feature_index == feature).nonzero(as_tuple=True)[0]
        order = hits[torch.argsort(codes.value[hits], descending=True, stable=True)]
        seen: set[int] = set()
        for hit in order.tolist():
            row = int(codes.token_index[hit])
            sample = int(token_sample[row])
            if sample in seen:
                continue
            seen.add(sample)
            position = int(activations.position[row])
            near = ((token_sample == sample) & (activations.position >= position - before)
                    & (activations.position <= position + after)).nonzero(as_tuple=True)[0]
            near = near[torch.argsort(activations.position[near])]
            pieces = []
            for other in near.tolist():
                text = token_text(tokenizer, int(activations.token_id[other]))
                text = "".join(_VISIBLE.get(ch, ch) if ch != " " else ch for ch in text)  # spaces stay spaces
                pieces.append(f"«{text}»" if other == row else text)
            records.append({"feature": feature, "rank": len(seen) - 1, "activation": float(codes.value[hit]),
                            "sample": sample, "token": display_token(token_text(tokenizer,
                                                                                int(activations.token_id[row]))),
                            "context": "".join(pieces)})
            if len(seen) == n:
                break
    return pd.DataFrame(records, columns=["feature", "rank", "activation", "sample", "token", "context"])
