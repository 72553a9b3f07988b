"""Load sparse autoencoders through sae-lens only: the project's shipped SAEs, SAEs on disk, and Gemma Scope.

Three sources, one result type (:class:`LoadedSAE`):

- **shipped** SAEs live in package data, ``geomis/artifacts/sae/<name>/``, in sae-lens's own on-disk format
  (``cfg.json`` + ``sae_weights.safetensors``, no pickle) and are read with ``SAE.load_from_disk``. Their weights are
  stored as float16 to keep the repository small and are loaded back as float32.
- **disk**: any folder in that format, e.g. one written by ``geomis train-sae``.
- **gemma-scope**: Gemma Scope residual SAEs for Gemma-2 2B (release ``gemma-scope-2b-pt-res-canonical``), loaded with
  ``SAE.from_pretrained``. The id is checked against sae-lens's pretrained registry *before* anything is downloaded.

Decoder normalisation (a deliberate choice): every cosine between features in geomis uses
:func:`decoder_directions`, the rows of ``W_dec`` divided by their L2 norm, in float32. This holds whether or not an
SAE's norms were folded into its encoder (geomis's TopK SAEs are saved with unit-norm rows; Gemma Scope's JumpReLU
rows are close to, but not exactly, unit norm). The SAE itself is never modified, so ``encode``/``decode`` behave as
the release defines them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
import torch
from sae_lens import SAE

from geomis.errors import GeomisError
from geomis.models.profiles import Profile, get_profile
from geomis.models.registry import model_spec

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

GEMMA_SCOPE_RELEASE = "gemma-scope-2b-pt-res-canonical"
"""sae-lens release of the Gemma Scope residual-stream SAEs for Gemma-2 2B (canonical L0 per layer and width)."""

MAIN_SAE_NAME = "smollm2-135m-layer15-topk4096"
"""The shipped SAE used by the CPU-default profile."""

SAE_WEIGHTS_FILE = "sae_weights.safetensors"
SAE_CONFIG_FILE = "cfg.json"

SAESource = Literal["shipped", "disk", "gemma-scope"]


class SAELoadError(GeomisError):
    """An SAE could not be loaded: unknown name or id, missing files, Hub unreachable."""


@dataclass
class LoadedSAE:
    """An sae-lens SAE with where it came from and which residual stream (model, layer) it reads."""

    sae: SAE
    name: str
    """Shipped name, folder path, or ``release/sae_id`` for Gemma Scope."""
    model_name: str
    """geomis model name (see ``geomis.models.registry``) whose residual stream the SAE was trained on."""
    layer: int
    """Output of decoder layer ``layer`` (the same convention as ``geomis.activations.ActivationConfig``)."""
    source: SAESource

    @property
    def d_in(self) -> int:
        """Width of the residual stream the SAE reads."""
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        """Number of SAE features."""
        return int(self.sae.cfg.d_sae)

    def decoder_directions(self) -> torch.Tensor:
        """Unit-norm decoder directions, (d_sae, d_in) float32: what every cosine in geomis is computed from."""
        return decoder_directions(self.sae)

    def encoder_directions(self) -> torch.Tensor:
        """Unit-norm encoder rows, (d_sae, d_in) float32: the direction each feature *reads* (columns of ``W_enc``).

        A step ``delta`` in the residual stream changes feature j's pre-activation by ``<e_j, delta>``, so
        cos(e_j, d_i) is how strongly writing along feature i moves feature j (the spillover law)."""
        weights = self.sae.W_enc.detach().float().T
        return weights / weights.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def decoder_directions(sae: SAE) -> torch.Tensor:
    """Rows of ``W_dec`` scaled to unit L2 norm, as a detached float32 (d_sae, d_in) tensor on the SAE's device."""
    weights = sae.W_dec.detach().float()
    return weights / weights.norm(dim=-1, keepdim=True).clamp_min(1e-12)


# ----------------------------------------------------------------------------------------------- shipped and disk


def _shipped_root() -> Traversable:
    return resources.files("geomis").joinpath("artifacts", "sae")


def shipped_sae_names() -> list[str]:
    """Names of the SAEs shipped inside the package (folders of ``geomis/artifacts/sae``), sorted."""
    root = _shipped_root()
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir()  # hidden folders are unfinished `train-sae` outputs
                  if not entry.name.startswith(".") and entry.is_dir() and entry.joinpath(SAE_CONFIG_FILE).is_file())


