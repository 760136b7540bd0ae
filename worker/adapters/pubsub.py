"""Publishing results to the reply topic and shard messages to SHARD_TOPIC: all of Pub/Sub the function uses.

Publishing jobs and waiting for results from the command line is in ``worker.tools.pubsub``, which does not ship.

The Pub/Sub client reads ``PUBSUB_EMULATOR_HOST`` itself, which is how the local stack
points it at Google's emulator.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

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
    """Publishes a run's work messages to SHARD_TOPIC (``worker.fanout.records.ShardPublisher``): a shard's carries
    ``kind=shard``, ``run_id``, ``shard_id`` and ``generation`` (its dispatch: an older copy is recognised as stale,
    dead-lettered or not); a merge task's ``kind=merge``, ``run_id``, ``task_id``. The data repeats them as JSON."""

    def __init__(self, topic: str, client: pubsub_v1.PublisherClient | None = None, timeout: float = PUBLISH_TIMEOUT_S):
        self.topic = topic
        self._client = client or pubsub_v1.PublisherClient(batch_settings=RESULT_BATCH)
        self._timeout = timeout

    def publish_shards(self, run_id: str, shards: Sequence[tuple[str, int]]) -> None:
        """Publish one message per (shard, generation) and wait for all of them (within one ``timeout``).
        ``Unavailable`` if any failed: the caller publishes them all again on its next attempt."""
        self._publish(run_id, [{"kind": "shard", "run_id": run_id, "shard_id": shard_id, "generation": str(generation)}
                               for shard_id, generation in shards])

    def publish_tasks(self, run_id: str, task_ids: Sequence[str]) -> None:
        """Publish one message per merge task, as ``publish_shards``."""
        self._publish(run_id, [{"kind": "merge", "run_id": run_id, "task_id": task_id} for task_id in task_ids])

    def _publish(self, run_id: str, messages: Sequence[dict[str, str]]) -> None:
        failures: list[WorkerError] = []

        def classify(e: Exception) -> WorkerError:
            if isinstance(e, TRANSIENT):
                return Unavailable(f"publishing work messages of run {run_id} failed: {type(e).__name__}",
                                   details={"step": "publish_shards"})
            if isinstance(e, (google_errors.NotFound, google_errors.PermissionDenied)):
                return _topic_unusable(e, "SHARD_TOPIC", self.topic)
            # A work message is small and fixed in shape: Pub/Sub refusing one is a bug, not the input's fault.
            return WorkerError(f"Pub/Sub refused a work message of run {run_id}: {type(e).__name__}: {str(e)[:200]}")

        futures = []
        for attributes in messages:
            data = json.dumps(attributes, separators=(",", ":")).encode("utf-8")
            try:
                futures.append(self._client.publish(self.topic, data, **attributes))
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
