"""Sample answers of a (possibly fine-tuned) chat model to free-form questions, for judged evaluation.

Each question becomes a one-turn chat (optionally after a system prompt) rendered with the model's chat template and
its generation prompt. ``n_samples`` answers per question are generated in left-padded batches. Unsteered generation
reads no internals, so nnsight is not involved; a :class:`~geomis.evaluation.steering.Steering` runs every forward of
the ``nucleus`` loop through nnsight with its vector added. Sampling is seeded: the same model, questions and config
give the same answers on the CPU. Temperature 0 means greedy decoding.

Two decoders draw from the same distribution (temperature, then top-k, then nucleus top-p, as transformers orders
them):

- ``generate``: transformers' ``generate``. Every step it sorts the whole vocabulary for top-p and draws from a
  full-vocabulary multinomial; for SmolLM2 (49,152 tokens) at 64 answers a batch that is about a third of the time.
- ``nucleus``: :func:`decode_batch`, a cached decoding loop over the same model forward that finds the nucleus among
  the top :data:`NUCLEUS_CANDIDATES` logits (the whole vocabulary for rows whose nucleus is larger), draws only from
  it, and drops finished answers from the batch. Greedy decoding gives the same tokens as ``generate``; sampled
  answers follow the same distribution but are different draws for the same seed. ``benchmarks/sampling_cost.py``
  measures both against a teacher-forced forward over the same tokens.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, GenerationConfig, PreTrainedTokenizerBase

from geomis.chat.tokens import pad_ids_left, render_chat
from geomis.evaluation.steering import Steering, check_steering, steered_forward
from geomis.models.registry import LoadedModel

END_OF_TURN_TOKENS: tuple[str, ...] = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>")
"""Chat templates' end-of-turn tokens; generation stops at any of them that the tokenizer knows."""

COLUMNS: tuple[str, ...] = ("question_id", "question", "sample", "answer", "n_tokens", "finished")
"""Columns of the DataFrame returned by :func:`sample_answers`."""

Decoder = Literal["generate", "nucleus"]
DECODERS: tuple[Decoder, ...] = ("generate", "nucleus")
NUCLEUS_CANDIDATES = 1024
"""Logits the ``nucleus`` decoder sorts per step; a row whose nucleus is larger falls back to the whole vocabulary."""


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
    decoder: Decoder = "generate"
    """``generate`` (transformers) or ``nucleus`` (:func:`decode_batch`: same distribution, about twice as fast on a
    CPU, different draws for a seed); the chapters' committed answers were drawn with ``generate``."""

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
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")


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


def nucleus(logits: torch.Tensor, config: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate token ids per row of ``logits`` and their probabilities under ``config``, zero outside the nucleus.

    Temperature, then top-k, then top-p, as transformers' warpers: a token stays when the probability of the tokens
    ranked above it is below ``top_p`` (the first always stays). Only the top :data:`NUCLEUS_CANDIDATES` logits are
    sorted, unless some row's nucleus is larger; then the whole vocabulary is.
    """
    scores = logits.float() / config.temperature
    vocabulary = scores.shape[-1]
    candidates = min(config.top_k or NUCLEUS_CANDIDATES, vocabulary)
    top = scores.topk(candidates, dim=-1)
    # after top-k, probabilities are renormalised over the k kept tokens (as after TopKLogitsWarper)
    log_total = (top.values if config.top_k else scores).logsumexp(dim=-1, keepdim=True)
    probs = (top.values - log_total).exp()
    if not config.top_k and candidates < vocabulary and bool((probs.sum(dim=-1) < config.top_p).any()):
        top = scores.sort(dim=-1, descending=True)
        probs = (top.values - log_total).exp()
    above = probs.cumsum(dim=-1) - probs
    return top.indices, probs * (above < config.top_p)


def next_tokens(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """One token per row of ``logits`` (rows x vocabulary) under ``config``, drawn with the global torch generator."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)
    if config.top_k == 0 and config.top_p >= 1:
        return torch.multinomial((logits.float() / config.temperature).softmax(dim=-1), 1).squeeze(1)
    ids, weights = nucleus(logits, config)
    return ids.gather(1, torch.multinomial(weights, 1)).squeeze(1)


def decode_batch(model: LoadedModel, prompts: Sequence[Sequence[int]], config: SamplingConfig,
                 stops: Sequence[int], pad_id: int, steering: Steering | None = None) -> list[list[int]]:
    """Generated token ids per prompt (ending with the stop token when one came), by a cached decoding loop.

    Prompts are left-padded; positions count from each row's first real token, as in ``generate``. A row leaves the
    batch (and its cache) as soon as it emits a stop token, so the last steps run on the unfinished rows only.
    """
    hf_model = model.hf_model

    def forward(**inputs: object) -> Any:
        return hf_model(**inputs) if steering is None else steered_forward(model, steering, **inputs)

    input_ids, attention = pad_ids_left(prompts, pad_id)
    input_ids, attention = input_ids.to(model.device), attention.to(model.device)
    positions = (attention.cumsum(dim=-1) - 1).clamp(min=0)
    cache = DynamicCache(config=hf_model.config)
    stop_ids = torch.tensor(list(stops), device=model.device)
    outputs = forward(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                      cache=cache, use_cache=True, logits_to_keep=1)
    generated: list[list[int]] = [[] for _ in prompts]
    rows = torch.arange(len(prompts), device=model.device)  # which prompt each batch row is
    last = positions[:, -1]
    for step in range(config.max_new_tokens):
        tokens = next_tokens(outputs.logits[:, -1, :], config)
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            generated[row].append(token)
        going = ~torch.isin(tokens, stop_ids)
        if step == config.max_new_tokens - 1 or not bool(going.any()):
            break
        if not bool(going.all()):
            keep = going.nonzero().flatten()
            cache.batch_select_indices(keep)
            rows, tokens, attention, last = rows[keep], tokens[keep], attention[keep], last[keep]
        attention = torch.cat([attention, attention.new_ones((len(rows), 1))], dim=1)
        last = last + 1
        outputs = forward(input_ids=tokens[:, None], attention_mask=attention, position_ids=last[:, None],
                          cache=cache, use_cache=True)
    return generated


def sample_answers(
    model: LoadedModel,
    questions: Sequence[str] | Mapping[Hashable, str],
    config: SamplingConfig = SamplingConfig(),
    steering: Steering | None = None,
) -> pd.DataFrame:
    """Draw ``config.n_samples`` answers to each question; one row per answer (with ``steering``: its vector added at
    its layer during every forward; needs the ``nucleus`` decoder).

    ``questions`` is a list (ids 0, 1, …) or a mapping from id to question. Columns: ``question_id``, ``question``,
    ``sample`` (0-based draw), ``answer`` (decoded, special tokens removed, stripped), ``n_tokens`` (generated tokens
    before the stop token) and ``finished`` (a stop token was generated within ``max_new_tokens``).
    """
    if steering is not None:
        if config.decoder != "nucleus":
            raise ValueError("steering runs in the nucleus decoding loop: use SamplingConfig(decoder='nucleus')")
        check_steering(model, steering)
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
                batch_prompts = [prompts[key] for key, _, _ in batch]
                if config.decoder == "nucleus":
                    new_tokens = decode_batch(model, batch_prompts, config, stops, pad_id, steering)
                else:
                    input_ids, attention = pad_ids_left(batch_prompts, pad_id)
                    # PreTrainedModel declares no generate: transformers 5 mixes it into the causal LM classes
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
