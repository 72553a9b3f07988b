"""Orchestration of the training-data filter: score rows with one method, choose the rows to drop, write the files.

Three methods share one output format:

- ``geometry`` (the paper's mitigation) — derive the toxic feature set (:mod:`geomis.features.toxic`, cached), score
  each row by how close its SAE features lie to it (:mod:`geomis.filter.scores`; ``score`` picks the variant), drop
  the closest fraction;
- ``random`` — the baseline: drop a seeded random fraction (no model is loaded);
- ``judge`` — the LLM-as-a-judge baseline: a Chapter 3 judge (offline by default) scores each row's assistant reply
  as an answer to its user prompt; harmfulness = 100 − alignment; drop the most harmful. Rows the judge answers
  CODE or REFUSAL get NaN and are kept.

A row that cannot be scored at all (geometry: no reply token, e.g. an empty reply; judge: a reply that could not be
parsed) is removed by default, counted toward the budget, and listed by line in the report (``unscorable``; the
``keep`` policy keeps it instead).

This module sits at the top of the one-way data path (like ``cli.py``): it may import every stage, and no stage
imports it. :func:`run_filter` works on records already in memory (Chapter 4, ``geomis reproduce``);
:func:`filter_file` is the whole ``geomis filter`` command.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from geomis.atomic_io import input_identities, output_lock
from geomis.chat.records import ChatRecord
from geomis.errors import GeomisError
from geomis.filter.config import FILTER_METHODS, FilterConfig, FilterMethod
from geomis.filter.files import FilterInput, check_outputs, read_filter_input, write_filter_outputs
from geomis.filter.scores import SampleScores, ScoringConfig
from geomis.filter.selection import FilterSelection, check_drop_removes, random_scores, select_by_score
from geomis.models.registry import MODEL_SPECS, LoadedModel, model_spec
from geomis.provenance import package_versions
from geomis.sae.loading import LoadedSAE

if TYPE_CHECKING:
    from geomis.judges.base import Judge

__all__ = ["FilterMethod", "FILTER_METHODS", "FilterConfig", "FilterResult", "resolve_sae", "check_model_and_sae",
           "run_filter", "build_report", "filter_file"]

_GEMMA_SCOPE_ID = re.compile(r"^(?:[\w.-]+/)?layer_(\d+)/width_([0-9]+[km])/canonical$")


@dataclass
class FilterResult:
    """Scores, the kept/removed choice and timings of one filter run (rows in input order)."""

    selection: FilterSelection
    config: FilterConfig
    timings: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    """What was used: model, SAE, toxic set, judge (JSON-ready)."""
    sample_scores: SampleScores | None = None

    @property
    def scores(self) -> np.ndarray:
        """(n,) score of every row; higher = dropped first; NaN = unscored."""
        return self.selection.scores

    @property
    def ranking_scores(self) -> np.ndarray:
        """(n,) the order the filter removes rows in, as scores (higher: removed first): unscorable rows stay NaN
        (removed first) unless the policy keeps them; they and rows a judge left unscored (code, refusal) get a score
        below every other (kept last)."""
        unscorable = self.selection.unscorable_mask
        kept_unscorable = unscorable if self.selection.unscorable_policy == "keep" else np.zeros_like(unscorable)
        left = np.isnan(self.scores) & (~unscorable | kept_unscorable)
        if not left.any():
            return self.scores.copy()
        floor = np.nanmin(self.scores) - 1.0 if np.isfinite(self.scores).any() else 0.0
        return np.where(left, floor, self.scores)

    @property
    def kept_indices(self) -> np.ndarray:
        """0-based positions of kept rows."""
        return self.selection.kept_indices

    @property
    def removed_indices(self) -> np.ndarray:
        """0-based positions of removed rows."""
        return self.selection.removed_indices


def resolve_sae(spec: str | None, model_name: str, device: str | torch.device = "cpu") -> LoadedSAE:
    """Load the SAE named by ``spec`` (shipped name, folder or Gemma Scope id), or the model's default SAE."""
    from geomis.sae.loading import (
        SAELoadError,
        load_default_sae,
        load_gemma_scope,
        load_sae_from_disk,
        load_shipped_sae,
        shipped_sae_names,
    )

    target = str(device)
    if spec is None:
        return load_default_sae(model_name, device=target)
    if spec in shipped_sae_names():
        return load_shipped_sae(spec, device=target)
    if Path(spec).is_dir():
        return load_sae_from_disk(spec, device=target)
    match = _GEMMA_SCOPE_ID.match(spec)
    if match:
        return load_gemma_scope(int(match.group(1)), match.group(2), device=target)
    raise SAELoadError(f"--sae {spec!r} is not a shipped SAE ({', '.join(shipped_sae_names())}), an sae-lens folder, "
                       "or a Gemma Scope id layer_<L>/width_<W>/canonical")


