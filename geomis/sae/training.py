"""Train the CPU-default SAE with sae-lens's own trainer, offline, from activations collected through nnsight.

Steps 1-3 live in :mod:`geomis.sae.corpus`, step 6's measures in :mod:`geomis.sae.quality`; this module trains,
saves, and runs the whole command.

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

import json
import math
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import LoggingConfig, SAETrainerConfig
from safetensors.torch import load_file, save_file

from geomis.activations import TokenActivations
from geomis.atomic_io import atomic_folder
from geomis.errors import GeomisError
from geomis.models.registry import LoadedModel
from geomis.sae.config import SAETrainingConfig  # re-exported: it lived here
from geomis.sae.corpus import (
    CorpusConversation,
    CorpusSplit,
    CorpusTokens,
    bundled_corpus,
    cached_answers,
    collect_corpus_activations,
    generate_answers,
    neutral_prompt_corpus,
    select_tokens,
)
from geomis.sae.corpus_answers import CacheUse
from geomis.sae.loading import SAE_WEIGHTS_FILE, load_sae_from_disk
from geomis.sae.quality import ReconstructionMetrics, SpliceMetrics, reconstruction_metrics, splice_metrics

TRAINING_RECORD_FILE = "training.json"
"""geomis's record of how an SAE folder was made (config, corpus, metrics, command); next to sae-lens's files."""


class SAETrainingError(GeomisError):
    """SAE training cannot proceed: the output exists, the corpus is too small, a bad setting."""


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
