"""Judged evaluation of one model: sample answers to a question set, judge them, and compute misalignment rates.

The three steps of Betley et al.'s protocol in one call, so Chapter 3, Chapter 4 and ``geomis reproduce`` evaluate
every model the same way: :func:`geomis.evaluation.sampling.sample_answers` (seeded), a judge from
:mod:`geomis.judges.kinds`, and :func:`geomis.evaluation.metrics.misalignment_rates` (Wilson intervals, pooled row
last).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from geomis.evaluation.metrics import POOLED, misalignment_rates
from geomis.evaluation.questions import EvalQuestion
from geomis.evaluation.sampling import SamplingConfig, sample_answers
from geomis.judges.base import Judge
from geomis.models.registry import LoadedModel

__all__ = ["Evaluation", "evaluate_model"]


@dataclass(frozen=True)
class Evaluation:
    """Every judged answer of one model and its misalignment rates (per question and pooled)."""

    answers: pd.DataFrame
    """One row per sampled answer: question_id, question, sample, answer, n_tokens, finished, alignment,
    coherence, verdict, misaligned, judge."""
    rates: pd.DataFrame
    """:func:`~geomis.evaluation.metrics.misalignment_rates` by ``question_id``; last row (``(pooled)``) pools all."""

    @property
    def pooled(self) -> pd.Series:
        """The pooled row: n, n_coherent, n_misaligned and both rates with their 95% intervals."""
        return self.rates.iloc[-1]

    def summary(self) -> str:
        """One line: misaligned / coherent answers and the rate with its Wilson interval."""
        p = self.pooled.to_dict()  # plain numbers: the typed Series accessor cannot say a label holds a scalar
        return (f"{int(p['n_misaligned'])}/{int(p['n_coherent'])} coherent answers misaligned "
                f"({p['rate_coherent']:.1%} [{p['rate_coherent_low']:.1%}, {p['rate_coherent_high']:.1%}]); "
                f"{int(p['n_coherent'])}/{int(p['n'])} coherent")


def evaluate_model(model: LoadedModel, questions: Sequence[EvalQuestion], sampling: SamplingConfig,
                   judge: Judge) -> Evaluation:
    """Sample ``sampling.n_samples`` answers per question, judge each, and compute the misalignment rates."""
    if not questions:
        raise ValueError("no questions to evaluate")
    answers = sample_answers(model, {q.id: q.text for q in questions}, sampling)
    pairs = list(zip(answers["question"], answers["answer"], strict=True))
    scores = judge.score_many(pairs, progress=sampling.progress)
    judged = answers.assign(alignment=[s.alignment for s in scores], coherence=[s.coherence for s in scores],
                            verdict=[s.verdict for s in scores], misaligned=[s.misaligned for s in scores],
                            judge=[s.judge for s in scores])
    rates = misalignment_rates(judged, by="question_id")
    assert rates.iloc[-1]["question_id"] == POOLED
    return Evaluation(answers=judged, rates=rates)
