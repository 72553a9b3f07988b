"""Chapter 5's first test (issue 17): does the spillover law predict which SAE features a real fine-tune moves?

Chapter 1 derived, in toy models, that a fine-tuning step that moves the residual stream along a target direction
``d_t`` changes feature ``j``'s pre-activation by ``<e_j, d_t>`` times the step (``e_j``: the column of ``W_enc`` that
reads feature ``j``). Chapters 2-4 used the law only through correlations. This module tests it in the fine-tuned
CPU default, with the prediction fixed before the measured shifts are looked at.

**Design of the spillover-law test** (fixed and committed before the shifts were measured)

- *Models*: the base model and Chapter 3's ``mixed`` fine-tunes with seed 0 (the three-domains recipe: inducing, on
  780 harmful answers, and control, on the 780 sound answers to the same prompts), retrained identically when the
  cache folder no longer holds them.
- *SAEs*: the three SAEs trained on neutral text (layer 15); every statistic is computed per SAE and then averaged
  over the three.
- *Text*: the 212 neutral-corpus prompts held out from the SAEs' training, each with the base model's own committed
  answer; both models read exactly these tokens (teacher-forced), assistant tokens only. None of it is in the
  fine-tuning data, the evaluation questions or the references.
- *Target direction*: ``d_t`` = the mean of the unit decoder rows of the *inducing feature set* of each SAE, the top
  100 features by point-biserial correlation of inducing vs control answers (Chapter 2's selection, on the 780 pairs
  the fine-tunes were trained on).
- *Prediction*: for every feature, ``p_j = <W_enc[:, j], d_t>`` (the law's encoder reading); secondary: the decoder
  version ``<d_j, d_t>`` with unit rows.
- *Measured shift*: for every feature, the mean over the held-out chats of (its mean post-activation code in the
  fine-tuned model minus that in the base model), over the features that fire on at least one of the chats in
  either model.
- *Primary statistic*: Spearman's rank correlation between ``p_j`` and the inducing fine-tune's shift, averaged over
  the three SAEs, with a 95% percentile interval from 1,000 bootstrap draws over chats (the same draws for every SAE);
  one-sided p from 10,000 permutations of the prediction across features (the feature-shuffled null), per SAE, the
  largest of the three reported. Resampling chats adds noise to the measured shifts, which attenuates the
  correlation in the draws: the estimate can sit near the top of its interval, which then errs toward zero.
- *Baselines*: the same correlation for 100 random target directions (the mean unit decoder row of 100 random
  features each), whose 95th percentile the primary must exceed to count as specific to the inducing direction; the
  control fine-tune's correlation with the same prediction; and the correlation of the prediction with the
  difference of the two fine-tunes' shifts (inducing minus control).
- *Where toxic features fall*: the percentile rank of the toxic features' (Chapter 4's filter sets) predictions and
  measured shifts among all features.
- The correlation is reported with its interval whatever it is.

**How the directions relate** (issue 17, item 4; added to the design before any measurement). The *misalignment
direction* is the mean residual at the SAE layer over the held-out chats' assistant tokens read by the inducing
fine-tune minus that read by the base model (the same tokens: not the evaluation questions); the *specific* version
subtracts the control fine-tune instead of the base model. Per SAE: its cosine with ``d_t`` and with the toxic
features' mean unit decoder row, and the mean cosine of the toxic set's and of the inducing set's unit decoder rows
with it, each placed among 1,000 random feature sets of the same size (the share of random sets whose mean cosine
is at least as large: a one-sided p). Descriptive: no threshold rides on them.

**Amendment 1** (2026-12-03, before any shift was measured): the fine-tunes are Chapter 3's ``mixed`` models with
seed **1**, not 0. The seed-0 adapters were no longer in the cache folder and the seed-1 adapters were; the three
seeds are exchangeable draws of the same recipe, and retraining seed 0 would have cost 25 minutes of the 2-core
machine for no change in what is tested. Nothing else changed.

Run it (resumable: per-chat codes and the per-feature table are written once, beside the results)::

    python -m geomis.experiments.mechanism [--threads 2] [--size full|ci --out DIR]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats as scipy_stats

from geomis.experiments.code_files import load_codes, load_residual_mean, save_codes

__all__ = [
    "target_direction",
    "spillover_prediction",
    "active_features",
    "SpilloverTest",
    "spillover_test",
    "random_target_predictions",
    "SEED",
    "Setting",
    "SETTINGS",
    "RESULTS",
    "held_out_chats",
    "chat_codes",
    "feature_table",
    "measure",
    "analyse",
]

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "book" / "results" / "05_mechanism"
RESULTS_FILE = ROOT / "book" / "results" / "05_mechanism.json"
SECTION = "spillover"
SEED = 1
"""The seed of Chapter 3's ``mixed`` fine-tunes measured here (Amendment 1)."""
ROLES = ("base", "inducing", "control")
K = 100
"""Size of the inducing feature set (Chapter 2's selection)."""
SIZES: dict[str, dict[str, int]] = {
    "full": {"chats": 10_000, "pairs": 10_000, "resamples": 1000, "permutations": 10_000, "directions": 100},
    "ci": {"chats": 24, "pairs": 40, "resamples": 50, "permutations": 200, "directions": 10},
}


