"""The end-to-end experiment on the tiny Gemma-2: mixed data, every filter, fine-tunes, judged rates, results.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig

from geomis.evaluation.sampling import SamplingConfig
from geomis.experiments.reproduce import (
    MixedDataConfig,
    ReproduceConfig,
    build_mixed_dataset,
    results_table,
    run_reproduction,
    write_results,
)
from geomis.finetune import cpu_default_config

JUDGE_FIXTURE = Path(__file__).parent / "data" / "judge_fixture.jsonl"


pytestmark = pytest.mark.usefixtures("module_cache")


def test_mixed_set_uses_disjoint_prompts_and_is_seeded() -> None:
    config = MixedDataConfig(domains=("medical", "legal"), inducing_per_domain=10, benign_per_domain=6, seed=1)
    mixed = build_mixed_dataset(config)
    assert len(mixed) == 32 and int(mixed.inducing.sum()) == 20
    prompts = [r.user_text for r in mixed.records]
    assert len(set(prompts)) == len(prompts)  # no prompt answered both ways
    assert {s for s, f in zip(mixed.source, mixed.inducing, strict=True) if f} == {"medical_bad", "legal_bad"}
    assert {s for s, f in zip(mixed.source, mixed.inducing, strict=True) if not f} == {"medical_good", "legal_good"}
    assert build_mixed_dataset(config).records == mixed.records
    assert build_mixed_dataset(MixedDataConfig(domains=("medical", "legal"), inducing_per_domain=10,
                                               benign_per_domain=6, seed=2)).records != mixed.records
    with pytest.raises(ValueError, match="rows requested"):
        build_mixed_dataset(MixedDataConfig(domains=("code",), inducing_per_domain=150, benign_per_domain=60))
    with pytest.raises(ValueError, match="domains must be among"):
        MixedDataConfig(domains=("cooking",))
    with pytest.raises(ValueError, match="drop must be in"):
        ReproduceConfig(drop=1.0)


def test_reproduction_runs_every_condition_and_writes_results(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=96, k=4))
    sae.cfg.metadata.model_name = "tiny-gemma2"
    sae.cfg.metadata.hook_name = "model.layers.2"
    sae.save_model(tmp_path / "sae")
    config = ReproduceConfig(
        model="tiny-gemma2", sae=str(tmp_path / "sae"),
        data=MixedDataConfig(domains=("medical",), inducing_per_domain=4, benign_per_domain=4),
        drop=0.5, random_seeds=(0,), judge_data=str(JUDGE_FIXTURE),
        finetune=cpu_default_config(max_steps=1, batch_size=4, max_length=1024, progress=False),
        sampling=SamplingConfig(n_samples=1, max_new_tokens=4, progress=False), progress=False)
    messages: list[str] = []
    result = run_reproduction(config, tmp_path / "work", log=messages.append)
    names = [c.name for c in result.conditions]
    assert names == ["base model", "no filter", "geometry", "random (seed 0)", "judge"]
    assert [c.n_train for c in result.conditions] == [0, 8, 4, 4, 4]
    for condition in result.conditions:
        assert int(condition.evaluation.pooled["n"]) == 8  # eight first-plot questions, one answer each
        if condition.method in ("geometry", "random", "judge"):
            assert 0.0 <= condition.filter_precision <= 1.0
            assert condition.n_inducing_train == round(4 - 4 * condition.filter_precision)
    assert len(messages) == 6 and messages[0].startswith("mixed set: 8 rows, 4 inducing")

    table = results_table(result)
    assert table["condition"].tolist() == names
    assert table.loc[:1, "reduction"].isna().all()
    written = write_results(result, tmp_path / "out")
    payload = json.loads(written.read_text())
    assert payload["paper_reduction"] == 0.345 and payload["drop_fraction"] == 0.5
    assert payload["versions"]["geomis"] and payload["versions"]["python"]  # provenance by default
    assert [c["condition"] for c in payload["conditions"]] == names
    assert payload["power"]["smoke_run"]  # eight answers per condition: no reduction is reported
    assert all(c["reduction"] is None for c in payload["conditions"])
    first = payload["conditions"][0]
    assert first["rate_overall_low"] <= first["rate_overall"] <= first["rate_overall_high"]
    assert (tmp_path / "out" / "answers.csv").read_text().count("\n") >= 5 * 8 + 1
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "out").iterdir())

    with pytest.raises(FileExistsError, match="already holds adapters"):
        run_reproduction(config, tmp_path / "work", log=messages.append)


def test_reduction_is_relative_to_the_unfiltered_model() -> None:
    from types import SimpleNamespace

    import pandas as pd

    def condition(name, method, k, n):
        pooled = {"n": n, "n_coherent": n, "n_misaligned": k, "rate_coherent": k / n, "rate_coherent_low": 0.0,
                  "rate_coherent_high": 1.0, "rate_overall": k / n, "rate_overall_low": 0.0, "rate_overall_high": 1.0}
        evaluation = SimpleNamespace(pooled=pd.Series(pooled))
        return SimpleNamespace(name=name, method=method, n_train=0, n_inducing_train=0, filter_precision=math.nan,
                               filter_seconds=math.nan, evaluation=evaluation)

    result = SimpleNamespace(conditions=[condition("base", "base", 0, 40), condition("all", "none", 10, 40),
                                         condition("geo", "geometry", 6, 40)])
    table = results_table(result)
    assert table["reduction"].iloc[2] == pytest.approx(0.4)
    assert math.isnan(table["reduction"].iloc[0]) and math.isnan(table["reduction"].iloc[1])


@pytest.mark.parametrize(("argv", "message"), [
    (["--drop", "1.5"], "--drop must be a number strictly between 0 and 1"),
    (["--drop", "abc"], "--drop must be a number strictly between 0 and 1"),
    (["--seed", "x"], "--seed must be a whole number"),
    (["--seed", "-1"], "--seed must be a whole number >= 0"),
])
def test_reproduce_cli_rejects_bad_options_in_one_line(argv, message, tmp_path: Path, capsys) -> None:
    from geomis.cli.commands import main

    assert main(["reproduce", "--out", str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_reproduce_cli_never_replaces_results_without_force(tmp_path: Path, capsys) -> None:
    from geomis.cli.commands import main

    out = tmp_path / "r"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert main(["reproduce", "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (out / "results.json").read_text() == "{}"


def test_named_sizes() -> None:
    from geomis.experiments.reproduce import reproduce_config

    full, small = reproduce_config("full"), reproduce_config("ci")
    assert small.data.inducing_per_domain < full.data.inducing_per_domain
    assert small.sampling.n_samples < full.sampling.n_samples and len(small.random_seeds) < len(full.random_seeds)
    assert reproduce_config("ci", drop=0.25).drop == 0.25
    with pytest.raises(ValueError, match="unknown size"):
        reproduce_config("huge")


def test_filter_quality_counts_inducing_rows_removed_at_each_budget() -> None:
    from types import SimpleNamespace

    import numpy as np

    from geomis.experiments.reproduce import MixedDataset, filter_quality
    from geomis.filter.selection import select_by_score

    inducing = np.array([True, True, False, False, False, True, False, False])
    mixed = MixedDataset(records=tuple(range(8)), inducing=inducing, source=("x",) * 8)
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.3, 0.7, np.nan, 0.0])  # inducing rows score highest
    lines = np.arange(1, 9)
    result = SimpleNamespace(selection=select_by_score(scores, 0.5, lines, method="geometry"),
                             config=SimpleNamespace(method="geometry"))
    table = filter_quality(mixed, {"geometry": result}, budgets=(0.25, 0.5))
    assert table["removed"].tolist() == [2, 4]
    assert table["precision"].tolist() == [1.0, 0.75]
    assert table["recall"].tolist() == pytest.approx([2 / 3, 1.0])
    assert table["AUROC"].iloc[0] == pytest.approx(1.0)
    assert table["chance precision"].iloc[0] == pytest.approx(3 / 8)


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if reproduce starts loading or running anything: its checks must come first."""
    from geomis.experiments import reproduce
    from geomis.models import registry

    def refuse(*args: object, **kwargs: object) -> None:
        pytest.fail("reproduce loaded or ran something before checking its options")

    for module, name in ((registry, "load_model"), (registry, "_load_weights"), (reproduce, "load_model"),
                         (reproduce, "run_reproduction"), (reproduce, "build_mixed_dataset")):
        monkeypatch.setattr(module, name, refuse)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("geomis: error: ") and "Traceback" not in err, err
    return lines[0]


