"""JSON request bodies with a bounded nesting depth (SPEC §9: request size limits).

Python's json module recurses once per nesting level: a body nested ~1,000
deep raises RecursionError (a 500), and one just under that parses but then
breaks whatever walks it next (serializers, json.dumps of metadata, the
idempotency hash). No real request nests deeply, so deeper bodies are refused
as invalid_json.
"""

import io
import json

import orjson
from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError

from core.errors import ValidationFailed

MAX_JSON_DEPTH = 64
_NOT_PARSED = object()


class JsonTooDeep(ValidationFailed, ValueError):
    """A JSON document nested more than MAX_JSON_DEPTH levels."""

    code = "invalid_json"

    def __init__(self):
        super().__init__(f"it is nested more than {MAX_JSON_DEPTH} levels deep.")


def _too_deep(value, limit: int = MAX_JSON_DEPTH) -> bool:
    # Iterative on purpose: a recursive walk is what fails on deep input.
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def json_loads_limited(data: bytes | str):
    """json.loads that raises JsonTooDeep (a ValueError) for deeply nested input."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise JsonTooDeep() from None
    if isinstance(value, dict | list) and _too_deep(value):
        raise JsonTooDeep()
    return value


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing deep nesting as a ParseError (invalid_json).

    A UTF-8 body is read by orjson (a batch of 500 emails in a few ms instead of
    ~30); whatever orjson refuses — a lone surrogate escape, a number out of its
    range, a syntax error — goes DRF's way, so every body is taken or refused
    exactly as DRF's own parser does."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
        value = _NOT_PARSED
        if encoding.lower().replace("-", "").replace("_", "") == "utf8":
            data = stream.read() if stream is not None else b""
            try:
                value = orjson.loads(data)
            except orjson.JSONDecodeError:
                stream = io.BytesIO(data)
        if value is _NOT_PARSED:
            try:
                value = super().parse(stream, media_type, parser_context)
            except RecursionError:
                raise ParseError(str(JsonTooDeep())) from None
        if isinstance(value, dict | list) and _too_deep(value):
            raise ParseError(str(JsonTooDeep()))
        return value
