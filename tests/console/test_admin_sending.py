"""The suppressions admin: an address added in any spelling is stored in its
canonical form, one that cannot be sent to is refused, and the list finds an
entry by any spelling of the whole address."""

import pytest

from emailsvc.models import Suppression

pytestmark = pytest.mark.django_db
ADD = "/admin/emailsvc/suppression/add/"


def test_an_address_added_in_the_admin_is_stored_in_its_canonical_form(admin_client):
    form = {"email": ' "Jane"@Bücher.example ', "reason": "manual", "note": "", "source": ""}
    response = admin_client.post(ADD, form)

    assert response.status_code == 302
    assert list(Suppression.objects.values_list("email", flat=True)) == ["jane@xn--bcher-kva.example"]
    listed = admin_client.get("/admin/emailsvc/suppression/", {"q": '"JANE"@bücher.example'}).context["cl"].result_list
    assert [s.email for s in listed] == ["jane@xn--bcher-kva.example"]


@pytest.mark.parametrize("address", ["user@[192.0.2.1]", "user@localhost", "a%b@example.com", '"john doe"@example.com'])
def test_an_address_that_cannot_be_sent_to_is_refused_in_the_admin(admin_client, address):
    response = admin_client.post(ADD, {"email": address, "reason": "manual", "note": "", "source": ""})

    assert response.status_code == 200
    assert "cannot be sent" in response.context["adminform"].form.errors["email"][0]
    assert not Suppression.objects.exists()
