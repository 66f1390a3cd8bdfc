"""The safety breaker and sending pauses (SPEC §6.4).

SES reviews an account at a 5 % bounce rate or a 0.1 % complaint rate and
pauses it at about 10 % / 0.5 %; a paused account stops every application of
the organisation. The breaker pauses sending earlier, from our own figures —
rolling 24 h rates per message stream of each sending domain (`SendingCounts`,
fed by counts.py from the status changes once they commit) — and only for the
stream of the domain at fault: its messages wait (`held`), nothing fails, the
API keeps accepting, the domain's other streams and other domains keep sending
(a broadcast complaint spike does not hold the domain's password resets). A
domain as a whole is paused when its streams still sending cross the lines
together; the account when the domains still sending do, when the provider
says the account stopped sending (a probe of SES `GetAccount` lifts that), or
when its daily quota is spent (lifted when the rolling window frees up, from
our own send history).

An operator resumes a pause from the admin, the API or
`python manage.py resume_sending [--domain D] [--stream S]`; breaker pauses may also lift
on their own after BREAKER_AUTO_RESUME_HOURS.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class ActivePauses:
    """What must not send now: whole domains (and "*" for the account), and
    single message streams of a domain, as (domain, stream)."""

    domains: frozenset[str] = frozenset()
    streams: frozenset[tuple[str, str]] = frozenset()

    def holds(self, domain: str, stream: str) -> bool:
        """Whether an email of `stream` from `domain` waits (the account's pause aside)."""
        return domain in self.domains or (domain, stream) in self.streams


NOTHING_PAUSED = ActivePauses()


def pauses_active(*, now: datetime | None = None) -> ActivePauses:
    """The pauses in force now. Pauses whose `until` has passed are lifted
    here, so a quota or cool-down wait ends without a beat task. One indexed
    query when nothing is paused."""
    if not any_null(SendingPause, "resumed_at"):  # the usual answer, nothing paused, without building a query
        return NOTHING_PAUSED
    now = now or timezone.now()
    active = list(SendingPause.objects.filter(resumed_at__isnull=True).values_list("domain", "stream", "until"))
    expired = [(domain, stream) for domain, stream, until in active if until is not None and until <= now]
    for domain, stream in expired:
        sending_resume(domain=domain, stream=stream, by="its wait ended")
    live = [(domain, stream) for domain, stream, _until in active if (domain, stream) not in expired]
    return ActivePauses(
        domains=frozenset(domain for domain, stream in live if not stream),
        streams=frozenset((domain, stream) for domain, stream in live if stream),
    )


def paused_domains(*, now: datetime | None = None) -> set[str]:
    """Domains (and "*" for the whole account) that must not send now, as a
    whole (a pause of one of a domain's streams: `pauses_active`)."""
    return set(pauses_active(now=now).domains)


def sending_pause(
    *, domain: str, stream: str = "", cause: str, reason: str, figures: dict | None = None, until: datetime | None = None
) -> SendingPause:
    """Pause a sending domain ("*": the account), or only one message stream
    of it (`stream`). Idempotent: an active pause of that domain and stream is
    returned as it is. The waiting messages it covers are held."""
    if domain == ACCOUNT and stream:
        raise ValueError("the account is paused as a whole, not per stream")
    now = timezone.now()
    try:
        with transaction.atomic():
            pause = SendingPause.objects.create(
                domain=domain, stream=stream, cause=cause, reason=reason[:2000], figures=figures or {}, paused_at=now,
                until=until,
            )
            if domain != ACCOUNT:
                held = status.domain_hold(domain=domain, stream=stream or None, at=now)
            else:
                held = 0
    except IntegrityError:  # already paused (one active pause per domain and stream)
        return SendingPause.objects.get(domain=domain, stream=stream, resumed_at__isnull=True)
    logger.error(
        "ALERT sending paused domain=%s stream=%s cause=%s held=%d until=%s: %s figures=%s",
        domain, stream or "*", cause, held, until.isoformat() if until else "-", reason, figures or {},
    )
    return pause


def sending_resume(*, domain: str | None = None, stream: str | None = None, by: str) -> int:
    """End active pauses; how many ended. `domain`: that domain's ("*": the
    account's), None: every domain's. `stream`: only the pause of that stream
    ("": only the pause of the domain as a whole), None: every pause of the
    domain. Held messages no other pause still covers are queued again and
    delivery tasks published."""
    from emailsvc.delivery.queueing import deliveries_enqueue, due_work_enqueue

    now = timezone.now()
    with transaction.atomic():
        # Every active pause of the domain (of every domain when None) is locked and
        # read once, not only those that end: a resume of another of its pauses
        # waits for this one's commit and then reads what this one left, so two
        # resumes never each leave the other's emails held; what stays paused is
        # known from this same read (a pause created meanwhile holds its own).
        active = SendingPause.objects.select_for_update().filter(resumed_at__isnull=True).order_by("id")
        if domain is not None:
            active = active.filter(domain=domain)
        active = list(active)
        ending = [pause for pause in active if stream is None or pause.stream == stream]
        if not ending:
            return 0
        ended = [(pause.domain, pause.stream) for pause in ending]
        # From now on a resumed domain or stream is judged on what it does after
        # (stream_figures_24h): on its hourly counts from this hour on, less what
        # this hour had counted when it was resumed.
        hour = now.replace(minute=0, second=0, microsecond=0)
        this_hour = _hour_figures(hour)
        for pause in ending:
            pause.figures = {**pause.figures, "at_resume": _at_resume(this_hour, hour, pause.domain, pause.stream)}
            pause.resumed_at, pause.resumed_by = now, by[:200]
            pause.save(update_fields=["figures", "resumed_at", "resumed_by"])
        still = {(pause.domain, pause.stream) for pause in active if pause.resumed_at is None}
        released: list[str] = []
        for name, stream_name in ended:
            if name == ACCOUNT or (name, "") in still:  # the account holds nothing; a domain still paused keeps its emails
                continue
            if stream_name:
                released += status.domain_release(domain=name, stream=stream_name, at=now)
            else:
                kept = sorted(other for paused, other in still if paused == name and other)
                released += status.domain_release(domain=name, still_paused_streams=kept, at=now)
    for name, stream_name in ended:
        logger.warning("sending resumed domain=%s stream=%s by=%s", name, stream_name or "*", by)
    if released:
        transaction.on_commit(lambda: deliveries_enqueue(priorities=released))
    if (ACCOUNT, "") in ended:
        transaction.on_commit(due_work_enqueue)
    return len(ended)


def _hour_figures(hour: datetime) -> dict[tuple[str, str], DomainFigures]:
    """The counts of one hour per (sending domain, message stream)."""
    figures = {}
    for domain, stream, sent, bounced, complained in SendingCounts.objects.filter(hour=hour).values_list(
        "sending_domain", "stream", "sent", "bounced", "complained"
    ):
        figures[(domain, stream)] = DomainFigures(domain, sent or 0, bounced or 0, complained or 0)
    return figures


def _at_resume(this_hour: dict[tuple[str, str], DomainFigures], hour: datetime, domain: str, stream: str) -> dict:
    """The baseline a resumed pause keeps: the hour it was resumed in and what
    that hour had counted then — the stream's, or each stream's of the domain
    (every one of them restarts)."""
    if stream:
        return {"hour": hour.isoformat(), **(this_hour.get((domain, stream)) or DomainFigures(domain)).as_dict()}
    if domain == ACCOUNT:  # every domain and stream restarts with the account
        domains: dict[str, dict] = {}
        for (name, stream_name), figures in this_hour.items():
            domains.setdefault(name, {})[stream_name] = figures.as_dict()
        return {"hour": hour.isoformat(), "domains": domains}
    streams = {name: figures.as_dict() for (paused, name), figures in this_hour.items() if paused == domain}
    return {"hour": hour.isoformat(), "streams": streams}


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

    def add(self, other: DomainFigures) -> None:
        self.sent += other.sent
        self.bounced += other.bounced
        self.complained += other.complained

    def as_dict(self) -> dict:
        return {
            "sent": self.sent, "bounced": self.bounced, "complained": self.complained,
            "bounce_rate": self.bounce_rate, "complaint_rate": self.complaint_rate,
        }


@dataclass
class BreakerResult:
    figures: dict[str, DomainFigures] = field(default_factory=dict)
    streams: dict[tuple[str, str], DomainFigures] = field(default_factory=dict)
    account: DomainFigures | None = None
    paused: list[str] = field(default_factory=list)  # domains paused as a whole, "*" for the account
    paused_streams: list[tuple[str, str]] = field(default_factory=list)  # (domain, stream) paused


def stream_figures_24h(
    *, now: datetime | None = None, since_resumes: bool = True
) -> dict[tuple[str, str], DomainFigures]:
    """Sent, bounced and complained per (sending domain, message stream) over
    the rolling 24 h (hourly counts; the oldest hour counts whole). Counting
    restarts for a stream at its last resume, or its domain's, so a resumed
    stream is judged on what it sent since (`since_resumes`=False: the whole
    window, as the baselines a resume keeps are taken)."""
    now = now or timezone.now()
    since = (now - WINDOW).replace(minute=0, second=0, microsecond=0)
    rows = list(SendingCounts.objects.filter(hour__gte=since).values_list(
        "sending_domain", "stream", "hour", "sent", "bounced", "complained"
    ))
    figures: dict[tuple[str, str], DomainFigures] = {}
    for domain, stream, _hour, sent, bounced, complained in rows:
        entry = figures.setdefault((domain, stream), DomainFigures(domain))
        entry.sent += sent or 0
        entry.bounced += bounced or 0
        entry.complained += complained or 0
    if not since_resumes:
        return figures
    # A stream resumed within the window (itself, or its domain as a whole) is
    # judged on what it did since: its hours from the resume's hour on, less
    # what that hour had counted at the resume. The latest resume counts.
    baselines: dict[tuple[str, str], dict] = {}
    resumes = SendingPause.objects.filter(resumed_at__gte=now - WINDOW).order_by("resumed_at", "id")
    for domain, stream, cause, pause_figures in resumes.values_list("domain", "stream", "cause", "figures"):
        baseline = (pause_figures or {}).get("at_resume")
        if not baseline:
            continue
        if domain == ACCOUNT:
            # Only the breaker's own account pause restarts the figures when it is resumed
            # (a provider stop or a spent quota lifting says nothing of bounces), and only
            # one resumed since resumes kept their hour.
            if cause != SendingPause.Cause.BREAKER or "hour" not in baseline:
                continue
            # A resumed account is judged on what it sends after, every domain and stream alike.
            baselines = {key: {"hour": baseline["hour"]} for key in figures}
            for name, streams in baseline.get("domains", {}).items():
                for stream_name, stream_baseline in streams.items():
                    baselines[(name, stream_name)] = {"hour": baseline["hour"], **stream_baseline}
            continue
        if stream:
            baselines[(domain, stream)] = baseline
            continue
        for key in [key for key in baselines if key[0] == domain]:
            del baselines[key]
        if "hour" in baseline:  # every stream of the domain restarts at that hour, those without counts then too
            for key in {key for key in figures if key[0] == domain}:
                baselines[key] = {"hour": baseline["hour"]}
            for stream_name, stream_baseline in baseline.get("streams", {}).items():
                baselines[(domain, stream_name)] = {"hour": baseline["hour"], **stream_baseline}
            continue
        # A domain resumed before streams were counted apart: its figures are the stream-less hours'.
        for stream_name, stream_baseline in baseline.get("streams", {"": baseline}).items():
            baselines[(domain, stream_name)] = stream_baseline
    for key, baseline in baselines.items():
        if key not in figures:
            continue
        entry = figures[key]
        if "hour" in baseline:
            start = datetime.fromisoformat(baseline["hour"])
            entry.sent = entry.bounced = entry.complained = 0
            for domain, stream, hour, sent, bounced, complained in rows:
                if (domain, stream) == key and hour >= start:
                    entry.sent += sent or 0
                    entry.bounced += bounced or 0
                    entry.complained += complained or 0
        # A baseline kept before resumes kept their hour is a whole window's figures.
        entry.sent = max(0, entry.sent - baseline.get("sent", 0))
        entry.bounced = max(0, entry.bounced - baseline.get("bounced", 0))
        entry.complained = max(0, entry.complained - baseline.get("complained", 0))
    return figures


def figures_24h(*, now: datetime | None = None) -> dict[str, DomainFigures]:
    """Sent, bounced and complained per sending domain over the rolling 24 h:
    its streams' figures (stream_figures_24h) added up."""
    return _by_domain(stream_figures_24h(now=now))


def _by_domain(streams: dict[tuple[str, str], DomainFigures]) -> dict[str, DomainFigures]:
    domains: dict[str, DomainFigures] = {}
    for (domain, _stream), figures in sorted(streams.items()):
        domains.setdefault(domain, DomainFigures(domain)).add(figures)
    return domains


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
    """Pause every message stream of a sending domain whose rolling 24 h
    bounce or complaint rate crossed its line (with at least BREAKER_MIN_SENT
    sent) — only that stream of that domain; then every domain whose streams
    still sending cross it together; then the account if the domains still
    sending cross it together. Lift breaker pauses older than
    BREAKER_AUTO_RESUME_HOURS (when set). Beat runs this every
    BREAKER_INTERVAL_SECONDS, and the event drain after applying bounces."""
    now = now or timezone.now()
    result = BreakerResult()
    if settings.BREAKER_AUTO_RESUME_HOURS:
        cutoff = now - timedelta(hours=settings.BREAKER_AUTO_RESUME_HOURS)
        for domain, stream in SendingPause.objects.filter(
            resumed_at__isnull=True, cause=SendingPause.Cause.BREAKER, paused_at__lte=cutoff
        ).values_list("domain", "stream"):
            sending_resume(domain=domain, stream=stream, by="auto-resume after cool-down")
    paused = pauses_active(now=now)
    result.streams = stream_figures_24h(now=now)
    result.figures = _by_domain(result.streams)
    account = DomainFigures(ACCOUNT)
    for domain in sorted(result.figures):
        if domain in paused.domains:
            continue
        sending = DomainFigures(domain)
        for (name, stream), figures in sorted(result.streams.items()):
            if name != domain or (domain, stream) in paused.streams:
                continue
            if not stream:  # hours counted before streams were counted apart: the domain's as a whole
                sending.add(figures)
                continue
            why = _over(figures)
            if why:
                sending_pause(
                    domain=domain, stream=stream, cause=SendingPause.Cause.BREAKER, reason=f"stream {stream}: {why}",
                    figures=figures.as_dict(),
                )
                result.paused_streams.append((domain, stream))
                continue
            sending.add(figures)
        why = _over(sending)
        if why:
            sending_pause(domain=domain, cause=SendingPause.Cause.BREAKER, reason=why, figures=sending.as_dict())
            result.paused.append(domain)
            continue
        account.add(sending)
    result.account = account
    why = _over(account)
    if why and ACCOUNT not in paused.domains:
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
    """The account's and every known domain's pause state, with their 24 h
    figures, and each domain's message streams alike."""
    now = now or timezone.now()
    active = {(p.domain, p.stream): p for p in SendingPause.objects.filter(resumed_at__isnull=True)}
    streams = stream_figures_24h(now=now)
    figures = _by_domain(streams)

    def pause_state(pause: SendingPause | None, figure: DomainFigures) -> dict:
        return {
            "paused": pause is not None,
            "cause": pause.cause if pause else None,
            "reason": pause.reason if pause else "",
            "since": pause.paused_at if pause else None,
            "until": pause.until if pause else None,
            "figures_at_pause": pause.figures if pause else None,
            "last_24h": figure.as_dict(),
        }

    def entry(domain: str, figure: DomainFigures | None) -> dict:
        # Hours counted before streams were counted apart ("") count in the domain's figures only.
        names = sorted({s for d, s in streams if d == domain and s} | {s for d, s in active if d == domain and s})
        return {
            "domain": domain,
            **pause_state(active.get((domain, "")), figure or DomainFigures(domain)),
            "streams": [
                {"stream": name, **pause_state(active.get((domain, name)), streams.get((domain, name)) or DomainFigures(domain))}
                for name in names
            ] if domain != ACCOUNT else [],
        }

    total = DomainFigures(ACCOUNT)
    for figure in figures.values():
        total.add(figure)
    domains = sorted(set(figures) | ({domain for domain, _stream in active} - {ACCOUNT}))
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
