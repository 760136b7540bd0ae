"""deploy/terraform checked by the terraform binary itself (offline): formatting, the pure computations of
modules/plan (source files, scheduled job, names, default prefix) evaluated with `terraform console`,
`terraform validate` of everything the installed providers cover, and the AWS role's policies as the AWS
provider renders them in a plan. Skipped, saying so, where the binary is not installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from worker.config import Settings
from worker.jobs import load_schema
from worker.policies import permissions_policy, trust_policy

from .terraform import FANOUT_SETTINGS

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "deploy" / "terraform"
DEPLOY_SH = REPO / "deploy" / "cli" / "deploy.sh"
# The AWS provider in a filesystem mirror (../shared/FACTS.md); the google provider is not available offline.
PLUGIN_DIR = Path(os.environ.get("TF_PLUGIN_DIR", "/opt/tf-plugins"))
UNIQUE_ID = "104729000000000000123"

PLAN_WRAPPER = """
variable "project" { type = string }
variable "name" { type = string }
variable "data_bucket" { type = string }
variable "data_prefixes" { type = list(string) }
variable "schedule" {
  type    = string
  default = "0 3 * * *"
}
variable "scheduled_job" {
  type    = any
  default = null
}
variable "fanout_enabled" {
  type    = bool
  default = true
}
variable "firestore_database" {
  type    = string
  default = "(default)"
}
variable "runs_collection" {
  type    = string
  default = "summary-runs"
}
variable "max_instances" {
  type    = number
  default = 10
}
variable "concurrency" {
  type    = number
  default = 8
}
variable "fanout_max_in_flight" {
  type    = number
  default = null
}
variable "runs_retention_days" {
  type    = number
  default = 30
}
module "plan" {
  source        = "MODULES/plan"
  project       = var.project
  name          = var.name
  data_bucket   = var.data_bucket
  data_prefixes = var.data_prefixes
  schedule      = var.schedule
  scheduled_job = var.scheduled_job
  source_dir    = "REPO"