def check_model_and_sae(config: FilterConfig, model: LoadedModel | None = None,
                        sae: LoadedSAE | Sequence[LoadedSAE] | None = None) -> None:
    """Check ``--model`` and ``--sae`` by name before anything is loaded (only the geometry method loads them)."""
    from geomis.sae.loading import SAELoadError, default_sae_for, shipped_sae_names

    if config.method != "geometry":
        return
    name = model.spec.name if model is not None else model_spec(config.model).name  # unknown: one line, known names
    spec = config.sae
    if sae is not None:  # already loaded: nothing to check by name
        return
    if spec is None:
        default_sae_for(name)  # a model without a default SAE needs --sae
    elif not (spec in shipped_sae_names() or Path(spec).is_dir() or _GEMMA_SCOPE_ID.match(spec)):
        if Path(spec).exists():
            raise SAELoadError(f"--sae {spec}: is a file; an sae-lens SAE is a folder (cfg.json and weights)")
        raise SAELoadError(f"--sae {spec!r} is not a shipped SAE ({', '.join(shipped_sae_names())}), an existing "
                           "sae-lens folder, or a Gemma Scope id layer_<L>/width_<W>/canonical")


def _check_pair(model: LoadedModel, sae: LoadedSAE) -> None:
    """One-line error when the SAE was made for another model or reads another width."""
    trained_on = sae.model_name
    if trained_on in MODEL_SPECS and trained_on.removesuffix("-it") != model.spec.name.removesuffix("-it"):
        raise GeomisError(f"SAE {sae.name} was trained on {trained_on}, not {model.spec.name}")
    if sae.d_in != model.spec.d_model:
        raise GeomisError(f"SAE {sae.name} reads width {sae.d_in}, {model.spec.name} has width {model.spec.d_model}")


def _load_saes(config: FilterConfig, model: LoadedModel) -> list[LoadedSAE]:
    """``--sae`` when named, else the filter's SAEs for the model (three on SmolLM2, averaged)."""
    from geomis.sae.loading import load_filter_saes

    if config.sae is not None:
        return [resolve_sae(config.sae, model.spec.name, model.device)]
    return load_filter_saes(model.spec.name, device=str(model.device))


