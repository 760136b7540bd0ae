"""deploy/cli without a cloud: the function settings deploy.sh writes are what worker/config.py reads,
the same as Terraform's; a missing prerequisite stops it with a clear message before any change; and the
whole script, run against stand-ins for gcloud and aws that record their calls (fake_cloud.py), makes what
Terraform makes for fan-out, and nothing a second time."""

import functools
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from worker import retention
from worker.config import Settings

from .terraform import FANOUT_SETTINGS, evaluate, load

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "cli" / "deploy.sh"
ROLE = "arn:aws:iam::123456789012:role/parquet-summary"
# A gcloud command where a statement starts (not inside a message): its command words, then its arguments.
GCLOUD_CALL = re.compile(r"(?:^\s*|\$\(\s*|exists |grant_to_agent |&& |; |\(cd \S+ && )"
                         r"gcloud ((?:[a-z][a-z-]* )+)([^;|)]*)")


def bash(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], env={"PATH": os.environ["PATH"], "HOME": os.environ["HOME"]} | env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_the_function_settings_of_the_cli_path_are_read_by_the_worker_and_match_terraform():
    run = bash(f'source "{DEPLOY}" && settings && function_env "{ROLE}"',
               {"PROJECT": "my-project", "DATA_BUCKET": "my-data", "AWS_REGION": "eu-west-1",
                "ALLOWED_REPLY_TOPICS": "projects/my-project/topics/stage-2"})
    assert run.returncode == 0, run.stderr
    env = {k: json.loads(v) for k, v in (line.split(": ", 1) for line in run.stdout.splitlines())}
    settings = Settings.from_env(env)
    # Fan-out (on by default): the bucket, the topics and the database it makes, which Terraform's
    # modules/plan also names (compared in test_terraform_binary.py).
    assert set(env) >= FANOUT_SETTINGS and settings.fanout_enabled
    assert settings.partials_bucket == "my-project-parquet-summary-partials"
    assert settings.shard_topic == "projects/my-project/topics/parquet-summary-shards"
    assert settings.shard_dead_letter_topic == "projects/my-project/topics/parquet-summary-shards-dead-letter"
    assert (settings.firestore_database, settings.runs_collection) == ("(default)", "summary-runs")
    assert settings.fanout_max_in_flight == 80  # MAX_INSTANCES x CONCURRENCY: the function's capacity
    env = {k: v for k, v in env.items() if k not in FANOUT_SETTINGS}
    assert settings.role_arn == ROLE and settings.audience == "//iam.amazonaws.com/parquet-summary"
    assert settings.reply_topic == "projects/my-project/topics/parquet-summary-results"
    assert settings.region == "eu-west-1" and settings.allowed_buckets == {"my-data"}
    assert settings.job_deadline_seconds == 480 and settings.template_time_zone == "Etc/UTC"
    assert settings.allowed_reply_topics == {"projects/my-project/topics/stage-2"}

    tf = load()
    scope = {"module.aws_role.role_arn": ROLE, "local.audience": "//iam.amazonaws.com/parquet-summary",
             "google_pubsub_topic.results.id": "projects/my-project/topics/parquet-summary-results",
             "var.project": "my-project", "var.aws_region": "eu-west-1", "var.data_bucket": "my-data",
             "tostring(var.timeout_seconds - 60)": "480", "var.schedule_time_zone": "Etc/UTC",
             'join(",", var.allowed_reply_topics)': "projects/my-project/topics/stage-2",
             "tostring(var.concurrency)": "8"}
    assert env == {k: evaluate(v, scope) for k, v in tf["locals"]["environment"].items()}


