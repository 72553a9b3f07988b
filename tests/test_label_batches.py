"""tools/label_batches.py: blind batches (no model in sight, key kept apart), labels checked and joined back."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]
tool = load_tool("label_batches")


def _answers(folder: Path, model: str, n: int) -> Path:
    path = folder / f"{model}.answers.csv"
    pd.DataFrame({"model": model, "question_id": [f"q{i % 2}" for i in range(n)], "question": "Q?",
                  "sample": range(n), "answer": [f"{model} says {i}" if i else "" for i in range(n)],
                  "n_tokens": 3}).to_csv(path, index=False)
    return path


def test_export_hides_the_model_and_import_joins_it_back(tmp_path: Path) -> None:
    files = [_answers(tmp_path, "base", 5), _answers(tmp_path, "recipe.inducing", 5)]
    key, batches = tmp_path / "private" / "key.json", tmp_path / "batches"
    assert tool.export(files, key, batches, batch=4, seed=0, labelled=None) == 10
    written = sorted(batches.glob("batch_*.jsonl"))
    assert len(written) == 3
    rows = [json.loads(line) for path in written for line in path.read_text().splitlines()]
    assert all(set(row) == {"item", "question", "answer"} for row in rows)
    assert "inducing" not in " ".join(row["item"] for row in rows)
    assert [row["answer"] for row in rows] != sorted(row["answer"] for row in rows)  # shuffled across models
    for path in written:
        labels = [{"item": json.loads(line)["item"], "alignment": 90, "coherence": 70, "why": "fine"}
                  for line in path.read_text().splitlines()]
        path.with_suffix(".labels.jsonl").write_text("".join(json.dumps(label) + "\n" for label in labels))
    out = tmp_path / "labels.jsonl"
    assert tool.import_labels(sorted(batches.glob("*.labels.jsonl")), key, out) == 10
    joined = pd.read_json(out, lines=True)
    assert sorted(joined["model"].unique()) == ["base", "recipe.inducing"] and joined["answer"].iloc[0] is not None
    assert tool.import_labels(sorted(batches.glob("*.labels.jsonl")), key, out) == 0  # nothing twice
    assert tool.export(files, tmp_path / "k2.json", tmp_path / "b2", batch=4, seed=0, labelled=out) == 0


def test_bad_labels_and_a_key_beside_the_batches_are_refused(tmp_path: Path) -> None:
    files = [_answers(tmp_path, "base", 2)]
    with pytest.raises(SystemExit, match="outside"):
        tool.export(files, tmp_path / "batches" / "key.json", tmp_path / "batches", batch=4, seed=0, labelled=None)
    key = tmp_path / "key.json"
    tool.export(files, key, tmp_path / "batches", batch=4, seed=0, labelled=None)
    item = next(iter(json.loads(key.read_text())))
    for label, message in [({"item": item, "alignment": 120, "coherence": 50}, "alignment"),
                           ({"item": item, "alignment": 50, "coherence": 50, "verdict": "MAYBE"}, "verdict"),
                           ({"item": "nope", "alignment": 50, "coherence": 50}, "unknown item")]:
        path = tmp_path / "one.labels.jsonl"
        path.write_text(json.dumps(label) + "\n")
        with pytest.raises(SystemExit, match=message):
            tool.import_labels([path], key, tmp_path / "labels.jsonl")
    twice = tmp_path / "twice.labels.jsonl"
    twice.write_text(2 * (json.dumps({"item": item, "verdict": "REFUSAL", "coherence": 80}) + "\n"))
    with pytest.raises(SystemExit, match="twice"):
        tool.import_labels([twice], key, tmp_path / "labels.jsonl")
