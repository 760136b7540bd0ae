"""trust-policy, doctor, token sources and credential refresh, through the real stack."""

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import botocore.session
import requests

from worker.adapters.aws import AwsStorage
from worker.adapters.google import FileIdTokenSource
from worker.devstack.datasets import parquet_bytes, recipe_table
from worker.devstack.proxy import RecordingProxy
from worker.policies import permissions_policy, trust_policy

REPO = Path(__file__).resolve().parents[2]


def worker_cli(stack, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker", *args], cwd=REPO, env=stack.function_env() | env,
                          capture_output=True, text=True, timeout=180)


def test_trust_policy_prints_what_the_stack_uses(stack):
    run = worker_cli(stack, "trust-policy", "--unique-id", stack.metadata.unique_id, "--audience", stack.audience,
                     "--bucket", "b-1", "--prefix", "p/", "--prefix", "q/")
    out = json.loads(run.stdout)
    assert out["trust_policy"] == trust_policy(stack.metadata.unique_id, stack.audience)
    role = stack.aws_client("iam").get_role(RoleName=stack.role_name)["Role"]
    assert role["AssumeRolePolicyDocument"] == out["trust_policy"]
    assert out["permissions_policy"] == permissions_policy("b-1", ["p/", "q/"])
    grants = out["permissions_policy"]["Statement"]
    assert grants[0]["Condition"] == {"StringLike": {"s3:prefix": ["p/*", "q/*"]}}
    assert grants[1]["Resource"] == ["arn:aws:s3:::b-1/p/*", "arn:aws:s3:::b-1/q/*"]


def test_doctor_passes_every_step_on_a_good_setup(stack, bucket, tmp_path):
    stack.put_objects(bucket, {"d/x.parquet": parquet_bytes(recipe_table())})
    policy = tmp_path / "trust.json"
    policy.write_text(json.dumps(trust_policy(stack.metadata.unique_id, stack.audience)))
    run = worker_cli(stack, "doctor", "--job", json.dumps({"bucket": bucket, "prefix": "d/"}),
                     "--trust-policy", str(policy))
    lines = [line for line in run.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert run.returncode == 0, run.stdout
    assert [line.split(":")[0] for line in lines] == [
        "PASS  settings", "PASS  metadata server", "PASS  ID token", "PASS  trust policy",
        "PASS  STS AssumeRoleWithWebIdentity", "PASS  list the prefix", "PASS  read a footer"]
    assert f'"azp": "{stack.metadata.unique_id}"' in run.stdout
    assert "d/x.parquet: 3 rows, 4 columns" in run.stdout


def test_doctor_names_oaud_when_the_audience_is_wrong(stack, tmp_path):
    policy = tmp_path / "trust.json"
    policy.write_text(json.dumps(trust_policy(stack.metadata.unique_id, stack.audience)))
    run = worker_cli(stack, "doctor", "--trust-policy", str(policy), ID_TOKEN_AUDIENCE="//wrong/audience")
    assert run.returncode == 1
    failing = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failing) == 1 and failing[0].startswith("FAIL  trust policy")
    assert "accounts.google.com:oaud" in failing[0] and "'//wrong/audience'" in failing[0]
    assert "accounts.google.com:aud " not in failing[0]  # the unique ID still matches


