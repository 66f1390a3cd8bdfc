"""/api/v1/stats: recipient status transitions per hour or day (SPEC §4)."""

from datetime import UTC, timedelta

from django.db import transaction
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from core.addresses import shown
from core.fields import MomentField, filter_text, one_value, rename_field
from core.responses import validation_failed_from_drf
from core.sql import index_lookups
from emailsvc.api.auth import CanRead
from emailsvc.api.emails_inputs import MAX_TAG
from emailsvc.api.emails_outputs import StatusCountsSerializer
from emailsvc.api.responses import ERRORS
from emailsvc.listing import INTERVALS, bucket_ceil, bucket_floor, transition_counts


class StatsInputSerializer(serializers.Serializer):
    """The query of GET /api/v1/stats."""

    # Buckets a window may span once widened to whole ones: 7 days by hour, 90 by day (+1 partly covered).
    MAX_BUCKETS = {"hour": 7 * 24 + 1, "day": 90 + 1}

    from_ = MomentField(required=False, help_text="Start of the window (ISO-8601; default `to` − 24 h), rounded down to the interval")
    to = MomentField(required=False, help_text="End of the window (ISO-8601; default now), rounded up to the interval")
    interval = serializers.ChoiceField(choices=["hour", "day"], default="hour", help_text="Bucket size (UTC hours or days)")
    group_id = filter_text(200, "Only the transitions of this group's emails")
    tag = filter_text(MAX_TAG, "Only the transitions of emails with this tag")
    stream = filter_text(64, "Only the transitions of emails of this message stream (docs/streams.md)")
    include_test = serializers.BooleanField(
        default=False, help_text="Count the transitions of test keys' emails too (left out by default)"
    )

    def get_fields(self):
        return rename_field(super().get_fields(), "from_", "from")

    def validate(self, attrs):
        end = attrs.get("to") or timezone.now().astimezone(UTC)
        start = attrs.get("from") or end - timedelta(hours=24)
        interval = attrs["interval"]
        if start >= end:
            raise serializers.ValidationError({"from": [serializers.ErrorDetail("from must be before to.", code="invalid_field")]})
        step = INTERVALS[interval]
        if (bucket_ceil(end, interval) - bucket_floor(start, interval)) / step > self.MAX_BUCKETS[interval]:
            days = (self.MAX_BUCKETS[interval] - 1) * step.total_seconds() / 86400
            raise serializers.ValidationError(
                {"from": [serializers.ErrorDetail(
                    f"The window is at most {days:g} days with interval={interval}.", code="invalid_field"
                )]}
            )
        return {**attrs, "from": start, "to": end}


def stats_query_validate(query) -> dict:
    """The validated query of GET /api/v1/stats (a QueryDict), or ValidationFailed naming each bad parameter."""
    problems: dict[str, list] = {}
    fields = StatsInputSerializer().fields
    data = {}
    for name in query:
        if name in fields:
            data[name] = one_value(query, name, problems)
        else:
            problems.setdefault(name, []).append(f"Unknown parameter {shown(name)}.")
    serializer = StatsInputSerializer(data=data)
    if not problems and not serializer.is_valid():
        problems.update(serializer.errors)
    if problems:
        raise validation_failed_from_drf(problems)
    return serializer.validated_data


class StatsBucketSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="Start of the bucket (UTC); it ends where the next one starts")
    counts = StatusCountsSerializer(help_text="Transitions to each status recorded in the bucket")
    streams = serializers.DictField(
        child=StatusCountsSerializer(),
        help_text="`counts` split by the emails' message stream: {stream name: transitions to each status}",
    )


class StatsOutputSerializer(serializers.Serializer):
    """GET /api/v1/stats: recipient status transitions per bucket."""

    from_ = serializers.DateTimeField(help_text="Start of the window counted (rounded down to the interval)")
    to = serializers.DateTimeField(help_text="End of the window counted (rounded up to the interval), excluded")
    interval = serializers.ChoiceField(choices=["hour", "day"])
    buckets = StatsBucketSerializer(many=True)
    totals = StatusCountsSerializer(help_text="The buckets added up")
    streams = serializers.DictField(
        child=StatusCountsSerializer(),
        help_text=(
            "`totals` split by the emails' message stream: {stream name: transitions to each status}. "
            "`transactional` and `broadcast` are always listed, another stream when it has a transition in the "
            "window; with `stream=`, only that stream"
        ),
    )

    def get_fields(self):
        return rename_field(super().get_fields(), "from_", "from")


class StatsApi(APIView):
    permission_classes = [CanRead]

    @extend_schema(
        operation_id="email_stats",
        parameters=[StatsInputSerializer],
        responses={200: StatsOutputSerializer, **ERRORS},
        description=(
            "Needs `read_only`. Recipient status transitions per hour or day (UTC) over a window (default the last "
            "24 hours; at most 7 days by hour, 90 days by day): every bucket of the window with a count for every "
            "status. A transition counts in the bucket of the moment the service recorded it (StatusChange.at): a "
            "recipient delivered at 10:05 counts in `delivered` of the 10:00 bucket; one that was sent, delivered "
            "and opened counts once in each. A message to three addresses counts three times. `group_id`, `tag` and "
            "`stream` keep the transitions of the emails that have them. `streams` (in the answer and in each bucket) "
            "splits the counts by the emails' message stream. Test keys' emails are left out unless "
            "`include_test=true`. Bad or unknown parameters: 400 invalid_field naming them."
        ),
    )
    def get(self, request):
        query = stats_query_validate(request.query_params)
        with transaction.atomic():
            index_lookups()
            counted = transition_counts(
                start=query["from"], end=query["to"], interval=query["interval"],
                group_id=query.get("group_id"), tag=query.get("tag"), include_test=query["include_test"],
                stream=query.get("stream"),
            )
        body = {
            "from": counted.start,
            "to": counted.end,
            "interval": counted.interval,
            "buckets": [
                {"start": start, "counts": counts, "streams": streams}
                for (start, counts), streams in zip(counted.buckets, counted.bucket_streams, strict=True)
            ],
            "totals": counted.totals,
            "streams": counted.streams,
        }
        return Response(StatsOutputSerializer(body).data)
