"""SNS signature verification (tracking.sns): genuine messages pass, anything forged,
stale, malformed or pointing at a foreign certificate is rejected with a stable code.

No test touches the Internet: the test certificate is pre-loaded with
certificate_remember, and the download function is replaced by a guard that
fails the test if verification ever tries to fetch unexpectedly.
"""

import threading
import urllib.error
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.tracking.snssign import (
    SIGNING_CERT_URL,
    TEST_CERTIFICATE_PEM,
    self_signed_certificate_pem,
    signing_key_create,
    sns_notification,
    sns_sign,
    sns_subscription_confirmation,
    trust_test_certificate,
)
from tracking import sns
from tracking.sns import (
    SnsVerificationError,
    certificate_cache_clear,
    certificate_remember,
    certificate_url_allowed,
    sns_message_verify,
)

REAL_DOWNLOAD = sns._certificate_download
OTHER_CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-other.pem"


@pytest.fixture(autouse=True)
def downloads(monkeypatch) -> list[str]:
    """Trust only the test certificate; record (and refuse) every download attempt."""
    attempted: list[str] = []

    def refuse(url: str) -> bytes:
        attempted.append(url)
        raise AssertionError(f"unexpected certificate download: {url}")

    monkeypatch.setattr(sns, "_certificate_download", refuse)
    certificate_cache_clear()
    trust_test_certificate()
    yield attempted
    certificate_cache_clear()
    trust_test_certificate()


@pytest.fixture(scope="module")
def other_key():
    return signing_key_create()


def rejection(message: dict, **kwargs) -> SnsVerificationError:
    with pytest.raises(SnsVerificationError) as caught:
        sns_message_verify(message, **kwargs)
    return caught.value


# --- genuine messages ---------------------------------------------------------


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("subject", ["Amazon SES Email Event Notification", None])
def test_signed_notification_verifies(version, subject):
    message = sns_sign(sns_notification('{"eventType": "Bounce"}', subject=subject), version=version)

    sns_message_verify(message)


@pytest.mark.parametrize("version", ["1", "2"])
def test_signed_subscription_confirmation_verifies(version):
    sns_message_verify(sns_sign(sns_subscription_confirmation(), version=version))


def test_signed_unsubscribe_confirmation_verifies():
    message = sns_subscription_confirmation() | {"Type": "UnsubscribeConfirmation"}

    sns_message_verify(sns_sign(message))


def test_null_subject_is_treated_as_absent():
    message = sns_sign(sns_notification("hello"))
    message["Subject"] = None

    sns_message_verify(message)


def test_non_ascii_message_verifies_over_its_utf8_bytes():
    sns_message_verify(sns_sign(sns_notification("Zürich → 東京 ✉", subject="Grüße")))


def test_fields_outside_the_signature_may_change():
    message = sns_sign(sns_notification("hello"))
    message["UnsubscribeURL"] = "https://example.com/changed"
    message["MessageAttributes"] = {"x": {"Type": "String", "Value": "y"}}

    sns_message_verify(message)


# --- forged or altered messages -----------------------------------------------


@pytest.mark.parametrize("field", ["Message", "MessageId", "Subject", "Timestamp", "TopicArn"])
def test_altering_a_signed_notification_field_is_signature_invalid(field):
    message = sns_sign(sns_notification('{"eventType": "Bounce"}', subject="Bounce"))
    if field == "Timestamp":
        message[field] = message[field].replace("Z", "+00:00")  # same instant, other bytes
    else:
        message[field] += "x"

    assert rejection(message).code == "sns_signature_invalid"


@pytest.mark.parametrize("field", ["Token", "SubscribeURL"])
def test_altering_a_signed_confirmation_field_is_signature_invalid(field):
    message = sns_sign(sns_subscription_confirmation())
    message[field] = message[field].replace("sns.us-east-1.amazonaws.com", "evil.example") + "0"

    assert rejection(message).code == "sns_signature_invalid"


