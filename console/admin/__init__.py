"""The admin: model lists and pages of every app, registered from here (the console sits above them all)."""

from console.admin import keys, sending, templates, tracking  # noqa: F401