@contextmanager
def shipped_sae_path(name: str) -> Iterator[Path]:
    """Context manager giving a real folder path for a shipped SAE (extracted if the package is zipped)."""
    known = shipped_sae_names()
    if name not in known:
        raise SAELoadError(f"unknown shipped SAE {name!r}; shipped SAEs: {', '.join(known) or 'none'}")
    with resources.as_file(_shipped_root().joinpath(name)) as path:
        yield Path(path)


_HOOK_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)(?:\.|$)")


def _layer_from_hook(hook_name: str | None) -> int | None:
    match = _HOOK_LAYER.search(hook_name or "")
    return int(match.group(1)) if match else None


def load_sae_from_disk(path: str | Path, device: str = "cpu", name: str | None = None) -> LoadedSAE:
    """Load an SAE saved in sae-lens's on-disk format (float32, unmodified) from ``path``."""
    folder = Path(path)
    missing = [file for file in (SAE_CONFIG_FILE, SAE_WEIGHTS_FILE) if not (folder / file).is_file()]
    if missing:
        raise SAELoadError(f"{folder} is not an sae-lens SAE folder: missing {', '.join(missing)}")
    sae = SAE.load_from_disk(folder, device=device, dtype="float32")
    metadata = sae.cfg.metadata
    layer = metadata.get("layer")
    if layer is None:
        layer = _layer_from_hook(metadata.hook_name)
    if layer is None:
        raise SAELoadError(f"{folder}/cfg.json names no layer (metadata.layer or a hook name like model.layers.15)")
    return LoadedSAE(sae=sae, name=name or str(folder), model_name=str(metadata.model_name or "unknown"),
                     layer=int(layer), source="disk")


def load_shipped_sae(name: str, device: str = "cpu") -> LoadedSAE:
    """Load one of the SAEs shipped with geomis (float16 on disk, float32 in memory) by name."""
    with shipped_sae_path(name) as folder:
        loaded = load_sae_from_disk(folder, device=device, name=name)
    loaded.source = "shipped"
    return loaded


# ---------------------------------------------------------------------------------------------------- Gemma Scope


def gemma_scope_sae_id(layer: int, width: str = "16k") -> str:
    """The canonical Gemma Scope id for a residual layer and width, e.g. ``layer_12/width_16k/canonical``."""
    return f"layer_{layer}/width_{width}/canonical"


def _registry_ids(release: str) -> list[str]:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        raise SAELoadError(f"sae-lens has no pretrained release {release!r}")
    return list(directory[release].saes_map)


_CANONICAL_ID = re.compile(r"^layer_(\d+)/width_([0-9]+[km])/canonical$")


def _ranges(numbers: list[int]) -> str:
    """Compact ``0-25`` / ``5, 12, 19`` rendering of sorted integers."""
    parts: list[str] = []
    start = previous = None
    for number in sorted(numbers):
        if start is None:
            start = previous = number
        elif number == previous + 1:  # type: ignore[operator]
            previous = number
        else:
            parts.append(f"{start}-{previous}" if previous != start else str(start))
            start = previous = number
    if start is not None:
        parts.append(f"{start}-{previous}" if previous != start else str(start))
    return ", ".join(parts)


def _width_sort_key(width: str) -> int:
    return int(width[:-1]) * (1_000_000 if width.endswith("m") else 1_000)


def validate_gemma_scope_id(sae_id: str, release: str = GEMMA_SCOPE_RELEASE) -> None:
    """Check ``sae_id`` against sae-lens's registry (no download); raise a one-line error listing valid choices."""
    valid = _registry_ids(release)
    if sae_id in valid:
        return
    layers_by_width: dict[str, list[int]] = {}
    for item in valid:
        match = _CANONICAL_ID.match(item)
        if match:
            layers_by_width.setdefault(match.group(2), []).append(int(match.group(1)))
    if not layers_by_width:  # a release with a different id scheme: list a few ids
        raise SAELoadError(f"{sae_id!r} is not an SAE of {release}; valid ids include {', '.join(valid[:5])}")
    widths = sorted(layers_by_width, key=_width_sort_key)
    choices = "; ".join(f"width_{width}: layers {_ranges(layers_by_width[width])}" for width in widths)
    match = _CANONICAL_ID.match(sae_id)
    if match is None:
        problem = f"{sae_id!r} is not of the form layer_<L>/width_<W>/canonical"
    elif match.group(2) not in layers_by_width:
        problem = f"width {match.group(2)!r} does not exist"
    else:
        problem = f"layer {match.group(1)} has no width_{match.group(2)} SAE"
    raise SAELoadError(f"{release}: {problem}; valid: {choices}")


