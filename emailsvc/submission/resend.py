"""Resending an email from the admin: a new email, linked to the original (SPEC §7)."""

import base64
import logging
from collections.abc import Callable

from django.db import transaction

from core.addresses import address_forms, shown
from core.errors import NotFound
from emailsvc.models import Attachment, Message, Recipient
from emailsvc.selectors import one_or_none
from emailsvc.submission.submit import message_submit

logger = logging.getLogger(__name__)


def _send_request(original: Message, recipients: list[Recipient]) -> dict:
    """The API request that sends `original`'s content again to `recipients`.

    The content is the stored one — the template's rendering at the time, not a
    new one — so the same email goes out even if the template changed since.
    """
    roles: dict[str, list[dict]] = {}
    for recipient in recipients:
        roles.setdefault(recipient.role, []).append({"email": recipient.email, "name": recipient.name})
    if "to" not in roles:  # one cc or bcc address sent again on its own
        roles = {"to": [entry for entries in roles.values() for entry in entries]}
    body = {
        **roles,
        "from": {"email": original.from_email, "name": original.from_name},
        "from_name": original.from_name,
        "subject": original.subject,
        "priority": original.priority,
        "stream": original.stream,
        "unsubscribe": original.unsubscribe,
    }
    optional = {
        "reply_to": original.reply_to, "html": original.html, "text": original.text, "headers": original.headers,
        "tags": original.tags, "metadata": original.metadata, "group_id": original.group_id,
    }
    body.update({name: value for name, value in optional.items() if value})
    track = {name: bool((original.tracking or {}).get(name)) for name in ("opens", "clicks")}
    if any(track.values()):  # sent again as it was first sent: tracked or not
        body["track"] = track
    attachments = Attachment.objects.filter(message_id=original.pk).order_by("id")
    if attachments:
        body["attachments"] = [
            {"filename": a.filename, "content_type": a.content_type, "content": base64.b64encode(bytes(a.content)).decode()}
            for a in attachments
        ]
    return body


def message_resend(
    *, message_id: int, by: str, validate: Callable[[dict], dict], email: str | None = None
) -> Message:
    """Send an email again now, as a new email whose `retry_of` is the original.

    Every recipient of the original gets it again, or only `email` (any form of
    the address) when given. The request goes through `validate` — the API's
    validation of a send request (emailsvc.api.emails_inputs.send_request_validate,
    passed in because it belongs to the API layer above this one) — and
    `message_submit`, so today's sender policy, size limit, suppressions and
    sending pauses apply: a recipient suppressed since is `suppressed` on the
    new email, a paused domain holds it. The original's template record
    (name, version, data) is kept; a test key's email is sent again as a test
    email. `by` is logged.

    Raises NotFound (no such message, or `email` was not one of its
    recipients) and whatever `validate` and message_submit raise
    (ValidationFailed, PolicyViolation, PayloadTooLarge).
    """
    original = one_or_none(Message.objects.filter(pk=message_id))
    if original is None:
        raise NotFound(f"No email with id {message_id}.")
    recipients = list(Recipient.objects.filter(message_id=message_id).order_by("id"))
    if email is not None:
        forms = address_forms(email)
        recipients = [recipient for recipient in recipients if recipient.email in forms]
        if not recipients:
            raise NotFound(f"{shown(email)} is not a recipient of email {original.email_id}.")
    data = validate(_send_request(original, recipients))
    with transaction.atomic():
        # A test email's copy stays a test email, even if its key is gone.
        message = message_submit(api_key=original.api_key, data=data, test=original.is_test)
        link = {
            "retry_of": original, "template_name": original.template_name,
            "template_version": original.template_version, "template_data": original.template_data,
        }
        # The submitted row gets its link before anything can send it: delivery
        # tasks are published when this transaction commits.
        Message.objects.filter(pk=message.pk).update(**link)
        for name, value in link.items():
            setattr(message, name, value)
    logger.info(
        "email_id=%s resent as %s to %d recipient(s) by %s", original.email_id, message.email_id, len(recipients), by
    )
    return message
