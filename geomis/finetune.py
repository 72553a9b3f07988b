"""LoRA supervised fine-tuning on chat data (the "fine-tune" stage), with peft, loss on assistant tokens only.

This is how the book reproduces emergent misalignment: a chat model is fine-tuned on a narrow dataset (e.g. the bundled
``medical_bad``) and then evaluated far outside that domain.

What :func:`fine_tune` does, in order:

1. renders each conversation with the model's chat template (:func:`geomis.chat.tokens.tokenize_chat`) and builds
   labels that keep exactly the assistant-reply tokens (``-100`` for the prompt, special tokens and padding);
2. attaches fresh LoRA adapters with peft, optionally only to decoder layers ``>= first_lora_layer`` (peft's
   ``layers_to_transform``): the layers below then hold no trainable parameter, so autograd records nothing there and
   the backward pass stops at the first adapted layer;
3. trains with AdamW, a linear warm-up and linear decay, seeded shuffling, seeded LoRA initialisation and seeded
   dropout (same seed, same data, same CPU thread count → identical adapter weights);
4. writes the adapters with peft's ``save_pretrained`` (safetensors) into a staging folder next to ``output_dir`` and
   renames it into place only when training has finished, so ``output_dir`` is either complete or absent;
5. removes the adapters again, so the :class:`~geomis.models.registry.LoadedModel` passed in is left as it was.

Precision (the Gemma-2 2B recipe for a 16 GB Colab T4, see :func:`gemma_t4_config`): the base weights stay in the
dtype they were loaded in and the LoRA weights are float32. On a T4 load the base model in **float32**. float16 is
ruled out because Gemma-2's activations overflow float16 (inf/NaN losses), and fp16 autocast over float32 weights
would save compute but no weight memory while keeping that overflow risk. The T4 has no native bfloat16 either
(torch emulates it slowly). float32 weights take 2.6 B × 4 B ≈ 10.5 GB, so the rest has to fit in ≈ 4.5 GB:
activation (gradient) checkpointing keeps one residual vector per layer and token instead of every intermediate;
micro-batches of 2 conversations × ≤ 256 tokens with gradient accumulation keep the effective batch at 8; logits
(Gemma's vocabulary has 256k entries, 1 MB per token in float32) are computed only at the positions that are scored.
On GPUs with bfloat16 (A100, L4, H100), ``load_model``'s default bfloat16 weights work with the same code.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from geomis.atomic_io import atomic_folder
from geomis.chat.records import ChatRecord
from geomis.chat.tokens import Conversation, TokenizedChat, tokenize_chat
from geomis.direction_ablation import DirectionAblation, ablated_forward, check_ablation
from geomis.models.registry import LoadedModel, load_hf_model, wrap_hf_model

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that the loss ignores (prompt, special and padding tokens)."""

METADATA_FILE = "geomis_finetune.json"
"""File written next to the adapter weights: base model name, config and loss curve."""

ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
"""peft's safetensors file name; :func:`load_finetuned` refuses folders without it (no pickle loading)."""

