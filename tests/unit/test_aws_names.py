"""Names the worker gives AWS: the STS session name and the per-job user agent."""

import re

import pytest

from worker.adapters.aws import role_session_name, user_agent_token

STS_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")


@pytest.mark.parametrize(("service", "revision"), [
    ("summary-worker", "summary-worker-00042-abc"),
    ("a", "b"),
    ("weird service/name:with*chars", "rev 1"),
    ("x" * 200, "y" * 200),
    ("", ""),
])
def test_role_session_name_is_what_sts_accepts(service, revision):
    name = role_session_name(service, revision, instance="0a1b2c3d")
    assert STS_NAME.match(name), name
    assert "0a1b2c3d" in name


def test_role_session_name_names_service_revision_and_instance():
    assert role_session_name("summary-worker", "summary-worker-00042-abc", "i1") == "summary-worker.00042-abc.i1"


def test_instances_get_distinct_session_names():
    assert role_session_name("s", "r") != role_session_name("s", "r")


@pytest.mark.parametrize(("job_id", "token"), [
    ("nightly-1", "job/nightly-1"),
    ("a/b:c@d", "job/a_b_c_d"),
    ("x" * 300, "job/" + "x" * 128),
])
def test_user_agent_token(job_id, token):
    assert user_agent_token(job_id) == token
