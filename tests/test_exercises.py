"""The implement-it-yourself exercises: every check passes the worked solution, fails plausible wrong answers and
stubs with a message that says what is wrong, and every exercise in a chapter has marks, a time, a hint, a
collapsed solution and a check cell that survives into the teaching pack."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest
import torch
from tool_loader import load_tool
from torch import Tensor

import geomis as gm
from geomis.exercises import ExerciseFailure, ch1, ch2, ch3, ch4, ch5
from geomis.exercises.check import Case, Mistake, check_function, compare_tensors
from geomis.toy.models import ToyModel, ToyModelConfig
from geomis.toy.spillover import AmplifyConfig, fine_tune_to_amplify, spillover_law

ROOT = Path(__file__).resolve().parent.parent
# Chapters whose exercises follow the implement-and-check format (extend as chapters are converted).
EXERCISE_CHAPTERS = ["01_superposition", "02_feature_overlap", "03_emergent_misalignment", "04_geometry_filter",
                     "05_mechanism"]
# Chapters whose code cells must fit in 88 columns (extend as chapters are reformatted).
LINE_LIMIT_CHAPTERS = ["01_superposition", "02_feature_overlap", "03_emergent_misalignment", "04_geometry_filter",
                       "05_mechanism"]
MAX_CODE_LINE = 88
CHECK_MODULES = {"01_superposition": ch1, "02_feature_overlap": ch2, "03_emergent_misalignment": ch3,
                 "04_geometry_filter": ch4, "05_mechanism": ch5}

# ---------------------------------------------------------------------------------------------------------------
# Worked solutions (written independently of the chapter's, so both are exercised).
# ---------------------------------------------------------------------------------------------------------------


def sparse_batch(batch_size: int, n_features: int, p: float, generator: torch.Generator) -> Tensor:
    present = torch.rand(batch_size, n_features, generator=generator) < p
    return torch.where(present, torch.rand(batch_size, n_features, generator=generator), 0.0)


def toy_forward(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
    return torch.relu(torch.einsum("mn,mk,bk->bn", W, W, x) + b)


def importance_loss(x: Tensor, x_hat: Tensor, importance: Tensor) -> Tensor:
    return ((x - x_hat) ** 2 @ importance).mean()


def dimensions_per_feature(W: Tensor) -> Tensor:
    gram = W.T @ W
    norms_sq = gram.diagonal()
    overlaps = gram**2 / norms_sq.clamp_min(1e-12)[:, None]
    return torch.where(norms_sq > 0, norms_sq / overlaps.sum(-1).clamp_min(1e-12), 0.0)


def encoder_sgd_step(E: Tensor, W: Tensor, b: Tensor, x: Tensor, target: int, lr: float) -> Tensor:
    d_t = W[:, target]
    active = (x @ E.T @ d_t + b[target] > 0).to(x.dtype)
    return E + lr * torch.outer(d_t, (active[:, None] * x).mean(0))


def encoder_sgd_step_autograd(E: Tensor, W: Tensor, b: Tensor, x: Tensor, target: int, lr: float) -> Tensor:
    E = E.clone().requires_grad_(True)
    loss = -torch.relu(x @ E.T @ W[:, target] + b[target]).mean()
    loss.backward()
    assert E.grad is not None
    return (E - lr * E.grad).detach()


def predict_spillover(W: Tensor, target: int, alpha: float) -> Tensor:
    return alpha * torch.einsum("mj,m->j", W, W[:, target])


def closest_features(W: Tensor, target: int, k: int) -> Tensor:
    unit = W / W.norm(dim=0).clamp_min(1e-8)
    cosines = unit.T @ unit[:, target]
    order = [int(j) for j in cosines.argsort(descending=True) if int(j) != target]
    return torch.tensor(order[:k])


SOLUTIONS: dict[str, Callable[..., Any]] = {
    "check_sparse_batch": sparse_batch,
    "check_toy_forward": toy_forward,
    "check_importance_loss": importance_loss,
    "check_dimensions_per_feature": dimensions_per_feature,
    "check_encoder_sgd_step": encoder_sgd_step,
    "check_spillover_prediction": predict_spillover,
    "check_closest_features": closest_features,
}

# ---------------------------------------------------------------------------------------------------------------
# Plausible wrong answers: (check, wrong function, phrases the message must contain).
# ---------------------------------------------------------------------------------------------------------------


def _batch_swapped_p(batch_size, n_features, p, generator):
    present = torch.rand(batch_size, n_features, generator=generator) < 1 - p  # sparsity used as probability
    return torch.rand(batch_size, n_features, generator=generator) * present


def _batch_mask_only(batch_size, n_features, p, generator):
    return (torch.rand(batch_size, n_features, generator=generator) < p).float()


def _batch_normal_values(batch_size, n_features, p, generator):
    present = torch.rand(batch_size, n_features, generator=generator) < p
    return torch.randn(batch_size, n_features, generator=generator) * present


def _batch_no_generator(batch_size, n_features, p, generator):
    return torch.rand(batch_size, n_features) * (torch.rand(batch_size, n_features) < p)


def _batch_one_coin_per_input(batch_size, n_features, p, generator):
    present = torch.rand(batch_size, 1, generator=generator) < p
    return torch.rand(batch_size, n_features, generator=generator) * present


def _batch_transposed(batch_size, n_features, p, generator):
    return sparse_batch(n_features, batch_size, p, generator)


WRONG: list[tuple[str, str, Callable[..., Any], tuple[str, ...]]] = [
    ("sparse_batch: 1 - p", "check_sparse_batch", _batch_swapped_p, ("p = 0.1", "That is 1 - p")),
    ("sparse_batch: mask only", "check_sparse_batch", _batch_mask_only, ("non-zero values have mean", "uniform")),
    ("sparse_batch: normal values", "check_sparse_batch", _batch_normal_values, ("values range from", "[0, 1]")),
    ("sparse_batch: no generator", "check_sparse_batch", _batch_no_generator, ("seeded alike", "generator")),
    ("sparse_batch: one coin per input", "check_sparse_batch", _batch_one_coin_per_input,
     ("present features per input", "independently")),
    ("sparse_batch: transposed", "check_sparse_batch", _batch_transposed, ("shape (20, 8192)", "(8192, 20)")),
    ("toy_forward: no ReLU", "check_toy_forward", lambda W, b, x: (x @ W.T) @ W + b,
     ("random weights and bias", "leave out the ReLU")),
    ("toy_forward: no bias", "check_toy_forward", lambda W, b, x: torch.relu((x @ W.T) @ W),
     ("leave out the bias",)),
    ("toy_forward: W W^T", "check_toy_forward", lambda W, b, x: torch.relu(x @ (W @ W.T) + b),
     ("raised RuntimeError", "random weights and bias", "shape (5, 20)")),
    ("toy_forward: bias after ReLU", "check_toy_forward", lambda W, b, x: torch.relu(x @ W.T @ W) + b,
     ("add the bias after the ReLU",)),
    ("importance_loss: unweighted", "check_importance_loss", lambda x, x_hat, imp: ((x - x_hat) ** 2).sum(1).mean(),
     ("importance 0.9^i", "leave out the importance weights")),
    ("importance_loss: mean over features", "check_importance_loss",
     lambda x, x_hat, imp: torch.mean(imp * (x - x_hat) ** 2), ("average over the features",)),
    ("importance_loss: per input", "check_importance_loss", lambda x, x_hat, imp: (imp * (x - x_hat) ** 2).sum(1),
     ("shape (32,), expected ()",)),
    ("dimensions: all normalised", "check_dimensions_per_feature",
     lambda W: W.norm(dim=0) ** 2 / ((torch.nn.functional.normalize(W, dim=0).T
                                       @ torch.nn.functional.normalize(W, dim=0)) ** 2).sum(-1),
     ("random directions of different lengths", "normalise every direction")),
    ("dimensions: no guard for d_j = 0", "check_dimensions_per_feature",
     lambda W: W.norm(dim=0) ** 2 / (((W / W.norm(dim=0)).T @ W) ** 2).sum(-1),
     ("two antipodal pairs and a dropped feature", "nan", "divided by zero")),
    ("dimensions: rows of W", "check_dimensions_per_feature",
     lambda W: W.norm(dim=1) ** 2 / (((W / W.norm(dim=1, keepdim=True)) @ W.T) ** 2).sum(-1),
     ("shape (5,), expected (20,)",)),
    ("sgd step: no ReLU derivative", "check_encoder_sgd_step",
     lambda E, W, b, x, t, lr: E + lr * torch.outer(W[:, t], x.mean(0)), ("forget the ReLU's derivative",)),
    ("sgd step: uphill", "check_encoder_sgd_step",
     lambda E, W, b, x, t, lr: 2 * E - encoder_sgd_step(E, W, b, x, t, lr),
     ("encoder = readout, target 0", "step uphill")),
    ("sgd step: encoder column as d_t", "check_encoder_sgd_step",
     lambda E, W, b, x, t, lr: encoder_sgd_step(E, E, b, x, t, lr),
     ("encoder differs from readout", "from the encoder E instead of the frozen readout W")),
    ("sgd step: summed", "check_encoder_sgd_step",
     lambda E, W, b, x, t, lr: E + (encoder_sgd_step(E, W, b, x, t, lr) - E) * x.shape[0],
     ("sum over the inputs instead of averaging",)),
    ("spillover: cosine", "check_spillover_prediction",
     lambda W, t, alpha: alpha * torch.nn.functional.cosine_similarity(W, W[:, t:t + 1], dim=0),
     ("random directions, alpha = 0.7", "use the cosine")),
    ("spillover: row of W", "check_spillover_prediction", lambda W, t, alpha: alpha * W @ W[t],
     ("shape (5,), expected (20,)",)),
    ("spillover: no alpha", "check_spillover_prediction", lambda W, t, alpha: W.T @ W[:, t],
     ("forget to multiply by alpha",)),
    ("closest: dot product", "check_closest_features",
     lambda W, t, k: (W.T @ W[:, t]).index_fill(0, torch.tensor([t]), -1e9).topk(k).indices,
     ("random directions, k = 3", "you returned [16, 4, 11]", "rank by the dot product")),
    ("closest: includes the target", "check_closest_features",
     lambda W, t, k: torch.nn.functional.cosine_similarity(W, W[:, t:t + 1], dim=0).topk(k).indices,
     ("random directions, k = 3", "contains the target 0")),
    ("closest: cosines instead of indices", "check_closest_features",
     lambda W, t, k: torch.nn.functional.cosine_similarity(W, W[:, t:t + 1], dim=0)[:k],
     ("integer feature indices",)),
    ("closest: least similar", "check_closest_features",
     lambda W, t, k: torch.nn.functional.cosine_similarity(W, W[:, t:t + 1], dim=0).topk(k, largest=False).indices,
     ("least similar features",)),
]


def test_an_autograd_solution_passes_too(capsys: pytest.CaptureFixture[str]) -> None:
    ch1.check_encoder_sgd_step(encoder_sgd_step_autograd)
    assert capsys.readouterr().out.startswith("✅ passed: encoder_sgd_step")


def test_a_loss_returned_as_a_float_passes(capsys: pytest.CaptureFixture[str]) -> None:
    ch1.check_importance_loss(lambda x, x_hat, imp: float(importance_loss(x, x_hat, imp)))
    assert capsys.readouterr().out.startswith("✅ passed")


def test_exercise_failure_is_an_assertion_error() -> None:
    # nbval and pytest treat it as a failed assertion: a broken worked solution fails the chapter's cell.
    assert issubclass(ExerciseFailure, AssertionError)


def test_a_student_function_that_edits_its_input_cannot_spoil_the_reference() -> None:
    def in_place(W: Tensor, b: Tensor, x: Tensor) -> Tensor:
        out = toy_forward(W, b, x)
        W.zero_()
        return out

    ch1.check_toy_forward(in_place)


def test_the_message_names_the_mistake_only_when_the_output_matches_it() -> None:
    case = Case("c", (torch.tensor([1.0, 2.0]),))
    mistakes = [Mistake("double it", lambda v: 2 * v)]
    with pytest.raises(ExerciseFailure, match="what you get if you double it"):
        check_function("f", lambda v: 2 * v, lambda v: v, [case], mistakes=mistakes)
    with pytest.raises(ExerciseFailure) as failure:
        check_function("f", lambda v: 3 * v, lambda v: v, [case], mistakes=mistakes)
    assert "what you get if" not in str(failure.value)
    assert "largest difference is at index [1]: expected 2, got 6" in str(failure.value)


def test_compare_tensors_reports_shapes_values_and_non_finite_entries() -> None:
    case = Case("c", ())
    assert compare_tensors(torch.ones(3), torch.ones(3) + 1e-7, case) is None
    assert "shape (3,), expected (2,)" in str(compare_tensors(torch.ones(3), torch.ones(2), case))
    assert "contains nan at index [1]" in str(compare_tensors(torch.tensor([1.0, float("nan")]), torch.ones(2), case))
    assert "expected 1, got 1.5" in str(compare_tensors(torch.tensor(1.5), torch.tensor(1.0), case))


# ---------------------------------------------------------------------------------------------------------------
# The references are geomis' own code and agree with what the chapter measures.
# ---------------------------------------------------------------------------------------------------------------


def _random_model(seed: int, p: float = 0.05) -> ToyModel:
    cfg = ToyModelConfig(n_features=12, n_hidden=4, feature_probability=(p,))
    model = ToyModel(cfg, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        model.b.copy_(-0.05 * torch.rand(1, 12, generator=torch.Generator().manual_seed(seed + 1)))
    return model


def test_reference_sgd_step_is_the_first_step_of_fine_tune_to_amplify() -> None:
    model = _random_model(0)
    cfg = AmplifyConfig(target=3, steps=1, lr=0.05, batch_size=128, seed=2)
    tuned = fine_tune_to_amplify(model, cfg)
    W, b = model.W[0].detach(), model.b[0].detach()
    step = ch1.reference_encoder_sgd_step(W, W, b, tuned.inputs, 3, 0.05)
    torch.testing.assert_close(step, tuned.encoder)
    assert torch.linalg.matrix_rank(step - W, atol=1e-6) == 1


def test_reference_spillover_prediction_matches_the_measured_changes() -> None:
    model = _random_model(3)
    law = spillover_law(model, AmplifyConfig(target=1, steps=20, lr=0.05, batch_size=256))
    predicted = ch1.reference_spillover_prediction(model.W[0].detach(), 1, law.changes.alpha)
    torch.testing.assert_close(predicted, law.changes.pre_activation, atol=1e-5, rtol=1e-4)


def test_reference_dimensions_of_textbook_arrangements() -> None:
    angles = torch.arange(5) * 2 * torch.pi / 5
    pentagon = torch.stack([angles.cos(), angles.sin()])
    torch.testing.assert_close(ch1.reference_dimensions_per_feature(pentagon), torch.full((5,), 0.4))
    antipodal = torch.tensor([[1.0, -1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0, 0.0]])
    torch.testing.assert_close(ch1.reference_dimensions_per_feature(antipodal), torch.tensor([0.5] * 4 + [0.0]))


def test_reference_closest_features_excludes_the_target_and_orders_by_cosine() -> None:
    W = torch.tensor([[1.0, 0.9, -1.0, 0.0, 5.0], [0.0, 0.1, 0.0, 1.0, 5.0]])
    assert ch1.reference_closest_features(W, 0, 4).tolist() == [1, 4, 3, 2]


# ---------------------------------------------------------------------------------------------------------------
# The chapters: every exercise is complete, every numbered section states objectives, code fits in 88 columns.
# ---------------------------------------------------------------------------------------------------------------

EXERCISE_HEADING = re.compile(r"^### Exercise (\d+\.\d+)( \(explore\))?: \S.*$", re.MULTILINE)
MARKS = re.compile(r"\*\*Difficulty\*\* (🔴+⚪*) · \*\*Importance\*\* (🔵+⚪*) · \*\*Time\*\* about (\d+) minutes")
HINT = re.compile(r"^:::\{dropdown\} Hint\n.+\n:::$", re.DOTALL)
CHECK_CALL = re.compile(r"^gm\.exercises\.ch(\d+)\.(check_\w+)\((\w+)\)$", re.MULTILINE)


def _notebook(stem: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "book" / f"{stem}.ipynb", as_version=4)


def _tags(cell: nbformat.NotebookNode) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _exercises(notebook: nbformat.NotebookNode) -> list[tuple[re.Match[str], list[nbformat.NotebookNode]]]:
    """Each exercise's heading match and its cells, up to the next markdown heading."""
    found = []
    for index, cell in enumerate(notebook.cells):
        match = EXERCISE_HEADING.match(cell.source) if cell.cell_type == "markdown" else None
        if match:
            block = [cell]
            for later in notebook.cells[index + 1:]:
                if later.cell_type == "markdown" and later.source.startswith("#"):
                    break
                block.append(later)
            found.append((match, block))
    return found