def test_adding_a_subject_after_signing_is_signature_invalid():
    message = sns_sign(sns_notification("hello"))
    message["Subject"] = "Injected"

    assert rejection(message).code == "sns_signature_invalid"


def test_removing_the_subject_after_signing_is_signature_invalid():
    message = sns_sign(sns_notification("hello", subject="Bounce"))
    del message["Subject"]

    assert rejection(message).code == "sns_signature_invalid"


def test_signature_by_another_key_is_signature_invalid(other_key):
    message = sns_sign(sns_notification("hello"), key=other_key)

    assert rejection(message).code == "sns_signature_invalid"


def test_certificate_of_another_key_at_the_signing_url_is_signature_invalid(other_key):
    certificate_remember(SIGNING_CERT_URL, self_signed_certificate_pem(other_key))

    assert rejection(sns_sign(sns_notification("hello"))).code == "sns_signature_invalid"


@pytest.mark.parametrize(("signed_as", "claimed"), [("1", "2"), ("2", "1")])
def test_signature_checked_with_another_versions_hash_is_signature_invalid(signed_as, claimed):
    message = sns_sign(sns_notification("hello"), version=signed_as)
    message["SignatureVersion"] = claimed

    assert rejection(message).code == "sns_signature_invalid"


@pytest.mark.parametrize("version", ["3", "0", "", "SHA256", "2 "])
def test_unknown_signature_version_is_signature_invalid(version):
    message = sns_sign(sns_notification("hello"))
    message["SignatureVersion"] = version

    assert rejection(message).code == "sns_signature_invalid"


@pytest.mark.parametrize("signature", ["not base64!", "", "QUJD", "QUJD=="])
def test_signature_that_is_not_a_valid_signature_is_signature_invalid(signature):
    message = sns_sign(sns_notification("hello"))
    message["Signature"] = signature

    assert rejection(message).code == "sns_signature_invalid"


def test_rejection_detail_does_not_quote_the_message_body(other_key):
    secret = "jane.doe@example.org bounced: 550 user unknown"
    message = sns_sign(sns_notification(secret, subject=secret), key=other_key)

    error = rejection(message)

    assert secret not in str(error) and secret not in error.detail
    assert "jane.doe" not in str(error)


# --- certificate URL ----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
        "http://sns.us-east-1.amazonaws.com/x.pem",
        "https://evil.com/x.pem",
        "https://sns.us-east-1.amazonaws.com:8443/x.pem",
        "https://evil.com@sns.us-east-1.amazonaws.com/x.pem",
        "https://sns.us-east-1.amazonaws.com/x.pem?.pem",
        "file:///etc/ssl/certs/x.pem",
    ],
)
def test_foreign_signing_cert_url_is_rejected_without_a_fetch(url, downloads):
    message = sns_sign(sns_notification("hello"), cert_url=url)

    assert rejection(message).code == "sns_certificate_url_invalid"
    assert downloads == []


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-a1b2c3.pem", True),
        ("https://sns.eu-central-1.amazonaws.com/SimpleNotificationService-a1b2c3.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-a1b2c3.pem", True),
        ("https://sns.us-gov-west-1.amazonaws.com/x.pem", True),
        ("https://sns.us-east-1.amazonaws.com:443/x.pem", True),
        ("http://sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com:8443/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com:/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com:99999/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com.evil.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com.cn.evil.com/x.pem", False),
        # S3 virtual-host names: anyone owning a bucket named "sns" controls these.
        ("https://sns.s3.amazonaws.com/x.pem", False),
        ("https://sns.s3-accelerate.amazonaws.com/x.pem", False),
        ("https://sns.s3-external-1.amazonaws.com/x.pem", False),
        ("https://sns.s3.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com./x.pem", False),
        ("https://evil.com/x.pem", False),
        ("https://evilsns.us-east-1.amazonaws.com/x.pem", False),
        ("https://x.sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.amazonaws.com/x.pem", False),
        ("https://sns.us_east_1.amazonaws.com/x.pem", False),
        ("https://SNS.US-EAST-1.AMAZONAWS.COM/x.pem", False),
        ("https://s3.us-east-1.amazonaws.com/x.pem", False),
        ("https://user@sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://user:pw@sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com/x.crt", False),
        ("https://sns.us-east-1.amazonaws.com/x.pem?x=1", False),
        ("https://sns.us-east-1.amazonaws.com/x.pem#frag", False),
        ("https://sns.us-east-1.amazonaws.com", False),
        ("https://sns.us-east-1.amazonaws.com/", False),
        ("https://sns.us-east-1.amazonaws.com\n.evil.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com\\@evil.com/x.pem", False),
        ("https://[::1]/x.pem", False),
        ("//sns.us-east-1.amazonaws.com/x.pem", False),
        ("", False),
    ],
)
def test_certificate_url_allowed(url, allowed):
    assert certificate_url_allowed(url) is allowed


