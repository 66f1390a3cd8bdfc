"""Verify that a message POSTed to our webhook really comes from Amazon SNS.

SES delivers bounces, complaints and deliveries through SNS, and the SNS HTTP(S)
endpoint is public: anyone who learns its URL can POST a forged "bounce" and get
an address suppressed, or a forged SubscriptionConfirmation. We therefore check
every message the way AWS documents ("Verifying the signatures of Amazon SNS
messages") before acting on it. Neither library we could lean on does this fully:
anymail's SES tracking webhook does not verify SNS signatures at all (it relies
on basic auth), and django-ses verifies SignatureVersion 1 (SHA1) only, while
topics should be switched to SignatureVersion 2 (SHA256).

What is checked, cheapest first so that junk never triggers a network fetch:
shape of the message, signature version, freshness of `Timestamp`, that
`SigningCertURL` is an https URL on an `sns.<region>.amazonaws.com[.cn]` host,
then the RSA PKCS#1 v1.5 signature over the canonical string with the public key
of that (cached) certificate.

Pure Python + `cryptography`; no Django imports, so it can be used from views,
management commands and tests alike.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import logging
import re
import ssl
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from email.message import Message
from typing import IO, NoReturn
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from django.conf import settings

from core.errors import DependencyFailed, Forbidden

logger = logging.getLogger(__name__)

__all__ = [
    "SnsConfirmFailed",
    "SnsVerificationError",
    "certificate_cache_clear",
    "certificate_remember",
    "certificate_url_allowed",
    "sns_message_verify",
]

# Field order is part of the signature: AWS signs `Key\nValue\n` pairs in exactly
# this (byte-sorted) order. Subject is signed only when the notification has one.
_NOTIFICATION_KEYS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_CONFIRMATION_KEYS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
_SIGNED_KEYS = {
    "Notification": _NOTIFICATION_KEYS,
    "SubscriptionConfirmation": _CONFIRMATION_KEYS,
    "UnsubscribeConfirmation": _CONFIRMATION_KEYS,
}
_OPTIONAL_KEYS = frozenset({"Subject"})

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

# Anchored with fullmatch, not `$`, which would also accept a trailing newline.
# Region-shaped on purpose: a looser `sns\.[a-z0-9-]+\.amazonaws\.com` would also
# accept S3 virtual-host names such as `sns.s3.amazonaws.com`, whose content is
# whoever owns the bucket named "sns".
_CERT_HOST = re.compile(r"sns\.[a-z]{2}(-gov)?-[a-z]+-[0-9]+\.amazonaws\.com(\.cn)?")
# Printable ASCII without space: urlsplit silently drops tabs and newlines, so a
# URL containing them could be judged on a different host than the one fetched.
_URL_CHARS = re.compile(r"[\x21-\x7e]+")

_MAX_FUTURE_SKEW = timedelta(minutes=5)
_FETCH_TIMEOUT_SECONDS = 5
_FETCH_MAX_BYTES = 64 * 1024
_CACHE_MAX_ENTRIES = 64

_cache: OrderedDict[str, x509.Certificate] = OrderedDict()
_cache_lock = threading.Lock()


class SnsVerificationError(Forbidden):
    """Why a message was rejected.

    `code` is one of: sns_malformed, sns_certificate_url_invalid,
    sns_certificate_unavailable, sns_signature_invalid, sns_message_expired.
    `detail` is a short, stable, human sentence that never quotes the message body.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def sns_message_verify(message: dict, *, max_age_seconds: int = 3600, now: datetime | None = None) -> None:
    """Raise SnsVerificationError unless `message` (the parsed JSON body SNS POSTs)
    is a genuine, fresh SNS Notification, SubscriptionConfirmation or
    UnsubscribeConfirmation."""
    now = _aware(now or datetime.now(UTC))
    if not isinstance(message, dict):
        raise SnsVerificationError("sns_malformed", "The message is not a JSON object.")

    canonical = _canonical_string(message)
    signature_version = _string_field(message, "SignatureVersion")
    signature_b64 = _string_field(message, "Signature")
    cert_url = _string_field(message, "SigningCertURL")

    hash_algorithm = _HASHES.get(signature_version)
    if hash_algorithm is None:
        raise SnsVerificationError("sns_signature_invalid", "Unsupported SignatureVersion.")

    _timestamp_check(message["Timestamp"], now=now, max_age_seconds=max_age_seconds)

    if not certificate_url_allowed(cert_url):
        raise SnsVerificationError(
            "sns_certificate_url_invalid",
            "SigningCertURL is not an Amazon SNS certificate URL.",
        )

    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SnsVerificationError("sns_signature_invalid", "Signature is not valid base64.") from None

    public_key = _certificate_get(cert_url, now=now).public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        # SNS signs with RSA only; any other key type cannot have produced this.
        raise SnsVerificationError(
            "sns_certificate_unavailable",
            "Signing certificate does not hold an RSA key.",
        )
    try:
        public_key.verify(signature, canonical, padding.PKCS1v15(), hash_algorithm())
    except InvalidSignature:
        raise SnsVerificationError("sns_signature_invalid", "Signature does not match the message.") from None


