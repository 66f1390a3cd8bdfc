"""Saving, versioning, layouts, MJML, resolving and deleting templates
(templates_app.services), against the real database."""

import pytest

from core.errors import NotFound, ValidationFailed
from emailsvc.models import Message
from emailsvc.selectors import template_pending_messages
from templates_app.errors import (
    TemplateInUse,
    TemplateInvalid,
    TemplateNotFound,
    TemplateRenderError,
)
from templates_app.models import TemplateVersion
from templates_app.services import (
    EXAMPLE_NAMES,
    template_create,
    template_delete,
    template_examples_load,
    template_ref_parse,
    template_render,
    template_resolve,
    template_update,
)


def invalid(call, **kwargs) -> TemplateInvalid:
    with pytest.raises(TemplateInvalid) as caught:
        call(**kwargs)
    assert caught.value.code == "template_invalid"
    return caught.value


# --- Versions ---------------------------------------------------------------


def test_each_save_is_a_new_version_and_old_versions_never_change(make_template):
    first = make_template("welcome", subject="Hi {{ name }}", html="<p>v1</p>")
    second = template_update(name="welcome", data={"subject": "Hello {{ name }}"}, created_by="tests")
    third = template_update(name="welcome", data={"html": "<p>v3</p>"}, created_by="tests")
    assert (first.version, second.version, third.version) == (1, 2, 3)
    stored = {v.version: v for v in TemplateVersion.objects.filter(template__name="welcome")}
    assert (stored[1].subject, stored[1].html) == ("Hi {{ name }}", "<p>v1</p>")
    assert (stored[2].subject, stored[2].html) == ("Hello {{ name }}", "<p>v1</p>")  # html kept from v2's parent
    assert (stored[3].subject, stored[3].html) == ("Hello {{ name }}", "<p>v3</p>")
    assert template_resolve(name="welcome").version == 3


def test_a_pinned_version_renders_its_own_content(make_template):
    make_template("welcome", subject="Old {{ name }}", text="old")
    template_update(name="welcome", data={"subject": "New {{ name }}", "text": "new"})
    name, number = template_ref_parse("welcome@1")
    pinned = template_render(version=template_resolve(name=name, version=number), data={"name": "Jo"})
    latest = template_render(version=template_resolve(name="welcome"), data={"name": "Jo"})
    assert (pinned.subject, pinned.text) == ("Old Jo", "old")
    assert (latest.subject, latest.text) == ("New Jo", "new")


@pytest.mark.parametrize(
    "ref, expected",
    [("welcome", ("welcome", None)), ("welcome@3", ("welcome", 3)), ("password-reset@12", ("password-reset", 12)),
     (" invite ", ("invite", None))],
)
def test_template_ref_parse(ref, expected):
    assert template_ref_parse(ref) == expected


@pytest.mark.parametrize("ref", ["", "welcome@", "welcome@0", "welcome@x", "@3", "Welcome", "a@1@2", "we lcome"])
def test_a_malformed_reference_is_template_not_found(ref):
    with pytest.raises(TemplateNotFound):
        template_ref_parse(ref)


def test_resolving_an_unknown_template_or_version_is_a_400_template_not_found(make_template):
    make_template("welcome")
    for name, version in (("nope", None), ("welcome", 2)):
        with pytest.raises(TemplateNotFound) as caught:
            template_resolve(name=name, version=version)
        assert isinstance(caught.value, ValidationFailed)
        assert (caught.value.code, caught.value.http_status) == ("template_not_found", 400)


def test_update_leaves_out_fields_it_is_not_given_and_html_replaces_mjml(make_template):
    make_template("reset", subject="S", mjml="<mjml><mj-body><mj-text>{{ a }}</mj-text></mj-body></mjml>",
                  from_name="Team", sample_data={"a": 1})
    kept = template_update(name="reset", data={"subject": "S2"})
    assert kept.mjml and "{{ a }}" in kept.html and kept.from_name == "Team" and kept.sample_data == {"a": 1}
    switched = template_update(name="reset", data={"html": "<p>{{ a }}</p>"})
    assert (switched.mjml, switched.html) == ("", "<p>{{ a }}</p>")


def test_updating_an_unknown_template_is_404(db):
    with pytest.raises(NotFound) as caught:
        template_update(name="nope", data={"subject": "x"})
    assert caught.value.code == "template_not_found"


# --- Checks on save ---------------------------------------------------------


def test_a_jinja_syntax_error_names_the_part_and_the_line(make_template):
    error = invalid(make_template, name="broken", html="<p>\nfine\n{{ name }</p>")
    assert list(error.fields) == ["html"]
    assert error.fields["html"][0].startswith("line 3:")
    error = invalid(make_template, name="broken", subject="{% if x %}")
    assert list(error.fields) == ["subject"]