def load_gemma_scope(layer: int, width: str = "16k", device: str | None = None,
                     release: str = GEMMA_SCOPE_RELEASE) -> LoadedSAE:
    """Validate, then download (or read from the Hub cache) a Gemma Scope residual SAE; one-line errors on failure."""
    from geomis.models.hub import describe_hub_failure, hub_token
    from geomis.models.registry import resolve_device

    sae_id = gemma_scope_sae_id(layer, width)
    validate_gemma_scope_id(sae_id, release)
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    repo_id = get_pretrained_saes_directory()[release].repo_id
    target = str(resolve_device(device))
    try:
        sae = SAE.from_pretrained(release, sae_id, device=target, dtype="float32")
    except Exception as error:  # noqa: BLE001 - every Hub failure becomes one actionable line
        raise SAELoadError(describe_hub_failure(repo_id, error, has_token=hub_token() is not None)) from None
    return LoadedSAE(sae=sae, name=f"{release}/{sae_id}", model_name="gemma-2-2b", layer=layer,
                     source="gemma-scope")


# ------------------------------------------------------------------------------------------- defaults and profiles


@dataclass(frozen=True)
class DefaultSAE:
    """Which SAE a model uses unless one is named: a shipped name, or Gemma Scope at a width."""

    source: SAESource
    name: str = ""
    width: str = "16k"


MODEL_SAES: dict[str, DefaultSAE] = {
    "smollm2-135m": DefaultSAE("shipped", name=MAIN_SAE_NAME),
    "gemma-2-2b": DefaultSAE("gemma-scope", width="16k"),
    "gemma-2-2b-it": DefaultSAE("gemma-scope", width="16k"),
}
"""The default SAE of each model. Gemma Scope is trained on the base model; the paper applies it to Gemma-2 2B-it."""


def default_sae_for(model_name: str) -> DefaultSAE:
    """The SAE ``model_name`` uses when none is named (profiles, ``geomis filter`` without ``--sae``)."""
    try:
        return MODEL_SAES[model_name]
    except KeyError:
        raise SAELoadError(f"no default SAE for model {model_name!r}; pass --sae (a shipped name, an sae-lens folder "
                           "or a Gemma Scope id)") from None


def load_default_sae(model_name: str, layer: int | None = None, device: str | None = None) -> LoadedSAE:
    """Load a model's default SAE at ``layer`` (default: the model's book layer); Gemma Scope on CUDA if there is one.

    A shipped SAE reads one layer: asking for another is an error. ``device`` None means the CPU for shipped SAEs.
    """
    choice = default_sae_for(model_name)
    layer = model_spec(model_name).default_layer if layer is None else layer
    if choice.source == "gemma-scope":
        return load_gemma_scope(layer, choice.width, device=device)  # None: CUDA when available
    loaded = load_shipped_sae(choice.name, device=device or "cpu")
    if loaded.layer != layer:
        raise SAELoadError(f"shipped SAE {choice.name} reads layer {loaded.layer}, not layer {layer}")
    return loaded


def load_profile_sae(profile: Profile | str | None = None, device: str | None = None) -> LoadedSAE:
    """Load the SAE a profile uses (by name, object, or ``GEOMIS_PROFILE``): its model's default SAE at its layer.

    A shipped SAE goes to the profile's device unless ``device`` is given; Gemma Scope to CUDA when available.
    """
    chosen = profile if isinstance(profile, Profile) else get_profile(profile)
    shipped = default_sae_for(chosen.model_name).source == "shipped"
    return load_default_sae(chosen.model_name, chosen.layer, device=device or (chosen.device if shipped else None))


SWEEP_SAES: dict[str, tuple[int, ...]] = {
    "cpu-default": (5, 10, 15, 20, 25),
    "gemma-2-2b": (4, 8, 12, 16, 20),
}
"""Layers of each profile's sweep: equal-width SAEs (shipped width-1024 TopK; Gemma Scope 16k) at several depths."""


def sweep_sae_name(layer: int) -> str:
    """Name of the shipped CPU-default sweep SAE at ``layer`` (width 1024, TopK k=32)."""
    return f"smollm2-135m-layer{layer}-topk1024"


