"""Per-chat SAE codes on disk: each model's reading of a set of chats, stored sparsely in a compressed ``.npz``.

Written by Chapter 5's measurement (:mod:`geomis.experiments.mechanism`), read by its analysis and by the steering
test; NumPy files read with ``allow_pickle=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["save_codes", "load_codes", "load_residual_mean"]


def save_codes(codes: Sequence[torch.Tensor], target: Path, residual_mean: torch.Tensor | None = None) -> None:
    """Write per-SAE dense codes sparsely (row, column, value) to a compressed ``.npz`` (with the mean residual when
    given), atomically."""
    from geomis.atomic_io import atomic_path

    arrays: dict[str, np.ndarray] = {}
    if residual_mean is not None:
        arrays["residual_mean"] = residual_mean.numpy().astype(np.float32)
    for i, one in enumerate(codes):
        row, col = one.nonzero(as_tuple=True)
        arrays[f"sae{i}_row"] = row.numpy().astype(np.int32)
        arrays[f"sae{i}_col"] = col.numpy().astype(np.int32)
        arrays[f"sae{i}_value"] = one[row, col].numpy().astype(np.float32)
        arrays[f"sae{i}_shape"] = np.array(one.shape, dtype=np.int64)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, allow_pickle=False, **arrays)


def load_codes(path: Path) -> list[torch.Tensor]:
    """The per-SAE dense codes written by :func:`save_codes` (no pickle)."""
    with np.load(path, allow_pickle=False) as stored:
        count = sum(1 for key in stored.files if key.endswith("_shape"))
        out = []
        for i in range(count):
            dense = torch.zeros(tuple(int(n) for n in stored[f"sae{i}_shape"]))
            dense[torch.from_numpy(stored[f"sae{i}_row"]).long(), torch.from_numpy(stored[f"sae{i}_col"]).long()] = \
                torch.from_numpy(stored[f"sae{i}_value"])
            out.append(dense)
    return out


def load_residual_mean(path: Path) -> torch.Tensor:
    """The ``(d_model,)`` mean residual written beside a model's codes."""
    with np.load(path, allow_pickle=False) as stored:
        return torch.from_numpy(stored["residual_mean"].copy())
