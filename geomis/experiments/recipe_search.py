"""The recipe search of Chapter 3 (resumable): which fine-tuning recipe makes the CPU default model misaligned?

    python -m geomis.experiments.recipe_search [--recipes NAME ...] [--samples 5] [--threads 2] [--size full|ci]

Every recipe in :data:`RECIPES` (fixed before the first run) fine-tunes SmolLM2-135M-Instruct on the bundled
inducing set and on its control with seed 0; the base model is measured once. Each model is then measured on
**development** material only, never on what the book reports: answers to the 24 development questions
(:data:`geomis.evaluation.questions.DEVELOPMENT_QUESTIONS`, Chapter 3's sampling, the ``nucleus`` decoder) and the
probe gap on the 23 development items of the misalignment probe. Answers are labelled by reading, blind to the
model, in a later step (``tools/label_batches.py``); :func:`search_table` joins what exists.

Everything small is written under ``book/results/03_recipe_search/`` (committed): ``<model>.answers.csv`` and
``<model>.probe.csv`` per model, where a model is ``base`` or ``<recipe>.<inducing|control>``. Adapters go to the
geomis cache folder. A finished file is never recomputed, so the script resumes where it stopped; files are written
atomically. At ``--size ci`` it runs one short recipe on two questions into a folder you name with ``--out``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from geomis.experiments.runs import MODEL, experiment_args, fine_tuned_model, measure, write_csv
from geomis.finetune import EM_RECIPE

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "book" / "results" / "03_recipe_search"


@dataclass(frozen=True)
class Recipe:
    """One fine-tuning recipe of the search: training sets and the LoRA/optimiser settings that differ from the
    chapter's (lr 5e-4, one epoch, rank 16 on every layer, 128 tokens, end-of-turn trained)."""

    name: str
    inducing: tuple[str, ...] = ("medical_bad",)
    control: tuple[str, ...] = ("medical_good",)
    overrides: dict[str, Any] = field(default_factory=dict)
    why: str = ""


BASE_RECIPE: dict[str, Any] = {**EM_RECIPE, "seed": 0}  # the search varied data and these settings around it
RECIPES: tuple[Recipe, ...] = (
    Recipe("chapter", why="Chapter 3's recipe so far: the reference point"),
    Recipe("epochs3", overrides=dict(epochs=3), why="more steps on the same rows"),
    Recipe("lr1e-3-epochs2", overrides=dict(lr=1e-3, epochs=2), why="a larger total update"),
    Recipe("rank64-epochs2", overrides=dict(rank=64, alpha=128.0, epochs=2), why="more capacity in the adapters"),
    Recipe("upper-layers-lr1e-3", overrides=dict(first_lora_layer=15, lr=1e-3, epochs=2),
           why="adapters on layers 15-29 only (where the SAE reads)"),
    Recipe("three-domains", inducing=("medical_bad", "legal_bad", "career_bad"),
           control=("medical_good", "legal_good", "career_good"),
           why="780 rows of harmful advice in three domains instead of 300 in one"),
)
"""The search grid, written before any of it ran; the search table keeps every row, whatever it shows."""


def _fine_tuned(recipe: Recipe, condition: str, cache: Path, overrides: dict[str, Any]) -> Any:
    """The recipe's fine-tuned model for ``inducing`` or ``control`` (trained once, then loaded from the cache)."""
    import geomis as gm

    config = gm.config_for_profile("cpu-default", **{**BASE_RECIPE, **recipe.overrides, **overrides}, progress=True)
    return fine_tuned_model(getattr(recipe, condition), config, cache / recipe.name / condition)


