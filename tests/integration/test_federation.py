"""Keyless federation through the metadata double and STS: once per warm instance, nothing leaked."""

import json
import re

from worker.devstack.datasets import parquet_bytes, recipe_table

JWT = re.compile(r"eyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}")


def test_the_function_has_no_aws_keys(stack):
    env = stack.function_env()
    assert not any(k in env for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                      "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"))
    assert env["AWS_ROLE_ARN"] == stack.role_arn


def test_sts_is_called_once_for_many_jobs_on_a_warm_instance(stack, bucket, run_job):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    run_job({"bucket": bucket, "prefix": ""})  # warm
    calls, tokens = stack.sts_calls(), stack.tokens_issued()
    for _ in range(6):
        result, _, _ = run_job({"bucket": bucket, "prefix": ""})
        assert result["status"] == "ok"
    assert stack.sts_calls() == calls
    assert stack.tokens_issued() == tokens
    assert 1 <= calls <= 2  # one per function process (push and HTTP) that has run a job


def test_the_role_session_names_the_service_and_revision(stack, bucket, run_job):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    run_job({"bucket": bucket, "prefix": ""})
    sessions = stack.moto_state()["sts"]["AssumedRole"]
    names = {s["session_name"] for s in sessions}
    assert all(re.fullmatch(r"summary-worker\.00001-dev\.[0-9a-f]{8}", n) for n in names), names
    assert {s["role_arn"] for s in sessions} == {stack.role_arn}


def test_no_credential_or_token_in_results_or_logs(stack, bucket, run_job):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    ok, _, _ = run_job({"bucket": bucket, "prefix": ""})
    bad, _, _ = run_job({"bucket": "it-bucket-39", "prefix": ""})  # never created: an error result
    status, http_result = stack.post_job({"bucket": bucket, "prefix": ""})
    assert status == 200
    secrets = []
    for session in stack.moto_state()["sts"]["AssumedRole"]:
        secrets += [session["secret_access_key"], session["session_token"], session["access_key_id"]]
    assert secrets
    texts = {"ok result": json.dumps(ok), "error result": json.dumps(bad), "http result": json.dumps(http_result),
             "push function log": stack.fn_pubsub.log_path.read_text(),
             "http function log": stack.fn_http.log_path.read_text()}
    for name, text in texts.items():
        leaked = [i for i, s in enumerate(secrets) if s in text]
        # Say where, never what: the failure message must not print a secret either.
        assert not leaked, f"{len(leaked)} credential value(s) appear in the {name}"
        assert not JWT.search(text), f"something shaped like a JWT appears in the {name}"
