"""Compiling a template part once per process, with what a stored template may not do refused."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.meta import find_undeclared_variables

from templates_app.rendering.limits import kind_of
from templates_app.rendering.sandbox import CALLABLE, HTML_ENVIRONMENT, TEXT_ENVIRONMENT


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


# Names a template may call without defining them.
_CALLABLE_NAMES = frozenset({"range", "namespace", "caller"})
# Expressions whose value is text, a number or a boolean: never callable.
_PLAIN_VALUE = (
    nodes.Const, nodes.TemplateData, nodes.Concat, nodes.Compare, nodes.Test, nodes.Not, nodes.Neg, nodes.Pos,
)
_LITERAL = (nodes.List, nodes.Tuple, nodes.Dict)
_LOOP_METHODS = ("cycle", "changed")


def _data_only(node: nodes.Node, bound: frozenset[str]) -> bool:
    """Whether `node` certainly evaluates to template data (or a missing value),
    which is never callable: a name the template does not bind otherwise (it
    comes from template_data, or from a loop over or a `set` of data), a key or
    item of such a value, or a literal text, number or boolean. Anything else
    the template binds may hold a macro, range or namespace."""
    if isinstance(node, nodes.Name):
        return node.name not in bound and node.name not in _CALLABLE_NAMES and node.name != "loop"
    if isinstance(node, (nodes.Getattr, nodes.Getitem)):
        return _data_only(node.node, bound)
    if isinstance(node, nodes.Filter):
        return node.node is not None and _data_only(node.node, bound) and all(_data_only(a, bound) for a in node.args)
    if isinstance(node, nodes.CondExpr):
        return _data_only(node.expr1, bound) and (node.expr2 is None or _data_only(node.expr2, bound))
    if isinstance(node, nodes.BinExpr):
        return _data_only(node.left, bound) and _data_only(node.right, bound)
    if isinstance(node, _LITERAL):
        items = node.items if not isinstance(node, nodes.Dict) else [p.value for p in node.items]
        return all(_data_only(item, bound) for item in items)
    return isinstance(node, _PLAIN_VALUE)


def _bound_names(ast: nodes.Template) -> frozenset[str]:
    """The names the template binds to something that may not be data: macros,
    their parameters, and names set or looped over from anything else."""
    values: dict[str, list[nodes.Node | None]] = {}
    known: set[int] = set()
    for node in ast.find_all((nodes.For, nodes.Assign, nodes.AssignBlock, nodes.With)):
        if isinstance(node, nodes.With):
            pairs = list(zip(node.targets, node.values, strict=False))
        elif isinstance(node, nodes.AssignBlock):
            pairs = [(node.target, nodes.Const(""))]  # {% set x %}…{% endset %} is text
        else:
            pairs = [(node.target, node.iter if isinstance(node, nodes.For) else node.node)]
        for target, value in pairs:
            for name in target.find_all(nodes.Name) if not isinstance(target, nodes.Name) else [target]:
                values.setdefault(name.name, []).append(value)
                known.add(id(name))
    unknown = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param") and id(n) not in known}
    unknown |= {m.name for m in ast.find_all(nodes.Macro)}
    bound = frozenset(unknown | set(values))
    while True:  # a name is data when every value it is given is data
        data = {
            name for name, given in values.items() if name not in unknown and all(_data_only(v, bound) for v in given)
        }
        narrowed = frozenset(unknown | (set(values) - data))
        if narrowed == bound:
            return bound
        bound = narrowed


def _shown(node: nodes.Node) -> str:
    """How a callee is named in the message: `'user.name.upper'`, or what it is."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return repr(node.value)
    if isinstance(node, nodes.Getattr) and (base := _shown(node.node)):
        return f"{base}.{node.attr}"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and (base := _shown(node.node)):
        return f"{base}[{node.arg.value!r}]"
    return ""


def _call_refused(ast: nodes.Template) -> TemplateSyntaxError | None:
    """The first call the sandbox would refuse at render whatever the data: of a
    value from template_data (`{{ name.upper() }}`, `{{ items[0]() }}`), of a
    literal (`{{ "x"() }}`), or of an attribute of `loop` other than cycle() and
    changed(). Calls of what the template binds itself are left to render."""
    bound = _bound_names(ast)
    for call in ast.find_all(nodes.Call):
        callee = call.node
        loop_attribute = (
            isinstance(callee, nodes.Getattr)
            and isinstance(callee.node, nodes.Name)
            and callee.node.name == "loop"
            and "loop" not in bound
            and callee.attr not in _LOOP_METHODS
        )
        if not (_data_only(callee, bound) or isinstance(callee, _LITERAL) or loop_attribute):
            continue
        if (shown := _shown(callee)) and not isinstance(callee, nodes.Const):
            what = shown if shown.startswith("'") else f"'{shown}'"
        elif isinstance(callee, nodes.Const):
            what = kind_of(callee.value)
        else:
            what = "this value"
        return TemplateSyntaxError(f"{what} cannot be called: {CALLABLE}", call.lineno)
    return None


def syntax_problem(source: str, *, html: bool) -> str | None:
    """None if `source` compiles and calls nothing the sandbox refuses whatever
    the data, else "line N: message" (checked when a version is saved)."""
    try:
        compile_part(source, html=html)
        refused = _call_refused((HTML_ENVIRONMENT if html else TEXT_ENVIRONMENT).parse(source))
        if refused is not None:
            raise refused
    except TemplateSyntaxError as error:
        return f"line {error.lineno}: {error.message}"
    except RecursionError:
        return "the template is nested too deeply"
    return None
