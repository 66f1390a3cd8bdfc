"""Submitting: validate policy and size, store messages and recipients, enqueue after commit (SPEC §5.1)."""

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.headerregistry import Address

from django.conf import settings
from django.db import DataError, IntegrityError, transaction
from django.utils import timezone

from core.addresses import MAX_DISPLAY_NAME, InvalidAddress, address_key, address_parse
from core.errors import Conflict, EmailsvcError, PayloadTooLarge, ValidationFailed
from core.header_text import MAX_SUBJECT, header_text_problem
from core.sql import rows_insert
from emailsvc import providers, status
from emailsvc.delivery.queueing import deliveries_enqueue
from emailsvc.keys import api_key_sender_check
from emailsvc.models import (
    ApiKey,
    Attachment,
    Group,
    Message,
    Provider,
    Recipient,
    WorkState,
)
from emailsvc.providers.tracking_links import track_requested, tracked_links
from emailsvc.selectors import suppressed_addresses
from emailsvc.sending_control.breaker import pauses_active
from emailsvc.streams.sending import stream_send_check, stream_suppressed_recipients
from emailsvc.submission.policy import check_sender_policy
from templates_app.errors import TemplateNotFound
from templates_app.models import TemplateVersion
from templates_app.services import template_ref_parse, template_render, template_resolve

logger = logging.getLogger(__name__)

# --- Submitting -------------------------------------------------------------


# Worst-case growth on the wire, per octet of UTF-8: quoted-printable bodies
# (=XX per octet plus soft line breaks), base64 attachments (4/3 plus line
# breaks), RFC 2047 header words (base64 plus the =?utf-8?b?…?= wrapping and
# folding). Plus a fixed part per header line and per MIME part, and for the
# headers every message has (Date, Message-ID, MIME-Version, boundaries...).
_BODY_GROWTH = 3.1
_ATTACHMENT_GROWTH = 1.4
_HEADER_GROWTH = 2.0
_PER_HEADER_LINE = 100
_PER_ATTACHMENT = 1024
_FILENAME_GROWTH = 4  # %XX per octet in RFC 2231 continuations, plus their parameter names
_FIXED_PART = 16 * 1024


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _estimated_size(message: Message, recipients: list[Recipient], attachments: list[Attachment]) -> int:
    """An upper bound of the encoded size of the whole message, without building it:
    bodies, attachments, and every header — custom headers, tags, metadata,
    reply-to, recipients, subject, sender."""
    body = _utf8_size(message.html or "") + _utf8_size(message.text or "")
    header_texts = [message.subject or "", message.from_name or "", message.from_email]
    header_texts += message.reply_to
    header_texts += [f"{recipient.name} {recipient.email}" for recipient in recipients]
    header_texts += [f"{name}: {value}" for name, value in message.headers.items()]
    header_texts += message.tags
    if message.metadata:
        header_texts.append(json.dumps(message.metadata, separators=(",", ":")))  # \u-escaped, as on the wire
    header_lines = len(header_texts) + 10
    return int(
        body * _BODY_GROWTH
        + sum(attachment.size for attachment in attachments) * _ATTACHMENT_GROWTH
        + len(attachments) * _PER_ATTACHMENT
        + sum(_utf8_size(attachment.filename) for attachment in attachments) * _FILENAME_GROWTH
        + sum(_utf8_size(text) for text in header_texts) * _HEADER_GROWTH
        + header_lines * _PER_HEADER_LINE
        + _FIXED_PART
    )


@dataclass
class _Submission:
    """One checked send request, ready to store."""

    message: Message
    recipients: list[Recipient]
    attachments: list[Attachment]