@pytest.mark.parametrize("stem", EXERCISE_CHAPTERS)
def test_every_exercise_has_marks_time_hint_solution_and_check(stem: str) -> None:
    module = CHECK_MODULES[stem]
    exercises = _exercises(_notebook(stem))
    implement = [(match, block) for match, block in exercises if not match.group(2)]
    assert len(implement) >= 4, f"{stem}: {len(implement)} implement-and-check exercises, the issue asks for 4"
    used_checks = []
    for match, block in exercises:
        label = f"{stem}, Exercise {match.group(1)}"
        marks = MARKS.search(block[0].source)
        assert marks, f"{label}: no difficulty / importance / time line"
        assert len(marks.group(1)) == 5 and len(marks.group(2)) == 5, f"{label}: marks are out of five"
        assert 1 <= int(marks.group(3)) <= 60, f"{label}: time {marks.group(3)} minutes"
        assert any(cell.cell_type == "markdown" and HINT.match(cell.source) for cell in block), \
            f"{label}: no ':::{{dropdown}} Hint' cell"
        solutions = [i for i, cell in enumerate(block) if "solution" in _tags(cell)]
        assert solutions, f"{label}: no cell tagged 'solution'"
        assert all("hide-cell" in _tags(block[i]) for i in solutions), f"{label}: a solution is not collapsed"
        if match.group(2):  # explore: no function to check
            continue
        after = [cell for cell in block[solutions[-1] + 1:] if cell.cell_type == "code"]
        calls = [call for cell in after for call in CHECK_CALL.finditer(cell.source)]
        assert calls, f"{label}: no gm.exercises check call after the solution"
        assert "solution" not in _tags(after[0]) and CHECK_CALL.search(after[0].source), \
            f"{label}: the check must be the first code cell after the solution (it stays in the teaching pack)"
        _, check, function = calls[0].groups()
        assert check in module.__all__, f"{label}: {check} is not a check of {module.__name__}"
        solution_code = "\n".join(block[i].source for i in solutions)
        assert re.search(rf"^def {function}\(", solution_code, re.MULTILINE), f"{label}: solution defines no {function}"
        assert re.search(rf"^def {function}\(", block[0].source, re.MULTILINE), \
            f"{label}: the statement does not show the signature of {function}"
        used_checks.append(check)
    assert sorted(used_checks) == sorted(n for n in module.__all__ if n.startswith("check_")), \
        f"{stem}: every check is used by exactly one exercise"