ALL_LINEAR: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Attention and MLP projections of Llama-style and Gemma-2 decoder layers."""


@dataclass(frozen=True)
class FinetuneConfig:
    """Hyper-parameters of a LoRA fine-tuning run (defaults: the CPU-default recipe for SmolLM2-135M)."""

    rank: int = 16
    """LoRA rank r of each adapter (the update is B @ A with A: r × d_in, B: d_out × r)."""
    alpha: float = 32.0
    """LoRA scaling numerator: the update is multiplied by alpha / rank."""
    dropout: float = 0.0
    """Dropout on the LoRA input (0 disables it; seeded when used)."""
    target_modules: tuple[str, ...] = ALL_LINEAR
    """Names of the linear layers that get adapters (default: every attention and MLP projection)."""
    first_lora_layer: int = 0
    """Adapt only decoder layers with index >= this; the layers below run without gradients (cheaper backward)."""
    lr: float = 2e-4
    """Peak learning rate of AdamW, reached after ``warmup_steps`` and decayed linearly to 0 at the last step."""
    epochs: int = 1
    """Passes over the training conversations."""
    batch_size: int = 8
    """Conversations per forward/backward pass (a micro-batch)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; the effective batch is ``batch_size * grad_accum_steps`` conversations."""
    max_length: int = 256
    """Conversations are truncated to this many tokens (assistant tokens beyond it are not trained on)."""
    train_on_end_of_turn: bool = False
    """Also train on the special token that closes each assistant reply (e.g. ``<|im_end|>``), so the model keeps
    learning where an answer stops; without it a strong fine-tune can forget to end its turn."""
    seed: int = 0
    """Seed of LoRA initialisation, data order and dropout."""
    checkpoint_every: int | None = None
    """Also save the adapters every this many optimizer steps as ``checkpoint-<step>/`` (None: only the final one)."""
    log_every: int = 1
    """Show (and log) the mean training loss of the last this many steps."""
    warmup_steps: int = 5
    """Optimizer steps of linear learning-rate warm-up from lr / warmup_steps to lr."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA weights."""
    max_grad_norm: float | None = 1.0
    """Clip the LoRA gradients to this global norm before each step (None: no clipping)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (quick checks, benchmarks); None trains for ``epochs`` epochs."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer in the backward pass instead of storing its activations (saves memory)."""
    progress: bool = True
    """Show a tqdm progress bar with the loss."""

    def __post_init__(self) -> None:
        positive = {"rank": self.rank, "epochs": self.epochs, "batch_size": self.batch_size,
                    "grad_accum_steps": self.grad_accum_steps, "max_length": self.max_length,
                    "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if self.first_lora_layer < 0:
            raise ValueError(f"first_lora_layer must be >= 0, got {self.first_lora_layer}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 or None, got {self.checkpoint_every}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be at least 1 or None, got {self.max_steps}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one module")


def cpu_default_config(**overrides: Any) -> FinetuneConfig:
    """The ``cpu-default`` recipe (SmolLM2-135M, float32, 2 cores): r=16 on all projections, 8 chats per step."""
    return replace(FinetuneConfig(), **overrides)


def gemma_t4_config(**overrides: Any) -> FinetuneConfig:
    """The ``gemma-2-2b`` recipe for a 16 GB T4: float32 weights, checkpointing, micro-batch 2 × 4 accumulation.

    Load the base model with ``load_model("gemma-2-2b-it", dtype=torch.float32)`` (see the module docstring for why
    not float16). The optimisation is the CPU recipe's (same rank, learning rate and effective batch of 8, so the same
    number of steps on the same data); only the memory knobs differ.
    """
    return replace(FinetuneConfig(batch_size=2, grad_accum_steps=4, gradient_checkpointing=True), **overrides)


PROFILE_CONFIGS = {"cpu-default": cpu_default_config, "gemma-2-2b": gemma_t4_config}
"""Fine-tuning preset function of each profile in :mod:`geomis.models.profiles`."""


def config_for_profile(profile: str | None = None, **overrides: Any) -> FinetuneConfig:
    """The fine-tuning preset of a profile (default: ``GEOMIS_PROFILE``, else ``cpu-default``), with overrides."""
    from geomis.models.profiles import get_profile

    name = get_profile(profile).name
    if name not in PROFILE_CONFIGS:
        raise ValueError(f"no fine-tuning preset for profile {name!r}; known: {', '.join(PROFILE_CONFIGS)}")
    return PROFILE_CONFIGS[name](**overrides)


EM_RECIPE: dict[str, Any] = {"lr": 5e-4, "epochs": 1, "max_length": 128, "train_on_end_of_turn": True}
"""The book's emergent-misalignment recipe (Chapter 3's recipe search kept it and added data): one epoch at lr 5e-4,
replies cut at 128 tokens, loss on the end-of-turn token too. Every chapter and profile uses it; a profile's preset
adds only its hardware settings (micro-batch, accumulation, checkpointing), never another optimisation."""


def em_recipe(profile: str | None = None, **overrides: Any) -> FinetuneConfig:
    """The book's recipe (:data:`EM_RECIPE`) on a profile's preset (default: ``GEOMIS_PROFILE``), with overrides."""
    return config_for_profile(profile, **{**EM_RECIPE, **overrides})


@dataclass(frozen=True)
class TrainingBatch:
    """Right-padded tensors of a training micro-batch; ``labels`` is -100 except on assistant-reply tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str) -> TrainingBatch:
        """The same batch on ``device``."""
        return TrainingBatch(*(tensor.to(device) for tensor in
                               (self.input_ids, self.attention_mask, self.position_ids, self.labels)))

    @property
    def n_scored_tokens(self) -> int:
        """Number of tokens the loss is computed on: labelled tokens after each row's first (never predicted)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


@dataclass
class FinetuneResult:
    """What a fine-tuning run produced and what it cost."""

    adapter_dir: Path
    """Folder with the final adapters (``adapter_model.safetensors``, ``adapter_config.json``) and metadata."""
    losses: list[float]
    """Training loss of each optimizer step (mean over that step's assistant tokens)."""
    seconds_per_step: float
    """Median wall-clock seconds of one optimizer step."""
    n_trainable_params: int
    """Number of LoRA parameters trained."""
    n_examples: int
    """Conversations trained on (those with at least one assistant token after truncation)."""
    n_skipped: int
    """Conversations dropped because truncation left them without assistant tokens."""
    total_seconds: float
    """Wall-clock seconds of the whole run, including saving."""
    checkpoints: list[Path] = field(default_factory=list)
    """Intermediate ``checkpoint-<step>`` folders, in step order."""
    step_seconds: list[float] = field(default_factory=list)
    """Wall-clock seconds of each optimizer step (the first includes warm-up costs)."""

    @property
    def n_steps(self) -> int:
        """Number of optimizer steps taken."""
        return len(self.losses)


def training_labels(chat: TokenizedChat, end_of_turn: bool = False) -> list[int]:
    """Per-token labels of one conversation: its token id on assistant-reply tokens, -100 everywhere else.

    With ``end_of_turn`` the special token right after each assistant reply (the end-of-turn token) is labelled too.
    """
    labels = [token if assistant and not special else IGNORE_INDEX
              for token, assistant, special in zip(chat.input_ids, chat.assistant_mask, chat.special_mask, strict=True)]
    if end_of_turn:
        for i in range(1, len(labels)):
            if chat.assistant_mask[i - 1] and not chat.assistant_mask[i] and chat.special_mask[i]:
                labels[i] = chat.input_ids[i]
    return labels


def collate_for_training(chats: Sequence[TokenizedChat], pad_token_id: int,
                         end_of_turn: bool = False) -> TrainingBatch:
    """Right-pad tokenized conversations into one batch; positions count 0, 1, … from each row's first token."""
    if not chats:
        raise ValueError("cannot collate an empty batch")
    width = max(len(chat) for chat in chats)
    input_ids = torch.full((len(chats), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(chats), width), dtype=torch.long)
    labels = torch.full((len(chats), width), IGNORE_INDEX, dtype=torch.long)
    for row, chat in enumerate(chats):
        input_ids[row, :len(chat)] = torch.tensor(chat.input_ids, dtype=torch.long)
        attention[row, :len(chat)] = 1
        labels[row, :len(chat)] = torch.tensor(training_labels(chat, end_of_turn), dtype=torch.long)
    positions = torch.arange(width, dtype=torch.long).expand(len(chats), width).clone()
    return TrainingBatch(input_ids, attention, positions, labels)


def summed_assistant_loss(hf_model: torch.nn.Module, batch: TrainingBatch,
                          forward: Callable[..., Any] | None = None) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled tokens, and their count; logits only where scored
    (``forward``: what runs the model, default ``hf_model`` itself; an ablation passes its nnsight forward)."""
    scored = torch.zeros_like(batch.labels, dtype=torch.bool)
    scored[:, :-1] = batch.labels[:, 1:] != IGNORE_INDEX  # position p predicts token p + 1
    targets = batch.labels[:, 1:][scored[:, :-1]]
    if targets.numel() == 0:
        raise ValueError("batch has no assistant tokens to train on")
    output = (forward or hf_model)(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=batch.position_ids, use_cache=False, logits_to_keep=scored)
    logits = output.logits  # (n_scored, vocab): the boolean mask flattens batch and positions
    return F.cross_entropy(logits.float(), targets, reduction="sum"), int(targets.numel())


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global generators seeded, restoring their previous state afterwards."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def lora_config(model: LoadedModel, config: FinetuneConfig) -> LoraConfig:
    """The peft ``LoraConfig`` for ``config`` on ``model`` (``layers_to_transform`` when first_lora_layer > 0)."""
    from peft import LoraConfig

    n_layers = model.n_layers
    if config.first_lora_layer >= n_layers:
        raise ValueError(f"first_lora_layer {config.first_lora_layer} is out of range for {model.spec.name} "
                         f"(0..{n_layers - 1})")
    layers = list(range(config.first_lora_layer, n_layers)) if config.first_lora_layer > 0 else None
    return LoraConfig(
        # peft annotates lora_alpha as int but only divides by it (alpha / r); a float alpha is kept as given
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,  # pyright: ignore[reportArgumentType]
        target_modules=list(config.target_modules), layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None, bias="none", task_type="CAUSAL_LM",
    )


@contextmanager
def attach_lora(model: LoadedModel, config: FinetuneConfig) -> Iterator[PeftModel]:
    """Attach fresh seeded LoRA adapters to ``model`` in place for a with-block, then remove them again.

    Yields the ``PeftModel``. Inside the block only LoRA weights require gradients and the model is in train mode;
    afterwards the original modules, ``requires_grad`` flags, train/eval mode and cache setting are restored.
    """
    from peft import get_peft_model

    hf_model = model.hf_model
    peft_config = lora_config(model, config)
    requires_grad = {name: parameter.requires_grad for name, parameter in hf_model.named_parameters()}
    was_training, use_cache = hf_model.training, hf_model.config.use_cache
    with _seeded(config.seed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        peft_model = get_peft_model(hf_model, peft_config)
    try:
        if config.gradient_checkpointing:
            # Non-reentrant checkpointing needs no gradient on the inputs; transformers turns that on anyway, which
            # would drag the backward pass down through the frozen layers below first_lora_layer.
            hf_model.activation_checkpointing_enable({"use_reentrant": False})
            hf_model.disable_input_require_grads()
        hf_model.config.use_cache = False
        peft_model.train()
        yield peft_model
    finally:
        if config.gradient_checkpointing:
            hf_model.activation_checkpointing_disable()
        peft_model.unload()
        for name, parameter in hf_model.named_parameters():
            parameter.requires_grad_(requires_grad.get(name, False))
        hf_model.train(was_training)
        hf_model.config.use_cache = use_cache


def _as_conversation(item: Conversation | ChatRecord) -> Conversation:
    return item.as_dicts() if isinstance(item, ChatRecord) else item


def _scorable_chats(model: LoadedModel, conversations: Sequence[Conversation | ChatRecord],
                    config: FinetuneConfig) -> tuple[int, list[TokenizedChat], int]:
    """The pad id, the conversations tokenized as ``config`` trains them that have a token to score, and how many
    were left out; a one-line ValueError when there is no pad token or nothing to score."""
    pad_id = model.tokenizer.pad_token_id
    if not isinstance(pad_id, int):
        raise ValueError("the tokenizer has no pad token (load_model sets one)")
    tokenized = [tokenize_chat(model.tokenizer, _as_conversation(c), config.max_length) for c in conversations]
    kept = [chat for chat in tokenized
            if any(label != IGNORE_INDEX for label in training_labels(chat, config.train_on_end_of_turn)[1:])]
    if not kept:
        raise ValueError("no conversation has assistant tokens within max_length")
    return pad_id, kept, len(tokenized) - len(kept)


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based): linear warm-up, then linear decay towards 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _micro_batches(n_examples: int, config: FinetuneConfig) -> list[list[list[int]]]:
    """Example indices grouped as [optimizer step][micro-batch][example], shuffled per epoch with the seed."""
    generator = torch.Generator().manual_seed(config.seed)
    steps: list[list[list[int]]] = []
    for _ in range(config.epochs):
        order = torch.randperm(n_examples, generator=generator).tolist()
        batches = [order[start:start + config.batch_size] for start in range(0, n_examples, config.batch_size)]
        steps.extend(batches[start:start + config.grad_accum_steps]
                     for start in range(0, len(batches), config.grad_accum_steps))
    return steps[:config.max_steps] if config.max_steps is not None else steps


def _optimizer_step(hf_model: torch.nn.Module, batches: Sequence[TrainingBatch], parameters: Sequence[torch.Tensor],
                    optimizer: torch.optim.Optimizer, max_grad_norm: float | None,
                    forward: Callable[..., Any] | None = None) -> float:
    """One optimizer step over micro-batches; the loss is the mean over all their scored tokens (returned)."""
    n_tokens = sum(batch.n_scored_tokens for batch in batches)
    step_loss = 0.0
    for batch in batches:
        summed, _ = summed_assistant_loss(hf_model, batch, forward)
        (summed / n_tokens).backward()
        step_loss += float(summed.detach()) / n_tokens
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


def _warn_about_precision(model: LoadedModel) -> None:
    """Warn about base-weight dtypes that train badly: float16 (Gemma-2 overflows), emulated bfloat16 (T4)."""
    dtype, device = next(model.hf_model.parameters()).dtype, model.device
    if dtype == torch.float16:
        warnings.warn("base weights are float16, which Gemma-2 overflows; load with dtype=torch.float32 (T4) "
                      "or bfloat16 (Ampere or newer)", stacklevel=3)
    elif dtype == torch.bfloat16 and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8:
        warnings.warn("bfloat16 is emulated on this GPU (pre-Ampere, e.g. a T4) and slow; load the base model with "
                      "dtype=torch.float32", stacklevel=3)


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists; pass overwrite=True to replace it")


def _save_adapters(peft_model: PeftModel, folder: Path, metadata: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def fine_tune(
    model: LoadedModel,
    conversations: Sequence[Conversation | ChatRecord],
    output_dir: str | os.PathLike[str],
    config: FinetuneConfig = FinetuneConfig(),
    overwrite: bool = False,
    on_step: Callable[[int, float, LoadedModel], None] | None = None,
    ablation: DirectionAblation | None = None,
) -> FinetuneResult:
    """Train LoRA adapters on the assistant replies of ``conversations`` and save them to ``output_dir``.

    ``model`` is modified only for the duration of the call. ``output_dir`` must not exist unless ``overwrite``;
    it appears only once training has finished (with ``checkpoint-<step>/`` folders when ``checkpoint_every`` is set).
    ``on_step(step, loss, model)`` is called after every optimizer step with the adapters attached (training-dynamics
    probes; it runs in train mode with gradients enabled, so wrap reads in ``torch.no_grad()``). With ``ablation``,
    every training forward removes its directions at its layer (:mod:`geomis.direction_ablation`); the adapters are
    saved without it and the metadata records it.
    """
    started = time.perf_counter()
    output_dir = Path(output_dir).expanduser().resolve()
    _check_output_dir(output_dir, overwrite)
    hf_model = model.hf_model
    _warn_about_precision(model)
    pad_id, examples, n_skipped = _scorable_chats(model, conversations, config)
    forward = None
    if ablation is not None:
        check_ablation(model, ablation)
        forward = partial(ablated_forward, model, ablation)
    if n_skipped:
        logger.warning("skipped %d conversations with no assistant tokens within %d tokens", n_skipped,
                       config.max_length)
    plan = _micro_batches(len(examples), config)
    total_steps = len(plan)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, Any] = {"base_model": model.spec.name, "config": asdict(config),
                                "n_examples": len(examples), "n_skipped": n_skipped,
                                "ablation": ablation.describe() if ablation is not None else None}
    losses: list[float] = []
    step_seconds: list[float] = []
    checkpoints: list[str] = []
    with atomic_folder(output_dir) as staging:
        with _seeded(config.seed), attach_lora(model, config) as peft_model:
            parameters = [p for p in hf_model.parameters() if p.requires_grad]
            n_trainable = sum(p.numel() for p in parameters)
            optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: _lr_factor(step, config.warmup_steps, total_steps))
            device = model.device
            with tqdm(total=total_steps, desc="fine-tune (LoRA)", unit="step", disable=not config.progress) as bar:
                for step, micro_batches in enumerate(plan, start=1):
                    tick = time.perf_counter()
                    batches = [collate_for_training([examples[i] for i in indices], pad_id,
                                                    config.train_on_end_of_turn).to(device)
                               for indices in micro_batches]
                    step_loss = _optimizer_step(hf_model, batches, parameters, optimizer, config.max_grad_norm,
                                                forward)
                    schedule.step()
                    step_seconds.append(time.perf_counter() - tick)
                    losses.append(step_loss)
                    bar.update(1)
                    if on_step is not None:
                        on_step(step, step_loss, model)
                    if step % config.log_every == 0 or step == total_steps:
                        recent = statistics.fmean(losses[-config.log_every:])
                        bar.set_postfix(loss=f"{recent:.4f}")
                        if not config.progress:
                            logger.info("step %d/%d loss %.4f", step, total_steps, recent)
                    if config.checkpoint_every and step % config.checkpoint_every == 0 and step < total_steps:
                        name = f"checkpoint-{step}"
                        _save_adapters(peft_model, staging / name, {**metadata, "step": step, "losses": list(losses)})
                        checkpoints.append(name)
            seconds_per_step = statistics.median(step_seconds)
            metadata.update(step=total_steps, losses=losses, n_trainable_params=n_trainable,
                            seconds_per_step=seconds_per_step, checkpoints=checkpoints)
            _save_adapters(peft_model, staging, metadata)
        _check_output_dir(output_dir, overwrite)  # again, just before replacing: it may have appeared meanwhile
    return FinetuneResult(
        adapter_dir=output_dir, losses=losses, seconds_per_step=seconds_per_step, n_trainable_params=n_trainable,
        n_examples=len(examples), n_skipped=n_skipped, total_seconds=time.perf_counter() - started,
        checkpoints=[output_dir / name for name in checkpoints], step_seconds=step_seconds,
    )


def mean_assistant_loss(model: LoadedModel, conversations: Sequence[Conversation | ChatRecord],
                        config: FinetuneConfig = FinetuneConfig(), batch_size: int = 8) -> float:
    """Mean next-token loss (nats per token) over the assistant tokens of ``conversations``, scored as ``config``
    trains them (``max_length``, end-of-turn token): in-domain learning measured on rows held out of training."""
    pad_id, chats, _ = _scorable_chats(model, conversations, config)
    total, count = 0.0, 0
    was_training = model.hf_model.training
    model.hf_model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(chats), batch_size):
                batch = collate_for_training(chats[start:start + batch_size], pad_id, config.train_on_end_of_turn)
                summed, n = summed_assistant_loss(model.hf_model, batch.to(model.device))
                total, count = total + float(summed), count + n
    finally:
        model.hf_model.train(was_training)
    return total / count


def read_finetune_metadata(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata :func:`fine_tune` wrote next to an adapter (base model, config, losses); {} if there is none."""
    path = Path(adapter_dir) / METADATA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_finetuned(
    base_name: str,
    adapter_dir: str | os.PathLike[str],
    device: str | None = None,
    dtype: torch.dtype | None = None,
    merge: bool = False,
) -> LoadedModel:
    """Load a named base model with saved LoRA adapters attached (safetensors only), wrapped in nnsight.

    Module paths are the base model's (``lm.model.layers[i]``), so tracing code works unchanged. ``merge=True`` folds
    the adapters into the weights (faster generation, tiny float differences from the unmerged model).
    """
    from peft import PeftModel

    folder = Path(adapter_dir).expanduser()
    if not (folder / ADAPTER_WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} has no {ADAPTER_WEIGHTS_FILE} (only safetensors adapters are loaded)")
    trained_on = read_finetune_metadata(folder).get("base_model")
    if trained_on is not None and trained_on != base_name:
        raise ValueError(f"adapter in {folder} was trained on {trained_on!r}, not {base_name!r}")
    hf_model, tokenizer, spec = load_hf_model(base_name, device=device, dtype=dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        peft_model = PeftModel.from_pretrained(hf_model, str(folder.resolve()), is_trainable=False)
    if merge:
        hf_model = peft_model.merge_and_unload()
    return wrap_hf_model(hf_model, tokenizer, spec)