def test_doctor_stops_at_an_unreachable_metadata_server(stack):
    run = worker_cli(stack, "doctor", GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
    assert run.returncode == 1
    assert run.stdout.splitlines()[1].startswith("FAIL  metadata server")
    assert "ID_TOKEN_SOURCE=impersonate" in run.stdout


def test_doctor_names_missing_settings(stack):
    run = worker_cli(stack, "doctor", AWS_ROLE_ARN="", ID_TOKEN_AUDIENCE="")
    assert run.returncode == 1 and "AWS_ROLE_ARN is required" in run.stdout


def test_a_token_file_is_a_token_source(stack, bucket, tmp_path):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    token_file = tmp_path / "token"
    token_file.write_text(stack.metadata.mint(stack.audience))
    fn = stack.start_function("function-token-file", target="handle_http", ID_TOKEN_SOURCE="file",
                              ID_TOKEN_FILE=str(token_file), GCE_METADATA_HOST="127.0.0.1:9",
                              GCE_METADATA_IP="127.0.0.1:9")
    try:
        response = requests.post(f"http://{fn.address}/", json={"bucket": bucket, "prefix": ""}, timeout=60)
    finally:
        fn.stop()
    assert response.status_code == 200 and response.json()["rows"] == 3


REJECTED = (b'<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
            b"<Code>IDPRejectedClaim</Code><Message>Incorrect token audience</Message></Error>"
            b"<RequestId>00000000-0000-0000-0000-000000000000</RequestId></ErrorResponse>")


def test_federation_failed_carries_the_claims_not_the_token(stack, bucket):
    # moto's STS accepts any token for any role, so a proxy answers AssumeRoleWithWebIdentity with
    # the error real STS gives when the trust policy rejects the token's claims.
    def sts_rejects(method: str, path: str, body: bytes):
        return (403, REJECTED) if b"AssumeRoleWithWebIdentity" in body else None

    with RecordingProxy(stack.aws_endpoint, answer=sts_rejects) as proxy:
        fn = stack.start_function("function-rejected", target="handle_http", AWS_ENDPOINT_URL=proxy.url)
        try:
            response = requests.post(f"http://{fn.address}/", json={"bucket": bucket, "prefix": ""}, timeout=60)
            log = fn.log_tail(200)
        finally:
            fn.stop()
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "federation_failed" and error["details"]["aws_code"] == "IDPRejectedClaim"
    assert "accounts.google.com:oaud" in error["message"]
    claims = error["details"]["claims"]
    assert claims["aud"] == stack.audience and claims["azp"] == stack.metadata.unique_id
    assert set(claims) <= {"iss", "aud", "azp", "sub", "email", "iat", "exp"}
    token = stack.metadata.minted[-1]
    assert token not in response.text and token not in log


class Clock:
    def __init__(self):
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def _sts_on(clock: Clock, moto: str, lifetime: dt.timedelta):
    """A proxy answer: forward AssumeRoleWithWebIdentity to moto, with the expiry on the test's clock."""

    def answer(method: str, path: str, body: bytes):
        if b"AssumeRoleWithWebIdentity" not in body:
            return None
        response = requests.post(moto + path, data=body, timeout=30,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        expiry = (clock.now + lifetime).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        return response.status_code, re.sub(rb"<Expiration>[^<]*</Expiration>",
                                            b"<Expiration>" + expiry + b"</Expiration>", response.content)

    return answer


def _federated(stack, source, clock: Clock, duration: int) -> AwsStorage:
    return AwsStorage.federated(stack.role_arn, source, session_name="refresh-test", region="us-east-1",
                                duration_seconds=duration, session=botocore.session.Session(), time_fetcher=clock)


def test_credentials_refresh_before_expiry_with_a_fresh_token(stack, bucket, tmp_path, monkeypatch):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    clock = Clock()
    token_file = tmp_path / "token"
    token_file.write_text(stack.metadata.mint(stack.audience, now=int(clock.now.timestamp())))
    source = FileIdTokenSource(str(token_file))
    with RecordingProxy(stack.aws_endpoint, answer=_sts_on(clock, stack.aws_endpoint, dt.timedelta(hours=1))) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        storage = _federated(stack, source, clock, 3600)
        objects = storage.objects(bucket, "refresh")

        def job() -> int:
            storage.ensure_credentials()
            return len(objects.fetch("x.parquet", 0, 3))

        def sts_calls() -> int:
            return sum(1 for seen in p.seen if seen.method == "POST")

        assert job() == 4 and sts_calls() == 1
        first_iat = source.last_claims["iat"]
        clock.now += dt.timedelta(minutes=30)  # well before expiry: no STS call
        assert job() == 4 and sts_calls() == 1
        # A new token is in the file; the next job starts inside the advisory window (14 min before
        # expiry): it gets fresh credentials, from an STS call made with the new token.
        token_file.write_text(stack.metadata.mint(stack.audience, now=first_iat + 2760))
        clock.now += dt.timedelta(minutes=16)
        assert job() == 4 and sts_calls() == 2
        assert source.last_claims["iat"] == first_iat + 2760
        # after the first credentials' expiry, jobs run on the new ones without another call
        clock.now += dt.timedelta(minutes=30)
        assert job() == 4 and sts_calls() == 2


def test_short_sessions_refresh_once_per_window_not_per_request(stack, bucket, tmp_path, monkeypatch):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    clock = Clock()
    token_file = tmp_path / "token"
    token_file.write_text(stack.metadata.mint(stack.audience))
    lifetime = dt.timedelta(seconds=900)  # STS's shortest session
    with RecordingProxy(stack.aws_endpoint, answer=_sts_on(clock, stack.aws_endpoint, lifetime)) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
        storage = _federated(stack, FileIdTokenSource(str(token_file)), clock, 900)
        objects = storage.objects(bucket, "short")
        for _ in range(5):
            storage.ensure_credentials()
            objects.fetch("x.parquet", 0, 3)
        assert sum(1 for seen in p.seen if seen.method == "POST") == 1
        clock.now += dt.timedelta(seconds=700)  # 200 s left: inside the (scaled) window
        storage.ensure_credentials()
        assert sum(1 for seen in p.seen if seen.method == "POST") == 2
