"""Structured logging: JSON lines when stderr is not a terminal, readable text when it is.

Every record passes one redaction layer before any handler formats it:
  - values registered with `register_secret` (key material, account keys, grant keys read
    from files) are replaced by "[redacted]" wherever they appear, also hex/base64-encoded;
  - PEM private-key blocks are replaced whatever their origin;
  - bytes arguments are never rendered, only their length, so no file content (a dataset,
    a key) can be logged by passing its bytes;
  - messages are bounded in length, and in text mode control characters are escaped so that
    attacker-chosen names (from a config, policy or report) cannot forge log lines.
The loader itself never logs dataset content: inputs are hashed as bytes and only digests,
sizes and counts are logged; the workload's own stdout/stderr go to files in its output
directory, not to these logs.

Boot steps log one record each with the fields `step` and `seconds` (see loader.boot.sequence._step).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import re
import sys
import threading
from typing import IO, Any

LOGGER = "trusted-loader"
REDACTED = "[redacted]"
MAX_MESSAGE = 2000
MIN_SECRET = 8
FORMATS = ("auto", "json", "text")

_PEM_PRIVATE = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|\Z)", re.DOTALL
)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class Redactor:
    """The set of secret strings that must never reach a log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()

    def register(self, value: bytes | str) -> None:
        """Remember a secret; short values are refused (they would redact ordinary words)."""
        forms = _forms(value)
        if not forms:
            raise ValueError(f"a secret to redact must be at least {MIN_SECRET} characters")
        with self._lock:
            self._secrets |= forms

    def forget_all(self) -> None:
        with self._lock:
            self._secrets.clear()

    def scrub(self, text: str) -> str:
        text = _PEM_PRIVATE.sub(REDACTED, text)
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def _forms(value: bytes | str) -> set[str]:
    if isinstance(value, str):
        stripped = value.strip()
        raw = stripped.encode("utf-8")
        forms = {stripped}
    else:
        raw = bytes(value)
        forms = set()
        with contextlib.suppress(UnicodeDecodeError):
            forms.add(raw.decode("utf-8").strip())
    forms |= {raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode().rstrip("=")}
    return {f for f in forms if len(f) >= MIN_SECRET}


REDACTOR = Redactor()


def register_secret(value: bytes | str) -> None:
    """Integration point for code that reads a secret (e.g. from a TL_*_FILE path)."""
    REDACTOR.register(value)


def _safe_arg(value: object) -> object:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    return value


class RedactingFilter(logging.Filter):
    """Renders the message once, with bytes hidden, secrets removed and the length bounded."""

    def __init__(self, redactor: Redactor = REDACTOR) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            args = tuple(_safe_arg(a) for a in args)
        elif isinstance(args, dict):
            args = {k: _safe_arg(v) for k, v in args.items()}
        try:
            message = str(_safe_arg(record.msg)) % args if args else str(_safe_arg(record.msg))
        except (TypeError, ValueError):
            message = f"{record.msg!s} (bad log arguments)"
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + f"… ({len(message) - MAX_MESSAGE} more characters)"
        record.msg, record.args = self.redactor.scrub(message), None
        for key in extra_fields(record):
            value = getattr(record, key)
            if isinstance(value, str):
                setattr(record, key, self.redactor.scrub(value))
            elif not isinstance(value, int | float | bool | type(None)):
                setattr(record, key, self.redactor.scrub(str(_safe_arg(value)))[:MAX_MESSAGE])
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.error = self.redactor.scrub(f"{type(exc).__name__}: {exc}")[:MAX_MESSAGE]
            record.exc_info, record.exc_text = None, None
        return True


def extra_fields(record: logging.LogRecord) -> list[str]:
    return sorted(k for k in vars(record) if k not in _STANDARD and not k.startswith("_"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        when = dt.datetime.fromtimestamp(record.created, dt.UTC)
        doc: dict[str, Any] = {
            "ts": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in extra_fields(record):
            doc.setdefault(key, getattr(record, key))
        return json.dumps(doc, ensure_ascii=True, sort_keys=False, default=str)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


class TextFormatter(logging.Formatter):
    """For a terminal: `trusted-loader: message`, warnings and errors labelled."""

    def format(self, record: logging.LogRecord) -> str:
        label = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        line = f"trusted-loader: {label}{_escape(record.getMessage())}"
        error = getattr(record, "error", None)
        if isinstance(error, str):
            line += f" ({_escape(error)})"
        return line


def wants_json(stream: IO[str], choice: str = "auto") -> bool:
    if choice not in FORMATS:
        raise ValueError(f"log format: expected one of {FORMATS}, found {choice!r}")
    if choice != "auto":
        return choice == "json"
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def setup_logging(
    stream: IO[str] | None = None,
    *,
    choice: str = "auto",
    level: int = logging.INFO,
    loggers: tuple[str, ...] = (LOGGER,),
) -> logging.Handler:
    """Route the loader's logs (and the libraries' warnings) to `stream` through redaction.

    Replaces handlers installed by an earlier call, so it is safe to call more than once.
    """
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if wants_json(stream, choice) else TextFormatter())
    handler.set_name("trusted-loader")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "trusted-loader"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in loggers:  # e.g. the CA's "certs" loggers under `ca serve`: one format for all
        logging.getLogger(name).setLevel(level)
    return handler
