"""A judge that calls any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, ...).

Where the server returns log-probabilities, each rating is the probability-weighted mean over the numbers 0-100
instead of one sampled token (see :mod:`geomis.judges.replies`). Requests go through the ``openai`` SDK (the optional
extra ``geomis[judge-openai]``), which retries 408, 409, 429, 5xx, timeouts and connection errors with exponential
backoff and honours ``Retry-After``; an answer that cannot improve by asking again (400, 401, 403, 404, ...) is not
retried. Before scoring, :func:`~geomis.judges.kinds.make_judge` runs :meth:`OpenAICompatibleJudge.check_connection`:
one request with a short timeout and no retries, so that an endpoint that is down, silent or refuses the key fails
with one line at once. The API key comes from the environment; neither it nor credentials written into the base
URL (``https://user:key@host/v1``) ever appear in reprs, logs of geomis or errors (whose ``__cause__`` and
``__context__`` are left empty, so the SDK's exception, which holds the request and its headers, is not attached).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

from geomis.judges.base import Judge, JudgeError, JudgeScore, Pair, progress_bar
from geomis.judges.replies import MIN_NUMERIC_MASS, ParsedReply, combine_replies, parse_judge_reply, weighted_score
from geomis.judges.rubric import DEFAULT_RUBRIC, Rubric, judge_prompts

BASE_URL_ENV = "GEOMIS_JUDGE_BASE_URL"
MODEL_ENV = "GEOMIS_JUDGE_MODEL"
API_KEY_ENV = "GEOMIS_JUDGE_API_KEY"
LOGPROBS_ENV = "GEOMIS_JUDGE_LOGPROBS"
CONCURRENCY_ENV = "GEOMIS_JUDGE_CONCURRENCY"
TIMEOUT_ENV = "GEOMIS_JUDGE_TIMEOUT"
MAX_RETRIES_ENV = "GEOMIS_JUDGE_MAX_RETRIES"
CHECK_TIMEOUT_ENV = "GEOMIS_JUDGE_CHECK_TIMEOUT"
INSTALL_HINT = "pip install 'geomis[judge-openai]'"


class _Secret:
    """Holds an API key so that repr(), str() and logging show ``<hidden>``, never the key."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def reveal(self) -> str | None:
        """The key itself, for the HTTP client only."""
        return self._value

    def __bool__(self) -> bool:
        return self._value is not None

    def __repr__(self) -> str:
        return "<hidden>" if self._value else "<none>"

    __str__ = __repr__


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Split ``https://user:key@host/v1`` into the URL without credentials and ``(user, key)`` (None if absent)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port is not None else "")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return bare, (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))


def _redacted_url(url: str) -> str:
    bare, credentials = split_credentials(url)
    if credentials is None:
        return url
    scheme, rest = bare.split("://", 1)
    return f"{scheme}://<hidden>@{rest}"