def _template_apply(data: dict, templates: dict[str, TemplateVersion | TemplateNotFound]) -> tuple[dict, TemplateVersion]:
    """The request with what its template renders filling every field the
    request does not give itself (subject, html, text, from, from_name,
    reply_to). `templates` caches the resolved versions of one batch, so a
    template used by 500 items is looked up once (and compiled once per version).
    Raises TemplateNotFound, TemplateRenderError, or ValidationFailed when the
    rendered sender or reply-to is not an address."""
    ref = data["template"]
    if ref not in templates:
        try:
            name, number = template_ref_parse(ref)
            templates[ref] = template_resolve(name=name, version=number)
        except TemplateNotFound as error:
            templates[ref] = error  # every item naming it fails the same way, with one lookup
    version = templates[ref]
    if isinstance(version, TemplateNotFound):
        raise version
    rendered = template_render(version=version, data=data.get("template_data") or {})
    merged = dict(data)
    for field in ("subject", "html", "text"):
        if not merged.get(field):
            merged[field] = getattr(rendered, field)
    try:
        if "from" not in merged and rendered.from_email:
            merged["from"] = address_parse(rendered.from_email)
        if "from_name" not in merged and "from" not in data and rendered.from_name:
            merged["from_name"] = rendered.from_name
        if "reply_to" not in merged and rendered.reply_to:
            merged["reply_to"] = [address_parse(item) for item in rendered.reply_to.split(",") if item.strip()]
    except InvalidAddress as error:
        raise ValidationFailed(
            f"Template '{ref}' renders a sender or reply-to that is not an address: {error}",
            fields={"template": [str(error)]},
            code="template_render_error",
        ) from None
    if not merged.get("subject"):
        raise ValidationFailed(
            f"Template '{ref}' has no subject: give one.", fields={"subject": ["Required."]}, code="missing_fields"
        )
    _rendered_headers_check(ref, merged, data)
    if not merged.get("html") and not merged.get("text"):
        raise ValidationFailed(
            f"Template '{ref}' renders neither html nor text.", fields={"template": ["Empty body."]},
            code="template_render_error",
        )
    return merged, version


def _rendered_headers_check(ref: str, merged: dict, given: dict) -> None:
    """Hold the header texts a template rendered (subject, sender name, display
    names) to the rules of the same fields given in the request: ValidationFailed
    (template_render_error) naming the field."""
    texts = []
    if "subject" not in given:
        texts.append(("subject", "The rendered subject", merged["subject"], MAX_SUBJECT))
    if "from_name" not in given and merged.get("from_name"):
        texts.append(("from_name", "The rendered from_name", merged["from_name"], MAX_DISPLAY_NAME))
    if "from" not in given and merged.get("from"):
        texts.append(("from", "The rendered sender's display name", merged["from"][0], MAX_DISPLAY_NAME))
    if "reply_to" not in given:
        noun = "A rendered reply-to display name"
        texts += [("reply_to", noun, name, MAX_DISPLAY_NAME) for name, _ in merged.get("reply_to", [])]
    for field, noun, value, max_length in texts:
        problem = header_text_problem(value, noun=noun, max_length=max_length, display_name=field != "subject")
        if problem:
            raise ValidationFailed(
                f"Template '{ref}': {problem}", fields={field: [problem]}, code="template_render_error"
            )


_ROLES = tuple(Recipient.Role.values)  # the enum builds this list anew on every read
# The batch's cache of templates also holds its streams, under this key (no template has it as a name).
_STREAMS_CACHE = ("streams",)


