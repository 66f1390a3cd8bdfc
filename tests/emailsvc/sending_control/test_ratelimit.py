"""The global GCRA rate limiter against a real Redis, shared by real OS processes.

Every test uses its own bucket key, so tests may run in parallel on one Redis.
Assertions count grants and read the waits the limiter returns; none measures
how long the test took.
"""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings

from config.devservices import free_port
from core.redisclient import redis_client
from emailsvc.sending_control.ratelimit import (
    DEFAULT_KEY,
    RateLimit,
    rate_limit_acquire,
    rate_limit_from_settings,
    rate_limit_reserve,
    rate_limit_try,
)

BASE_DIR = Path(__file__).resolve().parents[3]


@pytest.fixture
def client() -> redis.Redis:
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def key(client) -> str:
    key = f"tests:ratelimit:{uuid.uuid4().hex}"
    yield key
    client.delete(key)


def server_time(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1_000_000


# --- many processes, one bucket ---------------------------------------------

# A worker stand-in: no Django setup, its own client from the URL. It reports
# "ready", waits for the start/end Redis server times on stdin, then calls
# rate_limit_try in a tight loop until the server clock passes `end`. For each
# grant it records the server time read just before the call and just after
# it: the grant happened (on the server clock) between the two.
CHILD_START = r"""
import json, sys, time
import redis
from emailsvc.sending_control.ratelimit import RateLimit, rate_limit_reserve, rate_limit_try

url, key, rate, burst = sys.argv[1:5]
client = redis.Redis.from_url(url)
limit = RateLimit(per_second=float(rate), burst=int(burst), key=key)

def server_time():
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6

server_time()  # connected
print("ready", flush=True)
start, end = map(float, sys.stdin.readline().split())
now = server_time()
while now < start:
    time.sleep(min(0.005, start - now))
    now = server_time()
"""
CHILD = CHILD_START + r"""
grants, tries = [], 0
while now < end:
    wait = rate_limit_try(limit=limit, client=client)
    after = server_time()
    tries += 1
    if wait == 0.0:
        grants.append([now, after])
    now = after
print(json.dumps({"grants": grants, "tries": tries}), flush=True)
"""


def run_children(client, script: str, *, key: str, rate: float, burst: int, processes: int, window: float):
    """Start `processes` copies of `script` on one bucket, let them run from a
    common start on the Redis clock for `window` seconds; (start, their JSON reports)."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", script, django_settings.REDIS_URL, key, str(rate), str(burst)],
            cwd=BASE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        start = server_time(client) + 0.2
        for child in children:
            child.stdin.write(f"{start!r} {start + window!r}\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=60)[0] for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0] * processes
    return start, [json.loads(output) for output in outputs]


def test_grants_across_processes_never_exceed_rate_times_window_plus_burst(client, key):
    rate, burst, window, processes = 20.0, 5, 3.0, 4
    start, reports = run_children(client, CHILD, key=key, rate=rate, burst=burst, processes=processes, window=window)
    grants = sorted((before, after) for report in reports for before, after in report["grants"])
    assert all(report["tries"] > 0 for report in reports)
    # Every process really competed: far more tries than grants.
    assert sum(report["tries"] for report in reports) > 3 * len(grants)

    # The bucket (fresh key) was full at `start`, and every grant happened
    # between `start` and the last "after" reading.
    measured = max(after for _, after in grants) - start
    assert len(grants) <= burst + rate * measured + 1
    assert len(grants) >= 0.9 * rate * window  # the limit is really used, not just respected

    # No 1-second window holds more than rate + burst grants. A grant counts in
    # [t, t + 1] when both its readings do, so the check never blames the
    # limiter for a process that was slow to read the clock.
    for t, _ in grants:
        inside = sum(1 for before, after in grants if before >= t and after <= t + 1.0)
        assert inside <= rate + burst, f"{inside} grants within 1 s from {t}"


# The delivery engine's path: each send slot books the earliest moment the
# bucket allows (rate_limit_reserve) and sleeps until then. The booked moment
# on the server clock lies between the readings before and after the call,
# plus the wait the limiter returned.
RESERVE_CHILD = CHILD_START + r"""
booked, refused = [], 0
while now < end:
    granted, wait = rate_limit_reserve(limit=limit, max_wait=0.5, client=client)
    after = server_time()
    if granted:
        booked.append([now + wait, after + wait])
        time.sleep(wait)  # a send slot sends at its moment, then books again
    else:
        refused += 1
        time.sleep(min(wait, 0.05))
    now = server_time()
print(json.dumps({"booked": booked, "refused": refused}), flush=True)
"""


def test_booked_moments_across_processes_never_exceed_rate_times_window_plus_burst(client, key):
    rate, burst, window, processes = 40.0, 1, 3.0, 4
    start, reports = run_children(client, RESERVE_CHILD, key=key, rate=rate, burst=burst, processes=processes, window=window)
    booked = sorted(tuple(moment) for report in reports for moment in report["booked"])
    last = max(late for _, late in booked)
    assert len(booked) <= burst + rate * (last - start) + 1
    assert len(booked) >= 0.9 * rate * window  # the limit is really used
    for t, _ in booked:
        inside = sum(1 for early, late in booked if early >= t and late <= t + 1.0)
        assert inside <= rate + burst, f"{inside} booked within 1 s from {t}"


# --- multi-token requests ---------------------------------------------------


def test_multi_token_request_consumes_that_many_tokens(client, key):
    limit = RateLimit(per_second=10, burst=3, key=key)

    assert rate_limit_try(limit=limit, tokens=3, client=client) == 0.0
    # The three tokens emptied the bucket: one more token is 1/rate away.
    wait = rate_limit_try(limit=limit, tokens=1, client=client)
    assert 0.05 < wait <= 0.1

    other = RateLimit(per_second=10, burst=3, key=f"{key}:2")
    try:
        assert rate_limit_try(limit=other, tokens=2, client=client) == 0.0
        assert rate_limit_try(limit=other, tokens=1, client=client) == 0.0
        assert 0.05 < rate_limit_try(limit=other, tokens=1, client=client) <= 0.1
    finally:
        client.delete(other.key)


def test_request_bigger_than_burst_is_granted_on_a_full_bucket_then_paid_for(client, key):
    rate = 10.0
    limit = RateLimit(per_second=rate, burst=5, key=key)

    assert rate_limit_try(limit=limit, tokens=20, client=client) == 0.0

    # The bucket is 20 - 5 tokens in debt: the next 20-token request waits
    # about 20/rate, a single token (20 + 1 - 5)/rate.
    wait = rate_limit_try(limit=limit, tokens=20, client=client)
    assert 20 / rate - 0.2 < wait <= 20 / rate
    wait = rate_limit_try(limit=limit, tokens=1, client=client)
    assert 16 / rate - 0.2 < wait <= 16 / rate
    # Refusals took nothing; the key lives until the bucket is full again (+1 s).
    assert 20 / rate * 1000 - 200 < client.pttl(key) <= 20 / rate * 1000 + 1000


def test_request_bigger_than_burst_waits_for_a_full_bucket(client, key):
    limit = RateLimit(per_second=10, burst=5, key=key)

    assert rate_limit_try(limit=limit, tokens=1, client=client) == 0.0
    # One token is missing from the bucket: 20 tokens need it refilled first.
    assert 0.05 < rate_limit_try(limit=limit, tokens=20, client=client) <= 0.1


def test_an_idle_bucket_books_its_first_moment_idle_start_ahead_and_the_rest_behind_it(client, key):
    limit = RateLimit(per_second=10, burst=1, key=key)

    waits = [rate_limit_reserve(limit=limit, max_wait=2, idle_start=0.3, client=client) for _ in range(3)]
    assert [granted for granted, _ in waits] == [True] * 3
    assert waits[0][1] == 0.3
    assert 0.3 + 0.1 - 0.05 < waits[1][1] <= 0.3 + 0.1
    assert 0.3 + 0.2 - 0.05 < waits[2][1] <= 0.3 + 0.2
    # A bucket that is not idle books as ever.
    assert 0.5 < rate_limit_reserve(limit=limit, max_wait=2, idle_start=0.3, client=client)[1] <= 0.6


# --- off ----------------------------------------------------------------------


@pytest.mark.parametrize("per_second", [0, 0.0, -5])
def test_off_always_grants_and_writes_nothing(client, key, per_second):
    limit = RateLimit(per_second=per_second, burst=1, key=key)

    for _ in range(100):
        assert rate_limit_try(limit=limit, tokens=50, client=client) == 0.0
    assert rate_limit_acquire(limit=limit, tokens=50, max_wait=0, client=client) == 0.0
    assert client.exists(key) == 0

    # Off does not even need Redis to answer.
    nowhere = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    assert rate_limit_try(limit=limit, client=nowhere) == 0.0
    assert rate_limit_acquire(limit=limit, max_wait=10, client=nowhere) == 0.0


# --- acquire -----------------------------------------------------------------


def test_acquire_without_waiting_returns_the_wait_and_takes_nothing(client, key):
    limit = RateLimit(per_second=50, burst=1, key=key)

    assert rate_limit_acquire(limit=limit, max_wait=0, client=client) == 0.0
    state = client.get(key)

    wait = rate_limit_acquire(limit=limit, max_wait=0, client=client)
    assert 0 < wait <= 1 / 50
    wait = rate_limit_acquire(limit=limit, max_wait=wait / 10, client=client)
    assert 0 < wait <= 1 / 50
    assert client.get(key) == state  # nothing taken


def test_acquire_sleeps_until_granted_within_max_wait(client, key):
    limit = RateLimit(per_second=50, burst=1, key=key)

    for _ in range(5):
        assert rate_limit_acquire(limit=limit, max_wait=1.0, client=client) == 0.0
    # Each call above took its token: the bucket is empty again.
    assert 0 < rate_limit_try(limit=limit, client=client) <= 1 / 50


def test_acquire_and_try_validate_arguments(client, key):
    limit = RateLimit(per_second=50, burst=1, key=key)
    with pytest.raises(ValueError):
        rate_limit_acquire(limit=limit, max_wait=-1, client=client)
    with pytest.raises(ValueError):
        rate_limit_try(limit=limit, tokens=0, client=client)
    with pytest.raises(ValueError):
        RateLimit(per_second=50, burst=0)
    assert client.exists(key) == 0


# --- script cache ------------------------------------------------------------


def test_survives_script_flush(key):
    # The default client (settings.REDIS_URL), as the workers use it.
    # One token every 10 s: the bucket's state, not the time the calls take, decides.
    limit = RateLimit(per_second=0.1, burst=1, key=key)

    assert rate_limit_try(limit=limit) == 0.0
    redis_client().script_flush()
    assert 5 < rate_limit_try(limit=limit) <= 10
    # An explicitly passed client reloads the script on NOSCRIPT too.
    redis_client().script_flush()
    with redis.Redis.from_url(django_settings.REDIS_URL) as other:
        assert 5 < rate_limit_try(limit=limit, client=other) <= 10


# --- settings ----------------------------------------------------------------


def test_from_settings(settings):
    settings.SEND_RATE_PER_SECOND = 5
    settings.SEND_RATE_BURST = 3
    assert rate_limit_from_settings() == RateLimit(per_second=5.0, burst=3, key=DEFAULT_KEY)

    del settings.SEND_RATE_PER_SECOND
    del settings.SEND_RATE_BURST
    assert rate_limit_from_settings() == RateLimit(per_second=14.0, burst=1)
