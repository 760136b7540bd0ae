"""The real local stack, started once per test session: Google's Pub/Sub emulator, moto with IAM
enforced, the metadata double, and the function under functions-framework (push + HTTP)."""

import itertools
import uuid

import pytest
from jsonschema import Draft202012Validator

from worker.devstack.stack import LocalStack
from worker.jobs import load_schema

ALLOWED = [f"it-bucket-{i:03d}" for i in range(200)]
NEVER_CREATED = ALLOWED[-1]  # allowed, and no test makes it
RESULT_SCHEMA = Draft202012Validator(load_schema("result"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    with LocalStack(tmp_path_factory.mktemp("stack"), allowed_buckets=",".join(ALLOWED)) as running:
        yield running


_names = itertools.count()


@pytest.fixture
def bucket():
    """A fresh bucket name from ALLOWED_BUCKETS (created by ``stack.put_objects``)."""
    return ALLOWED[:-1][next(_names)]


@pytest.fixture
def run_job(stack):
    """Publish a job through the emulator and return (result, attributes, message_id) from the reply topic."""

    def run(job: dict | bytes, *, timeout: float = 60.0, job_id: str | None = None):
        if isinstance(job, dict) and "job_id" not in job and job_id is None:
            job = {**job, "job_id": f"it-{uuid.uuid4().hex[:12]}"}
        message_id = stack.publish_job(job)
        key = job_id or (job["job_id"] if isinstance(job, dict) else message_id)
        result, attributes = stack.inbox.wait_one(key, timeout=timeout)
        errors = sorted(RESULT_SCHEMA.iter_errors(result), key=str)
        assert not errors, [e.message for e in errors]
        return result, attributes, message_id

    return run
