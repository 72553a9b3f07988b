"""The one sanitising step for model inputs: lone surrogates and control characters, nothing else."""

from __future__ import annotations

import json

import pytest

from geomis.chat.sanitize import text_for_model


@pytest.mark.parametrize(("text", "expected"), [
    ("plain text, é ü 你好 ☕ 😀", "plain text, é ü 你好 ☕ 😀"),           # clean text is unchanged
    ("tab\tLF\nCR\r kept", "tab\tLF\nCR\r kept"),
    ("lone \ud800 high, lone \udfff low", "lone \ufffd high, lone \ufffd low"),
    ("\ud83d\ude00 pair", "😀 pair"),                                      # a pair of escapes is its character
    ("reversed \ude00\ud83d", "reversed \ufffd\ufffd"),
    ("NUL\x00 BEL\x07 ESC\x1b DEL\x7f NEL\x85 CSI\x9b end", "NUL BEL ESC DEL NEL CSI end"),
    ("zero\u200bwidth and \u2028 separator", "zero\u200bwidth and \u2028 separator"),
    ("", ""),
])
def test_text_for_model_policy(text: str, expected: str) -> None:
    cleaned = text_for_model(text)
    assert cleaned == expected
    cleaned.encode("utf-8")  # always encodable
    assert text_for_model(cleaned) == cleaned  # idempotent


def test_valid_json_escapes_that_no_tokenizer_accepts_become_readable() -> None:
    decoded = json.loads('"a\\ud800b\\u0000c"')
    with pytest.raises(UnicodeEncodeError):
        decoded.encode("utf-8")
    assert text_for_model(decoded) == "a\ufffdbc"