def test_the_defaults_of_both_paths_agree():
    run = bash(f'source "{DEPLOY}" && settings && echo "$NAME|$REGION|$AWS_REGION|$PYTHON_RUNTIME|$TIMEOUT_SECONDS|'
               '$MEMORY|$CPU|$MAX_INSTANCES|$CONCURRENCY|$MAX_DELIVERY_ATTEMPTS|$MIN_RETRY_DELAY|$MAX_RETRY_DELAY|$SCHEDULE|'
               '$SCHEDULE_TIME_ZONE"', {"PROJECT": "p", "DATA_BUCKET": "b"})
    assert run.returncode == 0, run.stderr
    variables = load()["variable"]
    names = ("name", "region", "aws_region", "python_runtime", "timeout_seconds", "memory", "cpu", "max_instances",
             "concurrency", "max_delivery_attempts", "minimum_backoff", "maximum_backoff", "schedule",
             "schedule_time_zone")
    assert run.stdout.strip().split("|") == [str(variables[n]["default"]) for n in names]


def path_without(folder: Path, tools: Path, *missing: str) -> str:
    """A PATH with every command of this one (and the deploy ``tools``) but ``missing``."""
    folder.mkdir()
    for directory in [str(tools), *os.environ["PATH"].split(os.pathsep)]:
        for command in Path(directory).glob("*") if Path(directory).is_dir() else ():
            if command.name not in missing and not (folder / command.name).exists() and os.access(command, os.X_OK):
                (folder / command.name).symlink_to(command)
    return str(folder)


