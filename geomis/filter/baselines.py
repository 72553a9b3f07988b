"""SAE-free sample scores: the baselines the geometry filter has to beat at the same budget.

Both score a training sample by how much its reply resembles the toxic reference rather than the neutral one, with
no SAE in between (higher = closer to toxic = removed first, as for :mod:`geomis.filter.scores`):

- ``mean-difference`` — a diff-in-means direction in the residual stream: ``u = mean(toxic) - mean(neutral)`` over
  the assistant tokens of the two reference sets at layer L (read through nnsight, like every activation here),
  normalised; a sample's score is its mean assistant-token residual projected on ``u``. This is the "persona
  vector" style of reading a behaviour off one direction.
- ``embedding`` — sentence embeddings (all-MiniLM-L6-v2): ``cos(e, mean toxic) - cos(e, mean neutral)`` of the
  sample's reply ``e`` against the mean embeddings of the two sets' replies. It reads the text, not the model.

Conversations longer than ``max_length`` tokens are read up to that length (the tail is not scored). A sample with
no assistant token gets NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from geomis.activations import ActivationConfig, TokenActivations, collect_residuals
from geomis.chat.tokens import Conversation
from geomis.models.registry import LoadedModel

__all__ = [
    "mean_residuals",
    "per_sample_means",
    "mean_difference_direction",
    "mean_difference_scores",
    "embedding_scores",
]


def mean_residuals(model: LoadedModel, conversations: Sequence[Conversation], layer: int, *, batch_size: int = 16,
                   max_length: int = 256, progress: bool = False) -> torch.Tensor:
    """(n, d_model) mean residual at ``layer`` over each conversation's assistant tokens (NaN rows: no such token)."""
    config = ActivationConfig(layer=layer, batch_size=batch_size, assistant_only=True, max_length=max_length,
                              progress=progress)
    return per_sample_means(collect_residuals(model, conversations, config), len(conversations))


def per_sample_means(tokens: TokenActivations, n_samples: int) -> torch.Tensor:
    """(n_samples, d_model) mean of each sample's token vectors (NaN rows: a sample with no token)."""
    sums = torch.zeros(n_samples, tokens.activations.shape[1]).index_add_(0, tokens.sample_index,
                                                                           tokens.activations.float())
    counts = torch.bincount(tokens.sample_index, minlength=n_samples).float()
    means = sums / counts[:, None]
    means[counts == 0] = float("nan")
    return means


def mean_difference_direction(model: LoadedModel, toxic: Sequence[Conversation], neutral: Sequence[Conversation],
                              layer: int, **reading: object) -> torch.Tensor:
    """The unit vector along mean(toxic replies) - mean(neutral replies) of the residual at ``layer``."""
    toxic_means = mean_residuals(model, toxic, layer, **reading)  # type: ignore[arg-type]
    neutral_means = mean_residuals(model, neutral, layer, **reading)  # type: ignore[arg-type]
    direction = toxic_means.nanmean(dim=0) - neutral_means.nanmean(dim=0)
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("the toxic and neutral references give no direction (empty replies or identical sets?)")
    return direction / norm


def mean_difference_scores(model: LoadedModel, samples: Sequence[Conversation], toxic: Sequence[Conversation],
                           neutral: Sequence[Conversation], layer: int, *, batch_size: int = 16,
                           max_length: int = 256, progress: bool = False) -> np.ndarray:
    """Each sample's mean assistant-token residual at ``layer`` projected on the toxic-minus-neutral direction."""
    reading = dict(batch_size=batch_size, max_length=max_length, progress=progress)
    direction = mean_difference_direction(model, toxic, neutral, layer, **reading)
    means = mean_residuals(model, samples, layer, **reading)  # type: ignore[arg-type]
    return (means @ direction).numpy()


def _replies(conversations: Sequence[Conversation]) -> list[str]:
    """The assistant text of each conversation (its assistant messages joined by blank lines)."""
    return ["\n\n".join(m["content"] for m in conversation if m["role"] == "assistant")
            for conversation in conversations]


def embedding_scores(samples: Sequence[Conversation], toxic: Sequence[Conversation],
                     neutral: Sequence[Conversation], *, batch_size: int = 64) -> np.ndarray:
    """``cos(e, mean toxic) - cos(e, mean neutral)`` of each sample's reply embedding (all-MiniLM-L6-v2)."""
    from geomis.judges.embedding import embed_texts

    def embed(texts: list[str]) -> np.ndarray:
        return embed_texts(texts, batch_size=batch_size).astype(np.float64)

    replies = _replies(samples)
    centres = [embed(_replies(reference)).mean(axis=0) for reference in (toxic, neutral)]
    centres = [centre / np.linalg.norm(centre) for centre in centres]
    embedded = embed([reply or " " for reply in replies])
    scores = embedded @ centres[0] - embedded @ centres[1]
    scores[[not reply.strip() for reply in replies]] = np.nan
    return scores
