"""Figures for the feature-geometry chapter; one function per figure, each returning a matplotlib Figure.

Inputs are the tidy outputs of :mod:`geomis.features.geometry`: :func:`~geomis.features.geometry.similarity_frame`
rows for the distributions, a :func:`~geomis.features.geometry.pairwise_cosines` matrix for the heatmap and a
:func:`~geomis.features.geometry.comparison_table` for the layer sweep. Like :mod:`geomis.toy.figures`, this module
sits at the end of the data path and no stage imports it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.cluster import hierarchy

from geomis.stats import require_columns

__all__ = ["SOURCE_PALETTE", "plot_similarity_distributions", "plot_cosine_heatmap", "plot_layer_sweep",
           "plot_resampled_gaps"]

SOURCE_PALETTE = {"inducing": "#c0392b", "control": "#2e86c1"}
"""Colours used for the two source sets in every figure of the chapter."""


def plot_similarity_distributions(
    similarities: pd.DataFrame,
    value: Literal["max_cos", "mean_cos"] = "max_cos",
    reference: str = "toxic",
    kind: Literal["violin", "box"] = "violin",
) -> Figure:
    """Per domain, the distribution of each source feature's cosine to the reference set, inducing vs control."""
    require_columns(similarities, ["domain", "source", value], "similarities table")
    data = similarities.dropna(subset=[value])
    sources = [s for s in SOURCE_PALETTE if s in set(data["source"])] or sorted(set(data["source"]))
    palette = {s: SOURCE_PALETTE.get(s, "grey") for s in sources}
    n_domains = max(1, data["domain"].nunique())
    fig, ax = plt.subplots(figsize=(1.8 * n_domains + 2.5, 3.8), layout="constrained")
    common: dict[str, Any] = dict(data=data, x="domain", y=value, hue="source", hue_order=sources, palette=palette,
                                  ax=ax)
    if kind == "violin":
        sns.violinplot(**common, split=len(sources) == 2, inner="quart", cut=0, density_norm="width")
    elif kind == "box":
        sns.boxplot(**common, showfliers=False)
        sns.stripplot(**common, dodge=True, size=2, alpha=0.5, legend=False)
    else:
        raise ValueError("kind must be 'violin' or 'box'")
    statistic = "max" if value == "max_cos" else "mean"
    ax.set_xlabel("domain")
    ax.set_ylabel(f"{statistic} decoder cosine to {reference} features")
    ax.set_title(f"How close each source feature sits to the {reference} set")
    ax.legend(title="source set", loc="best")
    return fig


def _max_order(matrix: np.ndarray, axis: int) -> np.ndarray:
    """Indices along ``axis`` sorted by their largest cosine, highest first (NaN self-pairs ignored)."""
    peak = np.max(np.where(np.isnan(matrix), -np.inf, matrix), axis=1 - axis)
    return np.argsort(-peak, kind="stable")


