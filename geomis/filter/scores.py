"""The "sample scores" stage: how close each training sample's SAE features lie to the toxic feature set.

One forward pass per batch, stopped after layer L (nnsight, through :func:`geomis.activations.iter_chat_batches`),
then one SAE encode of the sample's assistant tokens (non-special, not position 0, as everywhere in geomis). What
follows is a few matrix products over all samples and features at once; there is no Python loop over features.

Per-feature closeness. For every SAE feature ``f``, ``c_f = max_{t in T, t != f} cos(d_f, d_t)``, the cosine of its
unit decoder direction with the nearest *other* toxic feature's direction (signed, as in
:mod:`geomis.features.geometry`). Self-pairs are left out by default, as in Chapter 2's test: a toxic feature counts by
its cosine to its nearest fellow toxic feature, so a score cannot rise merely because a sample fires the very features
that were selected on text like it. ``self_pairs=True`` gives a toxic feature closeness 1 (the filter's rule before
Chapter 4's filter-quality study, which measured both: book/results/04_geometry_filter.json).

Several SAEs. :func:`score_conversations` takes one SAE or several (each with its own toxic set) that read the same
layer; with several, the residuals of each batch are read once and every SAE encodes them; a sample's score is the
mean of its per-SAE scores (the ensemble Chapters 2 and 4 measure with: three SAEs trained on neutral text).

Scores (higher = closer to toxic = removed first):

- ``closest`` — our reading of the paper's criterion: the sample's *active features* (every feature that fires on at
  least one of its assistant tokens) form a small feature set, scored like a set in Chapter 2 by its mean nearest
  cosine to the toxic set, ``mean_{f active} c_f``. Every active feature counts once, however weakly or rarely it
  fires.
- ``weighted`` (the default) — the activation-weighted mean ``sum_f a_f c_f / sum_f a_f`` with ``a_f`` the feature's
  mean activation over the sample's tokens: the closeness of the directions the sample's residual stream is actually
  built from, in proportion to how much of it each builds. The spillover law (``Δf_j ≈ α ⟨d_j, d_t⟩``) says a
  fine-tuning step amplifies the features a sample *uses*, in proportion to their use; a feature that fires once,
  weakly, hardly moves anything. It is a mean over tokens, so it does not drift with length (long samples activate many
  more distinct features, which pulls ``closest`` towards the corpus average). Chapter 4's filter-quality study
  measures it against SAE-free baselines (``book/results/04_geometry_filter.json``, section ``filter_quality``).
- ``projection`` — the share of the sample's mean SAE reconstruction (without the decoder bias) that lies in the span
  of the toxic decoder directions, ``||P_T m|| / ||m||`` with ``m = sum_f a_f W_dec[f]``. It uses magnitudes and lets
  several weakly toxic-ish features add up, but it needs ``|T|`` well below ``d_model`` to mean anything.

Every reply token is scored, however long the row (:func:`geomis.chat.tokens.scoring_windows`): a row longer than
``max_length`` tokens has its prompt cut from the left (the reply stays whole), and a reply longer than
``max_length - 1`` tokens on its own is read in consecutive windows whose tokens are pooled into one score, as if
read at once. Rows that fit are read exactly as before. A sample with no scored token (an empty reply) gets NaN:
it cannot be scored, and the filter removes it unless told to keep it (:mod:`geomis.filter.selection`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from geomis.activations import ActivationConfig, check_layer, iter_chat_batches
from geomis.chat.tokens import Conversation, ScoringWindows, TokenizedChat, scoring_windows, tokenize_chat
from geomis.errors import ConfigError
from geomis.features.geometry import nearest_cosines
from geomis.features.sets import FeatureSet
from geomis.filter.config import DEFAULT_SCORE, SCORE_METHODS, ScoreMethod
from geomis.models.registry import LoadedModel
from geomis.sae.codes import SAECodes, encode_tokens
from geomis.sae.loading import LoadedSAE, decoder_directions

__all__ = [
    "ScoreMethod",
    "SCORE_METHODS",
    "DEFAULT_SCORE",
    "ScoringConfig",
    "ToxicGeometry",
    "SampleScores",
    "feature_closeness",
    "toxic_basis",
    "toxic_geometry",
    "closest_score",
    "activation_weighted_closeness",
    "projection_score",
    "scores_from_codes",
    "score_conversations",
]

_CHUNK_ROWS = 8192


@dataclass(frozen=True)
class ScoringConfig:
    """How training samples are scored: the score, the layer, batching and truncation (for scoring only)."""

    method: ScoreMethod = DEFAULT_SCORE
    layer: int | None = None
    """Decoder layer whose output is read; None: the SAE's layer (they must agree)."""
    batch_size: int = 16
    max_length: int = 512
    """Tokens per forward pass: longer samples have their prompt cut from the left, or their reply read in windows."""
    sae_batch_size: int = 4096
    progress: bool = True
    self_pairs: bool = False
    """Whether a toxic feature counts as closeness 1 (itself); False: its nearest other toxic feature's cosine."""

    def __post_init__(self) -> None:
        if self.method not in SCORE_METHODS:
            raise ConfigError(f"unknown score {self.method!r}; choose one of {', '.join(SCORE_METHODS)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.max_length < 2:
            raise ConfigError(f"max length must be at least 2 tokens, got {self.max_length}")
        if self.sae_batch_size < 1:
            raise ConfigError(f"SAE batch size must be at least 1, got {self.sae_batch_size}")


def _indices(toxic: FeatureSet | torch.Tensor | Sequence[int], d_sae: int) -> torch.Tensor:
    idx = toxic.indices if isinstance(toxic, FeatureSet) else torch.as_tensor(toxic, dtype=torch.int64)
    idx = idx.reshape(-1).to(torch.int64)
    if idx.numel() == 0:
        raise ValueError("the toxic feature set is empty")
    if int(idx.min()) < 0 or int(idx.max()) >= d_sae:
        raise ValueError(f"toxic feature index out of range for an SAE with {d_sae} features")
    return idx


def feature_closeness(directions: torch.Tensor, toxic: FeatureSet | torch.Tensor | Sequence[int], *,
                      self_pairs: bool = False) -> torch.Tensor:
    """(d_sae,) float32: each feature's max cosine to the toxic features' unit decoder directions.

    Without ``self_pairs`` (the default) a toxic feature counts by its cosine to the nearest *other* toxic feature, so
    that firing a toxic feature counts only as much as its direction's neighbours (needs two toxic features or more);
    with them its closeness is 1 (itself)."""
    if directions.ndim != 2:
        raise ValueError(f"decoder directions must be (d_sae, d_model), got shape {tuple(directions.shape)}")
    units = directions.float()
    units = units / units.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    idx = torch.unique(_indices(toxic, units.shape[0])).to(units.device)
    if not self_pairs and idx.numel() < 2:
        raise ValueError("closeness without self-pairs needs at least two toxic features")
    reference = units[idx]
    closeness = torch.empty(units.shape[0], dtype=torch.float32, device=units.device)
    for start in range(0, units.shape[0], _CHUNK_ROWS):
        closeness[start:start + _CHUNK_ROWS] = (units[start:start + _CHUNK_ROWS] @ reference.T).amax(dim=1)
    if self_pairs:
        closeness[idx] = 1.0  # exact, not 1 - rounding
    else:  # the nearest other toxic feature, self-pairs left out as in Chapter 2's geometry
        closeness[idx] = nearest_cosines(units, idx, idx).max_cos.to(closeness.dtype)
    return closeness.clamp(-1.0, 1.0).cpu()


def toxic_basis(decoder: torch.Tensor, toxic: FeatureSet | torch.Tensor | Sequence[int],
                rtol: float = 1e-6) -> torch.Tensor:
    """(d_model, r) orthonormal basis of the span of the toxic decoder directions (SVD, rank by ``rtol``)."""
    idx = _indices(toxic, decoder.shape[0])
    rows = decoder[idx.to(decoder.device)].double().cpu()
    _, singular, vh = torch.linalg.svd(rows, full_matrices=False)
    rank = int((singular > rtol * singular.max()).sum()) if singular.numel() else 0
    if rank >= decoder.shape[1]:
        raise ValueError(f"the {idx.numel()} toxic directions span the whole {decoder.shape[1]}-dimensional residual "
                         "space: the projection score would be 1 for every sample; use fewer features or another "
                         "score")
    return vh[:rank].T.float()


@dataclass(frozen=True)
class ToxicGeometry:
    """Per-feature quantities computed once per SAE and toxic set, reused for every batch of samples."""

    closeness: torch.Tensor
    """(d_sae,) each feature's nearest cosine to the toxic set."""
    decoder: torch.Tensor | None = None
    """(d_sae, d_model) raw decoder rows (projection score only)."""
    basis: torch.Tensor | None = None
    """(d_model, r) orthonormal basis of the toxic span (projection score only)."""


def toxic_geometry(sae: LoadedSAE, toxic: FeatureSet | torch.Tensor | Sequence[int],
                   method: ScoreMethod = DEFAULT_SCORE, *, self_pairs: bool = False) -> ToxicGeometry:
    """Precompute what ``method`` needs from the SAE's decoder and the toxic set (CPU float32 tensors)."""
    closeness = feature_closeness(decoder_directions(sae.sae), toxic, self_pairs=self_pairs)
    if method != "projection":
        return ToxicGeometry(closeness)
    decoder = sae.sae.W_dec.detach().float().cpu()
    return ToxicGeometry(closeness, decoder, toxic_basis(decoder, toxic))


def _nan_where(scores: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    return torch.where(empty, torch.full_like(scores, float("nan")), scores)


def closest_score(sample_max: torch.Tensor, closeness: torch.Tensor) -> torch.Tensor:
    """(n,) mean closeness over each sample's active features (max code > 0); NaN when none fires."""
    active = (sample_max > 0).double()
    count = active.sum(dim=1)
    return _nan_where(active @ closeness.double() / count.clamp_min(1), count == 0)


def activation_weighted_closeness(sample_mean: torch.Tensor, closeness: torch.Tensor) -> torch.Tensor:
    """(n,) activation-weighted mean closeness, weights = each feature's mean code in the sample; NaN when all 0."""
    weights = sample_mean.double()
    total = weights.sum(dim=1)
    return _nan_where(weights @ closeness.double() / torch.where(total > 0, total, torch.ones_like(total)),
                      total <= 0)


def projection_score(sample_mean: torch.Tensor, decoder: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(n,) ``||P_T m|| / ||m||`` for each sample's mean reconstruction ``m = sample_mean @ W_dec``; NaN when m = 0."""
    mean = sample_mean.float() @ decoder.float()
    norm = mean.double().norm(dim=1)
    inside = (mean @ basis.float()).double().norm(dim=1)
    return _nan_where((inside / torch.where(norm > 0, norm, torch.ones_like(norm))).clamp(0.0, 1.0), norm <= 0)


def scores_from_codes(codes: SAECodes, geometry: ToxicGeometry, method: ScoreMethod = DEFAULT_SCORE) -> torch.Tensor:
    """(n_samples,) float64 scores of ``method`` from per-sample SAE summaries; samples with no token get NaN."""
    if codes.d_sae != geometry.closeness.shape[0]:
        raise ValueError(f"codes have {codes.d_sae} features, the toxic geometry {geometry.closeness.shape[0]}")
    if method == "closest":
        scores = closest_score(codes.sample_max, geometry.closeness)
    elif method == "weighted":
        scores = activation_weighted_closeness(codes.sample_mean, geometry.closeness)
    elif method == "projection":
        if geometry.decoder is None or geometry.basis is None:
            raise ValueError("projection scores need a ToxicGeometry built with method='projection'")
        scores = projection_score(codes.sample_mean, geometry.decoder, geometry.basis)
    else:
        raise ValueError(f"unknown score {method!r}; choose one of {', '.join(SCORE_METHODS)}")
    return _nan_where(scores, codes.tokens_per_sample == 0)


@dataclass
class SampleScores:
    """One score per sample (input order) with how many tokens it rests on and how long samples were read."""

    scores: np.ndarray
    """(n,) float64; NaN for samples with no scored token."""
    scored_tokens: np.ndarray
    """(n,) int64 assistant tokens the score is computed from."""
    prompt_cut: np.ndarray
    """(n,) int64 prompt tokens left out, cut from the left, so that the whole reply fits (0: prompt whole)."""
    windows: np.ndarray
    """(n,) int64 windows the sample was read in (1 unless its reply alone is longer than ``max_length - 1``)."""
    method: ScoreMethod
    layer: int
    seconds: float
    """Wall time of tokenizing, the forward passes, SAE encoding and scoring."""
    input_tokens: int
    """Tokens run through the model (after cutting, without padding)."""
    per_sae: np.ndarray | None = None
    """(n_saes, n) each SAE's scores when several were averaged; None for one SAE."""

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def unscorable(self) -> np.ndarray:
        """(n,) bool: samples without a score (no reply token, or no feature fired on it)."""
        return np.isnan(self.scores)


class _Pooled:
    """Token counts, activation sums and maxima of samples read in several windows, pooled across batches."""

    def __init__(self, rows: Sequence[int], d_sae: int) -> None:
        self.slot = {row: slot for slot, row in enumerate(rows)}
        self.count = torch.zeros(len(rows), dtype=torch.long)
        self.total = torch.zeros(len(rows), d_sae, dtype=torch.float64)
        self.maximum = torch.zeros(len(rows), d_sae)

    def add(self, rows: Sequence[int], codes: SAECodes) -> None:
        """Add each window's summary (``codes`` row i) to the sample ``rows[i]``."""
        for local, row in enumerate(rows):
            slot = self.slot[row]
            count = int(codes.tokens_per_sample[local])
            self.count[slot] += count
            self.total[slot] += codes.sample_mean[local].double() * count
            self.maximum[slot] = torch.maximum(self.maximum[slot], codes.sample_max[local])

    def codes(self) -> SAECodes:
        """The pooled per-sample summaries (no per-token codes), ready for :func:`scores_from_codes`."""
        empty = torch.zeros(0, dtype=torch.long)
        mean = (self.total / self.count.clamp_min(1).unsqueeze(1)).float()
        return SAECodes(empty, empty, torch.zeros(0), empty, self.count, mean, self.maximum, self.maximum.shape[1])


def _windows(model: LoadedModel, conversations: Sequence[Conversation], max_length: int) -> list[ScoringWindows]:
    return [scoring_windows(tokenize_chat(model.tokenizer, conversation), max_length) for conversation in conversations]


def _ensemble(sae: LoadedSAE | Sequence[LoadedSAE], toxic: Any) -> tuple[list[LoadedSAE], list[Any]]:
    """One SAE with its toxic set, or several SAEs with one toxic set each, as two equal-length lists."""
    if isinstance(sae, LoadedSAE):
        return [sae], [toxic]
    saes, toxics = list(sae), list(toxic)
    if not saes or len(saes) != len(toxics):
        raise ValueError(f"several SAEs need one toxic set each: got {len(saes)} SAEs and {len(toxics)} toxic sets")
    if len({s.layer for s in saes}) != 1:
        raise ValueError(f"the SAEs read different layers ({sorted({s.layer for s in saes})}); score one layer at "
                         "a time")
    return saes, toxics


@torch.no_grad()
def score_conversations(model: LoadedModel, sae: LoadedSAE | Sequence[LoadedSAE], toxic: Any,
                        conversations: Sequence[Conversation], config: ScoringConfig = ScoringConfig()) -> SampleScores:
    """Score conversations by closeness to ``toxic``: one forward pass to layer L per batch, one encode per SAE.

    ``sae`` is one SAE with ``toxic`` its toxic set, or several SAEs of one layer with ``toxic`` a sequence of one set
    per SAE; then a sample's score is the mean of its per-SAE scores (NaN when any is NaN).
    Every reply token is read: each sample's first window runs in the same length-sorted batches as ever (a sample
    that fits is its own first window), the later windows of very long replies in batches of their own; a sample
    read in several windows is scored on all its tokens pooled.
    """
    started = time.perf_counter()
    saes, toxics = _ensemble(sae, toxic)
    layer = saes[0].layer if config.layer is None else config.layer
    if layer != saes[0].layer:
        raise ValueError(f"scoring layer {layer} differs from the layer the SAE reads ({saes[0].layer})")
    check_layer(model, layer)
    for one in saes:
        if one.d_in != model.spec.d_model:
            raise ValueError(f"SAE {one.name} reads width {one.d_in}, model {model.spec.name} has width "
                             f"{model.spec.d_model}")
    geometries = [toxic_geometry(one, chosen, config.method, self_pairs=config.self_pairs)
                  for one, chosen in zip(saes, toxics, strict=True)]
    n = len(conversations)
    scores = np.full((len(saes), n), np.nan)
    scored_tokens = np.zeros(n, dtype=np.int64)
    cut = _windows(model, conversations, config.max_length)
    first: list[TokenizedChat] = [sample.windows[0] for sample in cut]
    later = [(row, window) for row, sample in enumerate(cut) for window in sample.windows[1:]]
    long_rows = sorted({row for row, _ in later})
    pooled = [_Pooled(long_rows, one.d_sae) for one in saes]
    reading = ActivationConfig(layer=layer, batch_size=config.batch_size, assistant_only=True,
                               max_length=config.max_length, progress=False)
    passes = [(first, list(range(n))), ([window for _, window in later], [row for row, _ in later])]
    with tqdm(total=n + len(later), desc=f"scoring ({config.method}, layer {layer})",
              unit="window" if later else "sample", disable=not config.progress) as bar:
        for chats, owner in passes:
            local = torch.zeros(len(chats), dtype=torch.long)  # position in ``chats`` -> row within its batch
            for indices, parts in iter_chat_batches(model, chats, [layer], reading, to_cpu=False):
                activations = parts[layer]
                local[indices] = torch.arange(len(indices))
                activations.sample_index = local[activations.sample_index]
                rows = [owner[index] for index in indices]
                whole = [i for i, row in enumerate(rows) if row not in pooled[0].slot]
                parted = [i for i, row in enumerate(rows) if row in pooled[0].slot]
                for number, (one, geometry) in enumerate(zip(saes, geometries, strict=True)):
                    codes = encode_tokens(one, activations, n_samples=len(indices), batch_size=config.sae_batch_size)
                    if whole:
                        positions = np.asarray([rows[i] for i in whole])
                        scores[number, positions] = scores_from_codes(codes, geometry, config.method).numpy()[whole]
                        scored_tokens[positions] = codes.tokens_per_sample.numpy()[whole]
                    pooled[number].add([rows[i] for i in parted], _select(codes, parted))
                bar.update(len(indices))
    if long_rows:
        positions = np.asarray(long_rows)
        for number, geometry in enumerate(geometries):
            joined = pooled[number].codes()
            scores[number, positions] = scores_from_codes(joined, geometry, config.method).numpy()
            scored_tokens[positions] = joined.tokens_per_sample.numpy()
    return SampleScores(scores=scores.mean(axis=0), scored_tokens=scored_tokens,
                        prompt_cut=np.array([sample.prompt_cut for sample in cut], dtype=np.int64),
                        windows=np.array([len(sample.windows) for sample in cut], dtype=np.int64),
                        method=config.method, layer=layer, seconds=time.perf_counter() - started,
                        input_tokens=int(sum(len(window) for sample in cut for window in sample.windows)),
                        per_sae=scores if len(saes) > 1 else None)


def _select(codes: SAECodes, samples: Sequence[int]) -> SAECodes:
    """The per-sample summaries of some samples of ``codes`` (no per-token codes)."""
    index = torch.as_tensor(list(samples), dtype=torch.long)
    empty = torch.zeros(0, dtype=torch.long)
    return SAECodes(empty, empty, torch.zeros(0), empty, codes.tokens_per_sample[index], codes.sample_mean[index],
                    codes.sample_max[index], codes.d_sae)
