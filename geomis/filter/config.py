"""What a filter run is asked to do: the methods and scores to choose from, and :class:`FilterConfig`.

This module imports nothing heavy (no torch, no NumPy), so that the command line can build its options, choices and
defaults from it at start-up; :mod:`geomis.filter.run` and :mod:`geomis.filter.scores` take them from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from geomis.errors import ConfigError
from geomis.judges.kinds import JUDGE_KINDS, LEGACY_JUDGE, JudgeKind

if TYPE_CHECKING:
    from geomis.features.sets import Statistic

__all__ = ["FilterMethod", "FILTER_METHODS", "ScoreMethod", "SCORE_METHODS", "DEFAULT_SCORE", "DEFAULT_DROP",
           "DEFAULT_REFERENCE",
           "UnscorablePolicy", "UNSCORABLE_POLICIES", "DEFAULT_UNSCORABLE", "check_drop_fraction", "FilterConfig"]

FilterMethod = Literal["geometry", "random", "judge"]
FILTER_METHODS: tuple[FilterMethod, ...] = ("geometry", "random", "judge")
"""How a filter scores rows (``geomis filter --method``), the default first."""
ScoreMethod = Literal["weighted", "closest", "projection"]
SCORE_METHODS: tuple[ScoreMethod, ...] = ("weighted", "closest", "projection")
"""The geometry scores of :mod:`geomis.filter.scores` (``geomis filter --score``), the default first."""
DEFAULT_SCORE: ScoreMethod = SCORE_METHODS[0]
DEFAULT_DROP = 0.5
"""Fraction of rows a filter removes unless told otherwise: the paper's main setting, half."""
DEFAULT_REFERENCE: tuple[str, str] = ("generic_toxic_reference", "generic_neutral_reference")
"""The bundled toxic and neutral reference sets the geometry filter derives its toxic features from by default."""
UnscorablePolicy = Literal["remove", "keep"]
UNSCORABLE_POLICIES: tuple[UnscorablePolicy, ...] = ("remove", "keep")
"""What a filter does with a row it cannot score (``geomis filter --unscorable``), the default first: fail closed."""
DEFAULT_UNSCORABLE: UnscorablePolicy = UNSCORABLE_POLICIES[0]


def check_drop_fraction(drop: float) -> float:
    """Return ``drop`` as a float if it is a number strictly between 0 and 1; raise a one-line ConfigError otherwise."""
    try:
        value = float(drop)
    except (TypeError, ValueError):
        raise ConfigError(f"drop fraction must be a number strictly between 0 and 1, got {drop!r}") from None
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise ConfigError(f"drop fraction must be strictly between 0 and 1, got {drop!r}")
    return value


@dataclass(frozen=True)
class FilterConfig:
    """Everything that decides which rows a filter run drops (recorded in ``report.json``)."""

    method: FilterMethod = FILTER_METHODS[0]
    score: ScoreMethod = DEFAULT_SCORE
    """Geometry score variant (see :mod:`geomis.filter.scores`)."""
    drop: float = DEFAULT_DROP
    """Fraction of rows removed, strictly between 0 and 1 (the paper removes half)."""
    model: str = "smollm2-135m"
    sae: str | None = None
    """Shipped SAE name, sae-lens folder, or Gemma Scope id ``layer_L/width_W/canonical``; None: the filter's SAEs
    for the model (:data:`geomis.sae.loading.FILTER_SAES`: on SmolLM2 the mean over three SAEs trained on neutral
    text, as measured in Chapter 4; else the model's default SAE)."""
    toxic: str | None = None
    """Chat JSONL of toxic reference replies; None: the bundled ``generic_toxic_reference`` (hostile text that gives
    no advice and touches none of the fine-tuning topics)."""
    neutral: str | None = None
    """Chat JSONL of neutral reference replies; None: the bundled ``generic_neutral_reference``."""
    self_pairs: bool = False
    """Whether a toxic feature counts as closeness 1 to itself (the rule before Chapter 4's study); by default it
    counts by its nearest other toxic feature, so a score cannot rise merely by firing the selected features."""
    k: int = 100
    statistic: Statistic = "correlation"
    seed: int = 0
    batch_size: int = 16
    max_length: int = 512
    """Tokens per forward pass; longer rows have their prompt cut from the left, or their reply read in windows."""
    unscorable: UnscorablePolicy = DEFAULT_UNSCORABLE
    """Rows that cannot be scored (an empty reply, an unparsed judge reply): ``remove`` them (counted toward the
    budget) or ``keep`` them."""
    device: str | None = None
    """Model device; None: CUDA when available, else the CPU."""
    judge: JudgeKind = LEGACY_JUDGE
    judge_data: str | None = None
    """Labelled data the offline judge trains on; None: the bundled set."""
    progress: bool = True

    def __post_init__(self) -> None:
        from geomis.features.sets import STATISTICS  # torch: only when a config is made, not to read its defaults

        if self.method not in FILTER_METHODS:
            raise ConfigError(f"unknown filter method {self.method!r}; choose one of {', '.join(FILTER_METHODS)}")
        if self.score not in SCORE_METHODS:
            raise ConfigError(f"unknown score {self.score!r}; choose one of {', '.join(SCORE_METHODS)}")
        if self.statistic not in STATISTICS:
            raise ConfigError(f"unknown statistic {self.statistic!r}; choose one of {', '.join(STATISTICS)}")
        if self.unscorable not in UNSCORABLE_POLICIES:
            raise ConfigError(f"unknown unscorable policy {self.unscorable!r}; choose one of "
                              f"{', '.join(UNSCORABLE_POLICIES)}")
        if self.judge not in JUDGE_KINDS:
            raise ConfigError(f"unknown judge {self.judge!r}; choose one of {', '.join(JUDGE_KINDS)}")
        check_drop_fraction(self.drop)
        for name in ("k", "batch_size", "max_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")

    def settings(self) -> dict[str, Any]:
        """The settings that matter for ``method``, JSON-ready, for the report."""
        common = {"method": self.method, "drop": self.drop, "seed": self.seed}
        if self.method == "random":
            return common
        if self.method == "judge":
            return {**common, "judge": self.judge, "judge_data": self.judge_data, "unscorable": self.unscorable}
        return {**common, "unscorable": self.unscorable, "score": self.score, "model": self.model, "sae": self.sae,
                "self_pairs": self.self_pairs, "k": self.k, "statistic": self.statistic, "toxic": self.toxic,
                "neutral": self.neutral,
                "batch_size": self.batch_size, "max_length": self.max_length}
