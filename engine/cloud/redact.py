"""Secrets never reach a log: AWS key ids, secret keys, session tokens and signatures masked.

At DEBUG, botocore logs request headers (`Authorization`, `X-Amz-Security-Token`) and parsed
response bodies. The AWS libraries' loggers are capped at WARNING and given one handler of
ours (stderr, which is engine.log for a detached engine) behind a redacting filter, and they do
not propagate to the root logger. COCKPIT_DEBUG_AWS=1 lets their DEBUG records through, still
redacted. Text we write ourselves from AWS errors goes through `redact()` too.
"""

from __future__ import annotations

import logging
import os
import re
import sys

MASK = "[redacted]"
AWS_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")

_PATTERNS = [
    # access key ids: AKIA (long-term), ASIA (temporary) and the other IAM unique-id prefixes
    re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{12,}(?![A-Za-z0-9])"),
    # header or field values, quoted (dict reprs, JSON, XML-ish) or up to the end of the line
    re.compile(r"""(?i)((?:authorization|x-amz-security-token|x-amz-credential|x-amz-signature|"""
               r"""aws_secret_access_key|aws_session_token|secretaccesskey|sessiontoken|secret_key|"""
               r"""session_token|securitytoken)['"]?\s*[:=>]\s*b?['"]?)([^'"<\n&]+)"""),
    # presigned URLs' query parameters
    re.compile(r"(?i)((?:X-Amz-Credential|X-Amz-Signature|X-Amz-Security-Token)=)([^&\s'\"]+)"),
    # SigV4 parts wherever they appear (canonical requests, string-to-sign dumps)
    re.compile(r"(?i)((?:Credential|Signature)=)([^,\s'\"]+)"),
]
_KNOWN_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def _known_values() -> list[str]:
    """This process's own credentials from the environment (masked wherever they appear)."""
    return sorted({v for k in _KNOWN_ENV if len(v := os.environ.get(k, "")) >= 8}, key=len, reverse=True)


def redact(text: str) -> str:
    """`text` with anything that looks like an AWS credential or signature masked."""
    for value in _known_values():
        text = text.replace(value, MASK)
    text = _PATTERNS[0].sub(MASK, text)
    for pattern in _PATTERNS[1:]:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (arguments merged in) with its secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is still logged, masked
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class _Stderr(logging.StreamHandler):
    """A handler on whatever sys.stderr is when a record comes (detach and tests replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_configured = False


def quiet_aws_loggers() -> None:
    """Cap the AWS libraries' loggers (WARNING; DEBUG with COCKPIT_DEBUG_AWS=1) behind our filter."""
    global _configured
    if _configured:
        return
    _configured = True
    debug = os.environ.get("COCKPIT_DEBUG_AWS", "").lower() in ("1", "true", "yes")
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    for name in AWS_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if debug else logging.WARNING)
        for old in list(logger.handlers):  # e.g. boto3.set_stream_logger's, which would not redact
            old.addFilter(RedactingFilter())
        logger.addHandler(handler)
        logger.propagate = False
    for root_handler in logging.getLogger().handlers:
        root_handler.addFilter(RedactingFilter())
