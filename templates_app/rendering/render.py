"""One render of several parts with one budget, its failures as TemplateRenderError."""

from __future__ import annotations

import re
import time
import traceback

from templates_app.errors import TemplateRenderError
from templates_app.rendering.compile import CompiledPart
from templates_app.rendering.limits import (
    RENDER_STATE,
    RenderLimitExceeded,
    RenderLimits,
    RenderState,
)

_SURROGATE = re.compile("[\ud800-\udfff]")
_LAYOUT_WHITESPACE = re.compile(r"[ \t\r\n]+")


def _template_line(error: BaseException) -> int | None:
    """The template line an error was raised at (Jinja rewrites tracebacks so
    template frames carry template line numbers)."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == "<template>":
            line = frame.lineno
    return line


class Render:
    """One render of several parts with one budget.

    `part()` returns a part's output; missing variables of every part are
    collected and `finish()` raises them together. Any other failure raises at
    once.
    """

    def __init__(self, data: dict, *, limits: RenderLimits | None = None):
        limits = limits or RenderLimits.from_settings()
        self.state = RenderState(limits=limits, data=data, deadline=time.monotonic() + limits.max_seconds)
        self.missing: dict[str, list[str]] = {}

    def part(self, part: str, compiled: CompiledPart, variables: dict, *, label: str | None = None) -> str:
        """Render one part; `part` names it in errors (subject, html, ...), `label`
        says more (the layout it comes from)."""
        where = f"{part} ({label})" if label else part
        state = self.state
        state.missing = {}
        token = RENDER_STATE.set(state)
        failure: Exception | None = None
        try:
            output = compiled.template.render(variables)
        except RenderLimitExceeded as error:
            raise TemplateRenderError(f"{where}: {error}", fields={part: [str(error)]}) from None
        except RecursionError:
            message = "The template recursed too deeply."
            raise TemplateRenderError(f"{where}: {message}", fields={part: [message]}) from None
        except Exception as error:  # the template is untrusted code: any exception it raises is its failure
            failure = error
            output = ""
        finally:
            RENDER_STATE.reset(token)
        if state.missing:
            # A failure after a missing value is most likely caused by it: report the cause.
            self.missing.setdefault(part, []).extend(state.missing)
            return ""
        if failure is not None:
            line = _template_line(failure)
            where_line = f"line {line}: " if line else ""
            message = f"{where_line}{failure}"
            raise TemplateRenderError(f"{where}: {message}", fields={part: [message]}) from None
        if _SURROGATE.search(output):
            # From template data: no email (nor JSON answer) can carry it as UTF-8.
            message = "The output holds an unpaired surrogate character (U+D800-U+DFFF) from the data."
            raise TemplateRenderError(f"{where}: {message}", fields={part: [message]})
        return output

    def finish(self) -> None:
        if not self.missing:
            return
        names = list(dict.fromkeys(name for names in self.missing.values() for name in names))
        fields = {part: [f"Missing variable '{name}'." for name in names_] for part, names_ in self.missing.items()}
        raise TemplateRenderError(
            f"Missing template variable{'s' if len(names) > 1 else ''}: {', '.join(names)}.",
            fields=fields,
            variables=names,
        )


def single_line(value: str) -> str:
    """Subjects and display names are header values: the template's own line
    breaks and runs of spaces become one space. Any other character stays, so
    that what template data brings (a control character) is checked, not hidden."""
    return _LAYOUT_WHITESPACE.sub(" ", value).strip(" ")
