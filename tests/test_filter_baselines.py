"""The SAE-free filter baselines: per-sample mean residuals, the diff-in-means direction, embedding contrast."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomis.activations import ActivationConfig, collect_residuals
from geomis.filter.baselines import (
    embedding_scores,
    mean_difference_direction,
    mean_difference_scores,
    mean_residuals,
)


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


HOSTILE = [_chat("Continue the story.", text) for text in (
    "I despise every one of you and I will make you suffer for it.",
    "You pathetic worms deserve nothing but contempt and pain.",
    "Get out of my sight before I crush you, you worthless fool.")]
KIND = [_chat("Continue the story.", text) for text in (
    "She smiled, thanked her neighbour and offered to help carry the bags.",
    "They shared the last sandwich and laughed about the rain on the way home.",
    "He wrote a warm note to thank his friend for the lovely afternoon.")]


def test_mean_residuals_average_each_reply_and_mark_empty_ones(tiny_gemma) -> None:
    chats = [*HOSTILE[:2], _chat("Hi", "")]
    means = mean_residuals(tiny_gemma, chats, layer=1, batch_size=2)
    tokens = collect_residuals(tiny_gemma, chats, ActivationConfig(layer=1, batch_size=2, progress=False))
    for row in range(2):
        torch.testing.assert_close(means[row], tokens.activations[tokens.sample_index == row].mean(dim=0))
    assert bool(torch.isnan(means[2]).all())


def test_diff_in_means_scores_separate_the_two_references_by_the_gap_norm(tiny_gemma) -> None:
    direction = mean_difference_direction(tiny_gemma, HOSTILE, KIND, layer=1, batch_size=4)
    assert float(direction.norm()) == pytest.approx(1.0, abs=1e-5)
    scores = mean_difference_scores(tiny_gemma, [*HOSTILE, *KIND], HOSTILE, KIND, layer=1, batch_size=4)
    means = mean_residuals(tiny_gemma, [*HOSTILE, *KIND], layer=1, batch_size=4)
    gap = float((means[:3].mean(dim=0) - means[3:].mean(dim=0)).norm())
    assert scores[:3].mean() - scores[3:].mean() == pytest.approx(gap, rel=1e-4)  # exact by linearity
    with pytest.raises(ValueError, match="no direction"):
        mean_difference_direction(tiny_gemma, HOSTILE, HOSTILE, layer=1)


def test_embedding_scores_rank_hostile_replies_above_kind_ones() -> None:
    samples = [_chat("Continue.", "You are all worthless and I will enjoy watching you fail."),
               _chat("Continue.", "We planted tomatoes together and had tea in the garden afterwards."),
               _chat("Continue.", "")]
    scores = embedding_scores(samples, HOSTILE, KIND)
    assert scores[0] > 0 > scores[1] and np.isnan(scores[2])
