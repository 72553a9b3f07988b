"""The experiment scripts' shared command line (geomis.experiments.runs.experiment_args)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geomis.experiments.runs import experiment_args

BOOK, FILE = Path("book-results"), Path("book-results.json")


def test_defaults_write_into_the_book_and_out_moves_the_results_file(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        args = experiment_args("Doc.", [], results=BOOK, results_file=FILE)
        assert (args.out, args.target, args.ci, args.threads) == (BOOK, FILE, False, 2)
        assert torch.get_num_threads() == 2
        args = experiment_args("Doc.", ["--out", str(tmp_path), "--size", "ci", "--threads", "1"],
                               results=BOOK, results_file=FILE)
        assert (args.out, args.target, args.ci) == (tmp_path, tmp_path / FILE.name, True)
        assert torch.get_num_threads() == 1
        assert experiment_args("Doc.", [], results=BOOK).target is None
    finally:
        torch.set_num_threads(threads)


def test_ci_size_without_a_folder_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        experiment_args("Doc.", ["--size", "ci"], results=BOOK)
    assert "--size ci writes to the folder named by --out, never into book/results" in capsys.readouterr().err


def test_optional_flags_exist_only_where_asked_for() -> None:
    args = experiment_args("Doc.", ["--limit", "3", "--analyse"], results=BOOK, limit=True, analyse="analyse")
    assert (args.limit, args.analyse) == (3, True)
    for flag in (["--limit", "3"], ["--analyse"]):
        with pytest.raises(SystemExit):
            experiment_args("Doc.", flag, results=BOOK)
    args = experiment_args("Doc.", ["--judge"], results=BOOK,
                           extra=lambda parser: parser.add_argument("--judge", action="store_true"))
    assert args.judge is True
