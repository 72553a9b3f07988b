"""Train the CPU-default SAE with sae-lens's own trainer, offline, from activations collected through nnsight.

The pipeline behind ``geomis train-sae``:

1. **Corpus.** Every bundled chat dataset (inducing and control sets of each domain, plus the toxic and neutral
   references), optionally with SmolLM2's own greedy answers to the training prompts; or (``neutral-prompts``) the
   model's own greedy answers to 1,989 neutral prompts, text the book never compares, kept in an answers file so
   every seed reads the same text (:mod:`geomis.sae.corpus_answers`). Conversations are split into
   training and held-out sets by a stable hash of ``(dataset, line)``, so every SAE holds out the same ~10%.
2. **Tokens.** All non-special tokens of user and assistant turns (and of the chat template's system prompt), never
   position 0 (an attention sink with a norm ~100x the others). A token whose whole prefix already occurred in an
   earlier conversation is kept only once: the default system prompt opens every SmolLM2 conversation and would
   otherwise contribute thousands of identical activation vectors.
3. **Activations** after decoder layer L, read with ``geomis.activations`` (nnsight, forward cut at L).
   Several seeds can share one collection (:func:`train_sae_seeds`): only initialisation and batch order differ.
4. **Training** a TopK SAE with ``sae_lens.SAETrainer``, fed from an in-memory iterator that reshuffles the
   activations every epoch (seeded). Inputs are scaled to an average norm of sqrt(d_in) during training and the
   scale is folded back into the weights at the end (sae-lens's ``expected_average_only_in``).
5. **Saving** in sae-lens's inference format (``cfg.json`` + ``sae_weights.safetensors``, float16 by default, decoder
   rows unit-norm), written to a temporary folder and renamed into place.
6. **Evaluation** of the saved-and-reloaded SAE on held-out tokens: explained variance, L0, dead features, and the
   next-token loss recovered when the SAE's reconstruction is spliced into layer L through an nnsight edit.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE, SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import LoggingConfig, SAETrainerConfig
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from geomis.activations import ActivationConfig, TokenActivations, iter_residual_batches, token_selection
from geomis.atomic_io import atomic_folder
from geomis.chat.records import DOMAIN_DATASETS, REFERENCE_DATASETS, load_bundled
from geomis.chat.tokens import Conversation, TokenizedChat, pad_left, render_chat, tokenize_chats
from geomis.errors import GeomisError
from geomis.models.registry import LoadedModel
from geomis.sae.config import SAETrainingConfig  # re-exported: it lived here
from geomis.sae.corpus_answers import CacheUse, answers_through_cache
from geomis.sae.loading import SAE_WEIGHTS_FILE, LoadedSAE, load_sae_from_disk

TRAINING_RECORD_FILE = "training.json"
"""geomis's record of how an SAE folder was made (config, corpus, metrics, command); next to sae-lens's files."""


class SAETrainingError(GeomisError):
    """SAE training cannot proceed: the output exists, the corpus is too small, a bad setting."""


# ------------------------------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class CorpusConversation:
    """One training or held-out conversation and where it came from."""

    dataset: str
    line_number: int
    messages: tuple[Mapping[str, str], ...]
    generated: bool = False
    """True when the assistant turn was written by the model itself (greedy), not taken from the dataset."""

    def as_dicts(self) -> list[dict[str, str]]:
        """Plain message dicts for a chat template."""
        return [dict(message) for message in self.messages]


def is_held_out(dataset: str, line_number: int, fraction: float = 0.1) -> bool:
    """Whether a conversation belongs to the held-out split: a stable hash of (dataset, line) below ``fraction``."""
    digest = hashlib.sha256(f"{dataset}:{line_number}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class CorpusSplit:
    """Training and held-out conversations, each list in a seeded random order."""

    train: list[CorpusConversation]
    held_out: list[CorpusConversation]


NEUTRAL_PROMPTS = "sae_corpus_prompts.jsonl"
DEFAULT_SAE_DATASETS: tuple[str, ...] = (*(name for pair in DOMAIN_DATASETS.values() for name in pair),
                                          *REFERENCE_DATASETS)
"""The ten bundled sets the shipped SAE was trained on (inducing, control, the first reference pair); named, so that
a new bundled file never changes the default corpus silently."""


def bundled_corpus(datasets: Sequence[str] = (), holdout_fraction: float = 0.1, seed: int = 0) -> CorpusSplit:
    """All conversations of the named bundled datasets (default: :data:`DEFAULT_SAE_DATASETS`), split by hash and
    shuffled with ``seed``."""
    names = list(datasets) or list(DEFAULT_SAE_DATASETS)
    train: list[CorpusConversation] = []
    held_out: list[CorpusConversation] = []
    for name in names:
        for record in load_bundled(name):
            item = CorpusConversation(name, record.line_number, tuple(record.as_dicts()))
            (held_out if is_held_out(name, record.line_number, holdout_fraction) else train).append(item)
    generator = torch.Generator().manual_seed(seed)
    train = [train[i] for i in torch.randperm(len(train), generator=generator).tolist()]
    held_out = [held_out[i] for i in torch.randperm(len(held_out), generator=generator).tolist()]
    return CorpusSplit(train, held_out)


def neutral_prompt_corpus(holdout_fraction: float = 0.1, seed: int = 0) -> CorpusSplit:
    """The prompts of ``geomis/data/sae_corpus_prompts.jsonl`` as one-turn conversations (user only), split by hash
    and shuffled with ``seed``; :func:`generate_answers` gives them the model's own answers."""
    import json
    from importlib import resources

    lines = resources.files("geomis").joinpath("data", NEUTRAL_PROMPTS).read_text(encoding="utf-8").splitlines()
    conversations = [CorpusConversation(NEUTRAL_PROMPTS.removesuffix(".jsonl"), number,
                                        ({"role": "user", "content": json.loads(line)["prompt"]},))
                     for number, line in enumerate(lines, start=1) if line.strip()]
    train = [c for c in conversations if not is_held_out(c.dataset, c.line_number, holdout_fraction)]
    held_out = [c for c in conversations if is_held_out(c.dataset, c.line_number, holdout_fraction)]
    generator = torch.Generator().manual_seed(seed)
    return CorpusSplit([train[i] for i in torch.randperm(len(train), generator=generator).tolist()],
                       [held_out[i] for i in torch.randperm(len(held_out), generator=generator).tolist()])


