"""The one email every figure sends, so that figures are comparable.

A typical transactional email: one recipient, a subject, a ~0.6 KB text part
and a ~1.6 KB HTML part, one tag and a small metadata object. No Django here:
the load generator (a separate process) builds its request bodies with it too.
"""

RECIPIENT_DOMAIN = "example.com"

_TEXT = (
    "Hello {n},\n\nThanks for your order. We have received your payment and your items are being "
    "prepared for shipping. You will get another email with a tracking link as soon as the parcel "
    "leaves our warehouse.\n\nOrder number: {n}\nTotal: 42.00 EUR\n\n"
    "If you have any question, just reply to this email; a real person reads every answer.\n\n"
    "-- The Example team\n"
)
_HTML = (
    "<!doctype html><html><body style=\"font-family:sans-serif;color:#222\">"
    "<table width=\"600\" cellpadding=\"0\" cellspacing=\"0\"><tr><td>"
    "<h1 style=\"font-size:20px\">Thanks for your order</h1>"
    "<p>Hello {n},</p><p>We have received your payment and your items are being prepared for shipping. "
    "You will get another email with a tracking link as soon as the parcel leaves our warehouse.</p>"
    "<table style=\"border-collapse:collapse\"><tr><td style=\"padding:4px 8px\">Order number</td>"
    "<td style=\"padding:4px 8px\"><b>{n}</b></td></tr><tr><td style=\"padding:4px 8px\">Total</td>"
    "<td style=\"padding:4px 8px\"><b>42.00 EUR</b></td></tr></table>"
    "<p><a href=\"https://example.com/orders/{n}\" style=\"color:#0a58ca\">See your order</a></p>"
    "<p style=\"font-size:12px;color:#666\">If you have any question, just reply to this email; "
    "a real person reads every answer.</p><p>-- The Example team</p>"
    "</td></tr></table></body></html>"
)


def recipient(n: int) -> str:
    return f"customer{n}@{RECIPIENT_DOMAIN}"


def email_payload(n: int, *, group_id: str | None = None) -> dict:
    """The JSON body of POST /api/v1/emails for email number `n` (unique recipient)."""
    body = {
        "to": recipient(n),
        "subject": f"Your order {n} is confirmed",
        "text": _TEXT.format(n=n),
        "html": _HTML.format(n=n),
        "tags": ["bench"],
        "metadata": {"order": n},
    }
    if group_id:
        body["group_id"] = group_id
    return body