def _cluster_order(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns in hierarchical-clustering leaf order; rows grouped under their nearest column (block diagonal)."""
    filled = np.nan_to_num(matrix, nan=-np.inf)
    cols = (
        hierarchy.leaves_list(hierarchy.linkage(np.nan_to_num(matrix, nan=0.0).T, method="average"))
        if matrix.shape[1] > 2 else np.arange(matrix.shape[1])
    )
    position = np.empty_like(cols)
    position[cols] = np.arange(cols.size)
    nearest = position[np.argmax(filled, axis=1)]
    rows = np.lexsort((-np.max(filled, axis=1), nearest))
    return rows, cols


def plot_cosine_heatmap(
    cosines: torch.Tensor | np.ndarray,
    row_features: Sequence[int] | torch.Tensor | None = None,
    col_features: Sequence[int] | torch.Tensor | None = None,
    row_label: str = "inducing features",
    col_label: str = "toxic features",
    order: Literal["max", "cluster"] = "max",
) -> Figure:
    """Heatmap of source × reference decoder cosines, rows/columns sorted by their max cosine or clustered.

    ``order="max"`` sorts rows and columns by their largest cosine; ``"cluster"`` orders columns by hierarchical
    clustering and puts each row under its nearest column, so near pairs form a diagonal. NaN cells (excluded
    self-pairs, see :func:`geomis.features.geometry.pairwise_cosines`) are left blank.
    """
    if isinstance(cosines, torch.Tensor):
        cosines = cosines.detach().cpu().double().numpy()
    matrix = np.asarray(cosines, dtype=float)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError("cosines must be a non-empty 2-D matrix")
    if order not in ("max", "cluster"):
        raise ValueError("order must be 'max' or 'cluster'")
    rows, cols = (_max_order(matrix, 0), _max_order(matrix, 1)) if order == "max" else _cluster_order(matrix)
    row_ids = np.arange(matrix.shape[0]) if row_features is None else np.asarray(row_features).reshape(-1)
    col_ids = np.arange(matrix.shape[1]) if col_features is None else np.asarray(col_features).reshape(-1)
    frame = pd.DataFrame(matrix[np.ix_(rows, cols)], index=row_ids[rows], columns=col_ids[cols])
    limit = max(0.05, float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0)
    height = min(9.0, 0.12 * matrix.shape[0] + 2.0)
    width = min(11.0, 0.12 * matrix.shape[1] + 3.0)
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    with warnings.catch_warnings():  # seaborn 0.13.2 calls a matplotlib method slated for deprecation
        warnings.filterwarnings("ignore", "The set_bad function", PendingDeprecationWarning)
        sns.heatmap(
            frame, ax=ax, cmap="RdBu_r", vmin=-limit, vmax=limit, center=0.0,
            xticklabels=matrix.shape[1] <= 40, yticklabels=matrix.shape[0] <= 40,
            cbar_kws={"label": "decoder cosine"},
        )
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    sorting = "sorted by max cosine" if order == "max" else "clustered"
    ax.set_title(f"Decoder cosines: {row_label} × {col_label}\n({sorting})")
    return fig


def plot_layer_sweep(table: pd.DataFrame, reference: str = "toxic") -> Figure:
    """Layer vs mean max-cosine to the reference set, inducing and control lines with bootstrap CI bands.

    ``table`` is :func:`geomis.features.geometry.comparison_table` over a layer sweep; several domains give one panel
    each.
    """
    needed = ["layer"] + [f"{s}_{c}" for s in ("inducing", "control") for c in ("mean_max", "ci_low", "ci_high")]
    require_columns(table, needed, "comparison table")
    data = table.dropna(subset=["layer"]).sort_values("layer")
    domains = list(dict.fromkeys(data["domain"])) if "domain" in data.columns else [""]
    fig, axes = plt.subplots(
        1, len(domains), figsize=(4.6 * len(domains) + 0.6, 3.6), sharey=True, squeeze=False, layout="constrained"
    )
    for ax, domain in zip(axes[0], domains, strict=True):
        rows = data.loc[data["domain"] == domain] if "domain" in data.columns else data
        layers = rows["layer"].to_numpy(dtype=float)
        for source, colour in SOURCE_PALETTE.items():
            ax.plot(layers, rows[f"{source}_mean_max"], marker="o", color=colour, label=source)
            ax.fill_between(layers, rows[f"{source}_ci_low"], rows[f"{source}_ci_high"], color=colour, alpha=0.2)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(domain or "layer sweep")
    axes[0][0].set_ylabel(f"mean max cosine to {reference} features")
    axes[0][-1].legend(title="source set (95% CI)", loc="best")
    return fig


def plot_resampled_gaps(table: pd.DataFrame, variants: Sequence[str] | None = None) -> Figure:
    """Forest plot of the inducing-minus-control gap: per domain (rows) and variant (panels), the SAEs pooled (black,
    95% chat-bootstrap interval) and each SAE alone (grey), with the zero line.

    ``table`` is :attr:`geomis.experiments.overlap.ResampledGeometry.table`.
    """
    require_columns(table, ["domain", "variant", "sae", "difference", "low", "high"], "resampled geometry table")
    chosen = list(variants) if variants is not None else list(dict.fromkeys(table["variant"]))
    unknown = [v for v in chosen if v not in set(table["variant"])]
    if unknown or not chosen:
        raise ValueError(f"variants {unknown or chosen} are not in the table; it has {sorted(set(table['variant']))}")
    domains = list(dict.fromkeys(table["domain"]))
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.6 * len(chosen) + 1.2, 0.7 * len(domains) + 1.6),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, variant in zip(axes[0], chosen, strict=True):
        part = pd.DataFrame(table.loc[table["variant"] == variant])
        singles = [name for name in dict.fromkeys(part["sae"]) if name != "pooled"]
        for row, domain in enumerate(domains):
            here = pd.DataFrame(part.loc[part["domain"] == domain]).set_index("sae")
            offsets = np.linspace(-0.25, -0.05, max(len(singles), 1))
            for offset, name in zip(offsets, singles, strict=False):
                one = here.loc[name]
                ax.hlines(row + offset, one["low"], one["high"], color="grey", linewidth=1, alpha=0.8)
                ax.plot(one["difference"], row + offset, "o", color="grey", markersize=3, alpha=0.8)
            if "pooled" in here.index:
                pooled = here.loc["pooled"]
                # a line from low to high, not error bars: with the sets re-selected in every draw the estimate
                # on all chats can fall outside its own percentile interval, and that must show, not fail
                ax.hlines(row + 0.12, pooled["low"], pooled["high"], color="black", linewidth=2)
                ax.plot(pooled["difference"], row + 0.12, "D", color="black", markersize=5)
        ax.axvline(0, color="#c0392b", linestyle="--", linewidth=1)
        ax.set_title(variant)
        ax.set_xlabel("inducing - control\n(mean nearest cosine to toxic features)")
    axes[0][0].set_yticks(range(len(domains)), domains)
    axes[0][0].invert_yaxis()
    axes[0][0].set_ylabel("domain")
    fig.suptitle("Gap per domain: SAEs pooled (black) and each SAE (grey), 95% chat-bootstrap intervals")
    return fig
