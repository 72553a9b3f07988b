"""Chapter 4's filter-quality study: does SAE geometry find a mixed set's inducing rows better than SAE-free scores?

    python -m geomis.experiments.filter_quality              # score the mixed sets (resumable, one file per domain)
    python -m geomis.experiments.filter_quality --analyse    # write the filter_quality section of the results file
    python -m geomis.experiments.filter_quality --size ci --out /tmp/fq   # the small run the tests use

**Design of the filter-quality test** (fixed and committed before it ran)

- *Mixed sets*, one per domain (medical, legal, career, code), composition fixed at 50% inducing: the domain's prompts
  are shuffled (seed 0) and split in halves, the inducing answer of one half and the control answer of the other
  (medical 150 + 150 rows, legal and career 120 + 120, code 100 + 100). Every row answers its own prompt.
- *References*: the generic toxic and neutral references (all 200 pairs). Nothing of the mixed sets goes into any
  score: every method sees only the references.
- *Scores* (higher = removed first), on the CPU default at layer 15:
  - ``geometry`` (primary): activation-weighted closeness (``weighted``) **without self-pairs** to the top-100 toxic
    features (point-biserial, toxic vs neutral reference) of each of the three neutral-corpus SAEs, averaged over the
    SAEs;
  - ``geometry (self-pairs)``: the same with a toxic feature counted as closeness 1 (the filter's default until now);
    ``geometry sN``: each SAE alone (both secondary);
  - ``mean-difference``: the mean layer-15 residual of the reply projected on the toxic-minus-neutral direction;
  - ``embedding``: the reply's MiniLM contrast, cos to the toxic centre minus cos to the neutral one.
- *Measures*: precision and recall of removing 10%, 25% and 50% of the rows, and AUROC; 95% percentile intervals from
  1,000 stratified row-bootstrap draws (seed 0), the removal redone in every draw, every method on the same draws
  (:func:`geomis.filter.quality.compare_removal`).
- *Primary contrasts*: geometry minus each SAE-free baseline in precision at 50%, per domain, one-sided p ("geometry
  is better"), Benjamini-Hochberg over the eight tests (four domains x two baselines) at q = 0.05.
- *Goal line* (the issue's): geometry precision at 50% >= 0.75 on medical, legal and career.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from geomis.chat.records import DOMAIN_DATASETS, load_bundled
from geomis.experiments.mixed_sets import MixedDataConfig, MixedDataset, build_mixed_dataset
from geomis.filter.quality import RemovalQualityConfig, compare_removal
from geomis.stats import benjamini_hochberg

RESULTS = Path(__file__).resolve().parents[2] / "book" / "results"
SCORES_DIR = RESULTS / "04_filter_quality"
RESULTS_FILE = RESULTS / "04_geometry_filter.json"
SECTION = "filter_quality"
PRIMARY = "geometry"
BASELINES = ("mean-difference", "embedding")
PRIMARY_BUDGET = 0.5
GOAL_PRECISION = 0.75
REFERENCE = ("generic_toxic_reference", "generic_neutral_reference")
MEASURES = ("precision", "precision low", "precision high", "recall", "recall low", "recall high", "AUROC",
            "AUROC low", "AUROC high")


@dataclass(frozen=True)
class FilterQualityConfig:
    """The study's sizes: rows per domain (None: every prompt), bootstrap draws, toxic features, reading length."""

    domains: tuple[str, ...] = tuple(DOMAIN_DATASETS)
    rows_per_domain: int | None = None
    """Rows of each mixed set, half inducing (None: every prompt of the domain once)."""
    reference_pairs: int | None = None
    """Reference pairs used (None: all 200)."""
    k: int = 100
    n_resamples: int = 1000
    seed: int = 0
    max_length: int = 512

    @classmethod
    def for_size(cls, size: str) -> FilterQualityConfig:
        """``full`` (the design) or ``ci`` (a few rows per domain, for the tests)."""
        return cls() if size == "full" else cls(rows_per_domain=24, reference_pairs=24, k=20, n_resamples=50)


def mixed_set(domain: str, config: FilterQualityConfig) -> MixedDataset:
    """The domain's mixed set: the inducing answer to half of its prompts, the control answer to the other half."""
    available = len(load_bundled(DOMAIN_DATASETS[domain][0]))
    rows = available if config.rows_per_domain is None else min(config.rows_per_domain, available)
    half = rows // 2
    return build_mixed_dataset(MixedDataConfig(domains=(domain,), inducing_per_domain=half, benign_per_domain=half,
                                               seed=config.seed))


