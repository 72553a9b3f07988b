"""Training dynamics: per-answer projections onto feature directions, the probe inside fine_tune, and its table."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from geomis.activations import ActivationConfig, collect_residuals
from geomis.evaluation.answer_logprobs import probe_gaps
from geomis.evaluation.dynamics import (
    DynamicsProbe,
    answer_chats,
    feature_directions,
    per_sample_mean,
    project_chats,
    projection_shift,
    random_features,
)
from geomis.evaluation.probe_items import load_misalignment_probe
from geomis.evaluation.sampling import SamplingConfig
from geomis.finetune import FinetuneConfig, fine_tune

LAYER = 2
FAST = FinetuneConfig(batch_size=2, lr=1e-2, warmup_steps=0, epochs=3, progress=False)


def _directions(d_model: int, k: int, seed: int) -> torch.Tensor:
    rows = torch.randn(k, d_model, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=1, keepdim=True)


def test_per_sample_mean_matches_a_loop_and_marks_empty_samples() -> None:
    values = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([0, 2, 0, 2, 2, 3, 0])
    means = per_sample_mean(values, index, n_samples=5)
    for sample in (0, 2, 3):
        assert torch.allclose(means[sample], values[index == sample].mean(dim=0), atol=1e-6)
    assert torch.isnan(means[1]).all() and torch.isnan(means[4]).all()
    with pytest.raises(ValueError, match="one sample index"):
        per_sample_mean(values, index[:-1], n_samples=5)


def test_feature_directions_are_unit_rows_of_the_decoder() -> None:
    decoder = torch.randn(10, 4, generator=torch.Generator().manual_seed(1)) * 3
    rows = feature_directions(decoder, [7, 2])
    assert rows.shape == (2, 4)
    assert torch.allclose(rows.norm(dim=1), torch.ones(2))
    assert torch.allclose(rows[0], decoder[7] / decoder[7].norm())


def test_random_features_are_seeded_distinct_and_avoid_the_excluded() -> None:
    a = random_features(50, 10, exclude=[1, 2, 3], seed=4)
    assert torch.equal(a, random_features(50, 10, exclude=[1, 2, 3], seed=4))
    assert not torch.equal(a, random_features(50, 10, exclude=[1, 2, 3], seed=5))
    assert len(set(a.tolist())) == 10 and not {1, 2, 3} & set(a.tolist())
    with pytest.raises(ValueError, match="cannot draw"):
        random_features(5, 4, exclude=[0, 1])


def test_answer_chats_pairs_each_question_with_its_answer() -> None:
    frame = pd.DataFrame({"question": ["q1", "q2"], "answer": ["a1", "a2"]})
    assert answer_chats(frame) == [[{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
                                   [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]]
    with pytest.raises(ValueError, match="answer"):
        answer_chats(frame.drop(columns="answer"))


def test_project_chats_is_the_mean_token_projection(tiny_gemma, chats) -> None:
    directions = _directions(tiny_gemma.spec.d_model, 3, seed=2)
    projected = project_chats(tiny_gemma, chats, directions, layer=LAYER, batch_size=3)
    acts = collect_residuals(tiny_gemma, chats, ActivationConfig(layer=LAYER, batch_size=2, progress=False))
    for sample in range(len(chats)):
        tokens = acts.activations[acts.sample_index == sample]
        assert torch.allclose(projected[sample], (tokens @ directions.T).mean(dim=0), atol=1e-5)
    flipped = project_chats(tiny_gemma, chats, -directions, layer=LAYER)
    assert torch.allclose(flipped, -projected, atol=1e-5)  # linear in the direction
    with pytest.raises(ValueError, match="directions must be"):
        project_chats(tiny_gemma, chats, directions[:, :5], layer=LAYER)


def test_probe_records_the_base_and_the_chosen_steps_and_restores_the_model(tiny_gemma, chats, tmp_path) -> None:
    d_model = tiny_gemma.spec.d_model
    probe = DynamicsProbe(chats=chats, directions={"toxic": _directions(d_model, 4, 3),
                                                   "random": _directions(d_model, 4, 4)},
                          steps=[2, 6], layer=LAYER,
                          sampling=SamplingConfig(n_samples=2, max_new_tokens=4, progress=False),
                          questions={"q": "Hi!"}, sample_steps=[0, 6],
                          probe_items=load_misalignment_probe("development")[:4])
    base = project_chats(tiny_gemma, chats, probe.directions["toxic"], layer=LAYER)
    probe.record(0, tiny_gemma)
    result = fine_tune(tiny_gemma, chats, tmp_path / "adapter", FAST, on_step=probe)
    assert result.n_steps == 6 and sorted(probe.projections) == [0, 2, 6]
    assert math.isnan(probe.losses[0]) and probe.losses[6] == pytest.approx(result.losses[5])
    assert torch.allclose(probe.projections[0]["toxic"], base)
    assert not torch.allclose(probe.projections[6]["toxic"], base, atol=1e-4)  # training moved the hidden states
    assert torch.allclose(project_chats(tiny_gemma, chats, probe.directions["toxic"], layer=LAYER), base)

    frame = probe.frame()
    assert list(frame.columns) == ["step", "loss", "directions", "chat", "projection", "shift"]
    assert len(frame) == 3 * 2 * len(chats)
    start = frame[frame["step"] == 0]
    assert (start["shift"] == 0).all()
    last = frame[(frame["step"] == 6) & (frame["directions"] == "toxic")]["shift"].to_numpy()
    expected = projection_shift(probe.projections[0]["toxic"], probe.projections[6]["toxic"]).numpy()
    assert last.tolist() == pytest.approx(expected.tolist())
    assert (probe.frame(reference_step=6).query("step == 6")["shift"] == 0).all()

    answers = probe.sampled_answers()
    assert answers["step"].tolist() == [0, 0, 6, 6]  # only at sample_steps
    assert sorted(probe.gaps) == [0, 2, 6] and len(probe.gaps[6]) == 4
    pd.testing.assert_frame_equal(probe.gaps[0], probe_gaps(tiny_gemma, probe.probe_items or []), atol=1e-5)
    changes = probe.gap_changes()
    assert changes["step"].tolist() == [0, 2, 6] and changes["gap_change"].iloc[0] == 0
    moved = (probe.gaps[6]["gap"] - probe.gaps[0]["gap"]).mean()
    assert moved != 0 and changes["gap_change"].iloc[-1] == pytest.approx(moved)
    assert tiny_gemma.hf_model.training is False


def test_probe_checks_its_inputs(chats) -> None:
    directions = {"toxic": torch.eye(4)}
    with pytest.raises(ValueError, match="at least one evaluation chat"):
        DynamicsProbe(chats=[], directions=directions, steps=[1], layer=0)
    with pytest.raises(ValueError, match="sampling and questions"):
        DynamicsProbe(chats=chats, directions=directions, steps=[1], layer=0, sampling=SamplingConfig())
    probe = DynamicsProbe(chats=chats, directions=directions, steps=[1], layer=0)
    with pytest.raises(ValueError, match="nothing recorded"):
        probe.frame()
    with pytest.raises(ValueError, match="give probe_items"):
        probe.gap_changes()


def test_feature_shifts_are_last_minus_first_per_direction(chats) -> None:
    probe = DynamicsProbe(chats=chats, directions={"toxic": torch.eye(3)}, steps=[5], layer=0)
    with pytest.raises(ValueError, match="nothing recorded"):
        probe.feature_shifts("toxic", [7, 8, 9])
    probe.projections[0] = {"toxic": torch.tensor([[1.0, 0.0, 2.0], [3.0, float("nan"), 2.0]])}
    probe.projections[5] = {"toxic": torch.tensor([[2.0, 1.0, 1.0], [5.0, float("nan"), 0.0]])}
    probe.projections[2] = {"toxic": torch.full((2, 3), 100.0)}  # a middle step does not count
    frame = probe.feature_shifts("toxic", [7, 8, 9])
    assert frame["feature"].tolist() == [7, 8, 9]
    assert frame["shift"].tolist() == pytest.approx([1.5, 1.0, -1.5])  # NaN chats left out of the mean
    with pytest.raises(ValueError, match="2 feature labels for 3 directions"):
        probe.feature_shifts("toxic", [7, 8])


def test_a_trajectory_is_saved_into_the_checkout_and_loaded_back(tmp_path) -> None:
    from geomis.errors import FileAccessError
    from geomis.evaluation.dynamics import TRAJECTORY, load_trajectory, save_trajectory

    root = tmp_path / "checkout"
    (root / "book" / "results").mkdir(parents=True)
    shifts = pd.DataFrame({"run": ["a", "a"], "step": [0, 4], "directions": ["toxic"] * 2, "chat": [0, 0],
                           "shift": [0.0, 0.25]})
    gaps = pd.DataFrame({"run": ["a"], "step": [4], "gap_change": [0.1], "low": [0.0], "high": [0.2]})
    timings = pd.DataFrame({"model": ["a"], "steps": [4]})
    features = pd.DataFrame({"run": ["a", "a"], "feature": [3, 9], "shift": [0.5, -0.5]})
    written = save_trajectory(shifts, gaps, timings, features, start=str(root / "book"))
    assert len(written) == 4 and all(str(root / "book" / "results" / TRAJECTORY) in p for p in written)
    for saved, loaded in zip((shifts, gaps, timings, features), load_trajectory(start=str(root)), strict=True):
        pd.testing.assert_frame_equal(saved, loaded)
    (root / "book" / "results" / TRAJECTORY / "features.csv").write_text("run,feature\na,3\n")
    with pytest.raises(ValueError, match="feature shifts lacks column"):
        load_trajectory(start=str(root))
    with pytest.raises(FileAccessError, match="only in a checkout"):
        save_trajectory(shifts, gaps, timings, features, start=str(tmp_path))