@pytest.mark.parametrize("stem", EXERCISE_CHAPTERS)
def test_the_chapters_worked_solutions_pass_their_checks(stem: str, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, Any] = {"torch": torch, "Tensor": Tensor, "gm": gm}
    for match, block in _exercises(_notebook(stem)):
        if match.group(2):
            continue
        for cell in block:
            if "solution" in _tags(cell) or CHECK_CALL.search(cell.source):
                exec(cell.source, namespace)  # a function definition, or the check call
                if CHECK_CALL.search(cell.source):
                    assert capsys.readouterr().out.startswith("✅ passed"), f"Exercise {match.group(1)}"
                    break


@pytest.mark.parametrize("stem", EXERCISE_CHAPTERS)
def test_every_numbered_section_states_learning_objectives(stem: str) -> None:
    cells = _notebook(stem).cells
    assert "**Learning objectives.**" in cells[0].source and "Share of the time" in cells[0].source
    sections = [cell.source for cell in cells if cell.cell_type == "markdown" and re.match(r"## \d+\. ", cell.source)]
    assert len(sections) >= 3
    for source in sections:
        heading = source.splitlines()[0]
        assert re.search(r"\*\*Learning objectives\.\*\* You will be able to\n\n- ", source), \
            f"{stem}: '{heading}' has no 'You will be able to' list"
        assert heading[3:].split(". ", 1)[1].split(":")[0].strip() in cells[0].source, \
            f"{stem}: '{heading}' is missing from the chapter's table of time shares"


