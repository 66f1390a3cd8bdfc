"""What a template prints, formats or joins is data: template internals (range,
namespace, macros, loop, self, the iterators of map/select) reached through
`format`, `%`, `~`, `join`, `string` or a bare `{{ }}` are a 400
template_render_error, never a Python repr with a memory address."""

import re

import pytest

pytestmark = pytest.mark.django_db

DATA = {"name": "Jo", "items": ["a", "b"]}
LEAK = re.compile(
    r"0x[0-9a-fA-F]{4,}|<function|<class|<Namespace|<Macro|<LoopContext|<generator|<map|<TemplateReference"
    r"|object at|jinja2|templates_app|builtin"
)
INTERNALS = [
    '{{ "%s"|format(range) }}',
    '{{ "%s"|format(namespace) }}',
    '{{ "%s"|format(namespace()) }}',
    '{% macro m() %}x{% endmacro %}{{ "%s"|format(m) }}',
    '{% for x in items %}{{ "%s"|format(loop) }}{% endfor %}',
    '{{ "%s"|format(items|map("upper")) }}',
    '{{ "%s"|format(items|select) }}',
    '{{ "%s"|format(self) }}',
    '{{ "%(a)s"|format(a=range) }}',
    '{{ "%s"|format([1, {"k": range}]) }}',
    '{{ "%s" % range }}',
    '{{ "%s" % (range,) }}',
    '{{ "%(a)s" % {"a": namespace} }}',
    "{{ range }}",
    "{{ namespace() }}",
    "{{ self }}",
    "{{ [range] }}",
    "{% for x in items %}{{ loop }}{% endfor %}",
    '{{ items|map("upper") }}',
    "{{ items|select }}",
    '{{ range ~ "" }}',
    "{{ range|string }}",
    "{{ [range]|join }}",
    '{{ items|join(range) }}',
    "{{ range|upper }}",
    "{{ range|e }}",
    '{{ "{}".format(range) }}',
    '{{ {"a": range}|tojson }}',
]


def _leaks(response) -> list[str]:
    return LEAK.findall(response.content.decode())


@pytest.mark.parametrize("source", INTERNALS)
def test_a_template_internal_is_never_shown(full_api, source):
    for part in ("text", "subject", "html"):
        body = {"name": "leak", "subject": "s", "text": "t", part: source}
        created = full_api.post("/api/v1/templates", body, format="json")
        assert not _leaks(created), (part, created.content)
        if created.status_code != 201:
            assert created.status_code == 400, (part, created.content)
            assert created.json()["error"] in ("template_render_error", "template_invalid"), part
            continue
        rendered = full_api.post("/api/v1/templates/leak/render", {"data": DATA}, format="json")
        sent = full_api.post(
            "/api/v1/emails", {"to": "jane@example.com", "template": "leak", "template_data": DATA}, format="json"
        )

        assert rendered.status_code == 400, (part, rendered.content)
        assert rendered.json()["error"] == "template_render_error", part
        assert not _leaks(rendered), (part, rendered.content)
        assert sent.status_code == 400 and sent.json()["error"] == "template_render_error", (part, sent.content)
        assert not _leaks(sent), (part, sent.content)
        assert full_api.delete("/api/v1/templates/leak").status_code == 204


def test_strings_numbers_and_data_still_format_join_and_print(full_api):
    text = (
        '{{ "%s is %d, %.1f, %s"|format(name, 3, 2.5, items) }}|{{ "%(n)s" % {"n": name} }}|'
        '{{ items|map("upper")|join(",") }}|{{ items|select|list }}|{{ name ~ 1 }}|{{ range(2)|list }}|'
        '{% for x in items %}{{ loop.index }}{{ loop.cycle("x", "y") }}{% endfor %}|{{ items }}'
    )
    full_api.post("/api/v1/templates", {"name": "data", "subject": "s", "text": text}, format="json")

    rendered = full_api.post("/api/v1/templates/data/render", {"data": DATA}, format="json")

    assert rendered.status_code == 200, rendered.content
    assert rendered.json()["text"] == "Jo is 3, 2.5, ['a', 'b']|Jo|A,B|['a', 'b']|Jo1|[0, 1]|1x2y|['a', 'b']"