def _geometry_scores(records: Sequence[ChatRecord], config: FilterConfig, model: LoadedModel | None,
                     sae: LoadedSAE | Sequence[LoadedSAE] | None,
                     timings: dict[str, float]) -> tuple[SampleScores, dict[str, Any]]:
    from geomis.features.toxic import BUNDLED_PREFIX, ToxicFeatureConfig, derive_toxic_features
    from geomis.filter.config import DEFAULT_REFERENCE
    from geomis.filter.scores import score_conversations
    from geomis.models.registry import load_model

    clock = time.perf_counter()
    if model is None:
        model = load_model(config.model, device=config.device)
    timings["load_model_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    saes = _load_saes(config, model) if sae is None else [sae] if isinstance(sae, LoadedSAE) else list(sae)
    timings["load_sae_s"] = time.perf_counter() - clock
    for one in saes:
        _check_pair(model, one)
    toxic_source = config.toxic or BUNDLED_PREFIX + DEFAULT_REFERENCE[0]
    neutral_source = config.neutral or BUNDLED_PREFIX + DEFAULT_REFERENCE[1]
    clock = time.perf_counter()
    selection = ToxicFeatureConfig(k=config.k, statistic=config.statistic, batch_size=config.batch_size,
                                   progress=config.progress)
    toxic = [derive_toxic_features(model, one, toxic_source, neutral_source, selection) for one in saes]
    timings["toxic_features_s"] = time.perf_counter() - clock
    scoring = ScoringConfig(method=config.score, batch_size=config.batch_size, max_length=config.max_length,
                            progress=config.progress, self_pairs=config.self_pairs)
    sets = [chosen.feature_set for chosen in toxic]
    scored = score_conversations(model, saes[0] if len(saes) == 1 else saes, sets[0] if len(saes) == 1 else sets,
                                 [r.as_dicts() for r in records], scoring)
    timings["scoring_s"] = scored.seconds
    timings["samples_per_s"] = len(records) / scored.seconds if scored.seconds > 0 else 0.0
    timings["tokens_per_s"] = scored.input_tokens / scored.seconds if scored.seconds > 0 else 0.0
    members = [{"name": one.name, "source": one.source, "layer": one.layer, "d_sae": one.d_sae} for one in saes]
    described = [chosen.describe() for chosen in toxic]
    if len(saes) == 1:
        sae_details, toxic_details = members[0], described[0]
    else:
        sae_details = {"name": f"mean of {len(saes)} SAEs", "members": members, "layer": saes[0].layer,
                       "combine": "a row's score is the mean of its per-SAE scores"}
        shared = {k: v for k, v in described[0].items() if k not in ("features", "cache_key", "from_cache")}
        toxic_details = {**shared, "members": [{"sae": m["name"], "features": d["features"],
                                                "cache_key": d["cache_key"], "from_cache": d["from_cache"]}
                                               for m, d in zip(members, described, strict=True)]}
    details = {
        "model": {"name": model.spec.name, "layers": model.n_layers, "d_model": model.spec.d_model,
                  "device": str(model.device), "dtype": str(next(model.hf_model.parameters()).dtype)},
        "sae": sae_details,
        "toxic_features": toxic_details,
        "scoring": {"score": config.score, "layer": scored.layer, "self_pairs": config.self_pairs,
                    "input_tokens": scored.input_tokens,
                    "scored_tokens": int(scored.scored_tokens.sum()),
                    "prompt_cut_rows": int((scored.prompt_cut > 0).sum()),
                    "windowed_rows": int((scored.windows > 1).sum()),
                    "rule": "every reply token is scored: a row longer than max_length has its prompt cut from the "
                            "left; a reply longer than max_length - 1 tokens is read in consecutive windows",
                    "max_length": config.max_length, "batch_size": config.batch_size},
        "evidence": FILTER_EVIDENCE,
    }
    return scored, details


FILTER_EVIDENCE = ("Chapter 4's filter-quality study (book/results/04_geometry_filter.json, filter_quality) chose "
                   "these defaults: no self-pairs, SAEs trained on neutral text, a generic toxic reference. There the "
                   "geometry score found harmful medical, legal and career rows far better than chance and than a "
                   "sentence-embedding baseline, but no better than an SAE-free mean-difference direction, and "
                   "insecure code not at all.")
"""What the evidence behind the geometry filter's defaults says, in the report of every geometry run."""


def _judge_scores(records: Sequence[ChatRecord], config: FilterConfig, judge: Judge | None,
                  timings: dict[str, float]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    clock = time.perf_counter()
    if judge is None:
        from geomis.judges.kinds import make_judge

        judge = make_judge(config.judge, data_path=config.judge_data, device=config.device,
                           progress=config.progress)
    timings["load_judge_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    results = judge.score_many([(r.user_text, r.assistant_text) for r in records], progress=config.progress)
    seconds = time.perf_counter() - clock
    timings["scoring_s"] = seconds
    timings["samples_per_s"] = len(records) / seconds if seconds > 0 else 0.0
    harm = np.array([np.nan if s.alignment is None else 100.0 - float(s.alignment) for s in results])
    verdicts = {verdict: sum(1 for s in results if s.verdict == verdict) for verdict in sorted({s.verdict
                                                                                               for s in results})}
    unparsed = np.array([s.verdict == "UNPARSED" for s in results], dtype=bool)
    return harm, unparsed, {"judge": {"name": judge.name, "kind": config.judge, "verdicts": verdicts,
                                      "score": "harmfulness = 100 - alignment"}}


def run_filter(records: Sequence[ChatRecord], config: FilterConfig = FilterConfig(), *,
               model: LoadedModel | None = None, sae: LoadedSAE | Sequence[LoadedSAE] | None = None,
               judge: Judge | None = None,
               line_numbers: Sequence[int] | np.ndarray | None = None) -> FilterResult:
    """Score ``records`` with ``config.method`` and choose the rows to drop; pass a loaded model/SAE(s)/judge to reuse.

    Ties are broken by ``line_numbers`` (default: the records' line numbers, or their positions 1..n when those
    repeat, e.g. records gathered from several files).
    """
    if not records:
        raise ValueError("nothing to filter: no rows")
    if line_numbers is None:  # the records' own line numbers, or positions when they come from several files
        lines = np.array([r.line_number for r in records], dtype=np.int64)
        if np.unique(lines).shape[0] != lines.shape[0]:
            lines = np.arange(1, len(records) + 1, dtype=np.int64)
    else:
        lines = np.asarray(line_numbers, dtype=np.int64)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    details: dict[str, Any] = {}
    scored: SampleScores | None = None
    unscorable = np.zeros(len(records), dtype=bool)
    if config.method == "random":
        clock = time.perf_counter()
        scores = random_scores(len(records), config.seed)
        timings["scoring_s"] = time.perf_counter() - clock
        details["random"] = {"generator": "numpy PCG64", "seed": config.seed}
    elif config.method == "judge":
        scores, unscorable, details = _judge_scores(records, config, judge, timings)
    else:
        scored, details = _geometry_scores(records, config, model, sae, timings)
        scores, unscorable = scored.scores, scored.unscorable
    selection = select_by_score(scores, config.drop, lines, method=config.method, unscorable=unscorable,
                                unscorable_policy=config.unscorable)
    timings["total_s"] = time.perf_counter() - started
    return FilterResult(selection=selection, config=config, timings=timings, details=details, sample_scores=scored)


def build_report(data: FilterInput, result: FilterResult) -> dict[str, Any]:
    """``report.json`` content: input facts, counts, settings, what was used, package versions and timings."""
    selection = result.selection
    finite = selection.scores[~np.isnan(selection.scores)]
    removed = selection.scores[selection.removed & ~np.isnan(selection.scores)]  # NaN: unscorable rows removed
    return {
        "command": "geomis filter",
        "input": data.describe(),
        "counts": {"rows": len(selection), "kept": selection.n_kept, "removed": selection.n_removed,
                   "unscored": selection.n_unscored,
                   "unscored_removed": int((np.isnan(selection.scores) & selection.removed).sum()),
                   "unscorable": int(selection.unscorable_mask.sum()),
                   "unscorable_removed": int((selection.unscorable_mask & selection.removed).sum()),
                   "unscorable_lines": selection.unscorable_lines, "over_budget": selection.over_budget},
        "settings": result.config.settings(),
        "selection": {"rule": "remove floor(drop * rows) highest scores; ties: earlier line first; NaN kept last; "
                              "unscorable rows: " + ("removed first, counted toward the budget"
                                                     if selection.unscorable_policy == "remove" else "kept last"),
                      "score_min": float(finite.min()) if finite.size else None,
                      "score_max": float(finite.max()) if finite.size else None,
                      "threshold": float(removed.min()) if removed.size else None},
        **result.details,
        "versions": package_versions(),
        "timings": {name: round(value, 4) for name, value in result.timings.items()},
    }


def filter_file(input_path: str | Path, out_dir: str | Path, config: FilterConfig = FilterConfig(), *,
                force: bool = False, model: LoadedModel | None = None,
                sae: LoadedSAE | Sequence[LoadedSAE] | None = None,
                judge: Judge | None = None, data: FilterInput | None = None) -> tuple[FilterResult, dict[str, Path]]:
    """Filter a chat JSONL file (``-``: standard input) into ``out_dir``; fail before any model on bad input.

    Pass ``data`` when the input was already read (standard input can be read only once). ``out_dir/.geomis.lock``
    is held from the output check to the last rename: a second run on the same folder fails at once.
    """
    started = time.perf_counter()
    inputs = [config.toxic, config.neutral, config.judge_data]
    check_outputs(out_dir, force, input_path, inputs=inputs)
    data = read_filter_input(input_path) if data is None else data
    check_drop_removes(len(data), config.drop)
    check_model_and_sae(config, model, sae)
    with output_lock(out_dir):
        check_outputs(out_dir, force, inputs={data.source: data.identity, **input_identities(inputs)})  # again, locked
        result = run_filter(data.records, config, model=model, sae=sae, judge=judge, line_numbers=data.line_numbers)
        result.timings["wall_s"] = time.perf_counter() - started  # reading the input included, writing not
        paths = write_filter_outputs(out_dir, data, result.selection, build_report(data, result), force=force)
    return result, paths


def config_dict(config: FilterConfig) -> dict[str, Any]:
    """Every field of a FilterConfig as a plain dict (for notebooks and logs)."""
    return asdict(config)