@pytest.mark.parametrize(
    "source, word",
    [
        ('{% include "other" %}', "include"),
        ('{% extends "base" %}', "extends"),
        ('{% import "m" as m %}', "import"),
        ('{% from "m" import x %}', "import"),
        ("{% for x in tree recursive %}{{ loop(x.children) }}{% endfor %}", "Recursive"),
    ],
)
def test_include_extends_import_and_recursive_loops_are_refused(make_template, source, word):
    error = invalid(make_template, name="t", text=f"line one\n{source}")
    assert word in error.fields["text"][0] and error.fields["text"][0].startswith("line 2:")


def test_a_static_sender_address_is_checked_on_save_and_one_with_variables_on_render(make_template):
    error = invalid(make_template, name="t", from_email="not-an-address")
    assert list(error.fields) == ["from"]
    version = make_template("t", text="x", from_email="{{ team }}@example.com", reply_to="{{ reply }}",
                            from_name="{{ team|title }} team")
    rendered = template_render(version=version, data={"team": "sales", "reply": "boss@example.com"})
    assert (rendered.from_email, rendered.from_name, rendered.reply_to) == (
        "sales@example.com", "Sales team", "boss@example.com",
    )


def test_a_template_needs_a_subject_and_a_body(db):
    assert "subject" in invalid(template_create, name="t", data={"subject": " ", "text": "x"}).fields
    assert invalid(template_create, name="t", data={"subject": "s"}).fields.keys() == {"html", "text", "mjml"}
    both = invalid(template_create, name="t", data={"subject": "s", "html": "<p>x</p>", "mjml": "<mjml></mjml>"})
    assert "mjml" in both.fields


# --- MJML -------------------------------------------------------------------

MJML = """<mjml>
  <mj-body>
    <mj-section>
      <mj-column>
        <mj-text>Hi {{ name }}</mj-text>
        <mj-button href="{{ url }}">Go</mj-button>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>"""


def test_mjml_is_compiled_to_html_on_save_and_rendered_like_html(make_template):
    version = make_template("m", mjml=MJML)
    assert version.mjml == MJML
    assert version.html.startswith("<!doctype html>") and "{{ name }}" in version.html
    rendered = template_render(version=version, data={"name": "<Jane>", "url": "https://example.com/?a=1&b=2"})
    assert "Hi &lt;Jane&gt;" in rendered.html
    assert 'href="https://example.com/?a=1&amp;b=2"' in rendered.html
    assert "Hi <Jane>" in rendered.text and "Go (https://example.com/?a=1&b=2)" in rendered.text


@pytest.mark.parametrize(
    "source, line",
    [
        # a closing tag that closes nothing (MRML notices two lines later)
        ("<mjml>\n<mj-body>\n<mj-section>\n</mj-column>\n</mj-section>\n</mj-body>\n</mjml>", 4),
        # closing tags out of order (MRML accepts it silently)
        ("<mjml>\n<mj-body>\n<mj-section>\n<mj-column>\n<mj-text>x</mj-column>\n"
         "</mj-section>\n</mj-body>\n</mjml>", 5),
        # MRML reports a byte span: the line it falls on
        ("<mjml>\n<mj-head>\n<mj-foo />\n</mj-head>\n<mj-body></mj-body>\n</mjml>", 3),
        # "unable to parse next template" (no position): the first line that fails
        ("<mjml>\n<mj-body>\n<mj-section>\n<mj-column>\n<mj-text>x < y</mj-text>\n"
         "</mj-column>\n</mj-section>\n</mj-body>\n</mjml>", 5),
        ("<mjml>\n<mj-body>\n<mj-section>\n<mj-column>\n<mj-button href=a>x</mj-button>\n"
         "</mj-column>\n</mj-section>\n</mj-body>\n</mjml>", 5),
        # an element left open
        ("<mjml>\n<mj-body>\n<mj-section>\n<mj-column>\n<mj-image src=\"x\">\n"
         "</mj-column>\n</mj-section>\n</mj-body>\n</mjml>", 5),
        # an include cannot read files
        ("<mjml>\n<mj-body>\n<mj-include path=\"/etc/passwd\" />\n</mj-body>\n</mjml>", 3),
    ],
)
def test_bad_mjml_is_answered_with_its_line(make_template, source, line):
    error = invalid(make_template, name="m", mjml=source)
    assert list(error.fields) == ["mjml"]
    assert error.fields["mjml"][0].startswith(f"line {line}:"), error.fields


def test_jinja_errors_in_mjml_name_the_mjml_line(make_template):
    error = invalid(make_template, name="m", mjml=MJML.replace("{{ url }}", "{{ url }"))
    assert error.fields["mjml"][0].startswith("line 6:")


# --- Layouts ----------------------------------------------------------------

LAYOUT_HTML = "<html><head><style>.brand{color:red}</style></head><body><div class=\"brand\">{{ brand }}</div>{{ content }}</body></html>"


