"""One SMTP submission session: AUTH with an API key, the envelope checked at
MAIL FROM and RCPT TO, the message stored before DATA is answered 250
(SPEC §4 "SMTP submission").

Everything that touches the database (AUTH, DATA) runs in a thread of a
bounded pool, never on the event loop: one loop serves many sessions.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor

from aiosmtpd.smtp import SMTP, AuthResult
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from redis.exceptions import RedisError

from core import metrics
from core.addresses import InvalidAddress, address_canonical
from core.errors import EmailsvcError, ValidationFailed
from core.redisclient import redis_client
from emailsvc.keys import api_key_authenticate
from emailsvc.models import ApiKey
from emailsvc.submission.mime import MimeSubmission, mime_submission_build, mime_submissions_store
from emailsvc.submission.policy import check_sender_policy, domain_allowed, domain_of

logger = logging.getLogger(__name__)

# An error code of the service → (SMTP reply code, enhanced status code, RFC 3463).
REPLIES = {
    "from_domain_not_allowed": ("550", "5.7.1"),
    "domain_not_verified": ("550", "5.7.1"),
    "key_domain_not_allowed": ("550", "5.7.1"),
    "key_stream_not_allowed": ("550", "5.7.1"),
    "reply_to_domain_not_allowed": ("550", "5.7.1"),
    "recipient_domain_not_allowed": ("550", "5.7.1"),
    "invalid_address": ("553", "5.1.3"),
    "too_many_recipients": ("452", "4.5.3"),
    "payload_too_large": ("552", "5.3.4"),
    "line_too_long": ("550", "5.6.0"),
    "invalid_header": ("550", "5.6.0"),
    "missing_fields": ("550", "5.6.0"),
    "invalid_field": ("550", "5.6.0"),
    "idempotency_key_reused": ("550", "5.6.0"),
    "stream_not_found": ("550", "5.6.0"),
    "unsubscribe_needs_one_recipient": ("550", "5.5.3"),
    # The service's own settings, not the message: worth trying again once they are fixed.
    "unsubscribe_not_configured": ("451", "4.3.5"),
}
# Failed AUTHs from one client address that are answered at once; each one
# after that waits twice as long as the one before (from AUTH_DELAY_FIRST
# seconds, up to AUTH_DELAY_MAX), until AUTH_FAILURE_WINDOW seconds pass
# without one.
AUTH_FREE_FAILURES = 5
AUTH_DELAY_FIRST = 0.5
AUTH_DELAY_MAX = 10.0
AUTH_FAILURE_WINDOW = 600.0
DB_THREADS = 8
# Submissions that wait while a transaction stores others are stored together,
# up to this many in one transaction (group commit): one commit, a few
# statements, for every session that finished its DATA meanwhile.
GROUP_COMMIT_MAX = 100
# Transactions of one process storing submissions at once.
GROUP_COMMITS = 1

TEMPORARY_FAILURE = "451 4.3.0 The message could not be stored now; try again later"


def reply(code: str, enhanced: str, text: str, error_code: str = "") -> str:
    """One SMTP reply line, ASCII and without line breaks, the service's error code at its end."""
    text = " ".join(text.split()).encode("ascii", "backslashreplace").decode("ascii")
    return f"{code} {enhanced} {text}" + (f" [{error_code}]" if error_code else "")


def error_reply(error: EmailsvcError) -> str:
    code, enhanced = REPLIES.get(error.code, ("550", "5.6.0") if isinstance(error, ValidationFailed) else ("451", "4.3.0"))
    detail = error.detail
    if error.fields:
        detail = f"{detail} " + " ".join(message for messages in error.fields.values() for message in messages)
    return reply(code, enhanced, detail, error.code)


def _is_loopback(peer) -> bool:
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except (TypeError, ValueError, IndexError):
        return False


AUTH_FAILURES_KEY = "emailsvc:smtp:auth-failures:"


