"""The safety breaker and sending pauses (SPEC §6.4).

SES reviews an account at a 5 % bounce rate or a 0.1 % complaint rate and
pauses it at about 10 % / 0.5 %; a paused account stops every application of
the organisation. The breaker pauses sending earlier, from our own figures —
rolling 24 h rates per sending domain (`SendingCounts`, fed by counts.py
from the status changes once they commit) — and only for the domain at fault: its messages wait
(`held`), nothing fails, the API keeps accepting, other domains keep sending.
The account as a whole is paused when the domains still sending cross the lines
together, and when the provider says the account stopped sending (a probe of
SES `GetAccount` lifts that) or its daily quota is spent (lifted when the
rolling window frees up, from our own send history).

An operator resumes a pause from the admin, the API or
`python manage.py resume_sending [--domain D]`; breaker pauses may also lift
on their own after BREAKER_AUTO_RESUME_HOURS.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.sql_engine import any_null
from emailsvc import status
from emailsvc.models import SendingCounts, SendingPause

logger = logging.getLogger(__name__)

ACCOUNT = SendingPause.ACCOUNT
WINDOW = timedelta(hours=24)


# --- Pauses ------------------------------------------------------------------------


def paused_domains(*, now: datetime | None = None) -> set[str]:
    """Domains (and "*" for the whole account) that must not send now.

    Pauses whose `until` has passed are lifted here, so a quota or cool-down
    wait ends without a beat task. One indexed query when nothing is paused.
    """
    if not any_null(SendingPause, "resumed_at"):  # the usual answer, nothing paused, without building a query
        return set()
    now = now or timezone.now()
    active = list(SendingPause.objects.filter(resumed_at__isnull=True).values_list("domain", "until"))
    expired = [domain for domain, until in active if until is not None and until <= now]
    for domain in expired:
        sending_resume(domain=domain, by="its wait ended")
    return {domain for domain, until in active if domain not in expired}


def sending_pause(
    *, domain: str, cause: str, reason: str, figures: dict | None = None, until: datetime | None = None
) -> SendingPause:
    """Pause a sending domain ("*": the account). Idempotent: an active pause
    of that domain is returned as it is. A domain's waiting messages are held."""
    now = timezone.now()
    try:
        with transaction.atomic():
            pause = SendingPause.objects.create(
                domain=domain, cause=cause, reason=reason[:2000], figures=figures or {}, paused_at=now, until=until
            )
            if domain != ACCOUNT:
                held = status.domain_hold(domain=domain, at=now)
            else:
                held = 0
    except IntegrityError:  # already paused (one active pause per domain)
        return SendingPause.objects.get(domain=domain, resumed_at__isnull=True)
    logger.error(
        "ALERT sending paused domain=%s cause=%s held=%d until=%s: %s figures=%s",
        domain, cause, held, until.isoformat() if until else "-", reason, figures or {},
    )
    return pause


def sending_resume(*, domain: str | None = None, by: str) -> int:
    """Resume a domain ("*": the account; None: every active pause); how many
    pauses ended. Held messages are queued again and delivery tasks published."""
    from emailsvc.delivery.queueing import deliveries_enqueue, due_work_enqueue

    now = timezone.now()
    with transaction.atomic():
        pauses = SendingPause.objects.select_for_update().filter(resumed_at__isnull=True)
        if domain is not None:
            pauses = pauses.filter(domain=domain)
        ended = list(pauses.values_list("domain", flat=True))
        # What the domain had sent, bounced and complained when resumed: from
        # now on it is judged on what it does after (see figures_24h).
        window = figures_24h(now=now)
        for pause in pauses:
            at_resume = (window.get(pause.domain) or DomainFigures(pause.domain)).as_dict()
            pause.figures = {**pause.figures, "at_resume": at_resume}
            pause.resumed_at, pause.resumed_by = now, by[:200]
            pause.save(update_fields=["figures", "resumed_at", "resumed_by"])
        released: list[str] = []
        for name in ended:
            if name != ACCOUNT:
                released += status.domain_release(domain=name, at=now)
    for name in ended:
        logger.warning("sending resumed domain=%s by=%s", name, by)
    if released:
        transaction.on_commit(lambda: deliveries_enqueue(priorities=released))
    if ACCOUNT in ended:
        transaction.on_commit(due_work_enqueue)
    return len(ended)


