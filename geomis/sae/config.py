"""What an SAE training run is asked to do: :class:`SAETrainingConfig` (``geomis train-sae``'s options and defaults).

Kept apart from :mod:`geomis.sae.training` (which loads torch and sae-lens) so that the command line reads its defaults
at start-up without them.
"""

from __future__ import annotations

from dataclasses import dataclass

from geomis.errors import ConfigError

SAVE_DTYPES: tuple[str, ...] = ("float16", "float32")
CORPORA: tuple[str, ...] = ("bundled", "neutral-prompts")
"""``bundled``: the project's chat sets (those the book compares; the shipped SAEs); ``neutral-prompts``: the model's
own greedy answers to ``geomis/data/sae_corpus_prompts.jsonl``, text the SAE is never evaluated on."""
"""dtypes an SAE's weights can be saved in, the default first."""


@dataclass(frozen=True)
class SAETrainingConfig:
    """Everything that determines a trained SAE (same config and seed on the same machine: same weights)."""

    model_name: str = "smollm2-135m"
    layer: int = 15
    width: int = 4096
    k: int = 32
    tokens: int | None = None
    """Training tokens to collect (None: the whole training split)."""
    epochs: float = 10.0
    """Passes over the training tokens."""
    batch_size: int = 1024
    """SAE training batch, in tokens."""
    lr: float = 4e-4
    warmup_fraction: float = 0.05
    decay_fraction: float = 0.2
    """Final fraction of steps over which the learning rate decays linearly to 0."""
    dead_feature_window: int | None = None
    """Steps without firing after which a feature counts as dead for the TopK auxiliary loss (None: ~1 epoch)."""
    seed: int = 0
    """Seed of the SAE's initialisation and batch order."""
    corpus_seed: int | None = None
    """Seed of the corpus's order (None: ``seed``). SAEs of several seeds trained on one collection share it."""
    corpus: str = CORPORA[0]
    """``bundled`` or ``neutral-prompts`` (see :data:`CORPORA`)."""
    datasets: tuple[str, ...] = ()
    """Bundled chat datasets to train on (empty: ``DEFAULT_SAE_DATASETS``, the ten the shipped SAE used); only with
    ``corpus="bundled"``."""
    holdout_fraction: float = 0.1
    generated_answers: int = 0
    """Add SmolLM2's own greedy answers to this many training prompts (0: none)."""
    generation_tokens: int = 96
    eval_tokens: int | None = None
    """Held-out tokens for explained variance and L0 (None: the whole held-out split)."""
    ce_conversations: int = 64
    """Held-out conversations for the spliced next-token loss (0: skip it)."""
    max_length: int = 512
    activation_batch_size: int = 16
    save_dtype: str = SAVE_DTYPES[0]
    """dtype of the saved weights (loaded back as float32)."""

    @property
    def order_seed(self) -> int:
        """The seed that orders the corpus: ``corpus_seed``, else ``seed``."""
        return self.seed if self.corpus_seed is None else self.corpus_seed

    def __post_init__(self) -> None:
        if self.corpus not in CORPORA:
            raise ValueError(f"corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        if self.corpus == "neutral-prompts" and (self.datasets or self.generated_answers):
            raise ValueError("the neutral-prompts corpus is the model's own answers to its prompts: datasets and "
                             "generated_answers apply to the bundled corpus only")
        if self.width < 1 or not 1 <= self.k <= self.width:
            raise ConfigError(f"need 1 <= k <= width, got k={self.k}, width={self.width}")
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError(f"tokens must be positive, got {self.tokens}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs, batch_size and lr must be positive")
        if not 0 < self.holdout_fraction < 1:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if self.save_dtype not in SAVE_DTYPES:
            raise ConfigError(f"save_dtype must be one of {', '.join(SAVE_DTYPES)}, got {self.save_dtype!r}")
