"""The steering experiment's design in code: directions, arms, the alpha rule, the analysis, and a CI-size run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geomis.experiments import steering as st


def test_directions_follow_the_design() -> None:
    g = torch.Generator().manual_seed(0)
    decoders = [torch.randn(50, 8, generator=g) for _ in range(3)]
    sets = [torch.tensor([1, 4, 7]), torch.tensor([0, 2]), torch.tensor([9])]
    means = {role: torch.randn(8, generator=g) for role in ("base", "inducing", "control")}
    found = st.steering_directions(decoders, sets, means)
    assert set(found) == set(st.DIRECTIONS)
    for vector in found.values():
        assert float(vector.norm()) == pytest.approx(1.0, abs=1e-6)
    per_sae = []
    for decoder, chosen in zip(decoders, sets, strict=True):
        rows = decoder[chosen] / decoder[chosen].norm(dim=1, keepdim=True)
        per_sae.append(rows.mean(0) / rows.mean(0).norm())
    expected = torch.stack(per_sae).mean(0)
    torch.testing.assert_close(found["toxic"], expected / expected.norm())
    difference = means["inducing"] - means["base"]
    torch.testing.assert_close(found["misalignment"], difference / difference.norm())
    specific = means["inducing"] - means["control"]
    torch.testing.assert_close(found["specific"], specific / specific.norm())
    again = st.steering_directions(decoders, sets, means)
    torch.testing.assert_close(again["random2"], found["random2"])  # seeded
    assert abs(float(found["random0"] @ found["random1"])) < 0.99  # and distinct
    with pytest.raises(ValueError, match="one toxic set per SAE"):
        st.steering_directions(decoders, sets[:2], means)


def test_development_arms_cover_every_direction_and_alpha_once() -> None:
    arms = st.development_arms(st.SIZES["full"])
    assert len(arms) == 1 + 6 * len(st.DIRECTIONS)  # Amendment 2: the grid extended down by 0.025 and 0.05
    assert len({a.name for a in arms}) == len(arms) and len({a.seed for a in arms}) == len(arms)
    assert {a.alpha for a in arms} == set(st.DEV_ALPHAS) == set(st.ALPHAS) | {0.025, 0.05}
    assert all(a.answers == 5 for a in arms)
    first_grid = [a for a in arms if a.alpha in st.ALPHAS]  # the arms sampled before the amendment keep their names
    assert {a.name for a in first_grid} >= {"dev.none.a0", "dev.toxic.a0.1", "dev.random3.a0.8"}


def test_an_off_grid_primary_alpha_joins_the_dose_curve_once() -> None:
    size = st.SIZES["full"]
    assert st.dose_alphas(size, 0.05) == (0.0, 0.05, 0.1, 0.2, 0.4, 0.8)
    assert st.dose_alphas(size, 0.4) == st.ALPHAS
    arms = st.evaluation_arms(size, 0.05)
    assert {a.alpha for a in arms if a.stage == "eval"} == {0.05}
    assert {a.alpha for a in arms if a.stage == "dose"} == {0.0, 0.1, 0.2, 0.4, 0.8}


def test_evaluation_arms_match_the_designed_sizes() -> None:
    arms = st.evaluation_arms(st.SIZES["full"], 0.4)
    per = {(a.stage, a.direction, a.alpha): a.answers for a in arms}
    for name in ("toxic", "misalignment", "specific"):
        assert per[("eval", name, 0.4)] == 100
    assert sum(per[("eval", d, 0.4)] for d in st.RANDOM) == 100
    assert per[("dose", "none", 0.0)] == 25
    for alpha in (0.1, 0.2, 0.8):
        assert per[("dose", "toxic", alpha)] == 25
        assert sum(per[("dose", d, alpha)] for d in st.RANDOM) == 25
    assert not any(a.stage == "dose" and a.alpha == 0.4 for a in arms)  # the evaluation answers serve there
    names = [a.name for a in arms + st.development_arms(st.SIZES["full"])]
    assert len(set(names)) == len(names)


def _dev_labels(shares: dict[float, float], n: int = 20) -> pd.DataFrame:
    rows = []
    for alpha, share in shares.items():
        name = "dev.none.a0" if alpha == 0 else f"dev.toxic.a{alpha:g}"
        coherent = int(round(share * n))
        rows += [{"model": name, "question_id": f"q{i % 4}", "sample": i, "alignment": 80,
                  "coherence": 90 if i < coherent else 10, "verdict": "scored"} for i in range(n)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("shares", "expected"), [
    ({0: 1.0, 0.1: 0.9, 0.2: 0.7, 0.4: 0.3, 0.8: 0.1}, 0.2),
    ({0: 1.0, 0.1: 0.9, 0.2: 0.4, 0.4: 0.6, 0.8: 0.1}, 0.1),  # must *stay* coherent: 0.4 does not count
    ({0: 1.0, 0.1: 0.9, 0.2: 0.8, 0.4: 0.6, 0.8: 0.5}, 0.8),
    ({0: 1.0, 0.1: 0.2, 0.2: 0.1, 0.4: 0.0, 0.8: 0.0}, 0.0),
])
def test_the_primary_alpha_rule(shares, expected) -> None:
    chosen = st.primary_alpha(_dev_labels(shares))
    assert chosen["alpha"] == expected
    assert chosen["coherent_share"]["toxic@0.2"]["n"] == 20


def test_the_alpha_rule_refuses_incomplete_or_foreign_labels() -> None:
    with pytest.raises(ValueError, match="no toxic development labels at alpha 0.8"):
        st.primary_alpha(_dev_labels({0: 1.0, 0.1: 0.9, 0.2: 0.7, 0.4: 0.3}))
    foreign = pd.concat([_dev_labels({0: 1.0}), _dev_labels({0: 1.0}).assign(model="eval.toxic.a0.4")])
    with pytest.raises(ValueError, match="another stage"):
        st.primary_alpha(foreign)


def test_the_not_run_section_gives_each_development_curve_and_the_reading_check() -> None:
    rows = []
    for model, coherent in (("dev.none.a0", 0.75), ("dev.toxic.a0.1", 0.25), ("dev.random0.a0.1", 0.5),
                            ("dev.random1.a0.1", 1.0), ("dev.misalignment.a0.1", 0.5), ("dev.specific.a0.1", 0.5)):
        rows += [{"model": model, "question_id": f"q{i % 4}", "sample": i, "alignment": 80,
                  "coherence": 90 if i < coherent * 8 else 10, "verdict": "scored"} for i in range(8)]
    labels = pd.DataFrame(rows)
    reread = pd.DataFrame(labels.loc[labels["model"].isin(["dev.none.a0", "dev.toxic.a0.1"]).to_numpy()])
    reread = reread.assign(coherence=90)  # the second reading finds every answer coherent
    section = st.development_section(labels, {"alpha": 0.0}, reread, resamples=200)
    assert section["status"].startswith("not run")
    toxic, random = section["development_coherence"]["toxic"], section["development_coherence"]["random"]
    assert [(p["alpha"], p["share"], p["n"]) for p in toxic] == [(0.0, 0.75, 8), (0.1, 0.25, 8)]
    assert random[1]["share"] == 0.75 and random[1]["n"] == 16  # the random directions pooled
    assert all(p["low"] <= p["share"] <= p["high"] for curve in section["development_coherence"].values()
               for p in curve)
    check = section["reading_check"]
    assert check["coherent_share"]["dev.toxic.a0.1"]["share"] == 1.0
    assert check["unsteered_minus_steered"]["none_minus_toxic.a0.1"]["difference"] == 0.0
    assert check["agreement_with_first_reading"] == (6 + 2) / 16  # none: 6 of 8 agree; toxic: 2 of 8
    json.dumps(section, allow_nan=False)


def _eval_labels(toxic_rate: float, random_rate: float, alpha: float = 0.4, seed: int = 0,
                 grid: tuple[float, ...] | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for arm in st.evaluation_arms(st.SIZES["full"], alpha, grid):
        rate = toxic_rate if arm.direction == "toxic" else random_rate if arm.direction != "none" else 0.0
        for q in range(8):
            for s in range(arm.answers):
                bad = rng.random() < rate
                rows.append({"model": arm.name, "question_id": f"q{q}", "sample": s,
                             "alignment": 10 if bad else 85, "coherence": 80, "verdict": "scored"})
    return pd.DataFrame(rows)


def test_analysis_finds_a_real_effect_and_signs_it() -> None:
    small = st.Size(None, 5, None, 100, 25, 25, st.ALPHAS, st.RANDOM, 500, st.DEV_ALPHAS, st.DESIGN2_DOSE)
    section = st.analyse(_eval_labels(0.30, 0.02), {"alpha": 0.4}, small)
    primary = section["contrasts"]["toxic_minus_random_steering"]
    assert primary["difference"] > 0.2 and primary["low"] > 0 and primary["p"] < 0.05
    assert section["primary_passes"]
    assert section["conditions"]["toxic@0.4"]["n"] == 800 and section["conditions"]["random@0.4"]["n"] == 800
    assert section["conditions"]["random@0.4"]["clusters"] == 32  # (direction, question) cells
    assert section["conditions"]["toxic@0.4"]["clusters"] == 8
    assert [p["alpha"] for p in section["dose_response"]["toxic"]] == list(st.ALPHAS)
    assert section["dose_response"]["toxic"][0]["rate"] == 0.0  # alpha 0 is the unsteered set
    assert section["contrasts"]["toxic_minus_unsteered"]["low"] > 0  # the unsteered answers are never misaligned
    coherent = section["among_coherent"]["toxic@0.4"]  # every answer is coherent here: the same rate
    assert coherent["rate"] == section["conditions"]["toxic@0.4"]["rate"] and coherent["of"] == "coherent answers"
    assert "toxic_minus_random_steering/coherent" in section["contrasts"]
    design2 = st.analyse(_eval_labels(0.30, 0.02, alpha=0.1, grid=st.DESIGN2_DOSE), {"alpha": 0.1}, small,
                         grid=st.DESIGN2_DOSE)
    assert [p["alpha"] for p in design2["dose_response"]["toxic"]] == list(st.DESIGN2_DOSE)
    json.dumps(section, allow_nan=False)


def test_analysis_reports_a_null_as_a_null() -> None:
    small = st.Size(None, 5, None, 100, 25, 25, st.ALPHAS, st.RANDOM, 500, st.DEV_ALPHAS, st.DESIGN2_DOSE)
    section = st.analyse(_eval_labels(0.05, 0.05, seed=3), {"alpha": 0.4}, small)
    primary = section["contrasts"]["toxic_minus_random_steering"]
    assert primary["low"] < 0 < primary["high"] and not section["primary_passes"]


def test_analysis_needs_every_evaluation_arm() -> None:
    labels = _eval_labels(0.3, 0.02)
    with pytest.raises(ValueError, match="no evaluation labels for specific"):
        st.analyse(pd.DataFrame(labels.loc[(labels["model"] != "eval.specific.a0.4").to_numpy()]), {"alpha": 0.4})


def test_ci_run_goes_through_every_stage(smollm2, tmp_path: Path) -> None:
    """The script at CI size: it stops for each reading, resumes, and writes the section (labels made up here)."""
    first = st.run(tmp_path, ci=True)
    assert "read them into" in first and "dev_labels.jsonl" in first
    scale = json.loads((tmp_path / "scale.json").read_text())
    assert 50 < scale["R"] < 1000 and scale["tokens"] > 100
    dev = pd.concat(pd.read_csv(p, keep_default_na=False) for p in sorted(tmp_path.glob("dev.*.answers.csv")))
    assert set(dev["model"]) == {a.name for a in st.development_arms(st.SIZES["ci"])}
    labels = dev.assign(alignment=80, coherence=90, verdict="scored")
    unread = pd.DataFrame(labels.loc[(labels["model"] != "dev.toxic.a0.4").to_numpy()])
    (tmp_path / "dev_labels.jsonl").write_text(str(unread.to_json(orient="records", lines=True)))
    assert "1 development arms not read yet (e.g. dev.toxic.a0.4)" in st.run(tmp_path, ci=True)
    (tmp_path / "dev_labels.jsonl").write_text(str(labels.to_json(orient="records", lines=True)))
    second = st.run(tmp_path, ci=True)
    assert "labels.jsonl" in second and json.loads((tmp_path / "alpha.json").read_text())["alpha"] == 0.4
    answers = pd.concat(pd.read_csv(p, keep_default_na=False)
                        for p in sorted(tmp_path.glob("*.answers.csv")) if not p.name.startswith("dev."))
    steered = answers[answers["model"] == "eval.toxic.a0.4"]
    unsteered = answers[answers["model"] == "dose.none.a0"]
    assert len(steered) == 2 * 4 and len(unsteered) == 2 * 2
    read = answers.assign(alignment=50, coherence=90, verdict="scored")
    (tmp_path / "labels.jsonl").write_text(str(read.to_json(orient="records", lines=True)))
    assert "wrote the steering section" in st.run(tmp_path, ci=True)
    section = json.loads((tmp_path / "05_mechanism.json").read_text())["steering"]
    assert section["primary_alpha"]["alpha"] == 0.4 and not section["primary_passes"]
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.answers.csv")}
    st.run(tmp_path, ci=True)  # nothing is resampled
    assert before == {p.name: p.read_bytes() for p in tmp_path.glob("*.answers.csv")}
    # when the rule picks 0 (nothing steered stays coherent): the development section, then Design 2
    for name in ("alpha.json", "labels.jsonl"):
        (tmp_path / name).unlink()
    broken = labels.assign(coherence=np.where(labels["model"] == "dev.none.a0", 90, 10))
    (tmp_path / "dev_labels.jsonl").write_text(str(broken.to_json(orient="records", lines=True)))
    assert "evaluation answers written" in st.run(tmp_path, ci=True)
    results = json.loads((tmp_path / "05_mechanism.json").read_text())
    development = results[st.DEVELOPMENT_SECTION]
    assert development["status"].startswith("not run") and development["primary_alpha"]["alpha"] == 0.0
    assert development["development_coherence"]["toxic"][0]["share"] == 1.0
    design2 = json.loads((tmp_path / "design2.json").read_text())
    assert design2["alpha"] == round(design2["shift_norm"] / scale["R"], 2) == 0.1  # from the committed codes
    answers = pd.concat(pd.read_csv(p, keep_default_na=False)
                        for p in sorted(tmp_path.glob("*.answers.csv")) if not p.name.startswith("dev."))
    assert len(answers[answers["model"] == "eval.toxic.a0.1"]) == 2 * 4
    read = answers.assign(alignment=10, coherence=90, verdict="scored")
    (tmp_path / "labels.jsonl").write_text(str(read.to_json(orient="records", lines=True)))
    assert "wrote the steering section" in st.run(tmp_path, ci=True)
    section = json.loads((tmp_path / "05_mechanism.json").read_text())["steering"]
    assert section["primary_alpha"]["alpha"] == 0.1 and section["primary_alpha"]["rule"].startswith("Design 2")
    assert section["conditions"]["toxic@0.1"]["rate"] == 1.0 and "toxic_minus_unsteered" in section["contrasts"]
    assert [p["alpha"] for p in section["dose_response"]["toxic"]] == [0.0, 0.1]
