"""Publishing results to the reply topic.

The Pub/Sub client reads ``PUBSUB_EMULATOR_HOST`` itself, which is how the local stack
points it at Google's emulator.
"""

from __future__ import annotations

from google.cloud import pubsub_v1

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

    def publish(self, result: dict) -> str:
        """Publish one result; return its message ID. Raises if Pub/Sub does not accept it in time."""
        data, attributes = to_message(result)
        return self._client.publish(self.topic, data, **attributes).result(timeout=self._timeout)
