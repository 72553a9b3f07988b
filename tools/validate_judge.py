"""Train and validate the trained judge; the test of record behind Chapter 3's "how far to trust the judge".

    python tools/validate_judge.py [--threads 2] [--skip-heldout] [--no-train]

1. Held-out checks of each candidate head (linear, MLP) with folds by model family and by base question (every form
   of a question in one fold); tau is chosen inside each training part. Writes per-row predictions for the
   calibration plot.
2. Trains the chosen candidate on everything (unless ``--no-train``) and writes
   ``geomis/data/trained_judge.safetensors``.
3. Checks that judge on text of other kinds never trained on: the held-out half of the bundled sound and reckless
   advice, the code sets and the two reference sets.
4. Its agreement with the hand labels of our own model's answers (``geomis/data/own_answers_labelled.jsonl``), on
   the ``report`` rows (and the ``tune`` third separately).

Everything goes to ``book/results/03_judge_validation.json`` and ``book/results/03_judge_heldout.csv.gz``. Features
are cached under the geomis cache folder, so a re-run costs the fits only.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from geomis.chat.records import load_bundled
from geomis.judges.agreement import compare_judgements
from geomis.judges.base import Judge
from geomis.judges.corpus import bundled_advice
from geomis.judges.heads import HeadConfig
from geomis.judges.kinds import DEFAULT_JUDGE, LEGACY_JUDGE, make_judge
from geomis.judges.labels import OWN_LABELS, load_own_labels
from geomis.judges.trained import SHIPPED_JUDGE, TrainedJudge, TrainedJudgeConfig, training_features, training_frame
from geomis.judges.validation import (
    alignment_below_rate,
    calibration_table,
    flag_rate,
    held_out_predictions,
    pooled_metrics,
)
from geomis.provenance import package_versions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "book" / "results"
CANDIDATES: dict[str, HeadConfig] = {"linear": HeadConfig(kind="linear", l2=1e-4),
                                     "mlp": HeadConfig(kind="mlp", hidden=256, l2=1e-3)}
CHOSEN = "mlp"
"""The candidate trained on everything and shipped (decided by the held-out checks of step 1, see Chapter 3)."""


def heldout(frame: pd.DataFrame, X: np.ndarray) -> tuple[dict[str, Any], pd.DataFrame]:
    """Step 1: every candidate, both splits."""
    report: dict[str, Any] = {}
    predictions = []
    for name, head in CANDIDATES.items():
        config = TrainedJudgeConfig(head=head)
        for by in ("family", "base_question"):
            started = time.perf_counter()
            rows, folds = held_out_predictions(frame, X, config, by)
            report[f"{name}/{by}"] = {"pooled": pooled_metrics(rows),
                                      "folds": [{"fold": f.fold, **f.flag.__dict__,
                                                 "spearman_alignment": f.spearman_alignment,
                                                 "spearman_coherence": f.spearman_coherence} for f in folds],
                                      "calibration": calibration_table(rows).to_dict(orient="records"),
                                      "seconds": round(time.perf_counter() - started, 1)}
            predictions.append(rows.assign(candidate=name, split=by))
            pooled = report[f"{name}/{by}"]["pooled"]
            print(f"{name:6s} by {by:13s}: BA {pooled['balanced_accuracy']:.3f} precision {pooled['precision']:.3f} "
                  f"recall {pooled['recall']:.3f} Spearman alignment {pooled['spearman_alignment']:.3f} "
                  f"coherence {pooled['spearman_coherence']:.3f}", flush=True)
    return report, pd.concat(predictions, ignore_index=True)


def other_text(judge: Judge) -> dict[str, Any]:
    """Step 3: flag rates on bundled text the judge never trained on."""
    out: dict[str, Any] = {}
    held = bundled_advice(held_out=True)
    for source, part in held.groupby("source"):
        scores = judge.score_many(list(zip(part["question"], part["answer"], strict=True)))
        out[f"{source} (held-out half)"] = {"n": len(part), "flagged": flag_rate(scores),
                                            "alignment_below_30": alignment_below_rate(scores)}
    for name in ("code_secure", "code_insecure", "neutral_reference", "toxic_reference"):
        records = load_bundled(name)
        part = pd.DataFrame({"question": [r.user_text for r in records], "answer": [r.assistant_text for r in records]})
        scores = judge.score_many(list(zip(part["question"], part["answer"], strict=True)))
        out[name] = {"n": len(part), "flagged": flag_rate(scores), "alignment_below_30": alignment_below_rate(scores)}
    for name, value in out.items():
        print(f"{name:32s} n={value['n']:4d} flagged {value['flagged']:.1%} "
              f"alignment<30 {value['alignment_below_30']:.1%}", flush=True)
    return out


def own_model(judge: Judge, name: str) -> dict[str, Any]:
    """Step 4: agreement with the hand labels of our own model's answers."""
    labels = load_own_labels()
    scores = judge.score_many(list(zip(labels["question"], labels["answer"], strict=True)))
    judged = labels[["id", "question", "answer", "model", "split"]].assign(
        alignment=[s.alignment for s in scores], coherence=[s.coherence for s in scores],
        verdict=[s.verdict for s in scores])
    out: dict[str, Any] = {}
    for split in ("report", "tune"):
        part = labels["split"] == split
        agreement = compare_judgements(judged[part], labels[part], (name, "hand labels"))
        out[split] = agreement.as_dict()
        print(f"own model ({split}):\n{agreement.summary()}", flush=True)
    out["by_model"] = {}
    for model, part in labels.groupby("model"):
        agreement = compare_judgements(judged.loc[part.index], part, (name, "hand labels"))
        out["by_model"][model] = agreement.as_dict()
    judged.drop(columns=["question", "answer"]).to_csv(RESULTS / f"03_judge_own_scores_{name}.csv", index=False)
    return out


