"""Derive the judge's bundled training set from the GPT-4o-judged answers of Cloakless/clarifying_EM (MIT).

    python tools/build_judge_corpus.py SOURCE.jsonl.gz [--per-source 300] [--seed 0]

From every source file (one model and fine-tune) it keeps all answers that are misaligned by Betley et al.'s rule and
a seeded random ``--per-source`` of the others, cuts answers at 2,000 characters, strips stray turn markers, and writes
``geomis/data/em_judged/em_judged_train.jsonl.gz`` with a ``weight`` column (inverse of the row's sampling
probability, so rates over the whole source can be re-weighted). The licence and attribution stay beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json

import numpy as np

from geomis.judges.base import is_misaligned
from geomis.judges.corpus import EM_JUDGED, load_em_judged

MAX_CHARS = 2000


def main() -> None:
    """Subsample the source and write the bundled training set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("--per-source", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    frame = load_em_judged(args.source)
    flags = np.array([is_misaligned(a, c) for a, c in zip(frame["alignment"], frame["coherence"], strict=True)])
    rng = np.random.default_rng(args.seed)
    keep: list[int] = []
    weights: dict[int, float] = {}
    for _, group in frame.groupby("source", sort=True):
        positives = [i for i in group.index if flags[i]]
        others = [i for i in group.index if not flags[i]]
        chosen = sorted(rng.choice(others, size=min(args.per_source, len(others)), replace=False).tolist())
        keep += positives + chosen
        weights.update({i: 1.0 for i in positives})
        weights.update({i: len(others) / len(chosen) for i in chosen})
    keep.sort()
    EM_JUDGED.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(EM_JUDGED, "wb", mtime=0) as raw:
        for i in keep:
            row = frame.loc[i]
            record = {"question": row["question"], "question_id": row["question_id"],
                      "answer": row["answer"][:MAX_CHARS], "alignment": float(row["alignment"]),
                      "coherence": float(row["coherence"]), "family": row["family"], "source": row["source"],
                      "weight": round(weights[i], 4)}
            raw.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    print(f"{len(keep)} of {len(frame)} rows ({int(flags[keep].sum())} misaligned) -> {EM_JUDGED}")


if __name__ == "__main__":
    main()