def _submission_build(
    *, api_key: ApiKey | None, data: dict, now: datetime, templates: dict | None = None, test: bool = False
) -> _Submission:
    """Apply the template, policy and size limits and build the unsaved rows of one request."""
    version = None
    if data.get("template"):
        data, version = _template_apply(data, {} if templates is None else templates)
    from_name, from_email = data.get("from") or ("", address_key(settings.DEFAULT_FROM_EMAIL))
    from_name = data.get("from_name", from_name or settings.DEFAULT_FROM_NAME)
    reply_to = data.get("reply_to", [])
    recipients_by_role = {role: data.get(role, []) for role in _ROLES}
    # The key's own scope first: a key limited to other domains learns nothing of this one's state.
    api_key_sender_check(api_key=api_key, from_domain=from_email.rpartition("@")[2])
    stream = stream_send_check(
        api_key=api_key, data=data, recipients=len({address for pairs in recipients_by_role.values() for _, address in pairs}),
        cache=None if templates is None else templates.setdefault(_STREAMS_CACHE, {}),
    )
    check_sender_policy(
        from_email=from_email,
        reply_to=[address for _, address in reply_to],
        recipients={role: [address for _, address in pairs] for role, pairs in recipients_by_role.items() if pairs},
    )
    send_at = data.get("send_at")
    scheduled = send_at is not None and send_at > now
    message = Message(
        from_email=from_email,
        sending_domain=from_email.rpartition("@")[2],
        from_name=from_name,
        # Shown as given (a non-ASCII name stays readable); encoded when sent.
        reply_to=[str(Address(display_name=name, addr_spec=address)) for name, address in reply_to],
        subject=data["subject"],
        html=data.get("html", ""),
        text=data.get("text", ""),
        headers=data.get("headers", {}),
        tags=data.get("tags", []),
        metadata=data.get("metadata", {}),
        priority=stream.priority,
        stream=stream.stream,
        unsubscribe=stream.unsubscribe,
        # A test key's emails go to the mailbox simulator, never to the provider.
        provider=Provider.TEST if test or (api_key is not None and api_key.test) else settings.EMAIL_PROVIDER,
        api_key=api_key,
        send_at=send_at,
        next_attempt_at=send_at if scheduled else now,
    )
    message.tracking = _tracking(data, message, default=stream.track)
    if version is not None:
        message.template_name, message.template_version = version.template.name, version.version
        message.template_data = data.get("template_data") or {}
    message.group_id = data.get("group_id") or None
    if data.get("email_id"):
        message.email_id = data["email_id"]
    attachments = [
        Attachment(filename=a["filename"], content_type=a["content_type"], content=a["content"], size=len(a["content"]))
        for a in data.get("attachments", [])
    ]
    recipients, seen = [], set()
    for role, pairs in recipients_by_role.items():
        for name, address in pairs:
            if address not in seen:  # an address listed twice receives one copy
                seen.add(address)
                recipients.append(Recipient(email=address, name=name, role=role, group_id=message.group_id))
    _check_size(message, recipients, attachments)
    return _Submission(message=message, recipients=recipients, attachments=attachments)


def _tracking(data: dict, message: Message, *, default: dict) -> dict:
    """The send's tracking (its `track`, else its stream's `default`); with
    emailsvc's own click tracking (every provider but SES) also the destinations
    of its tracked links, stored with the message so a click is answered by one
    primary-key read."""
    tracking = track_requested(data.get("track"), default)
    if tracking["clicks"] and message.provider != Provider.SES and message.html:
        tracking["links"] = tracked_links(message.html, headers=message.headers)
    return tracking


def _submissions_store(submissions: list[_Submission], *, now: datetime, groups_exist: bool = False) -> None:
    """Store submissions in bulk, in the caller's transaction: a few queries in all,
    whatever their number. Enqueues the queued ones after commit. `groups_exist`:
    their groups are known to be stored (copies of stored emails)."""
    group_ids = {s.message.group_id for s in submissions if s.message.group_id}
    if group_ids and not groups_exist:
        Group.objects.bulk_create([Group(id=group_id) for group_id in group_ids], ignore_conflicts=True)
    suppressed = suppressed_addresses(addresses=list({r.email for s in submissions for r in s.recipients}))
    # Addresses unsubscribed from a message's stream only (emailsvc.streams).
    unsubscribed = stream_suppressed_recipients(
        messages=[(s.message.stream, [r.email for r in s.recipients]) for s in submissions]
    )
    paused = pauses_active(now=now)
    for submission, held in zip(submissions, unsubscribed, strict=True):
        message = submission.message
        scheduled = message.send_at is not None and message.send_at > now
        status.submission_statuses(
            message=message, recipients=submission.recipients, suppressed={**held, **suppressed} if held else suppressed,
            scheduled=scheduled,
            held=paused.holds(message.sending_domain, message.stream),  # accepted; waits for the resume
        )
        if message.state == WorkState.QUEUED:
            message.queued_at = now
    rows_insert(Message, [s.message for s in submissions])
    rows: list[Recipient | Attachment] = []
    for submission in submissions:
        for row in submission.recipients + submission.attachments:
            row.message = submission.message
            rows.append(row)
    rows_insert(Recipient, [row for row in rows if isinstance(row, Recipient)])
    Attachment.objects.bulk_create([row for row in rows if isinstance(row, Attachment)])
    status.submission_changes_record(recipients=(r for s in submissions for r in s.recipients), at=now)
    queued = [s.message.priority for s in submissions if s.message.state == WorkState.QUEUED]
    if queued:
        transaction.on_commit(lambda: deliveries_enqueue(priorities=queued))
    # Scheduled messages due soon get their task now, with that ETA; later ones
    # get it from scheduled_publish (beat) once they come within the horizon.
    horizon = now + timedelta(seconds=settings.SCHEDULED_HORIZON_SECONDS)
    # Messages due at the same moment (a batch's send_at, a drain batch's soft-bounce
    # re-sends) share their tasks: one per chunk, not one per message.
    soon: dict[datetime, list[str]] = {}
    for submission in submissions:
        message = submission.message
        if message.state == WorkState.SCHEDULED and message.send_at <= horizon:
            soon.setdefault(message.send_at, []).append(message.priority)
    for send_at, priorities in soon.items():
        transaction.on_commit(lambda send_at=send_at, priorities=priorities: deliveries_enqueue(priorities=priorities, eta=send_at))


