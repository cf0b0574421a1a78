"""Item and user text is DATA, never instructions: make it one inert, quoted, capped line.

Applied to every free-text value before it reaches a prompt template (titles, creators,
genres, attributes). Numbers (year, rating) are formatted by the builders.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata

ELLIPSIS = "…"
# Categories dropped outright: format chars (zero-width, bidi overrides, BOM), surrogates,
# private use, unassigned. Control chars (Cc: newlines, tabs, ESC ...) and line/paragraph
# separators become a space so that words on either side stay apart.
_DROP = frozenset({"Cf", "Cs", "Co", "Cn"})
_SPACE = frozenset({"Cc", "Zl", "Zp"})
# Chat-template markers a tokenizer may turn into special tokens (ChatML, Llama, Mistral).
_SPECIAL_TOKEN = re.compile(r"<\|[^<>|]{0,64}\|>|</?s>|\[/?INST\]|<<\s*/?SYS\s*>>", re.IGNORECASE)


def clean_text(value: object, max_chars: int) -> str:
    """One line of plain text: control/format chars removed, whitespace collapsed, capped.

    ``None`` and NaN give ``""``. Longer text is cut to ``max_chars`` characters, the last
    one an ellipsis.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = unicodedata.normalize("NFC", str(value))
    chars = []
    for ch in text:
        category = unicodedata.category(ch)
        if category in _DROP:
            continue
        chars.append(" " if category in _SPACE else ch)
    text = _SPECIAL_TOKEN.sub(" ", "".join(chars))
    text = " ".join(text.split())  # collapses every Unicode whitespace run to one space
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + ELLIPSIS
    return text


def quote(text: str) -> str:
    """Double-quote already-clean text, escaping embedded quotes and backslashes."""
    return json.dumps(text, ensure_ascii=False)


def quote_data(value: object, max_chars: int) -> str:
    """``quote(clean_text(value, max_chars))``; ``""`` (no quotes) when the value is empty."""
    text = clean_text(value, max_chars)
    return quote(text) if text else ""


# Prompt-injection markers a passage of catalog text (a description, tags) may carry: role
# tags and headers (<system>, [INST]-like [ASSISTANT], "### Instruction:", "System:"), and
# "ignore / disregard ... previous instructions" phrases. Removed from passages, which are
# longer and freer than titles; quoting keeps them data either way.
_INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\b[^.!?\n\"]{0,40}?"
    r"\b(?:previous|prior|above|earlier|preceding|all|any|the|your|these|system)\b"
    r"[^.!?\n\"]{0,30}?\b(?:instructions?|prompts?|messages?|rules?|directions?|guidelines?)\b"
    r"|<\s*/?\s*(?:system|assistant|user|developer|human|ai|instruction)s?\s*>"
    r"|\[\s*/?\s*(?:system|assistant|user|developer|human|instruction)s?\s*\]"
    r"|#{2,}\s*(?:system|assistant|user|developer|human|instruction|response)s?\b\s*:?"
    r"|\b(?:system|assistant|developer)\s*:"
    r"|^\s*(?:user|human)\s*:",
    re.IGNORECASE,
)


def strip_injection(text: str) -> str:
    """``text`` without role tags, role headers and "ignore previous instructions" phrases
    (repeated until none is left, so removing one cannot assemble another)."""
    for _ in range(8):
        stripped = " ".join(_INJECTION.sub(" ", text).split())
        if stripped == text:
            break
        text = stripped
    return text


def clean_passage(value: object, max_chars: int) -> str:
    """A longer text value (an item description) as one inert line: :func:`clean_text`,
    then :func:`strip_injection`, then capped at ``max_chars`` on a word boundary with ``…``."""
    if max_chars < 2:
        raise ValueError(f"max_chars must be >= 2, got {max_chars}")
    text = clean_text(value, max(len(str(value or "")), 1))
    text = strip_injection(text)
    if len(text) > max_chars:
        cut = text[: max_chars - 1]
        space = cut.rfind(" ")
        if space >= max_chars * 0.6:
            cut = cut[:space]
        text = cut.rstrip(" ,;:-") + ELLIPSIS
    return text