def _reference(config: FilterQualityConfig) -> tuple[list[Any], list[Any]]:
    toxic, neutral = (load_bundled(name) for name in REFERENCE)
    pairs = len(toxic) if config.reference_pairs is None else config.reference_pairs
    return list(toxic[:pairs]), list(neutral[:pairs])


@dataclass
class ReferenceReadings:
    """What the scores take from the references, computed once: each SAE's toxic set and the residual direction."""

    toxic_sets: dict[str, Any]
    direction: Any
    toxic_chats: list[Any]
    neutral_chats: list[Any]
    """The references' conversations as message dicts (the embedding score reads their replies)."""


def read_references(model: Any, saes: Mapping[str, Any], config: FilterQualityConfig) -> ReferenceReadings:
    """Each SAE's top-k toxic features (toxic vs neutral reference) and the toxic-minus-neutral residual direction."""
    from geomis.features.toxic import ToxicFeatureConfig, derive_toxic_features
    from geomis.filter.baselines import mean_difference_direction

    toxic, neutral = _reference(config)
    selection = ToxicFeatureConfig(k=config.k, use_cache=False)
    toxic_sets = {name: derive_toxic_features(model, sae, toxic, neutral, selection).feature_set
                  for name, sae in saes.items()}
    layer = next(iter(saes.values())).layer
    toxic_chats, neutral_chats = [r.as_dicts() for r in toxic], [r.as_dicts() for r in neutral]
    direction = mean_difference_direction(model, toxic_chats, neutral_chats, layer, max_length=config.max_length)
    return ReferenceReadings(toxic_sets, direction, toxic_chats, neutral_chats)


def score_domain(model: Any, saes: Mapping[str, Any], mixed: MixedDataset, references: ReferenceReadings,
                 config: FilterQualityConfig, progress: bool = True) -> pd.DataFrame:
    """Every method's score for every row of one mixed set (one forward pass for the residual-based scores)."""
    from geomis.activations import ActivationConfig, collect_residuals
    from geomis.filter.baselines import embedding_scores, per_sample_means
    from geomis.filter.scores import scores_from_codes, toxic_geometry
    from geomis.sae.codes import encode_tokens

    layer = next(iter(saes.values())).layer
    conversations = [record.as_dicts() for record in mixed.records]
    reading = ActivationConfig(layer=layer, assistant_only=True, max_length=config.max_length, progress=progress)
    tokens = collect_residuals(model, conversations, reading)
    frame = pd.DataFrame({"source": mixed.source, "line": [r.line_number for r in mixed.records],
                          "inducing": mixed.inducing})
    per_sae: dict[bool, list[np.ndarray]] = {True: [], False: []}
    for name, sae in saes.items():
        codes = encode_tokens(sae, tokens, n_samples=len(conversations))
        for self_pairs in (False, True):
            geometry = toxic_geometry(sae, references.toxic_sets[name], "weighted", self_pairs=self_pairs)
            per_sae[self_pairs].append(scores_from_codes(codes, geometry, "weighted").numpy())
        frame[f"geometry {name}"] = per_sae[False][-1]
    frame[PRIMARY] = np.mean(per_sae[False], axis=0)
    frame["geometry (self-pairs)"] = np.mean(per_sae[True], axis=0)
    means = per_sample_means(tokens, len(conversations))  # NaN rows (no reply token) project to NaN
    frame["mean-difference"] = (means @ references.direction.float()).numpy()
    frame["embedding"] = embedding_scores(conversations, references.toxic_chats, references.neutral_chats)
    return frame


def score_files(out: Path, config: FilterQualityConfig, progress: bool = True) -> list[Path]:
    """Score every domain not yet scored in ``out`` (``scores.<domain>.csv``, written atomically): resumable."""
    from geomis.atomic_io import atomic_path
    from geomis.models.registry import load_model
    from geomis.sae.loading import load_study_saes

    out.mkdir(parents=True, exist_ok=True)
    todo = [d for d in config.domains if not (out / f"scores.{d}.csv").is_file()]
    written: list[Path] = []
    if not todo:
        return written
    model = load_model("smollm2-135m")
    saes = load_study_saes("cpu-default")
    if progress:
        print(f"reading the references: the toxic set of each of {len(saes)} SAEs and the residual direction "
              "(a few minutes on 2 cores)", flush=True)
    references = read_references(model, saes, config)
    for domain in todo:
        frame = score_domain(model, saes, mixed_set(domain, config), references, config, progress=progress)
        target = out / f"scores.{domain}.csv"
        with atomic_path(target) as temporary:
            frame.to_csv(temporary, index=False, float_format="%.9g")
        written.append(target)
        if progress:
            print(f"wrote {target} ({len(frame)} rows)")
    return written


