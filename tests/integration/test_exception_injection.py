"""Issue 10's boundary contract, through the real function, the emulator's push and moto: an exception injected
at every stage ends in exactly one answer (an ``internal`` result naming an incident in the log), or, where
publishing fails for a while, in a redelivery that is answered once publishing works.

Each fault gets a function instance and a push subscription of its own; all of them are started and sent
their job at once (one module fixture), then each test looks at its own fault's answers and log."""

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker.devstack.datasets import parquet_bytes, recipe_table
from worker.devstack.processes import Service, stop_all
from worker.logs import REPORTED_ERROR_EVENT

from .conftest import ALLOWED, _names

FAULT_MAIN = Path(__file__).with_name("fault_main.py")
REPO = Path(__file__).resolve().parents[2]

INTERNAL = [
    ("parse:KeyError", "parsing the job"),
    ("federation:RuntimeError", "federating"),
    ("listing:TypeError", "listing and reading"),
    # Raised by the store's read in a reader thread: no object's fault (issue 18), so not a skip.
    ("reading:MemoryError", "listing and reading"),
    ("summarizing:RecursionError", "building the result"),
    ("result:AttributeError", "building the result"),
    ("message:UnicodeDecodeError:1", "publishing the result"),
]
REDELIVERED = ["client:ServiceUnavailable:2", "publishing:ConnectionError:2"]
# How long each fault's job may take to be answered (a redelivery takes longer).
TIMEOUTS = {fault: 60.0 for fault, _ in INTERNAL} | dict.fromkeys(REDELIVERED, 90.0)
# A second answer, if there were one, would come within the redelivery's time.
SECOND_ANSWER_S = 1.5


@pytest.fixture(scope="module")
def injected(stack):
    """For each fault: (the results published for its one job, or the TimeoutError of waiting; its log).

    A function with ``fault`` injected is started per fault, each with a push subscription of its own, and
    pushed one job; all at once, since each mostly waits (on starting, on the emulator, on redelivery)."""
    bucket = ALLOWED[:-1][next(_names)]
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    run = uuid.uuid4().hex[:6]

    def start(fault: str) -> Service:
        name = f"fn-fault-{run}-{fault.split(':')[0]}"
        return stack.start_function(name, source=FAULT_MAIN, INJECT_FAULT=fault, PYTHONPATH=str(REPO))

    functions: dict[str, Service] = {}
    try:
        with ThreadPoolExecutor(len(TIMEOUTS)) as pool:
            for fault, fn in zip(TIMEOUTS, pool.map(start, TIMEOUTS), strict=True):
                functions[fault] = fn
        keys = {}
        started = time.monotonic()
        for fault, fn in functions.items():
            topic = stack.add_push_subscription(f"jobs-{fn.name}", fn)
            job_id = f"inject-{uuid.uuid4().hex[:8]}"
            message_id = stack.publish_job({"bucket": bucket, "prefix": "x.parquet", "job_id": job_id}, topic=topic)
            # A job that fails before it is parsed is keyed by its message ID: it has no job_id yet.
            keys[fault] = message_id if fault.startswith("parse:") else job_id
        waited: dict[str, TimeoutError] = {}
        for fault, key in keys.items():
            try:
                stack.inbox.wait_for(key, timeout=max(0.0, started + TIMEOUTS[fault] - time.monotonic()))
            except TimeoutError as e:
                waited[fault] = e
        time.sleep(SECOND_ANSWER_S)
        for _ in range(2):
            stack.inbox.drain(wait_s=0.3)
        yield {fault: (waited.get(fault) or stack.inbox.by_job[key], fn.log_tail(400))
               for (fault, key), fn in zip(keys.items(), functions.values(), strict=True)}
    finally:
        stop_all(list(functions.values()))


def _run(injected, fault: str):
    """The results for the job pushed to the function with ``fault`` injected, and that function's log."""
    answers, log = injected[fault]
    if isinstance(answers, TimeoutError):
        raise answers
    return answers, log


def _incident_logged(log: str, incident_id: str) -> dict:
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{") and incident_id in line]
    reported = [e for e in entries if e.get("@type") == REPORTED_ERROR_EVENT]
    assert reported, log[-2000:]
    return reported[0]


@pytest.mark.parametrize(("fault", "stage"), INTERNAL)
def test_an_unexpected_exception_is_answered_once_as_internal(injected, fault, stage):
    answers, log = _run(injected, fault)
    assert len(answers) == 1, answers
    result, attributes = answers[0]
    assert result["status"] == "error" and attributes["error_code"] == "internal"
    error = result["error"]
    assert error["code"] == "internal" and error["retryable"] is False
    assert error["details"]["stage"] == stage
    incident = error["details"]["incident_id"]
    assert incident in error["message"] and "injected" not in error["message"]  # the text stays in the log
    entry = _incident_logged(log, incident)
    assert entry["severity"] == "ERROR" and "Traceback" in entry["message"] and "injected" in entry["message"]
    assert entry["serviceContext"]["service"] == "summary-worker"


@pytest.mark.parametrize("fault", REDELIVERED)
def test_publishing_that_fails_for_a_while_is_redelivered_and_answered_once(injected, fault):
    # ServiceUnavailable is a classified transient fault: raised at once. An unclassified exception from the
    # publisher is tried once more as an internal result; when that fails too, the message is redelivered.
    answers, log = _run(injected, fault)
    assert len(answers) == 1, answers
    result, _ = answers[0]
    assert result["status"] == "ok" and result["rows"] == 3
    expected = ("publishing the result failed: ServiceUnavailable" if fault.startswith("client")
                else "internal error while publishing the result")
    assert expected in log
