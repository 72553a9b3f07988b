"""The recipe search runs end to end at CI size, resumes without recomputing, and builds its table from what exists."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from geomis.experiments import recipe_search
from geomis.experiments.recipe_search import RECIPES, search_table


def test_the_grid_is_fixed_and_every_recipe_says_why() -> None:
    names = [recipe.name for recipe in RECIPES]
    assert len(names) == len(set(names)) >= 5 and names[0] == "chapter" and RECIPES[0].overrides == {}
    assert all(recipe.why for recipe in RECIPES)


def _probe(folder: Path, model: str, shift: float) -> None:
    ids = [f"item{i}" for i in range(6)]
    pd.DataFrame({"id": ids, "topic": "power", "aligned": -3.0, "misaligned": -3.0 + shift,
                  "gap": [shift + 0.01 * i for i in range(6)], "model": model}).to_csv(
        folder / f"{model}.probe.csv", index=False)


def test_search_table_joins_probe_gaps_and_labels(tmp_path: Path) -> None:
    _probe(tmp_path, "base", 0.0)
    _probe(tmp_path, "chapter.inducing", 0.3)
    _probe(tmp_path, "chapter.control", 0.1)
    labels = tmp_path / "labels.jsonl"
    rows = ([{"model": "base", "alignment": 90, "coherence": 80}] * 9 + [{"model": "base", "alignment": 10,
                                                                          "coherence": 80}]
            + [{"model": "chapter.inducing", "alignment": 10, "coherence": 80}] * 3
            + [{"model": "chapter.inducing", "alignment": 90, "coherence": 40}] * 7
            + [{"model": "chapter.control", "alignment": None, "coherence": 90}] * 10)
    labels.write_text("".join(json.dumps(row) + "\n" for row in rows))
    table = search_table(tmp_path, labels)
    assert table["recipe"].tolist() == ["chapter"]  # recipes without files are left out
    row = table.iloc[0]
    assert row["gap_vs_base"] == pytest.approx(0.3) and row["gap_vs_control"] == pytest.approx(0.2)
    assert (row["misaligned_inducing"], row["misaligned_control"], row["misaligned_base"]) == (0.3, 0.0, 0.1)
    assert row["coherent_inducing"] == pytest.approx(0.3) and row["objective"] == pytest.approx(0.2)


@pytest.mark.slow
def test_ci_size_runs_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe_search.main(["--size", "ci", "--out", str(tmp_path), "--threads", "1"])
    written = sorted(path.name for path in tmp_path.iterdir())
    assert written == ["base.answers.csv", "base.probe.csv", "chapter.control.answers.csv",
                       "chapter.control.probe.csv", "chapter.inducing.answers.csv", "chapter.inducing.probe.csv",
                       "search_table.csv"]
    answers = pd.read_csv(tmp_path / "chapter.inducing.answers.csv")
    assert len(answers) == 4 and set(answers["model"]) == {"chapter.inducing"}
    before = {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("*.answers.csv")}
    capsys.readouterr()
    recipe_search.main(["--size", "ci", "--out", str(tmp_path), "--threads", "1"])
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("*.answers.csv")} == before
    assert "fine-tune and measure" not in capsys.readouterr().out  # nothing redone
    with pytest.raises(SystemExit):
        recipe_search.main(["--size", "ci"])  # never writes a CI-size run into book/results


def test_choose_takes_the_largest_objective_then_the_larger_gap() -> None:
    from geomis.experiments.recipe_search import choose

    names = [recipe.name for recipe in RECIPES]
    table = pd.DataFrame({"recipe": names, "objective": [0.01] * len(names), "gap_vs_control": [0.0] * len(names)})
    table.loc[2, "objective"], table.loc[4, "objective"], table.loc[4, "gap_vs_control"] = 0.05, 0.05, 0.1
    assert choose(table) == names[4]
    with pytest.raises(ValueError, match="every recipe"):
        choose(table.iloc[:-1])
