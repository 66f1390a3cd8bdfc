"""The rendering engine: escaping, missing variables, the sandbox, the bounds,
CSS inlining and the generated text part (templates_app.rendering via
services.template_render)."""

import time

import pytest

from templates_app.errors import TemplateRenderError
from templates_app.models import Template, TemplateVersion
from templates_app.rendering import compile as compiling
from templates_app.services import template_render


def unsaved(**fields) -> TemplateVersion:
    """A version that is not stored: rendered without the compile cache or layouts."""
    fields.setdefault("subject", "Subject")
    return TemplateVersion(template=Template(name="unsaved"), **fields)


def render(data=None, **fields):
    return template_render(version=unsaved(**fields), data=data if data is not None else {})


def render_error(data=None, **fields) -> TemplateRenderError:
    with pytest.raises(TemplateRenderError) as caught:
        render(data, **fields)
    assert caught.value.code == "template_render_error"
    assert caught.value.http_status == 400
    return caught.value


# --- Escaping ---------------------------------------------------------------


def test_data_is_escaped_in_html_and_intact_in_text_and_subject():
    attack = '<script>alert("x")</script>'
    rendered = render(
        {"name": attack},
        subject="Hi {{ name }}",
        html="<p>Hi {{ name }}</p><a href=\"{{ name }}\">x</a>",
        text="Hi {{ name }}",
    )
    assert "<script>" not in rendered.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in rendered.html
    assert rendered.text == f"Hi {attack}"
    assert rendered.subject == f"Hi {attack}"


def test_subject_and_sender_name_are_one_line_whatever_the_data():
    rendered = render(
        {"name": "Jane\r\nBcc: victim@example.com"}, subject="Hi {{ name }}", text="x", from_name="{{ name }}"
    )
    assert rendered.subject == "Hi Jane Bcc: victim@example.com"
    assert "\n" not in rendered.from_name and "\r" not in rendered.from_name


def test_only_the_templates_own_line_breaks_and_spaces_are_collapsed_in_one_line_parts():
    data = {"name": "a\x07b\u00a0c\x1fd"}
    rendered = render(data, subject="  Hi\n   {{ name }}  ", text="x", from_name="{{ name }}")
    assert rendered.subject == "Hi a\x07b\u00a0c\x1fd"  # kept, so the send refuses the control characters
    assert rendered.from_name == "a\x07b\u00a0c\x1fd"


@pytest.mark.parametrize("part", ["subject", "html", "text", "from_name"])
def test_an_unpaired_surrogate_reaching_any_part_is_a_render_error(part):
    fields = {"subject": "s", "text": "t", part: "x{{ v }}y"}
    error = render_error({"v": "\udc80"}, **fields)
    assert part in error.fields and "surrogate" in str(error)


def test_json_null_prints_as_nothing():
    assert render({"middle": None}, text="a{{ middle }}b").text == "ab"


# --- Missing variables ------------------------------------------------------


def test_missing_variables_are_an_error_naming_each_of_them():
    error = render_error(
        {"user": {"first": "Jane"}, "items": [1]},
        subject="Hello {{ first_name }}",
        html="<p>{{ user.first }} {{ user.last }} {{ items[3] }} {{ reset_url }}</p>",
        text="{{ reset_url }}",
    )
    assert error.variables == ["first_name", "user.last", "items[3]", "reset_url"]
    assert error.fields == {
        "subject": ["Missing variable 'first_name'."],
        "html": ["Missing variable 'user.last'.", "Missing variable 'items[3]'.", "Missing variable 'reset_url'."],
        "text": ["Missing variable 'reset_url'."],
    }
    assert "first_name" in error.detail and "reset_url" in error.detail


@pytest.mark.parametrize(
    "source",
    [
        "{% if vip %}VIP{% endif %}",
        "{% for item in items %}{{ item }}{% endfor %}",
        "{{ total + 1 }}",
        "{{ name|upper }}",
        "{{ order.lines[0].price }}",
    ],
)
def test_every_use_of_a_missing_variable_is_an_error_never_a_blank(source):
    error = render_error({"order": {}}, text=source)
    assert error.variables


def test_a_missing_key_names_its_path_in_the_data():
    error = render_error({"order": {"lines": [{"name": "pen"}]}}, text="{% for line in order.lines %}{{ line.price }}{% endfor %}")
    assert error.variables == ["order.lines[0].price"]


