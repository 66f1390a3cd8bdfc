"""The Jinja sandbox narrowed to JSON data: guarded operators, filters and
lookups, every loop and buffer join charged to the render's budget.

Only data becomes text: what a template prints, formats (`format`, `%`),
joins (`~`, `join`) or hands to a filter that writes text is a string, a
number, a boolean, null or a list or object of those. A template internal
(range, namespace(), a macro, `loop`, the iterator `map` or `select` give)
would print as a Python repr with a memory address: it is a render error.
"""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Iterator
from functools import wraps

from jinja2 import nodes, pass_environment
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.filters import make_attrgetter
from jinja2.runtime import LoopContext, Macro, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from templates_app.rendering.limits import (
    LIST_ITEM_SIZE,
    MAX_CALL_DEPTH,
    MAX_FORMAT_WIDTH,
    MAX_INT_BITS,
    RENDER_STATE,
    MissingValue,
    RenderLimitExceeded,
    RenderLimits,
    charge,
    current_state,
    join_path,
    kind_of,
    path_of,
)

_pyattr = getattr  # the builtin, next to methods named getattr

# What a template may call, as its errors say (at render, and at save for calls that cannot work).
CALLABLE = "a template calls only its macros, range(), namespace() and loop.cycle()."

# --- Guarded operations -----------------------------------------------------

_FORMAT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_format(template: str) -> None:
    """Refuse printf-style widths that would allocate huge strings ("%099999999d")."""
    for width, precision in _FORMAT_SPEC.findall(template):
        for number in (width, precision):
            if number == "*" or (number and int(number) > MAX_FORMAT_WIDTH):
                raise SecurityError(f"Format widths above {MAX_FORMAT_WIDTH} are not allowed.")


_DATA_TYPES = (str, int, float, bool, type(None), range)
# Filters that iterate over their first argument: an iterator another filter
# gave (`map`, `select`, ...) is what they are for.
_ITERATING_FILTERS = frozenset(
    {"batch", "count", "first", "groupby", "join", "last", "length", "list", "map", "max", "min", "random",
     "reject", "rejectattr", "reverse", "select", "selectattr", "slice", "sort", "sum", "unique"}
)


def _internal(value):
    """The first template internal found in `value` (walked through lists and
    objects), or None when it is all data."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _DATA_TYPES) or isinstance(item, Undefined):
            continue
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            return item
    return None


def _check_data(value, use: str) -> None:
    """SecurityError unless `value` is data (see the module docstring)."""
    internal = _internal(value)
    if internal is not None:
        hint = " (add |list or |join to an iterator)" if isinstance(internal, Iterator) else ""
        raise SecurityError(f"{kind_of(internal)} cannot be {use}: only strings, numbers, lists and objects{hint}.")


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
        _check_data(right, "formatted")


def _bounded_range(*args) -> range:
    """`range()` for templates: at most TEMPLATE_RENDER_MAX_ITERATIONS numbers."""
    numbers = range(*args)
    state = RENDER_STATE.get()
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
        _check_data([items, d], "joined")
        state = RENDER_STATE.get()
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
    # The context, eval context or environment Jinja passes first is not the template's.
    passed = 1 if _pyattr(func, "jinja_pass_arg", None) is not None else 0
    iterates = name in _ITERATING_FILTERS

    @wraps(func)  # keeps jinja_pass_arg (context / environment as first argument)
    def guarded(*args, **kwargs):
        state = current_state()
        if state is None:
            # Jinja folds constant expressions at compile time, outside any
            # budget ("x"|center(10**9) would allocate while saving): refusing
            # here makes it leave the call to render time.
            raise RuntimeError("Filters run only inside a render.")
        given = list(args[passed:])
        if iterates and given and isinstance(given[0], Iterator):
            given.pop(0)
        _check_data([given, kwargs], f"given to {name}()")
        if pre_check is not None:
            pre_check(state.limits, _bound_args(func, args, kwargs))
        result = func(*args, **kwargs)
        charge(result)
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
        _check_data(value, "printed")
        state = RENDER_STATE.get()
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
        current_state()
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
            f"'{attribute}' cannot be read from {kind_of(obj)}: templates read only keys of objects and items of lists."
        )

    def getitem(self, obj, argument):
        current_state()
        if isinstance(obj, Undefined):
            return obj
        if isinstance(obj, dict):
            return self._key(obj, argument)
        if isinstance(obj, (list, tuple, str, range)):
            if isinstance(argument, slice) or (isinstance(argument, int) and not isinstance(argument, bool)):
                try:
                    return obj[argument]
                except IndexError:
                    return self.undefined(name=join_path(path_of(RENDER_STATE.get(), obj), argument))
            raise SecurityError(f"Items of {kind_of(obj)} are read by number, not by {argument!r}.")
        if isinstance(obj, (LoopContext, Namespace)) and isinstance(argument, str):
            return self.getattr(obj, argument)
        raise SecurityError(f"{argument!r} cannot be read from {kind_of(obj)}.")

    def _key(self, obj: dict, key):
        if isinstance(key, str) and key.startswith("__"):
            raise SecurityError(f"'{key}' is not a key a template may read.")
        try:
            return obj[key]
        except (KeyError, TypeError):
            return self.undefined(name=join_path(path_of(RENDER_STATE.get(), obj), key))

    # -- what templates can call

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        state = current_state()
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
            name = f"'{__obj._undefined_name}'" if isinstance(__obj, Undefined) and __obj._undefined_name else kind_of(__obj)
            raise SecurityError(f"{name} cannot be called: {CALLABLE}")
        return __context.call(__obj, *args, **kwargs)

    def call_binop(self, context, operator, left, right):
        state = current_state()
        _check_binop(operator, left, right, state.limits if state else RenderLimits.from_settings())
        result = self.binop_table[operator](left, right)
        charge(result)
        return result

    # -- hooks the compiled code calls

    def loop_items(self, iterable):
        """Every `{% for %}` iterates through here: one budget tick per item."""
        state = RENDER_STATE.get()
        for item in iterable:
            if state is not None:
                state.iterate()
            yield item

    def guarded_join(self, join, parts):
        """`a ~ b`: sized before the string is built."""
        _check_data(list(parts), "joined")
        strings = [part if isinstance(part, str) else str(part) for part in parts]
        charge_total(sum(len(s) for s in strings))
        return join(strings)

    def concat(self, parts) -> str:  # type: ignore[override]
        """Joins every output buffer (the whole part, macro bodies, `{% set %}`
        blocks): stops as soon as the pieces pass the size limit."""
        state = RENDER_STATE.get()
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


def charge_total(size: int) -> None:
    state = RENDER_STATE.get()
    if state is not None:
        state.charge(size)


HTML_ENVIRONMENT = TemplateEnvironment(autoescape=True)
TEXT_ENVIRONMENT = TemplateEnvironment(autoescape=False)
