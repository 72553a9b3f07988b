"""A file of the model's own greedy answers to the neutral SAE-corpus prompts, so SAE seeds share one corpus.

``geomis train-sae --corpus neutral-prompts --answers-cache FILE`` reads the answers it already has from ``FILE``,
generates only the missing ones and writes them back (atomically). Every SAE seed then trains on the same text, and
only the first run pays for generation. One JSON object per line: ``{"model", "max_new_tokens", "prompt",
"answer"}``; a file made with another model or answer length is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from geomis.atomic_io import atomic_path
from geomis.errors import GeomisError


class AnswersCacheError(GeomisError):
    """An answers file that cannot be read or belongs to another model or answer length."""


@dataclass(frozen=True)
class CacheUse:
    """What one run took from an answers file and what it added."""

    path: Path
    reused: int
    generated: int
    sha256: str
    """Of the file as the run left it (recorded in the SAE's ``training.json``)."""

    def to_json(self, root: Path | None = None) -> dict[str, object]:
        """A JSON-ready record; the path relative to ``root`` when it lies inside it."""
        path = self.path.resolve()
        if root is not None and path.is_relative_to(root.resolve()):
            path = path.relative_to(root.resolve())
        return {"path": str(path), "reused": self.reused, "generated": self.generated, "sha256": self.sha256}


def read_answers(path: Path, model_name: str, max_new_tokens: int) -> dict[str, str]:
    """The answers in ``path`` by prompt (empty when the file does not exist)."""
    if not path.exists():
        return {}
    answers: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            model, tokens, prompt, answer = row["model"], row["max_new_tokens"], row["prompt"], row["answer"]
        except (ValueError, KeyError, TypeError) as error:
            raise AnswersCacheError(f"{path}:{number}: not an answers row ({error})") from None
        if (model, tokens) != (model_name, max_new_tokens):
            raise AnswersCacheError(f"{path}:{number}: answers of {model} at {tokens} tokens, but this run needs "
                                    f"{model_name} at {max_new_tokens}; use another file")
        answers[prompt] = answer
    return answers


def write_answers(path: Path, answers: Mapping[str, str], model_name: str, max_new_tokens: int) -> str:
    """Write ``answers`` (sorted by prompt, so the file does not depend on run order) atomically; its sha256."""
    lines = [json.dumps({"model": model_name, "max_new_tokens": max_new_tokens, "prompt": prompt,
                         "answer": answers[prompt]}, ensure_ascii=False) for prompt in sorted(answers)]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def answers_through_cache(prompts: Sequence[str], path: Path, model_name: str, max_new_tokens: int,
                          generate: Callable[[list[str]], list[str]],
                          chunk: int = 256) -> tuple[list[str], CacheUse]:
    """The answer to each prompt: from ``path`` where it has one, else from ``generate`` (then saved to ``path``).

    Missing answers are generated ``chunk`` prompts at a time and the file is rewritten after each chunk, so an
    interrupted run keeps what it generated and the next run resumes from there."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    answers = read_answers(path, model_name, max_new_tokens)
    missing = list(dict.fromkeys(p for p in prompts if p not in answers))
    sha = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""
    for start in range(0, len(missing), chunk):
        part = missing[start:start + chunk]
        new = generate(part)
        if len(new) != len(part):
            raise AnswersCacheError(f"generate returned {len(new)} answers for {len(part)} prompts")
        answers.update(zip(part, new, strict=True))
        sha = write_answers(path, answers, model_name, max_new_tokens)
    reused = sum(1 for p in dict.fromkeys(prompts) if p not in set(missing))
    return [answers[p] for p in prompts], CacheUse(path, reused, len(missing), sha)