def test_optional_variables_use_is_defined_or_default():
    rendered = render(
        {"name": "Jane"},
        text="{{ nickname|default(name) }}{% if coupon is defined %} {{ coupon }}{% endif %}",
    )
    assert rendered.text == "Jane"


# --- The sandbox ------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "{{ data.__class__ }}",
        "{{ data.__class__.__mro__ }}",
        "{{ name.__class__ }}",
        "{{ ''.__class__.__base__.__subclasses__() }}",
        "{{ range.__globals__ }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ items|map(attribute='__class__')|list }}",
        "{{ name.__len__ }}",
    ],
)
def test_a_template_cannot_reach_python_attributes(source):
    error = render_error({"data": {"a": 1}, "name": "Jane", "items": [{"a": 1}]}, text=source)
    assert "class" not in str(error.fields).replace("'__class__'", "")


@pytest.mark.parametrize(
    "source",
    [
        "{{ name.upper() }}",
        "{{ data.items() }}",
        "{{ data.keys() }}",
        "{{ '{0}'.format(name) }}",
        "{{ items.append(1) }}",
        "{{ lipsum() }}",
        "{{ cycler('a') }}",
        "{{ dict(a=1) }}",
        "{{ name|attr('upper') }}",
    ],
)
def test_a_template_cannot_call_methods_or_python_functions(source):
    render_error({"data": {"a": 1}, "name": "Jane", "items": []}, text=source)


@pytest.mark.parametrize("name", ["config", "request", "settings", "SECRET_KEY", "environment", "os", "__builtins__"])
def test_a_template_sees_nothing_but_its_data(name, settings):
    error = render_error({}, text=f"{{{{ {name} }}}}{{{{ {name}.SECRET_KEY }}}}")
    assert error.variables == [name]
    assert settings.SECRET_KEY not in error.detail


def test_keys_of_objects_and_items_of_lists_are_readable():
    rendered = render(
        {"order": {"items": [{"name": "pen", "price": 2}, {"name": "ink", "price": 3}], "keys": "k"}},
        text="{{ order.items|length }} {{ order.items[1].name }} {{ order['keys'] }} "
        "{{ order.items|map(attribute='price')|sum }} {% for item in order.items %}{{ loop.index }}{{ item.name }} {% endfor %}",
    )
    assert rendered.text == "2 ink k 5 1pen 2ink "


# --- Bounds: hostile templates --------------------------------------------


def assert_stopped_quickly(data, source, *, within: float = 1.5) -> TemplateRenderError:
    started = time.monotonic()
    error = render_error(data, text=source)
    assert time.monotonic() - started < within
    return error


def test_a_loop_of_a_million_iterations_is_stopped_within_a_second():
    error = assert_stopped_quickly({}, "{% for i in range(1000000) %}x{% endfor %}")
    assert "range()" in error.detail


def test_nested_loops_over_a_big_list_from_the_data_are_stopped():
    data = {"big": list(range(20_000))}
    error = assert_stopped_quickly(data, "{% for a in big %}{% for b in big %}{% endfor %}{% endfor %}")
    assert "loop iterations" in error.detail


def test_nested_loops_under_the_range_cap_are_stopped():
    error = assert_stopped_quickly({}, "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}")
    assert "loop iterations" in error.detail


def test_the_time_budget_stops_a_render_the_iteration_budget_allows(settings):
    settings.TEMPLATE_RENDER_MAX_ITERATIONS = 10**9
    settings.TEMPLATE_RENDER_MAX_SECONDS = 0.3
    data = {"big": list(range(20_000))}
    error = assert_stopped_quickly(data, "{% for a in big %}{% for b in big %}{% endfor %}{% endfor %}", within=1.0)
    assert "longer than 0.3 s" in error.detail


@pytest.mark.parametrize(
    "source",
    [
        '{{ "x" * 100000000 }}',
        "{{ [1] * 100000000 }}",
        "{{ 9 ** (9 ** 9) }}",
        '{{ "x"|center(1000000000) }}',
        '{{ "%0999999999d"|format(1) }}',
        '{{ "%0999999999d" % 1 }}',
        '{{ s|replace("", s) }}',
        "{{ [1, 2]|batch(100000000, 'x')|list }}",
        "{{ s|wordwrap(1, wrapstring=s) }}",
        "{{ big|join(s) }}",
        "{{ s|indent(s) }}",
        # doubling a string 40 times
        '{% set ns = namespace(s="xxxxxxxxxx") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}',
        '{% set ns = namespace(s="xxxxxxxxxx") %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}',
    ],
)
def test_huge_values_are_refused_before_they_are_built(source):
    assert_stopped_quickly({"s": ("y" * 9 + "\n") * 10_000, "big": list(range(10_000))}, source)


