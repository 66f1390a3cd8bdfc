"""The rules for text the service writes into an email header: subjects,
display names, attachment filenames, custom header values, tags.

One place, so a value the caller gives and the same value rendered by a
template (from template data) are held to the same rules. A value that breaks
one is refused, never altered: what is accepted reaches the reader as given.
"""

import re

from core.addresses import CONTROL_CHARACTERS

_SURROGATE = re.compile(r"[\ud800-\udfff]")
# Unicode bidirectional controls (embeddings, overrides, isolates, marks): they
# make a header read differently from what it holds ("invoice\u202efdp.exe").
BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# RFC 5322 §2.1.1: a header line holds at most 998 octets. Headers are folded
# at spaces, so an ASCII run without one must fit on a line with its header name.
MAX_HEADER_LINE = 998
MAX_SUBJECT = 998
# A display name is carried as one encoded word (mail readers differ on the space
# between several): 500 octets of UTF-8 are at most 680 characters of base64,
# which fit on a line with the address.
MAX_DISPLAY_NAME_OCTETS = 500
MAX_HEADER_WORD = 900
_LONG_WORD = re.compile(r"[^ \t]{%d,}" % (MAX_HEADER_WORD + 1))


def header_text_problem(
    value: str, *, noun: str, max_length: int | None = None, blank: bool = True, display_name: bool = False
) -> str | None:
    """Why `value` cannot be the text of a header, in words fit for the caller, or None.

    `noun` names the value ("The subject"); `max_length` caps its characters;
    `blank=False` refuses an empty or whitespace-only value; `display_name`
    holds it to MAX_DISPLAY_NAME_OCTETS.
    """
    if _SURROGATE.search(value):
        return f"{noun} may not contain unpaired surrogate characters."
    if CONTROL_CHARACTERS.search(value):
        return f"{noun} may not contain line breaks or control characters."
    found = BIDI_CONTROLS.search(value)
    if found:
        return (
            f"{noun} may not contain Unicode bidirectional controls (U+{ord(found.group()):04X}): "
            "they make the text read differently from what it holds."
        )
    if not blank and not value.strip():
        return f"{noun} may not be empty or only spaces."
    if max_length is not None and len(value) > max_length:
        return f"{noun} is {len(value)} characters; at most {max_length} are allowed."
    if display_name and len(value.encode()) > MAX_DISPLAY_NAME_OCTETS:
        octets = len(value.encode())
        return f"{noun} is {octets} octets of UTF-8; at most {MAX_DISPLAY_NAME_OCTETS} fit in an email header."
    if value.isascii() and (long_word := _LONG_WORD.search(value)):
        return (
            f"{noun} has {len(long_word.group())} characters without a space; at most "
            f"{MAX_HEADER_WORD} fit on one line of an email header."
        )
    return None
