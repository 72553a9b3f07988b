"""The one-way data path: a module imports only from its own stage or earlier ones (DEVELOPERS.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geomis"

STAGES: list[tuple[str, set[str]]] = [
    ("infrastructure", {"__init__", "errors", "settings", "atomic_files", "hub_access", "gguf_weights", "tiny_gemma", "models",
                        "profiles", "toy_models", "spillover"}),
    ("texts", {"chat_data"}),
    ("tokens", {"chat_tokens"}),
    ("activations", {"activations"}),
    ("SAEs", {"sae_training", "sae_loading"}),
    ("SAE codes", {"sae_codes"}),
    ("feature sets", {"feature_sets", "toxic_features"}),
    ("geometry", {"geometry", "feature_labels", "overlap_study"}),
    ("sample scores", {"sample_scores"}),
    ("filtered data", {"data_filter", "filter_files"}),
    ("fine-tune", {"finetune"}),
    ("evaluation", {"eval_questions", "answer_sampling", "judge_scores", "judge_replies", "judge_rubric",
                    "openai_judge", "local_judge", "offline_judge", "judge_labels", "judge_kinds", "judge_files",
                    "eval_metrics", "evaluation", "training_dynamics"}),
    ("figures", {"figures", "geometry_figures", "eval_figures"}),
    ("orchestration", {"filter_run", "reproduce", "cli", "book_build", "__main__"}),
]
STAGE_OF = {module: index for index, (_, modules) in enumerate(STAGES) for module in modules}


def _geomis_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("geomis."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.module == "geomis":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("geomis."))
    return found


def test_every_module_has_a_stage() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules - set(STAGE_OF) == set(), "add new modules to STAGES (and to DEVELOPERS.md's table)"
    assert set(STAGE_OF) - modules == set(), "STAGES names a module that no longer exists"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.stem)
def test_imports_never_reach_up_the_data_path(path: Path) -> None:
    own = STAGE_OF[path.stem]
    later = {name: STAGES[STAGE_OF[name]][0] for name in _geomis_imports(path)
             if name in STAGE_OF and STAGE_OF[name] > own}
    assert not later, f"{path.stem} ({STAGES[own][0]}) imports later stages: {later}"
