"""Template tags of the operator console (emailsvc/templates/admin/console/)."""

from django import template
from django.conf import settings
from django.contrib.admin.templatetags.admin_list import pagination, search_form
from django.utils import timezone

from core.admin_lists import TIME_ZONE_COOKIE

register = template.Library()


@register.inclusion_tag("admin/console/pagination.html")
def console_pagination(cl):
    """The admin's page links, with the count as the paginator had it ("about …", "more than …")."""
    return pagination(cl)


@register.inclusion_tag("admin/console/search_form.html")
def console_search_form(cl):
    return search_form(cl)


@register.inclusion_tag("admin/console/timezone.html")
def console_timezone():
    """The zone times are shown in, and with ADMIN_TIME_ZONE=browser the script
    that tells the server the browser's zone (a cookie) and reloads once."""
    return {
        "zone": timezone.get_current_timezone_name(),
        "from_browser": getattr(settings, "ADMIN_TIME_ZONE", "browser") == "browser",
        "cookie": TIME_ZONE_COOKIE,
    }


@register.filter
def duration(seconds) -> str:
    """12.3 → "12.3 s"; 4000 → "1 h 6 min"."""
    if seconds is None or seconds == "":
        return "—"
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60)} min"


@register.filter
def percent(rate, digits: int = 2) -> str:
    if rate is None:
        return "—"
    return f"{float(rate) * 100:.{int(digits)}f} %"


_BAD = {"bounced", "complained", "failed", "suppressed", "cancelled", "soft_bounced"}
_GOOD = {"delivered", "opened", "clicked", "sent"}


@register.filter
def status_tone(status: str) -> str:
    """The badge colour of a status: bad (not delivered), good, or wait (on its way)."""
    return "bad" if status in _BAD else "good" if status in _GOOD else "wait"
