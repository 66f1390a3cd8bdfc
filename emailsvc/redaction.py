"""Recipient addresses never reach the logs in clear (SPEC §7): j***@example.com."""

import logging
import re

_ADDRESS = re.compile(r"\b([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})\b")


def redact_address(text: str) -> str:
    """Replace every address in `text` by its first letter, *** and its domain."""
    return _ADDRESS.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)


class RedactAddressesFilter(logging.Filter):
    """Logging filter: redacts addresses in the formatted message of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_address(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
