"""The toxic feature set a data filter measures against: SAE features that fire more on toxic than on neutral chats.

Recipe (the paper's, at the feature-set stage): read the residual stream at the SAE's layer on the assistant tokens of
a toxic and a neutral reference set (bundled ``toxic_reference`` / ``neutral_reference`` by default, or any chat
JSONL files), encode with the SAE, summarise each chat by its mean code, and keep the top-``k`` features by
point-biserial correlation with the label "toxic" (:func:`geomis.features.sets.select_contrast_features`; k = 100 as in
the paper).

The result is cached as a small JSON file (feature indices and statistic values; no pickle) under
``geomis.settings.cache_dir()/toxic-features/``, named by a SHA-256 key over everything that determines it: the model
name, the SAE's name and a hash of its weights, the layer, k, the statistic, the per-chat summary, the token
selection, and the rows of both reference sets (their exact bytes). Any change to one of those gives a new key, so a
stale set is never reused; a missing or unreadable cache file is simply recomputed and rewritten atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from sae_lens import SAE

from geomis.activations import ActivationConfig, collect_residuals
from geomis.atomic_io import atomic_path
from geomis.chat.records import REFERENCE_DATASETS, ChatDataError, ChatRecord, load_bundled, read_chat_jsonl
from geomis.errors import GeomisError
from geomis.features.sets import STATISTICS, FeatureSet, Statistic, select_contrast_features
from geomis.models.registry import LoadedModel
from geomis.sae.codes import encode_tokens
from geomis.sae.loading import LoadedSAE
from geomis.settings import cache_dir

__all__ = [
    "TOXIC_FORMAT",
    "BUNDLED_PREFIX",
    "DEFAULT_TOXIC",
    "DEFAULT_NEUTRAL",
    "ToxicFeatureConfig",
    "ReferenceData",
    "ToxicFeatures",
    "reference_data",
    "sae_weights_id",
    "toxic_cache_key",
    "derive_toxic_features",
]

TOXIC_FORMAT = "geomis-toxic-features-v1"
"""Bump when the recipe changes, so cached sets are recomputed."""
BUNDLED_PREFIX = "bundled:"
"""How a bundled reference set is named in reports and may be passed: ``bundled:generic_toxic_reference``."""
DEFAULT_TOXIC = REFERENCE_DATASETS[0]
"""Bundled chat set of toxic assistant replies (see ``geomis/data/reference.md``)."""
DEFAULT_NEUTRAL = REFERENCE_DATASETS[1]
"""Bundled chat set of neutral replies to the same kind of questions."""

Summary = Literal["mean", "max"]


@dataclass(frozen=True)
class ToxicFeatureConfig:
    """How the toxic feature set is selected (every field is part of the cache key)."""

    k: int = 100
    """Number of features kept (the paper's top-100)."""
    statistic: Statistic = "correlation"
    """``correlation`` (point-biserial r, the paper's) or ``mean_diff``."""
    summary: Summary = "mean"
    """Per-chat summary of the token codes the statistic is computed on: ``mean`` or ``max`` over assistant tokens."""
    max_length: int = 256
    """Reference chats are truncated to this many tokens."""
    batch_size: int = 16
    progress: bool = False
    use_cache: bool = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {self.statistic!r}; choose one of {', '.join(STATISTICS)}")
        if self.summary not in ("mean", "max"):
            raise ValueError(f"unknown summary {self.summary!r}; choose mean or max")
        if self.max_length < 2 or self.batch_size < 1:
            raise ValueError("max_length must be at least 2 and batch_size at least 1")


@dataclass(frozen=True)
class ReferenceData:
    """A reference chat set with a name for reports and a hash of its rows' exact bytes."""

    name: str
    records: tuple[ChatRecord, ...]
    sha256: str

    def describe(self) -> dict[str, Any]:
        """Name, row count and hash, for reports."""
        return {"name": self.name, "rows": len(self.records), "sha256": self.sha256}


def _rows_digest(records: Sequence[ChatRecord]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(len(record.raw).to_bytes(8, "little"))
        digest.update(record.raw)
    return digest.hexdigest()


def reference_data(source: str | os.PathLike[str] | Sequence[ChatRecord] | None, default: str) -> ReferenceData:
    """Load a reference set: ``None`` → the bundled ``default``, ``"bundled:NAME"`` → the bundled set NAME, a path →
    that chat JSONL file, or given records."""
    if isinstance(source, str) and source.startswith(BUNDLED_PREFIX):  # as reports name a bundled set
        source, default = None, source.removeprefix(BUNDLED_PREFIX)
    if source is None:
        records: Sequence[ChatRecord] = load_bundled(default)
        name = f"{BUNDLED_PREFIX}{default}"
    elif isinstance(source, (str, os.PathLike)):
        records, name = read_chat_jsonl(source), str(source)
    else:
        records, name = list(source), "records"
    if len(records) < 2:
        raise ChatDataError(name, None, f"a reference set needs at least two chats, got {len(records)}")
    return ReferenceData(name=name, records=tuple(records), sha256=_rows_digest(records))


def sae_weights_id(sae: SAE | LoadedSAE) -> str:
    """SHA-256 over the SAE's parameters and buffers (names, dtypes, shapes, bytes): identifies its exact weights."""
    module = sae.sae if isinstance(sae, LoadedSAE) else sae
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def toxic_cache_key(model_name: str, sae_name: str, weights_id: str, layer: int, config: ToxicFeatureConfig,
                    toxic_sha256: str, neutral_sha256: str) -> str:
    """The cache key of a toxic feature set: SHA-256 of every input that determines it, as canonical JSON."""
    parts = {"format": TOXIC_FORMAT, "model": model_name, "sae": sae_name, "sae_weights": weights_id,
             "layer": layer, "k": config.k, "statistic": config.statistic, "summary": config.summary,
             "max_length": config.max_length, "tokens": "assistant, non-special, position > 0",
             "toxic": toxic_sha256, "neutral": neutral_sha256}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class ToxicFeatures:
    """A toxic feature set and where it came from (cache key, cache file, whether it was read from the cache)."""

    feature_set: FeatureSet
    key: str
    path: Path | None
    from_cache: bool
    toxic: ReferenceData
    neutral: ReferenceData
    config: ToxicFeatureConfig

    @property
    def indices(self) -> torch.Tensor:
        """The selected SAE feature indices (int64, strongest first)."""
        return self.feature_set.indices

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for reports."""
        settings = {k: v for k, v in asdict(self.config).items() if k not in ("progress", "use_cache")}
        return {"features": len(self.feature_set), **settings, "cache_key": self.key, "from_cache": self.from_cache,
                "toxic": self.toxic.describe(), "neutral": self.neutral.describe()}


def _cache_file(key: str) -> Path:
    return cache_dir() / "toxic-features" / f"{key}.json"


def shipped_toxic_file(key: str) -> Path | None:
    """The toxic feature set shipped in the package for ``key`` (the defaults on the shipped SAEs), if any."""
    candidate = Path(str(resources.files("geomis") / "artifacts" / "toxic-features" / f"{key}.json"))
    return candidate if candidate.is_file() else None


def _read_cached(path: Path, key: str, name: str) -> FeatureSet | None:
    """The feature set stored at ``path`` if it is a valid file for ``key``; None otherwise (then it is recomputed)."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored.get("format") != TOXIC_FORMAT or stored.get("key") != key:
            return None
        return FeatureSet(name=name, indices=torch.tensor(stored["indices"], dtype=torch.int64),
                          values=torch.tensor(stored["values"], dtype=torch.float32), statistic=stored["statistic"],
                          k=int(stored["k"]), direction=stored["direction"], n_positive=int(stored["n_positive"]),
                          n_negative=int(stored["n_negative"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cached(path: Path, key: str, features: FeatureSet, inputs: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": TOXIC_FORMAT, "key": key, "inputs": inputs, "statistic": features.statistic, "k": features.k,
               "direction": features.direction, "n_positive": features.n_positive,
               "n_negative": features.n_negative, "indices": features.index_list(),
               "values": [float(v) for v in features.values.tolist()]}
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=1), encoding="utf-8")


def _sample_codes(model: LoadedModel, sae: LoadedSAE, records: Sequence[ChatRecord],
                  config: ToxicFeatureConfig) -> torch.Tensor:
    """(n, d_sae) per-chat mean or max SAE code over assistant tokens, one forward pass to the SAE's layer."""
    settings = ActivationConfig(layer=sae.layer, batch_size=config.batch_size, assistant_only=True,
                                max_length=config.max_length, progress=config.progress)
    activations = collect_residuals(model, [record.as_dicts() for record in records], settings)
    codes = encode_tokens(sae, activations, n_samples=len(records))
    return codes.sample_mean if config.summary == "mean" else codes.sample_max


def derive_toxic_features(
    model: LoadedModel, sae: LoadedSAE,
    toxic: str | os.PathLike[str] | Sequence[ChatRecord] | None = None,
    neutral: str | os.PathLike[str] | Sequence[ChatRecord] | None = None,
    config: ToxicFeatureConfig = ToxicFeatureConfig(),
) -> ToxicFeatures:
    """Top-k features of toxic vs neutral reference chats for ``model`` + ``sae``, read from or written to the cache."""
    if sae.d_in != model.spec.d_model:
        raise ValueError(f"SAE {sae.name} reads width {sae.d_in}, model {model.spec.name} has width "
                         f"{model.spec.d_model}")
    toxic_data = reference_data(toxic, DEFAULT_TOXIC)
    neutral_data = reference_data(neutral, DEFAULT_NEUTRAL)
    weights = sae_weights_id(sae)
    key = toxic_cache_key(model.spec.name, sae.name, weights, sae.layer, config, toxic_data.sha256,
                          neutral_data.sha256)
    path = _cache_file(key) if config.use_cache else None
    name = f"toxic@{sae.name}"
    shipped = shipped_toxic_file(key) if config.use_cache else None
    for stored in (path, shipped):  # the user's cache first, then the copy shipped for the default settings
        if stored is not None and stored.is_file():
            cached = _read_cached(stored, key, name)
            if cached is not None:
                return ToxicFeatures(cached, key, stored, True, toxic_data, neutral_data, config)
    both = [*toxic_data.records, *neutral_data.records]
    codes = _sample_codes(model, sae, both, config)
    n_toxic = len(toxic_data.records)
    features = select_contrast_features(codes[:n_toxic], codes[n_toxic:], k=config.k, statistic=config.statistic,
                                        name=name)
    if len(features) == 0:
        raise GeomisError(f"no SAE feature is more active on {toxic_data.name} than on {neutral_data.name}")
    if path is not None:
        inputs = {"model": model.spec.name, "sae": sae.name, "sae_weights": weights, "layer": sae.layer,
                  "toxic": toxic_data.describe(), "neutral": neutral_data.describe()}
        _write_cached(path, key, features, inputs)
    return ToxicFeatures(features, key, path, False, toxic_data, neutral_data, config)
