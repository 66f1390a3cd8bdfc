"""Outbound status webhooks: subscriptions, the StatusChange outbox, signed delivery (SPEC §6.6).

How a status change reaches a caller:

1. `emailsvc.status` writes a StatusChange row in the transaction of the change
   itself; nothing here is called by it (the pipeline never waits for a receiver).
2. Once that transaction commits, a change some enabled endpoint subscribes to
   wakes `webhooks_dispatch` (tracking.queueing: at most one run waiting, so a
   burst of changes publishes one task); beat also runs it every
   WEBHOOK_DISPATCH_INTERVAL_SECONDS, a safety net for a lost wake-up. It reads
   the rows after a stored cursor and creates one WebhookDelivery per (change,
   endpoint subscribed to its status), in the same transaction as it moves the
   cursor — set-based, exactly once. Ids are taken when a row is inserted but
   become visible when its transaction commits, so a lower id can appear after
   a higher one was read: the ids skipped are kept as gaps and looked for again
   for WEBHOOK_OUTBOX_GAP_SECONDS.
3. Per endpoint with due deliveries, a task `webhook_deliveries_send` (one at a
   time per endpoint, a Redis lock) POSTs them one by one, each JSON event
   signed per Standard Webhooks with the `standardwebhooks` package. The same
   `webhook-id` goes with every attempt of a delivery (at-least-once: receivers
   de-duplicate on it). A failure is retried after RETRY_DELAYS (with jitter,
   about 23 hours in all; a retry due within the dispatch interval gets a
   sender of its own, later ones the dispatcher's); an endpoint that has
   failed without a break for WEBHOOK_DISABLE_AFTER_HOURS, or answered 410
   Gone, is disabled.

No SSRF: a target must be https (plain http only with WEBHOOK_ALLOW_HTTP) and
every address its host resolves to must be public (WEBHOOK_ALLOW_PRIVATE_TARGETS
lifts that), checked when subscribing and again before every connection; the
connection goes to the address that was checked (Host header and TLS SNI carry
the name), and redirects are not followed.
"""