def certificate_url_allowed(url: str) -> bool:
    """True if `url` can only point at an Amazon SNS signing certificate: https,
    host exactly `sns.<region>.amazonaws.com` (or `.com.cn`), no userinfo, no port
    other than 443, no query or fragment, path ending in `.pem`."""
    if not isinstance(url, str) or not _URL_CHARS.fullmatch(url) or "\\" in url:
        return False
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        return False
    if parts.scheme != "https" or "@" in parts.netloc or port not in (None, 443):
        return False
    if parts.query or parts.fragment or "?" in url or "#" in url:
        return False
    host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
    if not _CERT_HOST.fullmatch(host):
        return False
    return parts.path.startswith("/") and parts.path.endswith(".pem")


def certificate_remember(url: str, pem: bytes) -> None:
    """Cache the PEM certificate `pem` as the one served at `url`, so no fetch is needed.

    For tests, and for air-gapped installs that pre-load Amazon's certificate.
    Raises ValueError if the URL is not an allowed SNS certificate URL or the PEM
    is not an X.509 certificate with an RSA key.
    """
    if not certificate_url_allowed(url):
        raise ValueError("not an Amazon SNS certificate URL")
    certificate = x509.load_pem_x509_certificate(pem)
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise ValueError("certificate does not hold an RSA key")
    _cache_put(url, certificate)


def certificate_cache_clear() -> None:
    """Forget every cached certificate (fetched or remembered)."""
    with _cache_lock:
        _cache.clear()


# --- message checks -----------------------------------------------------------


def _string_field(message: dict, key: str) -> str:
    value = message.get(key)
    if value is None:
        raise SnsVerificationError("sns_malformed", f"Missing field {key}.")
    if not isinstance(value, str):
        raise SnsVerificationError("sns_malformed", f"Field {key} is not a string.")
    return value


def _canonical_string(message: dict) -> bytes:
    message_type = _string_field(message, "Type")
    keys = _SIGNED_KEYS.get(message_type)
    if keys is None:
        raise SnsVerificationError("sns_malformed", "Unknown message Type.")
    lines: list[str] = []
    for key in keys:
        # A null Subject is how some SNS clients serialise "no subject"; AWS's own
        # SDK validators treat it as absent, and so must we to match the signature.
        if key in _OPTIONAL_KEYS and message.get(key) is None:
            continue
        lines.append(f"{key}\n{_string_field(message, key)}\n")
    return "".join(lines).encode("utf-8")


def _timestamp_check(value: str, *, now: datetime, max_age_seconds: int) -> None:
    try:
        timestamp = datetime.fromisoformat(value)
    except ValueError:
        raise SnsVerificationError("sns_malformed", "Timestamp is not an ISO-8601 date-time.") from None
    if timestamp.tzinfo is None:
        # A naive time is ambiguous; SNS always sends UTC with a `Z`.
        raise SnsVerificationError("sns_malformed", "Timestamp has no time zone.")
    age = now - timestamp
    if age > timedelta(seconds=max_age_seconds):
        raise SnsVerificationError("sns_message_expired", "Message is too old.")
    if -age > _MAX_FUTURE_SKEW:
        raise SnsVerificationError("sns_message_expired", "Message timestamp is in the future.")