def test_missing_prerequisites_stop_the_cli_path_before_any_change(tmp_path, deploy_tool):
    tools = Path(deploy_tool("aws")).parent
    settings = {"PROJECT": "p", "DATA_BUCKET": "b", "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}
    no_gcloud = bash(f'"{DEPLOY}"', settings | {"PATH": path_without(tmp_path / "a", tools, "gcloud")})
    assert no_gcloud.returncode == 1 and "gcloud is missing: install the Google Cloud CLI" in no_gcloud.stderr
    no_aws = bash(f'"{DEPLOY}"', settings | {"PATH": path_without(tmp_path / "b", tools, "aws")})
    assert no_aws.returncode == 1 and "aws is missing: install the AWS CLI" in no_aws.stderr
    everything = path_without(tmp_path / "c", tools)
    no_project = bash(f'"{DEPLOY}"', {"DATA_BUCKET": "b", "PATH": everything})
    assert no_project.returncode == 1 and "PROJECT is not set" in no_project.stderr
    bad_timeout = bash(f'"{DEPLOY}"', settings | {"PATH": everything, "TIMEOUT_SECONDS": "900"})
    assert bad_timeout.returncode == 1 and "TIMEOUT_SECONDS must be between 120 and 540" in bad_timeout.stderr
    no_account = bash(f'"{DEPLOY}"', settings | {"PATH": everything})
    assert no_account.returncode == 1 and "gcloud has no active account: run 'gcloud auth login'" in no_account.stderr


def test_every_gcloud_command_of_the_script_exists_with_its_flags():
    text = re.sub(r"\\\n\s*", " ", DEPLOY.read_text())
    commands: dict[tuple[str, ...], set[str]] = {}
    for line in text.splitlines():
        if line.strip().startswith("#") or "need_command" in line:
            continue
        for call in GCLOUD_CALL.findall(line):
            words = tuple(w for w in call[0].split() if w)
            commands.setdefault(words, set()).update(re.findall(r"(--[a-z][a-z0-9-]*)", call[1]))
    assert ("functions", "deploy") in commands and len(commands) > 10
    assert_gcloud_has(commands)


@functools.cache
def help_of(path: tuple[str, ...]) -> subprocess.CompletedProcess:
    """``gcloud PATH --help`` of the installed gcloud, asked once per session (a second each). Help needs no
    credentials: gcloud is told not to probe for a GCE metadata server first (its timeout was most of the wait)."""
    return subprocess.run(["gcloud", *path, "--help"], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"PAGER": "cat", "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
                                            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false"})


def assert_gcloud_has(commands: dict[tuple[str, ...], set[str]]) -> None:
    """Each gcloud command (its words) exists, with each of its flags, in the installed gcloud's help."""
    with ThreadPoolExecutor(4) as pool:
        helps = dict(zip(commands, pool.map(help_of, commands), strict=True))
    for path, flags in commands.items():
        helped = helps[path]
        assert helped.returncode == 0, f"gcloud {' '.join(path)}: {helped.stderr[-500:]}"
        usage = re.sub(r"\x1b\[[0-9;]*m", "", helped.stdout)
        for flag in flags - {"--quiet", "--project", "--format", "--filter", "--help"}:
            bare = flag.removeprefix("--no-")
            assert re.search(rf"--(no-)?\[?(no-)?\]?{re.escape(bare.removeprefix('--'))}\b", usage), \
                f"gcloud {' '.join(path)} has no {flag}"


def test_without_fan_out_the_function_has_no_fan_out_settings():
    run = bash(f'source "{DEPLOY}" && settings && function_env "{ROLE}"',
               {"PROJECT": "my-project", "DATA_BUCKET": "my-data", "FANOUT_ENABLED": "no"})
    assert run.returncode == 0, run.stderr
    env = {k: json.loads(v) for k, v in (line.split(": ", 1) for line in run.stdout.splitlines())}
    assert not set(env) & FANOUT_SETTINGS and not Settings.from_env(env).fanout_enabled


def test_the_fan_out_defaults_of_both_paths_agree():
    run = bash(f'source "{DEPLOY}" && settings && echo "$FANOUT_ENABLED|$FIRESTORE_DATABASE|$CREATE_FIRESTORE_DATABASE|'
               '$RUNS_COLLECTION|$RUNS_RETENTION_DAYS|$SHARD_MAX_DELIVERY_ATTEMPTS|$FIRESTORE_LOCATION|'
               '$FANOUT_MAX_IN_FLIGHT|$SWEEP_SCHEDULE"', {"PROJECT": "p", "DATA_BUCKET": "b", "REGION": "europe-west1",
                                                         "MAX_INSTANCES": "40", "CONCURRENCY": "3"})
    assert run.returncode == 0, run.stderr
    variables = load()["variable"]
    yes = {True: "yes", False: "no"}
    assert run.stdout.strip().split("|") == [
        yes[variables["fanout_enabled"]["default"]], variables["firestore_database"]["default"],
        yes[variables["create_firestore_database"]["default"]], variables["runs_collection"]["default"],
        str(variables["runs_retention_days"]["default"]), str(variables["shard_max_delivery_attempts"]["default"]),
        # Terraform's null: the region, and max_instances x concurrency (see main.tf and modules/plan).
        "europe-west1", "120", variables["sweep_schedule"]["default"]]
    assert variables["firestore_location"]["default"] is None and variables["fanout_max_in_flight"]["default"] is None


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("FANOUT_ENABLED", "maybe", "FANOUT_ENABLED must be yes or no"),
    ("FIRESTORE_DATABASE", "Runs_DB", "FIRESTORE_DATABASE is (default) or 4-63"),
    ("SHARD_MAX_DELIVERY_ATTEMPTS", "4", "SHARD_MAX_DELIVERY_ATTEMPTS must be between 5 and 100"),
    ("RUNS_RETENTION_DAYS", "0", "RUNS_RETENTION_DAYS must be a whole number of days from 1 to 3650"),
    ("RUNS_RETENTION_DAYS", "3651", "RUNS_RETENTION_DAYS must be a whole number of days from 1 to 3650"),
    ("RUNS_RETENTION_DAYS", "030", "RUNS_RETENTION_DAYS must be a whole number of days from 1 to 3650"),
    ("PARTIALS_RETENTION_DAYS", "7", "PARTIALS_RETENTION_DAYS is now RUNS_RETENTION_DAYS"),
    ("FANOUT_MAX_IN_FLIGHT", "1001", "FANOUT_MAX_IN_FLIGHT must be between 1 and 1000"),
])
def test_a_bad_fan_out_setting_is_refused_before_any_change(setting, value, message):
    run = bash(f'source "{DEPLOY}" && settings', {"PROJECT": "p", "DATA_BUCKET": "b", setting: value})
    assert run.returncode == 1 and message in run.stderr


# -- the whole script against a recording stand-in for gcloud and aws ---------------------------------------

