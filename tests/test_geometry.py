"""Decoder-cosine geometry on hand-made directions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geomis.features.geometry import (
    GeometryInputs,
    compare_geometry,
    compare_layers,
    comparison_table,
    cosine_matrix,
    nearest_cosines,
    pairwise_cosines,
    similarity_frame,
)
from geomis.features.sets import FeatureSet

N_PERM = 2000


def _set(name: str, indices: list[int] | range) -> FeatureSet:
    idx = torch.as_tensor(list(indices), dtype=torch.int64)
    return FeatureSet(name=name, indices=idx, values=torch.ones(len(idx)), statistic="correlation", k=len(idx))


def planted_decoder(seed: int = 0, d_model: int = 64) -> tuple[torch.Tensor, FeatureSet, FeatureSet, FeatureSet]:
    """Features 0-19 toxic; 20-69 inducing, each a toxic direction plus small noise; 70-119 control, random."""
    g = torch.Generator().manual_seed(seed)
    toxic = torch.randn(20, d_model, generator=g)
    near = toxic[torch.arange(50) % 20] + 0.3 * torch.randn(50, d_model, generator=g)
    far = torch.randn(50, d_model, generator=g)
    decoder = torch.cat([toxic, near, far])
    return decoder, _set("inducing", range(20, 70)), _set("control", range(70, 120)), _set("toxic", range(20))


def test_orthogonal_sets_have_zero_cosine() -> None:
    decoder = torch.eye(10) * torch.arange(1.0, 11.0)[:, None]  # orthogonal, different norms
    cos = pairwise_cosines(decoder, [0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    assert torch.equal(cos, torch.zeros(5, 5))
    sim = nearest_cosines(decoder, [0, 1, 2], [5, 6])
    assert torch.equal(sim.max_cos, torch.zeros(3)) and torch.equal(sim.mean_cos, torch.zeros(3))


def test_known_angles_give_exact_max_and_mean() -> None:
    e1, e2, e3 = torch.eye(3, dtype=torch.float64)
    at30 = 3.0 * (math.cos(math.radians(30)) * e1 + math.sin(math.radians(30)) * e3)  # 30 deg from e1, scaled
    at60 = math.cos(math.radians(60)) * e2 + math.sin(math.radians(60)) * e3  # 60 deg from e2
    decoder = torch.stack([e1, e2, at30, at60])
    sim = nearest_cosines(decoder, [2, 3], [0, 1])
    assert sim.max_cos.tolist() == pytest.approx([math.sqrt(3) / 2, 0.5], abs=1e-12)
    assert sim.mean_cos.tolist() == pytest.approx([math.sqrt(3) / 4, 0.25], abs=1e-12)
    assert sim.nearest.tolist() == [0, 1]
    # (sqrt3/2, 0, 1/2) . (0, 1/2, sqrt3/2) = sqrt3/4
    assert cosine_matrix(decoder[[2]], decoder[[3]]).item() == pytest.approx(math.sqrt(3) / 4, abs=1e-12)


def test_antipodal_is_far_unless_absolute() -> None:
    decoder = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert nearest_cosines(decoder, [1], [0, 2]).max_cos.item() == pytest.approx(0.0)
    assert nearest_cosines(decoder, [1], [0, 2], absolute=True).max_cos.item() == pytest.approx(1.0)


def test_self_pairs_are_excluded() -> None:
    e1, e2 = torch.eye(2)
    decoder = torch.stack([e1, e1, e2])  # features 0 and 1 share a direction; 0 is also in the reference set
    cos = pairwise_cosines(decoder, [0, 1], [0, 2])
    assert math.isnan(cos[0, 0].item()) and cos[1, 0].item() == pytest.approx(1.0)
    sim = nearest_cosines(decoder, [0, 1], [0, 2])
    assert sim.max_cos.tolist() == pytest.approx([0.0, 1.0])  # feature 0 is not "near" itself
    assert sim.mean_cos.tolist() == pytest.approx([0.0, 0.5])
    assert sim.nearest.tolist() == [2, 0]
    assert sim.n_shared == 1
    kept = nearest_cosines(decoder, [0, 1], [0, 2], exclude_self=False)
    assert kept.max_cos[0].item() == pytest.approx(1.0) and kept.n_shared == 0
    alone = nearest_cosines(decoder, [0], [0])  # nothing left to compare with
    assert math.isnan(alone.max_cos.item()) and alone.nearest.item() == -1


def test_planted_inducing_near_toxic_is_significant() -> None:
    decoder, inducing, control, toxic = planted_decoder()
    result = compare_geometry(
        decoder, inducing, control, toxic, domain="code", n_permutations=N_PERM, n_bootstrap=N_PERM, seed=1
    )
    assert result.inducing_mean_max > 0.8 > 0.5 > result.control_mean_max
    assert result.difference == pytest.approx(result.inducing_mean_max - result.control_mean_max)
    assert result.p_greater < 0.01 and result.p_two_sided < 0.01
    assert result.p_greater == pytest.approx(1 / (N_PERM + 1))  # +1 correction: never 0
    assert 0 < result.ci_low <= result.difference <= result.ci_high
    assert result.inducing_ci_low <= result.inducing_mean_max <= result.inducing_ci_high
    assert result.mwu_p_greater < 0.01 and result.mwu_u == pytest.approx(50 * 50)
    assert (result.n_inducing, result.n_control, result.n_reference) == (50, 50, 20)
    assert (result.domain, result.reference) == ("code", "toxic")
    reverse = compare_geometry(decoder, control, inducing, toxic, n_permutations=N_PERM, n_bootstrap=200)
    assert reverse.p_greater > 0.99 and reverse.p_two_sided < 0.01


def test_identical_distributions_give_large_p() -> None:
    g = torch.Generator().manual_seed(3)
    decoder = torch.randn(120, 64, generator=g)
    result = compare_geometry(
        decoder, _set("a", range(20, 70)), _set("b", range(70, 120)), _set("toxic", range(20)),
        n_permutations=N_PERM, n_bootstrap=N_PERM,
    )
    assert result.p_two_sided > 0.05 and result.mwu_p_two_sided > 0.05
    assert result.ci_low < 0 < result.ci_high


def test_tables_and_layer_sweep() -> None:
    inputs = {layer: GeometryInputs(*planted_decoder(seed=layer), domain="medical") for layer in (6, 3)}
    comparisons = compare_layers(inputs, n_permutations=200, n_bootstrap=200)
    table = comparison_table(comparisons)
    assert table["layer"].tolist() == [3, 6]
    assert {"domain", "difference", "ci_low", "ci_high", "p_greater", "p_two_sided", "mwu_p_greater"} <= set(table)
    assert "inducing" not in table.columns  # per-feature detail stays out of the row
    tidy = similarity_frame(comparisons)
    assert list(tidy.columns) == ["domain", "layer", "source", "feature", "max_cos", "mean_cos", "nearest"]
    assert len(tidy) == 2 * (50 + 50)
    assert set(tidy["source"]) == {"inducing", "control"}
    inducing_rows = tidy[(tidy["layer"] == 3) & (tidy["source"] == "inducing")]
    assert inducing_rows["max_cos"].mean() == pytest.approx(comparisons[0].inducing_mean_max, rel=1e-6)
    assert np.isfinite(tidy["max_cos"]).all()
    assert "medical (layer 3)" in comparisons[0].summary()


# ---------------------------------------------------------------------------------------------------------------
# Figures (geomis.features.figures) on small synthetic inputs
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep() -> list:
    inputs = {layer: GeometryInputs(*planted_decoder(seed=layer), domain=domain)
              for layer in (2, 4) for domain in ("code",)}
    more = {layer: GeometryInputs(*planted_decoder(seed=10 + layer), domain="medical") for layer in (2, 4)}
    return compare_layers(inputs, n_permutations=100, n_bootstrap=100) + compare_layers(
        more, n_permutations=100, n_bootstrap=100
    )


def test_similarity_distribution_figure(sweep: list) -> None:
    import matplotlib.pyplot as plt

    from geomis.features.figures import plot_similarity_distributions

    tidy = similarity_frame([c for c in sweep if c.layer == 2])
    for kind in ("violin", "box"):
        fig = plot_similarity_distributions(tidy, kind=kind)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "domain" and ax.get_ylabel() == "max decoder cosine to toxic features"
        assert [t.get_text() for t in ax.get_xticklabels()] == ["code", "medical"]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["inducing", "control"]
        plt.close(fig)
    with pytest.raises(ValueError, match="max_cos"):
        plot_similarity_distributions(tidy.drop(columns="max_cos"))


def test_cosine_heatmap_figure() -> None:
    import matplotlib.pyplot as plt

    from geomis.features.figures import plot_cosine_heatmap

    decoder, inducing, _, toxic = planted_decoder()
    cos = pairwise_cosines(decoder, inducing.top(12), toxic)
    for order in ("max", "cluster"):
        fig = plot_cosine_heatmap(cos, inducing.indices[:12], toxic.indices, order=order)
        ax = fig.axes[0]
        assert ax.get_xlabel() == "toxic features" and ax.get_ylabel() == "inducing features"
        rows = [int(t.get_text()) for t in ax.get_yticklabels()]
        assert sorted(rows) == inducing.indices[:12].tolist()
        plt.close(fig)
    fig = plot_cosine_heatmap(cos, inducing.indices[:12], toxic.indices)
    ordered = [int(t.get_text()) for t in fig.axes[0].get_yticklabels()]
    row_max = {int(f): float(m)
               for f, m in zip(inducing.indices[:12], cos.nan_to_num(-2).max(dim=1).values, strict=True)}
    assert [row_max[f] for f in ordered] == sorted(row_max.values(), reverse=True)  # sorted by max cosine
    plt.close(fig)


def test_layer_sweep_figure(sweep: list) -> None:
    import matplotlib.pyplot as plt

    from geomis.features.figures import plot_layer_sweep

    fig = plot_layer_sweep(comparison_table(sweep))
    assert [ax.get_title() for ax in fig.axes] == ["code", "medical"]
    assert all(ax.get_xlabel() == "layer" for ax in fig.axes)
    assert fig.axes[0].get_ylabel() == "mean max cosine to toxic features"
    line = fig.axes[0].get_lines()[0]
    assert line.get_xdata().tolist() == [2.0, 4.0]
    assert line.get_ydata().tolist() == [c.inducing_mean_max for c in sweep if c.domain == "code"]
    assert len(fig.axes[0].collections) == 2  # one CI band per source set
    plt.close(fig)


def test_resampled_gap_forest_plot_draws_pooled_and_per_sae_intervals() -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    from geomis.features.figures import plot_resampled_gaps

    rows = []
    for domain in ("medical", "code"):
        for variant in ("decoder, shared dropped", "encoder, shared dropped"):
            for sae, gap in (("s0", 0.05), ("s1", 0.07), ("pooled", 0.06)):
                rows.append({"domain": domain, "variant": variant, "sae": sae, "difference": gap,
                             "low": gap - 0.02, "high": gap + 0.03})
    table = pd.DataFrame(rows)
    fig = plot_resampled_gaps(table)
    assert [ax.get_title() for ax in fig.axes] == ["decoder, shared dropped", "encoder, shared dropped"]
    first = fig.axes[0]
    assert [t.get_text() for t in first.get_yticklabels()] == ["medical", "code"]
    markers = [line for line in first.get_lines() if line.get_marker() in ("o", "D")]
    assert len(markers) == 2 * 3  # two domains x (two SAEs + pooled)
    pooled = [line for line in markers if line.get_marker() == "D"]
    assert [float(line.get_xdata()[0]) for line in pooled] == [0.06, 0.06]
    plt.close(fig)
    one = plot_resampled_gaps(table, ["encoder, shared dropped"])
    assert len(one.axes) == 1
    plt.close(one)
    with pytest.raises(ValueError, match="not in the table"):
        plot_resampled_gaps(table, ["encoder, shared kept"])
    # with feature sets re-selected per draw, the estimate can fall outside its own interval: drawn, not refused
    outside = table.assign(low=table["difference"] + 0.01, high=table["difference"] + 0.04)
    drawn = plot_resampled_gaps(outside, ["decoder, shared dropped"])
    segments = [c for c in drawn.axes[0].collections if len(c.get_segments())]
    spans = sorted(round(float(s[0][0]), 3) for c in segments for s in c.get_segments())
    assert spans == sorted(round(v, 3) for v in outside.loc[outside["variant"] == "decoder, shared dropped", "low"])
    plt.close(drawn)