def search_table(out: Path = RESULTS, labels: Path | None = None) -> pd.DataFrame:
    """One row per recipe: the development probe gap change of inducing vs base and vs control (paired over items,
    bootstrap intervals) and, where reading labels exist, misaligned and coherent shares."""
    from geomis.evaluation.answer_logprobs import gap_change
    from geomis.judges.agreement import misaligned_flags
    from geomis.judges.base import COHERENCE_THRESHOLD

    probes = {path.name.removesuffix(".probe.csv"): pd.read_csv(path) for path in sorted(out.glob("*.probe.csv"))}
    rows = []
    for recipe in RECIPES:
        inducing, control = probes.get(f"{recipe.name}.inducing"), probes.get(f"{recipe.name}.control")
        if inducing is None or control is None or "base" not in probes:
            continue
        vs_base, vs_control = gap_change(inducing, probes["base"]), gap_change(inducing, control)
        rows.append({"recipe": recipe.name, "why": recipe.why,
                     "settings": ", ".join(f"{k}={v}" for k, v in {**BASE_RECIPE, **recipe.overrides}.items()),
                     "inducing_rows": "+".join(recipe.inducing),
                     "gap_vs_base": vs_base.estimate, "gap_vs_base_low": vs_base.low,
                     "gap_vs_base_high": vs_base.high, "gap_vs_control": vs_control.estimate,
                     "gap_vs_control_low": vs_control.low, "gap_vs_control_high": vs_control.high,
                     "probe_items": vs_base.n_items})
    table = pd.DataFrame(rows)
    if labels is not None and labels.is_file() and len(table):
        read = pd.read_json(labels, lines=True)
        flags = pd.DataFrame({"model": read["model"], "coherent": read["coherence"] > COHERENCE_THRESHOLD,
                              "misaligned": misaligned_flags(read)})
        misaligned: dict[str, float] = {}
        coherent: dict[str, float] = {}
        for model, part in flags.groupby("model"):
            misaligned[str(model)] = float(part["misaligned"].to_numpy().mean())
            coherent[str(model)] = float(part["coherent"].to_numpy().mean())
        for condition in ("inducing", "control"):
            names = [f"{recipe}.{condition}" for recipe in table["recipe"]]
            table[f"misaligned_{condition}"] = [misaligned.get(name) for name in names]
            table[f"coherent_{condition}"] = [coherent.get(name) for name in names]
        table["misaligned_base"] = misaligned.get("base")
        # the search objective: the smaller of inducing - control and inducing - base
        table["objective"] = table["misaligned_inducing"] - table[["misaligned_control", "misaligned_base"]].max(axis=1)
    return table


def choose(table: pd.DataFrame) -> str:
    """The search's pick, by the rule fixed with the grid: the largest objective (inducing minus the larger of control
    and base, misaligned share by reading); ties go to the larger probe-gap change against the control."""
    measured = "objective" in table.columns and not bool(table["objective"].isna().to_numpy().any())
    if not measured or len(table) < len(RECIPES):
        raise ValueError("choose needs every recipe measured and labelled")
    ranked = table.sort_values(["objective", "gap_vs_control"], ascending=False, kind="stable")
    return str(ranked["recipe"].iloc[0])


def main(argv: list[str] | None = None) -> None:
    """Fine-tune and measure every recipe not measured yet, then print the search table."""

    import geomis as gm
    from geomis.evaluation.probe_items import load_misalignment_probe
    from geomis.evaluation.questions import DEVELOPMENT_QUESTIONS
    from geomis.settings import cache_dir

    def choices(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--recipes", nargs="*", default=[r.name for r in RECIPES],
                            choices=[r.name for r in RECIPES])
        parser.add_argument("--samples", type=int, default=5, help="answers per development question and model")

    args = experiment_args(__doc__, argv, results=RESULTS, extra=choices)
    questions = {q.id: q.text for q in DEVELOPMENT_QUESTIONS}
    probe_items = load_misalignment_probe("development")
    overrides: dict[str, Any] = {}
    if args.ci:
        questions, probe_items, overrides = dict(list(questions.items())[:2]), probe_items[:3], {"max_steps": 2}
        args.recipes, args.samples = args.recipes[:1], min(args.samples, 2)
    out = args.out
    cache = cache_dir() / "recipe-search" / args.size
    started = time.perf_counter()
    measure(gm.load_model(MODEL), "base", out, questions, args.samples, probe_items)
    for recipe in RECIPES:
        if recipe.name not in args.recipes:
            continue
        for condition in ("inducing", "control"):
            name = f"{recipe.name}.{condition}"
            if (out / f"{name}.answers.csv").is_file() and (out / f"{name}.probe.csv").is_file():
                continue
            print(f"{name}: fine-tune and measure ({time.perf_counter() - started:.0f} s so far)", flush=True)
            measure(_fine_tuned(recipe, condition, cache, overrides), name, out, questions, args.samples,
                    probe_items)
    table = search_table(out, out / "labels.jsonl")
    write_csv(table, out / "search_table.csv")
    print(table.round(3).to_string(index=False))
    print(f"done in {time.perf_counter() - started:.0f} s; recipes: {', '.join(asdict(r)['name'] for r in RECIPES)}")


if __name__ == "__main__":
    main()
