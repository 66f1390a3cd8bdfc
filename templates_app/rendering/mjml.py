"""MJML compiled to HTML, its errors located on a line of the source."""

from __future__ import annotations

import re

from mjml import mjml2html

from templates_app.errors import TemplateInvalid

_MJML_POSITION = re.compile(r"at position (\d+):(\d+)")
_MJML_TAG = re.compile(r"<(/?)(mjml|mj-[a-z-]+)\b[^>]*?(/?)>")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def compile_mjml(source: str) -> str:
    """MJML → HTML with MRML (no Node). Raises TemplateInvalid naming the line."""
    problem = _mjml_tags_problem(source)
    if problem is None:
        try:
            return mjml2html(source)
        except ValueError as error:
            message = str(error)
            line = _mjml_error_line(source, message)
            problem = f"line {line}: {message}" if line else message
    raise TemplateInvalid(f"mjml: {problem}", fields={"mjml": [problem]})


def _mjml_tags_problem(source: str) -> str | None:
    """MJML is XML: every mj- element is closed, in order. MRML accepts some
    mismatches silently and reports others where it noticed them, often lines
    later; this finds the line where the author went wrong."""
    # Comments keep their line breaks, so line numbers stay right.
    text = _HTML_COMMENT.sub(lambda match: "\n" * match.group().count("\n"), source)
    stack: list[tuple[str, int]] = []
    for match in _MJML_TAG.finditer(text):
        closing, name, self_closing = match.groups()
        line = text.count("\n", 0, match.start()) + 1
        if not closing:
            if not self_closing:
                stack.append((name, line))
            continue
        if stack and stack[-1][0] == name:
            stack.pop()
        elif any(opened == name for opened, _ in stack):
            unclosed, opened_line = stack[-1]
            return f"line {opened_line}: <{unclosed}> is not closed before </{name}> on line {line}."
        else:
            return f"line {line}: </{name}> closes no open <{name}>."
    if stack:
        unclosed, opened_line = stack[-1]
        return f"line {opened_line}: <{unclosed}> is never closed."
    return None


def _line_of_offset(source: str, byte_offset: int) -> int:
    return source.encode()[:byte_offset].count(b"\n") + 1


def _mjml_error_line(source: str, message: str) -> int | None:
    """The line of an MRML error: from its byte span when it gives one; for
    "unable to parse next template", the first line whose prefix fails the same
    way (MRML parses up to the bad token and stops there)."""
    position = _MJML_POSITION.search(message)
    if position:
        return _line_of_offset(source, int(position.group(1)))
    if not message.startswith("unable to parse next template"):
        return None
    lines = source.split("\n")
    low, high = 1, len(lines)
    while low < high:  # the smallest prefix that fails like the whole source
        middle = (low + high) // 2
        try:
            mjml2html("\n".join(lines[:middle]))
            failed = False
        except ValueError as error:
            failed = str(error).startswith("unable to parse next template")
        if failed:
            high = middle
        else:
            low = middle + 1
    return low
