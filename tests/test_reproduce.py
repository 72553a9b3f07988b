"""``geomis reproduce``: Chapter 4's design at three sizes, its folder rules, what it reports and withholds, and a
small real run interrupted and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geomis.errors import ConfigError, FileAccessError, OutputExistsError
from geomis.experiments import filter_effect as fe
from geomis.experiments import reproduce as rp

pytestmark = pytest.mark.usefixtures("module_cache")


def test_the_sizes_run_the_chapters_design() -> None:
    default, full, ci = (rp.reproduce_plan(size) for size in ("default", "full", "ci"))
    assert [m.name for m in default.models] == ["unfiltered.s0", "geometry.s0", "random.s0"] and not default.ci
    assert [m.answers_per_question for m in default.models] == [100, 100, 100]  # the design's primary models
    assert [m.name for m in full.models] == [m.name for m in fe.models()] and len(full.models) == 25
    assert full.scored == fe.SCORED and default.scored == ("geometry",) and ci.ci
    assert rp.reproduce_plan("ci", "offline").to_dict()["judge"] == "offline"
    with pytest.raises(ConfigError, match="unknown size 'huge'; choose one of default, full, ci"):
        rp.reproduce_plan("huge")


def test_the_shipped_judge_is_not_taken_for_reading_on_the_cpu_default(tmp_path: Path) -> None:
    trained = rp.judge_validity("trained")
    assert not trained["valid"] and trained["kappa"]["low"] < rp.VALID_KAPPA
    assert "kappa 0.05" in trained["text"] and "describe the judge" in trained["text"]
    assert trained["judge_rate"] > 5 * trained["reading_rate"]
    assert not rp.judge_validity("openai")["valid"] and "not validated" in rp.judge_validity("openai")["text"]
    assert not rp.judge_validity("trained", model="gemma-2-2b")["valid"]  # validated on SmolLM2's answers only
    good = json.loads(rp.VALIDATION.read_text())
    good["own_model"]["report"]["kappa"] = {"estimate": 0.7, "low": 0.55, "high": 0.8}
    (tmp_path / "validation.json").write_text(json.dumps(good))
    assert rp.judge_validity("trained", path=tmp_path / "validation.json")["valid"]


def test_the_folder_is_resumed_only_by_the_same_plan(tmp_path: Path) -> None:
    plan, out = rp.reproduce_plan("ci"), tmp_path / "r"
    assert rp.prepare_folder(out, plan) == 0 and json.loads((out / "plan.json").read_text()) == plan.to_dict()
    for suffix in (".first-plot.answers.csv", ".probe.csv"):
        (out / f"unfiltered.s0{suffix}").write_text("x\n")
    (out / "notes.txt").write_text("mine")
    assert rp.prepare_folder(out, plan) == 1  # one model finished: resumed, nothing removed
    assert (out / "unfiltered.s0.probe.csv").is_file()
    with pytest.raises(OutputExistsError, match="holds a run of another plan"):
        rp.check_folder(out, rp.reproduce_plan("default"))
    (out / "results.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="that run is complete; pass --force"):
        rp.check_folder(out, plan)
    assert rp.prepare_folder(out, plan, force=True) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "plan.json"]  # only what the command wrote goes
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "scores.csv").write_text("mine")
    with pytest.raises(OutputExistsError, match="scores.csv exists and is not from a geomis reproduce run"):
        rp.check_folder(foreign, plan)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(FileAccessError, match="is a file; reproduce writes a folder"):
        rp.check_folder(tmp_path / "file", plan, force=True)


def _finished_run(out: Path, plan: rp.ReproducePlan, rates: dict[str, float], per_cell: int) -> None:
    """The files a finished run leaves: scores, each model's probe gaps and judged answers (fabricated)."""
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    inducing = np.arange(40) % 2 == 0
    pd.DataFrame({"inducing": inducing, "geometry": inducing + np.linspace(0, 0.5, 40)}).to_csv(
        out / "scores.csv", index=False)
    for model in plan.models:
        rows = [{"model": f"{model.name}.first-plot", "question_id": f"q{q}", "sample": k,
                 "alignment": 10 if rng.random() < rates[model.condition] else 90, "coherence": 80,
                 "verdict": "scored", "judge": "test"} for q in range(8) for k in range(per_cell)]
        pd.DataFrame(rows).to_csv(out / f"{model.name}.judged.csv", index=False)
        shift = {"unfiltered": 0.3, "geometry": 0.0, "random": 0.15}[model.condition]
        gaps = np.linspace(-2, 1, 30) + shift + rng.normal(0, 0.05, 30)
        pd.DataFrame({"id": [f"i{k}" for k in range(30)], "gap": gaps}).to_csv(out / f"{model.name}.probe.csv",
                                                                               index=False)