  fanout_enabled       = var.fanout_enabled
  firestore_database   = var.firestore_database
  runs_collection      = var.runs_collection
  max_instances        = var.max_instances
  concurrency          = var.concurrency
  fanout_max_in_flight = var.fanout_max_in_flight
  runs_retention_days  = var.runs_retention_days
}
"""

# The AWS half with the provider configured to need no account: data sources render, nothing is called.
AWS_WRAPPER = """
provider "aws" {
  region                      = "us-east-1"
  access_key                  = "offline"
  secret_key                  = "offline"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
}
module "aws_role" {
  for_each                  = { some = ["events/", "exports/daily/"], all = [""] }
  source                    = "MODULES/aws_role"
  role_name                 = "parquet-summary"
  service_account_email     = "parquet-summary@my-project.iam.gserviceaccount.com"
  service_account_unique_id = "UNIQUE_ID"
  audience                  = "//iam.amazonaws.com/parquet-summary"
  data_bucket               = "my-data"
  prefixes                  = each.value
}
output "policies" { value = { for k, m in module.aws_role : k => [m.trust_policy, m.permissions_policy] } }
"""


class Terraform:
    def __init__(self, binary: str, home: Path):
        config = home / "terraformrc"
        config.write_text("")  # no registry, no credentials: the plugin dir or nothing
        self.binary = binary
        self.env = os.environ | {"TF_CLI_CONFIG_FILE": str(config), "CHECKPOINT_DISABLE": "1",
                                 "TF_IN_AUTOMATION": "1", "TF_INPUT": "0"}

    def __call__(self, *args: str, cwd: Path, stdin: str | None = None, check: bool = True,
                 timeout: int = 120) -> subprocess.CompletedProcess:
        run = subprocess.run([self.binary, *args], cwd=cwd, env=self.env, input=stdin, capture_output=True,
                             text=True, timeout=timeout)
        if check and run.returncode != 0:
            pytest.fail(f"terraform {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        return run


@pytest.fixture(scope="session")
def terraform(tmp_path_factory) -> Terraform:
    binary = shutil.which("terraform")
    if binary is None:
        pytest.skip("the terraform binary is not on PATH: install Terraform >= 1.5 to check deploy/terraform "
                    "(fmt, validate, modules/plan evaluated by Terraform)")
    return Terraform(binary, tmp_path_factory.mktemp("terraform-home"))


def _wrapper(tmp_path_factory, name: str, text: str) -> Path:
    folder = tmp_path_factory.mktemp(name)
    text = text.replace("MODULES", str(TERRAFORM_DIR / "modules")).replace("REPO", str(REPO))
    (folder / "main.tf").write_text(text.replace("UNIQUE_ID", UNIQUE_ID))
    return folder


@pytest.fixture(scope="session")
def plan_module(terraform, tmp_path_factory) -> Path:
    """A provider-less wrapper around modules/plan, initialised once."""
    folder = _wrapper(tmp_path_factory, "plan", PLAN_WRAPPER)
    terraform("init", "-backend=false", cwd=folder)
    return folder


@pytest.fixture(scope="session")
def aws_module(terraform, tmp_path_factory) -> Path:
    """A wrapper around modules/aws_role, initialised once from the local provider mirror."""
    if not (PLUGIN_DIR / "registry.terraform.io" / "hashicorp" / "aws").is_dir():
        pytest.skip(f"the AWS provider is not in {PLUGIN_DIR} (set TF_PLUGIN_DIR): cannot validate modules/aws_role")
    folder = _wrapper(tmp_path_factory, "aws", AWS_WRAPPER)
    terraform("init", "-backend=false", f"-plugin-dir={PLUGIN_DIR}", cwd=folder)
    return folder


def evaluate(terraform, folder: Path, expression: str | None, check: bool = True, **variables) -> object:
    """``expression`` evaluated by ``terraform console`` in ``folder``, with ``variables`` (JSON values;
    None is null); with no expression, ``terraform plan`` instead (it also checks the preconditions)."""
    defaults = {"project": "my-project", "name": "parquet-summary", "data_bucket": "my-data", "data_prefixes": []}
    with tempfile.NamedTemporaryFile("w", suffix=".tfvars.json", dir=folder, delete=False) as f:
        json.dump(defaults | variables, f)
    try:
        if expression is None:
            return terraform("plan", "-lock=false", f"-state={f.name}.tfstate", f"-var-file={f.name}", cwd=folder,
                             check=check)
        run = terraform("console", f"-var-file={f.name}", cwd=folder, stdin=f"jsonencode({expression})\n",
                        check=check)
    finally:
        os.unlink(f.name)
    if not check:
        return run
    return json.loads(json.loads(run.stdout))


def plan_of(terraform, plan_module, **variables) -> dict:
    return evaluate(terraform, plan_module, "module.plan", **variables)


def test_the_configuration_is_formatted(terraform):
    run = terraform("fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR), cwd=REPO, check=False)
    assert run.returncode == 0, f"run terraform fmt -recursive deploy/terraform:\n{run.stdout}"


def test_the_modules_the_installed_providers_cover_validate(terraform, plan_module, aws_module):
    for folder in (plan_module, aws_module):  # each wrapper validates the module it calls
        run = terraform("validate", "-json", cwd=folder)
        assert json.loads(run.stdout)["valid"] is True


def test_the_source_terraform_zips_is_what_gcloud_uploads(terraform, plan_module):
    files = plan_of(terraform, plan_module)["source_files"]
    listed = subprocess.run(["gcloud", "meta", "list-files-for-upload", str(REPO)], capture_output=True, text=True,
                            check=True, timeout=120).stdout.split()
    assert sorted(listed) == files
    assert {"main.py", "requirements.txt", "schemas/job.schema.json", "worker/service.py"} <= set(files)
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")
                or p.startswith(("worker/devstack/", "worker/tools/"))]


def test_a_scheduled_job_with_list_and_map_fields_is_published_as_given(terraform, plan_module):
    job = {"bucket": "my-data", "prefix_template": "events/dt={date-1d:%Y-%m-%d}/", "columns": ["a", "b"],
           "reply_attributes": {"stage": "2"}, "mode": "metadata"}
    as_object = plan_of(terraform, plan_module, scheduled_job=job)["scheduled_job_json"]
    as_string = plan_of(terraform, plan_module, scheduled_job=json.dumps(job))["scheduled_job_json"]
    assert json.loads(as_object) == json.loads(as_string) == job
    Draft202012Validator(load_schema("job")).validate(json.loads(as_object))


def test_no_schedule_means_no_scheduled_job_and_a_bad_one_is_refused(terraform, plan_module):
    assert plan_of(terraform, plan_module, schedule=None)["scheduled_job_json"] is None
    evaluate(terraform, plan_module, None, scheduled_job={"bucket": "b", "columns": ["a"]})  # plans
    refused = evaluate(terraform, plan_module, None, check=False, scheduled_job=["not", "a job"])
    assert refused.returncode != 0 and "scheduled_job must be a job object" in refused.stderr


@pytest.mark.parametrize("prefixes", [[], ["events/"], ["z/", "events/", "a/"], ["b/", "B/", "a-b/", "a/"],
                                      ["exports/daily/", "events/", "exports/daily/"]])
def test_terraform_and_deploy_sh_schedule_the_same_default_job(terraform, plan_module, prefixes):
    plan = plan_of(terraform, plan_module, data_prefixes=prefixes)
    job = json.loads(plan["scheduled_job_json"])
    run = subprocess.run(["bash", "-c", f'source "{DEPLOY_SH}" && settings && scheduled_job'],
                         env={"PATH": os.environ["PATH"], "PROJECT": "my-project", "DATA_BUCKET": "my-data",
                              "DATA_PREFIXES": " ".join(prefixes)}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == job == {"bucket": "my-data", "prefix": plan["default_prefix"]}
    assert plan["default_prefix"] == (sorted(prefixes)[0] if prefixes else "")
    Draft202012Validator(load_schema("job")).validate(job)


@pytest.mark.parametrize(("project", "name"), [
    ("my-project", "parquet-summary"),
    ("a-project-id-of-thirty-chars-x", "a-name-of-thirty-characters-xy"),  # the longest: 68 without a cut
    ("proj-with-hyphen-at-cut-point-", "b" * 30),
])
def test_every_name_is_within_its_limit(terraform, plan_module, project, name):
    names = plan_of(terraform, plan_module, project=project, name=name)["names"]
    for suffix in ("source", "partials"):
        bucket = names[f"{suffix}_bucket"]
        assert 3 <= len(bucket) <= 63 and bucket[0].isalnum() and bucket[-1].isalnum(), bucket
        if len(f"{project}-{name}-{suffix}") <= 63:
            assert bucket == f"{project}-{name}-{suffix}"
    assert names["source_bucket"] != names["partials_bucket"]
    for account in ("worker_account", "push_account", "build_account"):
        assert 6 <= len(names[account]) <= 30, names[account]
    assert len(names["http_function"]) <= 49
    assert len({names["worker_account"], names["push_account"], names["build_account"]}) == 3


def _sets(policy: dict) -> dict:
    """A policy with its lists as sorted lists: the provider may order a statement's values otherwise."""
    def walk(value):
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return sorted((walk(v) if isinstance(v, dict) else v for v in value), key=json.dumps)
        return [value]
    return walk(policy)