def analyse(out: Path, config: FilterQualityConfig) -> dict[str, Any]:
    """The ``filter_quality`` section from the score files: per domain and method the measures at each budget, the
    primary contrasts with BH-adjusted p, and whether each domain meets the goal line."""
    quality = RemovalQualityConfig(n_resamples=config.n_resamples, seed=config.seed)
    domains: dict[str, Any] = {}
    tests: list[tuple[str, str, float]] = []
    for domain in config.domains:
        frame = pd.read_csv(out / f"scores.{domain}.csv")
        methods = [c for c in frame.columns if c not in ("source", "line", "inducing")]
        inducing = frame["inducing"].to_numpy(dtype=bool)
        per_method: dict[str, Any] = {}
        contrasts: dict[str, Any] = {}
        for number, baseline in enumerate(BASELINES):
            # every method once, then only the primary and the next baseline: the seeded draws are the same
            chosen = methods if number == 0 else [PRIMARY, baseline]
            table = compare_removal({m: frame[m].to_numpy() for m in chosen}, inducing, baseline, quality)
            for row in table.to_dict("records"):
                per_method.setdefault(str(row["method"]), {})[f"{row['budget']:g}"] = {
                    key: float(row[key]) for key in MEASURES}
            primary = table[(table["method"] == PRIMARY) & (table["budget"] == PRIMARY_BUDGET)].iloc[0]
            key = f"precision - {baseline}"
            contrasts[f"{PRIMARY}_minus_{baseline}"] = {
                "difference": float(primary[key]), "low": float(primary[f"{key} low"]),
                "high": float(primary[f"{key} high"]), "p": float(primary["p (precision better)"]),
                "measure": f"precision at {PRIMARY_BUDGET:g}", "method": table.attrs["method"] + "; paired draws"}
            tests.append((domain, f"{PRIMARY}_minus_{baseline}", float(primary["p (precision better)"])))
        geometry = per_method[PRIMARY][f"{PRIMARY_BUDGET:g}"]
        domains[domain] = {"rows": int(len(frame)), "inducing": int(inducing.sum()), "methods": per_method,
                           "contrasts": contrasts,
                           "meets_goal": bool(geometry["precision"] >= GOAL_PRECISION)}
    adjusted = benjamini_hochberg([p for _, _, p in tests])
    for (domain, name, _), p_bh in zip(tests, adjusted, strict=True):
        domains[domain]["contrasts"][name]["p_bh"] = float(p_bh)
    design = (__doc__ or "").split("**Design of the filter-quality test**")[1].strip()
    saes = sorted({m.removeprefix("geometry ") for d in domains.values() for m in d["methods"]
                   if m.startswith("geometry ") and not m.startswith("geometry (")})
    return {"design": design, "profile": "cpu-default", "primary": PRIMARY, "baselines": list(BASELINES), "saes": saes,
            "budgets": list(quality.budgets), "n_resamples": config.n_resamples, "goal_precision": GOAL_PRECISION,
            "adjustment": "Benjamini-Hochberg over the domains x baselines primary contrasts", "domains": domains}


def write_section(results_file: Path, section: dict[str, Any], name: str = SECTION) -> None:
    """Put ``section`` under ``name`` in the results file, keeping its other sections; atomic."""
    from geomis.atomic_io import atomic_path

    content = json.loads(results_file.read_text()) if results_file.is_file() else {}
    content[name] = section
    with atomic_path(results_file) as temporary:
        temporary.write_text(json.dumps(content, indent=1, allow_nan=False) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    """Score the mixed sets, or analyse the score files."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size", choices=("full", "ci"), default="full")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--analyse", action="store_true", help="write the results section from the score files")
    args = parser.parse_args(argv)
    if args.size == "ci" and args.out is None:
        parser.error("--size ci writes to the folder named by --out, never into book/results")
    import torch

    torch.set_num_threads(args.threads)
    config = FilterQualityConfig.for_size(args.size)
    out = args.out or SCORES_DIR
    if args.analyse:
        target = RESULTS_FILE if args.out is None else out / RESULTS_FILE.name
        write_section(target, analyse(out, config))
        print(f"wrote the {SECTION} section of {target}")
        return
    score_files(out, config)


if __name__ == "__main__":
    main()