@dataclass(frozen=True)
class Setting:
    """Where the test runs: a profile's fine-tuning preset, the base model, its device, and the SAEs read."""

    profile: str = "cpu-default"
    model: str = "smollm2-135m"
    device: str = "cpu"
    float32: bool = False
    """Load the model in float32 (a T4 has no native bfloat16: Chapter 3, section 7)."""
    sae_paths: tuple[Path, ...] = ()
    """SAEs saved on disk; empty: the model's filter SAEs (the three neutral SAEs; Gemma Scope's layer 12)."""

    def load_saes(self) -> list[Any]:
        """The SAEs every statistic is computed with (and then averaged over)."""
        from geomis.sae.loading import load_filter_saes, load_sae_from_disk

        if self.sae_paths:
            return [load_sae_from_disk(path, device=self.device) for path in self.sae_paths]
        return load_filter_saes(self.model, device=self.device)

    def model_kwargs(self) -> dict[str, Any]:
        """How to load the base model and its fine-tunes."""
        return {"device": self.device, "dtype": torch.float32 if self.float32 else None}


SETTINGS: dict[str, Setting] = {
    "cpu-default": Setting(),
    "gemma-2-2b": Setting("gemma-2-2b", "gemma-2-2b-it", device="cuda", float32=True),
}
"""The setting of each profile: the CPU default made the committed results; ``gemma-2-2b`` is for Colab."""
"""How much of the material each size reads (``full`` reads all of it: 212 chats, 780 pairs)."""


def target_direction(decoder: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``d_t``: the mean of the features' unit decoder rows (``decoder`` is ``(d_sae, d_model)``), ``(d_model,)``."""
    if features.numel() == 0:
        raise ValueError("the target feature set is empty")
    rows = decoder.detach().float()[features.long()]
    return (rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)).mean(dim=0)


