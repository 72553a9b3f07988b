"""Pieces the resumable experiment scripts share: atomic CSVs, cached fine-tunes, and measuring one model.

A model is measured by two files, written once and never recomputed: ``<name>.answers.csv`` (sampled answers, the
``nucleus`` decoder, Chapter 3's settings) and ``<name>.probe.csv`` (the misalignment probe's gaps). Adapters live
in the geomis cache folder and are reused only when their recorded fine-tuning config equals the one asked for.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

MODEL = "smollm2-135m"
SAMPLING: dict[str, Any] = dict(temperature=0.7, top_p=0.9, max_new_tokens=80, batch_size=64, decoder="nucleus")
"""Chapter 3's sampling (temperature 0.7, nucleus 0.9, at most 80 new tokens), with the faster decoder."""


def experiment_args(doc: str | None, argv: Sequence[str] | None, *, results: Path, results_file: Path | None = None,
                    limit: bool = False, analyse: str | None = None,
                    extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Parse an experiment script's command line: ``--threads``, ``--size full|ci``, ``--out`` (required at ``ci``),
    optionally ``--limit`` and ``--analyse`` (its help), and what ``extra`` adds; set torch's threads.

    ``args.out`` is the folder (default ``results``), ``args.ci`` the size, ``args.target`` the results file written
    (``results_file``, or its name inside ``--out``).
    """
    import torch

    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", choices=("full", "ci"), default="full")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: the book's)")
    if limit:
        parser.add_argument("--limit", type=int, default=None, help="train at most this many new models, then stop")
    if analyse:
        parser.add_argument("--analyse", action="store_true", help=analyse)
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.size == "ci" and args.out is None:
        parser.error("--size ci writes to the folder named by --out, never into book/results")
    torch.set_num_threads(args.threads)
    args.ci = args.size == "ci"
    args.target = None if results_file is None else results_file if args.out is None else args.out / results_file.name
    args.out = args.out or results
    return args


def write_csv(frame: pd.DataFrame, target: Path) -> None:
    """Write ``frame`` to ``target`` atomically (a reader never sees half a file)."""
    from geomis.atomic_io import atomic_path

    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        frame.to_csv(temporary, index=False)


def append_row(target: Path, row: dict[str, Any]) -> None:
    """Add one row to the CSV ``target`` (created with the row's columns when missing), atomically."""
    old = pd.read_csv(target) if target.is_file() else pd.DataFrame()
    write_csv(pd.concat([old, pd.DataFrame([row])], ignore_index=True), target)


def trained_with(adapters: Path, config: Any) -> bool:
    """Whether ``adapters`` holds a finished fine-tune with exactly ``config`` (the progress bar aside)."""
    record = adapters / "geomis_finetune.json"
    if not (adapters / "adapter_model.safetensors").is_file() or not record.is_file():
        return False
    saved = json.loads(record.read_text()).get("config", {})
    wanted = {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(config).items()}
    return {k: v for k, v in saved.items() if k != "progress"} == {k: v for k, v in wanted.items() if k != "progress"}


def fine_tuned_model(datasets: Sequence[str], config: Any, adapters: Path, *, model: str = MODEL,
                     device: str | None = None, dtype: Any = None) -> Any:
    """The base ``model`` fine-tuned on the bundled ``datasets`` with ``config`` (trained once, then loaded),
    merged."""
    import geomis as gm

    if not trained_with(adapters, config):
        rows = [row for name in datasets for row in gm.load_bundled(name)]
        gm.fine_tune(gm.load_model(model, device=device, dtype=dtype), rows, adapters, config, overwrite=True)
    return gm.load_finetuned(model, adapters, device=device, dtype=dtype, merge=True)


def measure(model: Any, name: str, out: Path, questions: Mapping[str, str], samples: int, probe_items: Any, *,
            seed: int = 0, progress: bool = True) -> None:
    """Write ``<name>.answers.csv`` (``samples`` answers per question) and, unless ``probe_items`` is None,
    ``<name>.probe.csv``; a file that exists is left alone (``progress``: a bar over the sampling batches)."""
    import geomis as gm

    answers_file, probe_file = out / f"{name}.answers.csv", out / f"{name}.probe.csv"
    if not answers_file.is_file():
        sampling = gm.SamplingConfig(n_samples=samples, seed=seed, progress=progress, **SAMPLING)
        answers = gm.sample_answers(model, dict(questions), sampling)
        answers.insert(0, "model", name)
        write_csv(answers, answers_file)
    if probe_items is not None and not probe_file.is_file():
        write_csv(gm.probe_gaps(model, probe_items, batch_size=8).assign(model=name), probe_file)


def reading_flags(labels: pd.DataFrame) -> pd.DataFrame:
    """A copy of read labels with Betley's ``misaligned`` flag and a ``coherent`` flag (coherence above 50)."""
    from geomis.judges.agreement import misaligned_flags
    from geomis.judges.base import COHERENCE_THRESHOLD

    frame = labels.copy()
    frame["misaligned"] = misaligned_flags(frame)
    frame["coherent"] = frame["coherence"] > COHERENCE_THRESHOLD
    return frame
