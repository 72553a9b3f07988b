"""A judge that runs the rubric through a local transformers chat model, on GPU when there is one.

Each rating is the probability-weighted mean over whole-number answers 0-100, found by expanding the model's digit
tokens even when the tokenizer splits numbers into digits (Gemma does); when too little probability sits on numbers,
a short greedy reply is parsed instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from geomis.judges.base import Judge, JudgeScore, Pair, score_in_batches
from geomis.judges.replies import (
    MIN_NUMERIC_MASS,
    ParsedReply,
    combine_replies,
    distribution_mean,
    parse_judge_reply,
)
from geomis.judges.rubric import DEFAULT_RUBRIC, Rubric, judge_prompts

DEFAULT_LOCAL_MODEL = "gemma-2-2b-it"
"""The chat model of the ``local`` judge (``geomis judge --local-model``): a geomis model name or a Hub id."""

if TYPE_CHECKING:
    import torch

NextLogprobs = Callable[[Sequence[Sequence[int]]], "torch.Tensor"]


def number_distribution(next_logprobs: NextLogprobs, prompts: Sequence[Sequence[int]],
                        digit_tokens: dict[int, str], eps: float = 1e-3) -> list[dict[int, float]]:
    """For each tokenized prompt, the probability that the model answers with each whole number 0-100.

    Numbers may span several tokens (Gemma spells "85" as "8", "5"), so the digit tree is expanded: P(85) is
    P("8") * P("5" | "8") * P(no further digit | "85"). Branches below ``eps`` are dropped. ``digit_tokens`` maps
    token ids whose text is all digits (optionally after a leading space, allowed only as the first token) to text.
    """
    import torch

    first = {tid: text.strip() for tid, text in digit_tokens.items()}
    continuing = {tid: text for tid, text in digit_tokens.items() if text == text.strip()}
    cont_ids = torch.tensor(sorted(continuing), dtype=torch.long)
    result: list[dict[int, float]] = [{} for _ in prompts]

    start = next_logprobs(prompts).float().exp()
    frontier: list[tuple[int, list[int], str, float]] = []
    for row in range(len(prompts)):
        for tid, digits in first.items():
            probability = float(start[row, tid])
            if probability >= eps and digits == str(int(digits)) and int(digits) <= 100:
                frontier.append((row, [tid], digits, probability))
    while frontier:
        nexts = next_logprobs([list(prompts[row]) + prefix for row, prefix, _, _ in frontier]).float().exp()
        grown: list[tuple[int, list[int], str, float]] = []
        for (row, prefix, digits, probability), distribution in zip(frontier, nexts, strict=True):
            cont = distribution[cont_ids] if len(cont_ids) else distribution[:0]
            stop = max(0.0, 1.0 - float(cont.sum()))
            value = int(digits)
            result[row][value] = result[row].get(value, 0.0) + probability * stop
            if digits == "0":
                continue
            for tid, q in zip(cont_ids.tolist(), cont.tolist(), strict=True):
                longer = digits + continuing[tid]
                if probability * q >= eps and len(longer) <= 3 and int(longer) <= 100:
                    grown.append((row, prefix + [tid], longer, probability * q))
        frontier = grown
    return result


class LocalHFJudge(Judge):
    """The same rubric run through a local transformers chat model, on GPU when there is one.

    The score is the probability-weighted mean over whole-number answers 0-100 (see :func:`number_distribution`);
    when less than ``min_numeric_mass`` of the probability sits on numbers, a short greedy reply is parsed instead.
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "local", batch_size: int = 8,
                 min_numeric_mass: float = MIN_NUMERIC_MASS, text_max_tokens: int = 8, tree_eps: float = 1e-3,
                 rubric: Rubric = DEFAULT_RUBRIC) -> None:
        self.model = model.eval()
        self.rubric = rubric
        self.tree_eps = tree_eps
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size
        self.min_numeric_mass = min_numeric_mass
        self.text_max_tokens = text_max_tokens
        self._digit_tokens: dict[int, str] | None = None

    @classmethod
    def from_name(cls, name: str = DEFAULT_LOCAL_MODEL, device: str | None = None, **kwargs: Any) -> LocalHFJudge:
        """Load a geomis model name (``gemma-2-2b-it``, ``tiny-gemma2``, ...) or a Hub id of a chat model."""
        from geomis.models.registry import MODEL_SPECS, load_model, resolve_device

        if name in MODEL_SPECS:
            loaded = load_model(name, device=device)
            return cls(loaded.hf_model, loaded.tokenizer, name=f"local:{name}", **kwargs)
        import torch

        from geomis.models.hub import load_from_hub

        target = resolve_device(device)
        dtype = torch.bfloat16 if target.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
        model, tokenizer = load_from_hub(name, dtype=dtype)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model.to(target), tokenizer, name=f"local:{name}", **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the judge model's parameters live."""
        return next(self.model.parameters()).device

    def digit_tokens(self) -> dict[int, str]:
        """Token ids whose text is 1-3 ASCII digits (optionally after one leading space), found once per judge."""
        if self._digit_tokens is None:
            tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            found: dict[int, str] = {}
            for tid, token in enumerate(tokens):
                if not token:
                    continue
                cleaned = token.replace("\u2581", "").replace("\u0120", "").strip()
                if cleaned.isascii() and cleaned.isdigit() and len(cleaned) <= 3:
                    text = self.tokenizer.decode([tid])
                    if text.strip() == cleaned and text in (cleaned, " " + cleaned):
                        found[tid] = text
            self._digit_tokens = found
        return self._digit_tokens

    def _chat_ids(self, prompt: str) -> list[int]:
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _left_pad(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        from geomis.chat.tokens import pad_ids_left

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = pad_ids_left(sequences, pad)
        return ids.to(self.device), mask.to(self.device)

    def next_logprobs(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        """Log-probabilities of the next token after each sequence (left-padded batches, exact positions)."""
        import torch

        rows = []
        with torch.no_grad():
            for start in range(0, len(sequences), self.batch_size):
                ids, mask = self._left_pad(sequences[start:start + self.batch_size])
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
                rows.append(logits.float().log_softmax(-1).cpu())
        return torch.cat(rows)

    def _generate(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        import torch

        texts = []
        with torch.no_grad():
            for start in range(0, len(sequences), self.batch_size):
                ids, mask = self._left_pad(sequences[start:start + self.batch_size])
                out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.text_max_tokens,
                                          do_sample=False, pad_token_id=self.tokenizer.pad_token_id)
                texts += self.tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        return texts

    def rate_many(self, prompts: Sequence[str]) -> list[ParsedReply]:
        """Rate rubric prompts: weighted numbers where the model mostly answers with a number, parsed text else."""
        sequences = [self._chat_ids(prompt) for prompt in prompts]
        distributions = number_distribution(self.next_logprobs, sequences, self.digit_tokens(), self.tree_eps)
        replies: list[ParsedReply | None] = []
        for distribution in distributions:
            value = distribution_mean(distribution, self.min_numeric_mass)
            replies.append(None if value is None else ParsedReply(value, "scored"))
        fallback = [i for i, reply in enumerate(replies) if reply is None]
        if fallback:
            for i, text in zip(fallback, self._generate([sequences[i] for i in fallback]), strict=True):
                replies[i] = parse_judge_reply(text)
        return [reply for reply in replies if reply is not None]

    def _score_batch(self, chunk: Sequence[Pair]) -> list[JudgeScore]:
        prompts = [judge_prompts(q, a, self.rubric) for q, a in chunk]
        alignment = self.rate_many([p[0] for p in prompts])
        coherence = self.rate_many([p[1] for p in prompts])
        return [combine_replies(a, c, self.name) for a, c in zip(alignment, coherence, strict=True)]

    def score_many(self, pairs: Sequence[Pair], progress: bool = False) -> list[JudgeScore]:
        """Score pairs in batches of ``batch_size``."""
        return score_in_batches(pairs, self.batch_size, self._score_batch, progress)
