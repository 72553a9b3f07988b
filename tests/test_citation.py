"""The paper the book teaches is cited with its real title everywhere, and its datasets' sources are named right."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TITLE = "Understanding Emergent Misalignment via Feature Superposition Geometry"
WRONG = "through the Lens of Feature Superposition Geometry"


def _texts() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
             for p in [ROOT / "references.bib", ROOT / "README.md", *sorted((ROOT / "book").glob("*.md"))]}
    for notebook in sorted((ROOT / "book").glob("*.ipynb")):
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        texts[str(notebook.relative_to(ROOT))] = "\n".join("".join(c["source"]) for c in cells)
    return texts


def test_the_paper_is_cited_with_its_title() -> None:
    texts = _texts()
    assert [name for name, text in texts.items() if WRONG in text] == []
    bib = " ".join(texts["references.bib"].split())
    assert f"title = {{{TITLE}}}" in bib and "arXiv:2605.00842" in bib
    assert TITLE in texts["book/intro.md"]  # the BibTeX block readers copy


def test_turner_et_al_datasets_are_not_said_to_include_legal_advice() -> None:
    for name, text in _texts().items():
        flat = " ".join(text.split())
        assert "medical, legal or financial advice {cite}`turner2025organisms`" not in flat, name
