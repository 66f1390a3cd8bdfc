"""A sending domain: one SES identity and what SES and public DNS last said of it."""

from django.db import models
from django.utils import timezone


class Domain(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "pending: SES has not verified it yet"
        VERIFIED = "verified", "verified: SES lets it send"
        FAILED = "failed", "failed: SES gave up (or the identity is gone); fix DNS, then verify"

    name = models.CharField(max_length=253, unique=True, help_text="IDNA A-labels, lower case")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    mail_from_domain = models.CharField(max_length=253)
    # What SES last reported (GetEmailIdentity), in its own words.
    ses_verification_status = models.CharField(max_length=32, default="PENDING")
    ses_verified_for_sending = models.BooleanField(default=False)
    dkim_status = models.CharField(max_length=32, default="PENDING")
    dkim_tokens = models.JSONField(default=list, blank=True)
    mail_from_status = models.CharField(max_length=32, default="PENDING")
    ses_checked_at = models.DateTimeField(null=True, blank=True)
    # What public DNS last answered: {record key: {"status": …, "found": [values]}}.
    dns = models.JSONField(default=dict, blank=True)
    dns_checked_at = models.DateTimeField(null=True, blank=True)
    check_error = models.TextField(blank=True, help_text="Why the last check could not finish, if it could not")
    next_check_at = models.DateTimeField(db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "emailsvc"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
