"""Loading gated models from the Hugging Face Hub: where the token comes from, and one-line errors when it fails.

The token is whatever ``huggingface_hub.get_token()`` finds: the ``HF_TOKEN`` environment variable, the token file
``hf auth login`` writes (``HF_TOKEN_PATH``), or, in Colab, the notebook's ``HF_TOKEN`` secret. It is passed straight
to transformers and never printed, logged or written anywhere by geomis.

Before any download, one request asks the Hub about the model (:func:`hub_reachable`, a few seconds at most, no
retries). When the Hub cannot be reached (``HF_HUB_OFFLINE``, no network, no answer in time) a model already in the
local cache is loaded from there without touching the network, and any other model fails at once with one line,
instead of after minutes of retried downloads.
"""

from __future__ import annotations

from typing import Any

from geomis.errors import ModelLoadError

HUB_CHECK_TIMEOUT_S = 5.0
"""Seconds the first request to the Hub may take before geomis treats the Hub as unreachable."""


def hub_token() -> str | None:
    """The Hugging Face token (``HF_TOKEN``, the ``hf auth login`` file, or Colab's secret), or None if none is set."""
    from huggingface_hub import get_token

    try:
        return get_token()
    except Exception as error:  # noqa: BLE001 - e.g. a failed OIDC exchange; the message may not name the token
        raise ModelLoadError(f"could not read the Hugging Face token ({type(error).__name__}); "
                             "run `hf auth login` again or set HF_TOKEN") from None


def _exception_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def describe_hub_failure(repo_id: str, error: BaseException, has_token: bool) -> str:
    """Turn an exception raised while loading ``repo_id`` from the Hub into one line a user can act on."""
    from huggingface_hub import errors as hub_errors

    chain = _exception_chain(error)
    text = " ".join(str(item) for item in chain).lower()
    gated = any(isinstance(item, hub_errors.GatedRepoError) for item in chain) or "gated repo" in text
    if gated or ("401" in text and "unauthorized" in text):
        if not has_token:
            return (f"{repo_id} is gated: accept its licence on huggingface.co, then run `hf auth login` or set "
                    "HF_TOKEN (in Colab: add HF_TOKEN to the notebook's secrets)")
        return f"{repo_id} is gated and the token given has no access: accept its licence on huggingface.co"
    if any(isinstance(item, hub_errors.RepositoryNotFoundError) for item in chain):
        return f"{repo_id} was not found on the Hugging Face Hub"
    offline = any(isinstance(item, hub_errors.OfflineModeIsEnabled) for item in chain) or "offline" in text
    unreachable = any(isinstance(item, (hub_errors.LocalEntryNotFoundError, ConnectionError, TimeoutError))
                      for item in chain)
    if offline or unreachable or "couldn't connect" in text or "connection" in text:
        return (f"cannot reach the Hugging Face Hub to download {repo_id} and it is not in the local cache; "
                "connect to the internet, or use the CPU default model 'smollm2-135m' which needs no Hub")
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"could not load {repo_id} from the Hugging Face Hub: {first_line}"


def _unreachable(repo_id: str, offline: bool) -> str:
    why = " (HF_HUB_OFFLINE is set)" if offline else ""
    return (f"cannot reach the Hugging Face Hub{why} to download {repo_id} and it is not in the local cache; "
            "connect to the internet, or use the CPU default model 'smollm2-135m' which needs no Hub")


def hub_reachable(repo_id: str, token: str | None, timeout_s: float | None = None) -> bool:
    """Ask the Hub about ``repo_id`` once (no retries, ``timeout_s`` seconds, default :data:`HUB_CHECK_TIMEOUT_S`):
    True when it answers, False when it is offline or unreachable; a one-line ModelLoadError when it answers that
    the model is gated or missing."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hub_errors

    if constants.is_offline_mode():
        return False
    failure: str | None = None
    try:
        HfApi().model_info(repo_id, timeout=HUB_CHECK_TIMEOUT_S if timeout_s is None else timeout_s, token=token)
    except hub_errors.HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status is None or status >= 500 or status in (408, 429):
            return False  # the Hub is there but cannot answer now: use the cache if the model is in it
        failure = describe_hub_failure(repo_id, error, has_token=token is not None)
    except Exception:  # noqa: BLE001 - no network, DNS, proxy, timeout: the Hub cannot be reached
        return False
    if failure is not None:  # raised outside ``except``: nothing chained
        raise ModelLoadError(failure)
    return True


def _in_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def load_from_hub(repo_id: str, *, check_timeout_s: float | None = None, **model_kwargs: Any) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from the Hub (safetensors only, no remote code), with clear errors; the
    local cache alone when the Hub cannot be reached within ``check_timeout_s`` seconds."""
    from huggingface_hub import constants
    from transformers import AutoModelForCausalLM, AutoTokenizer

    token = hub_token()
    online = hub_reachable(repo_id, token, check_timeout_s)
    if not online and not _in_cache(repo_id):
        raise ModelLoadError(_unreachable(repo_id, constants.is_offline_mode()))
    common = {"token": token, "trust_remote_code": False, "local_files_only": not online}
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo_id, **common)
        model = AutoModelForCausalLM.from_pretrained(repo_id, use_safetensors=True, **common, **model_kwargs)
    except Exception as error:  # noqa: BLE001 - every Hub failure becomes one actionable line
        raise ModelLoadError(describe_hub_failure(repo_id, error, has_token=token is not None)) from None
    return model, tokenizer
