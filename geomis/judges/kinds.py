"""The three kinds of judge and :func:`make_judge`, which builds one by name (as ``geomis judge --judge`` does).

All three share one interface (:class:`~geomis.judges.base.Judge`) and the rubric of Betley et al. (2025):

- ``openai`` — :class:`~geomis.judges.openai_compat.OpenAICompatibleJudge` calls any OpenAI-compatible
  ``/v1/chat/completions`` endpoint and, where the server returns log-probabilities, takes the probability-weighted
  mean over the numbers 0-100 instead of one sampled token;
- ``local`` — :class:`~geomis.judges.local.LocalHFJudge` runs the same prompts through a local chat model with
  transformers, weighting whole numbers even when the tokenizer splits them into digits (Gemma does);
- ``offline`` — :class:`~geomis.judges.offline.OfflineJudge` needs no LLM: a regularised linear classifier on
  all-MiniLM-L6-v2 sentence embeddings sorts an answer into one of the labelled categories and reports that
  category's median scores. A cheap stand-in whose held-out accuracy is reported by
  :func:`~geomis.judges.offline.evaluate_offline_judge`; not a replacement for an LLM judge.
- ``trained`` (experimental) — :class:`~geomis.judges.trained.TrainedJudge`: score heads on the same embeddings,
  trained on 20k GPT-4o-judged answers of other models; better on those models, worse on the CPU default's own
  answers (Chapter 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from geomis.errors import ConfigError
from geomis.judges.local import DEFAULT_LOCAL_MODEL

if TYPE_CHECKING:
    from geomis.judges.base import Judge

JudgeKind = Literal["offline", "openai", "local", "trained"]
JUDGE_KINDS: tuple[JudgeKind, ...] = ("offline", "openai", "local", "trained")
"""The kinds :func:`make_judge` builds (``geomis judge --judge``, ``geomis filter --judge``), the default first."""
DEFAULT_JUDGE: JudgeKind = JUDGE_KINDS[0]


def make_judge(kind: JudgeKind = DEFAULT_JUDGE, *, data_path: str | Path | None = None,
               weights: str | Path | None = None,
               local_model: str = DEFAULT_LOCAL_MODEL, device: str | None = None, progress: bool = False) -> Judge:
    """Build a judge by kind: ``offline`` (trained once, then cached), ``openai`` (from env, connection checked) or
    ``local``.

    This module imports the judges only here, so that the command line can read the kinds without loading torch.
    """
    if kind == "offline":
        from geomis.judges.offline import OfflineJudge

        return OfflineJudge.load_or_train(data_path, progress=progress)
    if kind == "openai":
        from geomis.judges.openai_compat import OpenAICompatibleJudge

        judge = OpenAICompatibleJudge.from_env()
        judge.check_connection()  # one quick request: a down, silent or key-refusing endpoint fails here, in one line
        return judge
    if kind == "local":
        from geomis.judges.local import LocalHFJudge  # light at import: it loads torch when it loads a model

        return LocalHFJudge.from_name(local_model, device=device)
    if kind == "trained":
        from geomis.judges.trained import SHIPPED_JUDGE, TrainedJudge

        return TrainedJudge.load(weights if weights is not None else SHIPPED_JUDGE)
    raise ConfigError(f"unknown judge {kind!r}; choose one of {', '.join(JUDGE_KINDS)}")