def _unstorable() -> ValidationFailed:
    return ValidationFailed("A value is too long or holds characters that cannot be stored.", code="invalid_field")


def _duplicate_email_id(email_id: str) -> Conflict:
    return Conflict(f"An email with email_id '{email_id}' already exists.", code="duplicate_email_id")


def message_submit(*, api_key: ApiKey | None, data: dict, test: bool = False) -> Message:
    """Store a validated send request and enqueue its delivery after commit.

    `data` is SendEmailInputSerializer.validated_data. Applies the key's
    sending domains (Forbidden `key_domain_not_allowed`), the domain policy
    and the size limit; suppressed recipients are marked `suppressed` at once; a
    future `send_at` makes it `scheduled` (released by beat). A test key's
    email (or any with `test`: a resend of a test email) is one for the mailbox
    simulator, never for the provider (emailsvc.providers.testmode). Raises
    Forbidden, PolicyViolation, PayloadTooLarge, Conflict(duplicate_email_id).
    Never talks to the provider.
    """
    now = timezone.now()
    submission = _submission_build(api_key=api_key, data=data, now=now, test=test)
    try:
        with transaction.atomic():
            _submissions_store([submission], now=now)
    except IntegrityError:
        if Message.objects.filter(email_id=submission.message.email_id).exists():
            raise _duplicate_email_id(submission.message.email_id) from None
        raise
    except DataError:
        raise _unstorable() from None
    submission.message.recipients_list = submission.recipients
    return submission.message


def message_submit_batch(*, api_key: ApiKey | None, items: list[dict | EmailsvcError]) -> list[Message | EmailsvcError]:
    """Store many send requests at once; one bad item never fails the others.

    `items` holds each item's validated data, or the EmailsvcError its
    validation raised. Returns, in the same order, the stored Message or the
    item's error. The good items are stored in one transaction with bulk
    inserts; if that meets a conflict (an email_id taken meanwhile), each item
    is stored on its own so only the conflicting ones fail.
    """
    now = timezone.now()
    results: list[Message | EmailsvcError] = []
    templates: dict = {}
    for item in items:
        if isinstance(item, EmailsvcError):
            results.append(item)
            continue
        try:
            results.append(_submission_build(api_key=api_key, data=item, now=now, templates=templates))
        except EmailsvcError as error:
            results.append(error)
    wanted = [r.message.email_id for r in results if isinstance(r, _Submission)]
    taken = set(Message.objects.filter(email_id__in=wanted).values_list("email_id", flat=True))
    seen: set[str] = set()
    for index, result in enumerate(results):
        if isinstance(result, _Submission):
            email_id = result.message.email_id
            if email_id in taken or email_id in seen:
                results[index] = _duplicate_email_id(email_id)
            seen.add(email_id)
    submissions = [r for r in results if isinstance(r, _Submission)]
    try:
        with transaction.atomic():
            _submissions_store(submissions, now=now)
    except (IntegrityError, DataError):
        # Some item the checks let through was refused by the database: store
        # them one by one so only that item fails.
        for index, result in enumerate(results):
            if isinstance(result, _Submission):
                result.message.pk = None
                try:
                    with transaction.atomic():
                        _submissions_store([result], now=now)
                except IntegrityError:
                    results[index] = _duplicate_email_id(result.message.email_id)
                except DataError:
                    results[index] = _unstorable()
    for index, result in enumerate(results):
        if isinstance(result, _Submission):
            result.message.recipients_list = result.recipients
            results[index] = result.message
    return results


