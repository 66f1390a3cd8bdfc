"""The REST API (SPEC §4): one module per resource, its serializers beside it."""
