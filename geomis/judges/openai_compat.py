"""A judge that calls any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, ...).

Where the server returns log-probabilities, each rating is the probability-weighted mean over the numbers 0-100
instead of one sampled token (see :mod:`geomis.judges.replies`). Requests retry with exponential backoff on 429, 5xx,
timeouts and connection errors; the API key comes from the environment and never appears in reprs, logs or errors.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from geomis.judges.replies import MIN_NUMERIC_MASS, ParsedReply, combine_replies, parse_judge_reply, weighted_score
from geomis.judges.rubric import DEFAULT_RUBRIC, Rubric, judge_prompts
from geomis.judges.base import Judge, JudgeError, JudgeScore, Pair, progress_bar

log = logging.getLogger(__name__)

BASE_URL_ENV = "GEOMIS_JUDGE_BASE_URL"
MODEL_ENV = "GEOMIS_JUDGE_MODEL"
API_KEY_ENV = "GEOMIS_JUDGE_API_KEY"
LOGPROBS_ENV = "GEOMIS_JUDGE_LOGPROBS"
CONCURRENCY_ENV = "GEOMIS_JUDGE_CONCURRENCY"


class _Secret:
    """Holds an API key so that repr(), str() and logging show ``<hidden>``, never the key."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def reveal(self) -> str | None:
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "<hidden>" if self._value else "<none>"

    __str__ = __repr__


