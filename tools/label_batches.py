"""Blind labelling by reading: export answers in shuffled batches with opaque ids, then join the labels back.

    python tools/label_batches.py export ANSWERS.csv ... --key KEY.json --out DIR [--batch 120] [--seed 0]
                                         [--labelled LABELS.jsonl]
    python tools/label_batches.py import DIR/*.labels.jsonl --key KEY.json --out LABELS.jsonl

``export`` pools the answers of every CSV (columns ``model``, ``question_id``, ``question``, ``sample``, ``answer``,
as written by the experiment scripts), leaves out those already in ``--labelled``, shuffles them across models with
``--seed`` and writes ``DIR/batch_NN.jsonl`` files of ``{"item", "question", "answer"}``: the labeller never sees the
model. The key (opaque item -> model, question, sample) goes to ``--key``, which must lie outside ``DIR``.

A labeller reads each batch against the rules of ``geomis/data/own_answers_labelled.md`` (alignment 0-100 or a
``REFUSAL``/``CODE`` verdict, coherence 0-100, a few words of why) and writes ``batch_NN.labels.jsonl`` with
``{"item", "alignment", "coherence", "verdict", "why"}``. ``import`` checks every label (range, verdict, one per
item, nothing unknown) and appends the joined rows to ``--out`` (``model``, ``question_id``, ``question``, ``sample``,
``answer``, the label fields), skipping items already there, atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from geomis.atomic_io import atomic_path
from geomis.judges.files import jsonl_objects

FIELDS = ("model", "question_id", "question", "sample", "answer")
VERDICTS = ("scored", "REFUSAL", "CODE")


def _id(row: dict[str, Any]) -> str:
    return f"{row['model']}/{row['question_id']}/{row['sample']}"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in jsonl_objects(path)]


def _write_jsonl(rows: list[dict[str, Any]], target: Path) -> None:
    with atomic_path(target) as temporary:
        temporary.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def export(answers: list[Path], key_file: Path, out: Path, batch: int, seed: int, labelled: Path | None) -> int:
    """Write blind batches of the answers not labelled yet; return how many answers they hold."""
    if out.resolve() in key_file.resolve().parents:
        raise SystemExit(f"--key must lie outside {out}: labellers must not see it")
    done = {_id(row) for row in _read_jsonl(labelled)} if labelled and labelled.is_file() else set()
    rows: list[dict[str, Any]] = []
    for path in answers:
        frame = pd.read_csv(path, keep_default_na=False)[list(FIELDS)]
        records: list[dict[str, Any]] = [dict(zip(FIELDS, values, strict=True)) for values in frame.itertuples(
            index=False)]
        rows += [row for row in records if _id(row) not in done]
    random.Random(seed).shuffle(rows)
    salt = f"{seed}:{len(rows)}"
    key = {hashlib.sha256(f"{salt}:{_id(row)}".encode()).hexdigest()[:10]: row for row in rows}
    if len(key) != len(rows):
        raise SystemExit("two answers share an id (model/question_id/sample): fix the answer files")
    out.mkdir(parents=True, exist_ok=True)
    items = list(key.items())
    for number, start in enumerate(range(0, len(items), batch)):
        _write_jsonl([{"item": item, "question": row["question"], "answer": row["answer"]}
                      for item, row in items[start:start + batch]], out / f"batch_{number:02d}.jsonl")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(key_file) as temporary:
        temporary.write_text(json.dumps(key, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    return len(rows)


def _checked(label: dict[str, Any], where: str) -> dict[str, Any]:
    """One label, checked: alignment 0-100 (None for REFUSAL/CODE), coherence 0-100, a known verdict."""
    verdict = label.get("verdict", "scored")
    if verdict not in VERDICTS:
        raise SystemExit(f"{where}: verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    alignment, coherence = label.get("alignment"), label.get("coherence")
    if verdict == "scored" and not (isinstance(alignment, int | float) and 0 <= alignment <= 100):
        raise SystemExit(f"{where}: alignment must be a number 0-100 for a scored answer, got {alignment!r}")
    if not (isinstance(coherence, int | float) and 0 <= coherence <= 100):
        raise SystemExit(f"{where}: coherence must be a number 0-100, got {coherence!r}")
    return {"alignment": alignment if verdict == "scored" else None, "coherence": coherence, "verdict": verdict,
            "why": str(label.get("why", ""))}


def import_labels(label_files: list[Path], key_file: Path, out: Path) -> int:
    """Join the labels to the key and append the new rows to ``out``; return how many were added."""
    key: dict[str, dict[str, Any]] = json.loads(key_file.read_text(encoding="utf-8"))
    existing = _read_jsonl(out) if out.is_file() else []
    known = {_id(row) for row in existing}
    seen: set[str] = set()
    added = []
    for path in label_files:
        for where, label in jsonl_objects(path):
            item = label.get("item")
            if item not in key:
                raise SystemExit(f"{where}: unknown item {item!r} (another export's key?)")
            if item in seen:
                raise SystemExit(f"{where}: item {item} labelled twice")
            seen.add(item)
            row = key[item]
            if _id(row) not in known:
                added.append({**{field: row[field] for field in FIELDS}, **_checked(label, where)})
    _write_jsonl(existing + added, out)
    return len(added)


def main() -> None:
    """Parse the command line and run export or import."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    out = commands.add_parser("export")
    out.add_argument("answers", nargs="+", type=Path)
    out.add_argument("--key", type=Path, required=True)
    out.add_argument("--out", type=Path, required=True)
    out.add_argument("--batch", type=int, default=120)
    out.add_argument("--seed", type=int, default=0)
    out.add_argument("--labelled", type=Path, default=None)
    back = commands.add_parser("import")
    back.add_argument("labels", nargs="+", type=Path)
    back.add_argument("--key", type=Path, required=True)
    back.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "export":
        n = export(args.answers, args.key, args.out, args.batch, args.seed, args.labelled)
        print(f"exported {n} answers in batches of {args.batch} to {args.out}; key in {args.key}", file=sys.stderr)
    else:
        n = import_labels(args.labels, args.key, args.out)
        print(f"added {n} labelled answers to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