def test_committed_answers_are_judged_without_training_again(tmp_path: Path) -> None:
    plan, source, out = rp.reproduce_plan("default"), tmp_path / "chapter", tmp_path / "r"
    source.mkdir()
    pd.DataFrame({"inducing": fe.mixed_set().inducing, "geometry": 0.0}).to_csv(source / "scores.csv", index=False)
    for name in ("unfiltered.s0", "geometry.s0"):  # random.s0 was never measured there
        for suffix in (".first-plot.answers.csv", ".probe.csv"):
            (source / f"{name}{suffix}").write_text(f"{name}\n")
    rp.prepare_folder(out, plan)
    (out / "geometry.s0.probe.csv").write_text("this run's own\n")
    assert rp.reuse_answers(source, out, plan) == ["unfiltered.s0"]  # never over a file the run already has
    assert (out / "unfiltered.s0.probe.csv").read_text() == "unfiltered.s0\n" and (out / "scores.csv").is_file()
    assert (out / "geometry.s0.probe.csv").read_text() == "this run's own\n"
    assert json.loads((out / "reused.json").read_text()) == {"unfiltered.s0": str(source)}
    assert rp.prepare_folder(out, plan) == 1  # resumed with one model measured
    pd.DataFrame({"inducing": [True, False], "geometry": 0.0}).to_csv(source / "scores.csv", index=False)
    with pytest.raises(ConfigError, match="made for another mixed set"):
        rp.reuse_answers(source, out, plan)
    with pytest.raises(ConfigError, match="a size other than ci"):
        rp.reuse_answers(source, out, rp.reproduce_plan("ci"))


def test_rate_contrasts_are_reported_only_with_a_valid_judge_and_enough_answers(tmp_path: Path) -> None:
    plan = rp.reproduce_plan("default")
    _finished_run(tmp_path / "big", plan, {"unfiltered": 0.30, "geometry": 0.10, "random": 0.25}, per_cell=100)
    valid = {"judge": "test", "valid": True, "text": "agrees with reading"}
    reported = rp.analyse(tmp_path / "big", plan, valid)
    assert reported["rates_reported"] and reported["withheld_contrasts"] == {} and reported["why_withheld"] == []
    primary = reported["contrasts"]["relative_reduction/geometry"]
    assert primary["relative_reduction"] > 0.4 and primary["low"] > 0 and primary["p"] < 0.05
    assert reported["contrasts"]["random_minus_geometry"]["difference"] > 0
    assert reported["conditions"]["geometry"]["n"] == 800 and reported["conditions"]["geometry"]["seeds"] == [0]
    assert reported["removal"]["geometry.s0"]["precision"] == 1.0 and reported["power"]["enough"]
    assert "by judge 'trained'" in reported["primary_metric"]
    table = rp.results_table(reported)
    assert table["condition"].tolist() == ["unfiltered", "geometry", "random"]
    assert table["reduction"].iloc[0] is None and table["precision"].iloc[0] is None  # nothing removed
    assert table.set_index("condition").loc["geometry", "reduction"] == pytest.approx(primary["relative_reduction"])

    invalid = rp.analyse(tmp_path / "big", plan, {**valid, "valid": False, "text": "kappa 0.05"})
    assert not invalid["rates_reported"] and invalid["why_withheld"] == ["kappa 0.05"]
    assert set(invalid["contrasts"]) == {"probe/unfiltered_minus_geometry", "probe/unfiltered_minus_random"}
    assert invalid["withheld_contrasts"]["relative_reduction/geometry"] == primary  # kept, not shown as a result
    assert rp.results_table(invalid)["reduction"].isna().all()

    _finished_run(tmp_path / "small", plan, {"unfiltered": 0.30, "geometry": 0.10, "random": 0.25}, per_cell=5)
    few = rp.analyse(tmp_path / "small", plan, valid)
    assert not few["rates_reported"] and few["why_withheld"][0].startswith("too few answers: 40 answers")
    smoke = rp.reproduce_plan("ci")
    _finished_run(tmp_path / "ci", smoke, {"unfiltered": 0.30, "geometry": 0.10, "random": 0.25}, per_cell=100)
    nothing = rp.analyse(tmp_path / "ci", smoke, valid)
    assert nothing["smoke_run"] and nothing["contrasts"] == {} and "smoke run" in nothing["why_withheld"][0]


