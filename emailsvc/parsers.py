"""JSON request bodies with a bounded nesting depth (SPEC §9: request size limits).

Python's json module recurses once per nesting level: a body nested ~1,000
deep raises RecursionError (a 500), and one just under that parses but then
breaks whatever walks it next (serializers, json.dumps of metadata, the
idempotency hash). No real request nests deeply, so deeper bodies are refused
as invalid_json.
"""

import json

from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_JSON_DEPTH = 64


class JsonTooDeep(ValueError):
    """A JSON document nested more than MAX_JSON_DEPTH levels."""

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
    """DRF's JSON parser, refusing deep nesting as a ParseError (invalid_json)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            value = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(str(JsonTooDeep())) from None
        if isinstance(value, dict | list) and _too_deep(value):
            raise ParseError(str(JsonTooDeep()))
        return value