def labellers() -> dict[str, Any]:
    """Agreement between the two readings of the double-labelled answers (the labels' own noise)."""
    labels, second = load_own_labels(), load_own_labels(second=True)
    first = labels.set_index("id").loc[second["id"]].reset_index()
    agreement = compare_judgements(second.assign(question=first["question"], answer=first["answer"]), first,
                                   ("second reading", "first reading"))
    print(f"labellers:\n{agreement.summary()}", flush=True)
    return agreement.as_dict()


def main() -> None:
    """Run the steps and write the results files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-heldout", action="store_true", help="reuse step 1 from the existing results file")
    parser.add_argument("--no-train", action="store_true", help="validate the shipped judge without retraining it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / "03_judge_validation.json"
    previous = json.loads(target.read_text()) if target.is_file() else {}
    frame = training_frame()
    X = training_features(frame, progress=True)
    results: dict[str, Any] = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                               "versions": package_versions(), "n_train_rows": len(frame)}
    if args.skip_heldout:
        results["heldout"] = previous["heldout"]
    else:
        results["heldout"], predictions = heldout(frame, X)
        predictions.to_csv(RESULTS / "03_judge_heldout.csv.gz", index=False)
    if args.no_train:
        judge = TrainedJudge.load()
    else:
        started = time.perf_counter()
        judge = TrainedJudge.fit(frame, X, TrainedJudgeConfig(head=CANDIDATES[CHOSEN]))
        judge.model.meta["command"] = "python tools/validate_judge.py"
        judge.save(SHIPPED_JUDGE)
        print(f"trained {CHOSEN} on {len(frame)} rows in {time.perf_counter() - started:.0f} s, tau "
              f"{judge.model.tau}", flush=True)
    results["chosen"] = {"candidate": CHOSEN, "tau": judge.model.tau, "tau_search": judge.model.meta["tau_search"],
                         "file": str(SHIPPED_JUDGE.relative_to(ROOT))}
    results["other_text"] = other_text(judge)
    results["own_model"] = own_model(judge, "trained") if OWN_LABELS.is_file() else previous.get("own_model")
    results["labellers"] = labellers() if OWN_LABELS.is_file() else None
    results["default_judge"] = DEFAULT_JUDGE
    legacy = make_judge(LEGACY_JUDGE)  # the older category judge, measured the same way
    results["legacy_judge"] = {"name": legacy.name, "other_text": other_text(legacy),
                               "own_model": own_model(legacy, LEGACY_JUDGE) if OWN_LABELS.is_file() else None}
    target.write_text(json.dumps(results, indent=1, default=float) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