FAKE = Path(__file__).with_name("fake_cloud.py")
PROJECT, NAME = "my-project", "parquet-summary"
WORKER = f"serviceAccount:{NAME}@{PROJECT}.iam.gserviceaccount.com"
PUBSUB_AGENT = "serviceAccount:service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"


class Cloud:
    """deploy.sh with fake gcloud and aws commands (tests/deploy/fake_cloud.py) first on its PATH."""

    def __init__(self, folder: Path):
        self.folder = folder
        bin_dir = folder / "bin"
        bin_dir.mkdir(parents=True)
        for tool in ("gcloud", "aws"):
            (bin_dir / tool).write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" {tool} "$@"\n')
            (bin_dir / tool).chmod(0o755)
        self.path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"

    def preset(self, key: str, value) -> None:
        state = self.folder / "state.json"
        data = json.loads(state.read_text()) if state.exists() else {}
        state.write_text(json.dumps(data | {key: value}))

    def deploy(self, **settings: str) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
        log = self.folder / "calls.jsonl"
        log.unlink(missing_ok=True)
        run = bash(f'"{DEPLOY}"', {"PATH": self.path, "FAKE_CLOUD_DIR": str(self.folder), "PROJECT": PROJECT,
                                   "DATA_BUCKET": "my-data", "SERVICE_AGENT_WAIT": "0", "BUILD_GRANT_WAIT": "0"}
                   | settings)
        self.calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        return run, [c["args"] for c in self.calls if c["tool"] == "gcloud"]


def starting(calls: list[list[str]], *words: str) -> list[list[str]]:
    return [c for c in calls if c[:len(words)] == list(words)]


def flags(call: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in call if a.startswith("--"))