def _check_size(message: Message, recipients: list[Recipient], attachments: list[Attachment]) -> None:
    """Raise PayloadTooLarge when the whole encoded message is over MAX_MESSAGE_BYTES.

    Only a message whose upper-bound estimate is over the limit is built and
    measured: building every message would cost the API most of its speed.
    """
    if _estimated_size(message, recipients, attachments) <= settings.MAX_MESSAGE_BYTES:
        return
    try:
        raw = providers.build_email(message, recipients, attachments).message().as_bytes()
    except (UnicodeError, ValueError) as error:
        # Validation should have refused whatever gets here: a bug, logged with
        # its traceback, but answered as this request's problem, not a 500.
        logger.error("message could not be encoded for the size check", exc_info=True)
        raise ValidationFailed(f"The message cannot be encoded: {error}", code="invalid_field") from None
    size = len(raw) + raw.count(b"\n")  # each line ends in CRLF on the wire
    if size > settings.MAX_MESSAGE_BYTES:
        raise PayloadTooLarge(
            f"The encoded message is {size:,} bytes; at most {settings.MAX_MESSAGE_BYTES:,} are allowed."
        )


_RETRY_COPIED = [
    "api_key_id", "group_id", "from_email", "sending_domain", "from_name", "reply_to", "subject", "html", "text",
    "headers", "tags", "metadata", "template_name", "template_version", "template_data", "priority", "stream",
    "unsubscribe", "provider", "tracking",
]


def message_retries_submit(*, retries: list[tuple[int, str]], at: datetime) -> dict[tuple[int, str], Message]:
    """Send recipients of messages again at `at`, each as a new email linked to
    its original (`retry_of`): what a soft bounce earns once (SPEC §6.4).

    A copy keeps the original's content, sender, group, tags, metadata,
    template record and attachments, and goes to that address only. A pair
    earns none — and nothing is sent — when its message is itself such a
    retry, or already has one for that address. Set-based (the event drain
    applies a receive batch's soft bounces together): five queries and one
    bulk store whatever their number, in the caller's transaction. Returns the
    new messages by (message id, recipient address); a pair that earns none is
    left out."""
    pairs = list(dict.fromkeys(retries))
    if not pairs:
        return {}
    message_ids = {message_id for message_id, _ in pairs}
    emails = {email for _, email in pairs}
    # By key only (a retry is not retried again: checked here, so the lookup stays on the primary key).
    originals = {m.pk: m for m in Message.objects.filter(pk__in=message_ids) if m.retry_of_id is None}
    recipients = {
        (r.message_id, r.email): r
        for r in Recipient.objects.filter(message_id__in=originals, email__in=emails).only("message_id", "email", "name", "role")
    }
    done = set(
        Recipient.objects.filter(message__retry_of_id__in=originals, email__in=emails).values_list("message__retry_of_id", "email")
    )
    attachments: dict[int, list[Attachment]] = {}
    for attachment in Attachment.objects.filter(message_id__in=originals).order_by("id"):
        attachments.setdefault(attachment.message_id, []).append(attachment)
    submissions, created = [], {}
    for pair in pairs:
        original, recipient = originals.get(pair[0]), recipients.get(pair)
        if original is None or recipient is None or pair in done:
            continue
        message = Message(
            **{name: getattr(original, name) for name in _RETRY_COPIED}, send_at=at, next_attempt_at=at, retry_of=original
        )
        copy = Recipient(email=recipient.email, name=recipient.name, role=recipient.role, group_id=original.group_id)
        copies = [
            Attachment(filename=a.filename, content_type=a.content_type, content=a.content, size=a.size)
            for a in attachments.get(original.pk, [])
        ]
        submissions.append(_Submission(message=message, recipients=[copy], attachments=copies))
        created[pair] = message
    if submissions:
        _submissions_store(submissions, now=timezone.now(), groups_exist=True)
    for (message_id, _), message in created.items():
        logger.info(
            "soft bounce: email_id=%s is sent again as %s at %s", originals[message_id].email_id, message.email_id, at.isoformat()
        )
    return created
