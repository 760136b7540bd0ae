"""Cloud Run functions entry points (functions-framework's default source file).

Deploy with ``--entry-point handle_pubsub`` for Pub/Sub jobs (Eventarc or a push
subscription) or ``--entry-point handle_http`` for jobs posted as JSON.
"""

import os

import flask
import functions_framework

from worker.adapters import push
from worker.app import get_worker, http_response
from worker.config import Settings
from worker.logs import setup_logging

setup_logging()
# Read at start, so a missing setting fails the deployment loudly, naming the variable.
SETTINGS = Settings.from_env()
# The Pub/Sub entry point answers on REPLY_TOPIC: without it, stop now rather than answer every job 500.
# (functions-framework and Cloud Run functions set FUNCTION_TARGET to the entry point being served.)
if os.environ.get("FUNCTION_TARGET") == "handle_pubsub":
    SETTINGS.require_reply_topic()
# functions-framework runs this module inside its app's context: answer attribute-only pushes too.
if flask.has_app_context():
    push.install(flask.current_app._get_current_object())


@functions_framework.cloud_event
def handle_pubsub(event):
    """A job from a ``google.cloud.pubsub.topic.v1.messagePublished`` event.

    Returning acknowledges the message (a result was published, ok or error); raising
    answers 500 so that Pub/Sub redelivers (a retryable fault).
    """
    get_worker(SETTINGS).handle_pubsub(event.data, event["id"], source=event["source"])


@functions_framework.http
def handle_http(request):
    """A job as the JSON body of a POST; answers the result JSON (200, 4xx or 5xx)."""
    return http_response(get_worker(SETTINGS).handle_http(request.get_data(cache=False)))