@pytest.mark.parametrize("stem", LINE_LIMIT_CHAPTERS)
def test_code_cells_fit_in_88_columns(stem: str) -> None:
    long = [(index, line) for index, cell in enumerate(_notebook(stem).cells) if cell.cell_type == "code"
            for line in cell.source.splitlines() if len(line) > MAX_CODE_LINE]
    assert not long, f"{stem}: code lines over {MAX_CODE_LINE} characters: {long}"


# ---------------------------------------------------------------------------------------------------------------
# The teaching pack keeps the statements, hints (as <details>) and checks, and drops the solutions.
# ---------------------------------------------------------------------------------------------------------------


def _make_exercises_tool():
    return load_tool("make_exercises", "make_exercises_for_test")


def test_dropdowns_become_details_in_the_teaching_pack() -> None:
    tool = _make_exercises_tool()
    source = "Before.\n\n:::{dropdown} Hint\n:open:\nUse `x @ W.T`, then $W^\\top h$.\n:::\n\nAfter."
    converted = tool._markdown(source, "01_superposition.ipynb", "01_superposition_exercises.ipynb")
    assert converted == ("Before.\n\n<details>\n<summary>Hint</summary>\n\nUse `x @ W.T`, then $W^\\top h$.\n\n"
                         "</details>\n\nAfter.")


@pytest.mark.parametrize("stem", EXERCISE_CHAPTERS)
def test_the_teaching_pack_keeps_statements_hints_and_checks(stem: str) -> None:
    pack = nbformat.read(ROOT / "teaching" / f"{stem}_exercises.ipynb", as_version=4)
    text = "\n".join(cell.source for cell in pack.cells)
    for match, block in _exercises(_notebook(stem)):
        assert match.group(0) in text
        for cell in block:
            if CHECK_CALL.search(cell.source):
                assert CHECK_CALL.search(cell.source).group(0) in text  # type: ignore[union-attr]
            if "solution" in _tags(cell):
                body = [line for line in cell.source.splitlines() if line.startswith("    ") and "return" in line]
                assert not any(line in text for line in body), f"Exercise {match.group(1)}: solution leaked"
    assert ":::{dropdown}" not in text and text.count("<summary>Hint</summary>") == len(_exercises(_notebook(stem)))