def test_a_layout_wraps_the_html_and_the_text(make_template):
    make_template("base", html=LAYOUT_HTML, text="{{ content }}\n-- {{ brand }}\n")
    version = make_template("invite", subject="Join {{ team }}", html="<p>Join <b>{{ team }}</b></p>",
                            text="Join {{ team }}\n", layout="base")
    rendered = template_render(version=version, data={"team": "<Design>", "brand": "Acme"})
    assert '<div class="brand" style="color: red;">Acme</div><p>Join <b>&lt;Design&gt;</b></p>' in rendered.html
    assert rendered.text == "Join <Design>\n\n-- Acme\n"
    assert rendered.subject == "Join <Design>"


def test_a_layout_follows_its_latest_version_unless_pinned(make_template):
    make_template("base", html="<div>v1 {{ content }}</div>")
    template_update(name="base", data={"html": "<div>v2 {{ content }}</div>"})
    follows = make_template("a", html="<p>a</p>", layout="base")
    pinned = make_template("b", html="<p>b</p>", layout="base@1")
    assert "v2 <p>a</p>" in template_render(version=follows, data={}).html
    assert "v1 <p>b</p>" in template_render(version=pinned, data={}).html


def test_missing_variables_of_the_layout_are_reported_with_the_template_s(make_template):
    make_template("base", html="<div>{{ brand }}{{ content }}</div>")
    version = make_template("a", html="<p>{{ name }}</p>", layout="base")
    with pytest.raises(TemplateRenderError) as caught:
        template_render(version=version, data={})
    assert caught.value.variables == ["name", "brand"]


def test_a_layout_cycle_is_refused(make_template):
    make_template("outer", html="<div>{{ content }}</div>")
    make_template("inner", html="<p>x</p>", layout="outer")
    error = invalid(template_update, name="outer", data={"layout": "inner"})
    assert "cycle" in error.fields["layout"][0] and "outer → inner → outer" in error.fields["layout"][0]
    error = invalid(template_update, name="outer", data={"layout": "outer"})
    assert "cycle" in error.fields["layout"][0]


def test_a_layout_must_exist_and_have_content(make_template):
    assert "layout" in invalid(make_template, name="a", layout="nope").fields
    make_template("plain", html="<div>no content here</div>")
    error = invalid(make_template, name="a", layout="plain")
    assert "content" in error.fields["layout"][0]


# --- Delete -----------------------------------------------------------------


def message_using(name: str, status: str) -> Message:
    """A stored message in that status, with the engine state that goes with it."""
    state = status if status in ("queued", "scheduled", "sending") else "done"
    return Message.objects.create(
        from_email="noreply@example.com", subject="s", text="t", provider="console",
        template_name=name, template_version=1, status=status, state=state,
    )


@pytest.mark.parametrize("status", ["queued", "scheduled"])
def test_delete_is_refused_while_a_pending_message_uses_the_template(make_template, status):
    make_template("welcome")
    message_using("welcome", status)
    with pytest.raises(TemplateInUse) as caught:
        template_delete(name="welcome", emails_pending=template_pending_messages)
    assert (caught.value.code, caught.value.http_status) == ("template_in_use", 409)
    assert template_resolve(name="welcome")


def test_delete_is_allowed_once_messages_are_sent(make_template):
    make_template("welcome")
    message_using("welcome", "delivered")
    template_delete(name="welcome", emails_pending=template_pending_messages)
    assert not TemplateVersion.objects.filter(template__name="welcome").exists()


def test_delete_is_refused_for_the_layout_of_another_template(make_template):
    make_template("base", html="<div>{{ content }}</div>")
    make_template("a", html="<p>a</p>", layout="base")
    with pytest.raises(TemplateInUse) as caught:
        template_delete(name="base", emails_pending=template_pending_messages)
    assert "layout of: a" in caught.value.detail


# --- Examples ---------------------------------------------------------------


def test_example_templates_load_once_and_render_with_their_sample_data(db):
    assert template_examples_load() == {name: True for name in EXAMPLE_NAMES}
    template_update(name="welcome", data={"subject": "Edited"})
    assert template_examples_load() == {name: False for name in EXAMPLE_NAMES}
    assert template_resolve(name="welcome").subject == "Edited"  # an edit is kept

    reset = template_resolve(name="password-reset")
    assert reset.mjml and not reset.text
    rendered = {name: template_render(version=template_resolve(name=name), data=template_resolve(name=name).sample_data)
                for name in ("welcome", "password-reset", "invite")}
    assert "Welcome, Jane!" in rendered["welcome"].html and "* Invite your team" in rendered["welcome"].text
    assert "Choose a new password (https://app.example.com/reset?token=3f9c2a)" in rendered["password-reset"].text
    invite = rendered["invite"]
    assert invite.subject == "Sam Lee invited you to Design on Acme"
    assert (invite.from_name, invite.reply_to) == ("Sam Lee via Acme", "sam@example.com")
    assert "Acme Inc., 1 Example Street" in invite.html and "Join Design" in invite.html  # wrapped in base-layout
    assert invite.text.endswith("--\nAcme · Acme Inc., 1 Example Street, Springfield\n")