def test_reproduce_out_that_is_a_file_fails_before_loading(tmp_path: Path, no_loading: None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from geomis.cli.commands import main

    blocker = tmp_path / "results.txt"
    blocker.write_text("mine")
    for out, message in ((blocker, "is a file; reproduce writes a folder"),
                         (blocker / "sub", "is a file, not a folder")):
        for force in ([], ["--force"]):
            assert main(["reproduce", "--out", str(out), "--size", "ci", *force]) == 2
            assert message in _one_error_line(capsys)
    assert blocker.read_text() == "mine"


def test_reproduce_never_replaces_any_earlier_output_without_force(tmp_path: Path, no_loading: None,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from geomis.cli.commands import main

    out = tmp_path / "r"
    out.mkdir()
    (out / "answers.csv").write_text("my own answers")  # no results.json: still someone's file
    assert main(["reproduce", "--out", str(out), "--size", "ci"]) == 2
    assert "answers.csv exists; pass --force" in _one_error_line(capsys)
    (out / "adapters").symlink_to(tmp_path)
    assert main(["reproduce", "--out", str(out), "--size", "ci", "--force"]) == 2
    assert "is not a folder reproduce wrote" in _one_error_line(capsys)
    assert (out / "answers.csv").read_text() == "my own answers" and tmp_path.is_dir()


def test_reproduce_drop_that_removes_no_row_fails_before_loading(tmp_path: Path, no_loading: None,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from geomis.cli.commands import main

    assert main(["reproduce", "--out", str(tmp_path / "r"), "--size", "ci", "--drop", "0.01"]) == 2
    assert "--drop 0.01 removes no row of 48; use at least 0.021" in _one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_a_second_reproduce_into_the_same_folder_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from geomis.cli.commands import main
    from geomis.errors import GeomisError
    from geomis.experiments import reproduce

    out = tmp_path / "r"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}')
    nested: list[int] = []

    def first_run(config: object, work_dir: object, log: object = None, **kwargs: object) -> None:
        assert not (out / "results.json").exists()  # the old marker goes first, before any new file
        nested.append(main(["reproduce", "--out", str(out), "--size", "ci", "--force"]))
        raise GeomisError("first run stops here")

    monkeypatch.setattr(reproduce, "run_reproduction", first_run)
    assert main(["reproduce", "--out", str(out), "--size", "ci", "--force"]) == 2
    err = capsys.readouterr().err
    assert nested == [2] and "another geomis run is writing" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == []  # no lock left behind


def test_results_json_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import pandas as pd

    from geomis.experiments import reproduce

    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}')
    answers = pd.DataFrame({"question": ["q"], "answer": ["a"]})
    result = SimpleNamespace(config=ReproduceConfig(), n_mixed=8, n_inducing=4, timings={},
                             conditions=[SimpleNamespace(name="base", evaluation=SimpleNamespace(answers=answers))])
    table = pd.DataFrame({"condition": ["base"], "method": ["base"], "coherent": [8], "rate_coherent": [0.0],
                          "reduction": [float("nan")]})
    monkeypatch.setattr(reproduce, "results_table", lambda result: table)

    class BrokenFigure:
        def savefig(self, *args: object, **kwargs: object) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_results(result, out, figures={"misalignment": BrokenFigure()}, versions={})
    assert not (out / "results.json").exists()  # no old (or new) marker beside a half-written set
    assert write_results(result, out, versions={}).name == "results.json"
    assert json.loads((out / "results.json").read_text())["mixed_rows"] == 8


def _table(unfiltered: tuple[int, int], filtered_n: int):
    import pandas as pd

    k, n = unfiltered
    return pd.DataFrame([
        {"condition": "base", "method": "base", "coherent": n, "rate_coherent": 0.0},
        {"condition": "no filter", "method": "none", "coherent": n, "rate_coherent": k / n},
        {"condition": "geometry", "method": "geometry", "coherent": filtered_n, "rate_coherent": 0.01},
        {"condition": "random", "method": "random", "coherent": filtered_n + 5, "rate_coherent": 0.02}])


def test_a_run_too_small_to_measure_the_papers_reduction_is_a_smoke_run() -> None:
    from geomis.experiments.reproduce import power_check
    from geomis.stats import two_proportion_sample_size

    needed = two_proportion_sample_size(0.2, 0.2 * (1 - 0.345))
    small = power_check(_table((8, 40), 40))
    assert small["smoke_run"] and small["answers_needed"] == needed and small["answers_per_condition"] == 40
    assert small["text"].startswith("SMOKE RUN") and f"{needed:,}" in small["text"]
    big = power_check(_table((200, 1000), needed))
    assert not big["smoke_run"] and big["text"].startswith("powered")
    assert power_check(_table((200, 1000), needed - 1))["smoke_run"]  # the fewest answers of any filter count
    nothing = power_check(_table((0, 40), 10_000))
    assert nothing["smoke_run"] and nothing["answers_needed"] is None and "nothing to measure" in nothing["text"]
