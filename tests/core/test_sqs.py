"""The sandbox's SES events queue has a dead-letter queue, as a real setup has, and
/readyz reports both depths without letting them decide readiness. Against moto's
standalone server (which implements SQS redrive: a message received
maxReceiveCount times moves to the DLQ on the next receive)."""

import json
import uuid

import pytest

from config.devservices import free_port
from core import sqs


@pytest.fixture
def sandbox(settings, moto_server):
    """The sandbox configuration on moto, with a queue name of this test's own."""
    settings.EMAIL_PROVIDER = "sandbox"
    settings.AWS_ENDPOINT_URL = moto_server.url
    settings.AWS_REGION = "us-east-1"
    settings.SES_EVENTS_QUEUE_URL = ""
    settings.SANDBOX_EVENTS_QUEUE_NAME = f"sandbox-events-{uuid.uuid4().hex[:12]}"
    return moto_server.client("sqs")


def _arn(client, queue_url: str) -> str:
    return client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def _receive(client, queue_url: str) -> list[dict]:
    # VisibilityTimeout 0: the message is visible again at once, as if the drain
    # had failed to apply it and its visibility timeout had passed.
    return client.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])


def test_sandbox_queue_has_a_redrive_policy_to_its_dlq(sandbox, settings):
    queue_url, dlq_url = sqs.sandbox_queues()

    assert queue_url.endswith("/" + settings.SANDBOX_EVENTS_QUEUE_NAME)
    assert dlq_url.endswith("/" + settings.SANDBOX_EVENTS_QUEUE_NAME + "-dlq")
    policy = json.loads(
        sandbox.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
    )
    assert policy == {"deadLetterTargetArn": _arn(sandbox, dlq_url), "maxReceiveCount": sqs.SANDBOX_MAX_RECEIVE_COUNT}


def test_sandbox_queues_is_idempotent_and_keeps_messages(sandbox):
    queue_url, dlq_url = sqs.sandbox_queues()
    sandbox.send_message(QueueUrl=queue_url, MessageBody="{}")
    sqs._sandbox_queues.cache_clear()  # as a new process would

    assert sqs.sandbox_queues() == (queue_url, dlq_url)
    assert sqs.queue_depth(queue_url) == 1


def test_sandbox_queue_made_before_the_dlq_existed_gets_the_redrive_policy(sandbox, settings):
    old_queue_url = sandbox.create_queue(QueueName=settings.SANDBOX_EVENTS_QUEUE_NAME)["QueueUrl"]

    queue_url, _ = sqs.sandbox_queues()

    assert queue_url == old_queue_url
    assert sqs.events_dlq_depth(queue_url) == 0


def test_event_received_more_than_max_receive_count_moves_to_the_dlq(sandbox):
    queue_url, dlq_url = sqs.sandbox_queues()
    sandbox.send_message(QueueUrl=queue_url, MessageBody="not an SES event")

    for attempt in range(sqs.SANDBOX_MAX_RECEIVE_COUNT):
        assert len(_receive(sandbox, queue_url)) == 1, f"receive {attempt + 1}"
    assert _receive(sandbox, queue_url) == []

    assert sqs.queue_depth(queue_url) == 0
    assert sqs.events_dlq_depth(queue_url) == 1
    dead = sandbox.receive_message(QueueUrl=dlq_url).get("Messages", [])
    assert [message["Body"] for message in dead] == ["not an SES event"]


def test_dlq_depth_is_none_for_a_queue_without_redrive_policy(moto_server):
    client = moto_server.client("sqs")
    queue_url = client.create_queue(QueueName=f"no-dlq-{uuid.uuid4().hex[:12]}")["QueueUrl"]

    assert sqs.events_dlq_depth(queue_url, client=client) is None


def test_events_queue_url_prefers_the_configured_queue(sandbox, settings):
    settings.SES_EVENTS_QUEUE_URL = "https://sqs.eu-west-1.amazonaws.com/123456789012/ses-events"
    assert sqs.events_queue_url() == settings.SES_EVENTS_QUEUE_URL

    settings.SES_EVENTS_QUEUE_URL = ""
    assert sqs.events_queue_url() == sqs.sandbox_queues()[0]

    settings.EMAIL_PROVIDER = "smtp"
    assert sqs.events_queue_url() == ""


# --- /readyz ------------------------------------------------------------------


def test_readyz_reports_queue_and_dlq_depth_and_stays_ready_with_dead_letters(sandbox, client, db):
    queue_url, _ = sqs.sandbox_queues()
    sandbox.send_message(QueueUrl=queue_url, MessageBody="malformed")
    for _ in range(sqs.SANDBOX_MAX_RECEIVE_COUNT + 1):
        _receive(sandbox, queue_url)  # the last receive moves it to the DLQ
    sandbox.send_message(QueueUrl=queue_url, MessageBody="waiting")
    sandbox.send_message(QueueUrl=queue_url, MessageBody="waiting too")

    response = client.get("/readyz")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert {k: body["events"][k] for k in ("queue_depth", "dlq_depth")} == {"queue_depth": 2, "dlq_depth": 1}


def test_readyz_reports_a_configured_queue_without_dlq(moto_server, settings, client, db):
    sqs_client = moto_server.client("sqs")
    queue_url = sqs_client.create_queue(QueueName=f"ses-events-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    sqs_client.send_message(QueueUrl=queue_url, MessageBody="{}")
    settings.AWS_ENDPOINT_URL = moto_server.url
    settings.SES_EVENTS_QUEUE_URL = queue_url

    body = client.get("/readyz").json()

    assert {k: body["events"][k] for k in ("queue_depth", "dlq_depth")} == {"queue_depth": 1, "dlq_depth": None}


def test_readyz_stays_ready_when_sqs_is_unreachable(settings, client, db):
    # Nothing listens on this port: every SQS call fails to connect.
    settings.AWS_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"
    settings.SES_EVENTS_QUEUE_URL = f"{settings.AWS_ENDPOINT_URL}/123456789012/ses-events"

    response = client.get("/readyz")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert body["events"]["error"].startswith("error: ")


def test_readyz_has_no_events_detail_without_an_events_queue(settings, client, db):
    settings.EMAIL_PROVIDER = "console"
    settings.SES_EVENTS_QUEUE_URL = ""

    body = client.get("/readyz").json()

    assert "events" not in body
