"""The templates admin: saving makes a new version through the service, the
preview, the diff, deleting, and the test email."""

import json

import pytest

from emailsvc.models import Message
from templates_app.models import Template, TemplateVersion
from templates_app.rendering.sandbox import CALLABLE
from templates_app.services import template_update

CHANGELIST = "/admin/templates_app/template/"


def form_data(response) -> dict:
    """What the browser would post back: the admin form and its inline formsets."""
    form = response.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form.initial.get(name, field.initial)
        if value is None:
            continue
        if name == "sample_data":
            value = json.dumps(value)
        data[name] = value
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for key, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{key}"] = value
        for subform in formset.forms:
            for name in subform.fields:
                value = subform.initial.get(name)
                if value is not None:
                    data[subform.add_prefix(name)] = getattr(value, "pk", value)
    return data


@pytest.fixture
def welcome(make_template):
    return make_template(
        "welcome", subject="Welcome {{ name }}", html="<style>p{color:red}</style><p>Hi {{ name }}</p>",
        sample_data={"name": "Jane"},
    )


def test_editing_a_template_in_the_admin_saves_a_new_version(admin_client, welcome):
    url = f"{CHANGELIST}{welcome.template_id}/change/"
    data = form_data(admin_client.get(url))
    data["subject"] = "Hello {{ name }}"
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    versions = list(TemplateVersion.objects.filter(template=welcome.template).order_by("version"))
    assert [(v.version, v.subject) for v in versions] == [(1, "Welcome {{ name }}"), (2, "Hello {{ name }}")]
    assert versions[1].created_by == "admin:admin"
    assert Template.objects.get(pk=welcome.template_id).latest_version == 2


def test_saving_an_unchanged_form_makes_no_version(admin_client, welcome):
    url = f"{CHANGELIST}{welcome.template_id}/change/"
    assert admin_client.post(url, form_data(admin_client.get(url))).status_code == 302
    assert TemplateVersion.objects.filter(template=welcome.template).count() == 1


def test_an_invalid_edit_is_shown_on_the_form_and_saves_nothing(admin_client, welcome):
    url = f"{CHANGELIST}{welcome.template_id}/change/"
    data = form_data(admin_client.get(url))
    data["html"] = "<p>\n{{ name }</p>"
    response = admin_client.post(url, data)
    assert response.status_code == 200
    assert response.context["adminform"].form.errors["html"][0].startswith("line 2:")
    assert TemplateVersion.objects.filter(template=welcome.template).count() == 1


def test_a_call_the_sandbox_refuses_is_shown_on_the_form_and_saves_nothing(admin_client, welcome):
    url = f"{CHANGELIST}{welcome.template_id}/change/"
    data = form_data(admin_client.get(url))
    data["html"] = "<p>Hi</p>\n<p>{{ name.upper() }}</p>"

    response = admin_client.post(url, data)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["html"] == [f"line 2: 'name.upper' cannot be called: {CALLABLE}"]
    assert TemplateVersion.objects.filter(template=welcome.template).count() == 1


def test_adding_a_template_in_the_admin_creates_version_1(admin_client, db):
    response = admin_client.post(f"{CHANGELIST}add/", {
        "name": "fresh", "subject": "Hi", "text": "Hello {{ who }}", "sample_data": '{"who": "you"}',
        "versions-TOTAL_FORMS": "0", "versions-INITIAL_FORMS": "0",
        "versions-MIN_NUM_FORMS": "0", "versions-MAX_NUM_FORMS": "1000",
    })
    assert response.status_code == 302
    version = TemplateVersion.objects.get(template__name="fresh")
    assert (version.version, version.text, version.sample_data) == (1, "Hello {{ who }}", {"who": "you"})


def test_the_change_page_shows_the_latest_version_rendered_with_its_sample_data(admin_client, welcome):
    response = admin_client.get(f"{CHANGELIST}{welcome.template_id}/change/")
    page = response.content.decode()
    assert response.context["preview"].subject == "Welcome Jane"
    assert 'sandbox=""' in page and "srcdoc=" in page
    assert "&lt;p style=&quot;color: red;&quot;&gt;Hi Jane&lt;/p&gt;" in page  # the rendered html, in srcdoc


def test_the_preview_endpoint_renders_the_unsaved_form(admin_client, welcome):
    url = f"{CHANGELIST}{welcome.template_id}/change/"
    data = form_data(admin_client.get(url))
    data.update(subject="Draft {{ name }}", template_id=welcome.template_id)
    answer = admin_client.post(f"{CHANGELIST}preview/", data).json()
    assert answer.get("subject") == "Draft Jane", answer
    assert "Hi Jane" in answer["html"]
    data["html"] = "<p>{{ nobody }}</p>"
    answer = admin_client.post(f"{CHANGELIST}preview/", data).json()
    assert answer["fields"] == {"html": ["Missing variable 'nobody'."]}
    assert TemplateVersion.objects.filter(template=welcome.template).count() == 1


def test_a_version_preview_is_sandboxed(admin_client, welcome):
    response = admin_client.get(f"{CHANGELIST}{welcome.template_id}/versions/1/preview/")
    assert response["Content-Security-Policy"] == "sandbox"
    assert "Hi Jane" in response.content.decode()


def test_the_diff_shows_what_changed_between_two_versions(admin_client, welcome):
    template_update(name="welcome", data={"subject": "Greetings {{ name }}"})
    response = admin_client.get(f"{CHANGELIST}{welcome.template_id}/diff/?a=1&b=2")
    assert response.status_code == 200
    assert [name for name, _ in response.context["tables"]] == ["subject"]
    page = response.content.decode()
    assert '<span class="diff_sub">Welcome&nbsp;' in page and '<span class="diff_add">Greetings&nbsp;' in page


def test_deleting_a_template_in_use_is_refused_in_the_admin(admin_client, welcome):
    Message.objects.create(from_email="a@example.com", subject="s", text="t", provider="console",
                           template_name="welcome", status="scheduled")
    response = admin_client.post(f"{CHANGELIST}{welcome.template_id}/delete/", {"post": "yes"}, follow=True)
    assert "scheduled or queued email" in response.content.decode()
    assert Template.objects.filter(name="welcome").exists()


def test_send_a_test_email_to_me_submits_the_template_with_its_sample_data(admin_client, admin_user, welcome):
    response = admin_client.post(CHANGELIST, {"action": "send_test_to_me", "_selected_action": [welcome.template_id]},
                                 follow=True)
    assert response.status_code == 200
    message = Message.objects.get()
    assert message.subject == "Welcome Jane"
    assert '<p style="color: red;">Hi Jane</p>' in message.html and message.text.strip() == "Hi Jane"
    assert [r.email for r in message.recipients.all()] == [admin_user.email]
    assert (message.template_name, message.template_version, message.tags) == ("welcome", 1, ["template-test"])


def test_the_admin_pages_render_for_every_kind_of_template(admin_client, db):
    from templates_app.services import template_examples_load

    template_examples_load()
    assert admin_client.get(CHANGELIST).status_code == 200
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 200
    for template in Template.objects.all():
        response = admin_client.get(f"{CHANGELIST}{template.pk}/change/")
        assert response.status_code == 200
        assert "preview_error" not in response.context, template.name
        assert response.context["preview"].subject
