"""Pub/Sub for the command line, the local stack and the tests: publish a job, pull what waits on a
subscription, wait for one job's result. Not uploaded with the function (see ``worker.tools``).

The Pub/Sub client reads ``PUBSUB_EMULATOR_HOST`` itself, which is how the local stack points it at Google's
emulator.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable

from google.api_core import exceptions as google_errors
from google.cloud import pubsub_v1

from worker.adapters.pubsub import PUBLISH_TIMEOUT_S


def pull_now(subscriber: pubsub_v1.SubscriberClient, subscription: str, *, max_messages: int = 100,
             wait_s: float = 1.0) -> list:
    """The messages waiting on ``subscription``, waiting at most ``wait_s`` for some (not acknowledged)."""
    try:
        response = subscriber.pull(request={"subscription": subscription, "max_messages": max_messages},
                                   timeout=wait_s, retry=None)
    except google_errors.DeadlineExceeded:
        return []
    return list(response.received_messages)


def publish_job(topic: str, job: dict, attributes: dict[str, str] | None = None,
                client: pubsub_v1.PublisherClient | None = None) -> str:
    """Publish a job message (compact JSON) with ``attributes``; return its message ID."""
    client = client or pubsub_v1.PublisherClient()
    data = json.dumps(job, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return client.publish(topic, data, **(attributes or {})).result(timeout=PUBLISH_TIMEOUT_S)


class NoResultsTopic(ValueError):
    """None of the topics a result could come on exists."""


class ResultWaiter:
    """Subscriptions of its own on the results topics, made before the job is published (so its result
    cannot be missed) and deleted afterwards; it waits for the result of one job ID on any of them
    (a job's own reply topic, and the default one where a refused reply topic is reported).

    The subscriptions filter on ``attributes.job_id``; Google's emulator accepts a filter without
    applying it, so the attribute is checked here too."""

    def __init__(self, topics: list[str], job_id: str, subscriber: pubsub_v1.SubscriberClient | None = None):
        self.job_id = job_id
        self._subscriber = subscriber or pubsub_v1.SubscriberClient()
        self.subscriptions: dict[str, str] = {}
        self.missing: list[str] = []
        for topic in dict.fromkeys(topics):
            _, project, _, topic_id = topic.split("/")
            self.subscriptions[topic] = (f"projects/{project}/subscriptions/"
                                         f"{topic_id[:200]}-wait-{uuid.uuid4().hex[:8]}")

    def __enter__(self) -> ResultWaiter:
        try:
            for topic, subscription in list(self.subscriptions.items()):
                try:
                    self._subscriber.create_subscription(request={
                        "name": subscription, "topic": topic, "ack_deadline_seconds": 60,
                        "filter": f'attributes.job_id = "{self.job_id}"',
                        "expiration_policy": {"ttl": {"seconds": 24 * 3600}}})  # a leftover goes away by itself
                except google_errors.NotFound:  # no result can come on a topic that does not exist
                    del self.subscriptions[topic]
                    self.missing.append(topic)
            if not self.subscriptions:
                raise NoResultsTopic(f"no results topic to wait on: {', '.join(self.missing)} does not exist")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for subscription in self.subscriptions.values():
            with contextlib.suppress(google_errors.GoogleAPICallError):
                self._subscriber.delete_subscription(request={"subscription": subscription})

    def wait(self, timeout: float, on_tick: Callable[[], None] | None = None) -> tuple[dict, dict[str, str]] | None:
        """The result and its attributes, or None after ``timeout`` seconds; ``on_tick`` is called between pulls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if on_tick is not None:
                on_tick()
            for subscription in self.subscriptions.values():
                try:
                    received = pull_now(self._subscriber, subscription, max_messages=50, wait_s=0.5)
                except google_errors.NotFound:
                    continue
                if not received:
                    continue
                self._subscriber.acknowledge(request={"subscription": subscription,
                                                      "ack_ids": [m.ack_id for m in received]})
                for message in received:
                    attributes = dict(message.message.attributes)
                    if attributes.get("job_id") == self.job_id:
                        return json.loads(message.message.data), attributes
        return None
