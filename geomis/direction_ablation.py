"""Direction ablation during fine-tuning: remove a set of directions from the residual stream at one layer.

While :func:`geomis.finetune.fine_tune` trains with an :class:`DirectionAblation`, every training forward runs through
nnsight with the output of decoder layer ``layer`` replaced by its projection onto the orthogonal complement of the
directions' span, ``h - U U^T h`` (``U``: an orthonormal basis of the span). Gradients flow through the projection,
so the adapters learn the data without the removed directions carrying anything at that layer. The saved adapters
know nothing of it: the fine-tuned model is evaluated without the ablation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch

from geomis.models.registry import LoadedModel

__all__ = ["DirectionAblation", "ablated_forward", "check_ablation"]


@dataclass(frozen=True, eq=False)
class DirectionAblation:
    """Project out the span of ``basis``'s columns (``(d_model, rank)``, orthonormal) at decoder layer ``layer``."""

    layer: int
    basis: torch.Tensor

    def __post_init__(self) -> None:
        if self.layer < 0:
            raise ValueError(f"layer must be >= 0, got {self.layer}")
        if self.basis.dim() != 2 or self.basis.shape[1] == 0:
            raise ValueError(f"the basis must be (d_model, rank >= 1), got shape {tuple(self.basis.shape)}")
        gram = self.basis.double().T @ self.basis.double()
        if not torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-4):
            raise ValueError("the basis columns are not orthonormal; build it with DirectionAblation.of")

    @staticmethod
    def of(directions: torch.Tensor, layer: int, tolerance: float = 1e-6) -> DirectionAblation:
        """The ablation of the span of ``directions`` (``(k, d_model)``, any lengths; dependent rows count once)."""
        if directions.dim() != 2 or directions.shape[0] == 0:
            raise ValueError(f"directions must be (k >= 1, d_model), got shape {tuple(directions.shape)}")
        if not bool(torch.isfinite(directions).all()):
            raise ValueError("the directions have NaN or infinite entries")
        left, singular, _ = torch.linalg.svd(directions.double().T, full_matrices=False)
        keep = singular > tolerance * float(singular.max().clamp_min(1e-300))
        if not bool(keep.any()):
            raise ValueError("the directions are all zero")
        return DirectionAblation(layer, left[:, keep].float().contiguous())

    @property
    def rank(self) -> int:
        """Dimensions removed."""
        return int(self.basis.shape[1])

    def share(self) -> float:
        """Share of the residual space removed: rank / d_model."""
        return self.rank / int(self.basis.shape[0])

    def describe(self) -> dict[str, Any]:
        """What a fine-tune's metadata records: layer, rank, width and a fingerprint of the basis."""
        digest = hashlib.sha256(self.basis.detach().cpu().float().numpy().round(6).tobytes()).hexdigest()[:16]
        return {"layer": self.layer, "rank": self.rank, "d_model": int(self.basis.shape[0]), "basis_sha256": digest}

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden - U U^T hidden`` over the last dimension."""
        basis = self.basis.to(device=hidden.device, dtype=hidden.dtype)
        return hidden - (hidden @ basis) @ basis.T


def check_ablation(model: LoadedModel, ablation: DirectionAblation) -> None:
    """Raise a one-line ValueError when ``ablation`` does not fit ``model`` (layer range, residual width)."""
    from geomis.activations import check_residual_edit

    check_residual_edit(model, ablation.layer, int(ablation.basis.shape[0]), "the ablation basis")


def ablated_forward(model: LoadedModel, ablation: DirectionAblation, **inputs: Any) -> Any:
    """One forward of ``model`` (gradients kept) with the directions removed at the ablation's layer; returns an
    object with the ``logits``."""
    from geomis.activations import edited_forward

    return edited_forward(model, ablation.layer, ablation.project, **inputs)
