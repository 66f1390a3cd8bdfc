"""The one template engine: Jinja2's sandbox, narrowed to JSON data and bounded.

Why Jinja2 (README "Templates"): its sandbox is built for templates written by
someone other than the operator, every hook we need is a documented extension
point (attribute and item lookup, calls, binary operators, `finalize`,
`concat`, the code generator class), and a compiled template is a plain Python
object we can cache per version. Django's engine has no sandbox: it calls
methods of whatever it is given and has no bound on loops or output.

What a template may do, on top of the stock ImmutableSandboxedEnvironment:

- read only the data it is rendered with (`template_data`, JSON values): keys
  of objects and items of lists. No attribute of any Python object, no method,
  nothing global but `range` (bounded) and `namespace`;
- call only its own macros, `range()`, `namespace()` and `loop.cycle()`;
- not `include`, `import` or `extend` other templates (layouts do that), and
  not loop recursively;
- use a missing variable only as an error that names it (`is defined` and
  `| default(...)` still work): every missing variable is collected and the
  render fails with all of them, never with a blank;
- spend at most TEMPLATE_RENDER_MAX_SECONDS and TEMPLATE_RENDER_MAX_ITERATIONS
  (loop items and macro calls together) and produce at most
  TEMPLATE_RENDER_MAX_BYTES per value and per part. The bounds are enforced
  inside the engine, where the work happens: every loop iterates through
  `loop_items` (added to the parsed template before compilation), every buffer
  join goes through `concat`, `~` through a guarded join, every binary operator
  and filter checks its result size before allocating it.
"""

from __future__ import annotations

import contextvars
import inspect
import re
import threading
import time
import traceback
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import wraps

import css_inline
from django.conf import settings
from inscriptis import Inscriptis
from inscriptis.css_profiles import STRICT_CSS_PROFILE
from inscriptis.model.config import ParserConfig
from jinja2 import nodes, pass_environment
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.filters import make_attrgetter
from jinja2.meta import find_undeclared_variables
from jinja2.runtime import LoopContext, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from lxml.etree import ParserError
from lxml.html import document_fromstring
from mjml import mjml2html

from templates_app.errors import TemplateInvalid, TemplateRenderError

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


class RenderLimitExceeded(Exception):
    """A render went over one of its bounds; reported as template_render_error."""


# --- Per-render state -------------------------------------------------------


@dataclass
class _RenderState:
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
_STATE: contextvars.ContextVar[_RenderState | None] = contextvars.ContextVar("template_render_state", default=None)


def _state() -> _RenderState | None:
    state = _STATE.get()
    if state is not None:
        state.check_time()
    return state


def _charge(value) -> None:
    state = _STATE.get()
    if state is None:
        return
    if isinstance(value, str):
        state.charge(len(value))
    elif isinstance(value, (list, tuple)):
        state.charge(len(value) * LIST_ITEM_SIZE)


def _kind(value) -> str:
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


def _path_of(state: _RenderState | None, target) -> str | None:
    """Where `target` sits in the render's data ("order.items[2]"), for messages.

    Looked up only when a key is missing, so renders that succeed pay nothing.
    """
    if state is None:
        return None
    stack = [(value, _join_path(None, key)) for key, value in state.data.items()]
    seen = 0
    while stack and seen < 100_000:
        value, path = stack.pop()
        seen += 1
        if value is target:
            return path
        if isinstance(value, dict):
            stack.extend((child, _join_path(path, key)) for key, child in value.items())
        elif isinstance(value, list):
            stack.extend((child, _join_path(path, index)) for index, child in enumerate(value))
    return None


_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _join_path(parent: str | None, key) -> str:
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
        state = _STATE.get()
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


# --- Guarded operations -----------------------------------------------------

_FORMAT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_format(template: str) -> None:
    """Refuse printf-style widths that would allocate huge strings ("%099999999d")."""
    for width, precision in _FORMAT_SPEC.findall(template):
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_FORMAT_WIDTH):
                raise SecurityError(f"Format widths above {MAX_FORMAT_WIDTH} are not allowed.")


def _size(value) -> int:
    return len(value) if isinstance(value, str) else len(value) * LIST_ITEM_SIZE


