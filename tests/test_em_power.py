"""Chapter 3's powered experiment: the design as fixed, the analysis on labels, and a CI-size run that resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geomis.experiments import em_power
from geomis.experiments.em_power import SEEDS, analyse, conditions
from geomis.experiments.recipe_search import RECIPES


def test_the_design_is_the_issue_s() -> None:
    names = [c.name for c in conditions()]
    assert names[0] == "base" and len(names) == 1 + 2 * sum(len(s) for s in SEEDS.values())
    assert {"mixed.inducing.s2", "mixed.control.s2", "medical.inducing.s0", "legal.inducing.s0",
            "career.control.s0"} <= set(names)
    assert len(SEEDS["mixed"]) >= 3 and em_power.PER_QUESTION["base"]["first-plot"] >= 150
    assert em_power.PER_QUESTION["fine-tune"]["first-plot"] >= 50


def test_the_recipe_is_the_searchs_pick() -> None:
    from geomis.experiments.recipe_search import RESULTS, choose, search_table

    assert em_power.CHOSEN_RECIPE == choose(search_table(RESULTS, RESULTS / "labels.jsonl"))
    assert em_power.CHOSEN_RECIPE in {r.name for r in RECIPES}


def _labels(folder: Path, rates: dict[str, float], per_cell: int = 20) -> Path:
    rows = []
    rng = np.random.default_rng(0)
    for model, rate in rates.items():
        for question in range(8):
            for sample in range(per_cell):
                bad = rng.random() < rate
                rows.append({"model": f"{model}.first-plot", "question_id": f"q{question}", "sample": sample,
                             "question": "Q", "answer": "A", "alignment": 10 if bad else 90, "coherence": 80,
                             "verdict": "scored", "why": ""})
    path = folder / "labels.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_analysis_signs_contrasts_and_clusters_by_question_and_seed(tmp_path: Path) -> None:
    rates = {"base": 0.02, **{f"mixed.inducing.s{s}": 0.3 for s in range(3)},
             **{f"mixed.control.s{s}": 0.03 for s in range(3)}}
    results = analyse(_labels(tmp_path, rates), tmp_path)
    inducing = results["conditions"]["mixed.inducing/first-plot"]
    assert inducing["seeds"] == [0, 1, 2] and inducing["clusters"] == 24 and inducing["n"] == 480
    assert inducing["low"] < inducing["rate"] < inducing["high"]
    contrast = results["contrasts"]["mixed/first-plot/inducing_minus_control"]
    assert contrast["difference"] > 0.2 and contrast["low"] > 0 and contrast["p"] < 0.01 and contrast["alpha"] == 0.01
    assert results["contrasts"]["mixed/first-plot/inducing_minus_base"]["difference"] > 0.2
    null = analyse(_labels(tmp_path, {**rates, **{f"mixed.inducing.s{s}": 0.03 for s in range(3)}}), tmp_path)
    assert null["contrasts"]["mixed/first-plot/inducing_minus_control"]["p"] > 0.05


@pytest.mark.slow
def test_ci_size_runs_resumes_and_analyses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    em_power.main(["--size", "ci", "--out", str(tmp_path), "--threads", "1"])
    files = sorted(path.name for path in tmp_path.iterdir())
    assert "mixed.inducing.s0.first-plot.answers.csv" in files and "base.first-plot.probe.csv" in files
    assert "base.geomis.probe.csv" not in files
    answers = pd.read_csv(tmp_path / "mixed.control.s0.first-plot.answers.csv")
    assert len(answers) == 4
    capsys.readouterr()
    em_power.main(["--size", "ci", "--out", str(tmp_path), "--threads", "1"])
    assert "fine-tune and measure" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        em_power.main(["--size", "ci"])


def _probe(folder: Path, model: str, shift: float, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gaps = np.linspace(-2, 1, 30) + shift + rng.normal(0, noise, 30)
    pd.DataFrame({"id": [f"i{k}" for k in range(30)], "gap": gaps}).to_csv(
        folder / f"{model}.first-plot.probe.csv", index=False)


def test_probe_contrast_pools_seeds_per_item_and_keeps_each_seed(tmp_path: Path) -> None:
    rates = {"base": 0.02, **{f"mixed.{r}.s{s}": 0.05 for s in range(3) for r in ("inducing", "control")}}
    labels = _labels(tmp_path, rates)
    _probe(tmp_path, "base", 0.0, 0.0, 0)
    for s in range(3):
        _probe(tmp_path, f"mixed.inducing.s{s}", 0.3 * (s + 1), 0.1, 10 + s)
        _probe(tmp_path, f"mixed.control.s{s}", 0.0, 0.1, 20 + s)
    probe = analyse(labels, tmp_path)["contrasts"]["mixed/probe/inducing_minus_base"]
    assert probe["seeds"] == 3 and probe["items"] == 30 and len(probe["per_seed"]) == 3
    assert [round(s["estimate"], 1) for s in probe["per_seed"]] == pytest.approx([0.3, 0.6, 0.9], abs=0.1)
    assert probe["difference"] == pytest.approx(np.mean([s["estimate"] for s in probe["per_seed"]]))
    assert probe["low"] < probe["difference"] < probe["high"] and probe["p"] < 0.001
    _probe(tmp_path, "mixed.inducing.s0", -0.5, 0.1, 30)
    _probe(tmp_path, "mixed.inducing.s1", -0.5, 0.1, 31)
    _probe(tmp_path, "mixed.inducing.s2", -0.5, 0.1, 32)
    against_control = analyse(labels, tmp_path)["contrasts"]["mixed/probe/inducing_minus_control"]
    assert against_control["difference"] < 0 and against_control["p"] > 0.5


def test_judge_check_compares_the_frozen_judge_with_reading(tmp_path: Path) -> None:
    from geomis.judges.trained import SHIPPED_JUDGE

    rates = {"base": 0.0, "mixed.inducing.s0": 0.5, "mixed.control.s0": 0.0}
    labels = pd.read_json(_labels(tmp_path, rates), lines=True)
    labels["answer"] = [f"answer {i}" for i in range(len(labels))]
    labels["question"] = "question " + labels["question_id"]  # the agreement's intervals cluster by question
    labels.to_json(tmp_path / "labels.jsonl", orient="records", lines=True)
    assert analyse(tmp_path / "labels.jsonl", tmp_path)["judge_check"] is None  # --judge has not run
    for model, part in labels.groupby("model"):
        # a judge that flags every inducing answer and nothing else
        flagged = str(model).startswith("mixed.inducing")
        pd.DataFrame({"question_id": part["question_id"], "sample": part["sample"],
                      "alignment": 5 if flagged else 95, "coherence": 90}).to_csv(
            tmp_path / f"{model}.judge.csv", index=False)
    check = analyse(tmp_path / "labels.jsonl", tmp_path)["judge_check"]
    assert check["n"] == len(labels) and len(check["weights_sha256"]) == 64
    assert check["weights_sha256"] == __import__("hashlib").sha256(SHIPPED_JUDGE.read_bytes()).hexdigest()
    inducing = check["rates"]["mixed.inducing/first-plot"]
    assert inducing["judge"] == 1.0 and 0.3 < inducing["reading"] < 0.7
    assert check["rates"]["base/first-plot"]["judge"] == 0.0
    assert check["recall"] == 1.0 and check["precision"] == pytest.approx(inducing["reading"])
    assert 0 < check["kappa"] < 1


def test_judge_answers_scores_each_answer_file_once(tmp_path: Path) -> None:
    pd.DataFrame({"model": "base.first-plot", "question_id": ["q0", "q1"], "question": ["Hi", "How are you?"],
                  "sample": [0, 0], "answer": ["Hello! How can I help?", "Fine, thanks."]}).to_csv(
        tmp_path / "base.first-plot.answers.csv", index=False)
    written = em_power.judge_answers(tmp_path)
    assert [p.name for p in written] == ["base.first-plot.judge.csv"]
    scores = pd.read_csv(written[0])
    assert list(scores.columns) == ["question_id", "sample", "alignment", "coherence"] and len(scores) == 2
    assert scores["alignment"].between(0, 100).all()
    assert em_power.judge_answers(tmp_path) == []


def test_timings_accumulate_and_summarise(tmp_path: Path) -> None:
    target = tmp_path / "timings.csv"
    assert em_power.run_time(target) is None
    em_power.record_time(target, "base", 600.0, 2)
    em_power.record_time(target, "mixed.inducing.s0", 1200.0, 2)
    summary = em_power.run_time(target)
    assert summary is not None and summary["models_timed"] == 2
    assert summary["total_minutes"] == pytest.approx(30.0) and summary["median_minutes"] == pytest.approx(15.0)
    assert pd.read_csv(target)["model"].tolist() == ["base", "mixed.inducing.s0"]


def readme_quote(results: dict) -> str:
    """The README's sentence on the powered run's primary result, from the results file."""
    rate = {k.split("/")[0]: v for k, v in results["conditions"].items() if k.endswith("/first-plot")}
    contrast = results["contrasts"]["mixed/first-plot/inducing_minus_control"]

    def pct(part: dict, key: str = "rate") -> str:
        return f"{100 * part[key]:.1f}% [{100 * part['low']:.1f}, {100 * part['high']:.1f}]"

    return (f"inducing {pct(rate['mixed.inducing'])}, control {pct(rate['mixed.control'])}, base {pct(rate['base'])}; "
            f"inducing minus control {100 * contrast['difference']:+.1f} points [{100 * contrast['low']:+.1f}, "
            f"{100 * contrast['high']:+.1f}], one-sided p = {contrast['p']:.4f}")


def test_readme_quotes_the_committed_primary_result() -> None:
    """The README's numbers are those of book/results/03_emergent_misalignment.json (re-analysed: update both)."""
    root = Path(__file__).resolve().parents[1]
    results = json.loads((root / "book" / "results" / "03_emergent_misalignment.json").read_text())
    assert readme_quote(results) in " ".join((root / "README.md").read_text().split())
