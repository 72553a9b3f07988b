"""Figures of the emergent-misalignment chapter on small synthetic tables."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from geomis.evaluation.figures import (  # noqa: E402
    plot_misalignment_rates,
    plot_probe_changes,
    plot_rates_by_question,
    plot_training_dynamics,
)
from geomis.evaluation.metrics import misalignment_rates  # noqa: E402


def _pooled(model: str, misaligned: int, coherent: int, n: int) -> pd.Series:
    scores = pd.DataFrame({"question": "q", "alignment": [10.0] * misaligned + [90.0] * (n - misaligned),
                           "coherence": [80.0] * coherent + [20.0] * (n - coherent), "verdict": "scored"})
    row = misalignment_rates(scores).iloc[-1].copy()
    row["model"] = model
    return row


def test_rate_bars_have_the_rates_and_their_intervals() -> None:
    rates = pd.DataFrame([_pooled("base", 0, 30, 60), _pooled("bad", 12, 40, 60), _pooled("good", 1, 50, 60)])
    fig = plot_misalignment_rates(rates)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "bad", "good"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["among coherent answers", "among all answers"]
    coherent, overall = ax.containers[:2]
    assert [bar.get_height() for bar in coherent] == pytest.approx(rates["rate_coherent"].tolist())
    assert [bar.get_height() for bar in overall] == pytest.approx(rates["rate_overall"].tolist())
    error_bars = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(error_bars) == 2
    segments = error_bars[1].lines[2][0].get_segments()  # vertical bars of the "overall" measure
    assert [s[1][1] for s in segments] == pytest.approx(rates["rate_overall_high"].tolist())
    assert [s[0][1] for s in segments] == pytest.approx(rates["rate_overall_low"].tolist())
    plt.close(fig)
    with pytest.raises(ValueError, match="measures"):
        plot_misalignment_rates(rates, measures=("median",))
    with pytest.raises(ValueError, match="rate_overall_low"):
        plot_misalignment_rates(rates.drop(columns="rate_overall_low"))


def test_dynamics_figure_draws_one_line_per_direction_set_and_run() -> None:
    rng = np.random.default_rng(0)
    rows = [{"run": run, "step": step, "directions": name, "chat": chat,
             "shift": (0.1 * step if name == "toxic" and run == "bad" else 0.0) + rng.normal(0, 0.01)}
            for run in ("bad", "good") for step in (0, 5, 10) for name in ("toxic", "random") for chat in range(4)]
    dynamics = pd.DataFrame(rows)
    fig = plot_training_dynamics(dynamics)
    assert len(fig.axes) == 1 and fig.axes[0].get_xlabel() == "optimizer step"
    data_lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 3]
    assert len(data_lines) == 4
    assert max(max(line.get_ydata()) for line in data_lines) == pytest.approx(1.0, abs=0.02)
    plt.close(fig)

    rates = pd.DataFrame({"run": ["bad"] * 3 + ["good"] * 3, "step": [0, 5, 10] * 2,
                          "rate_overall": [0.0, 0.1, 0.2, 0.0, 0.0, 0.01],
                          "rate_overall_low": [0.0, 0.05, 0.1, 0.0, 0.0, 0.0],
                          "rate_overall_high": [0.05, 0.2, 0.3, 0.05, 0.05, 0.06]})
    fig = plot_training_dynamics(dynamics, rates)
    right = fig.axes[1]
    assert [line.get_ydata().tolist() for line in right.get_lines()] == [[0.0, 0.1, 0.2], [0.0, 0.0, 0.01]]
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["bad", "good"]
    plt.close(fig)
    gaps = pd.DataFrame({"run": ["bad"] * 3, "step": [0, 5, 10], "gap_change": [0.0, 0.1, 0.3],
                         "low": [0.0, 0.0, 0.1], "high": [0.0, 0.2, 0.5]})
    fig = plot_training_dynamics(dynamics, rates, gaps=gaps)
    assert len(fig.axes) == 3
    lines = [list(line.get_ydata()) for line in fig.axes[2].get_lines() if len(line.get_xdata()) == 3]
    assert lines == [[0.0, 0.1, 0.3]]
    plt.close(fig)
    assert len(plot_training_dynamics(dynamics, gaps=gaps).axes) == 2
    plt.close("all")
    with pytest.raises(ValueError, match="directions"):
        plot_training_dynamics(dynamics.drop(columns="directions"))
    with pytest.raises(ValueError, match="gap_change"):
        plot_training_dynamics(dynamics, gaps=gaps.drop(columns="gap_change"))



def test_rates_by_question_puts_each_condition_on_each_question_row() -> None:
    rates = pd.DataFrame({"question_id": ["q1", "q2", "q1", "q2"], "condition": ["base", "base", "bad", "bad"],
                          "rate": [0.0, 0.1, 0.2, 0.4], "low": [0.0, 0.05, 0.1, 0.3], "high": [0.1, 0.2, 0.3, 0.5]})
    fig = plot_rates_by_question(rates, order=["bad", "base"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["q1", "q2"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["bad", "base"]
    points = [line.get_xdata().tolist() for line in ax.get_lines() if line.get_marker() == "o"]
    assert points == [[0.2, 0.4], [0.0, 0.1]]
    plt.close(fig)
    with pytest.raises(ValueError, match="high"):
        plot_rates_by_question(rates.drop(columns="high"))


def test_probe_changes_plots_each_reference_and_the_rate_panel() -> None:
    changes = pd.DataFrame({"model": ["a", "a", "b", "b"], "reference": ["base", "control"] * 2,
                            "estimate": [0.2, 0.1, -0.1, 0.0], "low": [0.1, 0.0, -0.2, -0.1],
                            "high": [0.3, 0.2, 0.0, 0.1]})
    fig = plot_probe_changes(changes)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["vs base", "vs control"]
    points = [line.get_xdata().tolist() for line in ax.get_lines() if line.get_marker() == "o"]
    assert points == [[0.2, -0.1], [0.1, 0.0]]
    plt.close(fig)
    fig = plot_probe_changes(changes, pd.DataFrame({"model": ["a", "b"], "rate": [0.05, 0.0]}))
    offsets = fig.axes[1].collections[0].get_offsets()
    assert offsets.tolist() == [[0.2, 0.05], [-0.1, 0.0]]
    plt.close(fig)


def test_filter_effect_figure_draws_each_condition_and_the_reference_once() -> None:
    from geomis.evaluation.figures import plot_filter_effect

    def rate(r: float) -> dict:
        return {"rate": r, "low": r / 2, "high": r * 2}
    section = {"conditions": {"geometry": rate(0.01), "unfiltered": rate(0.02), "random": rate(0.015)},
               "contrasts": {"relative_reduction/geometry": {"relative_reduction": 0.5, "low": -3.0, "high": 0.8},
                             "relative_reduction/random": {"relative_reduction": 0.25, "low": -0.5, "high": 0.6},
                             "probe/unfiltered_minus_geometry": {"difference": 0.08, "low": 0.05, "high": 0.1}}}
    fig = plot_filter_effect(section, reference=0.345)
    rates, reductions, probes = fig.axes
    assert [t.get_text() for t in rates.get_yticklabels()] == ["unfiltered", "geometry", "random"]
    assert [t.get_text() for t in reductions.get_yticklabels()] == ["geometry", "random"]
    assert [t.get_text() for t in probes.get_yticklabels()] == ["geometry"]
    dashed = [line for line in reductions.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and dashed[0].get_xdata()[0] == 0.345
    assert "cut at -100%" in reductions.get_xlabel()  # geometry's interval reaches -300%
    assert rates.get_title() == "Misaligned answers (by reading)"
    judged = plot_filter_effect(section, only=("unfiltered", "geometry"), scored_by="judge trained")
    assert [t.get_text() for t in judged.axes[0].get_yticklabels()] == ["unfiltered", "geometry"]
    assert [t.get_text() for t in judged.axes[1].get_yticklabels()] == ["geometry"]  # random left out everywhere
    assert judged.axes[0].get_title() == "Misaligned answers (by judge trained)"
    withheld = plot_filter_effect({"conditions": section["conditions"], "why_withheld": ["the judge is not valid"],
                                   "contrasts": {k: v for k, v in section["contrasts"].items() if "probe" in k}})
    empty = withheld.axes[1]  # no reduction to draw: the panel says why instead of showing bare axes
    assert not empty.axison and "not reported" in empty.texts[0].get_text()
    assert "the judge is not valid" in empty.texts[0].get_text().replace("\n", " ")
    assert [t.get_text() for t in withheld.axes[2].get_yticklabels()] == ["geometry"]  # the probe is still drawn
    with pytest.raises(ValueError, match="no unfiltered condition"):
        plot_filter_effect({"conditions": {"geometry": rate(0.01)}})
    with pytest.raises(ValueError, match="no unfiltered condition"):
        plot_filter_effect(section, only=("geometry",))


def test_steering_figure_draws_each_direction_and_both_dose_curves() -> None:
    from geomis.evaluation.figures import plot_steering

    def point(alpha: float, rate: float, coherent: float) -> dict:
        return {"alpha": alpha, "rate": rate, "low": rate / 2, "high": rate * 2, "coherent_share": coherent}
    section = {"primary_alpha": {"alpha": 0.2},
               "conditions": {name: point(0.2, r, 0.6) for name, r in
                              (("toxic@0.2", 0.05), ("misalignment@0.2", 0.03), ("specific@0.2", 0.02),
                               ("random@0.2", 0.01))},
               "dose_response": {"toxic": [point(a, r, c) for a, r, c in ((0, 0.01, 0.8), (0.2, 0.05, 0.6),
                                                                          (0.4, 0.08, 0.3))],
                                 "random": [point(a, 0.01, c) for a, c in ((0, 0.8), (0.2, 0.75), (0.4, 0.7))]}}
    fig = plot_steering(section)
    rates, dose, coherent = fig.axes
    assert [t.get_text() for t in rates.get_yticklabels()] == ["toxic", "misalignment", "specific", "random"]
    assert "alpha = 0.2" in rates.get_title()
    curves = [line for line in dose.get_lines() if line.get_marker() == "o"]
    assert [line.get_label() for line in curves] == ["toxic", "random"]
    assert list(curves[0].get_ydata()) == [0.01, 0.05, 0.08]
    assert [list(line.get_ydata()) for line in coherent.get_lines() if line.get_marker() == "o"][1] == [0.8, 0.75, 0.7]
    assert any(line.get_linestyle() == "--" and line.get_xdata()[0] == 0.2 for line in dose.get_lines())
    with pytest.raises(ValueError, match="no conditions"):
        plot_steering({"primary_alpha": {"alpha": 0.2}, "conditions": {}, "dose_response": {}})


def test_steering_development_figure_draws_each_curve_and_the_threshold() -> None:
    from geomis.evaluation.figures import plot_steering_development

    def curve(shares: list[float]) -> list[dict]:
        return [{"alpha": a, "share": v, "low": v - 0.1, "high": v + 0.1, "n": 120}
                for a, v in zip((0.0, 0.025, 0.1), shares, strict=True)]
    section = {"development_coherence": {"toxic": curve([0.53, 0.34, 0.28]), "random": curve([0.53, 0.36, 0.43])}}
    ax = plot_steering_development(section).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["toxic"].get_ydata()) == [0.53, 0.34, 0.28]
    assert list(lines["random"].get_xdata()) == [0, 0.025, 0.1]
    assert list(lines["rule's threshold (50%)"].get_ydata()) == [0.5, 0.5]
    with pytest.raises(ValueError, match="no development_coherence"):
        plot_steering_development({})


def test_ablation_figure_draws_each_arm_its_loss_and_the_base_line() -> None:
    from geomis.evaluation.figures import plot_ablation

    def arm(rate: float, loss: float, rank: int) -> dict:
        return {"rate": rate, "low": rate / 2, "high": rate * 2, "heldout_loss": loss,
                "heldout_loss_range": [loss - 0.1, loss + 0.2], "ranks": [rank]}
    section = {"conditions": {"none": arm(0.04, 3.0, 0), "toxic": arm(0.01, 3.6, 100), "random": arm(0.03, 3.3, 100)},
               "base_heldout_loss": 3.99}
    fig = plot_ablation(section)
    rates, losses = fig.axes
    assert [t.get_text() for t in rates.get_yticklabels()] == ["none (rank 0)", "toxic (rank 100)", "random (rank 100)"]
    points = [line for line in rates.get_lines() if line.get_marker() == "o"]
    assert [line.get_xdata()[0] for line in points] == [0.04, 0.01, 0.03]
    squares = [line for line in losses.get_lines() if line.get_marker() == "s"]
    assert [line.get_xdata()[0] for line in squares] == [3.0, 3.6, 3.3]
    assert any(line.get_linestyle() == "--" and line.get_xdata()[0] == 3.99 for line in losses.get_lines())
    with pytest.raises(ValueError, match="no conditions"):
        plot_ablation({"conditions": {}})