def _check_binop(operator: str, left, right, limits: RenderLimits) -> None:
    """Refuse, before computing it, a result that would be too large."""
    if isinstance(left, Undefined) or isinstance(right, Undefined):
        return
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, (str, list, tuple)) and isinstance(times, int):
                if _size(sequence) * max(times, 0) > limits.max_bytes:
                    raise RenderLimitExceeded(f"A value larger than {limits.max_bytes} characters.")
                return
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise RenderLimitExceeded("A number too large for a template.")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_INT_BITS:
                raise RenderLimitExceeded("A number too large for a template.")
    elif operator == "+":
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            if _size(left) + _size(right) > limits.max_bytes:
                raise RenderLimitExceeded(f"A value larger than {limits.max_bytes} characters.")
    elif operator == "%" and isinstance(left, str):
        _check_format(left)


def _bounded_range(*args) -> range:
    """`range()` for templates: at most TEMPLATE_RENDER_MAX_ITERATIONS numbers."""
    numbers = range(*args)
    state = _STATE.get()
    limit = state.limits.max_iterations if state else RenderLimits.from_settings().max_iterations
    if len(numbers) > limit:
        raise RenderLimitExceeded(f"range() of {len(numbers)} numbers; at most {limit} are allowed.")
    return numbers


# Filters whose output can be far larger than their input, depending on their
# arguments: each gets a check of its arguments, before it runs.
def _bound_args(func, args, kwargs) -> dict:
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def _pre_center(limits, arguments):
    if int(arguments["width"]) > limits.max_bytes:
        raise RenderLimitExceeded("center() width too large.")


def _pre_indent(limits, arguments):
    width = arguments["width"]
    width_chars = width if isinstance(width, int) else len(str(width))
    text = str(arguments["s"])
    if len(text) + (text.count("\n") + 1) * max(width_chars, 0) > limits.max_bytes:
        raise RenderLimitExceeded("indent() result too large.")


def _pre_format(limits, arguments):
    _check_format(str(arguments["value"]))


def _pre_replace(limits, arguments):
    text, old, new = str(arguments["s"]), str(arguments["old"]), str(arguments["new"])
    count = text.count(old) if old else len(text) + 1
    if arguments.get("count") is not None:
        count = min(count, max(int(arguments["count"]), 0))
    if len(text) + count * (len(new) - len(old)) > limits.max_bytes:
        raise RenderLimitExceeded("replace() result too large.")


def _pre_wordwrap(limits, arguments):
    text = str(arguments["s"])
    wrap = arguments.get("wrapstring") or "\n"
    lines = len(text) // max(int(arguments["width"]), 1) + text.count("\n") + 1
    if len(text) + lines * len(str(wrap)) > limits.max_bytes:
        raise RenderLimitExceeded("wordwrap() result too large.")


def _pre_count(name: str, argument: str):
    def check(limits, arguments):
        if int(arguments[argument]) > limits.max_iterations:
            raise RenderLimitExceeded(f"{name}() of more than {limits.max_iterations}.")

    return check


_PRE_CHECKS = {
    "center": _pre_center,
    "indent": _pre_indent,
    "format": _pre_format,
    "replace": _pre_replace,
    "wordwrap": _pre_wordwrap,
    "batch": _pre_count("batch", "linecount"),
    "slice": _pre_count("slice", "slices"),
}


def _guarded_join(join):
    """`join`: the separator repeated between many items must fit too."""

    @wraps(join)
    def guarded(eval_ctx, value, d="", attribute=None):
        if attribute is not None:
            value = map(make_attrgetter(eval_ctx.environment, attribute), value)
        items = list(value)
        state = _STATE.get()
        if state is not None:
            size = sum(len(str(item)) for item in items) + len(str(d)) * max(len(items) - 1, 0)
            if size > state.limits.max_bytes:
                raise RenderLimitExceeded("join() result too large.")
        return join(eval_ctx, items, d)

    return guarded


@pass_environment
def _guarded_sum(environment, iterable, attribute=None, start=0):
    """`sum` of numbers only: summing lists or strings is quadratic."""
    items = list(iterable)
    if attribute is not None:
        items = list(map(make_attrgetter(environment, attribute), items))
    if not all(isinstance(item, (int, float)) for item in items) or not isinstance(start, (int, float)):
        raise TypeError("sum() adds numbers only.")
    return sum(items, start)

# Filters a template may use. Left out: attr (Python attributes), pprint
# (Python reprs), urlize (slow regex on long input), and none are added.
ALLOWED_FILTERS = (
    "abs", "batch", "capitalize", "center", "count", "d", "default", "dictsort", "e", "escape", "filesizeformat",
    "first", "float", "forceescape", "format", "groupby", "indent", "int", "items", "join", "last", "length",
    "list", "lower", "map", "max", "min", "random", "reject", "rejectattr", "replace", "reverse", "round",
    "safe", "select", "selectattr", "slice", "sort", "string", "striptags", "sum", "title", "tojson", "trim",
    "truncate", "unique", "upper", "urlencode", "wordcount", "wordwrap", "xmlattr",
)