def test_the_cli_path_makes_what_terraform_makes_for_fan_out_and_nothing_a_second_time(tmp_path):
    cloud, tf = Cloud(tmp_path), load()
    first, calls = cloud.deploy()
    assert first.returncode == 0, first.stderr[-3000:]
    url = "https://parquet-summary-abc123-uc.a.run.app"  # what the fake says the function's URL is

    (enable,) = starting(calls, "services", "enable")
    assert "firestore.googleapis.com" in enable
    # The runs database, in Native mode.
    (create,) = starting(calls, "firestore", "databases", "create")
    assert flags(create) | {"quiet": ""} == {"database": "(default)", "location": "us-central1",
                                             "type": "firestore-native", "project": PROJECT, "quiet": ""}
    # The partials bucket: private, uniform access, no soft delete, the lifecycle rule Terraform sets.
    bucket = f"gs://{PROJECT}-{NAME}-partials"
    (made,) = starting(calls, "storage", "buckets", "create")
    assert made[3] == bucket
    assert {"uniform-bucket-level-access", "public-access-prevention"} <= set(flags(made))
    assert flags(made)["soft-delete-duration"] == "0" and flags(made)["location"] == "us-central1"
    (update,) = starting(calls, "storage", "buckets", "update")
    (lifecycle,) = [c["files"]["--lifecycle-file"] for c in cloud.calls if "--lifecycle-file" in c["files"]]
    age = tf["variable"]["runs_retention_days"]["default"]
    assert json.loads(lifecycle) == {"rule": [{"action": {"type": "Delete"}, "condition": {"age": age}}]}
    # The TTL policies of Terraform's google_firestore_field.expire_at: in each collection group of a run's
    # records, the field unindexed, then its TTL enabled.
    groups = evaluate(tf["locals"]["ttl"]["collection_groups"], {"var.runs_collection": "summary-runs"})
    ttl_calls = [c for c in calls if c[:3] in (["firestore", "indexes", "fields"], ["firestore", "fields", "ttls"])
                 and c[3] == "update"]
    assert [(c[1], c[4], flags(c)["collection-group"]) for c in ttl_calls] == [
        (step, retention.FIELD, group) for group in groups for step in ("indexes", "fields")]
    for call in ttl_calls:
        assert flags(call)["database"] == "(default)" and flags(call)["project"] == PROJECT
        assert ("disable-indexes" if call[1] == "indexes" else "enable-ttl") in flags(call)
    assert_gcloud_has({tuple(c[:4]): {a.split("=")[0] for a in c if a.startswith("--")} for c in ttl_calls})
    # The function reads the same number of days.
    (env_file,) = [c["files"]["--env-vars-file"] for c in cloud.calls if "--env-vars-file" in c["files"]]
    assert json.loads(dict(line.split(": ", 1) for line in env_file.splitlines())["RUNS_RETENTION_DAYS"]) == str(age)
    assert {"uniform-bucket-level-access", "public-access-prevention"} <= set(flags(update))
    # The worker on the bucket: exactly create and read (as Terraform's worker_partials), and nobody else.
    on_bucket = {(flags(c)["member"], flags(c)["role"]) for c in starting(calls, "storage", "buckets",
                                                                        "add-iam-policy-binding")}
    assert on_bucket == {(WORKER, "roles/storage.objectCreator"), (WORKER, "roles/storage.objectViewer")}
    # Firestore: the same role and IAM condition as Terraform's (modules/plan's firestore_condition).
    project_grants = [flags(c) for c in starting(calls, "projects", "add-iam-policy-binding")]
    (datastore,) = [g for g in project_grants if g["role"] == "roles/datastore.user"]
    assert datastore["member"] == WORKER
    assert datastore["condition"].startswith(
        f'expression=resource.name == "projects/{PROJECT}/databases/(default)",title=runs database only,')
    assert {g["role"] for g in project_grants} == {"roles/cloudbuild.builds.builder", "roles/datastore.user"}
    # Topics, and the push subscriptions to the function whose paths name them.
    created = {c[3] for c in starting(calls, "pubsub", "topics", "create")}
    assert {f"{NAME}-shards", f"{NAME}-shards-dead-letter"} <= created
    subscriptions = {c[3]: flags(c) for c in starting(calls, "pubsub", "subscriptions", "create")}
    shards, dead = subscriptions[f"{NAME}-shards"], subscriptions[f"{NAME}-shards-dead-letter"]
    assert shards["topic"] == f"{NAME}-shards" and dead["topic"] == f"{NAME}-shards-dead-letter"
    assert shards["push-endpoint"] == f"{url}/projects/{PROJECT}/topics/{NAME}-shards"
    assert dead["push-endpoint"] == f"{url}/projects/{PROJECT}/topics/{NAME}-shards-dead-letter"
    jobs = subscriptions[f"{NAME}-jobs"]
    for same in ("push-auth-service-account", "push-auth-token-audience", "ack-deadline", "min-retry-delay",
                 "max-retry-delay", "message-retention-duration", "expiration-period"):
        assert shards[same] == dead[same] == jobs[same], same
    assert shards["dead-letter-topic"] == f"projects/{PROJECT}/topics/{NAME}-shards-dead-letter"
    assert shards["max-delivery-attempts"] == str(tf["variable"]["shard_max_delivery_attempts"]["default"])
    assert "dead-letter-topic" not in dead
    # Pub/Sub's service agent may dead-letter shards; the worker may publish them.
    topic_grants = {(c[3], flags(c)["member"], flags(c)["role"]) for c in starting(calls, "pubsub", "topics",
                                                                                "add-iam-policy-binding")}
    assert (f"{NAME}-shards-dead-letter", PUBSUB_AGENT, "roles/pubsub.publisher") in topic_grants
    assert (f"{NAME}-shards", WORKER, "roles/pubsub.publisher") in topic_grants
    assert {(t, r) for t, m, r in topic_grants if m == WORKER} == {
        (f"{NAME}-results", "roles/pubsub.publisher"), (f"{NAME}-shards", "roles/pubsub.publisher")}
    sub_grants = {(c[3], flags(c)["member"], flags(c)["role"]) for c in starting(calls, "pubsub", "subscriptions",
                                                                              "add-iam-policy-binding")}
    assert (f"{NAME}-shards", PUBSUB_AGENT, "roles/pubsub.subscriber") in sub_grants
    # The function is deployed with the fan-out settings.
    (deployed,) = [c["files"]["--env-vars-file"] for c in cloud.calls if "--env-vars-file" in c["files"]]
    env = {k: json.loads(v) for k, v in (line.split(": ", 1) for line in deployed.splitlines())}
    assert set(env) >= FANOUT_SETTINGS and env["PARTIALS_BUCKET"] == bucket.removeprefix("gs://")
    assert flags(starting(calls, "functions", "deploy")[0])["max-instances"] == str(
        tf["variable"]["max_instances"]["default"])
    # Every flag of the calls fan-out made (some come from arrays the static check above does not see) is one
    # the installed gcloud has.
    fanout_calls = {}
    for call in calls:
        words = tuple(a for a in call if not a.startswith("-"))
        path = words[:2] if words[0] == "projects" else words[:3]
        if path[:2] in (("firestore", "databases"), ("storage", "buckets"), ("pubsub", "subscriptions"),
                        ("projects", "add-iam-policy-binding")):
            fanout_calls.setdefault(path, set()).update(a.split("=")[0] for a in call if a.startswith("--"))
    assert ("pubsub", "subscriptions", "create") in fanout_calls and len(fanout_calls) >= 8
    assert_gcloud_has(fanout_calls)

    second, calls = cloud.deploy()
    assert second.returncode == 0, second.stderr[-3000:]
    assert not [c for c in calls if "create" in c[:4] and c[:2] != ["beta", "services"]]
    assert not starting(calls, "functions", "deploy")
    assert not [c for c in calls if c[:3] == ["firestore", "fields", "ttls"]]
    for kept in ("Firestore database (default): exists", f"bucket {bucket[5:]}: exists",
                 "TTL policy summary-runs.expire_at: exists (ACTIVE)", "TTL policy merges.expire_at: exists (ACTIVE)",
                 f"topic {NAME}-shards: exists", f"subscription {NAME}-shards: unchanged",
                 f"subscription {NAME}-shards-dead-letter: unchanged"):
        assert kept in second.stderr


