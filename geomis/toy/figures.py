"""One function per figure of the book; each returns a matplotlib Figure with labelled axes.

Figures are built with `plt.subplots`, so a notebook shows them with `plt.show()`. This module sits at the end
of the data path: it may import any stage, and no stage imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from geomis.toy.models import (
    ToyModel,
    count_represented,
    feature_dimensionality,
    feature_importance,
    feature_norms,
    gram_matrix,
    superposition_interference,
)
from geomis.toy.spillover import PlantedSpillover, SpilloverResult

__all__ = [
    "plot_gram_matrices",
    "plot_feature_norms",
    "plot_directions_2d",
    "plot_superposition_summary",
    "plot_spillover_scatter",
    "plot_planted_changes",
    "plot_cosine_sweep",
    "plot_spillover_schematic",
]


def _sparsity_titles(model: ToyModel) -> list[str]:
    """'S = 0.9'-style panel titles, one per instance."""
    return [f"S = {1 - p:.3g}" for p in model.cfg.feature_probability]


# ---------------------------------------------------------------------------------------------------------------
# Chapter 1: superposition and the geometry of spillover
# ---------------------------------------------------------------------------------------------------------------


def plot_gram_matrices(model: ToyModel) -> Figure:
    """Heatmap of W^T W per sparsity: a clean diagonal means orthogonal features, off-diagonal mass means sharing."""
    grams = gram_matrix(model).numpy()
    n = grams.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n + 1.0, 3.0), squeeze=False, layout="constrained")
    ticks = max(1, model.cfg.n_features // 5)
    for i, (ax, title) in enumerate(zip(axes[0], _sparsity_titles(model), strict=True)):
        sns.heatmap(
            grams[i], ax=ax, cmap="RdBu_r", vmin=-1, vmax=1, square=True, cbar=i == n - 1,
            cbar_kws={"label": r"$\langle d_i, d_j \rangle$"}, xticklabels=ticks, yticklabels=ticks,
        )
        ax.set_title(title)
        ax.set_xlabel("feature j")
        ax.set_ylabel("feature i" if i == 0 else "")
    fig.suptitle(r"$W^\top W$: how each pair of feature directions overlaps")
    return fig


def plot_feature_norms(model: ToyModel) -> Figure:
    """Bars of ||d_i|| per feature and sparsity, coloured by interference sum_j (d_i_hat . d_j)^2."""
    norms = feature_norms(model).numpy()
    interference = superposition_interference(model).numpy()
    n_inst, n_feat = norms.shape
    vmax = max(1.0, float(interference[norms > 0.5].max(initial=0.0)))
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(
        1, n_inst, figsize=(2.2 * n_inst + 1.0, 0.18 * n_feat + 1.6), sharey=True, squeeze=False, layout="constrained"
    )
    for i, (ax, title) in enumerate(zip(axes[0], _sparsity_titles(model), strict=True)):
        ax.barh(np.arange(n_feat), norms[i], color=cmap(np.clip(interference[i] / vmax, 0, 1)))
        ax.axvline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlim(0, max(1.3, float(norms.max()) * 1.05))
        ax.set_title(f"{title}\n{int((norms[i] > 0.5).sum())} represented")
        ax.set_xlabel(r"$\|d_i\|$")
    axes[0, 0].set_yticks(np.arange(0, n_feat, max(1, n_feat // 10)))
    axes[0, 0].set_ylabel("feature i (importance falls downwards)")
    axes[0, 0].invert_yaxis()
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=Normalize(0, vmax))
    fig.colorbar(mappable, ax=axes[0], label=r"interference $\sum_{j\neq i} (\hat d_i\cdot d_j)^2$")
    return fig


def plot_directions_2d(model: ToyModel) -> Figure:
    """Feature directions as arrows in a 2-D hidden space, one panel per sparsity (orthogonal -> pentagon)."""
    if model.cfg.n_hidden != 2:
        raise ValueError(f"plot_directions_2d needs n_hidden == 2, got {model.cfg.n_hidden}")
    W = model.W.detach().numpy()
    importance = feature_importance(model.cfg).numpy()
    colors = plt.get_cmap("plasma")(0.85 * (1 - importance / importance.max()))
    n_inst = W.shape[0]
    lim = 1.15 * max(1.0, float(np.abs(W).max()))
    fig, axes = plt.subplots(1, n_inst, figsize=(2.8 * n_inst, 3.2), squeeze=False, layout="constrained")
    for i, (ax, title) in enumerate(zip(axes[0], _sparsity_titles(model), strict=True)):
        ax.add_patch(Circle((0, 0), 1.0, fill=False, color="lightgrey", ls="--"))
        for f in range(W.shape[2]):
            x, y = W[i, :, f]
            ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": colors[f], "lw": 2})
            if np.hypot(x, y) > 0.2:
                ax.text(1.12 * x, 1.12 * y, str(f), ha="center", va="center", fontsize=9, color=colors[f])
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(title)
        ax.set_xlabel("hidden dim 1")
        ax.set_ylabel("hidden dim 2" if i == 0 else "")
    fig.suptitle(f"{model.cfg.n_features} features in 2 dimensions (label = feature index; 0 most important)")
    return fig


def plot_superposition_summary(model: ToyModel) -> Figure:
    """Represented features and dimensions per feature against sparsity: superposition grows as features get rarer."""
    probs = np.array(model.cfg.feature_probability)
    x = 1.0 / probs  # 1 / (1 - S): "one feature active in every x samples"
    counts = count_represented(model).numpy()
    dims = feature_dimensionality(model).numpy()
    norms = feature_norms(model).numpy()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    left.plot(x, counts, "o-", label="features with $\\|d_i\\| > 0.5$")
    left.axhline(model.cfg.n_hidden, color="grey", ls="--", label=f"hidden dims m = {model.cfg.n_hidden}")
    left.axhline(model.cfg.n_features, color="grey", ls=":", label=f"features n = {model.cfg.n_features}")
    left.set_xscale("log")
    left.set_xlabel("1 / (1 − S)   (feature density⁻¹, log scale)")
    left.set_ylabel("represented features")
    left.legend(fontsize=8)
    for i in range(len(x)):
        keep = norms[i] > 0.5
        jitter = np.linspace(0.93, 1.07, int(keep.sum())) if keep.sum() > 1 else np.ones(int(keep.sum()))
        right.scatter(x[i] * jitter, dims[i][keep], s=14, alpha=0.7, color="C0")
    for level, name in [(1.0, "1"), (0.5, "1/2"), (0.4, "2/5"), (1 / 3, "1/3")]:
        right.axhline(level, color="grey", lw=0.6, ls=":")
        right.text(x.max() * 1.15, level, name, va="center", fontsize=8, color="grey")
    right.set_xscale("log")
    right.set_xlabel("1 / (1 − S)   (log scale)")
    right.set_ylabel(r"dimensions per feature $\|d_i\|^2 / \sum_j (\hat d_i\cdot d_j)^2$")
    right.set_title("represented features only", fontsize=9)
    return fig


def plot_spillover_scatter(
    result: SpilloverResult, quantity: Literal["pre_activation", "output"] = "pre_activation"
) -> Figure:
    """Δf_j against <d_j, d_t> and against cos(d_j, d_t) with the fitted lines: the first-order spillover law."""
    if quantity not in ("pre_activation", "output"):
        raise ValueError(f"quantity must be 'pre_activation' or 'output', got {quantity!r}")
    change = getattr(result.changes, quantity).numpy()
    others = np.arange(len(change)) != result.target
    ylabels = {"pre_activation": r"Δ pre-activation $\Delta f_j$", "output": r"Δ output $\Delta\,\mathrm{ReLU}(f_j)$"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, layout="constrained")
    panels = [
        (result.dot.numpy(), result.fit_dot, r"$\langle d_j, d_t \rangle$"),
        (result.cosine.numpy(), result.fit_cosine, r"$\cos(d_j, d_t)$"),
    ]
    for ax, (x, fit, xlabel) in zip(axes, panels, strict=True):
        ax.axhline(0, color="lightgrey", lw=0.8)
        ax.axvline(0, color="lightgrey", lw=0.8)
        ax.scatter(x[others], change[others], s=28, color="C0", label="other features j ≠ t")
        ax.scatter(x[~others], change[~others], s=70, marker="*", color="C3", label=f"target t = {result.target}")
        if quantity == "pre_activation":
            grid = np.linspace(x.min(), x.max(), 50)
            ax.plot(grid, fit.slope * grid + fit.intercept, color="C1",
                    label=f"fit (j ≠ t): slope {fit.slope:.3f}, r = {fit.pearson_r:.3f}")
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(ylabels[quantity])
    fig.suptitle(f"Amplifying feature {result.target}: how every other feature moves")
    return fig


def plot_planted_changes(planted: PlantedSpillover) -> Figure:
    """Grouped bars: change of the target, the planted near ('harmful') feature and the far feature."""
    frame = planted.to_frame()
    long = frame.melt(
        id_vars=["role", "cosine to target"], value_vars=["Δ pre-activation", "Δ output"], var_name="measure",
        value_name="mean change",
    )
    tidy = long["cosine to target"].round(2) + 0.0  # + 0.0 turns -0.0 into 0.0
    long["feature"] = [f"{role}\ncos = {c:.2f}" for role, c in zip(long["role"], tidy, strict=True)]
    fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
    sns.barplot(data=long, x="feature", y="mean change", hue="measure", ax=ax)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("")
    ax.set_ylabel("mean change when t is amplified")
    ax.set_title("Near features are dragged along; far ones are not", fontsize=11)
    return fig


def plot_cosine_sweep(cosines: Sequence[float], pre_ratio: Sequence[float], out_ratio: Sequence[float]) -> Figure:
    """A planted feature's change relative to the target's, against its cosine: first order predicts the diagonal."""
    cos = np.asarray(cosines, dtype=float)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    ax.plot(cos, cos, color="grey", lw=6, alpha=0.35, label="first order: ratio = cos")
    ax.plot(cos, np.asarray(pre_ratio, dtype=float), "o-", label=r"pre-activation $\Delta f_h / \Delta f_t$")
    ax.plot(cos, np.asarray(out_ratio, dtype=float), "s-", label=r"output $\Delta x'_h / \Delta x'_t$")
    ax.axhline(0, color="lightgrey", lw=0.8)
    ax.set_xlabel(r"planted $\cos(d_h, d_t)$")
    ax.set_ylabel("change relative to the target's")
    ax.legend(fontsize=8)
    return fig


def plot_spillover_schematic(alpha: float = 1.0, cos_near: float = 0.8, cos_far: float = 0.1) -> Figure:
    """The book's one-picture explanation: a step along the target direction moves each feature by α·cos.

    Left: unit decoder directions of a fine-tuning target ``d_t``, a harmful feature close to it and an unrelated
    feature almost orthogonal to it, with the update ``Δh = α d_t``. Right: the first-order change of each feature,
    ``Δf_j = α ⟨d_j, d_t⟩``, as bars.
    """
    for name, value in (("cos_near", cos_near), ("cos_far", cos_far)):
        if not -1.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a cosine in [-1, 1], got {value}")
    angles = {"target $d_t$": 0.0, "harmful $d_h$": float(np.arccos(cos_near)),
              "unrelated $d_u$": -float(np.arccos(cos_far))}
    colours = {"target $d_t$": "#34495e", "harmful $d_h$": "#c0392b", "unrelated $d_u$": "#7f8c8d"}
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(9.0, 3.6), layout="constrained",
                                   gridspec_kw={"width_ratios": [1.2, 1.0]})
    for label, angle in angles.items():
        x, y = np.cos(angle), np.sin(angle)
        ax.annotate("", xy=(x, y), xytext=(0, 0), arrowprops={"arrowstyle": "-|>", "color": colours[label], "lw": 2})
        ax.text(1.08 * x, 1.08 * y + (0.05 if y >= 0 else -0.1), label, color=colours[label], ha="center")
    ax.annotate("", xy=(0.2 + alpha * 0.55, -0.35), xytext=(0.2, -0.35),
                arrowprops={"arrowstyle": "-|>", "color": "#27ae60", "lw": 3})
    ax.text(0.2 + alpha * 0.27, -0.45, r"$\Delta h = \alpha\, d_t$" + "\n(fine-tuning step)", color="#27ae60",
            ha="center", va="top")
    ax.set_xlim(-0.3, 1.45)
    ax.set_ylim(-1.25, 1.05)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("feature directions in superposition")
    changes = {"target": alpha, "harmful": alpha * cos_near, "unrelated": alpha * cos_far}
    bars.bar(list(changes), list(changes.values()), color=[colours[k] for k in angles])
    for i, value in enumerate(changes.values()):
        bars.text(i, value + 0.02, f"{value:.2f}", ha="center")
    bars.set_ylim(0, alpha * 1.15)
    bars.set_ylabel(r"$\Delta f_j \approx \alpha \langle d_j, d_t \rangle$")
    bars.set_title("first-order change of each feature")
    return fig
