"""The Pub/Sub steps of the CLI deploy path (deploy/cli/deploy.sh), run with the real gcloud against
Google's Pub/Sub emulator: topics, the subscriptions that keep results and dead letters, and the push
delivery with retries and dead-lettering. A second run changes nothing, and a job published on the
topic it made reaches the function and answers."""

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from worker.devstack.datasets import parquet_bytes, recipe_table

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "cli" / "deploy.sh"


@pytest.fixture(scope="module")
def deploy(stack, tmp_path_factory):
    """Run steps of deploy.sh (bash functions) with gcloud pointed at the emulator (one name for the module)."""
    tmp_path = tmp_path_factory.mktemp("deploy-cli")
    token = tmp_path / "token"
    token.write_text("the-emulator-checks-no-token")
    name = f"cli-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in stack.function_env().items() if not k.startswith("PUBSUB_")} | {
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{stack.emulator.address}/",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "PROJECT": stack.project, "NAME": name, "DATA_BUCKET": "data-bucket", "MAX_DELIVERY_ATTEMPTS": "7",
    }

    def run(steps: str) -> subprocess.CompletedProcess:
        done = subprocess.run(["bash", "-c", f'source "{SCRIPT}" && settings && {steps}'], env=env,
                              capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    run.name = name
    run.env = env
    return run


@pytest.fixture(scope="module")
def first_run(stack, deploy):
    """The first run of the topics and delivery steps: both tests start from what it made (each gcloud call
    costs a second or so, and the tests do not interfere: one reads the settings, the other publishes a job)."""
    return deploy(f'topics && delivery "http://{stack.fn_pubsub.address}"')


def describe(deploy, kind: str, name: str) -> dict:
    got = subprocess.run(["gcloud", "pubsub", kind, "describe", name, f"--project={deploy.env['PROJECT']}",
                          "--format=json"], env=deploy.env, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(got.stdout)


def test_topics_and_delivery_are_made_once_and_a_second_run_changes_nothing(stack, deploy, first_run):
    url = f"http://{stack.fn_pubsub.address}"
    first = first_run
    name, project = deploy.name, stack.project
    for made in (f"topic {name}-jobs: created", f"topic {name}-results: created",
                 f"topic {name}-dead-letter: created", f"subscription {name}-results: created",
                 f"subscription {name}-dead-letter: created", f"subscription {name}-jobs: created"):
        assert made in first.stderr
    jobs = describe(deploy, "subscriptions", f"{name}-jobs")
    assert jobs["pushConfig"]["pushEndpoint"] == f"{url}/projects/{project}/topics/{name}-jobs"
    assert jobs["pushConfig"]["oidcToken"] == {"serviceAccountEmail": f"{name}-push@{project}.iam.gserviceaccount.com",
                                               "audience": url}
    assert jobs["ackDeadlineSeconds"] == 600
    assert jobs["retryPolicy"] == {"minimumBackoff": "10s", "maximumBackoff": "600s"}
    assert jobs["deadLetterPolicy"] == {"deadLetterTopic": f"projects/{project}/topics/{name}-dead-letter",
                                        "maxDeliveryAttempts": 7}
    kept = describe(deploy, "subscriptions", f"{name}-dead-letter")
    assert kept["topic"] == f"projects/{project}/topics/{name}-dead-letter"
    assert kept["messageRetentionDuration"] == "604800s"

    second = deploy(f'topics && delivery "{url}"')
    assert "created" not in second.stderr and "updated" not in second.stderr
    assert second.stderr.count(": exists") == 5 and f"subscription {name}-jobs: unchanged" in second.stderr
    assert describe(deploy, "subscriptions", f"{name}-jobs") == jobs

    third = deploy(f'MAX_DELIVERY_ATTEMPTS=9 && delivery "{url}"')
    assert f"subscription {name}-jobs: updated" in third.stderr
    assert describe(deploy, "subscriptions", f"{name}-jobs")["deadLetterPolicy"]["maxDeliveryAttempts"] == 9


def test_a_job_on_the_topic_the_script_made_reaches_the_function(stack, deploy, first_run, bucket):
    stack.put_objects(bucket, {"recipe/part-0.parquet": parquet_bytes(recipe_table())})
    job_id = f"cli-{uuid.uuid4().hex[:8]}"
    stack.publish_job({"bucket": bucket, "prefix": "recipe/", "job_id": job_id},
                      topic=f"projects/{stack.project}/topics/{deploy.name}-jobs")
    result, _ = stack.inbox.wait_one(job_id, timeout=60)
    assert (result["status"], result["rows"], result["columns"]) == ("ok", 3, 4)
