"""A message stream, and the suppressions that hold for one stream only."""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models.functions import Lower

TRANSACTIONAL = "transactional"
BROADCAST = "broadcast"


class Stream(models.Model):
    """Emails of one kind: password resets and receipts (`transactional`) apart
    from newsletters and notices (`broadcast`), each with its own rules."""

    class Unsubscribe(models.TextChoices):
        ALWAYS = "always", "always: every email carries List-Unsubscribe (RFC 8058 one-click)"
        ON_REQUEST = "on_request", 'on request: only emails sent with "unsubscribe": true carry it'

    name = models.SlugField(primary_key=True, max_length=64)
    description = models.CharField(max_length=200, blank=True)
    configuration_set = models.CharField(
        max_length=64, blank=True, help_text="SES configuration set of its emails; empty: SES_CONFIGURATION_SET"
    )
    unsubscribe = models.CharField(max_length=16, choices=Unsubscribe.choices, default=Unsubscribe.ON_REQUEST)
    rate_share = models.FloatField(
        default=1.0, validators=[MinValueValidator(0.01), MaxValueValidator(1.0)],
        help_text="The most of SEND_RATE_PER_SECOND its emails may take (0.01–1); the rest stays free for the others",
    )
    track_opens = models.BooleanField(default=False, help_text="Its sends without `track` get an open pixel")
    track_clicks = models.BooleanField(default=False, help_text="Its sends without `track` get tracked links")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        app_label = "emailsvc"

    def __str__(self) -> str:
        return self.name

    @property
    def track(self) -> dict[str, bool]:
        """The tracking of its sends that do not say (a send's `track` decides both)."""
        return {"opens": self.track_opens, "clicks": self.track_clicks}


class StreamSuppression(models.Model):
    """An address that must not receive the emails of one stream (a one-click
    unsubscribe); the other streams still reach it. Suppressions of every
    stream (bounces, complaints, manual ones) are emailsvc.models.Suppression."""

    email = models.CharField(max_length=320, help_text="Canonical address")
    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="+", db_column="stream")
    reason = models.CharField(max_length=24, default="unsubscribe")
    source = models.CharField(max_length=255, blank=True, help_text="The email whose link was used")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "emailsvc"
        constraints = [
            models.UniqueConstraint(fields=["email", "stream"], name="stream_suppression_unique"),
            models.CheckConstraint(condition=models.Q(email=Lower("email")), name="stream_suppression_lowercase"),
        ]

    def __str__(self) -> str:
        return f"{self.email} ({self.stream_id})"

    # Shown beside the suppressions of every stream (GET /api/v1/suppressions?stream=…).
    note = ""
    expires_at = None


# The streams every installation has (migration 0017 creates them; made again
# with these settings if they are missing, e.g. after a table was emptied).
BUILTIN = {
    TRANSACTIONAL: {
        "description": "Password resets, receipts, alerts: what one person asked for",
        "unsubscribe": Stream.Unsubscribe.ON_REQUEST, "rate_share": 1.0,
    },
    BROADCAST: {
        "description": "Newsletters, digests, product notices",
        "unsubscribe": Stream.Unsubscribe.ALWAYS, "rate_share": 0.5,
    },
}


def streams_builtin_ensure() -> None:
    """Create the built-in streams that are missing (two statements, none when both exist)."""
    present = set(Stream.objects.filter(name__in=BUILTIN).values_list("name", flat=True))
    missing = [Stream(name=name, **defaults) for name, defaults in BUILTIN.items() if name not in present]
    if missing:
        Stream.objects.bulk_create(missing, ignore_conflicts=True)