def test_values_kept_in_variables_count_against_the_work_budget():
    source = "".join(f"{{% set v{n} = [0] * 200000 %}}" for n in range(15))
    error = assert_stopped_quickly({}, source)
    assert "in all" in error.detail


def test_infinite_macro_recursion_is_stopped():
    error = assert_stopped_quickly({}, "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
    assert "nested more than" in error.detail


def test_exponential_macro_fan_out_is_stopped():
    source = "{% macro f(n) %}{% if n < 40 %}{{ f(n + 1) }}{{ f(n + 1) }}{% else %}x{% endif %}{% endmacro %}{{ f(0) }}"
    assert_stopped_quickly({}, source)


def test_output_larger_than_the_limit_is_refused(settings):
    settings.TEMPLATE_RENDER_MAX_BYTES = 10_000
    error = assert_stopped_quickly({}, "{% for i in range(10000) %}0123456789{% endfor %}")
    assert "larger than 10000" in error.detail


# --- After rendering --------------------------------------------------------


def test_css_is_inlined_into_the_html():
    rendered = render({}, html="<html><head><style>p{color:red}</style></head><body><p>Hi</p></body></html>")
    assert '<p style="color: red;">Hi</p>' in rendered.html
    assert "<style>" not in rendered.html


def test_media_queries_stay_and_remote_stylesheets_are_not_inlined():
    html = (
        '<html><head><link rel="stylesheet" href="http://127.0.0.1:9/x.css">'
        "<style>p{color:red} @media (max-width: 600px) { p { color: blue } }</style></head><body><p>Hi</p></body></html>"
    )
    rendered = render({}, html=html)
    assert "@media (max-width: 600px)" in rendered.html
    assert '<link rel="stylesheet" href="http://127.0.0.1:9/x.css">' in rendered.html
    assert '<p style="color: red;">' in rendered.html


def test_generated_text_part_is_readable():
    html = """
    <html><head><style>h1 { color: blue }</style></head><body>
    <div style="display:none">hidden preheader</div>
    <table role="presentation"><tr><td>
      <h1>Welcome, {{ name }}</h1>
      <p>Thanks for joining <b>Acme</b>. Please <a href="https://example.com/confirm?a=1&amp;b=2">confirm your address</a>.</p>
      <ul><li>First step</li><li>Second step</li></ul>
      <ol><li>one</li><li>two</li></ol>
      <p>Questions? <a href="mailto:help@example.com">help@example.com</a> or <a href="https://example.com">https://example.com</a></p>
    </td></tr></table>
    </body></html>
    """
    text = render({"name": "Jane"}, html=html).text
    lines = text.splitlines()
    assert lines[0] == "Welcome, Jane"
    assert lines[1] == ""
    assert "Please confirm your address (https://example.com/confirm?a=1&b=2)." in text
    assert "  * First step\n  * Second step" in text
    assert " 1. one\n 2. two" in text
    assert "Questions? help@example.com or https://example.com" in text
    assert "hidden preheader" not in text
    assert "<" not in text and "color" not in text


def test_a_data_table_stays_a_table_in_the_text_part():
    html = "<table><tr><th>Item</th><th>Price</th></tr><tr><td>Pen</td><td>2</td></tr></table>"
    assert render({}, html=html).text == "Item  Price\nPen   2\n"


def test_a_given_text_part_is_used_as_written():
    rendered = render({"name": "Jane"}, html="<h1>Hi {{ name }}</h1>", text="Plain {{ name }}\n")
    assert rendered.text == "Plain Jane\n"


def test_rendering_a_stored_version_many_times_compiles_it_once(make_template, monkeypatch):
    calls = []
    compile_part = compiling.compile_part

    def counting(source, *, html):
        calls.append(source)
        return compile_part(source, html=html)

    monkeypatch.setattr(compiling, "compile_part", counting)
    version = make_template("batch", subject="Hi {{ name }}", html="<p>{{ name }}</p>", text="{{ name }}")
    calls.clear()
    for index in range(500):
        assert template_render(version=version, data={"name": f"n{index}"}).subject == f"Hi n{index}"
    assert len(calls) == 3  # subject, html, text: each once
