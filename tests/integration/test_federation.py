"""Keyless federation through the metadata double and STS: once per warm instance, nothing leaked."""

import json
import re
import subprocess
import sys
from pathlib import Path

import requests

from worker.devstack.datasets import parquet_bytes, recipe_table

from .conftest import NEVER_CREATED

REPO = Path(__file__).resolve().parents[2]
JWT = re.compile(r"eyJ[\w-]{10,}\.[\w-]{10,}\.[\w-]{10,}")


def test_the_function_has_no_aws_keys(stack):
    env = stack.function_env()
    assert not any(k in env for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                      "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"))
    assert env["AWS_ROLE_ARN"] == stack.role_arn


def test_sts_is_called_once_for_many_jobs_on_a_warm_instance(stack, bucket, run_job):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    run_job({"bucket": bucket, "prefix": ""})  # warm
    calls, tokens = stack.sts_calls(stack.role_arn), stack.tokens_issued()
    for _ in range(6):
        result, _, _ = run_job({"bucket": bucket, "prefix": ""})
        assert result["status"] == "ok"
    assert stack.sts_calls(stack.role_arn) == calls
    assert stack.tokens_issued() == tokens
    # one per function process of the stack that has run a job (push, HTTP, and ones tests started)
    assert 1 <= calls <= len(stack.services) - 2  # all but moto and the emulator are functions


def test_the_role_session_names_the_service_and_revision(stack, bucket, run_job):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    run_job({"bucket": bucket, "prefix": ""})
    # Other tests federate into roles of their own: the stack's role is the one its function used.
    sessions = [s for s in stack.moto_state()["sts"]["AssumedRole"] if s["role_arn"] == stack.role_arn]
    names = {s["session_name"] for s in sessions}
    assert names and all(re.fullmatch(r"summary-worker\.00001-dev\.[0-9a-f]{8}", n) for n in names), names


def test_no_credential_or_token_in_results_or_logs(stack, bucket, run_job, tmp_path):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table()), "bad.parquet": b"PAR1junk"})
    results = [run_job({"bucket": bucket, "prefix": "", "mode": mode})[0] for mode in ("metadata", "full")]
    results.append(run_job({"bucket": NEVER_CREATED, "prefix": ""})[0])  # an error result
    results.append(run_job({"bucket": bucket, "prefix": "no/"})[0])
    http = [stack.post_job({"bucket": bucket, "prefix": ""}), stack.post_job({"bucket": "Bad", "prefix": ""})]
    assert http[0][0] == 200 and http[1][0] == 400
    policy = tmp_path / "trust.json"
    policy.write_text(json.dumps({"Statement": []}))
    doctor = subprocess.run([sys.executable, "-m", "worker", "doctor", "--job", json.dumps({"bucket": bucket,
                             "prefix": ""})], cwd=REPO, env=stack.function_env(), capture_output=True, text=True,
                            timeout=120)
    assert doctor.returncode == 0, doctor.stdout
    secrets = list(stack.metadata.minted)  # every ID token the metadata double handed out
    for session in stack.moto_state()["sts"]["AssumedRole"]:
        secrets += [session["secret_access_key"], session["session_token"]]
    assert len(secrets) >= 3
    texts = {"results": json.dumps(results), "http answers": json.dumps(http), "doctor output": doctor.stdout +
             doctor.stderr, "push function log": stack.fn_pubsub.log_path.read_text(),
             "http function log": stack.fn_http.log_path.read_text()}
    for name, text in texts.items():
        leaked = [i for i, s in enumerate(secrets) if s in text]
        # Say where, never what: the failure message must not print a secret either.
        assert not leaked, f"{len(leaked)} credential value(s) appear in the {name}"
        assert not JWT.search(text), f"something shaped like a JWT appears in the {name}"


def test_every_s3_request_of_a_job_names_the_job_in_its_user_agent(stack, bucket):
    from worker.devstack.proxy import RecordingProxy

    objects = {f"ua/part-{i}.parquet": parquet_bytes(recipe_table()) for i in range(3)}
    stack.put_objects(bucket, objects)
    with RecordingProxy(stack.aws_endpoint) as proxy:
        fn = stack.start_function("function-ua", target="handle_http", AWS_ENDPOINT_URL=proxy.url)
        try:
            response = requests.post(f"http://{fn.address}/", timeout=60,
                                     json={"bucket": bucket, "prefix": "ua/", "job_id": "ua-check-1"})
            assert response.status_code == 200 and response.json()["files"] == 3
            response = requests.post(f"http://{fn.address}/", timeout=60,
                                     json={"bucket": bucket, "prefix": "ua/", "job_id": "ua-check-2"})
            assert response.status_code == 200
        finally:
            fn.stop()
    s3 = [s for s in proxy.seen if s.path.startswith(f"/{bucket}")]
    sts = [s for s in proxy.seen if s not in s3]
    assert len(s3) == 2 * (1 + 3)  # per job: one listing, one footer read per file
    assert all(("job/ua-check-1" in s.user_agent) != ("job/ua-check-2" in s.user_agent) for s in s3)
    assert sum("job/ua-check-1" in s.user_agent for s in s3) == 4
    assert len(sts) == 1 and sts[0].method == "POST"  # one STS call for both jobs
