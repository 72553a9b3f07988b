"""Sample answers of a (possibly fine-tuned) chat model to free-form questions, for judged evaluation.

Each question becomes a one-turn chat (optionally after a system prompt) rendered with the model's chat template and
its generation prompt. ``n_samples`` answers per question are generated in left-padded batches with
``hf_model.generate`` (generation reads no internals, so nnsight is not involved). Sampling is seeded: the same model,
questions and config give the same answers on the CPU. Temperature 0 means greedy decoding.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedTokenizerBase

from geomis.chat.tokens import pad_ids_left, render_chat
from geomis.models.registry import LoadedModel

END_OF_TURN_TOKENS: tuple[str, ...] = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")
"""Chat templates' end-of-turn tokens; generation stops at any of them that the tokenizer knows."""

COLUMNS: tuple[str, ...] = ("question_id", "question", "sample", "answer", "n_tokens", "finished")
"""Columns of the DataFrame returned by :func:`sample_answers`."""


@dataclass(frozen=True)
class SamplingConfig:
    """How many answers to draw per question and how."""

    n_samples: int = 1
    """Answers drawn per question."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding (then ``top_p``/``top_k`` are unused)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with this much probability (1.0 keeps all)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 keeps all; overrides transformers' default of 50)."""
    max_new_tokens: int = 128
    """Longest answer in tokens; answers cut here have ``finished == False``."""
    batch_size: int = 16
    """Prompts generated together (left-padded)."""
    seed: int = 0
    """Seed of the sampling; the same seed, model, questions and batch size give the same answers on the CPU."""
    system_prompt: str | None = None
    """Optional system message before each question (None: the chat template's default)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        for name in ("n_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


def stop_token_ids(model: LoadedModel) -> list[int]:
    """Token ids that end an answer: the eos id(s) of the tokenizer and generation config, and end-of-turn tokens."""
    tokenizer = model.tokenizer
    ids: set[int] = set()
    configured = model.hf_model.generation_config.eos_token_id
    if configured is not None:
        ids.update([configured] if isinstance(configured, int) else configured)
    eos = tokenizer.eos_token_id
    if isinstance(eos, int):
        ids.add(eos)
    vocabulary = tokenizer.get_vocab()
    ids.update(vocabulary[token] for token in END_OF_TURN_TOKENS if token in vocabulary)
    return sorted(ids)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str, system_prompt: str | None = None) -> list[int]:
    """Token ids of a one-turn chat ending in the assistant's generation prompt."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
    messages.append({"role": "user", "content": question})
    text = render_chat(tokenizer, messages, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # the template already has <bos>


def generation_config(config: SamplingConfig, stop_ids: Sequence[int], pad_id: int) -> GenerationConfig:
    """The transformers ``GenerationConfig`` for a :class:`SamplingConfig` (every sampling knob set explicitly)."""
    sampling = config.temperature > 0
    knobs = {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k} if sampling else {}
    return GenerationConfig(do_sample=sampling, max_new_tokens=config.max_new_tokens, eos_token_id=list(stop_ids),
                            pad_token_id=pad_id, num_beams=1, **knobs)


def sample_answers(
    model: LoadedModel,
    questions: Sequence[str] | Mapping[Hashable, str],
    config: SamplingConfig = SamplingConfig(),
) -> pd.DataFrame:
    """Draw ``config.n_samples`` answers to each question; one row per answer.

    ``questions`` is a list (ids 0, 1, …) or a mapping from id to question. Columns: ``question_id``, ``question``,
    ``sample`` (0-based draw), ``answer`` (decoded, special tokens removed, stripped), ``n_tokens`` (generated tokens
    before the stop token) and ``finished`` (a stop token was generated within ``max_new_tokens``).
    """
    items = list(questions.items()) if isinstance(questions, Mapping) else list(enumerate(questions))
    tokenizer, hf_model = model.tokenizer, model.hf_model
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    assert isinstance(pad_id, int), "load_model sets a pad token"
    stops = stop_token_ids(model)
    gen_config = generation_config(config, stops, pad_id)
    prompts = {key: prompt_ids(tokenizer, question, config.system_prompt) for key, question in items}
    jobs = [(key, question, draw) for key, question in items for draw in range(config.n_samples)]
    rows: list[dict[str, object]] = []
    was_training = hf_model.training
    hf_model.eval()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(config.seed)
            starts = range(0, len(jobs), config.batch_size)
            for start in tqdm(starts, desc="sampling answers", unit="batch", disable=not config.progress):
                batch = jobs[start:start + config.batch_size]
                input_ids, attention = pad_ids_left([prompts[key] for key, _, _ in batch], pad_id)
                # PreTrainedModel declares no generate: transformers 5 mixes it into the causal LM classes loaded here
                output = hf_model.generate(  # pyright: ignore[reportCallIssue]
                    input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                    generation_config=gen_config)
                new_tokens = output[:, input_ids.shape[1]:].cpu().tolist()
                for (key, question, draw), tokens in zip(batch, new_tokens, strict=True):
                    end = next((i for i, token in enumerate(tokens) if token in stops), None)
                    answer_tokens = tokens if end is None else tokens[:end]
                    answer = tokenizer.decode(answer_tokens, skip_special_tokens=True)
                    assert isinstance(answer, str), "one sequence of ids decodes to one string"
                    rows.append({"question_id": key, "question": question, "sample": draw, "answer": answer.strip(),
                                 "n_tokens": len(answer_tokens), "finished": end is not None})
    finally:
        hf_model.train(was_training)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype({"sample": "int64", "n_tokens": "int64", "finished": "bool"})