def test_certificate_remember_refuses_a_foreign_url():
    with pytest.raises(ValueError):
        certificate_remember("https://evil.com/x.pem", TEST_CERTIFICATE_PEM)


# --- certificate fetch and cache ----------------------------------------------


def test_certificate_is_fetched_once_then_served_from_the_cache(monkeypatch):
    fetched: list[str] = []
    monkeypatch.setattr(sns, "_certificate_download", lambda url: fetched.append(url) or TEST_CERTIFICATE_PEM)
    message = sns_sign(sns_notification("hello"), cert_url=OTHER_CERT_URL)

    sns_message_verify(message)
    sns_message_verify(message)

    assert fetched == [OTHER_CERT_URL]


def test_certificate_that_cannot_be_downloaded_is_unavailable(monkeypatch):
    def unreachable(url: str) -> bytes:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(sns, "_certificate_download", unreachable)

    error = rejection(sns_sign(sns_notification("hello"), cert_url=OTHER_CERT_URL))

    assert error.code == "sns_certificate_unavailable"


def test_download_that_is_not_a_pem_certificate_is_unavailable(monkeypatch):
    monkeypatch.setattr(sns, "_certificate_download", lambda url: b"<html>Access Denied</html>")

    error = rejection(sns_sign(sns_notification("hello"), cert_url=OTHER_CERT_URL))

    assert error.code == "sns_certificate_unavailable"


def test_expired_certificate_is_unavailable(other_key, downloads):
    long_ago = datetime.now(UTC) - timedelta(days=400)
    expired = self_signed_certificate_pem(other_key, not_before=long_ago, not_after=long_ago + timedelta(days=365))
    certificate_remember(OTHER_CERT_URL, expired)

    error = rejection(sns_sign(sns_notification("hello"), key=other_key, cert_url=OTHER_CERT_URL))

    assert error.code == "sns_certificate_unavailable"
    assert downloads == []


def test_certificate_cache_clear_forgets_remembered_certificates(downloads):
    certificate_cache_clear()

    with pytest.raises(AssertionError, match="unexpected certificate download"):
        sns_message_verify(sns_sign(sns_notification("hello")))

    assert downloads == [SIGNING_CERT_URL]


def test_certificate_cache_is_bounded(downloads):
    for n in range(sns._CACHE_MAX_ENTRIES):
        certificate_remember(f"https://sns.us-east-1.amazonaws.com/filler-{n}.pem", TEST_CERTIFICATE_PEM)

    assert len(sns._cache) == sns._CACHE_MAX_ENTRIES
    with pytest.raises(AssertionError, match="unexpected certificate download"):
        sns_message_verify(sns_sign(sns_notification("hello")))  # the oldest entry was evicted
    assert downloads == [SIGNING_CERT_URL]


