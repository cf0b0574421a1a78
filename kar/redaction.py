"""Secrets out of every message and log line: one place that knows what to hide.

kar registers every secret it reads (:func:`register_secret`: the API key named by
``api_key_env``, the password of any store / Redis / PostgreSQL URL it is given) and
:func:`redact` removes them, plus anything that looks like a credential whatever its
source (``user:password@`` in a URL, ``Bearer`` tokens, ``Authorization:`` headers,
``api_key=...``), from a text before it is shown or logged. :func:`redact_url` is the
form for a URL kar prints itself. :func:`install_log_filter` makes every log record pass
through it (the CLI installs it at start; so does every component that registers a secret).
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"
# Shorter values are not registered: masking "a" or "1" would garble every message.
MIN_SECRET_LENGTH = 4

_lock = threading.Lock()
_secrets: set[str] = set()

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host  and  scheme://:password@host
    (re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*:)[^\s@/'\"]+(?=@)"), MASK),
    # Authorization: Bearer x / 'Authorization': 'Basic x' / authorization=x
    (
        re.compile(
            r"(?P<head>(?i:authorization|proxy-authorization)['\"]?\s*[:=]\s*['\"]?"
            r"(?:(?i:bearer|basic|token)\s+)?)[^\s'\",}]+"
        ),
        MASK,
    ),
    (re.compile(r"(?P<head>(?i:bearer)\s+)[A-Za-z0-9._~+/=\-]{4,}"), MASK),
    # api_key=x, "api-key": "x", apikey: x, password=x, token=x, secret=x
    (
        re.compile(
            r"(?P<head>(?i:api[_\-]?key|x-api-key|access[_\-]?token|password|passwd|secret)"
            r"['\"]?\s*[:=]\s*['\"]?)[^\s'\",&}]+"
        ),
        MASK,
    ),
)


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact` hides it everywhere from now on (its
    URL-quoted and unquoted forms both); ``None``, empty or very short values are ignored."""
    if not value:
        return
    forms = {value, unquote(value)}
    with _lock:
        _secrets.update(f for f in forms if len(f) >= MIN_SECRET_LENGTH)


def register_url(url: str | None) -> None:
    """Register the password of ``url`` (any scheme) as a secret, if it has one."""
    if not url:
        return
    try:
        password = urlsplit(str(url)).password
    except ValueError:
        return
    register_secret(password)


def registered_count() -> int:
    """How many secret forms are registered (for tests and diagnostics)."""
    with _lock:
        return len(_secrets)


def redact(text: object) -> str:
    """``text`` as a string with every registered secret and every credential-looking part
    replaced by ``***``."""
    out = str(text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in out:
            out = out.replace(secret, MASK)
    for pattern, mask in _PATTERNS:
        out = pattern.sub(lambda m, mask=mask: m.group("head") + mask, out)
    return out


def redact_url(url: object) -> str:
    """``url`` safe to print: its password (if any) replaced by ``***``; the password is
    registered as a secret too, so later messages that echo it are redacted as well."""
    text = str(url)
    register_url(text)
    return redact(text)


def scrub_record(record: logging.LogRecord) -> None:
    """Rewrite ``record`` in place: its message (arguments merged) and any exception text
    go through :func:`redact`."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: leave it to the handler to report
        return
    record.msg, record.args = redact(message), None
    if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        record.exc_text = redact(text)


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record through :func:`scrub_record`."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


_installed = False


def install_log_filter() -> None:
    """Redact every log record from now on, whatever logger or handler emits it.

    A filter on the ``kar`` logger alone would miss its children's records (logger
    filters do not propagate), so the record factory is wrapped: each record is scrubbed
    when it is created. The filter also sits on the ``kar`` logger. Idempotent.
    """
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        scrub_record(record)
        return record

    logging.setLogRecordFactory(factory)
    logging.getLogger("kar").addFilter(RedactingFilter())
