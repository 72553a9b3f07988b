"""Figures for the emergent-misalignment chapter; one function per figure, each returning a matplotlib Figure.

Inputs are tidy tables: pooled rows of :func:`geomis.evaluation.metrics.misalignment_rates` (one per model) for the
rate bar plot, and :meth:`geomis.evaluation.dynamics.DynamicsProbe.frame` tables (with a ``run`` column) plus
per-checkpoint rates for the training-dynamics plot. Like the other figure modules, this one sits at the end of the
data path and no stage imports it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from geomis.stats import require_columns

__all__ = ["MEASURES", "plot_ablation", "plot_filter_effect", "plot_judge_calibration", "plot_misalignment_rates",
           "plot_probe_changes", "plot_rates_by_question", "plot_steering", "plot_steering_development",
           "plot_training_dynamics"]

MEASURES = {"coherent": "among coherent answers", "overall": "among all answers"}
"""Rate columns of :func:`geomis.evaluation.metrics.misalignment_rates` (``rate_<measure>``) and their legend labels."""


def _interval_point(ax: Axes, estimate: float, low: float, high: float, y: int, colour: object,
                    marker: str = "o") -> None:
    """One estimate at height ``y`` with its interval as a horizontal error bar."""
    ax.errorbar([estimate], [y], xerr=[[estimate - low], [high - estimate]], fmt=marker, capsize=3, color=colour)


def plot_misalignment_rates(rates: pd.DataFrame, label: str = "model",
                            measures: Sequence[str] = ("coherent", "overall")) -> Figure:
    """Bar plot of each model's misalignment rate with its 95% interval, one bar per measure.

    ``rates`` has one row per model: ``label`` and, per measure, ``rate_<m>``, ``rate_<m>_low``, ``rate_<m>_high``
    (the pooled rows of :func:`~geomis.evaluation.metrics.misalignment_rates`). Models keep their row order.
    """
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise ValueError(f"measures must be among {', '.join(MEASURES)}")
    require_columns(rates, [label] + [f"rate_{m}{s}" for m in measures for s in ("", "_low", "_high")], "rates table")
    models = list(dict.fromkeys(rates[label].astype(str)))
    long = pd.DataFrame([{"model": str(row[label]), "measure": MEASURES[m], "rate": row[f"rate_{m}"],
                          "low": row[f"rate_{m}_low"], "high": row[f"rate_{m}_high"]}
                         for _, row in rates.iterrows() for m in measures])
    hues = [MEASURES[m] for m in measures]
    fig, ax = plt.subplots(figsize=(1.3 * len(models) + 2.5, 3.8), layout="constrained")
    sns.barplot(data=long, x="model", y="rate", hue="measure", order=models, hue_order=hues, errorbar=None,
                palette="deep", ax=ax)
    bars = list(ax.containers)  # one bar container per measure; ax.errorbar below appends its own containers
    for container, measure in zip(bars, hues, strict=True):
        part = long[long["measure"] == measure].set_index("model").reindex(models)
        centres = [bar.get_x() + bar.get_width() / 2 for bar in container]
        rate = part["rate"].to_numpy(dtype=float)
        errors = np.vstack([rate - part["low"].to_numpy(dtype=float), part["high"].to_numpy(dtype=float) - rate])
        ax.errorbar(centres, np.nan_to_num(rate), yerr=np.nan_to_num(errors), fmt="none", ecolor="black",
                    capsize=3, linewidth=1)
    ax.set_xlabel(label)
    ax.set_ylabel("misalignment rate (95% Wilson interval)")
    ax.set_ylim(0, max(0.05, float(np.nanmax(long["high"].to_numpy(dtype=float), initial=0.0)) * 1.1))
    ax.set_title("Misaligned answers to the eight first-plot questions")
    ax.tick_params(axis="x", rotation=20)
    ax.legend(title=None, loc="upper left")
    return fig


def plot_rates_by_question(rates: pd.DataFrame, order: Sequence[str] | None = None) -> Figure:
    """Misaligned rate per question and condition with its interval: one row per question, one colour per condition.

    ``rates`` has ``question_id``, ``condition``, ``rate``, ``low`` and ``high`` (e.g. the ``per_question`` rows of
    Chapter 3's results file); ``order`` fixes the conditions' order (default: as they first appear).
    """
    require_columns(rates, ["question_id", "condition", "rate", "low", "high"], "per-question rates")
    conditions = list(order) if order is not None else list(dict.fromkeys(rates["condition"].astype(str)))
    questions = list(dict.fromkeys(rates["question_id"].astype(str)))
    fig, ax = plt.subplots(figsize=(7.2, 0.45 * len(questions) + 1.4), layout="constrained")
    width = 0.7 / max(1, len(conditions))
    for k, (condition, colour) in enumerate(zip(conditions, sns.color_palette("deep"), strict=False)):
        part = rates[rates["condition"].astype(str) == condition].set_index("question_id").reindex(questions)
        y = np.arange(len(questions)) + (k - (len(conditions) - 1) / 2) * width
        rate = part["rate"].to_numpy(dtype=float)
        errors = np.vstack([rate - part["low"].to_numpy(dtype=float), part["high"].to_numpy(dtype=float) - rate])
        ax.errorbar(rate, y, xerr=np.nan_to_num(errors), fmt="o", color=colour, capsize=2, markersize=4,
                    linewidth=1, label=condition)
    ax.set_yticks(np.arange(len(questions)), questions)
    ax.invert_yaxis()
    ax.set_xlim(left=0)
    ax.set_xlabel("misaligned share of all answers (95% interval)")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Misaligned answers, question by question")
    return fig


def plot_probe_changes(changes: pd.DataFrame, rates: pd.DataFrame | None = None) -> Figure:
    """The probe gap's change per model with its interval, and (optional) each model's misaligned rate against it.

    ``changes`` has ``model``, ``reference``, ``estimate``, ``low`` and ``high`` (one row per model and reference);
    ``rates`` has ``model`` and ``rate`` (the rate by reading): with it a second panel plots rate against the change
    over ``base``.
    """
    require_columns(changes, ["model", "reference", "estimate", "low", "high"], "probe changes")
    panels = 1 if rates is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels + 0.6, 0.32 * changes["model"].nunique() + 2.2),
                             squeeze=False, layout="constrained")
    ax = axes[0][0]
    models = list(dict.fromkeys(changes["model"].astype(str)))
    references = list(dict.fromkeys(changes["reference"].astype(str)))
    for k, (reference, colour) in enumerate(zip(references, sns.color_palette("deep"), strict=False)):
        part = changes[changes["reference"].astype(str) == reference].set_index("model").reindex(models)
        y = np.arange(len(models)) + (k - (len(references) - 1) / 2) * 0.3
        value = part["estimate"].to_numpy(dtype=float)
        errors = np.vstack([value - part["low"].to_numpy(dtype=float), part["high"].to_numpy(dtype=float) - value])
        ax.errorbar(value, y, xerr=np.nan_to_num(errors), fmt="o", color=colour, capsize=2, markersize=4,
                    label=f"vs {reference}")
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(np.arange(len(models)), models)
    ax.invert_yaxis()
    ax.set_xlabel("change of the probe gap (nats per token, 95% interval)")
    ax.set_title("Judge-free probe: toward the misaligned answers?")
    ax.legend(loc="lower right", fontsize="small")
    if rates is not None:
        require_columns(rates, ["model", "rate"], "rates")
        over_base = changes[changes["reference"].astype(str) == "base"].merge(rates, on="model")
        ax2 = axes[0][1]
        sns.scatterplot(data=over_base, x="estimate", y="rate", hue="model", ax=ax2, s=40)
        ax2.set_xlabel("probe gap change over base (nats per token)")
        ax2.set_ylabel("misaligned share by reading")
        ax2.set_title("Rate against probe, per model")
        ax2.legend(fontsize="x-small")
    return fig


def plot_training_dynamics(dynamics: pd.DataFrame, rates: pd.DataFrame | None = None, run: str = "run",
                           value: str = "shift", gaps: pd.DataFrame | None = None) -> Figure:
    """Projection shift of evaluation answers onto feature directions across checkpoints, and the rate alongside.

    ``dynamics`` holds :meth:`~geomis.evaluation.dynamics.DynamicsProbe.frame` rows with a ``run`` column: per step,
    direction set and chat its ``value`` (default ``shift``, the mean :math:`\\Delta f_j`). Lines are means over
    chats with a seeded 95% bootstrap band; colour is the direction set, line style the run. ``rates`` (optional)
    has ``run``, ``step``, ``rate_overall`` and its interval: it adds a panel with the misalignment rate. ``gaps``
    (optional) has ``run``, ``step``, ``gap_change``, ``low`` and ``high`` (:meth:`DynamicsProbe.gap_changes` rows):
    it adds a panel with the misalignment probe's gap change.
    """
    require_columns(dynamics, [run, "step", "directions", value], "dynamics table")
    panels = 1 + (rates is not None) + (gaps is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels + 0.6, 3.8), squeeze=False, layout="constrained")
    ax = axes[0][0]
    sns.lineplot(data=dynamics, x="step", y=value, hue="directions", style=run, markers=True, dashes=True,
                 errorbar=("ci", 95), n_boot=500, seed=0, ax=ax)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(r"mean $\Delta f_j = \langle d_j, \Delta h \rangle$" if value == "shift" else value)
    ax.set_title("Evaluation answers' hidden states, projected")
    if rates is not None:
        require_columns(rates, [run, "step", "rate_overall", "rate_overall_low", "rate_overall_high"], "rates table")
        ax2 = axes[0][1]
        for name, part in rates.groupby(run, sort=False):
            part = part.sort_values("step")
            line, = ax2.plot(part["step"], part["rate_overall"], marker="o", label=str(name))
            ax2.fill_between(part["step"], part["rate_overall_low"], part["rate_overall_high"], alpha=0.2,
                             color=line.get_color())
        ax2.set_xlabel("optimizer step")
        ax2.set_ylabel("misalignment rate, all answers (95% CI)")
        ax2.set_ylim(bottom=0)
        ax2.set_title("Misalignment at the same checkpoints")
        ax2.legend(title=run)
    if gaps is not None:
        require_columns(gaps, [run, "step", "gap_change", "low", "high"], "gap changes")
        ax3 = axes[0][panels - 1]
        for name, part in gaps.groupby(run, sort=False):
            part = part.sort_values("step")
            line, = ax3.plot(part["step"], part["gap_change"], marker="o", label=str(name))
            ax3.fill_between(part["step"], part["low"], part["high"], alpha=0.2, color=line.get_color())
        ax3.axhline(0.0, color="grey", linewidth=0.8)
        ax3.set_xlabel("optimizer step")
        ax3.set_ylabel("probe gap change since step 0 (nats/token)")
        ax3.set_title("Judge-free probe at the same checkpoints")
        ax3.legend(title=run)
    return fig


def plot_judge_calibration(calibration: pd.DataFrame, group: str = "split") -> Figure:
    """Reliability plot of a judge's P(misaligned) against the observed misaligned share, one line per ``group``.

    ``calibration`` has the columns of :func:`geomis.judges.validation.calibration_table` (``mean_predicted``,
    ``observed``, ``n``) and ``group``; the marker area grows with the answers in each bin.
    """
    require_columns(calibration, [group, "mean_predicted", "observed", "n"], "calibration table")
    fig, ax = plt.subplots(figsize=(4.6, 4.2), layout="constrained")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for (name, part), colour in zip(calibration.groupby(group, sort=False), sns.color_palette("deep"), strict=False):
        ax.plot(part["mean_predicted"], part["observed"], color=colour, linewidth=1, label=str(name))
        ax.scatter(part["mean_predicted"], part["observed"], s=8 + 60 * np.sqrt(part["n"] / part["n"].max()),
                   color=colour)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("judge's P(misaligned), binned")
    ax.set_ylabel("share misaligned by the reference")
    ax.set_title("Calibration on held-out answers")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_filter_effect(section: dict, reference: float | None = None, clip: float = -1.0,
                       scored_by: str = "reading", only: Sequence[str] | None = None) -> Figure:
    """Chapter 4's filter-effect experiment in three panels: the misaligned rate of each condition; each filter's
    relative reduction against ``unfiltered`` (intervals clipped at ``clip``, the paper's ``reference`` drawn once);
    the judge-free probe's reduction against ``unfiltered``. ``section`` is the ``fine_tune_effect`` results section
    (or ``geomis reproduce``'s results, whose answers are ``scored_by`` a judge); ``only`` keeps those conditions.
    """
    conditions = {name: c for name, c in section.get("conditions", {}).items() if only is None or name in only}
    if "unfiltered" not in conditions:
        raise ValueError("the section has no unfiltered condition to compare with")
    names = ["unfiltered"] + [c for c in conditions if c != "unfiltered"]
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 0.4 * len(names) + 2.2), layout="constrained")
    colours = dict(zip(names, sns.color_palette("deep", len(names)), strict=True))

    def rows(ax: Axes, values: list[tuple[str, float, float, float]], title: str, xlabel: str) -> None:
        if not values:  # say why the panel is empty rather than leave bare axes
            why = "; ".join(section.get("why_withheld") or []) or "no such contrast in this section"
            ax.text(0.5, 0.5, "not reported:\n" + textwrap.fill(why, 42), ha="center", va="center",
                    transform=ax.transAxes, fontsize="small", wrap=True)
            ax.set_axis_off()
            ax.set_title(title)
            return
        for y, (name, estimate, low, high) in enumerate(values):
            _interval_point(ax, estimate, low, high, y, colours[name])
        ax.set_yticks(range(len(values)), [v[0] for v in values])
        ax.invert_yaxis()
        ax.set_title(title)
        ax.set_xlabel(xlabel)

    rows(axes[0], [(n, conditions[n]["rate"], conditions[n]["low"], conditions[n]["high"]) for n in names],
         f"Misaligned answers (by {scored_by})", "share of all answers (95% cluster interval)")
    axes[0].set_xlim(left=0)
    contrasts = section.get("contrasts", {})
    reductions = [(n, c["relative_reduction"], max(c["low"], clip), c["high"]) for n in names[1:]
                  if (c := contrasts.get(f"relative_reduction/{n}")) is not None]
    rows(axes[1], reductions, "Relative reduction vs unfiltered", "(unfiltered - filtered) / unfiltered")
    if reductions:
        axes[1].axvline(0.0, color="grey", linewidth=0.8)
        if reference is not None:
            axes[1].axvline(reference, color="black", linestyle="--", linewidth=1)
            axes[1].annotate(f" paper: {reference:.1%}", (reference, 0.5), xycoords=("data", "axes fraction"),
                             ha="left", va="center", fontsize="small")
        if any(c["low"] < clip for n in names[1:] if (c := contrasts.get(f"relative_reduction/{n}"))):
            axes[1].set_xlabel(f"(unfiltered - filtered) / unfiltered; intervals cut at {clip:.0%}")
    probes = [(n, c["difference"], c["low"], c["high"]) for n in names[1:]
              if (c := contrasts.get(f"probe/unfiltered_minus_{n}")) is not None]
    rows(axes[2], probes, "Judge-free probe: reduction vs unfiltered", "probe gap, unfiltered - filtered (nats)")
    if probes:
        axes[2].axvline(0.0, color="grey", linewidth=0.8)
    return fig


def plot_steering(section: dict) -> Figure:
    """Chapter 5's steering test in three panels: the misaligned rate of each direction at the primary alpha; the
    dose-response of the misaligned rate and of the coherent share against alpha, ``toxic`` against the random
    directions pooled. ``section`` is the ``steering`` results section."""
    dose = section.get("dose_response", {})
    conditions = section.get("conditions", {})
    if not conditions or not dose:
        raise ValueError("the section has no conditions or no dose-response curves")
    alpha = float(section["primary_alpha"]["alpha"])
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.4), layout="constrained")
    names = list(conditions)
    colours = dict(zip(["toxic", "misalignment", "specific", "random"], sns.color_palette("deep", 4), strict=True))
    for y, name in enumerate(names):
        c = conditions[name]
        _interval_point(axes[0], c["rate"], c["low"], c["high"], y, colours.get(name.split("@")[0], "grey"))
    axes[0].set_yticks(range(len(names)), [name.split("@")[0] for name in names])
    axes[0].invert_yaxis()
    axes[0].set_xlim(left=0)
    axes[0].set_title(f"Misaligned answers at alpha = {alpha:g}")
    axes[0].set_xlabel("share of all answers (95% cluster interval)")
    for curve, points in dose.items():
        if not points:
            continue
        x = np.array([p["alpha"] for p in points])
        colour = colours.get(curve, "grey")
        rate = np.array([p["rate"] for p in points])
        axes[1].fill_between(x, [p["low"] for p in points], [p["high"] for p in points], color=colour, alpha=0.2)
        axes[1].plot(x, rate, "o-", color=colour, label=curve)
        axes[2].plot(x, [p["coherent_share"] for p in points], "o-", color=colour, label=curve)
    for ax, title, ylabel in ((axes[1], "Dose-response: misaligned", "share of all answers"),
                              (axes[2], "Dose-response: coherent", "share coherent (> 50)")):
        ax.axvline(alpha, color="black", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("alpha (added vector = alpha x R x unit direction)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    axes[2].axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    return fig


def plot_steering_development(section: dict, threshold: float = 0.5) -> Figure:
    """Chapter 5's steering development step: the coherent share of the development answers against alpha, one line
    per direction (random directions pooled) with 95% intervals, the rule's ``threshold`` and the unsteered share.
    ``section`` is the ``steering`` results section with ``development_coherence``."""
    curves = section.get("development_coherence")
    if not curves:
        raise ValueError("the section has no development_coherence curves")
    fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
    colours = dict(zip(["toxic", "misalignment", "specific", "random"], sns.color_palette("deep", 4), strict=True))
    for curve, points in curves.items():
        x = np.array([p["alpha"] for p in points])
        colour = colours.get(curve, "grey")
        ax.fill_between(x, [p["low"] for p in points], [p["high"] for p in points], color=colour, alpha=0.12)
        ax.plot(x, [p["share"] for p in points], "o-", color=colour, label=curve)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1, label=f"rule's threshold ({threshold:.0%})")
    ax.set_xscale("symlog", linthresh=0.025)
    ax.set_xlim(-0.005, 1.0)
    ax.set_xticks(sorted({p["alpha"] for points in curves.values() for p in points}))
    ax.get_xaxis().set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(0, 1)
    ax.set_xlabel("alpha (added vector = alpha x R x unit direction; symlog scale)")
    ax.set_ylabel("development answers coherent")
    ax.set_title("Steering's development step: coherent share against the steering size")
    ax.legend(fontsize="small", ncol=2)
    return fig


def plot_ablation(section: dict) -> Figure:
    """Chapter 5's ablation test in two panels: each arm's misaligned rate (95% interval) and its held-out loss on the
    inducing rows (mean over seeds, range as a bar, the base model dashed). ``section`` is the ``ablation`` section."""
    conditions = section.get("conditions", {})
    if not conditions:
        raise ValueError("the section has no conditions")
    names = list(conditions)
    colours = dict(zip(["none", "toxic", "random"], sns.color_palette("deep", 3), strict=True))
    fig, (rates, losses) = plt.subplots(1, 2, figsize=(10.5, 3.0), layout="constrained")
    for y, name in enumerate(names):
        c = conditions[name]
        colour = colours.get(name, "grey")
        _interval_point(rates, c["rate"], c["low"], c["high"], y, colour)
        if c.get("heldout_loss") is not None:
            low, high = c["heldout_loss_range"]
            _interval_point(losses, c["heldout_loss"], low, high, y, colour, marker="s")
    for ax in (rates, losses):
        ax.set_yticks(range(len(names)), [f"{name} (rank {', '.join(map(str, conditions[name]['ranks']))})"
                                          for name in names])
        ax.invert_yaxis()
    rates.set_xlim(left=0)
    rates.set_title("Misaligned answers after fine-tuning")
    rates.set_xlabel("share of all answers (95% cluster interval)")
    if section.get("base_heldout_loss") is not None:
        losses.axvline(section["base_heldout_loss"], color="black", linestyle="--", linewidth=1, label="base model")
        losses.legend(fontsize="small")
    losses.set_title("In-domain learning")
    losses.set_xlabel("held-out loss on inducing rows (nats; range over seeds)")
    return fig
