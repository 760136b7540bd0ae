"""The function's real main.py with one stage made to raise, for the exception-injection test.

functions-framework loads this file as the source; ``INJECT_FAULT=stage:ExceptionName[:times]`` picks the
stage and the exception (``times``: how many calls fail before the stage works again; default always).
"""

import builtins
import os
import runpy
from pathlib import Path

import google.api_core.exceptions as google_errors

from worker import service, summary
from worker.adapters import aws, pubsub

stage, name, *rest = os.environ["INJECT_FAULT"].split(":")
remaining = [int(rest[0]) if rest else 10**9]
SPECIAL = {"ServiceUnavailable": lambda: google_errors.ServiceUnavailable("injected"),
           "UnicodeDecodeError": lambda: UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected")}


def make_exception() -> BaseException:
    return SPECIAL[name]() if name in SPECIAL else getattr(builtins, name)("injected")


def failing(original):
    def replacement(*args, **kwargs):
        if remaining[0] > 0:
            remaining[0] -= 1
            raise make_exception()
        return original(*args, **kwargs)

    return replacement


TARGETS = {
    "parse": (service, "job_from_pubsub"),
    "federation": (aws.AwsStorage, "ensure_credentials"),
    "listing": (aws.S3Objects, "list"),
    "reading": (aws.S3Objects, "fetch"),
    "summarizing": (summary.Summary, "to_dict"),
    "result": (service, "ok_result"),
    "publishing": (pubsub.ResultPublisher, "publish"),
    "message": (pubsub, "to_message"),
    "client": (pubsub.pubsub_v1.PublisherClient, "publish"),
}
owner, attribute = TARGETS[stage]
setattr(owner, attribute, failing(getattr(owner, attribute)))

_main = runpy.run_path(str(Path(__file__).resolve().parents[2] / "main.py"))
handle_pubsub = _main["handle_pubsub"]
handle_http = _main["handle_http"]