def auth_failure_delay(host: str) -> float:
    """Count a failed AUTH from `host` (in Redis: every smtp process and host
    shares the count); the seconds to wait before answering it. Without
    Redis the failure is answered at once (AUTH itself does not need Redis)."""
    key = AUTH_FAILURES_KEY + host
    try:
        client = redis_client()
        with client.pipeline() as pipeline:
            count, _ = pipeline.incr(key).expire(key, int(AUTH_FAILURE_WINDOW)).execute()
    except RedisError:
        logger.warning("smtp AUTH: failures not counted (Redis unavailable)")
        return 0.0
    if count <= AUTH_FREE_FAILURES:
        return 0.0
    return min(AUTH_DELAY_FIRST * 2 ** (count - AUTH_FREE_FAILURES - 1), AUTH_DELAY_MAX)


def _in_thread(function, *args):
    """Run `function` with a usable database connection of this pool thread."""
    close_old_connections()
    try:
        return function(*args)
    finally:
        close_old_connections()


def _key_check(raw_key: str, host: str) -> tuple[ApiKey | None, float]:
    """The key if it may send, else None and how long to hold the refusal."""
    api_key = api_key_authenticate(raw_key=raw_key)
    if api_key is None or not api_key.allows(ApiKey.Permission.SENDING):
        return None, auth_failure_delay(host)
    return api_key, 0.0


class _PendingCredentials:
    def __init__(self, password: bytes):
        self.password = password


class SubmissionSMTP(SMTP):
    """aiosmtpd's SMTP with AUTH checked against API keys off the event loop,
    AUTH over plain text on loopback only, and aiosmtpd's own refusals given
    enhanced status codes."""

    def __init__(self, handler: SubmissionHandler, **kwargs):
        super().__init__(
            handler,
            data_size_limit=settings.MAX_MESSAGE_BYTES,
            decode_data=False,
            auth_required=True,
            auth_require_tls=True,
            hostname=settings.SMTP_INGRESS_HOSTNAME or None,
            ident="emailsvc",
            **kwargs,
        )
        self._submission = handler

    def connection_made(self, transport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if first:
            implicit_tls = transport.get_extra_info("sslcontext") is not None
            # Credentials in plain text only where nobody can read them on the way.
            self._auth_require_tls = not (implicit_tls or _is_loopback(self.session.peer))
            if implicit_tls:
                self.session.ssl = transport.get_extra_info("ssl_object")

    def _authenticate(self, mechanism: str, auth_data) -> AuthResult:
        # Checked by _verify, in a pool thread: this runs on the event loop.
        return AuthResult(success=True, auth_data=_PendingCredentials(auth_data.password))

    async def auth_PLAIN(self, _, args) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _, args) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, result: AuthResult) -> AuthResult:
        if not isinstance(result.auth_data, _PendingCredentials):
            return result  # refused while reading the credentials (already answered)
        raw_key = result.auth_data.password.decode("utf-8", "replace").strip()
        host = str(self.session.peer[0]) if self.session.peer else ""
        try:
            api_key, delay = await self._submission.run(_key_check, raw_key, host)
        except DatabaseError:
            logger.warning("smtp AUTH: the database is unavailable", exc_info=True)
            return AuthResult(success=False, handled=False, message="454 4.7.0 Temporary authentication failure; try again later")
        if api_key is None:
            metrics.smtp_auth_failure_observe()
            if delay:
                await asyncio.sleep(delay)
            return AuthResult(
                success=False, handled=False,
                message="535 5.7.8 Authentication failed: the password must be an active API key with 'sending' or 'full' permission",
            )
        return AuthResult(success=True, auth_data=api_key)

    async def push(self, status) -> None:
        if isinstance(status, str):
            if status.startswith("500 Line too long"):
                status = reply("500", "5.5.6", "A line is longer than 998 octets (RFC 5322 2.1.1)", "line_too_long")
            elif status.startswith("552 Error"):
                status = reply(
                    "552", "5.3.4", f"The message is over {settings.MAX_MESSAGE_BYTES} bytes", "payload_too_large"
                )
        await super().push(status)