def load_sweep_saes(profile: Profile | str | None = None, device: str | None = None) -> dict[int, LoadedSAE]:
    """Load a profile's layer-sweep SAEs, by layer: the same recipe and width at each depth, so layers compare."""
    chosen = profile if isinstance(profile, Profile) else get_profile(profile)
    try:
        layers = SWEEP_SAES[chosen.name]
    except KeyError:
        raise SAELoadError(f"profile {chosen.name!r} has no layer sweep; profiles with one: {', '.join(SWEEP_SAES)}") \
            from None
    if default_sae_for(chosen.model_name).source == "gemma-scope":
        return {layer: load_gemma_scope(layer, "16k", device=device) for layer in layers}
    return {layer: load_shipped_sae(sweep_sae_name(layer), device=device or chosen.device) for layer in layers}


def shipped_sae_quality(names: Sequence[str] | None = None, corpus: str | None = None) -> pd.DataFrame:
    """Quality of shipped SAEs as recorded when they were trained (held-out EV, L0, dead share, loss recovered).

    ``corpus``: only SAEs trained on that corpus (``bundled`` or ``neutral-prompts``; None: all)."""
    rows = []
    for name in names if names is not None else shipped_sae_names():
        with shipped_sae_path(name) as folder:
            record_file = folder / "training.json"
            if not record_file.is_file():
                raise SAELoadError(f"shipped SAE {name} has no training.json")
            record = json.loads(record_file.read_text())
        config = record["config"]
        if corpus is not None and config.get("corpus", "bundled") != corpus:
            continue
        rows.append({
            "sae": name, "layer": config["layer"], "width": config["width"], "k": config["k"],
            "training tokens": record["corpus"]["train_tokens"],
            "held-out EV": record["held_out"]["explained_variance"], "L0": record["held_out"]["l0"],
            "dead (train)": record["train"]["dead_fraction"],
            "loss recovered": record["splice"]["loss_recovered"] if record.get("splice") else float("nan"),
        })
    return pd.DataFrame(rows)


NEUTRAL_SAE_SEEDS: tuple[int, ...] = (0, 1, 2)
"""Seeds of the CPU default's SAEs trained on the neutral corpus (text the book never compares)."""


def neutral_sae_name(seed: int) -> str:
    """Name of the shipped CPU-default SAE of ``seed`` trained on the neutral corpus (layer 15, width 4096, k 32)."""
    return f"smollm2-135m-neutral-s{seed}-layer15-topk4096"


def load_study_saes(profile: Profile | str | None = None, device: str | None = None) -> dict[str, LoadedSAE]:
    """The SAEs Chapter 2 measures geometry with, by name: on the CPU default the three SAEs trained on the neutral
    corpus (seeds :data:`NEUTRAL_SAE_SEEDS`); on Gemma the profile's Gemma Scope SAE."""
    chosen = profile if isinstance(profile, Profile) else get_profile(profile)
    if default_sae_for(chosen.model_name).source != "shipped":
        sae = load_profile_sae(chosen, device=device)
        return {sae.name: sae}
    names = [neutral_sae_name(seed) for seed in NEUTRAL_SAE_SEEDS]
    missing = [name for name in names if name not in shipped_sae_names()]
    if missing:
        raise SAELoadError(f"not shipped: {', '.join(missing)}; train them with the command in "
                           "geomis/artifacts/sae/README.md (geomis train-sae --corpus neutral-prompts --seeds ...)")
    saes = {name: load_shipped_sae(name, device=device or chosen.device) for name in names}
    wrong = [name for name, sae in saes.items() if sae.layer != chosen.layer]
    if wrong:
        raise SAELoadError(f"{', '.join(wrong)} read another layer than profile {chosen.name}'s {chosen.layer}")
    return saes


FILTER_SAES: dict[str, tuple[str, ...]] = {"smollm2-135m": tuple(neutral_sae_name(seed) for seed in NEUTRAL_SAE_SEEDS)}
"""The SAEs ``geomis filter`` averages over when none is named, per model: on SmolLM2 the three SAEs trained on the
neutral corpus, the ensemble Chapter 4's filter-quality study measured (a model not listed uses its default SAE)."""


def load_filter_saes(model_name: str, device: str | None = None) -> list[LoadedSAE]:
    """The SAEs the filter uses without ``--sae``: :data:`FILTER_SAES` of the model, else its default SAE."""
    names = FILTER_SAES.get(model_name)
    if names is None:
        return [load_default_sae(model_name, device=device)]
    missing = [name for name in names if name not in shipped_sae_names()]
    if missing:
        raise SAELoadError(f"not shipped: {', '.join(missing)}; train them with the command in "
                           "geomis/artifacts/sae/README.md (geomis train-sae --corpus neutral-prompts --seeds ...)")
    return [load_shipped_sae(name, device=device or "cpu") for name in names]