def _aware(moment: datetime) -> datetime:
    # Callers outside Django may pass naive UTC; comparing naive with aware would raise.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# --- certificates -------------------------------------------------------------


def _certificate_get(url: str, *, now: datetime) -> x509.Certificate:
    with _cache_lock:
        certificate = _cache.get(url)
        if certificate is not None:
            _cache.move_to_end(url)
    if certificate is None:
        # Fetched outside the lock: a slow fetch must not stall every other webhook
        # request. Two threads may fetch the same URL at once; that is harmless.
        certificate = _certificate_fetch(url)
        _cache_put(url, certificate)
    if certificate.not_valid_after_utc < now:
        # Dropped so that the next message fetches again, in case AWS renewed it in place.
        with _cache_lock:
            _cache.pop(url, None)
        raise SnsVerificationError("sns_certificate_unavailable", "Signing certificate has expired.")
    return certificate


def _cache_put(url: str, certificate: x509.Certificate) -> None:
    # Bounded because the URL comes from the request: without a cap, messages
    # naming many distinct allowed URLs would grow the cache forever.
    with _cache_lock:
        _cache[url] = certificate
        _cache.move_to_end(url)
        while len(_cache) > _CACHE_MAX_ENTRIES:
            _cache.popitem(last=False)


def _certificate_fetch(url: str) -> x509.Certificate:
    try:
        pem = _certificate_download(url)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        logger.warning("SNS signing certificate fetch failed: %s %s", url, type(exc).__name__)
        raise SnsVerificationError(
            "sns_certificate_unavailable",
            "Signing certificate could not be fetched.",
        ) from None
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        logger.warning("SNS signing certificate is not a PEM certificate: %s", url)
        raise SnsVerificationError(
            "sns_certificate_unavailable",
            "Signing certificate could not be parsed.",
        ) from None
    return certificate


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would lead the fetch off the host that certificate_url_allowed approved.
    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> NoReturn:
        raise urllib.error.HTTPError(req.full_url, code, "redirect refused", headers, fp)


_opener = urllib.request.build_opener(
    _NoRedirect(),
    urllib.request.HTTPSHandler(context=ssl.create_default_context()),
)


def _certificate_download(url: str) -> bytes:
    """Fetch `url` (already checked by certificate_url_allowed) and return at most 64 KB."""
    with _opener.open(url, timeout=_FETCH_TIMEOUT_SECONDS) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        # One byte over the cap tells "too big" apart from "exactly at the cap".
        body = response.read(_FETCH_MAX_BYTES + 1)
    if len(body) > _FETCH_MAX_BYTES:
        raise ValueError("certificate response too large")
    return body


class SnsConfirmFailed(DependencyFailed):
    """Amazon SNS did not take the confirmation (502); SNS sends it again."""

    code = "sns_confirm_failed"
    default_detail = "The subscription could not be confirmed with Amazon SNS."


def sns_subscription_confirm(*, topic_arn: str, token: str) -> None:
    """Confirm a subscription through the SNS API in the topic's own region.

    Uses ConfirmSubscription (signed AWS call) rather than fetching SubscribeURL,
    so nothing but the AWS endpoint is ever contacted. Raises SnsConfirmFailed
    when SNS refuses or cannot be reached (the reason is logged).
    """
    parts = topic_arn.split(":")
    region = parts[3] if len(parts) == 6 and parts[3] else settings.AWS_REGION
    client = boto3.client("sns", region_name=region, endpoint_url=settings.AWS_ENDPOINT_URL or None)
    try:
        client.confirm_subscription(TopicArn=topic_arn, Token=token, AuthenticateOnUnsubscribe="true")
    except (ClientError, BotoCoreError) as error:
        # SNS sends the confirmation again; the operator sees why in the log.
        logger.error("SNS subscription not confirmed topic=%s: %s", topic_arn, error)
        raise SnsConfirmFailed() from None
    logger.info("SNS subscription confirmed topic=%s", topic_arn)
