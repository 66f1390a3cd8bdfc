"""The header text rules: one verdict for a value, wherever it comes from."""

import pytest

from core.header_text import MAX_DISPLAY_NAME_OCTETS, header_text_problem


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("bell\x07", "control characters"),
        ("line\nbreak", "control characters"),
        ("lone \ud83d", "surrogate"),
        ("evil\u202etxt.exe", "U+202E"),
        ("mark\u200e", "U+200E"),
        ("arabic mark\u061c", "U+061C"),
        ("isolate\u2068x\u2069", "U+2068"),
        ("x" * 901, "without a space"),
    ],
)
def test_values_that_would_change_or_break_a_header_are_named(value, words):
    assert words in header_text_problem(value, noun="The subject")


def test_blank_length_and_display_name_size_are_refused_only_when_asked():
    assert header_text_problem("   ", noun="x") is None
    assert "only spaces" in header_text_problem(" \u3000 ", noun="x", blank=False)
    assert "at most 10" in header_text_problem("x" * 11, noun="x", max_length=10)
    name = "🙂" * (MAX_DISPLAY_NAME_OCTETS // 4 + 1)
    assert header_text_problem(name, noun="x") is None
    assert "octets" in header_text_problem(name, noun="x", display_name=True)


@pytest.mark.parametrize("value", ["Hello", "  leading spaces", "=?utf-8?q?literal?=", "Grüße 🙂", "é" * 5000, ""])
def test_ordinary_text_passes(value):
    assert header_text_problem(value, noun="The subject") is None
