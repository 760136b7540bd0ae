"""``python -m worker summarize`` against the local stack: the function's code path from a shell."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker.devstack.datasets import events_table, parquet_bytes, recipe_table

from .conftest import ALLOWED, _names

REPO = Path(__file__).resolve().parents[2]


def cli(stack, *args: str, federate: bool = False, **env: str) -> tuple[int, list[str]]:
    base = {k: v for k, v in stack.function_env().items() if k not in ("AWS_ROLE_ARN", "ID_TOKEN_AUDIENCE")}
    if federate:
        base |= {"AWS_ROLE_ARN": stack.role_arn, "ID_TOKEN_AUDIENCE": stack.audience}
    else:  # boto3's default chain: the harness's own moto keys
        keys = stack._admin_keys
        base |= {"AWS_ACCESS_KEY_ID": keys["aws_access_key_id"], "AWS_SECRET_ACCESS_KEY": keys["aws_secret_access_key"]}
    run = subprocess.run([sys.executable, "-m", "worker", "summarize", *args], cwd=REPO, env=base | env,
                         capture_output=True, text=True, timeout=120)
    return run.returncode, run.stdout.splitlines()


@pytest.fixture(scope="module", autouse=True)
def without_metadata(stack):
    """test_summarize_exit_statuses's federated run with no metadata server (nothing listens on port 9), started
    as the module starts: it spends ~15 s in google-auth's retries (idle) while the other tests run (that test
    comes last, to give it their time). It fails before STS, so test_summarize_federates_when_a_role_is_set's
    count of STS calls is not disturbed."""
    bucket = ALLOWED[:-1][next(_names)]
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(cli, stack, f"s3://{bucket}/", federate=True, GCE_METADATA_HOST="127.0.0.1:9",
                          GCE_METADATA_IP="127.0.0.1:9")


def test_summarize_prints_exactly_one_line_of_result_json(stack, bucket):
    stack.put_objects(bucket, {"r/data.parquet": parquet_bytes(recipe_table()), "r/_SUCCESS": b""})
    status, lines = cli(stack, f"s3://{bucket}/r/")
    assert status == 0 and len(lines) == 1
    result = json.loads(lines[0])
    assert (result["status"], result["rows"], result["columns"], result["skipped_count"]) == ("ok", 3, 4, 1)
    assert result["mode"] == "metadata" and result["job_id"].startswith("cli-")


def test_summarize_full_mode_with_columns(stack, bucket):
    stack.put_objects(bucket, {f"e/p{i}.parquet": parquet_bytes(events_table(i, 1000), row_group_size=400)
                               for i in range(3)})
    status, lines = cli(stack, f"s3://{bucket}/e/", "--mode", "full", "--columns", "amount,user,nope",
                        "--job-id", "cli-full-1")
    result = json.loads(lines[0])
    assert status == 0 and result["job_id"] == "cli-full-1" and result["mode"] == "full"
    assert set(result["profile"]) == {"amount", "user"}
    assert result["profile"]["user"]["distinct_approx"] == 1000
    assert result["missing_columns"] == ["nope"]


def test_summarize_federates_when_a_role_is_set(stack, bucket):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    calls = stack.sts_calls()
    status, lines = cli(stack, f"s3://{bucket}/", federate=True)
    assert status == 0 and json.loads(lines[0])["rows"] == 3
    assert stack.sts_calls() == calls + 1


def test_the_stacks_env_sh_is_enough_for_every_command(stack, bucket):
    """What `./dev stack` exports in env.sh (cli_env) lets publish --wait, status and redrive reach the stack as the
    function does: nothing else from this process's environment but PATH."""
    from worker.cli import cli_env

    env = {"PATH": "/usr/bin:/bin", **cli_env(stack)}
    stack.put_objects(bucket, {"r/data.parquet": parquet_bytes(recipe_table())})

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "worker", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)

    published = run("publish", "--bucket", bucket, "--prefix", "r/", "--job-id", "env-sh-1", "--wait",
                    "--timeout", "90")
    assert published.returncode == 0, published.stderr[-2000:]
    assert json.loads(published.stdout)["rows"] == 3
    for command in (["status", "no-such-run", "--once"], ["redrive", "no-such-run"]):
        done = run(*command)
        assert done.returncode == 2 and "no run 'no-such-run'" in done.stderr, (command, done.stderr[-2000:])


def test_summarize_exit_statuses(stack, bucket, without_metadata):
    stack.put_objects(bucket, {"x.parquet": parquet_bytes(recipe_table())})
    status, lines = cli(stack, f"s3://{bucket}/missing/")
    assert status == 1 and json.loads(lines[0])["error"]["code"] == "not_found"
    status, lines = cli(stack, "not-a-url")
    assert status == 2 and json.loads(lines[0])["error"]["code"] == "invalid_job"
    status, lines = cli(stack, "s3://Bad_Bucket/x")
    assert status == 2 and "bucket:" in json.loads(lines[0])["error"]["problems"][0]
    status, lines = without_metadata.result(timeout=180)
    assert status == 75 and json.loads(lines[0])["error"]["retryable"] is True
