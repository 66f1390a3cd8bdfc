"""The operator console: admin pages beside the model lists (SPEC §1 support
staff, §7).

- the address page: "why didn't they get our email?" in one search;
- actions on a message (resend, cancel) and an address (lift, suppress);
- the operations pages: sending pauses (the breaker) and queues (the events
  drain, delivery backlog, the rate limiter).

Views validate, call the service the API and the commands use, and redirect
with a message; reads come from console.selectors. Every view is
wrapped by the admin site (staff login, CSRF) in console.urls and checks
the model permission its action needs.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from console.selectors import (
    address_history,
    delivery_backlog,
    operations_probes,
    sending_now,
    sending_overview,
)
from core.addresses import InvalidAddress, address_canonical, address_key
from core.admin_lists import address_url, admin_change_url
from core.errors import EmailsvcError
from emailsvc.models import Message, SendingPause, Suppression
from emailsvc.selectors import one_or_none


def _actor(request: HttpRequest) -> str:
    return f"admin:{request.user.get_username()}"


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"This needs the {permission} permission.")


def _back(request: HttpRequest, default: str) -> HttpResponseRedirect:
    """Back to the page the form was on (a `next` on this site), else `default`."""
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        target = default
    return HttpResponseRedirect(target)


def _context(request: HttpRequest, title: str, **values) -> dict:
    return {**admin.site.each_context(request), "title": title, **values}


# --- The address page -------------------------------------------------------------


def address_view(request: HttpRequest) -> HttpResponse:
    """GET ?q=<address or email id>: an email id opens that email's page; an
    address shows its page (messages with timelines, suppression, soft bounces,
    complaints). Older messages with &before=<message pk>."""
    _require(request, "emailsvc.view_message")
    query = (request.GET.get("q") or "").replace("\x00", "").strip()[:1280]  # PostgreSQL refuses NUL
    if not query:
        return TemplateResponse(request, "admin/console/address.html", _context(request, "Look up an address"))
    message = one_or_none(Message.objects.filter(email_id=query[:200]).only("pk"))  # an email id (may hold "@")
    if message is not None:
        return HttpResponseRedirect(admin_change_url(message))
    before = request.GET.get("before")
    history = address_history(address=query, before=int(before) if before and before.isdigit() else None)
    context = _context(
        request, history.address, history=history, query=query, page_url=request.get_full_path(),
        can_lift=request.user.has_perm("emailsvc.delete_suppression"),
        can_suppress=request.user.has_perm("emailsvc.add_suppression"),
        can_resend=request.user.has_perm("emailsvc.add_message"),
        can_cancel=request.user.has_perm("emailsvc.change_message"),
        reasons=Suppression.Reason.choices,
    )
    return TemplateResponse(request, "admin/console/address.html", context)


@require_POST
def suppression_lift_view(request: HttpRequest) -> HttpResponse:
    from emailsvc.suppressions.services import suppression_lift

    _require(request, "emailsvc.delete_suppression")
    email = request.POST.get("email", "")
    if suppression_lift(email=email):
        messages.success(request, f"{address_key(email)} is no longer suppressed: it will be sent to again.")
    else:
        messages.warning(request, f"{address_key(email)} was not suppressed.")
    return _back(request, address_url(email))


@require_POST
def suppression_add_view(request: HttpRequest) -> HttpResponse:
    from emailsvc.suppressions.services import suppression_add

    _require(request, "emailsvc.add_suppression")
    email = request.POST.get("email", "")
    reason = request.POST.get("reason") or Suppression.Reason.MANUAL
    try:
        address_canonical(email)
    except InvalidAddress as error:
        messages.error(request, str(error))
        return _back(request, reverse("console:address"))
    if reason not in Suppression.Reason.values:
        messages.error(request, f"Choose one of the reasons: {', '.join(Suppression.Reason.values)}.")
        return _back(request, address_url(email))
    suppression_add(email=email, reason=reason, source=_actor(request), note=request.POST.get("note", "")[:2000])
    messages.success(request, f"{address_key(email)} is suppressed ({reason}): nothing will be sent to it.")
    return _back(request, address_url(email))


# --- Actions on a message -------------------------------------------------------------


@require_POST
def message_resend_view(request: HttpRequest, message_id: int) -> HttpResponse:
    """Send the email again (to every recipient, or the posted `email` only) as
    a new email linked to it, through the submit service."""
    from emailsvc.api.emails_inputs import send_request_validate
    from emailsvc.submission.resend import message_resend

    _require(request, "emailsvc.add_message")
    original = get_object_or_404(Message.objects.only("pk", "email_id"), pk=message_id)
    email = request.POST.get("email") or None
    try:
        resent = message_resend(message_id=original.pk, by=_actor(request), validate=send_request_validate, email=email)
    except EmailsvcError as error:
        messages.error(request, f"Not resent: {error.detail}")
        return _back(request, admin_change_url(original))
    recipients = resent.recipients_list
    suppressed = [r.email for r in recipients if r.status == "suppressed"]
    note = f"; suppressed, so not sent: {', '.join(suppressed)}" if suppressed else ""
    messages.success(
        request,
        format_html(
            'Email {} resent as <a href="{}">{}</a> ({} recipient(s), {}){}.',
            original.email_id, admin_change_url(resent), resent.email_id, len(recipients), resent.status, note,
        ),
    )
    return _back(request, admin_change_url(resent))


@require_POST
def message_cancel_view(request: HttpRequest, message_id: int) -> HttpResponse:
    from emailsvc.delivery.scheduling import message_cancel

    _require(request, "emailsvc.change_message")
    message = get_object_or_404(Message.objects.only("pk", "email_id"), pk=message_id)
    try:
        message_cancel(email_id=message.email_id)
    except EmailsvcError as error:
        messages.error(request, f"Not cancelled: {error.detail}")
    else:
        messages.success(request, f"Email {message.email_id} cancelled: it will not be sent.")
    return _back(request, admin_change_url(message))


# --- Operations -------------------------------------------------------------------------


def sending_view(request: HttpRequest) -> HttpResponse:
    """The breaker: the account and every sending domain, paused or not, with
    their rolling 24 h figures; Resume and Pause."""
    _require(request, "emailsvc.view_sendingpause")
    context = _context(
        request, "Sending status", overview=sending_overview(), sending_now=sending_now(),
        can_change=request.user.has_perm("emailsvc.change_sendingpause"), account=SendingPause.ACCOUNT,
    )
    return TemplateResponse(request, "admin/console/sending.html", context)


@require_POST
def sending_resume_view(request: HttpRequest) -> HttpResponse:
    from emailsvc.sending_control.breaker import sending_resume

    _require(request, "emailsvc.change_sendingpause")
    domain = request.POST.get("domain") or None  # none: every pause, as the API and the command do
    if domain and domain != SendingPause.ACCOUNT:
        domain = domain.strip().lower()
    # A row's Resume names its stream ("": the domain's pause as a whole); none given: every pause of the domain.
    stream = request.POST["stream"].strip() if "stream" in request.POST else None
    resumed = sending_resume(domain=domain, stream=stream, by=_actor(request))
    what = f"{domain or 'all'} ({stream})" if stream else domain or "all"
    if resumed:
        messages.success(request, f"Resumed {resumed} pause(s): {what}. Held emails are queued again.")
    else:
        messages.warning(request, f"Nothing to resume for {what if domain or stream else 'any domain'}.")
    return HttpResponseRedirect(reverse("console:sending"))


@require_POST
def sending_pause_view(request: HttpRequest) -> HttpResponse:
    from emailsvc.sending_control.breaker import sending_pause

    _require(request, "emailsvc.change_sendingpause")
    domain = (request.POST.get("domain") or "").strip().lower()
    stream = (request.POST.get("stream") or "").strip()
    reason = (request.POST.get("reason") or "").strip()
    if not domain:
        messages.error(request, 'Give a sending domain, or "*" for the whole account.')
        return HttpResponseRedirect(reverse("console:sending"))
    if stream and domain == SendingPause.ACCOUNT:
        messages.error(request, "The whole account pauses with every stream: give a sending domain for one stream.")
        return HttpResponseRedirect(reverse("console:sending"))
    sending_pause(
        domain=domain, stream=stream, cause=SendingPause.Cause.OPERATOR, reason=f"{_actor(request)}: {reason or 'paused'}"
    )
    what = f"{domain} (stream {stream})" if stream else domain
    messages.success(request, f"Sending paused for {what}: its emails wait (held) until resumed.")
    return HttpResponseRedirect(reverse("console:sending"))


def queues_view(request: HttpRequest) -> HttpResponse:
    """The events drain (SQS depth, DLQ, lag, last run, errors), the delivery
    backlog per priority (database and broker) and the rate limiter. Outside
    systems are read with short timeouts: the page answers within seconds even
    when one of them is down."""
    _require(request, "emailsvc.view_message")
    probes = operations_probes()
    backlog = delivery_backlog()
    broker = probes["broker"].value or {}
    for row in backlog:
        row["broker"] = broker.get(row["priority"])
    context = _context(request, "Queues and drain", probes=probes, backlog=backlog, sending_now=sending_now())
    return TemplateResponse(request, "admin/console/queues.html", context)


# --- Sending domains ------------------------------------------------------------------


def domains_view(request: HttpRequest) -> HttpResponse:
    """Every sending domain: SES's status, each record to publish (with a copy
    button) beside what public DNS answered at the last check, and what is missing;
    add a domain, check one now."""
    from emailsvc.domains.selectors import domain_missing, domain_record_rows, domains_list

    _require(request, "emailsvc.view_domain")
    rows = [
        {"domain": domain, "records": domain_record_rows(domain), "missing": domain_missing(domain)}
        for domain in domains_list()
    ]
    context = _context(
        request, "Sending domains", rows=rows,
        can_add=request.user.has_perm("emailsvc.add_domain"), can_check=request.user.has_perm("emailsvc.change_domain"),
    )
    return TemplateResponse(request, "admin/console/domains.html", context)


@require_POST
def domain_add_view(request: HttpRequest) -> HttpResponse:
    from emailsvc.domains.services import domain_create

    _require(request, "emailsvc.add_domain")
    try:
        domain = domain_create(name=request.POST.get("name") or "")
    except EmailsvcError as error:
        messages.error(request, f"Not added: {error.detail}")
    else:
        messages.success(request, f"{domain.name} added: publish its records below, then check it.")
    return HttpResponseRedirect(reverse("console:domains"))


@require_POST
def domain_check_view(request: HttpRequest) -> HttpResponse:
    from emailsvc.domains.services import domain_verify

    _require(request, "emailsvc.change_domain")
    target = reverse("console:domains")
    try:
        domain = domain_verify(name=request.POST.get("name") or "")
    except EmailsvcError as error:
        messages.error(request, f"Not checked: {error.detail}")
    else:
        messages.success(request, f"{domain.name} checked: {domain.status}.")
        target += f"#domain-{domain.name}"
    return HttpResponseRedirect(target)