def _guard_filter(name: str, func):
    pre_check = _PRE_CHECKS.get(name)

    @wraps(func)  # keeps jinja_pass_arg (context / environment as first argument)
    def guarded(*args, **kwargs):
        state = _state()
        if state is None:
            # Jinja folds constant expressions at compile time, outside any
            # budget ("x"|center(10**9) would allocate while saving): refusing
            # here makes it leave the call to render time.
            raise RuntimeError("Filters run only inside a render.")
        if pre_check is not None:
            pre_check(state.limits, _bound_args(func, args, kwargs))
        result = func(*args, **kwargs)
        _charge(result)
        return result

    return guarded


def _filters() -> dict:
    filters = {}
    for name in ALLOWED_FILTERS:
        func = JINJA_FILTERS[name]
        if _pyattr(func, "jinja_async_variant", False):
            func = func.__wrapped__  # the sync implementation, with its own signature and pass_* marker
        if name == "join":
            func = _guarded_join(func)
        elif name == "sum":
            func = _guarded_sum
        filters[name] = _guard_filter(name, func)
    return filters


def _finalize(value):
    """Every `{{ expression }}` passes here: JSON null prints as nothing, and
    the output counts against the render's budget."""
    if value is None:
        return ""
    if not isinstance(value, Undefined):
        state = _STATE.get()
        if state is not None:
            state.charge(len(value) if isinstance(value, str) else len(str(value)))
    return value


