"""Compiling a template part once per process, with what a stored template may not do refused."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError
from jinja2.meta import find_undeclared_variables

from templates_app.rendering.sandbox import HTML_ENVIRONMENT, TEXT_ENVIRONMENT


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