def test_the_aws_provider_renders_the_policies_the_worker_prints(terraform, aws_module, tmp_path):
    plan = tmp_path / "plan"
    terraform("plan", "-lock=false", f"-out={plan}", f"-state={tmp_path / 'state'}", cwd=aws_module)
    shown = json.loads(terraform("show", "-json", str(plan), cwd=aws_module).stdout)
    policies = shown["planned_values"]["outputs"]["policies"]["value"]
    audience = "//iam.amazonaws.com/parquet-summary"
    for key, prefixes in (("some", ["events/", "exports/daily/"]), ("all", [""])):
        trust, permissions = (json.loads(p) for p in policies[key])
        assert _sets(trust) == _sets(trust_policy(UNIQUE_ID, audience))
        assert _sets(permissions) == _sets(permissions_policy("my-data", prefixes))


# -- fan-out -------------------------------------------------------------------------------------------------


def test_the_fan_out_settings_terraform_computes_are_read_by_the_worker(terraform, plan_module):
    plan = plan_of(terraform, plan_module, max_instances=40)
    env = plan["fanout_environment"]
    assert set(env) == FANOUT_SETTINGS
    base = {"AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/parquet-summary",
            "ID_TOKEN_AUDIENCE": "//iam.amazonaws.com/x", "GOOGLE_CLOUD_PROJECT": "my-project"}
    settings = Settings.from_env(base | env)
    assert settings.fanout_enabled
    assert settings.partials_bucket == plan["names"]["partials_bucket"]
    # Full topic names ending with the topic IDs, as the push endpoints' paths (projects/P/topics/T).
    assert settings.shard_topic == f"projects/my-project/topics/{plan['names']['shard_topic']}"
    assert settings.shard_dead_letter_topic == f"projects/my-project/topics/{plan['names']['shard_dead_letter_topic']}"
    assert (settings.firestore_database, settings.runs_collection) == ("(default)", "summary-runs")
    assert settings.fanout_max_in_flight == 320  # max_instances x concurrency (8) unless given
    assert settings.runs_retention_days == 30 == plan["partials_lifecycle"]["rule"][0]["condition"]["age"]
    kept = plan_of(terraform, plan_module, runs_retention_days=90)
    assert kept["fanout_environment"]["RUNS_RETENTION_DAYS"] == "90"
    assert kept["partials_lifecycle"]["rule"][0]["condition"]["age"] == 90
    assert Settings.from_env(base | kept["fanout_environment"]).runs_retention_days == 90
    # The TTL policies: expire_at in the runs collection and in its documents' subcollections.
    assert plan["ttl"] == {"field": "expire_at", "collection_groups": ["summary-runs", "shards", "merges"]}
    assert plan_of(terraform, plan_module, runs_collection="runs")["ttl"]["collection_groups"][0] == "runs"
    given = plan_of(terraform, plan_module, fanout_max_in_flight=25)["fanout_environment"]
    assert given["FANOUT_MAX_IN_FLIGHT"] == "25"
    # The worker's Firestore grant is conditioned on this database only.
    named = plan_of(terraform, plan_module, firestore_database="summary-runs")
    assert named["firestore_condition"] == 'resource.name == "projects/my-project/databases/summary-runs"'
    assert plan["firestore_condition"] == 'resource.name == "projects/my-project/databases/(default)"'
    assert plan["partials_lifecycle"] == {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 30}}]}
    # Off: no fan-out setting at all, so the worker runs every job on one instance.
    off = plan_of(terraform, plan_module, fanout_enabled=False)["fanout_environment"]
    assert off == {} and not Settings.from_env(base | off).fanout_enabled


