"""Direction ablation during fine-tuning: the projection, the nnsight forward against a plain hook, the fine-tune."""

from __future__ import annotations

import pytest
import torch

from geomis.direction_ablation import DirectionAblation, ablated_forward
from geomis.finetune import (
    FinetuneConfig,
    attach_lora,
    collate_for_training,
    fine_tune,
    mean_assistant_loss,
    read_finetune_metadata,
    summed_assistant_loss,
    tokenize_chat,
)

FAST = FinetuneConfig(batch_size=2, lr=1e-2, warmup_steps=0, epochs=2, progress=False)


def _rows(k: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(k, d, generator=torch.Generator().manual_seed(seed))


def test_the_basis_spans_the_directions_once_and_the_projection_removes_them() -> None:
    rows = _rows(3, 10, 0)
    dependent = torch.cat([rows, rows[:1] * 2 + rows[1:2], rows[2:] * -5])  # five rows, rank 3
    ablation = DirectionAblation.of(dependent, layer=1)
    assert ablation.rank == 3 and ablation.share() == pytest.approx(0.3)
    torch.testing.assert_close(ablation.basis.T @ ablation.basis, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(ablation.project(dependent), torch.zeros(5, 10), atol=1e-4, rtol=0)
    other = _rows(1, 10, 1)
    orthogonal = other - (other @ ablation.basis) @ ablation.basis.T
    torch.testing.assert_close(ablation.project(orthogonal), orthogonal, atol=1e-5, rtol=0)
    hidden = _rows(4, 10, 2).reshape(2, 2, 10)
    once = ablation.project(hidden)
    torch.testing.assert_close(ablation.project(once), once, atol=1e-5, rtol=0)  # a projection
    assert ablation.describe()["rank"] == 3
    assert ablation.describe()["basis_sha256"] == DirectionAblation.of(dependent, 1).describe()["basis_sha256"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: DirectionAblation.of(torch.zeros(0, 4), 0), "k >= 1"),
    (lambda: DirectionAblation.of(torch.zeros(2, 4), 0), "all zero"),
    (lambda: DirectionAblation.of(torch.full((1, 4), float("inf")), 0), "NaN or infinite"),
    (lambda: DirectionAblation(0, torch.ones(4, 2)), "not orthonormal"),
    (lambda: DirectionAblation(-1, torch.eye(4)[:, :1]), "layer must be >= 0"),
])
def test_bad_ablations_fail_with_one_line(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_the_nnsight_forward_matches_a_plain_hook_in_logits_and_gradients(tiny_gemma) -> None:
    ids = torch.randint(5, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    ablation = DirectionAblation.of(_rows(5, tiny_gemma.hf_model.config.hidden_size, 3), layer=1)
    with attach_lora(tiny_gemma, FAST):
        parameters = [p for p in tiny_gemma.hf_model.parameters() if p.requires_grad]
        got = ablated_forward(tiny_gemma, ablation, input_ids=ids, attention_mask=attention, use_cache=False).logits
        got.float().logsumexp(-1).mean().backward()
        ours = [p.grad.clone() for p in parameters]  # type: ignore[union-attr]
        for p in parameters:
            p.grad = None
        hook = tiny_gemma.hf_model.model.layers[1].register_forward_hook(lambda m, a, out: ablation.project(out))
        try:
            expected = tiny_gemma.hf_model(input_ids=ids, attention_mask=attention, use_cache=False).logits
        finally:
            hook.remove()
        expected.float().logsumexp(-1).mean().backward()
        for mine, theirs in zip(ours, [p.grad for p in parameters], strict=True):
            torch.testing.assert_close(mine, theirs)
        plain = tiny_gemma.hf_model(input_ids=ids, attention_mask=attention, use_cache=False).logits
    torch.testing.assert_close(got, expected)
    assert any(float(g.abs().sum()) > 0 for g in ours)
    assert not torch.allclose(got, plain)


def test_fine_tuning_with_an_ablation_records_it_and_trains_other_adapters(tiny_gemma, chats, tmp_path) -> None:
    width = tiny_gemma.hf_model.config.hidden_size
    ablation = DirectionAblation.of(_rows(8, width, 4), layer=1)
    plain = fine_tune(tiny_gemma, chats, tmp_path / "plain", FAST)
    ablated = fine_tune(tiny_gemma, chats, tmp_path / "ablated", FAST, ablation=ablation)
    assert read_finetune_metadata(tmp_path / "plain")["ablation"] is None
    assert read_finetune_metadata(tmp_path / "ablated")["ablation"] == ablation.describe()
    assert plain.losses[0] != pytest.approx(ablated.losses[0])  # the first forward already differs
    with pytest.raises(ValueError, match="out of range"):
        fine_tune(tiny_gemma, chats, tmp_path / "x", FAST, ablation=DirectionAblation.of(_rows(1, width, 5), 99))
    with pytest.raises(ValueError, match=f"residual stream has {width}"):
        fine_tune(tiny_gemma, chats, tmp_path / "y", FAST, ablation=DirectionAblation.of(_rows(1, width + 2, 5), 1))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_mean_assistant_loss_is_the_summed_loss_over_the_scored_tokens(tiny_gemma, chats) -> None:
    config = FinetuneConfig(max_length=64)
    loss = mean_assistant_loss(tiny_gemma, chats, config, batch_size=2)
    tokenized = [tokenize_chat(tiny_gemma.tokenizer, chat, config.max_length) for chat in chats]
    batch = collate_for_training(tokenized, tiny_gemma.tokenizer.pad_token_id, config.train_on_end_of_turn)
    with torch.no_grad():
        summed, n = summed_assistant_loss(tiny_gemma.hf_model, batch)
    assert loss == pytest.approx(float(summed) / n, rel=1e-4)
    assert 0 < loss < 20
    with pytest.raises(ValueError, match="no conversation has assistant tokens"):
        mean_assistant_loss(tiny_gemma, [[{"role": "user", "content": "hi"}]], config)
