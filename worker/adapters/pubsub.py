"""Publishing results to the reply topic.

The Pub/Sub client reads ``PUBSUB_EMULATOR_HOST`` itself, which is how the local stack
points it at Google's emulator.
"""

from __future__ import annotations

from google.api_core import exceptions as google_errors
from google.cloud import pubsub_v1

from worker.errors import Forbidden, NotFound
from worker.results import to_message

# The function's CPU is throttled once it has answered, so a publish must complete before
# the handler returns; this bounds how long it may take.
PUBLISH_TIMEOUT_S = 30.0


class ResultPublisher:
    """Publishes result documents to one topic and waits until Pub/Sub has them."""

    def __init__(self, topic: str, client: pubsub_v1.PublisherClient | None = None, timeout: float = PUBLISH_TIMEOUT_S):
        self.topic = topic
        self._client = client or pubsub_v1.PublisherClient()
        self._timeout = timeout

    def publish(self, result: dict, topic: str | None = None) -> str:
        """Publish one result to ``topic`` (default: the reply topic); return its message ID.

        A job's own topic that does not exist or that the worker may not publish to raises NotFound or
        Forbidden (permanent); any other failure, or any failure on the reply topic, raises as it is."""
        data, attributes = to_message(result)
        try:
            return self._client.publish(topic or self.topic, data, **attributes).result(timeout=self._timeout)
        except google_errors.NotFound:
            if topic is None or topic == self.topic:
                raise
            raise NotFound(f"reply_topic {topic!r} does not exist") from None
        except google_errors.PermissionDenied:
            if topic is None or topic == self.topic:
                raise
            raise Forbidden(f"the worker may not publish to reply_topic {topic!r} (grant it roles/pubsub.publisher)"
                            ) from None
