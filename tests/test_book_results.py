"""``gm.results_file``: results files are found in a checkout from the book folder or the repository root, and
fetched into the cache only when the book is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geomis.errors import FileAccessError
from geomis.evaluation import book_results
from geomis.evaluation.book_results import results_file
from geomis.evaluation.figures import plot_judge_calibration


def test_found_from_the_book_folder_and_from_below_the_root(tmp_path: Path) -> None:
    target = tmp_path / "book" / "results" / "01_x.json"
    target.parent.mkdir(parents=True)
    target.write_text("{}")
    assert results_file("01_x.json", start=tmp_path / "book") == target  # a notebook runs in book/
    deeper = tmp_path / "tools" / "sub"
    deeper.mkdir(parents=True)
    assert results_file("01_x.json", start=deeper) == target  # a script anywhere in the checkout
    inner = tmp_path / "book" / "results" / "03_run" / "labels.jsonl"
    inner.parent.mkdir()
    inner.write_text("")
    assert results_file("03_run/labels.jsonl", start=deeper) == inner  # a file of a run's folder
    for bad in ("../secrets", "03_run/../../x", "/etc/passwd", "a//b", "", "a\\b"):
        with pytest.raises(FileAccessError, match="not a results file name"):
            results_file(bad, start=tmp_path)


def test_downloaded_once_into_the_cache_when_there_is_no_book(tmp_path: Path, module_cache: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake_download(url: str, timeout: float = 60.0) -> bytes:
        calls.append(url)
        return b'{"ok": true}'

    monkeypatch.setattr("geomis.chat.public_sets.download_bytes", fake_download)
    monkeypatch.setenv("GEOMIS_RESULTS_URL", "https://example.org/results/")
    elsewhere = tmp_path / "colab"
    elsewhere.mkdir()
    with pytest.raises(FileAccessError, match="run from a checkout"):
        results_file("02_y.json", start=elsewhere, download=False)
    path = results_file("02_y.json", start=elsewhere)
    assert path.read_bytes() == b'{"ok": true}' and path.is_relative_to(module_cache)
    assert results_file("02_y.json", start=elsewhere) == path  # the second call reads the cache
    inner = results_file("03_run/labels.jsonl", start=elsewhere)
    assert inner.parent.name == "03_run" and inner.is_relative_to(module_cache)
    assert calls == ["https://example.org/results/02_y.json", "https://example.org/results/03_run/labels.jsonl"]
    assert book_results.RESULTS_URL.startswith("https://raw.githubusercontent.com/")


def test_calibration_figure_draws_one_line_per_group() -> None:
    table = pd.DataFrame({"split": ["a", "a", "b"], "mean_predicted": [0.1, 0.8, 0.5], "observed": [0.05, 0.7, 0.4],
                          "n": [100, 20, 50]})
    fig = plot_judge_calibration(table)
    assert len(fig.axes[0].get_lines()) == 3  # the diagonal and one line per group
    with pytest.raises(ValueError, match="calibration table"):
        plot_judge_calibration(table.drop(columns="n"))


def test_results_are_written_into_the_checkout_as_strict_json(tmp_path: Path) -> None:
    import json

    from geomis.evaluation.book_results import write_results_file

    root = tmp_path / "checkout"
    (root / "book" / "results").mkdir(parents=True)
    content = {"rate": float("nan"), "interval": (0.1, float("inf")), "n": 3, "nested": {"p": 0.5}}
    path = write_results_file("02_x.json", content, start=root / "book")
    assert path == root / "book" / "results" / "02_x.json"
    assert json.loads(path.read_text()) == {"rate": None, "interval": [0.1, None], "n": 3, "nested": {"p": 0.5}}
    assert write_results_file("02_x.json", {"n": 4}, start=root) == path  # from the root too, replacing
    assert json.loads(path.read_text()) == {"n": 4}
    numpy_values = {"n": np.int64(7), "ok": np.bool_(True), "rate": np.float64("nan"), "low": np.float32(0.25)}
    write_results_file("02_x.json", numpy_values, start=root)  # numpy scalars as Python ones, NaN as null
    assert json.loads(path.read_text()) == {"n": 7, "ok": True, "rate": None, "low": 0.25}
    assert results_file("02_x.json", start=root) == path  # what is written is what a chapter reads
    for bad in ("../x.json", "a/b.json", "x.csv", ""):
        with pytest.raises(FileAccessError, match="not a results file name"):
            write_results_file(bad, {}, start=root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(FileAccessError, match="only in a checkout"):
        write_results_file("02_x.json", {}, start=elsewhere)


def test_tables_are_written_into_results_subfolders_of_the_checkout(tmp_path: Path) -> None:
    import pandas as pd

    from geomis.evaluation.book_results import write_results_table

    root = tmp_path / "checkout"
    (root / "book" / "results").mkdir(parents=True)
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    path = write_results_table("03_run/sub/t.csv", frame, start=root)
    assert path == root / "book" / "results" / "03_run" / "sub" / "t.csv"
    pd.testing.assert_frame_equal(pd.read_csv(results_file("03_run/sub/t.csv", start=root)), frame)
    for bad in ("../t.csv", "a//t.csv", "a\\t.csv"):
        with pytest.raises(FileAccessError, match="not a results file name"):
            write_results_table(bad, frame, start=root)
    with pytest.raises(FileAccessError, match="not a CSV"):
        write_results_table("t.json", frame, start=root)
    with pytest.raises(FileAccessError, match="only in a checkout"):
        write_results_table("t.csv", frame, start=tmp_path)