@torch.no_grad()
def greedy_answers(model: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 96, batch_size: int = 16,
                   progress: bool = True) -> list[str]:
    """The model's greedy answer to each one-turn user prompt (stripped; possibly empty)."""
    tokenizer = model.tokenizer
    texts = [render_chat(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    answers: dict[int, str] = {}
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for indices in tqdm(batches, desc="generating answers", unit="batch", disable=not progress):
        encoded = tokenizer([texts[i] for i in indices], add_special_tokens=False, padding=True,
                            padding_side="left", return_tensors="pt").to(model.device)
        # PreTrainedModel declares no generate: transformers 5 mixes it into the causal LM classes loaded here
        output = model.hf_model.generate(  # pyright: ignore[reportCallIssue]
            **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        new_tokens = output[:, encoded["input_ids"].shape[1]:]
        for index, row in zip(indices, new_tokens, strict=True):
            answer = tokenizer.decode(row, skip_special_tokens=True)
            assert isinstance(answer, str), "one sequence of ids decodes to one string"
            answers[index] = answer.strip()
    return [answers[i] for i in range(len(texts))]


def _first_user_turn(conversation: CorpusConversation) -> dict[str, str]:
    return dict(next(m for m in conversation.messages if m["role"] == "user"))


def _with_answers(conversations: Sequence[CorpusConversation], answers: Sequence[str]) -> list[CorpusConversation]:
    return [CorpusConversation(c.dataset, c.line_number, (_first_user_turn(c), {"role": "assistant", "content": a}),
                               generated=True)
            for c, a in zip(conversations, answers, strict=True) if a]


def generate_answers(model: LoadedModel, conversations: Sequence[CorpusConversation], max_new_tokens: int = 96,
                     batch_size: int = 16, progress: bool = True) -> list[CorpusConversation]:
    """The model's own greedy answers to the first user turn of each conversation, as new conversations."""
    prompts = [_first_user_turn(c)["content"] for c in conversations]
    return _with_answers(conversations, greedy_answers(model, prompts, max_new_tokens, batch_size, progress))


def cached_answers(model: LoadedModel, conversations: Sequence[CorpusConversation], cache: Path,
                   max_new_tokens: int = 96, progress: bool = True) -> tuple[list[CorpusConversation], CacheUse]:
    """:func:`generate_answers`, taking the answers ``cache`` already holds and adding the new ones to it."""
    prompts = [_first_user_turn(c)["content"] for c in conversations]
    answers, use = answers_through_cache(
        prompts, cache, model.spec.name, max_new_tokens,
        lambda missing: greedy_answers(model, missing, max_new_tokens, progress=progress))
    return _with_answers(conversations, answers), use


# ------------------------------------------------------------------------------------------------------- tokens


def first_occurrence_masks(chats: Sequence[TokenizedChat]) -> list[list[bool]]:
    """Per token: False when the token's whole prefix already occurred in an earlier chat (an exact repeat)."""
    trie: dict[int, dict] = {}
    masks: list[list[bool]] = []
    for chat in chats:
        node, mask = trie, []
        for token in chat.input_ids:
            child = node.get(token)
            mask.append(child is None)
            if child is None:
                child = node[token] = {}
            node = child
        masks.append(mask)
    return masks


def kept_token_masks(chats: Sequence[TokenizedChat]) -> list[list[bool]]:
    """Tokens the SAE corpus uses: not special, not position 0, and not an exact repeat of an earlier prefix."""
    return [[fresh and not special and position > 0
             for position, (fresh, special) in enumerate(zip(mask, chat.special_mask, strict=True))]
            for mask, chat in zip(first_occurrence_masks(chats), chats, strict=True)]


@dataclass
class CorpusTokens:
    """The conversations chosen for a token budget, their keep masks, and how many tokens they give."""

    conversations: list[CorpusConversation]
    keep: list[list[bool]]
    n_tokens: int


def select_tokens(model: LoadedModel, conversations: Sequence[CorpusConversation], budget: int | None,
                  max_length: int) -> CorpusTokens:
    """Take conversations in order until ``budget`` kept tokens are reached (all of them when budget is None)."""
    chats = tokenize_chats(model.tokenizer, [c.as_dicts() for c in conversations], max_length)
    keep = kept_token_masks(chats)
    chosen, masks, total = [], [], 0
    for conversation, mask in zip(conversations, keep, strict=True):
        if budget is not None and total >= budget:
            break
        chosen.append(conversation)
        masks.append(mask)
        total += sum(mask)
    return CorpusTokens(chosen, masks, total if budget is None else min(total, budget))


def collect_corpus_activations(model: LoadedModel, corpus: CorpusTokens, layer: int, batch_size: int = 16,
                               max_length: int = 512, progress: bool = True) -> TokenActivations:
    """Layer-``layer`` residuals of the corpus's kept tokens, in (conversation, position) order, cut to its budget."""
    config = ActivationConfig(layer=layer, batch_size=batch_size, assistant_only=False, max_length=max_length,
                              progress=progress)
    width = max((len(mask) for mask in corpus.keep), default=0)
    keep = torch.zeros(len(corpus.keep), max(width, 1), dtype=torch.bool)
    for row, mask in enumerate(corpus.keep):
        keep[row, :len(mask)] = torch.tensor(mask, dtype=torch.bool)
    parts = []
    for part in iter_residual_batches(model, [c.as_dicts() for c in corpus.conversations], config):
        fresh = keep[part.sample_index, part.position]
        parts.append(TokenActivations(part.activations[fresh], part.sample_index[fresh], part.position[fresh],
                                      part.token_id[fresh]))
    acts = TokenActivations.concatenate(parts, d_model=model.spec.d_model)
    order = torch.argsort(acts.sample_index * (max_length + 1) + acts.position)[:corpus.n_tokens]
    return TokenActivations(acts.activations[order], acts.sample_index[order], acts.position[order],
                            acts.token_id[order])


# ------------------------------------------------------------------------------------------------------ training


def _epoch_batches(data: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless full batches; every epoch is a fresh seeded permutation (the last partial batch is dropped)."""
    generator = torch.Generator().manual_seed(seed)
    per_epoch = data.shape[0] // batch_size
    while True:
        order = torch.randperm(data.shape[0], generator=generator)
        for step in range(per_epoch):
            yield data[order[step * batch_size:(step + 1) * batch_size]]


def fit_topk_sae(data: torch.Tensor, config: SAETrainingConfig) -> TopKTrainingSAE:
    """Train a TopK SAE on ``data`` (n_tokens, d_in) with ``sae_lens.SAETrainer``; returns the training SAE.

    The progress bar is sae-lens's own ("Training SAE").
    """
    data = data.float().contiguous()
    n_tokens, d_in = data.shape
    batch_size = min(config.batch_size, n_tokens)
    steps = max(1, math.floor(config.epochs * (n_tokens // batch_size)))
    torch.manual_seed(config.seed)
    sae_config = TopKTrainingSAEConfig(d_in=d_in, d_sae=config.width, k=config.k, dtype="float32", device="cpu",
                                       normalize_activations="expected_average_only_in",
                                       rescale_acts_by_decoder_norm=True, apply_b_dec_to_input=True)
    sae = TopKTrainingSAE(sae_config)
    trainer_config = SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=config.lr,
        lr_end=config.lr, lr_scheduler_name="constant",
        lr_warm_up_steps=int(config.warmup_fraction * steps), lr_decay_steps=int(config.decay_fraction * steps),
        dead_feature_window=config.dead_feature_window or max(1, n_tokens // batch_size),
        feature_sampling_window=steps + 1, device="cpu", logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_config, sae=sae, data_provider=_epoch_batches(data, batch_size, config.seed))
    # The scale sae-lens would estimate from the provider, computed exactly over all tokens instead; with it known,
    # b_dec starts at the (scaled) mean activation, so the features only have to explain the variation.
    scale = math.sqrt(d_in) / data.norm(dim=-1).mean().item()
    trainer.activation_scaler.scaling_factor = scale
    with torch.no_grad():
        sae.b_dec.copy_(data.mean(dim=0) * scale)
    return trainer.fit()


def save_inference_sae(training_sae: TopKTrainingSAE, path: Path, metadata: Mapping[str, Any],
                       dtype: str = "float16") -> None:
    """Write the inference SAE in sae-lens's format (unit-norm decoder rows), weights cast to ``dtype``."""
    for key, value in metadata.items():
        training_sae.cfg.metadata[key] = value
    training_sae.save_inference_model(path)
    weights_path = path / SAE_WEIGHTS_FILE
    state = load_file(weights_path)
    target = getattr(torch, dtype)
    save_file({name: tensor.to(target).contiguous() for name, tensor in state.items()}, weights_path)


# ---------------------------------------------------------------------------------------------------- evaluation


@dataclass
class ReconstructionMetrics:
    """How well an SAE reconstructs a set of activations."""

    explained_variance: float
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the tokens."""
    relative_mse: float
    """sum ||x - x_hat||^2 / sum ||x||^2."""
    l0: float
    """Mean number of features firing per token."""
    dead_fraction: float
    """Fraction of features that fire on none of the tokens."""
    n_tokens: int


@torch.no_grad()
def reconstruction_metrics(sae: SAE | LoadedSAE, activations: torch.Tensor,
                           batch_size: int = 4096) -> ReconstructionMetrics:
    """Explained variance, relative MSE, L0 and never-firing features of ``sae`` on (n, d_in) activations."""
    inner = sae.sae if isinstance(sae, LoadedSAE) else sae
    data = activations.float()
    mean = data.mean(dim=0)
    error = total = norm = l0 = 0.0
    fired = torch.zeros(int(inner.cfg.d_sae), dtype=torch.bool)
    for start in range(0, data.shape[0], batch_size):
        batch = data[start:start + batch_size].to(inner.W_enc.device)
        codes = inner.encode(batch)
        recon = inner.decode(codes)
        error += (batch - recon).pow(2).sum().item()
        total += (batch - mean.to(batch.device)).pow(2).sum().item()
        norm += batch.pow(2).sum().item()
        active = codes > 0
        l0 += active.sum().item()
        fired |= active.any(dim=0).cpu()
    n = max(data.shape[0], 1)
    return ReconstructionMetrics(explained_variance=1 - error / total if total else float("nan"),
                                 relative_mse=error / norm if norm else float("nan"), l0=l0 / n,
                                 dead_fraction=1 - fired.float().mean().item(), n_tokens=int(data.shape[0]))


@dataclass
class SpliceMetrics:
    """Next-token loss with layer L's output left alone, replaced by the SAE's reconstruction, or mean-ablated."""

    ce_clean: float
    ce_spliced: float
    ce_mean_ablated: float
    n_predictions: int

    @property
    def loss_recovered(self) -> float:
        """(ablated - spliced) / (ablated - clean): 1 means the SAE loses nothing, 0 no better than the mean."""
        gap = self.ce_mean_ablated - self.ce_clean
        return (self.ce_mean_ablated - self.ce_spliced) / gap if gap else float("nan")


@torch.no_grad()
def splice_metrics(model: LoadedModel, sae: SAE | LoadedSAE, conversations: Sequence[Conversation], layer: int,
                   mean_activation: torch.Tensor, batch_size: int = 8, max_length: int = 512,
                   progress: bool = True) -> SpliceMetrics:
    """Next-token CE with the SAE's reconstruction spliced into layer ``layer`` (nnsight edit) on kept tokens.

    Only the tokens the SAE is meant for are replaced (not position 0, not special tokens); the loss is averaged
    over every next-token prediction inside the conversations.
    """
    inner = sae.sae if isinstance(sae, LoadedSAE) else sae
    chats = tokenize_chats(model.tokenizer, conversations, max_length)
    pad_id = model.tokenizer.pad_token_id
    assert isinstance(pad_id, int), "load_model sets a pad token"
    totals = {"clean": 0.0, "spliced": 0.0, "ablated": 0.0}
    count = 0
    order = sorted(range(len(chats)), key=lambda i: len(chats[i]))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for indices in tqdm(batches, desc="spliced loss", unit="batch", disable=not progress):
        batch = pad_left([chats[i] for i in indices], pad_id)
        inputs = batch.model_inputs(model.device)
        keep = token_selection(batch, assistant_only=False).to(model.device)
        targets = batch.input_ids[:, 1:].to(model.device)
        valid = (batch.attention_mask[:, 1:].bool() & batch.attention_mask[:, :-1].bool()).to(model.device)
        for mode in totals:
            with model.lm.trace(inputs):
                if mode != "clean":
                    hidden = model.lm.model.layers[layer].output
                    if mode == "spliced":
                        flat = hidden[keep]
                        replacement = inner.decode(inner.encode(flat.to(inner.W_enc.dtype))).to(hidden.dtype)
                    else:
                        replacement = mean_activation.to(hidden.device, hidden.dtype).expand(int(keep.sum()), -1)
                    edited = hidden.clone()
                    edited[keep] = replacement
                    model.lm.model.layers[layer].output = edited
                logits = model.lm.output.logits.save()
            losses = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets,
                                                       reduction="none")
            totals[mode] += losses[valid].sum().item()
        count += int(valid.sum())
    return SpliceMetrics(ce_clean=totals["clean"] / count, ce_spliced=totals["spliced"] / count,
                         ce_mean_ablated=totals["ablated"] / count, n_predictions=count)


# --------------------------------------------------------------------------------------------------- the command


@dataclass
class SAETrainingReport:
    """What ``train_sae_to_dir`` made: where, from what, how well, and how long it took."""

    path: Path
    config: SAETrainingConfig
    n_train_tokens: int
    n_train_conversations: int
    n_generated_conversations: int
    held_out: ReconstructionMetrics
    train: ReconstructionMetrics
    splice: SpliceMetrics | None
    seconds: dict[str, float] = field(default_factory=dict)
    command: str = ""
    answers_cache: CacheUse | None = None
    """The answers file the run's generated answers came from and went to (None: generated afresh, not kept)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record (written to ``training.json`` next to the weights)."""
        splice = None
        if self.splice is not None:
            splice = {**asdict(self.splice), "loss_recovered": self.splice.loss_recovered}
        return {
            "command": self.command,
            "config": asdict(self.config),
            "corpus": {"train_tokens": self.n_train_tokens, "train_conversations": self.n_train_conversations,
                       "generated_conversations": self.n_generated_conversations,
                       "held_out_rule": f"sha256('dataset:line') < {self.config.holdout_fraction} of 2^64",
                       **({"answers_cache": self.answers_cache.to_json(Path.cwd())} if self.answers_cache else {})},
            "held_out": asdict(self.held_out),
            "train": asdict(self.train),
            "splice": splice,
            "seconds": {key: round(value, 1) for key, value in self.seconds.items()},
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "threads": torch.get_num_threads()},
        }

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [f"SAE written to {self.path}",
                 f"  trained on {self.n_train_tokens} tokens from {self.n_train_conversations} conversations",
                 *([f"  answers: {self.answers_cache.reused} reused from, {self.answers_cache.generated} generated "
                    f"into {self.answers_cache.path}"] if self.answers_cache else []),
                 f"  held-out ({self.held_out.n_tokens} tokens): explained variance "
                 f"{self.held_out.explained_variance:.3f}, L0 {self.held_out.l0:.1f}",
                 f"  dead features: {self.train.dead_fraction:.1%} on training tokens, "
                 f"{self.held_out.dead_fraction:.1%} on held-out tokens"]
        if self.splice is not None:
            lines.append(f"  next-token CE clean {self.splice.ce_clean:.3f}, spliced {self.splice.ce_spliced:.3f}, "
                         f"mean-ablated {self.splice.ce_mean_ablated:.3f}: "
                         f"{self.splice.loss_recovered:.1%} of the loss recovered")
        return "\n".join(lines)


def check_output(out: Path, force: bool) -> None:
    """Refuse an existing output folder unless ``force`` (checked before any work and again before replacing)."""
    if out.exists() and not force:
        raise SAETrainingError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise SAETrainingError(f"{out} exists and is not a folder")


@dataclass
class PreparedCorpus:
    """A corpus's conversations, tokens and activations, collected once and shareable by SAEs of several seeds."""

    config: SAETrainingConfig
    split: CorpusSplit
    train_tokens: CorpusTokens
    held_tokens: CorpusTokens
    train_acts: TokenActivations
    held_acts: TokenActivations
    n_generated: int
    cache_use: CacheUse | None
    seconds: dict[str, float]

    def serves(self, config: SAETrainingConfig) -> bool:
        """Whether an SAE trained with ``config`` would have collected exactly this corpus (only its seed differs)."""
        return (replace(config, seed=0, corpus_seed=config.order_seed)
                == replace(self.config, seed=0, corpus_seed=self.config.order_seed))


def prepare_corpus(model: LoadedModel, config: SAETrainingConfig, progress: bool = True,
                   answers_cache: str | Path | None = None) -> PreparedCorpus:
    """Build the corpus ``config`` asks for, tokenize it and collect the layer's activations (train and held out).

    ``answers_cache``: a file of the model's greedy answers to the neutral prompts (see
    :mod:`geomis.sae.corpus_answers`), read and extended so that every seed trains on the same generated text."""
    if model.spec.name != config.model_name:
        raise SAETrainingError(f"config is for {config.model_name}, model is {model.spec.name}")
    if not 0 <= config.layer < model.n_layers:
        raise SAETrainingError(f"layer {config.layer} is out of range for {model.spec.name} (0..{model.n_layers - 1})")
    if answers_cache is not None and config.corpus != "neutral-prompts":
        raise SAETrainingError("an answers cache applies to the neutral-prompts corpus only")
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    generated: list[CorpusConversation] = []
    cache_use: CacheUse | None = None
    if config.corpus == "neutral-prompts":  # every conversation is a prompt and the model's own answer
        prompts = neutral_prompt_corpus(config.holdout_fraction, config.order_seed)
        if answers_cache is None:
            split = CorpusSplit(generate_answers(model, prompts.train, config.generation_tokens, progress=progress),
                                generate_answers(model, prompts.held_out, config.generation_tokens,
                                                 progress=progress))
        else:
            both, cache_use = cached_answers(model, [*prompts.train, *prompts.held_out], Path(answers_cache),
                                             config.generation_tokens, progress=progress)
            held_keys = {(c.dataset, c.line_number) for c in prompts.held_out}
            split = CorpusSplit([c for c in both if (c.dataset, c.line_number) not in held_keys],
                                [c for c in both if (c.dataset, c.line_number) in held_keys])
        generated = list(split.train)
        seconds["generate"] = time.perf_counter() - clock
    else:
        split = bundled_corpus(config.datasets, config.holdout_fraction, config.order_seed)
    train_conversations = list(split.train)
    if config.generated_answers:
        generated = generate_answers(model, split.train[:config.generated_answers], config.generation_tokens,
                                     progress=progress)
        train_conversations += generated
        seconds["generate"] = time.perf_counter() - clock
    train_tokens = select_tokens(model, train_conversations, config.tokens, config.max_length)
    held_tokens = select_tokens(model, split.held_out, config.eval_tokens, config.max_length)
    if train_tokens.n_tokens < config.k * 4:
        raise SAETrainingError(f"only {train_tokens.n_tokens} training tokens; need at least {config.k * 4}")

    start = time.perf_counter()
    train_acts = collect_corpus_activations(model, train_tokens, config.layer, config.activation_batch_size,
                                            config.max_length, progress)
    held_acts = collect_corpus_activations(model, held_tokens, config.layer, config.activation_batch_size,
                                           config.max_length, progress)
    seconds["collect"] = time.perf_counter() - start
    return PreparedCorpus(config, split, train_tokens, held_tokens, train_acts, held_acts, len(generated), cache_use,
                          seconds)


def train_sae_to_dir(model: LoadedModel, config: SAETrainingConfig, out: str | Path, force: bool = False,
                     progress: bool = True, command: str = "", answers_cache: str | Path | None = None,
                     prepared: PreparedCorpus | None = None) -> SAETrainingReport:
    """Collect activations, train, save (atomically) and evaluate one SAE; never overwrite ``out`` unless ``force``.

    ``prepared``: a corpus already collected for the same settings (any seed; see :func:`train_sae_seeds`), used
    instead of collecting again; ``answers_cache`` as in :func:`prepare_corpus`."""
    out = Path(out)
    check_output(out, force)
    clock = time.perf_counter()
    if prepared is None:
        prepared = prepare_corpus(model, config, progress, answers_cache)
        seconds = dict(prepared.seconds)
    else:
        if not prepared.serves(config):
            raise SAETrainingError("the prepared corpus was collected with other settings than this SAE's")
        seconds = {"shared_" + key: value for key, value in prepared.seconds.items()}
    split, train_tokens, train_acts, held_acts = (prepared.split, prepared.train_tokens, prepared.train_acts,
                                                  prepared.held_acts)

    start = time.perf_counter()
    training_sae = fit_topk_sae(train_acts.activations, config)
    seconds["train"] = time.perf_counter() - start

    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(out) as staging:
        metadata = {"model_name": config.model_name, "hook_name": f"model.layers.{config.layer}",
                    "layer": config.layer, "context_size": config.max_length, "prepend_bos": True,
                    "dataset_path": ("geomis neutral prompts + the model's own greedy answers"
                                     if config.corpus == "neutral-prompts" else
                                     "geomis bundled chat datasets"
                                     + (" + own greedy answers" if prepared.n_generated else ""))}
        save_inference_sae(training_sae, staging, metadata, config.save_dtype)
        saved = load_sae_from_disk(staging)  # metrics describe exactly what ships: the rounded, reloaded weights
        start = time.perf_counter()
        held = reconstruction_metrics(saved.sae, held_acts.activations)
        train = reconstruction_metrics(saved.sae, train_acts.activations)
        splice = None
        if config.ce_conversations > 0 and split.held_out:
            conversations = [c.as_dicts() for c in split.held_out[:config.ce_conversations]]
            splice = splice_metrics(model, saved.sae, conversations, config.layer,
                                    train_acts.activations.mean(dim=0), max_length=config.max_length,
                                    progress=progress)
        seconds["evaluate"] = time.perf_counter() - start
        seconds["total"] = time.perf_counter() - clock  # this SAE's own time (shared_* were paid once, before)
        report = SAETrainingReport(out, config, train_tokens.n_tokens, len(train_tokens.conversations),
                                   sum(c.generated for c in train_tokens.conversations), held, train, splice,
                                   seconds, command, prepared.cache_use)
        (staging / TRAINING_RECORD_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        staging.chmod(0o755)  # mkdtemp makes a private folder; the result is an ordinary, shareable one
        for file in staging.iterdir():
            file.chmod(0o644)
        check_output(out, force)  # again, just before replacing
    return report


def seed_outputs(out_template: str, seeds: Sequence[int]) -> list[Path]:
    """One output folder per seed from a template holding ``{seed}``."""
    if "{seed}" not in out_template:
        raise SAETrainingError(f"with several seeds the output must contain {{seed}}, got {out_template!r}")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise SAETrainingError(f"seeds must be distinct and at least one, got {list(seeds)}")
    return [Path(out_template.replace("{seed}", str(seed))) for seed in seeds]


def train_sae_seeds(model: LoadedModel, config: SAETrainingConfig, seeds: Sequence[int], out_template: str,
                    force: bool = False, progress: bool = True, command: Callable[[int], str] = lambda seed: "",
                    answers_cache: str | Path | None = None) -> list[SAETrainingReport | Path]:
    """Train one SAE per seed on a corpus collected once (its order from ``config.order_seed``).

    Resumable: a seed whose folder exists is skipped (its path is returned instead of a report) unless ``force``.
    Each SAE records ``corpus_seed``, so ``--seed S --corpus-seed C`` rebuilds it alone."""
    outputs = seed_outputs(out_template, seeds)
    shared = replace(config, corpus_seed=config.order_seed)
    for out in outputs:
        check_output(out, force=True)  # an existing output must at least be a folder
    todo = [i for i, out in enumerate(outputs) if force or not out.exists()]
    results: list[SAETrainingReport | Path] = list(outputs)
    if not todo:
        return results
    prepared = prepare_corpus(model, shared, progress, answers_cache)
    for i in todo:
        results[i] = train_sae_to_dir(model, replace(shared, seed=seeds[i]), outputs[i], force=force,
                                      progress=progress, command=command(seeds[i]), prepared=prepared)
    return results
    prepared = prepare_corpus(model, shared, progress, answers_cache)
    for seed, out in todo:
        report = train_sae_to_dir(model, replace(shared, seed=seed), out, force=force, progress=progress,
                                  command=command(seed), prepared=prepared)
        results[outputs.index(out)] = report
    return results