class _LocalServer(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/redirect.pem":
            self.send_response(302)
            self.send_header("Location", "/cert.pem")
            self.end_headers()
            return
        body = TEST_CERTIFICATE_PEM if self.path == "/cert.pem" else b"A" * (sns._FETCH_MAX_BYTES + 1)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    """A plain-HTTP server on loopback, to exercise the download limits without the Internet."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LocalServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_certificate_download_returns_the_body(local_server):
    assert REAL_DOWNLOAD(f"{local_server}/cert.pem") == TEST_CERTIFICATE_PEM


def test_certificate_download_refuses_redirects(local_server):
    with pytest.raises(urllib.error.HTTPError):
        REAL_DOWNLOAD(f"{local_server}/redirect.pem")


def test_certificate_download_refuses_responses_over_64_kb(local_server):
    with pytest.raises(ValueError, match="too large"):
        REAL_DOWNLOAD(f"{local_server}/big.pem")


# --- freshness ----------------------------------------------------------------


def test_message_older_than_max_age_is_expired():
    message = sns_sign(sns_notification("hello", timestamp=datetime.now(UTC) - timedelta(seconds=3601)))

    assert rejection(message).code == "sns_message_expired"


def test_max_age_seconds_is_configurable():
    message = sns_sign(sns_notification("hello", timestamp=datetime.now(UTC) - timedelta(minutes=10)))

    sns_message_verify(message, max_age_seconds=3600)
    assert rejection(message, max_age_seconds=300).code == "sns_message_expired"


def test_message_more_than_five_minutes_in_the_future_is_expired():
    message = sns_sign(sns_notification("hello", timestamp=datetime.now(UTC) + timedelta(minutes=6)))

    assert rejection(message).code == "sns_message_expired"


def test_small_clock_skew_into_the_future_is_accepted():
    sns_message_verify(sns_sign(sns_notification("hello", timestamp=datetime.now(UTC) + timedelta(minutes=4))))


def test_freshness_is_judged_against_the_given_now():
    sent = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    message = sns_sign(sns_notification("hello", timestamp=sent))

    sns_message_verify(message, now=sent + timedelta(minutes=30))
    sns_message_verify(message, now=(sent + timedelta(minutes=30)).replace(tzinfo=None))  # naive means UTC
    assert rejection(message, now=sent + timedelta(hours=2)).code == "sns_message_expired"


def test_stale_message_is_rejected_before_any_certificate_fetch(downloads):
    old = datetime.now(UTC) - timedelta(days=1)
    message = sns_sign(sns_notification("hello", timestamp=old), cert_url=OTHER_CERT_URL)

    assert rejection(message).code == "sns_message_expired"
    assert downloads == []


@pytest.mark.parametrize(
    "timestamp", ["yesterday", "", "2012-13-45T00:00:00Z", "2012-04-25T21:49:25.719", "2012-04-25 21:49"]
)
def test_unparsable_or_zoneless_timestamp_is_malformed(timestamp):
    message = sns_notification("hello")
    message["Timestamp"] = timestamp

    assert rejection(sns_sign(message)).code == "sns_malformed"


# --- malformed messages -------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    ["Type", "Message", "MessageId", "Timestamp", "TopicArn", "SignatureVersion", "Signature", "SigningCertURL"],
)
def test_notification_missing_a_required_field_is_malformed(field, downloads):
    message = sns_sign(sns_notification("hello"))
    del message[field]

    assert rejection(message).code == "sns_malformed"
    assert downloads == []


@pytest.mark.parametrize("field", ["Token", "SubscribeURL"])
def test_confirmation_missing_a_required_field_is_malformed(field):
    message = sns_sign(sns_subscription_confirmation())
    del message[field]

    assert rejection(message).code == "sns_malformed"


@pytest.mark.parametrize(
    ("field", "value"),
    [("Message", {"eventType": "Bounce"}), ("Subject", 7), ("Signature", None), ("SignatureVersion", 2)],
)
def test_non_string_field_is_malformed(field, value):
    message = sns_sign(sns_notification("hello", subject="Bounce"))
    message[field] = value

    assert rejection(message).code == "sns_malformed"


def test_unknown_message_type_is_malformed():
    message = sns_sign(sns_notification("hello"))
    message["Type"] = "Surprise"

    assert rejection(message).code == "sns_malformed"


@pytest.mark.parametrize("body", [None, [], "Notification", 42])
def test_body_that_is_not_an_object_is_malformed(body):
    assert rejection(body).code == "sns_malformed"
