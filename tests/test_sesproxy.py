"""The SES fault proxy (tests/sesproxy.py) in front of moto's standalone server, driven by real boto3 clients."""

import json
import urllib.request
import uuid
from email.message import EmailMessage

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from config.devservices import start_moto, stop
from tests.sesproxy import KNOWN_ERRORS, SesFaultProxy

CREDENTIALS = {"region_name": "us-east-1", "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
NO_RETRIES = Config(retries={"total_max_attempts": 1})


@pytest.fixture(scope="module")
def moto_url():
    process, url = start_moto()
    try:
        boto3.client("sesv2", endpoint_url=url, **CREDENTIALS).create_email_identity(EmailIdentity="example.com")
        yield url
    finally:
        stop(process)


@pytest.fixture(scope="module")
def module_proxy(moto_url):
    proxy = SesFaultProxy(moto_url)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def proxy(module_proxy):
    module_proxy.clear()
    yield module_proxy
    module_proxy.clear()


@pytest.fixture
def ses(proxy):
    """An SES v2 client through the proxy that does not retry, so every injected error reaches the caller."""
    return boto3.client("sesv2", endpoint_url=proxy.url, config=NO_RETRIES, **CREDENTIALS)


def raw_message(subject: str, *, sender: str = "sender@example.com") -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "someone@example.org"
    message["Subject"] = subject
    message.set_content(f"Body of {subject}\n")
    return message.as_bytes()


def send(client, subject: str, **kwargs) -> dict:
    return client.send_email(Content={"Raw": {"Data": raw_message(subject, **kwargs)}})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def moto_raw_messages(moto_url: str) -> list[dict]:
    with urllib.request.urlopen(f"{moto_url}/moto-api/data.json", timeout=10) as response:
        data = json.load(response)
    for service in ("sesv2", "ses"):
        if "RawMessage" in data.get(service, {}):
            return data[service]["RawMessage"]
    return []


def test_send_passes_through_to_moto(proxy, ses, moto_url):
    subject = unique("pass-through")

    response = send(ses, subject)

    message_id = response["MessageId"]
    assert message_id
    recorded = {message["id"]: message for message in moto_raw_messages(moto_url)}
    assert subject in recorded[message_id]["raw_data"]
    assert proxy.calls(subject) == [{"answered": "sent", "message_id": message_id, "injected": False}]


def test_other_operations_pass_through(proxy, ses):
    identities = ses.list_email_identities()["EmailIdentities"]
    assert "example.com" in [identity["IdentityName"] for identity in identities]
    assert ses.get_email_identity(EmailIdentity="example.com")["IdentityType"] == "DOMAIN"


def test_throttled_twice_then_sent(proxy, ses):
    subject = unique("throttled")
    bystander = unique("bystander")
    proxy.fail(subject, error="TooManyRequestsException", times=2)

    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            send(ses, subject)
        assert caught.value.response["Error"]["Code"] == "TooManyRequestsException"
        assert caught.value.response["Error"]["Message"] == "Maximum sending rate exceeded."
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert isinstance(caught.value, ses.exceptions.TooManyRequestsException)
        # A message without the needle is unaffected, even while the rule is active.
        assert send(ses, bystander)["MessageId"]
    message_id = send(ses, subject)["MessageId"]

    assert proxy.calls(subject) == [
        {"answered": "error:TooManyRequestsException", "message_id": None, "injected": True},
        {"answered": "error:TooManyRequestsException", "message_id": None, "injected": True},
        {"answered": "sent", "message_id": message_id, "injected": False},
    ]
    assert [call["answered"] for call in proxy.calls(bystander)] == ["sent", "sent"]


def test_fail_every_time_until_cleared(proxy, ses):
    subject = unique("paused")
    proxy.fail(subject, error="SendingPausedException")

    for _ in range(3):
        with pytest.raises(ses.exceptions.SendingPausedException):
            send(ses, subject)
    proxy.clear()

    assert send(ses, subject)["MessageId"]
    assert [call["answered"] for call in proxy.calls(subject)] == ["sent"]


def test_needle_matches_the_decoded_mime_not_the_base64(proxy, ses):
    email_id = unique("email-id")
    message = EmailMessage()
    message["From"] = "sender@example.com"
    message["To"] = "someone@example.org"
    message["Subject"] = "no needle in the subject"
    message["X-Email-Id"] = email_id
    message.set_content("hello\n")
    proxy.fail(email_id, error="MessageRejected", times=1, message="Custom rejection.")

    with pytest.raises(ClientError) as caught:
        ses.send_email(Content={"Raw": {"Data": message.as_bytes()}})

    assert caught.value.response["Error"] == {"Code": "MessageRejected", "Message": "Custom rejection."}
    assert proxy.calls(email_id) == [{"answered": "error:MessageRejected", "message_id": None, "injected": True}]


@pytest.mark.parametrize("error", list(KNOWN_ERRORS))
def test_each_error_round_trips_through_botocore(proxy, ses, error):
    subject = unique(error)
    status, message = KNOWN_ERRORS[error]
    proxy.fail(subject, error=error, times=1)

    with pytest.raises(ClientError) as caught:
        send(ses, subject)

    response = caught.value.response
    assert response["Error"]["Code"] == error
    assert response["Error"]["Message"] == message
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/json"
    modelled = getattr(ses.exceptions, error, None)
    if modelled is not None:  # SendEmail's modelled errors get their own exception class
        assert isinstance(caught.value, modelled)
    assert send(ses, subject)["MessageId"]  # times=1 is used up


def test_unknown_error_needs_a_status(proxy, ses):
    with pytest.raises(ValueError):
        proxy.fail("x", error="NoSuchThing")
    subject = unique("custom")
    proxy.fail(subject, error="ServiceUnavailable", status=503, times=1)

    with pytest.raises(ClientError) as caught:
        send(ses, subject)

    assert caught.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_upstream_errors_are_relayed_and_recorded(proxy, ses):
    subject = unique("unverified")

    with pytest.raises(ClientError) as caught:
        send(ses, subject, sender="someone@unverified.example.net")

    code = caught.value.response["Error"]["Code"]
    assert code == "MessageRejected"  # moto's own answer, relayed unchanged
    assert proxy.calls(subject) == [{"answered": f"error:{code}", "message_id": None, "injected": False}]


def test_botocore_default_retries_absorb_throttling_but_not_rejection(proxy, monkeypatch):
    """What the worker's unconfigured client does: botocore itself retries 429/500/Throttling
    (legacy mode, up to 5 attempts) before the caller sees anything; MessageRejected is not retried."""
    for name in ("AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    client = boto3.session.Session().client("sesv2", endpoint_url=proxy.url, **CREDENTIALS)
    throttled, rejected = unique("absorbed"), unique("rejected")
    proxy.fail(throttled, error="TooManyRequestsException", times=2)
    proxy.fail(rejected, error="MessageRejected")

    message_id = send(client, throttled)["MessageId"]
    with pytest.raises(client.exceptions.MessageRejected):
        send(client, rejected)

    assert [call["answered"] for call in proxy.calls(throttled)] == [
        "error:TooManyRequestsException", "error:TooManyRequestsException", "sent",
    ]
    assert proxy.calls(throttled)[-1]["message_id"] == message_id
    assert [call["answered"] for call in proxy.calls(rejected)] == ["error:MessageRejected"]


def test_service_specific_endpoint_variable_reaches_the_proxy(proxy, moto_url, monkeypatch, tmp_path):
    """The worker wiring: AWS_ENDPOINT_URL_SESV2 routes only SES v2 through the proxy;
    everything else follows AWS_ENDPOINT_URL to moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SESV2", proxy.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    session = boto3.session.Session()  # as anymail builds its client: no endpoint_url
    client = session.client("sesv2", config=NO_RETRIES)
    subject = unique("env-wired")
    proxy.fail(subject, error="AccountSuspendedException", times=1)

    assert client.meta.endpoint_url == proxy.url
    assert session.client("sqs").meta.endpoint_url == moto_url
    with pytest.raises(client.exceptions.AccountSuspendedException):
        send(client, subject)
    message_id = send(client, subject)["MessageId"]
    assert [call["answered"] for call in proxy.calls(subject)] == ["error:AccountSuspendedException", "sent"]
    assert message_id in {message["id"] for message in moto_raw_messages(moto_url)}