class GroupCommit:
    """Stores the submissions of every session of this process, together when
    they arrive while earlier ones are being stored (at most GROUP_COMMITS
    transactions at once). Each session gets its own answer, once committed."""

    def __init__(self, handler: SubmissionHandler):
        self._handler = handler
        self._pending: list[tuple[MimeSubmission, asyncio.Future]] = []
        self._running = 0

    async def store(self, item: MimeSubmission) -> tuple[str, bool]:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._running < GROUP_COMMITS:
            self._running += 1
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:GROUP_COMMIT_MAX], self._pending[GROUP_COMMIT_MAX:]
                try:
                    results = await self._handler.run(mime_submissions_store, [item for item, _ in batch])
                except Exception as error:  # every session of the batch answers for it (451)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for (_, future), result in zip(batch, results):
                        if not future.done():
                            future.set_result(result)
        finally:
            self._running -= 1


class SubmissionHandler:
    """aiosmtpd's handler hooks."""

    def __init__(self, *, threads: int = DB_THREADS):
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="smtp-db")
        self.group_commit = GroupCommit(self)

    async def run(self, function, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, _in_thread, function, *args)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        # RFC 2920: aiosmtpd reads commands one by one from its buffer, so a
        # client may send MAIL, RCPT and DATA without waiting for each answer.
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        try:
            sender = address_canonical(address)
        except InvalidAddress as error:
            return reply("553", "5.1.7", str(error), "invalid_address")
        if not domain_allowed(domain_of(sender), settings.ALLOWED_FROM_DOMAINS, empty_allows_all=False):
            # Not on the allowlist: the full sender policy decides (it may read the database).
            try:
                await self.run(_sender_check, sender)
            except EmailsvcError as error:
                return error_reply(error)
            except DatabaseError:
                return "451 4.3.0 The sender cannot be checked now; try again later"
        envelope.mail_from = sender
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        try:
            recipient = address_canonical(address)
        except InvalidAddress as error:
            return reply("553", "5.1.3", str(error), "invalid_address")
        if not domain_allowed(domain_of(recipient), settings.ALLOWED_RECIPIENT_DOMAINS, empty_allows_all=True):
            return reply(
                "550", "5.7.1", f"Sending to the domain '{domain_of(recipient)}' is not allowed",
                "recipient_domain_not_allowed",
            )
        if recipient not in envelope.rcpt_tos and len(envelope.rcpt_tos) >= settings.MAX_RECIPIENTS:
            return reply(
                "452", "4.5.3", f"At most {settings.MAX_RECIPIENTS} recipients a message; send the rest in another",
                "too_many_recipients",
            )
        if recipient not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(recipient)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        api_key = session.auth_data
        try:
            item = await self.run(_build, api_key, list(envelope.rcpt_tos), envelope.original_content)
            email_id, duplicate = await self.group_commit.store(item)
        except EmailsvcError as error:
            return error_reply(error)
        except DatabaseError as error:
            logger.warning("smtp DATA: the database is unavailable: %s", error)
            return TEMPORARY_FAILURE
        except Exception:  # our bug: never 250, and the client keeps the message and tries again
            logger.exception("smtp DATA: the message could not be stored")
            return TEMPORARY_FAILURE
        if duplicate:
            return f"250 2.0.0 Already accepted as {email_id} (the same Message-ID); not sent again"
        return f"250 2.0.0 Accepted as {email_id}"


def _sender_check(sender: str) -> None:
    check_sender_policy(from_email=sender, reply_to=[], recipients={})


def _build(api_key: ApiKey, recipients: list[str], content: bytes) -> MimeSubmission:
    return mime_submission_build(api_key=api_key, recipients=recipients, content=content)
