"""Sign SNS messages the way Amazon does, with a throw-away key, for tests.

Usage from any test module:

    trust_test_certificate()          # once per test (certificate caches may be cleared)
    body = sns_sign({"Type": "Notification", ...})
    client.post(url, json.dumps(body), content_type="text/plain")

The canonical string is built here independently of tracking.sns on purpose: a
bug shared by signer and verifier would let both agree on the wrong bytes.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.x509.oid import NameOID

from tracking.sns import certificate_remember

SIGNING_CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem"
TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:emailsvc-ses-events"


def signing_key_create() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def self_signed_certificate_pem(
    key: RSAPrivateKey, *, not_before: datetime | None = None, not_after: datetime | None = None
) -> bytes:
    """A self-signed certificate for `key`, valid from yesterday for a year unless told otherwise."""
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com (test)")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


TEST_KEY = signing_key_create()
TEST_CERTIFICATE_PEM = self_signed_certificate_pem(TEST_KEY)


def trust_test_certificate() -> None:
    """Make tracking.sns trust TEST_KEY's certificate at SIGNING_CERT_URL (no network)."""
    certificate_remember(SIGNING_CERT_URL, TEST_CERTIFICATE_PEM)


def canonical_string(message: dict) -> bytes:
    if message["Type"] == "Notification":
        keys = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        keys = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{k}\n{message[k]}\n" for k in keys if message.get(k) is not None).encode()


def sns_sign(
    message: dict,
    *,
    version: str = "2",
    key: RSAPrivateKey | None = None,
    cert_url: str = SIGNING_CERT_URL,
) -> dict:
    """A copy of `message` with SignatureVersion, SigningCertURL and Signature set.

    `key` defaults to TEST_KEY (trusted after trust_test_certificate()); pass
    another key or `cert_url` to build messages that must be rejected.
    """
    signed = dict(message)
    hash_algorithm = {"1": hashes.SHA1, "2": hashes.SHA256}[version]()
    signature = (key or TEST_KEY).sign(canonical_string(signed), padding.PKCS1v15(), hash_algorithm)
    signed.update(
        SignatureVersion=version,
        SigningCertURL=cert_url,
        Signature=base64.b64encode(signature).decode("ascii"),
    )
    return signed


def sns_notification(message: str, *, subject: str | None = None, timestamp: datetime | None = None) -> dict:
    """An unsigned SNS Notification as SNS POSTs it (sign it with sns_sign)."""
    body = {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC_ARN,
        "Message": message,
        "Timestamp": _sns_timestamp(timestamp or datetime.now(UTC)),
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x",
    }
    if subject is not None:
        body["Subject"] = subject
    return body


def sns_subscription_confirmation(*, timestamp: datetime | None = None) -> dict:
    """An unsigned SNS SubscriptionConfirmation (sign it with sns_sign)."""
    token = "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3"
    return {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": token,
        "TopicArn": TOPIC_ARN,
        "Message": (
            f"You have chosen to subscribe to the topic {TOPIC_ARN}.\n"
            "To confirm the subscription, visit the SubscribeURL included in this message."
        ),
        "SubscribeURL": (
            f"https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={TOPIC_ARN}&Token={token}"
        ),
        "Timestamp": _sns_timestamp(timestamp or datetime.now(UTC)),
    }


def _sns_timestamp(moment: datetime) -> str:
    # SNS's own format: milliseconds and a `Z`, e.g. 2012-04-25T21:49:25.719Z.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