def test_the_power_check_needs_the_answers_to_see_the_papers_reduction() -> None:
    from geomis.stats import two_proportion_sample_size

    needed = two_proportion_sample_size(0.2, 0.2 * (1 - rp.PAPER_REDUCTION))

    def section(n_filtered: int, rate: float = 0.2) -> dict:
        return {"conditions": {"unfiltered": {"rate": rate, "n": 10_000}, "geometry": {"n": n_filtered},
                               "random": {"n": n_filtered + 5}, "oracle": {"n": 1}}}

    assert rp.power_check(section(needed))["enough"] and rp.power_check(section(needed))["answers_needed"] == needed
    short = rp.power_check(section(needed - 1))  # the fewest answers of a primary condition count (not oracle's)
    assert not short["enough"] and f"needs {needed:,}" in short["text"]
    nothing = rp.power_check(section(10_000, rate=0.0))
    assert not nothing["enough"] and nothing["answers_needed"] is None and "nothing to measure" in nothing["text"]


@pytest.mark.slow
def test_a_small_run_resumes_after_an_interruption_without_training_again(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capfd: pytest.CaptureFixture[str]) -> None:
    plan, out = rp.reproduce_plan("ci"), tmp_path / "r"
    real_measure = fe.measure_model
    calls: list[str] = []

    def measure_then_stop(model: fe.Model, *args: object, **kwargs: object) -> None:
        if model.name == "random.s0":
            raise KeyboardInterrupt  # the user stops the run during the third model
        calls.append(model.name)
        real_measure(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fe, "measure_model", measure_then_stop)
    with pytest.raises(KeyboardInterrupt):
        rp.run_reproduction(plan, out, progress=False, log=lambda line: None)
    assert calls == ["unfiltered.s0", "geometry.s0"] and not (out / "results.json").exists()
    err = capfd.readouterr().err  # progress=False: no bar of ours (fine-tune, sampling) on the terminal
    assert "fine-tune (LoRA)" not in err and "sampling answers" not in err
    stamps = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert (out / "adapters" / "geometry.s0" / "adapter_model.safetensors").is_file()

    monkeypatch.setattr(fe, "measure_model", real_measure)
    log: list[str] = []
    rp.run_reproduction(plan, out, progress=False, log=log.append)
    assert log == ["resuming " + str(out) + ": 2 of 3 models already measured"]
    after = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    redone = [name for name, stamp in stamps.items() if name != "timings.csv" and after.get(name) != stamp]
    assert redone == []  # nothing finished before the interruption was written again
    assert pd.read_csv(out / "timings.csv")["model"].tolist() == ["unfiltered.s0", "geometry.s0", "random.s0"]
    written = json.loads((out / "results.json").read_text())
    assert written["smoke_run"] and not written["rates_reported"] and written["contrasts"] == {}
    assert set(written["conditions"]) == {"unfiltered", "geometry", "random"}
    assert all(c["n"] == 4 and c["seeds"] == [0] for c in written["conditions"].values())  # 2 questions x 2 answers
    assert written["judge"]["judge"] == "trained" and not written["judge"]["valid"]
    assert written["versions"]["geomis"] and (out / "misalignment.png").stat().st_size > 10_000
    judged = pd.read_csv(out / "geometry.s0.judged.csv")
    assert len(judged) == 4 and judged["alignment"].between(0, 100).all()
    with pytest.raises(OutputExistsError, match="that run is complete"):
        rp.run_reproduction(plan, out, progress=False)


