"""Secrets never reach the log: a filter on the root logger's handlers rewrites every record.

aiohttp's own error log prints the raw request line and headers of a malformed request, so an ingest
token in ``?token=`` or an ``Authorization`` / ``X-Gateway-Token`` header would be written to stderr.
The filter redacts those values in the message, its arguments, and the formatted traceback of every
record that reaches a root handler, whichever logger it came from.
"""

from __future__ import annotations

import logging
import re

from aiohttp.http_exceptions import HttpProcessingError

MASK = "***"
# ?token=..., &api_token=..., token=... in a repr or a request line: the value up to a separator.
TOKEN_PARAM = re.compile(r"(?i)(token=)[^&\s'\"#;,]+")
# A header as a raw line (``Authorization: Bearer x``), in a repr (``'authorization': 'Bearer x'``)
# or as ``name=value``: the value up to the end of the line or the closing quote.
SECRET_HEADER = re.compile(
    r"(?i)(\b(?:proxy-)?authorization|\bx-gateway-token|\bcookie|\bset-cookie|\buser-api-key)"
    r"(['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n]*"
)


# A piece of a request quoted by aiohttp in a parse error (``b'...'``, ``bytearray(b'...')``): an
# over-long header line is quoted as its value alone, without the name that marks it secret.
_BYTES = r"""b(?:'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")"""
QUOTED_BYTES = re.compile(rf"(?<!\w)(?:bytearray\({_BYTES}\)|{_BYTES})")


def without_quoted_bytes(text: str) -> str:
    """``text`` with every quoted piece of a raw request replaced by ``b'***'``."""
    return QUOTED_BYTES.sub(f"b'{MASK}'", text)


def redact(text: str) -> str:
    """``text`` with token query values and secret header values replaced by ``***``."""
    if "=" not in text and ":" not in text:
        return text
    text = TOKEN_PARAM.sub(rf"\g<1>{MASK}", text)
    return SECRET_HEADER.sub(rf"\g<1>\g<2>{MASK}", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message (and traceback) with secrets redacted; drops nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave the record to the handler's own error
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            if record.exc_info and isinstance(record.exc_info[1], HttpProcessingError):
                record.exc_text = without_quoted_bytes(record.exc_text)
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_redaction(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of ``logger`` (the root logger) that lacks it."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
