"""The SES events queue on SQS: the client, the sandbox's queues, and their depths.

A real setup has an events queue fed by the configuration set's SNS topic and a
dead-letter queue (DLQ) behind it: SQS moves a message received
`maxReceiveCount` times without being deleted (an event the drain cannot read
or apply) to the DLQ, instead of handing it back every visibility timeout for
the four days a message lives. The sandbox builds the same pair on the local
AWS emulator (`sandbox_queues`), and `/readyz` reports both depths.
"""

import json
import os
from functools import lru_cache

import boto3
from botocore.config import Config
from django.conf import settings

# An event the drain failed to apply this many times goes to the DLQ. With
# SES_EVENTS_VISIBILITY_TIMEOUT=60 that is about five minutes of retries, long
# enough to outlast a database restart, short enough not to flood the logs.
SANDBOX_MAX_RECEIVE_COUNT = 5
# SQS's longest retention: a DLQ keeps what it holds long enough to be looked at.
DLQ_RETENTION_SECONDS = 14 * 24 * 3600


def sqs_client(*, timeout_seconds: float | None = None):
    """A boto3 SQS client for AWS_REGION and AWS_ENDPOINT_URL (the emulator in the sandbox).

    `timeout_seconds` bounds connecting and reading and turns botocore's retries
    off: for callers that must answer quickly (the readiness probe).

    One client per process and settings, kept (boto3 clients are thread-safe;
    making one costs about 15 ms of CPU, more than a drain spends applying a
    hundred events). A forked process makes its own.
    """
    key = (os.getpid(), settings.AWS_REGION, settings.AWS_ENDPOINT_URL or None, timeout_seconds)
    client = _clients.get(key)
    if client is None:
        config = None
        if timeout_seconds is not None:
            config = Config(
                connect_timeout=timeout_seconds,
                read_timeout=timeout_seconds,
                retries={"mode": "standard", "total_max_attempts": 1},
            )
        client = boto3.client("sqs", region_name=key[1], endpoint_url=key[2], config=config)
        _clients[key] = client
    return client


_clients: dict[tuple, object] = {}


def sqs_clients_forget() -> None:
    """Drop the kept clients: the next `sqs_client()` makes a new one (which
    sees event handlers registered on boto3's session since)."""
    _clients.clear()


def dead_letter_queue_name(queue_name: str) -> str:
    return f"{queue_name}-dlq"


def sandbox_queues() -> tuple[str, str]:
    """The sandbox's events queue and its DLQ, created if missing: (queue URL, DLQ URL).

    Idempotent: an existing queue keeps its messages and gets the redrive policy
    (maxReceiveCount SANDBOX_MAX_RECEIVE_COUNT) to the DLQ. Cached per endpoint,
    region and queue name, so the SQS calls happen once per process.
    """
    return _sandbox_queues(settings.AWS_ENDPOINT_URL, settings.AWS_REGION, settings.SANDBOX_EVENTS_QUEUE_NAME)


@lru_cache(maxsize=4)
def _sandbox_queues(endpoint: str, region: str, name: str) -> tuple[str, str]:
    client = sqs_client()
    dlq_url = client.create_queue(QueueName=dead_letter_queue_name(name))["QueueUrl"]
    client.set_queue_attributes(QueueUrl=dlq_url, Attributes={"MessageRetentionPeriod": str(DLQ_RETENTION_SECONDS)})
    dlq_arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    # Created without attributes, then set: create_queue refuses an existing
    # queue whose attributes differ (a queue made before the DLQ existed).
    queue_url = client.create_queue(QueueName=name)["QueueUrl"]
    redrive_policy = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": SANDBOX_MAX_RECEIVE_COUNT}
    client.set_queue_attributes(QueueUrl=queue_url, Attributes={"RedrivePolicy": json.dumps(redrive_policy)})
    return queue_url, dlq_url


def events_queue_url() -> str:
    """The SQS queue SES events arrive on: SES_EVENTS_QUEUE_URL, else the sandbox's
    queue when EMAIL_PROVIDER=sandbox, else "" (no queue: the drain is off)."""
    if settings.SES_EVENTS_QUEUE_URL:
        return settings.SES_EVENTS_QUEUE_URL
    if settings.EMAIL_PROVIDER == "sandbox":
        return sandbox_queues()[0]
    return ""


def queue_depth(queue_url: str, *, client=None) -> int:
    """Messages waiting on the queue (ApproximateNumberOfMessages: visible, not in flight)."""
    client = client or sqs_client()
    attributes = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def events_dlq_depth(queue_url: str, *, client=None) -> int | None:
    """Messages on the dead-letter queue of `queue_url`; None when it has no redrive policy.

    The DLQ is found through the queue's RedrivePolicy (its ARN's last part is
    the queue name), so this works for any queue, not only the sandbox's.
    """
    client = client or sqs_client()
    # A queue without the attribute answers without "Attributes" at all.
    attributes = client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"]).get("Attributes", {})
    if not attributes.get("RedrivePolicy"):
        return None
    dlq_arn = json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"]
    # arn:aws:sqs:<region>:<account>:<name>
    *_, account, dlq_name = dlq_arn.split(":")
    dlq_url = client.get_queue_url(QueueName=dlq_name, QueueOwnerAWSAccountId=account)["QueueUrl"]
    return queue_depth(dlq_url, client=client)
