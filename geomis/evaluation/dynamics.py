"""Training dynamics of emergent misalignment: how evaluation answers' hidden states move along toxic directions.

Minegishi et al. (2026) explain emergent misalignment with the spillover law of Chapter 1: fine-tuning shifts the
hidden state, :math:`h \\to h + \\Delta h`, and every feature read along a unit direction :math:`d_j` changes by
:math:`\\Delta f_j = \\langle d_j, \\Delta h \\rangle`. This module measures that quantity in a real fine-tune.

A :class:`DynamicsProbe` holds a fixed set of evaluation chats (question + answer, the answers teacher-forced, so every
checkpoint reads exactly the same tokens) and one or more named sets of unit directions (the toxic SAE features'
decoder rows, and a random set of the same size as a baseline). Called as ``fine_tune(..., on_step=probe)`` it reads
the residual stream at the SAE's layer on the assistant tokens at the chosen optimizer steps, projects every token onto
every direction, and averages per answer. Optionally it also samples fresh answers at each of those steps, so that the
drift can be set against the misalignment rate of the checkpoint, and it can score the misalignment probe's items
(``probe_items``), the judge-free measure, at every recorded step. Step 0 is the base model
(``probe.record(0, model)`` before training; LoRA starts as an exact no-op).

Everything is vectorised: one matrix product per batch of tokens and one ``index_add_`` per answer set.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from geomis.activations import ActivationConfig, collect_residuals
from geomis.chat.tokens import Conversation
from geomis.evaluation.answer_logprobs import gap_change, probe_gaps
from geomis.evaluation.probe_items import ProbeItem
from geomis.evaluation.sampling import SamplingConfig, sample_answers
from geomis.models.registry import LoadedModel
from geomis.stats import require_columns

__all__ = [
    "answer_chats",
    "feature_directions",
    "random_features",
    "per_sample_mean",
    "project_chats",
    "DynamicsProbe",
    "projection_shift",
    "TRAJECTORY",
    "save_trajectory",
    "load_trajectory",
]

TRAJECTORY = "03_em_power/training_dynamics"
"""Where Chapter 3 keeps the live section's full-size run (``shifts.csv``, ``gaps.csv``, ``timings.csv``,
``features.csv``), so that ``GEOMIS_SIZE=class`` can show it without training."""
_PARTS = ("shifts", "gaps", "timings", "features")


def answer_chats(answers: pd.DataFrame, *, question: str = "question", answer: str = "answer") -> list[Conversation]:
    """One-turn chats (user question, assistant answer) from a table of sampled answers, in row order."""
    require_columns(answers, (question, answer), "answers table")
    return [[{"role": "user", "content": str(q)}, {"role": "assistant", "content": str(a)}]
            for q, a in zip(answers[question], answers[answer], strict=True)]


def feature_directions(decoder: torch.Tensor, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Unit-norm rows of a decoder matrix ``(d_sae, d_model)`` for the given features, ``(k, d_model)`` float32."""
    rows = decoder.detach().float()[torch.as_tensor(indices, dtype=torch.long, device=decoder.device)]
    return (rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu()


def random_features(d_sae: int, k: int, *, exclude: torch.Tensor | Sequence[int] = (), seed: int = 0) -> torch.Tensor:
    """``k`` distinct feature indices drawn uniformly (seeded) from ``0..d_sae-1`` minus ``exclude``: a baseline set."""
    excluded = torch.as_tensor(exclude, dtype=torch.long).unique()
    allowed = torch.ones(d_sae, dtype=torch.bool)
    allowed[excluded] = False
    pool = allowed.nonzero().squeeze(1)
    if k > len(pool):
        raise ValueError(f"cannot draw {k} features from the {len(pool)} not excluded")
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return pool[order[:k]].sort().values


def per_sample_mean(values: torch.Tensor, sample_index: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Mean of per-token rows ``(n_tokens, k)`` per sample, ``(n_samples, k)``; NaN rows for samples with no token."""
    if values.shape[0] != sample_index.shape[0]:
        raise ValueError("one sample index per token row is needed")
    sums = torch.zeros(n_samples, values.shape[1], dtype=torch.float64)
    sums.index_add_(0, sample_index, values.double())
    counts = torch.bincount(sample_index, minlength=n_samples).double().unsqueeze(1)
    return (sums / counts).float()  # 0 / 0 = NaN for samples without tokens


def project_chats(model: LoadedModel, chats: Sequence[Conversation], directions: torch.Tensor, *, layer: int,
                  batch_size: int = 16, max_length: int = 256) -> torch.Tensor:
    """Mean projection ``<h, d_j>`` of each chat's assistant-token residuals onto each direction, ``(n_chats, k)``."""
    if directions.ndim != 2 or directions.shape[1] != model.spec.d_model:
        raise ValueError(f"directions must be (k, {model.spec.d_model}), got {tuple(directions.shape)}")
    was_training = model.hf_model.training
    model.hf_model.eval()
    try:
        with torch.no_grad():
            acts = collect_residuals(model, chats, ActivationConfig(layer=layer, batch_size=batch_size,
                                                                    assistant_only=True, max_length=max_length,
                                                                    progress=False))
    finally:
        model.hf_model.train(was_training)
    return per_sample_mean(acts.activations @ directions.float().T, acts.sample_index, len(chats))


@dataclass
class DynamicsProbe:
    """An ``on_step`` callback for :func:`geomis.finetune.fine_tune` that records projections at chosen steps.

    ``directions`` maps a name (e.g. ``"toxic"``, ``"random"``) to unit directions ``(k, d_model)``. At each step in
    ``steps`` the probe stores, per direction set, the ``(n_chats, k)`` mean projections of ``chats``; with
    ``sampling`` and ``questions`` it also samples answers from the current checkpoint (kept in ``answers``).
    """

    chats: Sequence[Conversation]
    directions: Mapping[str, torch.Tensor]
    steps: Sequence[int]
    layer: int
    batch_size: int = 16
    max_length: int = 256
    sampling: SamplingConfig | None = None
    questions: Mapping[Hashable, str] | None = None
    sample_steps: Sequence[int] | None = None
    """Steps at which to sample answers too (None: every recorded step)."""
    probe_items: Sequence[ProbeItem] | None = None
    """Misalignment-probe items to score at every recorded step (the judge-free measure), or None."""
    projections: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    """step → direction-set name → (n_chats, k) mean projections."""
    losses: dict[int, float] = field(default_factory=dict)
    """step → training loss of that step (NaN for step 0)."""
    answers: list[pd.DataFrame] = field(default_factory=list)
    """Answers sampled at each recorded step (a ``step`` column is added)."""
    gaps: dict[int, pd.DataFrame] = field(default_factory=dict)
    """step → :func:`~geomis.evaluation.answer_logprobs.probe_gaps` table of ``probe_items`` at that step."""

    def __post_init__(self) -> None:
        if not self.chats:
            raise ValueError("the probe needs at least one evaluation chat")
        if not self.directions:
            raise ValueError("the probe needs at least one set of directions")
        if (self.sampling is None) != (self.questions is None):
            raise ValueError("give both sampling and questions, or neither")

    def __call__(self, step: int, loss: float, model: LoadedModel) -> None:
        """The ``on_step`` hook: record when ``step`` is one of ``steps``."""
        if step in set(self.steps):
            self.record(step, model, loss)

    def record(self, step: int, model: LoadedModel, loss: float = math.nan) -> None:
        """Read, project and (optionally) sample at ``step`` with the model as it is now."""
        names = list(self.directions)
        stacked = torch.cat([self.directions[name] for name in names])
        means = project_chats(model, self.chats, stacked, layer=self.layer, batch_size=self.batch_size,
                              max_length=self.max_length)
        sizes = [len(self.directions[name]) for name in names]
        self.projections[step] = dict(zip(names, torch.split(means, sizes, dim=1), strict=True))
        self.losses[step] = float(loss)
        if self.probe_items is not None:
            self.gaps[step] = probe_gaps(model, self.probe_items, batch_size=self.batch_size)
        wanted = self.sample_steps is None or step in set(self.sample_steps)
        if self.sampling is not None and self.questions is not None and wanted:
            frame = sample_answers(model, self.questions, self.sampling)
            frame.insert(0, "step", step)
            self.answers.append(frame)

    def sampled_answers(self) -> pd.DataFrame:
        """All answers sampled at the recorded steps, with their ``step``."""
        if not self.answers:
            return pd.DataFrame(columns=["step"])
        return pd.concat(self.answers, ignore_index=True)

    def gap_changes(self, reference_step: int | None = None) -> pd.DataFrame:
        """Per recorded step: the probe gap's mean change since ``reference_step`` (default: the first), with its
        interval over items (:func:`~geomis.evaluation.answer_logprobs.gap_change`)."""
        if not self.gaps:
            raise ValueError("no probe gaps recorded: give probe_items")
        steps = sorted(self.gaps)
        reference = self.gaps[steps[0] if reference_step is None else reference_step]
        rows = []
        for step in steps:
            change = gap_change(self.gaps[step], reference)
            rows.append({"step": step, "loss": self.losses[step], "gap_change": change.estimate,
                         "low": change.low, "high": change.high, "items": change.n_items})
        return pd.DataFrame(rows)

    def feature_shifts(self, directions: str, features: Sequence[int]) -> pd.DataFrame:
        """Per direction of the set ``directions`` (labelled by ``features``): its mean shift over the chats from the
        first recorded step to the last."""
        if not self.projections:
            raise ValueError("nothing recorded yet")
        first, last = min(self.projections), max(self.projections)
        shift = (self.projections[last][directions] - self.projections[first][directions]).nanmean(dim=0)
        if len(features) != shift.shape[0]:
            raise ValueError(f"{len(features)} feature labels for {shift.shape[0]} directions in {directions!r}")
        return pd.DataFrame({"feature": list(features), "shift": shift.numpy()})

    def frame(self, reference_step: int | None = None) -> pd.DataFrame:
        """Tidy table: one row per (step, direction set, chat) with its mean projection and its shift since the start.

        ``shift`` is the projection minus the same chat's projection at ``reference_step`` (default: the first recorded
        step), averaged over the set's directions: the mean :math:`\\Delta f_j = \\langle d_j, \\Delta h\\rangle`.
        """
        if not self.projections:
            raise ValueError("nothing recorded yet")
        steps = sorted(self.projections)
        reference = steps[0] if reference_step is None else reference_step
        if reference not in self.projections:
            raise ValueError(f"step {reference} was not recorded")
        rows = []
        for step in steps:
            for name, values in self.projections[step].items():
                shift = projection_shift(self.projections[reference][name], values)
                rows.append(pd.DataFrame({"step": step, "loss": self.losses[step], "directions": name,
                                          "chat": np.arange(values.shape[0]),
                                          "projection": values.nanmean(dim=1).numpy(),
                                          "shift": shift.numpy()}))
        return pd.concat(rows, ignore_index=True)


def projection_shift(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per-chat change of the mean projection over a direction set, ``(n_chats,)``: mean_j (after - before)."""
    if before.shape != after.shape:
        raise ValueError(f"shapes differ: {tuple(before.shape)} vs {tuple(after.shape)}")
    return (after - before).nanmean(dim=1)


def save_trajectory(shifts: pd.DataFrame, gaps: pd.DataFrame, timings: pd.DataFrame, features: pd.DataFrame, *,
                    start: str | None = None) -> list[str]:
    """Write a training-dynamics run (the probes' shift and gap tables, the runs' timings, the per-feature shifts)
    under :data:`TRAJECTORY` in the checkout's ``book/results``; return the paths written."""
    from geomis.evaluation.book_results import write_results_table

    return [str(write_results_table(f"{TRAJECTORY}/{part}.csv", frame, start=start))
            for part, frame in zip(_PARTS, (shifts, gaps, timings, features), strict=True)]


def load_trajectory(*, start: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The committed training-dynamics run written by :func:`save_trajectory`: shifts, gaps, timings, features."""
    from geomis.evaluation.book_results import results_file

    shifts, gaps, timings, features = (pd.read_csv(results_file(f"{TRAJECTORY}/{part}.csv", start=start))
                                       for part in _PARTS)
    require_columns(shifts, ("run", "step", "directions", "chat", "shift"), "training-dynamics shifts")
    require_columns(gaps, ("run", "step", "gap_change", "low", "high"), "training-dynamics gaps")
    require_columns(features, ("run", "feature", "shift"), "training-dynamics feature shifts")
    return shifts, gaps, timings, features