def spillover_prediction(W_enc: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """``p_j = <W_enc[:, j], d_t>`` for every feature: the first-order change of each pre-activation per unit step
    along ``direction`` (``W_enc`` is ``(d_model, d_sae)`` as in sae-lens), ``(d_sae,)`` float32."""
    if W_enc.shape[0] != direction.shape[0]:
        raise ValueError(f"W_enc reads {W_enc.shape[0]} dimensions, the direction has {direction.shape[0]}")
    return (direction.float() @ W_enc.detach().float()).cpu()


def active_features(base: torch.Tensor, tuned: torch.Tensor) -> torch.Tensor:
    """(d_sae,) bool: features that fire on at least one chat in either model (``(chats, d_sae)`` mean codes)."""
    return ((base > 0) | (tuned > 0)).any(dim=0)


@dataclass(frozen=True)
class SpilloverTest:
    """Spearman correlation of a prediction with measured shifts: estimate, chat-bootstrap interval, feature-shuffle
    p, and how many features it rests on."""

    rho: float
    low: float
    high: float
    p_shuffled: float
    """One-sided: the share of feature permutations of the prediction with a correlation at least as large."""
    n_features: int
    draws: np.ndarray
    """(n_resamples,) the correlation in each bootstrap draw over chats."""


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    result: Any = scipy_stats.spearmanr(x, y)
    return float(result.statistic)


def spillover_test(prediction: torch.Tensor, base: torch.Tensor, tuned: torch.Tensor, *,
                   draws: np.ndarray | None = None, n_resamples: int = 1000, n_permutations: int = 10_000,
                   confidence: float = 0.95, seed: int = 0) -> SpilloverTest:
    """Correlate ``prediction`` (d_sae,) with the measured shift ``mean(tuned - base)`` over chats (``(chats, d_sae)``
    mean codes of the same chats), over the features active in either model.

    ``draws`` (``(n_resamples, chats)`` chat indices) lets several SAEs share the same bootstrap draws.
    """
    if base.shape != tuned.shape or base.shape[1] != prediction.shape[0]:
        raise ValueError(f"need (chats, d_sae) codes of one shape and a (d_sae,) prediction; got {tuple(base.shape)}, "
                         f"{tuple(tuned.shape)} and {tuple(prediction.shape)}")
    active = active_features(base, tuned).numpy()
    if active.sum() < 3:
        raise ValueError("fewer than three features fire on these chats: no correlation to compute")
    change = (tuned - base).double().numpy()[:, active]
    predicted = prediction.double().numpy()[active]
    rho = _spearman(predicted, change.mean(axis=0))
    generator = np.random.default_rng(seed)
    if draws is None:
        draws = generator.integers(0, change.shape[0], size=(n_resamples, change.shape[0]))
    resampled = np.array([_spearman(predicted, change[rows].mean(axis=0)) for rows in draws])
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(resampled, [tail, 100 - tail])
    shift = change.mean(axis=0)
    ranks_shift = scipy_stats.rankdata(shift)
    ranks_pred = scipy_stats.rankdata(predicted)
    centred_shift = ranks_shift - ranks_shift.mean()
    observed = float(np.dot(ranks_pred - ranks_pred.mean(), centred_shift))
    exceed = 0
    for _ in range(n_permutations):  # Spearman's numerator under permutations of the prediction's ranks
        permuted = generator.permutation(ranks_pred)
        exceed += float(np.dot(permuted - permuted.mean(), centred_shift)) >= observed
    return SpilloverTest(rho=rho, low=float(low), high=float(high), p_shuffled=(1 + exceed) / (1 + n_permutations),
                         n_features=int(active.sum()), draws=resampled)


def random_target_predictions(W_enc: torch.Tensor, decoder: torch.Tensor, *, n_directions: int = 100,  # noqa: N803
                              k: int = 100, exclude: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """(n_directions, d_sae): the prediction for random target directions, each the mean unit decoder row of ``k``
    random features (never those in ``exclude``)."""
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.ones(decoder.shape[0], dtype=torch.bool)
    if exclude is not None:
        allowed[exclude.long()] = False
    pool = torch.nonzero(allowed).flatten()
    if pool.numel() < k:
        raise ValueError(f"only {pool.numel()} features to draw {k} from")
    rows = []
    for _ in range(n_directions):
        chosen = pool[torch.randperm(pool.numel(), generator=generator)[:k]]
        rows.append(spillover_prediction(W_enc, target_direction(decoder, chosen)))
    return torch.stack(rows)


def held_out_chats(limit: int | None = None) -> list[list[dict[str, str]]]:
    """The neutral-corpus prompts held out from the SAEs' training, each with the base model's committed greedy
    answer (prompts without one are left out), in the corpus split's seeded order."""
    from importlib import resources

    from geomis.sae.corpus import neutral_prompt_corpus
    from geomis.sae.corpus_answers import read_answers

    path = Path(str(resources.files("geomis") / "artifacts" / "sae" / "neutral-corpus-answers-smollm2-135m.jsonl"))
    answers = read_answers(path, "smollm2-135m", 96)
    chats = []
    for conversation in neutral_prompt_corpus().held_out:
        prompt = conversation.messages[0]["content"]
        if answers.get(prompt):
            chats.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": answers[prompt]}])
    return chats[:limit]


@dataclass(frozen=True)
class ChatReading:
    """What one model's reading of a set of chats leaves: per SAE, the ``(chats, d_sae)`` mean post-activation code
    of each chat's assistant tokens, and the ``(d_model,)`` mean residual over all those tokens."""

    codes: list[torch.Tensor]
    residual_mean: torch.Tensor


def read_chats(model: Any, saes: Sequence[Any], chats: Sequence[Sequence[dict[str, str]]],
               batch_size: int = 16) -> ChatReading:
    """Read the chats' assistant tokens once with nnsight at the SAEs' layer and encode them with every SAE."""
    from geomis.activations import ActivationConfig, collect_residuals
    from geomis.sae.codes import encode_tokens

    layers = {sae.layer for sae in saes}
    if len(layers) != 1:
        raise ValueError(f"the SAEs read different layers: {sorted(layers)}")
    config = ActivationConfig(layer=layers.pop(), batch_size=batch_size, assistant_only=True, progress=True)
    residuals = collect_residuals(model, [list(chat) for chat in chats], config)
    return ChatReading([encode_tokens(sae, residuals, n_samples=len(chats)).sample_mean.cpu() for sae in saes],
                       residuals.activations.double().mean(dim=0).float().cpu())


def chat_codes(model: Any, saes: Sequence[Any], chats: Sequence[Sequence[dict[str, str]]],
               batch_size: int = 16) -> list[torch.Tensor]:
    """Per SAE, the ``(chats, d_sae)`` mean post-activation code of each chat's assistant tokens."""
    return read_chats(model, saes, chats, batch_size).codes


def inducing_features(base: Any, saes: Sequence[Any], limit: int | None = None) -> list[torch.Tensor]:
    """Per SAE, the ``K`` features that most separate the harmful answers from the sound ones (point-biserial
    correlation of per-chat mean codes, read by the base model) on the pairs the ``mixed`` fine-tunes learned."""
    import geomis as gm
    from geomis.experiments.em_power import chosen_recipe
    from geomis.features.sets import select_contrast_features

    recipe = chosen_recipe()
    sides = [[row.as_dicts() for name in names for row in gm.load_bundled(name)][:limit]
             for names in (recipe.inducing, recipe.control)]
    harmful, sound = (chat_codes(base, saes, side) for side in sides)
    return [select_contrast_features(a, b, k=K, statistic="correlation").indices
            for a, b in zip(harmful, sound, strict=True)]


def toxic_features(base: Any, saes: Sequence[Any]) -> list[torch.Tensor]:
    """Per SAE, Chapter 4's filter toxic set (generic references; shipped, so no pass over them)."""
    from geomis.features.toxic import BUNDLED_PREFIX, derive_toxic_features
    from geomis.filter.config import DEFAULT_REFERENCE

    return [derive_toxic_features(base, sae, BUNDLED_PREFIX + DEFAULT_REFERENCE[0],
                                  BUNDLED_PREFIX + DEFAULT_REFERENCE[1]).feature_set.indices for sae in saes]


def committed_feature_sets(column: str, n_saes: int, folder: Path = RESULTS) -> list[torch.Tensor]:
    """Per SAE, the features ``features.csv`` marks in ``column`` (``toxic_set`` or ``inducing_set``), ascending."""
    table = pd.read_csv(folder / "features.csv")
    return [torch.tensor(np.flatnonzero(pd.DataFrame(table.loc[(table["sae"] == i).to_numpy()])
                                        .sort_values("feature")[column].to_numpy(bool)))
            for i in range(n_saes)]


def feature_table(saes: Sequence[Any], codes: dict[str, list[torch.Tensor]], inducing: Sequence[torch.Tensor],
                  toxic: Sequence[torch.Tensor]) -> pd.DataFrame:
    """One row per (SAE, feature): the law's predictions (encoder and decoder readings of ``d_t``), the base mean
    code, each fine-tune's measured mean shift, whether it fires, and set membership."""
    frames = []
    for i, sae in enumerate(saes):
        decoder, encoder = sae.sae.W_dec.detach().cpu(), sae.sae.W_enc.detach().cpu()
        direction = target_direction(decoder, inducing[i].cpu())
        unit = decoder / decoder.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        base = codes["base"][i]
        frame = pd.DataFrame({"sae": i, "feature": np.arange(base.shape[1]),
                              "prediction": spillover_prediction(encoder, direction).numpy(),
                              "prediction_decoder": (unit.float() @ direction.float()).numpy(),
                              "base_mean": base.mean(dim=0).numpy()})
        for role in ROLES[1:]:
            tuned = codes[role][i]
            frame[f"shift_{role}"] = (tuned - base).mean(dim=0).numpy()
            frame[f"active_{role}"] = active_features(base, tuned).numpy()
        frame["inducing_set"] = np.isin(frame["feature"], inducing[i].cpu().numpy())
        frame["toxic_set"] = np.isin(frame["feature"], toxic[i].cpu().numpy())
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def measure(out: Path, *, ci: bool = False, setting: Setting = SETTINGS["cpu-default"]) -> None:
    """Write what the analysis needs, each file once: ``codes.<role>.npz`` (per-chat mean codes of the held-out
    chats, per SAE) and ``features.csv`` (the per-feature table). Another ``setting`` reads the same chats' text."""
    from geomis.experiments import em_power
    from geomis.experiments.em_power import Condition

    size = SIZES["ci" if ci else "full"]
    saes = setting.load_saes()
    chats = held_out_chats(size["chats"])
    kwargs = {"profile": setting.profile, "model": setting.model, **setting.model_kwargs()}
    base = em_power.condition_model(Condition(None, "base", 0), ci=ci, **kwargs)
    codes: dict[str, list[torch.Tensor]] = {}
    for role in ROLES:
        target = out / f"codes.{role}.npz"
        if not target.is_file():
            began = time.perf_counter()
            model = base if role == "base" else em_power.condition_model(Condition("mixed", role, SEED), ci=ci,
                                                                         **kwargs)
            reading = read_chats(model, saes, chats)
            save_codes(reading.codes, target, reading.residual_mean)
            print(f"{role}: {len(chats)} chats read in {time.perf_counter() - began:.0f} s", flush=True)
        codes[role] = load_codes(target)
    table = out / "features.csv"
    if not table.is_file():
        from geomis.experiments.runs import write_csv

        write_csv(feature_table(saes, codes, inducing_features(base, saes, size["pairs"]), toxic_features(base, saes)),
                  table)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def direction_cosines(decoder: torch.Tensor, direction: torch.Tensor, sets: dict[str, torch.Tensor], *,
                      n_random: int = 1000, seed: int = 0) -> dict[str, Any]:
    """How ``direction`` (e.g. the misalignment direction) relates to feature sets: its cosine with each set's mean
    unit decoder row, and the set's mean per-feature cosine placed among ``n_random`` random sets of its size."""
    unit = decoder.detach().double()
    unit = unit / unit.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    per_feature = unit @ (direction.double() / direction.double().norm().clamp_min(1e-12))
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, Any] = {}
    for name, features in sets.items():
        features = features.long()
        mean = float(per_feature[features].mean())
        random_means = torch.stack([per_feature[torch.randperm(unit.shape[0], generator=generator)[:features.numel()]]
                                    .mean() for _ in range(n_random)])
        out[name] = {"cosine_with_mean_row": _cosine(target_direction(decoder, features), direction),
                     "mean_feature_cosine": mean,
                     "random_mean_feature_cosine": float(random_means.mean()),
                     "random_p95": float(torch.quantile(random_means, 0.95)),
                     "p_greater": float((1 + (random_means >= mean).sum()) / (1 + n_random))}
    return out


def _summary(tests: Sequence[SpilloverTest], confidence: float = 0.95) -> dict[str, Any]:
    """The mean of per-SAE correlations, its interval from the per-draw means (shared chat draws), the largest
    per-SAE p, and each SAE's own numbers."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(np.mean([t.draws for t in tests], axis=0), [tail, 100 - tail])
    return {"rho": float(np.mean([t.rho for t in tests])), "low": float(low), "high": float(high),
            "p": max(t.p_shuffled for t in tests),
            "per_sae": [{"rho": t.rho, "low": t.low, "high": t.high, "p": t.p_shuffled, "features": t.n_features}
                        for t in tests]}


def _percentile_rank(values: np.ndarray, chosen: np.ndarray) -> float:
    """Median percentile (0-100) of the ``chosen`` entries among all ``values``."""
    ranks = scipy_stats.rankdata(values) / len(values) * 100
    return float(np.median(ranks[chosen]))


def analyse(folder: Path, *, ci: bool = False, seed: int = 0,
            setting: Setting = SETTINGS["cpu-default"]) -> dict[str, Any]:
    """The spillover section of ``05_mechanism.json`` from the committed codes and per-feature table."""
    size = SIZES["ci" if ci else "full"]
    saes = setting.load_saes()
    table = pd.read_csv(folder / "features.csv")
    codes = {role: load_codes(folder / f"codes.{role}.npz") for role in ROLES}
    chats = codes["base"][0].shape[0]
    draws = np.random.default_rng(seed).integers(0, chats, size=(size["resamples"], chats))

    def test(prediction: torch.Tensor, before: torch.Tensor, after: torch.Tensor) -> SpilloverTest:
        return spillover_test(prediction, before, after, draws=draws, n_permutations=size["permutations"], seed=seed)

    tests: dict[str, list[SpilloverTest]] = {name: [] for name in
                                             ("inducing", "control", "inducing_minus_control", "decoder_reading")}
    random_rhos, random_specific, toxic, directions = [], [], [], []
    means = {role: load_residual_mean(folder / f"codes.{role}.npz") for role in ROLES}
    for i, sae in enumerate(saes):
        part = pd.DataFrame(table[table["sae"] == i]).sort_values(by="feature")
        prediction = torch.tensor(part["prediction"].to_numpy(), dtype=torch.float32)
        base, inducing, control = (codes[role][i] for role in ROLES)
        tests["inducing"].append(test(prediction, base, inducing))
        tests["control"].append(test(prediction, base, control))
        tests["inducing_minus_control"].append(test(prediction, control, inducing))
        tests["decoder_reading"].append(
            test(torch.tensor(part["prediction_decoder"].to_numpy(), dtype=torch.float32), base, inducing))
        active = part["active_inducing"].to_numpy(bool)
        shift = part["shift_inducing"].to_numpy()[active]
        encoder, decoder = sae.sae.W_enc.detach().cpu(), sae.sae.W_dec.detach().cpu()
        randoms = random_target_predictions(encoder, decoder, n_directions=size["directions"], k=K,
                                            exclude=torch.tensor(np.flatnonzero(part["inducing_set"])), seed=seed + i)
        random_rhos.append([_spearman(r.numpy()[active], shift) for r in randoms])
        either = part["active_inducing"].to_numpy(bool) | part["active_control"].to_numpy(bool)
        specific = (part["shift_inducing"] - part["shift_control"]).to_numpy()[either]
        random_specific.append([_spearman(r.numpy()[either], specific) for r in randoms])
        is_toxic = part["toxic_set"].to_numpy(bool)
        sets = {"toxic": torch.tensor(np.flatnonzero(is_toxic)),
                "inducing": torch.tensor(np.flatnonzero(part["inducing_set"]))}
        steps = {"misalignment_vs_base": ("inducing", "base"), "misalignment_vs_control": ("inducing", "control"),
                 "control_vs_base": ("control", "base")}
        directions.append({
            **{name: direction_cosines(decoder, means[to] - means[start], sets, n_random=size["directions"] * 10,
                                       seed=seed + i) for name, (to, start) in steps.items()},
            "target_vs_toxic": _cosine(target_direction(decoder, sets["inducing"]),
                                       target_direction(decoder, sets["toxic"]))})
        toxic.append({"prediction_percentile": _percentile_rank(part["prediction"].to_numpy(), is_toxic),
                      "shift_percentile": _percentile_rank(shift, is_toxic[active]),
                      "toxic_active": int(is_toxic[active].sum()), "toxic": int(is_toxic.sum())})
    random_mean = np.mean(random_rhos, axis=0)
    primary = _summary(tests["inducing"])
    threshold = float(np.percentile(random_mean, 95))
    return {
        "profile": setting.profile,
        "models": {"base": setting.model, "inducing": f"Chapter 3's mixed.inducing.s{SEED}",
                   "control": f"Chapter 3's mixed.control.s{SEED}"},
        "chats": chats, "saes": [sae.name for sae in saes], "inducing_set_size": K,
        "method": "Spearman correlation over the features active in either model, mean over "
                  f"{'the three neutral SAEs' if setting == SETTINGS['cpu-default'] else f'{len(saes)} SAE(s)'}; "
                  f"95% percentile interval from {size['resamples']} bootstrap draws over held-out chats (the same "
                  f"draws for every SAE); one-sided p from {size['permutations']} feature permutations of the "
                  "prediction, the largest over the SAEs",
        "primary": {**primary, "random_direction_95th": threshold, "exceeds_random": primary["rho"] > threshold},
        "control": _summary(tests["control"]),
        "inducing_minus_control": _summary(tests["inducing_minus_control"]),
        "decoder_reading": _summary(tests["decoder_reading"]),
        "random_directions": {"n": int(len(random_mean)), "mean": float(random_mean.mean()),
                              "p95": threshold, "max": float(random_mean.max()),
                              "share_above_primary": float((random_mean >= primary["rho"]).mean())},
        "toxic": toxic,
        "directions": directions,
        "exploratory": _exploratory(np.mean(random_specific, axis=0), _summary(tests["inducing_minus_control"])),
        "residual_shift_norm": {"inducing": float((means["inducing"] - means["base"]).norm()),
                                "control": float((means["control"] - means["base"]).norm()),
                                "base_residual_norm": float(means["base"].norm())},
    }


def _exploratory(random_specific: np.ndarray, specific: dict[str, Any]) -> dict[str, Any]:
    """Analyses added after the primary result was seen (so not part of the design): the random-direction baseline
    for the inducing-minus-control correlation."""
    return {"added": "after the primary result was seen; not part of the design",
            "inducing_minus_control_random_directions": {
                "n": int(len(random_specific)), "mean": float(random_specific.mean()),
                "p95": float(np.percentile(random_specific, 95)), "max": float(random_specific.max()),
                "share_at_or_above": float((random_specific >= specific["rho"]).mean())}}


def write_results(data: dict[str, Any], target: Path = RESULTS_FILE, *, section: str = SECTION) -> None:
    """Put ``data`` under ``section`` in the results file (other sections kept), atomically."""
    from geomis.atomic_io import atomic_path

    results = json.loads(target.read_text()) if target.is_file() else {}
    results[section] = data
    with atomic_path(target) as temporary:
        temporary.write_text(json.dumps(results, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Measure (resumable), then write the spillover section of the results file."""
    from geomis.experiments.runs import experiment_args

    args = experiment_args(__doc__, argv, results=RESULTS, results_file=RESULTS_FILE)
    measure(args.out, ci=args.ci)
    write_results(analyse(args.out, ci=args.ci), args.target)
    print(f"wrote {args.target}")

if __name__ == "__main__":
    main()
