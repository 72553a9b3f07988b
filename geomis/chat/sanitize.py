"""The one sanitising step every user-supplied text goes through before a model (tokenizer, judge) reads it.

Valid JSON can carry text that no UTF-8 tokenizer or HTTP body accepts: a lone surrogate (``"\\ud800"``) and control
characters such as NUL. :func:`text_for_model` turns such text into something every model reads, and changes
nothing else. It is applied only to what models see (the filter's tokens, the judges' prompts and embeddings); the
rows geomis writes out are never re-encoded, so outputs stay byte-exact copies of the input.
"""

from __future__ import annotations

import re

__all__ = ["text_for_model"]

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""C0 controls but tab, LF and CR; DEL; C1 controls (U+0080-U+009F)."""


def text_for_model(text: str) -> str:
    """Text a model can read: lone surrogates become U+FFFD, other controls but tab/LF/CR are dropped; else as is.

    Policy: a surrogate pair written as two escapes (``"\\ud83d\\ude00"``) is joined into its character; a lone
    surrogate becomes U+FFFD (the replacement character); NUL, the other C0 controls except tab, line feed and
    carriage return, DEL and the C1 controls (U+0080-U+009F) are removed. Every other character, including
    format characters such as zero-width spaces, is kept, and clean text is returned unchanged.
    """
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    return text
