"""Each benchmark runs end to end at its smallest size and prints a table whose reference row has ratio 1.

These check that the scripts keep working as the package changes; the numbers themselves are not asserted (timings
belong in benchmark runs on a quiet machine, not in tests).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _table(script: str, *args: str, header: str, columns: int) -> dict[str, list[str]]:
    """Run a benchmark and return its table: row name (may contain spaces) -> its ``columns`` numeric cells."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 1:]:
        if line.strip():
            words = line.split()
            rows[" ".join(words[:-columns])] = [word.replace(",", "") for word in words[-columns:]]
    return rows


@pytest.mark.slow
def test_filter_cost_prints_every_method_against_the_bound() -> None:
    rows = _table("filter_cost.py", "--samples", "8", "--batch-size", "4", "--rounds", "1", "--llm-judge-samples", "1",
                  header="method", columns=6)
    assert set(rows) == {"geometry-filter", "cut-forward", "full-hidden", "judge-filter", "llm-judge"}
    assert float(rows["cut-forward"][-1]) == 1.0
    assert rows["llm-judge"][0] == "1" and rows["geometry-filter"][0] == "8"  # samples each method scored
    for values in rows.values():
        assert all(float(value) > 0 for value in values)


@pytest.mark.slow
def test_activation_cost_prints_every_method_against_the_cut_forward() -> None:
    rows = _table("activation_cost.py", "--samples", "8", "--batch-size", "4", "--rounds", "1", header="method",
                  columns=4)
    assert "cut-forward" in rows and len(rows) == 3
    assert float(rows["cut-forward"][-1]) == 1.0
    for values in rows.values():
        assert all(float(value) > 0 for value in values)


@pytest.mark.slow
def test_finetune_cost_prints_every_placement_against_all_layers() -> None:
    rows = _table("finetune_cost.py", "--steps", "1", "--rounds", "1", header="LoRA on", columns=5)
    assert set(rows) == {"all layers", "layers >= 15", "layers >= 20"}
    assert float(rows["all layers"][-1]) == 1.0


@pytest.mark.slow
def test_sampling_cost_prints_both_decoders_against_the_bound() -> None:
    rows = _table("sampling_cost.py", "--model", "tiny-gemma2", "--answers", "8", "--batches", "1,4", "--rounds", "1",
                  "--max-new-tokens", "6", "--threads", "1", header="method", columns=5)
    assert set(rows) == {f"{kind}, batch {b}" for kind in ("generate", "nucleus", "bound") for b in (1, 4)}
    assert float(rows["bound, batch 4"][-1]) == 1.0
    for values in rows.values():
        assert all(float(value) > 0 for value in values)


def test_readme_quotes_the_recorded_sampling_benchmark() -> None:
    """The README's sampling numbers are those of book/results/03_sampling_cost.json (re-run: update both)."""
    import json

    recorded = json.loads((ROOT / "book" / "results" / "03_sampling_cost.json").read_text())
    rows = {row["method"]: row for row in recorded["rows"]}
    nucleus, generate = rows["nucleus, batch 64"], rows["generate, batch 64"]
    flat = " ".join((ROOT / "README.md").read_text().split())
    expected = [f"decoder drew {nucleus['answers_per_s']:.2f} answers/s ({nucleus['tokens_per_s']:.0f} tokens/s, "
                f"{nucleus['vs_bound']:.2f}x", f"{generate['answers_per_s']:.2f} answers/s "
                f"({generate['tokens_per_s']:.0f} tokens/s, {generate['vs_bound']:.2f}x)",
                f"{rows['nucleus, batch 1']['answers_per_s']:.2f} and {rows['generate, batch 1']['answers_per_s']:.2f}"]
    assert [text for text in expected if text not in flat] == []
    assert nucleus["vs_bound"] >= 0.5  # the sampling issue's goal, as recorded


@pytest.mark.slow
def test_filter_methods_cost_writes_every_method_against_geometry(tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "cost.csv"
    rows = _table("filter_methods_cost.py", "--samples", "8", "--rounds", "1", "--out", str(out),
                  header="method", columns=4)
    assert set(rows) == {"geometry", "mean-difference", "embedding", "judge", "random"}
    assert float(rows["geometry"][-1]) == 1.0
    written = pd.read_csv(out)
    assert written["method"].tolist() == list(rows) and (written["samples"] == 8).all()
    assert (written["s_per_1000"] > 0).all()
    assert written["s_per_1000"].tolist() == pytest.approx([float(r[2]) for r in rows.values()], abs=1e-3)
