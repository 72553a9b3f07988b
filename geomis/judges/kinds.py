"""The four kinds of judge and :func:`make_judge`, which builds one by name (as ``geomis judge --judge`` does).

All share one interface (:class:`~geomis.judges.base.Judge`) and the rubric of Betley et al. (2025):

- ``openai`` — :class:`~geomis.judges.openai_compat.OpenAICompatibleJudge` calls any OpenAI-compatible
  ``/v1/chat/completions`` endpoint and, where the server returns log-probabilities, takes the probability-weighted
  mean over the numbers 0-100 instead of one sampled token;
- ``local`` — :class:`~geomis.judges.local.LocalHFJudge` runs the same prompts through a local chat model with
  transformers, weighting whole numbers even when the tokenizer splits them into digits (Gemma does);
- ``trained`` (the default) — :class:`~geomis.judges.trained.TrainedJudge` needs no LLM: score heads on
  all-MiniLM-L6-v2 sentence embeddings, trained on 20k GPT-4o-judged answers of other models (Qwen2.5, Gemma-2).
  Held out by model family it agrees with GPT-4o better than the older ``offline`` judge, so it is the default for
  judging the answers of real chat models. On the CPU default model's own answers (SmolLM2-135M) neither offline
  judge agrees with reading (Cohen's kappa 0.05-0.09; ``book/results/03_judge_validation.json``), and this one
  flags the inducing fine-tune's style: the book measures that model by labels from reading instead (Chapter 3).
- ``offline`` (legacy) — :class:`~geomis.judges.offline.OfflineJudge`: a linear classifier on the same embeddings
  sorts an answer into one of 736 hand-written categories and reports that category's median scores. Kept, as
  :data:`LEGACY_JUDGE`, only for the filter's judge baseline, so that Chapter 4's committed filter-quality outputs
  stay reproducible.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from geomis.errors import ConfigError
from geomis.judges.local import DEFAULT_LOCAL_MODEL

if TYPE_CHECKING:
    from geomis.judges.base import Judge

JudgeKind = Literal["trained", "offline", "openai", "local"]
JUDGE_KINDS: tuple[JudgeKind, ...] = ("trained", "offline", "openai", "local")
"""The kinds :func:`make_judge` builds (``geomis judge --judge``, ``geomis filter --judge``), the default first."""
DEFAULT_JUDGE: JudgeKind = JUDGE_KINDS[0]
LEGACY_JUDGE: JudgeKind = "offline"
"""The judge ``geomis filter --method judge`` still defaults to, so that Chapter 4's committed filter-quality outputs
stay reproducible (``geomis reproduce`` scores with :data:`DEFAULT_JUDGE`)."""


def make_judge(kind: JudgeKind = DEFAULT_JUDGE, *, data_path: str | Path | None = None,
               weights: str | Path | None = None,
               local_model: str = DEFAULT_LOCAL_MODEL, device: str | None = None, progress: bool = False) -> Judge:
    """Build a judge by kind: ``trained`` (shipped weights, or ``weights``), ``offline`` (trained once on
    ``data_path``, then cached), ``openai`` (from env, connection checked) or ``local``.

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
