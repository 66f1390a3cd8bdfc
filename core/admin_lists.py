"""What every admin list of a big table shares, and the operator's time zone.

At a million messages and three million events, Django's admin defaults cost
seconds per page: `COUNT(*)` of the whole table (twice: the page count and the
"N total"), `icontains` searches that read every row, `SELECT DISTINCT` for
filter choices, date hierarchies that aggregate the whole table, and
`DISTINCT` over joined searches. `BigTableAdmin` turns each of those off:

- counts are exact up to EXACT_COUNT_UP_TO rows (counted through a LIMIT, so
  never more than that many index entries); beyond it an unfiltered list shows
  PostgreSQL's own estimate (`pg_class.reltuples`, or the id span where the
  table was never analysed) as "about N", a filtered one "more than N";
- searches are exact lookups on indexed columns (the admin classes say which),
  never `DISTINCT`;
- no facet counts, no date hierarchy, sorting only by indexed columns.
"""

from __future__ import annotations

import zoneinfo
from functools import cached_property
from urllib.parse import unquote

from django.conf import settings
from django.contrib import admin
from django.contrib.admin import ShowFacets
from django.core.exceptions import SuspiciousOperation
from django.core.paginator import Paginator
from django.db.models import Max, Min
from django.urls import reverse
from django.utils import timezone
from django.views.defaults import bad_request

from core.sql import table_row_estimate

EXACT_COUNT_UP_TO = 10_000
# An address with more messages than this shows its newest ones (searches and the address page).
ADDRESS_MESSAGES_LIMIT = 10_000


def table_estimate(model) -> int | None:
    """Rows in the model's table as the database estimates them, without counting:
    PostgreSQL's `reltuples` when the table was analysed, else the span of its
    integer ids (min..max, from the primary key index). None when neither is known."""
    estimate = table_row_estimate(model)
    if estimate is not None:
        return estimate
    if model._meta.pk.get_internal_type() not in ("AutoField", "BigAutoField", "SmallAutoField"):
        return None
    bounds = model._default_manager.aggregate(low=Min("pk"), high=Max("pk"))
    if bounds["low"] is None:
        return 0
    return bounds["high"] - bounds["low"] + 1


class EstimatedCountPaginator(Paginator):
    """A paginator whose count reads at most EXACT_COUNT_UP_TO + 1 index entries.

    `count_label` says how the count was had: "1,234" (exact), "about 1,000,000"
    (the table's estimate: an unfiltered list), "more than 10,000" (a filtered
    or searched list past the exact limit; its pages stop there — narrow the
    filter to see further).
    """

    exact_up_to = EXACT_COUNT_UP_TO

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        counted = rows.order_by().values("pk")[: self.exact_up_to + 1].count()
        self.approximate = counted > self.exact_up_to
        if not self.approximate:
            self.count_label = f"{counted:,}"
            return counted
        if not rows.query.where:
            estimate = table_estimate(rows.model)
            if estimate is not None and estimate > self.exact_up_to:
                self.count_label = f"about {estimate:,}"
                return estimate
        self.count_label = f"more than {self.exact_up_to:,}"
        return self.exact_up_to


class BigTableAdmin(admin.ModelAdmin):
    """A read-mostly list over a table of millions of rows (see the module docstring).

    Subclasses set `search_help_text` and implement `search(queryset, term)`
    with indexed lookups only.
    """

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    show_facets = ShowFacets.NEVER
    change_list_template = "admin/console/change_list.html"
    sortable_by: tuple[str, ...] = ()
    # The admin shows the search box only when there are search fields; the lookup itself is `search`.
    search_fields = ("pk",)

    def search(self, queryset, term: str):
        raise NotImplementedError

    def get_search_results(self, request, queryset, search_term):
        term = search_term.replace("\x00", "").strip()[:1280]  # PostgreSQL refuses NUL; nothing stored is longer
        if not term:
            return queryset, False
        return self.search(queryset, term), False  # never DISTINCT over a big table


def admin_change_url(obj) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


# --- The operator's time zone -------------------------------------------------

# Set by a script on admin pages to the browser's zone (Intl.DateTimeFormat) when
# ADMIN_TIME_ZONE is "browser".
TIME_ZONE_COOKIE = "emailsvc_admin_tz"


def admin_time_zone(request) -> zoneinfo.ZoneInfo:
    """The zone the admin shows times in: ADMIN_TIME_ZONE, or with "browser" the
    browser's zone (its cookie), else TIME_ZONE."""
    wanted = getattr(settings, "ADMIN_TIME_ZONE", "browser")
    if wanted == "browser":
        wanted = unquote(request.COOKIES.get(TIME_ZONE_COOKIE, "")) or settings.TIME_ZONE
    try:
        return zoneinfo.ZoneInfo(wanted)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo(settings.TIME_ZONE)


# The search box (`q`) drops a NUL itself (a pasted term keeps its other characters).
_SEARCH_PARAMETER = "q"


def _holds_nul(query) -> bool:
    return any(
        "\x00" in key or (key != _SEARCH_PARAMETER and any("\x00" in value for value in values))
        for key, values in query.lists()
    )


class AdminTimezoneMiddleware:
    """Shows admin pages in the operator's time zone (admin_time_zone); the API
    is untouched (it answers in UTC ISO-8601).

    It also answers an admin page whose query holds a NUL (in a filter or a
    parameter name; the search drops it) with an ordinary 400 page: nothing
    stored holds one, and PostgreSQL refuses it in a query (a list filter
    passes it on as it is)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.prefix = None

    def __call__(self, request):
        if self.prefix is None:
            self.prefix = reverse("admin:index")
        if not request.path.startswith(self.prefix):
            return self.get_response(request)
        if _holds_nul(request.GET):
            return bad_request(request, SuspiciousOperation("The query holds a NUL character."))
        zone = admin_time_zone(request)
        request.admin_time_zone = zone
        # Django renders a TemplateResponse before it leaves the innermost
        # middleware, so the page is rendered in this zone.
        with timezone.override(zone):
            return self.get_response(request)


def address_url(address: str) -> str:
    """The address page of an address (the operator console)."""
    from urllib.parse import urlencode

    return f"{reverse('console:address')}?{urlencode({'q': address})}"
