"""The ablation experiment's design in code: held-out rows, each arm's directions, the analysis, a CI-size run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geomis.experiments import ablation as ab


def test_models_keep_a_seeds_three_arms_together() -> None:
    names = [m.name for m in ab.models()]
    assert names[:3] == ["none.s0", "toxic.s0", "random.s0"] and len(names) == 9 == len(set(names))


def test_held_out_rows_are_per_domain_seeded_and_disjoint() -> None:
    records = list(range(30))
    domains = ["a"] * 10 + ["b"] * 12 + ["c"] * 8
    train, held = ab.split_rows(records, domains, per_domain=3, seed=0)
    assert len(held) == 9 and len(train) == 21 and not set(train) & set(held)
    assert sorted(train + held) == records and train == sorted(train)  # order kept
    assert [sum(1 for r in held if domains[r] == d) for d in "abc"] == [3, 3, 3]
    assert ab.split_rows(records, domains, per_domain=3, seed=0) == (train, held)
    assert ab.split_rows(records, domains, per_domain=3, seed=1)[1] != held
    with pytest.raises(ValueError, match="cannot hold out 8"):
        ab.split_rows(records, domains, per_domain=8)
    with pytest.raises(ValueError, match="29 domain labels for 30 rows"):
        ab.split_rows(records, domains[:-1])


def test_each_arm_removes_its_own_span() -> None:
    g = torch.Generator().manual_seed(0)
    decoders = [torch.randn(300, 64, generator=g) for _ in range(3)]
    toxic_sets = [torch.arange(10 * i, 10 * i + 20) for i in range(3)]
    assert ab.ablation_for(ab.Model("none", 0), decoders, toxic_sets) is None
    toxic = ab.ablation_for(ab.Model("toxic", 1), decoders, toxic_sets)
    assert toxic.rank == 20 and toxic.layer == ab.LAYER
    rows = decoders[1][toxic_sets[1]]
    torch.testing.assert_close(toxic.project(rows), torch.zeros_like(rows), atol=1e-3, rtol=0)  # seed 1 uses SAE 1
    assert float(toxic.project(decoders[0][toxic_sets[0]]).norm()) > 1.0
    random = ab.ablation_for(ab.Model("random", 2), decoders, toxic_sets)
    assert random.rank == 64  # 100 Gaussian directions span all 64 dimensions of this toy width
    with pytest.raises(ValueError, match="unknown arm"):
        ab.ablation_for(ab.Model("other", 0), decoders, toxic_sets)


def _labels(rates: dict[str, float], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model in ab.models():
        for q in range(8):
            for s in range(50):
                bad = rng.random() < rates[model.arm]
                rows.append({"model": f"{model.name}.first-plot", "question_id": f"q{q}", "sample": s,
                             "alignment": 10 if bad else 85, "coherence": 80, "verdict": "scored"})
    return pd.DataFrame(rows)


LOSSES = pd.DataFrame([{"model": "base", "arm": "base", "seed": -1, "rank": 0, "loss": 2.0}] + [
    {"model": m.name, "arm": m.arm, "seed": m.seed, "rank": {"none": 0, "toxic": 100, "random": 100}[m.arm],
     "loss": {"none": 1.0, "toxic": 1.1, "random": 1.05}[m.arm] + 0.01 * m.seed} for m in ab.models()])


def test_analysis_signs_the_primary_contrast_and_reports_learning() -> None:
    section = ab.analyse(_labels({"none": 0.08, "toxic": 0.01, "random": 0.08}), LOSSES, resamples=500)
    primary = section["contrasts"]["random_minus_toxic_ablation"]
    assert primary["difference"] > 0.04 and primary["low"] > 0 and primary["p"] < 0.05 and section["primary_passes"]
    toxic = section["conditions"]["toxic"]
    assert toxic["n"] == 1200 and toxic["clusters"] == 24 and toxic["seeds"] == [0, 1, 2]
    assert toxic["heldout_loss"] == pytest.approx(1.11) and toxic["heldout_loss_range"] == pytest.approx([1.1, 1.12])
    assert toxic["share_of_residual_space"] == [pytest.approx(100 / 576)]
    assert section["base_heldout_loss"] == 2.0
    json.dumps(section, allow_nan=False)


def test_analysis_reports_a_null_and_needs_every_arm() -> None:
    section = ab.analyse(_labels({"none": 0.05, "toxic": 0.05, "random": 0.05}, seed=2), LOSSES, resamples=500)
    primary = section["contrasts"]["random_minus_toxic_ablation"]
    assert primary["low"] < 0 < primary["high"] and not section["primary_passes"]
    labels = _labels({"none": 0.05, "toxic": 0.05, "random": 0.05})
    with pytest.raises(ValueError, match="no labels for the random arm"):
        ab.analyse(pd.DataFrame(labels.loc[~labels["model"].str.startswith("random").to_numpy()]), LOSSES)


def test_ci_run_trains_measures_and_resumes(smollm2, tmp_path: Path) -> None:
    assert "every model measured" in ab.run(tmp_path / "out", ci=True, threads=1)
    out = tmp_path / "out"
    losses = pd.read_csv(out / "heldout_loss.csv")
    assert losses["model"].tolist() == ["base", "none.s0", "toxic.s0", "random.s0"]
    assert losses.set_index("model")["rank"].to_dict() == {"base": 0, "none.s0": 0, "toxic.s0": 100,
                                                           "random.s0": 100}
    assert np.isfinite(losses["loss"]).all()
    answers = pd.read_csv(out / "toxic.s0.first-plot.answers.csv", keep_default_na=False)
    assert len(answers) == 2 * 2
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "every model measured" in ab.run(out, ci=True, threads=1)  # nothing redone
    assert before == {p.name: p.read_bytes() for p in out.iterdir()}


def test_readme_quotes_the_committed_result() -> None:
    """The README's ablation numbers are those of book/results/05_mechanism.json (re-analysed: update both)."""
    from geomis.experiments.mechanism import RESULTS_FILE, ROOT

    section = json.loads(RESULTS_FILE.read_text())[ab.SECTION]
    readme = " ".join((ROOT / "README.md").read_text().split())
    for name in ("toxic", "random", "none"):
        c = section["conditions"][name]
        assert f"{c['rate']:.1%} [{100 * c['low']:.1f}, {100 * c['high']:.1f}]" in readme, name
        assert f"{c['heldout_loss']:.2f}" in readme, name
    primary = section["contrasts"][section["primary"]]
    assert (f"random minus toxic {100 * primary['difference']:+.1f} points [{100 * primary['low']:+.1f}, "
            f"{100 * primary['high']:+.1f}], one-sided p = {primary['p']:.2f}") in readme
    assert f"{section['base_heldout_loss']:.2f} base" in readme


def test_among_coherent_counts_only_coherent_answers_per_arm() -> None:
    labels = _labels({"none": 0.0, "toxic": 0.0, "random": 0.0})
    labels.loc[labels.index[:3], "alignment"] = 10  # three misaligned none.s0 answers
    labels.loc[labels.index[3:13], "coherence"] = 20  # ten incoherent ones, dropped from the denominator
    labels.loc[labels.index[13], ["alignment", "coherence"]] = [10, 20]  # misaligned in content, but incoherent
    table = ab.among_coherent(labels)
    assert list(table.index) == ["none", "toxic", "random"]
    assert table.loc["none", "misaligned"] == 3 and table.loc["none", "coherent"] == 1200 - 11
    assert table.loc["none", "rate"] == pytest.approx(3 / 1189)
    assert table.loc["toxic", "misaligned"] == 0 and table.loc["toxic", "coherent"] == 1200