@dataclass(frozen=True)
class OpenAIJudgeConfig:
    """Where and how to call an OpenAI-compatible chat endpoint; the API key is kept out of this (it is printable)."""

    base_url: str
    """Base URL ending in ``/v1`` (e.g. ``https://api.openai.com/v1``); ``/chat/completions`` is appended."""
    model: str
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    use_logprobs: bool = True
    """Ask for ``logprobs`` (top 20, one token) and weight the numbers; turn off for servers or tokenizers where
    numbers 0-100 are not single tokens, or that do not return log-probabilities."""
    text_max_tokens: int = 16
    concurrency: int = 4
    min_numeric_mass: float = MIN_NUMERIC_MASS

    @classmethod
    def from_env(cls) -> OpenAIJudgeConfig:
        """Read ``GEOMIS_JUDGE_BASE_URL`` and ``GEOMIS_JUDGE_MODEL`` (plus optional LOGPROBS and CONCURRENCY)."""
        base_url = os.environ.get(BASE_URL_ENV, "").strip()
        model = os.environ.get(MODEL_ENV, "").strip()
        missing = [name for name, value in ((BASE_URL_ENV, base_url), (MODEL_ENV, model)) if not value]
        if missing:
            raise JudgeError(f"set {' and '.join(missing)} for the OpenAI-compatible judge "
                             f"(and {API_KEY_ENV} if the endpoint needs a key)")
        if not base_url.startswith(("http://", "https://")):
            raise JudgeError(f"{BASE_URL_ENV} must start with http:// or https://")
        use_logprobs = os.environ.get(LOGPROBS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        try:
            concurrency = int(os.environ.get(CONCURRENCY_ENV, "4"))
        except ValueError:
            raise JudgeError(f"{CONCURRENCY_ENV} must be a whole number") from None
        return cls(base_url=base_url, model=model, use_logprobs=use_logprobs, concurrency=max(1, concurrency))


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAICompatibleJudge(Judge):
    """A judge that calls an OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, ...)."""

    def __init__(self, config: OpenAIJudgeConfig, api_key: str | None = None, *, rubric: Rubric = DEFAULT_RUBRIC,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.rubric = rubric
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "").strip()
        self._key = _Secret(key)
        self._sleep = sleep
        self.name = f"openai:{config.model}"

    def __repr__(self) -> str:
        return (f"OpenAICompatibleJudge(model={self.config.model!r}, base_url={self.config.base_url!r}, "
                f"key={self._key!r})")

    @classmethod
    def from_env(cls) -> OpenAICompatibleJudge:
        """Configure from ``GEOMIS_JUDGE_BASE_URL``, ``GEOMIS_JUDGE_MODEL`` and ``GEOMIS_JUDGE_API_KEY``."""
        return cls(OpenAIJudgeConfig.from_env())

    @property
    def endpoint(self) -> str:
        """The full chat-completions URL."""
        return self.config.base_url.rstrip("/") + "/chat/completions"

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "<hidden>") if key else text

    def _post_once(self, payload: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "geomis-judge"}
        key = self._key.reveal()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, data=json.dumps(payload).encode(), headers=headers,
                                         method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:  # noqa: S310
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = self._scrub(_http_error_detail(error))
            if error.code == 429 or 500 <= error.code < 600:
                raise _Retryable(f"HTTP {error.code}: {detail}", _retry_after(error)) from None
            raise JudgeError(f"judge endpoint {self.endpoint} answered HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            reason = getattr(error, "reason", error)
            raise _Retryable(self._scrub(f"cannot reach the endpoint ({reason})")) from None
        try:
            parsed = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise JudgeError(f"judge endpoint {self.endpoint} returned a body that is not JSON") from None
        if not isinstance(parsed, dict):
            raise JudgeError(f"judge endpoint {self.endpoint} returned JSON that is not an object")
        return parsed

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST with retries and exponential backoff on 429, 5xx, timeouts and connection errors."""
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            try:
                return self._post_once(payload)
            except _Retryable as error:
                if attempt == attempts - 1:
                    raise JudgeError(f"judge endpoint {self.endpoint} failed after {attempts} attempts: {error}") \
                        from None
                delay = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** attempt)
                if error.retry_after is not None:
                    delay = min(self.config.max_backoff_s, max(delay, error.retry_after))
                log.warning("judge request failed (%s); retry %d/%d in %.1f s", error, attempt + 1,
                            attempts - 1, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def rate(self, prompt: str) -> ParsedReply:
        """Send one rubric prompt: a log-probability-weighted number when possible, else the parsed text reply."""
        messages = [{"role": "user", "content": prompt}]
        if self.config.use_logprobs:
            response = self._post({"model": self.config.model, "messages": messages, "max_tokens": 1,
                                   "temperature": 0, "logprobs": True, "top_logprobs": 20})
            top = _top_logprobs(response)
            if top is not None:
                value, _ = weighted_score(top, self.config.min_numeric_mass)
                if value is not None:
                    return ParsedReply(value, "scored")
        response = self._post({"model": self.config.model, "messages": messages,
                               "max_tokens": self.config.text_max_tokens, "temperature": 0})
        return parse_judge_reply(_message_text(response, self.endpoint))

    def _score_pair(self, pair: Pair) -> JudgeScore:
        alignment_prompt, coherence_prompt = judge_prompts(*pair, rubric=self.rubric)
        return combine_replies(self.rate(alignment_prompt), self.rate(coherence_prompt), self.name)

    def score_many(self, pairs: Sequence[Pair], progress: bool = False) -> list[JudgeScore]:
        """Score pairs concurrently (``config.concurrency`` threads), returned in input order."""
        results: list[JudgeScore] = []
        pool = ThreadPoolExecutor(max_workers=max(1, self.config.concurrency))
        try:
            with progress_bar(len(pairs), progress) as bar:
                for score in pool.map(self._score_pair, pairs):
                    results.append(score)
                    bar.update(1)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # one failure stops the queued requests
            raise
        pool.shutdown()
        return results


def _http_error_detail(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the body is only a hint
        body = ""
    message = body
    try:
        parsed = json.loads(body)
        if isinstance(parsed, dict):
            inner = parsed.get("error", parsed)
            message = str(inner.get("message", inner)) if isinstance(inner, dict) else str(inner)
    except json.JSONDecodeError:
        pass
    first = " ".join(message.split())[:200]
    return first or (error.reason if isinstance(error.reason, str) else "no details")


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    value = error.headers.get("Retry-After") if error.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _first_choice(response: dict[str, Any]) -> dict[str, Any] | None:
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return None


def _top_logprobs(response: dict[str, Any]) -> list[tuple[str, float]] | None:
    """The first generated token's top log-probabilities from a chat response, or None if absent."""
    choice = _first_choice(response)
    logprobs = choice.get("logprobs") if choice else None
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if not isinstance(content, list) or not content or not isinstance(content[0], dict):
        return None
    top = content[0].get("top_logprobs")
    if not isinstance(top, list) or not top:
        return None
    pairs = []
    for entry in top:
        if isinstance(entry, dict) and isinstance(entry.get("token"), str) and \
                isinstance(entry.get("logprob"), (int, float)):
            pairs.append((entry["token"], float(entry["logprob"])))
    return pairs or None


def _message_text(response: dict[str, Any], endpoint: str) -> str:
    choice = _first_choice(response)
    message = choice.get("message") if choice else None
    if not isinstance(message, dict):
        raise JudgeError(f"judge endpoint {endpoint} returned no choices[0].message")
    content = message.get("content")
    return content if isinstance(content, str) else ""
