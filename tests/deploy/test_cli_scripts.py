"""deploy/cli without a cloud: the function settings deploy.sh writes are what worker/config.py reads,
the same as Terraform's, and a missing prerequisite stops it with a clear message before any change."""

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from worker.config import Settings

from .terraform import evaluate, load

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
    def help_of(path: tuple[str, ...]) -> subprocess.CompletedProcess:
        return subprocess.run(["gcloud", *path, "--help"], capture_output=True, text=True, timeout=120,
                              env=os.environ | {"PAGER": "cat", "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"})

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
