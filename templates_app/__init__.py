"""Stored templates, their versions and their rendering (Jinja sandbox, MJML, CSS inlining, text part)."""
