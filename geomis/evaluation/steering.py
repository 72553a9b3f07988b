"""Steering: add a fixed vector to the residual stream at one decoder layer while the model answers.

The edit goes through nnsight (the project's one way into model internals): every forward of the decoding loop runs
inside ``model.lm.trace`` with the vector added to the output of decoder layer ``layer`` at every position, the
prompt's and each generated token's. :func:`geomis.evaluation.sampling.sample_answers` takes a :class:`Steering`
and uses it in its cached ``nucleus`` decoding loop, so steered and unsteered answers share one sampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from geomis.models.registry import LoadedModel


@dataclass(frozen=True, eq=False)
class Steering:
    """Add ``vector`` (``(d_model,)``) to the output of decoder layer ``layer`` (0-based) at every position."""

    layer: int
    vector: torch.Tensor

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.vector.dim() != 1:
            raise ValueError(f"the steering vector must be 1-D (d_model,), got shape {tuple(self.vector.shape)}")
        if not bool(torch.isfinite(self.vector).all()):
            raise ValueError("the steering vector has NaN or infinite entries")

    @property
    def norm(self) -> float:
        """Euclidean norm of the added vector."""
        return float(self.vector.float().norm())

    @staticmethod
    def along(direction: torch.Tensor, scale: float, layer: int) -> Steering:
        """``scale`` times the unit vector of ``direction`` at ``layer`` (``scale`` 0 adds nothing)."""
        norm = float(direction.float().norm())
        if norm == 0.0:
            raise ValueError("cannot steer along a zero direction")
        return Steering(layer, direction.float() / norm * scale)


def check_steering(model: LoadedModel, steering: Steering) -> None:
    """Raise a one-line ValueError when ``steering`` does not fit ``model`` (layer range, vector width)."""
    from geomis.activations import check_residual_edit

    check_residual_edit(model, steering.layer, int(steering.vector.shape[0]), "the steering vector")


def steered_forward(model: LoadedModel, steering: Steering, **inputs: Any) -> Any:
    """One forward of ``model`` on ``inputs`` (keyword arguments of the transformers forward, ``input_ids`` among
    them) with the steering vector added at its layer; returns an object with the ``logits``."""
    from geomis.activations import edited_forward

    def add(hidden: torch.Tensor) -> torch.Tensor:
        return hidden + steering.vector.to(device=hidden.device, dtype=hidden.dtype)

    return edited_forward(model, steering.layer, add, **inputs)
