"""Accepting emails: validation of what the API hands over, header policy, idempotency, resend."""