@pytest.mark.parametrize(("project", "name", "extra"), [
    ("my-project", "parquet-summary", {}),
    ("a-project-id-of-thirty-chars-x", "a-name-of-thirty-characters-xy", {}),
    ("proj-with-hyphen-at-cut-point-", "b" * 30, {"firestore_database": "summary-runs", "runs_collection": "runs",
                                                  "fanout_max_in_flight": 7, "runs_retention_days": 3}),
])
def test_terraform_and_deploy_sh_set_up_the_same_fan_out(terraform, plan_module, project, name, extra):
    plan = plan_of(terraform, plan_module, project=project, name=name, **extra)
    cli = {setting.upper(): str(value) for setting, value in extra.items()}  # the same settings, as deploy.sh's
    steps = ('settings && function_env arn && echo "---" && firestore_condition && echo && partials_lifecycle && '
             'echo "$PARTIALS_BUCKET_NAME" && echo "$TTL_FIELD" "${TTL_COLLECTION_GROUPS[*]}"')
    run = subprocess.run(["bash", "-c", f'source "{DEPLOY_SH}" && {steps}'],
                         env={"PATH": os.environ["PATH"], "PROJECT": project, "NAME": name, "DATA_BUCKET": "my-data"}
                         | cli, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    env_text, rest = run.stdout.split("---\n")
    env = {k: json.loads(v) for k, v in (line.split(": ", 1) for line in env_text.splitlines())}
    condition, lifecycle, bucket, ttl = rest.splitlines()
    assert {k: env[k] for k in FANOUT_SETTINGS} == plan["fanout_environment"]
    assert condition == plan["firestore_condition"]
    assert json.loads(lifecycle) == plan["partials_lifecycle"]
    assert bucket == plan["names"]["partials_bucket"]
    field, *groups = ttl.split(" ")
    assert {"field": field, "collection_groups": groups} == plan["ttl"]


# The root module's variables, with their validations, evaluated alone: the google provider is not
# available offline, but variables need none.
@pytest.fixture(scope="session")
def root_variables(terraform, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("variables")
    shutil.copy(TERRAFORM_DIR / "variables.tf", folder / "variables.tf")
    terraform("init", "-backend=false", cwd=folder)
    return folder


@pytest.mark.parametrize(("variable", "value", "accepted"), [
    ("firestore_database", "(default)", True), ("firestore_database", "summary-runs", True),
    ("firestore_database", "Runs", False), ("firestore_database", "abc", False),
    ("firestore_database", "runs-", False),
    ("runs_collection", "summary-runs", True), ("runs_collection", "a/b", False), ("runs_collection", "__x__", False),
    ("runs_collection", "x" * 1501, False),
    ("runs_retention_days", 1, True), ("runs_retention_days", 3650, True), ("runs_retention_days", 0, False),
    ("runs_retention_days", 3651, False), ("runs_retention_days", 1.5, False),
    ("partials_retention_days", None, True), ("partials_retention_days", 7, False),
    ("shard_max_delivery_attempts", 5, True), ("shard_max_delivery_attempts", 4, False),
    ("shard_max_delivery_attempts", 101, False),
    ("fanout_max_in_flight", None, True), ("fanout_max_in_flight", 1000, True), ("fanout_max_in_flight", 0, False),
    ("max_instances", 100, True), ("max_instances", 0, False),
])
def test_the_fan_out_variables_refuse_what_the_services_would(terraform, root_variables, variable, value, accepted):
    run = evaluate(terraform, root_variables, None, check=False, **{variable: value})
    assert (run.returncode == 0) is accepted, run.stderr[-2000:]