@dataclass(frozen=True, repr=False)
class OpenAIJudgeConfig:
    """Where and how to call an OpenAI-compatible chat endpoint; the API key is kept out of this (it is printable)."""

    base_url: str
    """Base URL ending in ``/v1`` (e.g. ``https://api.openai.com/v1``); ``/chat/completions`` is appended."""
    model: str
    timeout_s: float = 60.0
    """Seconds one request may take to answer (read, write, waiting for a pooled connection)."""
    connect_timeout_s: float = 5.0
    """Seconds to open a connection: an endpoint that is down fails fast instead of after the read timeout."""
    max_retries: int = 2
    """Retries after the first attempt (the SDK's exponential backoff, 0.5 s doubling, or the server's Retry-After),
    only for answers worth asking again: 408, 409, 429, 5xx, timeouts and connection errors."""
    check_timeout_s: float = 5.0
    """Seconds the connection check before scoring may take, connecting and answering (no retries)."""
    use_logprobs: bool = True
    """Ask for ``logprobs`` (top 20, one token) and weight the numbers; turn off for servers or tokenizers where
    numbers 0-100 are not single tokens, or that do not return log-probabilities."""
    text_max_tokens: int = 16
    concurrency: int = 4
    min_numeric_mass: float = MIN_NUMERIC_MASS

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise JudgeError(f"the judge's base URL must start with http:// or https://, got {self.display_url!r}")
        if not (self.timeout_s > 0 and self.connect_timeout_s > 0 and self.check_timeout_s > 0):
            raise JudgeError("the judge's timeouts must be positive numbers of seconds")
        if self.max_retries < 0 or self.concurrency < 1:
            raise JudgeError("the judge's max_retries must be >= 0 and its concurrency >= 1")

    @property
    def display_url(self) -> str:
        """The base URL with any credentials in it replaced by ``<hidden>``: safe to print."""
        return _redacted_url(self.base_url)

    def __repr__(self) -> str:
        return (f"OpenAIJudgeConfig(base_url={self.display_url!r}, model={self.model!r}, timeout_s={self.timeout_s}, "
                f"connect_timeout_s={self.connect_timeout_s}, max_retries={self.max_retries}, "
                f"check_timeout_s={self.check_timeout_s}, "
                f"use_logprobs={self.use_logprobs}, concurrency={self.concurrency})")

    @classmethod
    def from_env(cls) -> OpenAIJudgeConfig:
        """Read ``GEOMIS_JUDGE_BASE_URL`` and ``GEOMIS_JUDGE_MODEL`` (plus optional LOGPROBS, CONCURRENCY, TIMEOUT,
        MAX_RETRIES and CHECK_TIMEOUT)."""
        base_url = os.environ.get(BASE_URL_ENV, "").strip()
        model = os.environ.get(MODEL_ENV, "").strip()
        missing = [name for name, value in ((BASE_URL_ENV, base_url), (MODEL_ENV, model)) if not value]
        if missing:
            raise JudgeError(f"set {' and '.join(missing)} for the OpenAI-compatible judge "
                             f"(and {API_KEY_ENV} if the endpoint needs a key)")
        if not base_url.startswith(("http://", "https://")):
            raise JudgeError(f"{BASE_URL_ENV} must start with http:// or https://")
        use_logprobs = os.environ.get(LOGPROBS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        numbers: dict[str, Any] = {}
        kinds = {field.name: field.type for field in fields(cls)}
        for variable, name in ((CONCURRENCY_ENV, "concurrency"), (TIMEOUT_ENV, "timeout_s"),
                               (MAX_RETRIES_ENV, "max_retries"), (CHECK_TIMEOUT_ENV, "check_timeout_s")):
            text = os.environ.get(variable, "").strip()
            if text:  # unset or blank: the field's default
                numbers[name] = _number(variable, text, whole=kinds[name] == "int")
        if "concurrency" in numbers:
            numbers["concurrency"] = max(1, numbers["concurrency"])
        return cls(base_url=base_url, model=model, use_logprobs=use_logprobs, **numbers)


def _number(variable: str, text: str, whole: bool) -> int | float:
    """Parse an environment variable's number; a one-line JudgeError naming the variable otherwise."""
    try:
        return int(text) if whole else float(text)
    except ValueError:
        raise JudgeError(f"{variable} must be a {'whole ' if whole else ''}number, got {text!r}") from None


def _import_openai() -> Any:
    """The ``openai`` module, imported on first use; a one-line JudgeError naming the extra when it is missing."""
    try:
        import openai
    except ImportError:
        raise JudgeError(f"the OpenAI-compatible judge needs the openai package: {INSTALL_HINT}") from None
    return openai


class OpenAICompatibleJudge(Judge):
    """A judge that calls an OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, ...)."""

    def __init__(self, config: OpenAIJudgeConfig, api_key: str | None = None, *,
                 rubric: Rubric = DEFAULT_RUBRIC) -> None:
        self.config = config
        self.rubric = rubric
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV, "").strip()
        self._key = _Secret(key)
        base_url, credentials = split_credentials(config.base_url)
        user, password = credentials or ("", "")
        secrets = [key, password, user if len(user) >= 8 else ""]  # a long user name may be a token (``https://tok@h``)
        secrets += [urllib.parse.quote(value, safe="") for value in secrets if value]
        self._secrets = tuple(_Secret(value) for value in sorted({value for value in secrets if value}, key=len,
                                                                 reverse=True))
        self.name = f"openai:{config.model}"
        self._openai = _import_openai()
        self._client = self._make_client(base_url, credentials)

    def _make_client(self, base_url: str, credentials: tuple[str, str] | None) -> Any:
        """The SDK client: explicit timeouts and retries; credentials from the URL as HTTP basic auth, URL kept bare."""
        sdk = self._openai
        http_client = sdk.DefaultHttpx2Client(auth=credentials) if credentials else None
        timeout = sdk.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s)
        return sdk.OpenAI(api_key=self._key.reveal() or "no-key", base_url=base_url, timeout=timeout,
                          max_retries=self.config.max_retries, http_client=http_client)

    def __repr__(self) -> str:
        return (f"OpenAICompatibleJudge(model={self.config.model!r}, base_url={self.config.display_url!r}, "
                f"key={self._key!r})")

    @classmethod
    def from_env(cls) -> OpenAICompatibleJudge:
        """Configure from ``GEOMIS_JUDGE_BASE_URL``, ``GEOMIS_JUDGE_MODEL`` and ``GEOMIS_JUDGE_API_KEY``."""
        return cls(OpenAIJudgeConfig.from_env())

    @property
    def endpoint(self) -> str:
        """The full chat-completions URL, credentials hidden."""
        return self.config.display_url.rstrip("/") + "/chat/completions"

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret.reveal() or "", "<hidden>")
        return text

    def check_connection(self, timeout_s: float | None = None) -> None:
        """Fail with one line unless the endpoint answers one request (``GET /models``, no retries) within
        ``timeout_s`` seconds (default ``config.check_timeout_s``) and accepts the credentials; any other answer,
        404 included, shows that it is there."""
        sdk = self._openai
        seconds = self.config.check_timeout_s if timeout_s is None else float(timeout_s)
        if not seconds > 0:
            raise JudgeError(f"the connection check's timeout must be a positive number of seconds, got {timeout_s!r}")
        client = self._client.with_options(timeout=sdk.Timeout(seconds, connect=seconds), max_retries=0)
        extra = {} if self._key else {"extra_headers": {"Authorization": sdk.omit}}
        failure: JudgeError | None = None
        try:
            client.models.list(**extra)
        except sdk.APIStatusError as error:
            if error.status_code in (401, 403):
                failure = JudgeError(f"judge endpoint {self.config.display_url} refused the credentials (HTTP "
                                     f"{error.status_code}: {_status_detail(error)}); check {API_KEY_ENV}")
        except sdk.APITimeoutError:
            failure = JudgeError(f"judge endpoint {self.config.display_url} did not answer a first request within "
                                 f"{seconds:g} s; is the server running and ready? ({CHECK_TIMEOUT_ENV} sets the wait)")
        except sdk.APIConnectionError as error:
            failure = JudgeError(f"cannot reach the judge endpoint {self.config.display_url} "
                                 f"({_first_line(error.__cause__ or error)})")
        except sdk.OpenAIError:
            pass  # an answer the SDK cannot read (not JSON, ...): the server is there
        if failure is not None:  # raised here, outside ``except``: the SDK's error (request, headers) is not attached
            raise JudgeError(self._scrub(str(failure)))

    def _failure(self, error: Any) -> JudgeError:
        """One line for an SDK error: the HTTP status and the server's message, or why no answer came; no secret."""
        sdk, attempts = self._openai, self.config.max_retries + 1
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if isinstance(error, sdk.APIStatusError):
            retried = error.status_code in (408, 409, 429) or error.status_code >= 500
            detail = _status_detail(error)
            message = f"judge endpoint {self.endpoint} answered HTTP {error.status_code}" + \
                      (tries if retried else "") + f": {detail}"
        elif isinstance(error, sdk.APITimeoutError):
            message = (f"judge endpoint {self.endpoint} did not answer within {self.config.timeout_s:g} s{tries} "
                       f"(raise timeout_s or {TIMEOUT_ENV})")
        elif isinstance(error, sdk.APIConnectionError):
            cause = error.__cause__ or error
            message = f"cannot reach the judge endpoint {self.endpoint}{tries} ({_first_line(cause)})"
        else:
            message = f"judge endpoint {self.endpoint} failed: {_first_line(error)}"
        return JudgeError(self._scrub(message))

    def _create(self, **request: Any) -> dict[str, Any]:
        """One chat completion through the SDK (its retries included), as a plain dict."""
        sdk = self._openai
        extra = {} if self._key else {"extra_headers": {"Authorization": sdk.omit}}  # no key: send no Bearer header
        failure: JudgeError | None = None
        completion: Any = None
        try:
            completion = self._client.chat.completions.create(model=self.config.model, temperature=0, **request,
                                                              **extra)
        except sdk.OpenAIError as error:
            failure = self._failure(error)
        if failure is not None:  # raised outside ``except``: no __context__ holding the request and its headers
            raise failure
        if not isinstance(completion, sdk.BaseModel):  # the SDK hands back the raw text of a body that is not JSON
            raise JudgeError(f"judge endpoint {self.endpoint} returned a body that is not a JSON object")
        return completion.model_dump()

    def rate(self, prompt: str) -> ParsedReply:
        """Send one rubric prompt: a log-probability-weighted number when possible, else the parsed text reply."""
        messages = [{"role": "user", "content": prompt}]
        if self.config.use_logprobs:
            response = self._create(messages=messages, max_tokens=1, logprobs=True, top_logprobs=20)
            top = _top_logprobs(response)
            if top is not None:
                value, _ = weighted_score(top, self.config.min_numeric_mass)
                if value is not None:
                    return ParsedReply(value, "scored")
        response = self._create(messages=messages, max_tokens=self.config.text_max_tokens)
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


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _status_detail(error: Any) -> str:
    """The server's error message from an SDK status error (``{"error": {"message": ...}}`` or the body's text)."""
    body = error.body
    inner = body.get("error", body) if isinstance(body, dict) else body
    message = inner.get("message", inner) if isinstance(inner, dict) else inner
    if message is None:
        try:
            message = error.response.text
        except Exception:  # noqa: BLE001 - the body is only a hint
            message = ""
    return " ".join(str(message).split())[:200] or "no details"



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
