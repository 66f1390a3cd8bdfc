"""A stream's own SES configuration set reaches SES (moto, through a real worker)."""

import pytest

from emailsvc.streams.services import stream_create
from tests.conftest import poll
from tests.emailsvc.conftest import send, unique

pytestmark = [pytest.mark.worker]


def test_a_streams_configuration_set_is_the_one_its_emails_use(ses_stack, key, moto_server):
    moto_server.client("sesv2").create_configuration_set(ConfigurationSetName="digests-set")
    stream_create(name="digests", configuration_set="digests-set")
    ses_stack.start_worker()
    digest, receipt = unique("digest"), unique("receipt")
    send(ses_stack, key, email_id=digest, stream="digests")
    send(ses_stack, key, email_id=receipt)

    def raw(email_id: str) -> list[str]:
        return [m["raw_data"] for m in moto_server.sent_raw_messages() if email_id in m["raw_data"]]

    sent = poll(lambda: (raw(digest), raw(receipt)), until=lambda found: all(found), timeout=30)
    assert "X-SES-CONFIGURATION-SET: digests-set" in sent[0][0]
    assert "X-SES-CONFIGURATION-SET" not in sent[1][0]  # no SES_CONFIGURATION_SET here: the global default is none
