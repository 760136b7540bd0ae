"""A setting the Pub/Sub entry point cannot work without stops the function at start, naming the variable
(the promise of docs/configuration.md), instead of answering every job 500 until it is dead-lettered."""

import pytest


def test_the_pubsub_function_without_reply_topic_does_not_start(stack):
    with pytest.raises(RuntimeError, match="REPLY_TOPIC is required"):
        stack.start_function("function-no-reply-topic", REPLY_TOPIC="")


def test_the_http_function_needs_no_reply_topic(stack):
    fn = stack.start_function("function-http-no-reply-topic", target="handle_http", REPLY_TOPIC="")
    fn.stop()