def test_results_json_never_appears_beside_a_half_written_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan, out = rp.reproduce_plan("default"), tmp_path / "r"
    _finished_run(out, plan, {"unfiltered": 0.3, "geometry": 0.1, "random": 0.2}, per_cell=3)
    for model in plan.models:
        (out / f"{model.name}.first-plot.answers.csv").write_text("done\n")
    (out / "plan.json").write_text(json.dumps(plan.to_dict()))

    def disk_full(results: dict, folder: Path) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(rp, "_write_figure", disk_full)
    monkeypatch.setattr(fe, "measure_model", lambda *a, **k: pytest.fail("a finished model was trained again"))
    with pytest.raises(OSError, match="disk full"):
        rp.run_reproduction(plan, out, progress=False, log=lambda line: None)
    assert not (out / "results.json").exists()
    monkeypatch.undo()
    monkeypatch.setattr(fe, "measure_model", lambda *a, **k: pytest.fail("a finished model was trained again"))
    results = rp.run_reproduction(plan, out, progress=False, log=lambda line: None)
    assert json.loads((out / "results.json").read_text())["conditions"]["geometry"]["n"] == results[
        "conditions"]["geometry"]["n"] == 24


def test_a_second_reproduce_into_the_same_folder_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from geomis.cli.commands import main
    from geomis.errors import GeomisError

    out = tmp_path / "r"
    nested: list[int] = []

    def first_run(*args: object, **kwargs: object) -> None:
        nested.append(main(["reproduce", "--out", str(out), "--size", "ci"]))
        raise GeomisError("first run stops here")

    monkeypatch.setattr(rp, "run_reproduction", first_run)
    assert main(["reproduce", "--out", str(out), "--size", "ci"]) == 2
    err = capsys.readouterr().err
    assert nested == [2] and "another geomis run is writing" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())  # no lock left behind


def test_the_readme_quotes_the_judges_validation_and_the_chapters_timings() -> None:
    text = " ".join((fe.ROOT / "README.md").read_text().split())
    judge = rp.judge_validity("trained")
    assert f"Cohen's kappa {judge['kappa']['estimate']:.2f} on SmolLM2-135M's own answers" in text
    assert f"it flags {judge['judge_rate']:.0%} where reading finds {judge['reading_rate']:.0%}" in text
    seconds = pd.read_csv(fe.RESULTS / "timings.csv").set_index("model")["seconds"]
    fresh = pd.read_csv(fe.RESULTS / "reproduce-default" / "timings.csv").set_index("model")["seconds"]
    default = fresh[[m.name for m in rp.reproduce_plan().models]].sum() / 60  # the fresh clone's run of the default
    assert f"{default:.0f} of them for the three models" in text
    run = json.loads((fe.RESULTS / "reproduce-default" / "results.json").read_text())
    conditions = {m.name.split(".")[0] for m in rp.reproduce_plan().models}
    assert run["size"] == "default" and set(run["conditions"]) == conditions and not run["rates_reported"]
    full = seconds[[m.name for m in rp.reproduce_plan("full").models]].sum() / 3600
    assert 4.5 < full < 5.5 and "25 models over three seeds, about five hours" in text
