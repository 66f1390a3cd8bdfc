"""Recipient addresses never reach the logs in clear (SPEC §7): j***@example.com.

`redact_address` is applied to every field of every log line by the log
formatter (core.logs); code may also call it on text it logs itself.
"""

import logging
import re

# A local part of letters (any script), digits and the usual punctuation, "@"
# (or "%40", URL-encoded), then a domain with at least one dot whose last label
# is letters or an IDNA A-label.
_ADDRESS = re.compile(
    r"(?<![\w.%+\-])([\w.%+\-])[\w.%+\-]*(@|%40)((?:[\w\-]+\.)+(?:[^\W\d_]{2,}|xn--[\w\-]+))\b"
)


def redact_address(text: str) -> str:
    """Replace every address in `text` by its first letter, *** and its domain."""
    if "@" not in text and "%40" not in text:  # most log lines: no regex at all
        return text
    return _ADDRESS.sub(lambda m: f"{m.group(1)}***{m.group(2)}{m.group(3)}", text)


class RedactAddressesFilter(logging.Filter):
    """Logging filter: redacts addresses in the formatted message of every record
    (for a handler that does not use core.logs' formatter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_address(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
