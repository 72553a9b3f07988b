"""Chapter 4's filter-effect experiment: its design, its mixed set, which rows each condition removes, and a
resumable CI-size run with its development gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_em_power

from geomis.experiments import filter_effect as fe


def test_the_design_trains_the_gate_model_first_and_the_primary_seeds_early() -> None:
    order = fe.models()
    names = [m.name for m in order]
    assert names[0] == "unfiltered.s0" and len(set(names)) == len(names) == 25
    primary = [m for m in order if m.condition in fe.PRIMARY and m.budget == fe.BUDGET]
    assert sorted(m.name for m in primary) == sorted(f"{c}.s{s}" for c in fe.PRIMARY for s in fe.SEEDS)
    assert max(names.index(m.name) for m in primary) < names.index("mean-difference.s0")
    assert {m.name for m in order if m.budget != fe.BUDGET} == {"geometry-b10.s0", "random-b10.s0",
                                                                "geometry-b25.s0", "random-b25.s0"}
    assert {m.answers_per_question for m in primary} == {100}
    assert {m.answers_per_question for m in order if m not in primary} == {25}
    assert "**Design of the filter-effect test**" in (fe.__doc__ or "")


def test_the_mixed_set_is_every_harmful_answer_and_as_many_general_chats() -> None:
    mixed = fe.mixed_set()
    assert len(mixed) == 1560 and int(mixed.inducing.sum()) == 780
    assert set(mixed.source) == {"medical_bad", "legal_bad", "career_bad", "neutral_answers"}
    benign = np.array(mixed.source) == "neutral_answers"
    assert not mixed.inducing[benign].any() and benign.sum() == 780
    texts = [record.raw for record in mixed.records]
    assert len(set(texts)) == len(texts)  # no row twice
    again = fe.mixed_set()
    assert [r.raw for r in again.records] == texts  # seeded
    assert mixed.inducing[:40].any() and not mixed.inducing[:40].all()  # shuffled, not blocked


def test_each_condition_removes_what_the_design_says() -> None:
    n = 20
    inducing = np.array([True, False] * 10)
    geometry = np.linspace(0, 1, n)
    geometry[3] = np.nan  # unscorable: removed first
    judge = np.linspace(1, 0, n)
    judge[0] = -1.0  # left unscored by the judge: stored below every score, kept last
    scores = pd.DataFrame({"inducing": inducing, "geometry": geometry, "judge": judge})
    assert not fe.removed_rows(scores, "unfiltered", 0, 0.5).any()
    assert (fe.removed_rows(scores, "oracle", 0, 0.5) == inducing).all()
    top = fe.removed_rows(scores, "geometry", 0, 0.5)
    assert top.sum() == 10 and top[3] and top[-9:].all()
    assert not fe.removed_rows(scores, "judge", 0, 0.5)[0]
    assert fe.removed_rows(scores, "geometry", 0, 0.1).sum() == 2
    draws = [fe.removed_rows(scores, "random", seed, 0.5) for seed in (0, 1)]
    assert all(d.sum() == 10 for d in draws) and (draws[0] != draws[1]).any()
    assert (fe.removed_rows(scores, "random", 0, 0.5) == draws[0]).all()


@pytest.mark.slow
def test_a_small_run_scores_once_gates_and_resumes(tmp_path: Path, module_cache: Path) -> None:
    out = tmp_path / "fe"
    fe.run(out, ci=True, limit=1, honour_gate=True)
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 48 and int(scores["inducing"].sum()) == 24
    assert {"geometry", "mean-difference", "embedding", "judge"} <= set(scores.columns)
    assert scores["geometry"].notna().all() and scores["mean-difference"].notna().all()
    for suffix in (".first-plot.answers.csv", ".probe.csv", ".dev-probe.csv"):
        assert (out / f"unfiltered.s0{suffix}").is_file()
    gate = json.loads((out / "gate.json").read_text())
    assert gate["model"] == "unfiltered.s0" and gate["passed"] == (gate["low"] > 0)
    answers = pd.read_csv(out / "unfiltered.s0.first-plot.answers.csv")
    assert len(answers) == 4 and set(answers["model"]) == {"unfiltered.s0.first-plot"}

    gate["passed"], gate["low"] = True, 0.001  # let the tiny run go on, as a passing gate would
    (out / "gate.json").write_text(json.dumps(gate))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    fe.run(out, ci=True, limit=1, honour_gate=True)  # resumes: the next model only, nothing redone
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    new = sorted(set(after) - set(before))
    assert new == ["geometry.s0.dev-probe.csv", "geometry.s0.first-plot.answers.csv", "geometry.s0.probe.csv"]
    assert all(after[name] == stamp for name, stamp in before.items() if name != "timings.csv")
    assert pd.read_csv(out / "timings.csv")["model"].tolist() == ["unfiltered.s0", "geometry.s0"]


def test_a_failed_gate_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fe"
    out.mkdir()
    mixed = fe.mixed_set(ci=True)
    pd.DataFrame({"row": range(len(mixed)), "inducing": mixed.inducing, "geometry": 0.0, "mean-difference": 0.0,
                  "embedding": 0.0, "judge": 0.0}).to_csv(out / "scores.csv", index=False)
    pd.DataFrame({"id": ["a"], "gap": [0.0]}).to_csv(out / "base.dev-probe.csv", index=False)
    for suffix in (".first-plot.answers.csv", ".probe.csv", ".dev-probe.csv"):
        (out / f"unfiltered.s0{suffix}").write_text("x\n")
    (out / "gate.json").write_text(json.dumps({"passed": False}))
    fe.run(out, ci=True, honour_gate=True)
    assert "gate" in capsys.readouterr().out and not (out / "geometry.s0.probe.csv").exists()
    assert fe.GATE_WAIVED and "**Amendment 1**" in (fe.__doc__ or "")  # the run goes on by default (Amendment 1)


def _labels(folder: Path, rates: dict[str, float]) -> Path:
    return test_em_power._labels(folder, rates, per_cell=30)


def _probe(folder: Path, model: str, shift: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gaps = np.linspace(-2, 1, 30) + shift + rng.normal(0, 0.05, 30)
    pd.DataFrame({"id": [f"i{k}" for k in range(30)], "gap": gaps}).to_csv(folder / f"{model}.probe.csv", index=False)


def test_the_analysis_signs_every_contrast_so_that_positive_means_the_filter_helps(tmp_path: Path) -> None:
    rates = {**{f"unfiltered.s{s}": 0.20 for s in fe.SEEDS}, **{f"geometry.s{s}": 0.05 for s in fe.SEEDS},
             **{f"random.s{s}": 0.12 for s in fe.SEEDS}, **{f"oracle.s{s}": 0.01 for s in fe.SEEDS},
             "geometry-b10.s0": 0.18}
    labels = _labels(tmp_path, rates)
    for seed in fe.SEEDS:
        _probe(tmp_path, f"unfiltered.s{seed}", 0.3, seed)
        _probe(tmp_path, f"geometry.s{seed}", 0.0, 10 + seed)
        _probe(tmp_path, f"random.s{seed}", 0.15, 20 + seed)
    section = fe.analyse(tmp_path, labels)
    conditions, contrasts = section["conditions"], section["contrasts"]
    assert set(conditions) == {"unfiltered", "geometry", "random", "oracle", "geometry-b10"}
    assert conditions["geometry"]["clusters"] == 24 and conditions["geometry-b10"]["clusters"] == 8
    primary = contrasts["relative_reduction/geometry"]
    expected = 1 - conditions["geometry"]["rate"] / conditions["unfiltered"]["rate"]
    assert primary["relative_reduction"] == pytest.approx(expected) and 0 < primary["low"] < expected
    assert primary["difference"] > 0 and primary["p"] < 0.01 and primary["alpha"] == fe.ALPHA
    versus_random = contrasts["random_minus_geometry"]
    assert versus_random["difference"] > 0 and versus_random["p"] < 0.05 and versus_random["alpha"] == fe.ALPHA
    assert contrasts["relative_reduction/oracle"]["alpha"] is None  # secondary
    assert contrasts["random_minus_oracle"]["difference"] > 0
    small = contrasts["relative_reduction/geometry-b10"]
    assert small["low"] < small["relative_reduction"] < small["high"]
    probe = contrasts["probe/unfiltered_minus_geometry"]
    assert probe["difference"] == pytest.approx(0.3, abs=0.05) and probe["seeds"] == 3 and probe["p"] < 0.001
    assert "Design of" not in section["design"] and "Primary outcome" in section["design"]
    assert section["paper_reduction"] == 0.345 and section["gate"] is None


def test_the_analysis_reads_the_removal_of_every_model_from_the_scores(tmp_path: Path) -> None:
    n = 40
    inducing = np.arange(n) % 2 == 0
    scores = pd.DataFrame({"inducing": inducing, "geometry": inducing + np.linspace(0, 0.5, n),
                           "mean-difference": np.linspace(0, 1, n), "embedding": np.linspace(1, 0, n),
                           "judge": inducing.astype(float)})
    scores.to_csv(tmp_path / "scores.csv", index=False)
    section = fe.analyse(tmp_path, _labels(tmp_path, {"unfiltered.s0": 0.1, "geometry.s0": 0.05}))
    removal = section["removal"]
    assert set(removal) == {m.name for m in fe.models()}
    assert removal["geometry.s0"]["precision"] == 1.0 and removal["oracle.s1"]["recall"] == 1.0
    assert removal["unfiltered.s2"]["removed"] == 0 and removal["geometry-b10.s0"]["removed"] == 4
    assert 0.2 < removal["random.s0"]["precision"] < 0.8


def test_readme_quotes_the_committed_primary_result() -> None:
    """The README's filter-effect numbers are those of 04_geometry_filter.json (re-analysed: update both)."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    effect = json.loads((root / "book" / "results" / "04_geometry_filter.json").read_text())["fine_tune_effect"]
    c, r = effect["conditions"], effect["contrasts"]["relative_reduction/geometry"]
    v = effect["contrasts"]["random_minus_geometry"]
    quote = (f"unfiltered {c['unfiltered']['rate']:.2%} [{c['unfiltered']['low']:.2%}, {c['unfiltered']['high']:.2%}] "
             f"of answers misaligned, geometry {c['geometry']['rate']:.2%}, random {c['random']['rate']:.2%}; "
             f"geometry's relative reduction {r['relative_reduction']:+.0%} [{r['low']:+.0%}, {r['high']:+.0%}] "
             f"(one-sided p = {r['p']:.2f}), random minus geometry {v['difference']:+.2%} [{v['low']:+.2%}, "
             f"{v['high']:+.2%}] (p = {v['p']:.2f})")
    assert quote in " ".join((root / "README.md").read_text().split())
