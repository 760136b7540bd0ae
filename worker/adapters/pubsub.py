"""Publishing results to the reply topic.

The Pub/Sub client reads ``PUBSUB_EMULATOR_HOST`` itself, which is how the local stack
points it at Google's emulator.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Sequence

from google.api_core import exceptions as google_errors
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.publisher import exceptions as publisher_errors

from worker.errors import Forbidden, NotFound, ResultRejected, Unavailable, WorkerError
from worker.results import to_message

# The function's CPU is throttled once it has answered, so a publish must complete before
# the handler returns; this bounds how long it may take.
PUBLISH_TIMEOUT_S = 30.0
# Faults a later attempt can get past: the message is redelivered and answered then. (The client has already
# retried the retryable codes within its own deadline before one reaches us.)
TRANSIENT = (google_errors.ServiceUnavailable, google_errors.InternalServerError, google_errors.TooManyRequests,
             google_errors.DeadlineExceeded, google_errors.Aborted, google_errors.Unknown,
             google_errors.ResourceExhausted, google_errors.Cancelled, google_errors.Unauthenticated,
             google_errors.RetryError, TimeoutError)
# Pub/Sub refuses this very message: sending it again cannot help.
REJECTED = (google_errors.InvalidArgument, publisher_errors.MessageTooLargeError, TypeError, ValueError)
# Each job waits for its one result to be sent: the client's default of holding a batch open for
# 10 ms to fill it only adds those 10 ms to every job (an instance runs one job at a time).
RESULT_BATCH = pubsub_v1.types.BatchSettings(max_latency=0.001)


class ResultPublisher:
    """Publishes result documents to one topic and waits until Pub/Sub has them."""

    def __init__(self, topic: str, client: pubsub_v1.PublisherClient | None = None, timeout: float = PUBLISH_TIMEOUT_S):
        self.topic = topic
        self._client = client or pubsub_v1.PublisherClient(batch_settings=RESULT_BATCH)
        self._timeout = timeout

    def publish(self, result: dict, topic: str | None = None) -> str:
        """Publish one result to ``topic`` (default: the reply topic); return its message ID.

        Raises ``Unavailable`` for transient faults, and when the reply topic itself is missing or closed to the
        worker (nothing can be answered until the operator fixes it: the message waits, then dead-letters);
        NotFound or Forbidden when a job's own topic is; ``ResultRejected`` when Pub/Sub refuses the message."""
        data, attributes = to_message(result)
        default = topic is None or topic == self.topic
        try:
            return self._client.publish(topic or self.topic, data, **attributes).result(timeout=self._timeout)
        except TRANSIENT as e:
            raise Unavailable(f"publishing the result failed: {type(e).__name__}",
                              details={"step": "publish"}) from None
        except (google_errors.NotFound, google_errors.PermissionDenied) as e:
            if default:
                raise _topic_unusable(e, "REPLY_TOPIC", self.topic) from None
            if isinstance(e, google_errors.NotFound):
                raise NotFound(f"reply_topic {topic!r} does not exist") from None
            raise Forbidden(f"the worker may not publish to reply_topic {topic!r} (grant it roles/pubsub.publisher)"
                            ) from None
        except REJECTED as e:
            raise ResultRejected(f"Pub/Sub refused the result message ({len(data)} bytes, {len(attributes)} "
                                 f"attributes): {type(e).__name__}: {str(e)[:200]}") from None


def _topic_unusable(e: Exception, setting: str, topic: str) -> Unavailable:
    """A configured topic that is missing or closed to the worker: nothing can be sent until the operator fixes
    it, so the message waits (and in the end dead-letters) rather than being answered."""
    if isinstance(e, google_errors.NotFound):
        return Unavailable(f"{setting} {topic!r} does not exist", details={"step": "publish"})
    return Unavailable(f"the worker may not publish to {setting} {topic!r} (grant it roles/pubsub.publisher)",
                       details={"step": "publish"})


class ShardPublisher:
    """Publishes shard messages to SHARD_TOPIC (``worker.runs.ShardPublisher``): data ``{"run_id", "shard_id"}``
    as JSON, the same two as attributes with ``kind=shard``."""

    def __init__(self, topic: str, client: pubsub_v1.PublisherClient | None = None, timeout: float = PUBLISH_TIMEOUT_S):
        self.topic = topic
        self._client = client or pubsub_v1.PublisherClient(batch_settings=RESULT_BATCH)
        self._timeout = timeout

    def publish_shards(self, run_id: str, shard_ids: Sequence[str]) -> None:
        """Publish one message per shard and wait for all of them (within one ``timeout``). ``Unavailable`` if any
        failed: the caller publishes them all again on its next attempt (a shard message is idempotent)."""
        failures: list[WorkerError] = []

        def classify(e: Exception) -> WorkerError:
            if isinstance(e, TRANSIENT):
                return Unavailable(f"publishing shard messages of run {run_id} failed: {type(e).__name__}",
                                   details={"step": "publish_shards"})
            if isinstance(e, (google_errors.NotFound, google_errors.PermissionDenied)):
                return _topic_unusable(e, "SHARD_TOPIC", self.topic)
            # A shard message is small and fixed in shape: Pub/Sub refusing one is a bug, not the input's fault.
            return WorkerError(f"Pub/Sub refused a shard message of run {run_id}: {type(e).__name__}: {str(e)[:200]}")

        futures = []
        for shard_id in shard_ids:
            data = json.dumps({"run_id": run_id, "shard_id": shard_id}, separators=(",", ":")).encode("utf-8")
            try:
                futures.append(self._client.publish(self.topic, data, kind="shard", run_id=run_id, shard_id=shard_id))
            except (*TRANSIENT, google_errors.NotFound, google_errors.PermissionDenied, *REJECTED) as e:
                failures.append(classify(e))
                break
        deadline = time.monotonic() + self._timeout
        for future in futures:  # resolve every one, so none is left pending when the function answers
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except (*TRANSIENT, google_errors.NotFound, google_errors.PermissionDenied, *REJECTED) as e:
                failures.append(classify(e))
        if failures:
            # Retryable if any failure was: publishing them all again can get past it.
            raise next((f for f in failures if f.retryable), failures[0])


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