class _GuardedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with `a ~ b` joined through a size check."""

    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.autoescape else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.guarded_join({join}, (")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


LOOP_ATTRIBUTES = frozenset(
    {"index", "index0", "revindex", "revindex0", "first", "last", "length", "depth", "depth0",
     "previtem", "nextitem", "cycle", "changed"}
)


class TemplateEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, narrowed: see the module docstring."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})

    def __init__(self, *, autoescape: bool):
        super().__init__(
            autoescape=autoescape,
            undefined=MissingValue,
            finalize=_finalize,
            # Constant folding would run filters at compile time, outside any budget.
            optimized=False,
            # Text emails keep their last line break; block tags leave no blank lines.
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
            cache_size=0,
        )
        self.globals.clear()
        self.globals.update({"range": _bounded_range, "namespace": Namespace})
        self.filters = _filters()

    # -- what templates can read

    def is_safe_attribute(self, obj, attr, value) -> bool:
        return False  # nothing reaches Python attributes; getattr below reads keys

    def getattr(self, obj, attribute):
        _state()
        if isinstance(obj, Undefined):
            return obj  # its use records it
        if isinstance(obj, dict):
            return self._key(obj, attribute)
        if isinstance(obj, LoopContext) and attribute in LOOP_ATTRIBUTES:
            return _pyattr(obj, attribute)
        if isinstance(obj, Namespace) and not attribute.startswith("_"):
            try:
                return _pyattr(obj, attribute)
            except AttributeError:
                return self.undefined(name=attribute)
        raise SecurityError(
            f"'{attribute}' cannot be read from {_kind(obj)}: templates read only keys of objects and items of lists."
        )

    def getitem(self, obj, argument):
        _state()
        if isinstance(obj, Undefined):
            return obj
        if isinstance(obj, dict):
            return self._key(obj, argument)
        if isinstance(obj, (list, tuple, str, range)):
            if isinstance(argument, slice) or (isinstance(argument, int) and not isinstance(argument, bool)):
                try:
                    return obj[argument]
                except IndexError:
                    return self.undefined(name=_join_path(_path_of(_STATE.get(), obj), argument))
            raise SecurityError(f"Items of {_kind(obj)} are read by number, not by {argument!r}.")
        if isinstance(obj, (LoopContext, Namespace)) and isinstance(argument, str):
            return self.getattr(obj, argument)
        raise SecurityError(f"{argument!r} cannot be read from {_kind(obj)}.")

    def _key(self, obj: dict, key):
        if isinstance(key, str) and key.startswith("__"):
            raise SecurityError(f"'{key}' is not a key a template may read.")
        try:
            return obj[key]
        except (KeyError, TypeError):
            return self.undefined(name=_join_path(_path_of(_STATE.get(), obj), key))

    # -- what templates can call

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        state = _state()
        if isinstance(__obj, Macro):
            if state is None:
                return __context.call(__obj, *args, **kwargs)
            state.iterate()  # recursion is a loop too
            state.depth += 1
            try:
                if state.depth > MAX_CALL_DEPTH:
                    raise RenderLimitExceeded(f"Macros nested more than {MAX_CALL_DEPTH} deep.")
                return __context.call(__obj, *args, **kwargs)
            finally:
                state.depth -= 1
        allowed = (
            __obj is _bounded_range
            or __obj is Namespace
            or (
                isinstance(__obj, types.MethodType)
                and (
                    (__obj.__self__ is __self and __obj.__func__ is TemplateEnvironment.loop_items)
                    or (isinstance(__obj.__self__, LoopContext) and __obj.__name__ in ("cycle", "changed"))
                )
            )
        )
        if not allowed:
            name = f"'{__obj._undefined_name}'" if isinstance(__obj, Undefined) and __obj._undefined_name else _kind(__obj)
            raise SecurityError(
                f"{name} cannot be called: a template calls only its macros, range(), namespace() and loop.cycle()."
            )
        return __context.call(__obj, *args, **kwargs)

    def call_binop(self, context, operator, left, right):
        state = _state()
        _check_binop(operator, left, right, state.limits if state else RenderLimits.from_settings())
        result = self.binop_table[operator](left, right)
        _charge(result)
        return result

    # -- hooks the compiled code calls

    def loop_items(self, iterable):
        """Every `{% for %}` iterates through here: one budget tick per item."""
        state = _STATE.get()
        for item in iterable:
            if state is not None:
                state.iterate()
            yield item

    def guarded_join(self, join, parts):
        """`a ~ b`: sized before the string is built."""
        strings = [part if isinstance(part, str) else str(part) for part in parts]
        _charge_total(sum(len(s) for s in strings))
        return join(strings)

    def concat(self, parts) -> str:  # type: ignore[override]
        """Joins every output buffer (the whole part, macro bodies, `{% set %}`
        blocks): stops as soon as the pieces pass the size limit."""
        state = _STATE.get()
        limit = state.limits.max_bytes if state else RenderLimits.from_settings().max_bytes
        pieces, total = [], 0
        for piece in parts:
            total += len(piece)
            if total > limit:
                raise RenderLimitExceeded(f"The output is larger than {limit} characters.")
            pieces.append(piece)
        if state is not None:
            state.charge(total)
        return "".join(pieces)


def _charge_total(size: int) -> None:
    state = _STATE.get()
    if state is not None:
        state.charge(size)


HTML_ENVIRONMENT = TemplateEnvironment(autoescape=True)
TEXT_ENVIRONMENT = TemplateEnvironment(autoescape=False)


# --- Compiling --------------------------------------------------------------


@dataclass(frozen=True)
class CompiledPart:
    """One template part (subject, html, ...) compiled, with the top-level
    variables it uses."""

    source: str
    template: object  # jinja2.Template
    variables: frozenset[str]


def _restrict(ast: nodes.Template) -> None:
    """Refuse what a stored template may not do, and route every loop through
    the budget (`environment.loop_items`)."""
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        tag = {nodes.Extends: "extends", nodes.Include: "include"}.get(type(node), "import")
        raise TemplateSyntaxError(
            f"{{% {tag} %}} is not available in stored templates; use a layout or a macro.", node.lineno
        )
    for loop in list(ast.find_all(nodes.For)):
        if loop.recursive:
            raise TemplateSyntaxError("Recursive loops are not available in stored templates.", loop.lineno)
        loop.iter = nodes.Call(
            nodes.EnvironmentAttribute("loop_items", lineno=loop.lineno), [loop.iter], [], None, None, lineno=loop.lineno
        )


def compile_part(source: str, *, html: bool) -> CompiledPart:
    """Parse and compile one source. Raises jinja2's TemplateSyntaxError (with
    `lineno`); RecursionError for absurdly nested sources."""
    environment = HTML_ENVIRONMENT if html else TEXT_ENVIRONMENT
    ast = environment.parse(source)
    variables = frozenset(find_undeclared_variables(ast)) - set(environment.globals)
    _restrict(ast)
    return CompiledPart(source=source, template=environment.from_string(ast), variables=variables)


_CACHE: OrderedDict[tuple, CompiledPart] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 1024


def compiled_part(source: str, *, html: bool, key: tuple | None) -> CompiledPart:
    """The compiled form of a stored version's part, compiled once per process.

    `key` is (version pk, part). The source is compared too, so a reused
    primary key (a test database created again) never serves stale code.
    """
    if key is not None:
        with _CACHE_LOCK:
            entry = _CACHE.get(key)
            if entry is not None and entry.source == source:
                _CACHE.move_to_end(key)
                return entry
    entry = compile_part(source, html=html)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = entry
            while len(_CACHE) > CACHE_SIZE:
                _CACHE.popitem(last=False)
    return entry


def syntax_problem(source: str, *, html: bool) -> str | None:
    """None if `source` compiles, else "line N: message"."""
    try:
        compile_part(source, html=html)
    except TemplateSyntaxError as error:
        return f"line {error.lineno}: {error.message}"
    except RecursionError:
        return "the template is nested too deeply"
    return None


# --- Rendering --------------------------------------------------------------


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
        self.state = _RenderState(limits=limits, data=data, deadline=time.monotonic() + limits.max_seconds)
        self.missing: dict[str, list[str]] = {}

    def part(self, part: str, compiled: CompiledPart, variables: dict, *, label: str | None = None) -> str:
        """Render one part; `part` names it in errors (subject, html, ...), `label`
        says more (the layout it comes from)."""
        where = f"{part} ({label})" if label else part
        state = self.state
        state.missing = {}
        token = _STATE.set(state)
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
            _STATE.reset(token)
        if state.missing:
            # A failure after a missing value is most likely caused by it: report the cause.
            self.missing.setdefault(part, []).extend(state.missing)
            return ""
        if failure is not None:
            line = _template_line(failure)
            where_line = f"line {line}: " if line else ""
            message = f"{where_line}{failure}"
            raise TemplateRenderError(f"{where}: {message}", fields={part: [message]}) from None
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
    """Subjects and display names are header values: one line, no runs of spaces."""
    return " ".join(value.split())


# --- After rendering: CSS inlined, a text part from the HTML ----------------

# Remote stylesheets are never fetched: a template must not make the server
# request URLs. @media rules stay in a <style> (responsive layouts, MJML).
_INLINER = css_inline.CSSInliner(load_remote_stylesheets=False, keep_at_rules=True, keep_link_tags=True)
_HAS_STYLE = re.compile(r"<style[\s>]", re.IGNORECASE)


def inline_css(html: str) -> str:
    """Move <style> rules into style attributes, for mail clients that drop <style>."""
    if not _HAS_STYLE.search(html):
        return html  # nothing to inline: leave the author's markup as it is
    try:
        return _INLINER.inline(html)
    except (css_inline.InlineError, ValueError) as error:
        raise TemplateRenderError(f"html: CSS could not be inlined: {error}", fields={"html": [str(error)]}) from None


_TEXT_CONFIG = ParserConfig(css=STRICT_CSS_PROFILE)
_HIDDEN = re.compile(r"display\s*:\s*none|mso-hide\s*:\s*all", re.IGNORECASE)


def _flatten_layout_table(table) -> None:
    """Email HTML is laid out with tables (MJML's always): read a table without
    header cells as paragraphs, not as a grid. Tables with <th> stay tables."""
    rows = table.xpath("./tr | ./thead/tr | ./tbody/tr | ./tfoot/tr")
    if any(cell.tag == "th" for row in rows for cell in row):
        return
    for row in rows:
        for cell in row:
            if cell.tag == "td":
                cell.tag = "p"  # a block with a blank line around it
        row.tag = "div"
    for section in table.xpath("./thead | ./tbody | ./tfoot"):
        section.tag = "div"
    table.tag = "div"


def html_to_text(html: str) -> str:
    """A readable text part from rendered HTML (inscriptis): headings and
    paragraphs as blocks, lists with bullets, links as "label (URL)", hidden
    preheaders left out, no alignment padding."""
    if not html.strip():
        return ""
    try:
        tree = document_fromstring(html)
    except ParserError:
        return ""
    for table in list(tree.iter("table")):
        _flatten_layout_table(table)
    for element in list(tree.iter()):
        if not isinstance(element.tag, str):
            continue
        if _HIDDEN.search(element.attrib.get("style", "")):
            element.drop_tree()
            continue
        for attribute in ("style", "align", "valign"):
            element.attrib.pop(attribute, None)
        if element.tag == "a":
            href = (element.attrib.get("href") or "").strip()
            shown = href[7:] if href.lower().startswith("mailto:") else href
            if shown and not href.startswith("#") and shown != element.text_content().strip():
                element.tail = f" ({shown})" + (element.tail or "")
    text = Inscriptis(tree, _TEXT_CONFIG).get_text()
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# --- MJML -------------------------------------------------------------------

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