# --- The breaker -------------------------------------------------------------------------


@dataclass
class DomainFigures:
    domain: str
    sent: int = 0
    bounced: int = 0
    complained: int = 0

    @property
    def bounce_rate(self) -> float | None:
        return round(self.bounced / self.sent, 6) if self.sent else None

    @property
    def complaint_rate(self) -> float | None:
        return round(self.complained / self.sent, 6) if self.sent else None

    def as_dict(self) -> dict:
        return {
            "sent": self.sent, "bounced": self.bounced, "complained": self.complained,
            "bounce_rate": self.bounce_rate, "complaint_rate": self.complaint_rate,
        }


@dataclass
class BreakerResult:
    figures: dict[str, DomainFigures] = field(default_factory=dict)
    account: DomainFigures | None = None
    paused: list[str] = field(default_factory=list)


def figures_24h(*, now: datetime | None = None) -> dict[str, DomainFigures]:
    """Sent, bounced and complained per sending domain over the rolling 24 h
    (hourly counts; the oldest hour counts whole). Counting restarts for a
    domain at its last resume, so a resumed domain is judged on what it sent since."""
    now = now or timezone.now()
    since = (now - WINDOW).replace(minute=0, second=0, microsecond=0)
    rows = SendingCounts.objects.filter(hour__gte=since).values_list(
        "sending_domain", "hour", "sent", "bounced", "complained"
    )
    figures: dict[str, DomainFigures] = {}
    for domain, _hour, sent, bounced, complained in rows:
        entry = figures.setdefault(domain, DomainFigures(domain))
        entry.sent += sent or 0
        entry.bounced += bounced or 0
        entry.complained += complained or 0
    # A domain resumed within the window is judged on what it did since: its
    # figures at the resume are taken off (never below zero as old hours leave).
    resumes = SendingPause.objects.filter(resumed_at__gte=now - WINDOW).order_by("resumed_at")
    latest = dict(resumes.values_list("domain", "figures"))  # the last resume of each domain counts
    for domain, pause_figures in latest.items():
        baseline = (pause_figures or {}).get("at_resume")
        if baseline and domain in figures:
            entry = figures[domain]
            entry.sent = max(0, entry.sent - baseline.get("sent", 0))
            entry.bounced = max(0, entry.bounced - baseline.get("bounced", 0))
            entry.complained = max(0, entry.complained - baseline.get("complained", 0))
    return figures


def _over(figures: DomainFigures) -> str:
    """Why these figures trip the breaker ("" when they do not)."""
    if figures.sent < settings.BREAKER_MIN_SENT:
        return ""
    if figures.bounce_rate is not None and figures.bounce_rate >= settings.BOUNCE_RATE_PAUSE:
        return f"bounce rate {figures.bounce_rate:.2%} ≥ {settings.BOUNCE_RATE_PAUSE:.2%} over 24 h ({figures.bounced}/{figures.sent})"
    if figures.complaint_rate is not None and figures.complaint_rate >= settings.COMPLAINT_RATE_PAUSE:
        return (
            f"complaint rate {figures.complaint_rate:.3%} ≥ {settings.COMPLAINT_RATE_PAUSE:.3%} over 24 h "
            f"({figures.complained}/{figures.sent})"
        )
    return ""


def breaker_check(*, now: datetime | None = None) -> BreakerResult:
    """Pause every sending domain whose rolling 24 h bounce or complaint rate
    crossed its line (with at least BREAKER_MIN_SENT sent), then the account if
    the domains still sending cross it together; lift breaker pauses older than
    BREAKER_AUTO_RESUME_HOURS (when set). Beat runs this every
    BREAKER_INTERVAL_SECONDS, and the event drain after applying bounces."""
    now = now or timezone.now()
    result = BreakerResult()
    if settings.BREAKER_AUTO_RESUME_HOURS:
        cutoff = now - timedelta(hours=settings.BREAKER_AUTO_RESUME_HOURS)
        for domain in SendingPause.objects.filter(
            resumed_at__isnull=True, cause=SendingPause.Cause.BREAKER, paused_at__lte=cutoff
        ).values_list("domain", flat=True):
            sending_resume(domain=domain, by="auto-resume after cool-down")
    paused = paused_domains(now=now)
    result.figures = figures_24h(now=now)
    account = DomainFigures(ACCOUNT)
    for domain, figures in sorted(result.figures.items()):
        if domain in paused:
            continue
        why = _over(figures)
        if why:
            sending_pause(domain=domain, cause=SendingPause.Cause.BREAKER, reason=why, figures=figures.as_dict())
            result.paused.append(domain)
            continue
        account.sent += figures.sent
        account.bounced += figures.bounced
        account.complained += figures.complained
    result.account = account
    why = _over(account)
    if why and ACCOUNT not in paused:
        sending_pause(domain=ACCOUNT, cause=SendingPause.Cause.BREAKER, reason=why, figures=account.as_dict())
        result.paused.append(ACCOUNT)
    return result


