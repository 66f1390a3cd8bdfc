"""Calls the sandbox refuses at render whatever the data are refused when a
version is saved, with the render's words and the line; calls that may work
(macros, range, namespace, loop.cycle, what the template binds) are kept."""

import pytest

from templates_app.errors import TemplateRenderError
from templates_app.models import TemplateVersion
from templates_app.rendering.compile import syntax_problem
from templates_app.rendering.sandbox import CALLABLE
from templates_app.services import template_render


@pytest.mark.parametrize(
    "source, callee",
    [
        ("{{ name.upper() }}", "'name.upper'"),  # a method of a data value
        ("{{ user.name.title() }}", "'user.name.title'"),
        ("{{ items[0]() }}", "'items[0]'"),  # an item of data
        ("{{ name() }}", "'name'"),  # data itself
        ("{{ 'x'.join(items) }}", "'x'.join"),  # a method of a literal
        ('{{ "x"() }}', "a string"),
        ("{{ (name|lower)() }}", "this value"),  # a filter of data
        ("{{ (name ~ '!')() }}", "this value"),
        ("{% for u in users %}{{ u.name.upper() }}{% endfor %}", "'u.name.upper'"),  # a loop over data
        ("{% for k, v in d|items %}{{ v.strip() }}{% endfor %}", "'v.strip'"),
        ("{% set x = user.name %}{{ x.lower() }}", "'x.lower'"),  # a name set from data
        ("{% set x %}hi{% endset %}{{ x() }}", "'x'"),
        ("{% with a = user %}{{ a.keys() }}{% endwith %}", "'a.keys'"),
        ("{% for i in items %}{{ loop.index() }}{% endfor %}", "'loop.index'"),
    ],
)
def test_a_call_that_cannot_work_is_a_problem_at_save(source, callee):
    assert syntax_problem(f"first line\n{source}", html=False) == f"line 2: {callee} cannot be called: {CALLABLE}"
    assert syntax_problem(source, html=True).startswith("line 1: ")


@pytest.mark.parametrize(
    "source",
    [
        "{{ range(3)|list }}",
        "{% macro m() %}x{% endmacro %}{{ m() }}",
        "{% macro m() %}{{ caller() }}{% endmacro %}{% call m() %}x{% endcall %}",
        "{% macro m(f) %}{{ f(2)|list }}{% endmacro %}{{ m(range) }}",
        "{% set f = range %}{{ f(2)|list }}",
        "{% set ns = namespace(n=0) %}{% set ns.n = 1 %}{{ ns.n }}",
        "{% set ns = namespace(f=range) %}{{ ns.f(2)|list }}",
        "{% for i in [1, 2] %}{{ loop.cycle('odd', 'even') }}{{ loop.changed(i) }}{% endfor %}",
        "{% for f in [range] %}{{ f(1)|list }}{% endfor %}",
        "{% set fs = [range] %}{{ fs[0](2)|list }}",
        "{{ name|upper }}{{ name.upper }}",  # not a call: a missing key, reported at render
    ],
)
def test_a_call_that_may_work_is_kept(source):
    assert syntax_problem(source, html=False) is None


def test_a_version_stored_before_the_check_still_fails_at_render_with_the_same_rule(make_template):
    version = make_template("calls", text="{{ items[0] }}")
    TemplateVersion.objects.filter(pk=version.pk).update(text="{{ items[0]() }}")
    version.refresh_from_db()

    with pytest.raises(TemplateRenderError) as caught:
        template_render(version=version, data={"items": ["a"]})

    assert caught.value.fields["text"] == [f"line 1: a string cannot be called: {CALLABLE}"]