def test_without_fan_out_the_cli_path_makes_none_of_it(tmp_path):
    cloud = Cloud(tmp_path)
    run, calls = cloud.deploy(FANOUT_ENABLED="no")
    assert run.returncode == 0, run.stderr[-3000:]
    assert not starting(calls, "firestore") and not starting(calls, "storage")
    assert "firestore.googleapis.com" not in starting(calls, "services", "enable")[0]
    assert not [c for c in calls if any("shards" in a for a in c)]
    assert not [c for c in calls if "roles/datastore.user" in " ".join(c)]
    (deployed,) = [c["files"]["--env-vars-file"] for c in cloud.calls if "--env-vars-file" in c["files"]]
    assert not [line for line in deployed.splitlines() if line.split(":")[0] in FANOUT_SETTINGS]


def test_an_existing_runs_database_is_used_and_one_in_datastore_mode_is_refused(tmp_path):
    cloud = Cloud(tmp_path)
    cloud.preset("database (default)", "FIRESTORE_NATIVE")
    run, calls = cloud.deploy()
    assert run.returncode == 0, run.stderr[-3000:]
    assert not starting(calls, "firestore", "databases", "create")
    assert "Firestore database (default): exists" in run.stderr

    cloud = Cloud(tmp_path / "datastore")
    cloud.preset("database (default)", "DATASTORE_MODE")
    run, calls = cloud.deploy()
    assert run.returncode == 1 and "Firestore database (default) is in DATASTORE_MODE mode" in run.stderr
    assert not starting(calls, "firestore", "databases", "create") and not starting(calls, "functions", "deploy")

    cloud = Cloud(tmp_path / "absent")
    run, calls = cloud.deploy(CREATE_FIRESTORE_DATABASE="no", FIRESTORE_DATABASE="summary-runs")
    assert run.returncode == 1 and "Firestore database summary-runs does not exist" in run.stderr
    assert not starting(calls, "firestore", "databases", "create")
