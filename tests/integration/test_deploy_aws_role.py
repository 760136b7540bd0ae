"""The AWS half of the CLI deploy path (deploy/cli/aws-role.sh), run with the real AWS CLI against moto:
it builds the role `python -m worker trust-policy` describes, a second run changes nothing, and the
function, federated into that role, reads what the policy grants and nothing else."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from worker.devstack.datasets import parquet_bytes, recipe_table

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "cli" / "aws-role.sh"
UNIQUE_ID = "104729000000000000777"


@pytest.fixture
def run_script(stack, deploy_tool):
    tools = str(Path(deploy_tool("aws")).parent)

    def run(env: dict[str, str] | None = None, **settings: str) -> subprocess.CompletedProcess:
        base = stack.admin_cli_env() if env is None else env
        full = base | {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"} | settings
        return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True, timeout=180,
                              stdin=subprocess.DEVNULL)

    return run


def printed_policies(audience: str, bucket: str, prefixes: list[str]) -> dict:
    argv = [sys.executable, "-m", "worker", "trust-policy", "--unique-id", UNIQUE_ID, "--audience", audience,
            "--bucket", bucket] + [a for p in prefixes for a in ("--prefix", p)]
    return json.loads(subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True).stdout)


def role_state(stack, role: str) -> tuple[dict, dict, list[str]]:
    iam = stack.aws_client("iam")
    got = iam.get_role(RoleName=role)["Role"]
    policy = iam.get_role_policy(RoleName=role, PolicyName="read-parquet")["PolicyDocument"]
    return got["AssumeRolePolicyDocument"], policy, iam.list_role_policies(RoleName=role)["PolicyNames"]


def test_the_script_builds_the_role_the_worker_prints_and_a_second_run_changes_nothing(stack, run_script):
    role = f"deploy-{uuid.uuid4().hex[:8]}"
    settings = {"ROLE_NAME": role, "UNIQUE_ID": UNIQUE_ID, "AUDIENCE": f"//iam.amazonaws.com/{role}",
                "DATA_BUCKET": "data-bucket", "DATA_PREFIXES": "exports/daily/ events/"}
    users_before = stack.aws_client("iam").list_users()["Users"]

    first = run_script(**settings)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip() == f"arn:aws:iam::123456789012:role/{role}"
    assert f"role {role}: created" in first.stderr

    expected = printed_policies(settings["AUDIENCE"], "data-bucket", ["exports/daily/", "events/"])
    trust, permissions, names = role_state(stack, role)
    assert trust == expected["trust_policy"]
    assert permissions == expected["permissions_policy"]
    assert names == ["read-parquet"]

    second = run_script(**settings)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "trust policy unchanged" in second.stderr and "policy read-parquet unchanged" in second.stderr
    assert "created" not in second.stderr and "updated" not in second.stderr and "written" not in second.stderr
    assert role_state(stack, role) == (trust, permissions, names)
    # No IAM user and no access key came with it.
    assert stack.aws_client("iam").list_users()["Users"] == users_before


def test_a_changed_setting_is_written_and_then_stable(stack, run_script):
    role = f"deploy-{uuid.uuid4().hex[:8]}"
    settings = {"ROLE_NAME": role, "UNIQUE_ID": UNIQUE_ID, "AUDIENCE": "aud-1", "DATA_BUCKET": "data-bucket"}
    assert run_script(**settings).returncode == 0
    changed = run_script(**settings | {"AUDIENCE": "aud-2", "DATA_PREFIXES": "only/"})
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "trust policy updated" in changed.stderr and "policy read-parquet written" in changed.stderr
    expected = printed_policies("aud-2", "data-bucket", ["only/"])
    trust, permissions, _ = role_state(stack, role)
    assert (trust, permissions) == (expected["trust_policy"], expected["permissions_policy"])


@pytest.mark.parametrize(("drop", "message"), [
    ("UNIQUE_ID", "UNIQUE_ID is not set"),
    ("DATA_BUCKET", "DATA_BUCKET is not set"),
])
def test_a_missing_setting_stops_with_a_clear_message(stack, run_script, drop, message):
    settings = {"ROLE_NAME": "never-made", "UNIQUE_ID": UNIQUE_ID, "AUDIENCE": "a", "DATA_BUCKET": "b"}
    del settings[drop]
    run = run_script(**settings)
    assert run.returncode == 1 and message in run.stderr
    assert "never-made" not in {r["RoleName"] for r in stack.aws_client("iam").list_roles()["Roles"]}


def test_a_bad_unique_id_or_no_credentials_stop_with_a_clear_message(stack, run_script):
    settings = {"ROLE_NAME": "never-made", "UNIQUE_ID": UNIQUE_ID, "AUDIENCE": "a", "DATA_BUCKET": "b"}
    bad_id = run_script(**settings | {"UNIQUE_ID": "summary@p.iam.gserviceaccount.com"})
    assert bad_id.returncode == 1 and "21-digit unique ID" in bad_id.stderr
    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    no_keys = {k: v for k, v in stack.admin_cli_env().items() if k not in keys}
    no_keys |= {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
    anonymous = run_script(no_keys, **settings)
    assert anonymous.returncode == 1 and "no working credentials" in anonymous.stderr


def test_the_function_federated_into_that_role_reads_what_it_grants_and_nothing_else(stack, run_script, bucket):
    role = f"deploy-{uuid.uuid4().hex[:8]}"
    unique_id = stack.metadata.unique_id  # the metadata double's service account
    made = run_script(ROLE_NAME=role, UNIQUE_ID=unique_id, AUDIENCE=stack.audience, DATA_BUCKET=bucket,
                      DATA_PREFIXES="granted/")
    assert made.returncode == 0, made.stderr[-2000:]
    data = parquet_bytes(recipe_table())
    stack.put_objects(bucket, {"granted/part-0.parquet": data, "other/part-0.parquet": data}, grant=[])
    fn = stack.start_function(f"fn-{role}", target="handle_http", AWS_ROLE_ARN=made.stdout.strip())
    try:
        granted = stack.post_job({"bucket": bucket, "prefix": "granted/"}, function=fn)
        other = stack.post_job({"bucket": bucket, "prefix": "other/"}, function=fn)
    finally:
        fn.stop()
    assert granted[0] == 200 and (granted[1]["rows"], granted[1]["columns"]) == (3, 4)
    assert other[0] == 403 and other[1]["error"]["code"] == "forbidden"
