"""The bounds of one render and what it keeps while it runs: its budget of
time, iterations and characters, and the missing variables it found."""

from __future__ import annotations

import contextvars
import re
import time
from dataclasses import dataclass, field

from django.conf import settings
from jinja2.runtime import Macro, Undefined

from templates_app.errors import TemplateRenderError

# Macros calling macros: Python recursion under each call is ~6 frames deep.
MAX_CALL_DEPTH = 50
# Integers past this are refused (`9 ** 9 ** 9` would run for hours).
MAX_INT_BITS = 4096
# Widths in printf-style specs ("%01000000d") allocate before any size check.
MAX_FORMAT_WIDTH = 1000
# All values produced in one render (outputs, joins, operator results) may sum
# to this many times TEMPLATE_RENDER_MAX_BYTES: memory stays bounded even when
# a template builds (and keeps, in variables) many large intermediate values.
WORK_FACTOR = 10
# A list item costs a pointer: lists count 8 "characters" per item.
LIST_ITEM_SIZE = 8

_pyattr = getattr  # the builtin, next to methods named getattr


@dataclass(frozen=True)
class RenderLimits:
    max_bytes: int
    max_seconds: float
    max_iterations: int

    @classmethod
    def from_settings(cls) -> RenderLimits:
        return cls(
            max_bytes=int(_pyattr(settings, "TEMPLATE_RENDER_MAX_BYTES", 2 * 1024 * 1024)),
            max_seconds=float(_pyattr(settings, "TEMPLATE_RENDER_MAX_SECONDS", 1.0)),
            max_iterations=int(_pyattr(settings, "TEMPLATE_RENDER_MAX_ITERATIONS", 100_000)),
        )


class RenderLimitExceeded(TemplateRenderError):
    """A render went over one of its bounds; reported as template_render_error."""


# --- Per-render state -------------------------------------------------------


@dataclass
class RenderState:
    """Budgets and findings of one render (all parts of one template together)."""

    limits: RenderLimits
    data: dict
    deadline: float
    iterations: int = 0
    produced: int = 0
    depth: int = 0
    # Missing variables of the part being rendered, in order of first use.
    missing: dict[str, None] = field(default_factory=dict)

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(f"Rendering took longer than {self.limits.max_seconds:g} s.")

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.max_iterations:
            raise RenderLimitExceeded(
                f"More than {self.limits.max_iterations} loop iterations and macro calls in one render."
            )
        self.check_time()

    def charge(self, size: int) -> None:
        if size > self.limits.max_bytes:
            raise RenderLimitExceeded(f"A value larger than {self.limits.max_bytes} characters.")
        self.produced += size
        if self.produced > self.limits.max_bytes * WORK_FACTOR:
            raise RenderLimitExceeded(
                f"The template produced more than {self.limits.max_bytes * WORK_FACTOR} characters in all."
            )


# The render in progress on this thread (or task). Hooks called by compiled
# templates find their budget here; outside a render (compile time) there is none.
RENDER_STATE: contextvars.ContextVar[RenderState | None] = contextvars.ContextVar("template_render_state", default=None)


def current_state() -> RenderState | None:
    state = RENDER_STATE.get()
    if state is not None:
        state.check_time()
    return state


def charge(value) -> None:
    state = RENDER_STATE.get()
    if state is None:
        return
    if isinstance(value, str):
        state.charge(len(value))
    elif isinstance(value, (list, tuple)):
        state.charge(len(value) * LIST_ITEM_SIZE)


def kind_of(value) -> str:
    """What a value is called in messages: JSON words, not Python type names."""
    if isinstance(value, Undefined):
        return "a missing value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple, range)):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, Macro):
        return "a macro"
    return "a template internal"


def path_of(state: RenderState | None, target) -> str | None:
    """Where `target` sits in the render's data ("order.items[2]"), for messages.

    Looked up only when a key is missing, so renders that succeed pay nothing.
    """
    if state is None:
        return None
    stack = [(value, join_path(None, key)) for key, value in state.data.items()]
    seen = 0
    while stack and seen < 100_000:
        value, path = stack.pop()
        seen += 1
        if value is target:
            return path
        if isinstance(value, dict):
            stack.extend((child, join_path(path, key)) for key, child in value.items())
        elif isinstance(value, list):
            stack.extend((child, join_path(path, index)) for index, child in enumerate(value))
    return None


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def join_path(parent: str | None, key) -> str:
    if isinstance(key, int):
        step = f"[{key}]"
    elif isinstance(key, str) and _IDENTIFIER.match(key):
        step = f".{key}"
    else:
        step = f"[{key!r}]"
    if parent is None:
        return step[1:] if step.startswith(".") else step
    return parent + step


# --- Missing variables ------------------------------------------------------


class MissingValue(Undefined):
    """A variable or key the data does not have.

    Any use of it — printing, iterating, testing its truth, arithmetic — records
    its name in the render state and yields an empty value, so one render finds
    every missing variable; the render then fails with all of them. Only
    `is defined` / `is undefined` and the `default` filter look at it without
    using it.
    """

    __slots__ = ()

    def _record(self) -> None:
        state = RENDER_STATE.get()
        if state is not None:
            state.missing.setdefault(self._undefined_name or self._undefined_message, None)

    def _fail_with_undefined_error(self, *args, **kwargs):
        self._record()
        return self

    __add__ = __radd__ = __sub__ = __rsub__ = _fail_with_undefined_error
    __mul__ = __rmul__ = __div__ = __rdiv__ = _fail_with_undefined_error
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _fail_with_undefined_error
    __mod__ = __rmod__ = __pos__ = __neg__ = __pow__ = __rpow__ = _fail_with_undefined_error
    __lt__ = __le__ = __gt__ = __ge__ = _fail_with_undefined_error
    __getitem__ = __call__ = _fail_with_undefined_error

    def __getattr__(self, name: str):
        if name[:2] == "__":
            raise AttributeError(name)
        self._record()
        return self

    def __str__(self) -> str:
        self._record()
        return ""

    def __iter__(self):
        self._record()
        return iter(())

    def __len__(self) -> int:
        self._record()
        return 0

    def __bool__(self) -> bool:
        self._record()
        return False

    def __eq__(self, other) -> bool:
        self._record()
        return False

    def __ne__(self, other) -> bool:
        self._record()
        return True

    def __contains__(self, item) -> bool:
        self._record()
        return False

    def __int__(self) -> int:
        self._record()
        return 0

    def __float__(self) -> float:
        self._record()
        return 0.0

    def __hash__(self) -> int:
        return id(self)
