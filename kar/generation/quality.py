"""Detect answers that must not be used as knowledge: empty, refused, degenerate, truncated."""

from __future__ import annotations

import re
import zlib
from collections import Counter

from kar.records import GenerationOutput

EMPTY = "empty"
REFUSAL = "refusal"
REPETITION = "repetition"
TRUNCATED = "truncated"

_REFUSAL = re.compile(
    r"\b(as an ai\b|as a language model|i(?: a|')m (?:sorry|unable|not able)|i cannot\b"
    r"|i can ?not\b|i can't\b|i am unable\b|i'm not able\b|i do not have (?:access|information))",
    re.IGNORECASE,
)
_REFUSAL_WINDOW = 160  # refusals open the answer; later "I cannot" is usually content
_NGRAM = 4
_MIN_WORDS = 12
_MAX_NGRAM_COVER = 0.5  # share of words inside a 4-gram that occurs >= 3 times
_MIN_ZLIB_CHARS = 200
_MAX_ZLIB_RATIO = 0.12  # compressed/raw bytes; normal prose is ~0.4-0.6
_MIN_LINES = 4
_MAX_REPEATED_LINE_SHARE = 0.5


def is_repetitive(text: str) -> bool:
    """True when the text loops: repeated 4-grams, repeated lines or near-zero entropy."""
    words = text.lower().split()
    if len(words) >= _MIN_WORDS:
        grams = [tuple(words[i : i + _NGRAM]) for i in range(len(words) - _NGRAM + 1)]
        counts = Counter(grams)
        covered = set()
        for i, gram in enumerate(grams):
            if counts[gram] >= 3:
                covered.update(range(i, i + _NGRAM))
        if len(covered) / len(words) >= _MAX_NGRAM_COVER:
            return True
    lines = [line.strip().lower() for line in text.splitlines() if line.strip()]
    if len(lines) >= _MIN_LINES:
        line_counts = Counter(lines)
        repeated = sum(n for n in line_counts.values() if n >= 3)
        if repeated / len(lines) >= _MAX_REPEATED_LINE_SHARE:
            return True
    raw = text.encode("utf-8")
    return len(raw) >= _MIN_ZLIB_CHARS and len(zlib.compress(raw, 9)) / len(raw) < _MAX_ZLIB_RATIO


def is_refusal(text: str) -> bool:
    """True when the answer opens with a refusal or an 'as an AI' disclaimer."""
    return _REFUSAL.search(text[:_REFUSAL_WINDOW]) is not None


def check_answer(output: GenerationOutput) -> str | None:
    """The reason the answer is bad (``empty``, ``refusal``, ``repetition``, ``truncated``) or None.

    Checked in that order: a looping answer that also hit the token limit is reported as
    ``repetition`` (the retry raises the repetition penalty rather than the token limit).
    """
    text = output.text
    if not text.strip():
        return EMPTY
    if is_refusal(text):
        return REFUSAL
    if is_repetitive(text):
        return REPETITION
    if output.finish_reason == "length":
        return TRUNCATED
    return None


_SENTENCE_END = re.compile(r"[.!?…](?:[\"')\]]*)(?=\s|$)")
_MIN_KEPT_SHARE = 0.5  # trimming may drop at most half of a truncated answer


def trim_to_sentence(text: str) -> str | None:
    """A truncated answer cut back to its last complete sentence, or None when that would
    keep less than half of it (then the answer is retried, and flagged if still cut)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends or ends[-1] < _MIN_KEPT_SHARE * len(text.rstrip()):
        return None
    return text[: ends[-1]].rstrip()
