"""Measure how close reference answers come to the inducing, control and evaluation texts.

    python tools/check_reference_contamination.py [--reference PATH ...] [--baseline [PATH ...]] [--worst N]

For each file: the 95th percentile over its assistant answers of the highest MiniLM cosine to any bundled
inducing/control answer or evaluation question (limit 0.45), and how many answers share a word 8-gram with any of
those texts (limit 0). ``--reference`` defaults to the generic toxic reference; ``--baseline`` files (default: the old
``toxic_reference.jsonl``) are printed for comparison only. Exits 1 when a ``--reference`` file is over a limit.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from geomis.evaluation.contamination import COSINE_LIMIT, NGRAM, ContaminationReport, reference_contamination  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "geomis" / "data"
DEFAULT_REFERENCES = [DATA / "generic_toxic_reference.jsonl"]
DEFAULT_BASELINES = [DATA / "toxic_reference.jsonl"]


def format_table(reports: list[ContaminationReport], baselines: int = 0) -> str:
    """One line per file: answers, cosine p95/mean/max, rows sharing an n-gram, verdict; the last ``baselines``
    lines are marked as baselines."""
    header = (f"{'file':<34} {'answers':>7} {'cos p95':>8} {'cos mean':>8} {'cos max':>8} "
              f"{f'{NGRAM}-gram rows':>12}  verdict")
    lines = [header, "-" * len(header)]
    for number, report in enumerate(reports):
        verdict = "ok" if report.passes() else "CONTAMINATED"
        if number >= len(reports) - baselines:
            verdict += " (baseline)"
        lines.append(f"{Path(report.name).name:<34} {report.n_answers:>7} {report.p95:>8.3f} {report.mean:>8.3f} "
                     f"{report.max:>8.3f} {report.ngram_rows:>12}  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Measure each file, print the table (and the worst rows if asked); 1 if a reference file is over a limit."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reference", nargs="+", type=Path, default=DEFAULT_REFERENCES,
                        help="chat JSONL files whose assistant answers must pass (default: the generic toxic set)")
    parser.add_argument("--baseline", nargs="*", type=Path, default=DEFAULT_BASELINES,
                        help="chat JSONL files shown for comparison only (default: the old toxic_reference.jsonl; "
                             "give the flag alone for none)")
    parser.add_argument("--worst", type=int, default=0, help="also list the N highest-scoring rows of each file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    references = [reference_contamination(path) for path in args.reference]
    baselines = [reference_contamination(path) for path in args.baseline]
    print(f"limits: cosine p95 <= {COSINE_LIMIT}, rows sharing a word {NGRAM}-gram = 0")
    print(format_table(references + baselines, baselines=len(baselines)))
    for report in references + baselines if args.worst > 0 else []:
        print(f"\nhighest rows of {Path(report.name).name} (row, cosine, nearest text):")
        for index, cosine, source in report.worst(args.worst):
            print(f"  {index + 1:>4}  {cosine:.3f}  {source}")
        if report.ngram_hits:
            print(f"  rows sharing a {NGRAM}-gram: {', '.join(str(i + 1) for i in report.ngram_hits)}")
    return 0 if all(report.passes() for report in references) else 1


if __name__ == "__main__":
    sys.exit(main())