# --- Provider stops ------------------------------------------------------------------------


def provider_stopped(*, reason: str) -> SendingPause:
    """The provider says the account stopped sending: pause everything until a
    probe sees it sending again (or, with no probe for the provider, for
    DELIVERY_RETRY_MAX_SECONDS)."""
    until = None if settings.EMAIL_PROVIDER in ("ses", "sandbox") else (
        timezone.now() + timedelta(seconds=settings.DELIVERY_RETRY_MAX_SECONDS)
    )
    return sending_pause(domain=ACCOUNT, cause=SendingPause.Cause.PROVIDER, reason=reason, until=until)


def quota_spent(*, reason: str, now: datetime | None = None) -> SendingPause:
    """The provider's daily quota (a rolling 24 h count) is spent: wait until
    the oldest hour of our own sends in that window leaves it."""
    now = now or timezone.now()
    since = now - WINDOW
    oldest = (
        SendingCounts.objects.filter(hour__gte=since.replace(minute=0, second=0, microsecond=0), sent__gt=0)
        .order_by("hour").values_list("hour", flat=True).first()
    )
    until = max((oldest + WINDOW + timedelta(hours=1)) if oldest else now + timedelta(hours=1), now + timedelta(minutes=1))
    return sending_pause(domain=ACCOUNT, cause=SendingPause.Cause.QUOTA, reason=reason, until=until)


def provider_probe() -> bool:
    """Lift a provider pause once SES says the account sends again (SESv2
    GetAccount: SendingEnabled). True when it lifted one."""
    if not SendingPause.objects.filter(resumed_at__isnull=True, cause=SendingPause.Cause.PROVIDER).exists():
        return False
    if settings.EMAIL_PROVIDER not in ("ses", "sandbox"):
        return False
    from botocore.exceptions import BotoCoreError, ClientError

    from emailsvc.providers.ses import shared_client

    try:
        account = shared_client().get_account()  # the client sends go through
    except (BotoCoreError, ClientError) as error:
        logger.warning("provider probe failed: %s", error)
        return False
    if not account.get("SendingEnabled", False):
        return False
    return bool(sending_resume(domain=ACCOUNT, by="provider probe: SES sending is enabled"))


# --- What operators and callers see ---------------------------------------------------------


def sending_status(*, now: datetime | None = None) -> dict:
    """The account's and every known domain's pause state, with their 24 h figures."""
    now = now or timezone.now()
    active = {p.domain: p for p in SendingPause.objects.filter(resumed_at__isnull=True)}
    figures = figures_24h(now=now)

    def entry(domain: str, figure: DomainFigures | None) -> dict:
        pause = active.get(domain)
        return {
            "domain": domain,
            "paused": pause is not None,
            "cause": pause.cause if pause else None,
            "reason": pause.reason if pause else "",
            "since": pause.paused_at if pause else None,
            "until": pause.until if pause else None,
            "figures_at_pause": pause.figures if pause else None,
            "last_24h": (figure or DomainFigures(domain)).as_dict(),
        }

    total = DomainFigures(ACCOUNT)
    for figure in figures.values():
        total.sent += figure.sent
        total.bounced += figure.bounced
        total.complained += figure.complained
    domains = sorted(set(figures) | (set(active) - {ACCOUNT}))
    return {
        "account": entry(ACCOUNT, total),
        "domains": [entry(domain, figures.get(domain)) for domain in domains],
        "thresholds": {
            "bounce_rate_pause": settings.BOUNCE_RATE_PAUSE,
            "complaint_rate_pause": settings.COMPLAINT_RATE_PAUSE,
            "min_sent": settings.BREAKER_MIN_SENT,
            "auto_resume_hours": settings.BREAKER_AUTO_RESUME_HOURS or None,
        },
    }
