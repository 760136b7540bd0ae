"""deploy/terraform, checked offline: parsed with python-hcl2, its invariants asserted, its policies
rendered and compared with worker/policies.py, its function settings read by worker/config.py. What the
terraform binary itself checks is in test_terraform_binary.py."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from worker import retention
from worker.config import Settings
from worker.policies import permissions_policy, trust_policy

from .terraform import FANOUT_RESOURCES, FANOUT_SETTINGS, TERRAFORM, evaluate, load, policy_json, simplified

REPO = Path(__file__).resolve().parents[2]
UNIQUE_ID = "104729000000000000123"


@pytest.fixture(scope="module")
def tf():
    return load()


def resources(tf, type_: str) -> dict:
    return tf["resource"].get(type_, {})


def test_the_trust_policy_is_the_one_the_worker_prints(tf):
    scope = {"var.service_account_unique_id": UNIQUE_ID, "var.audience": "//iam.amazonaws.com/w"}
    rendered = policy_json(tf["data"]["aws_iam_policy_document"]["trust"], scope)
    assert rendered == simplified(trust_policy(UNIQUE_ID, "//iam.amazonaws.com/w"))
    # ... built from the service account resource's unique ID and the audience variable
    assert tf["locals"]["audience"].startswith("${coalesce(var.id_token_audience,")
    assert resources(tf, "aws_iam_role")["worker"]["assume_role_policy"] == "${data.aws_iam_policy_document.trust.json}"
    (role,) = tf["module"]["aws_role"]
    assert role["service_account_unique_id"] == "${google_service_account.worker.unique_id}"
    assert role["audience"] == "${local.audience}" and role["prefixes"] == "${module.plan.prefixes}"


@pytest.mark.parametrize("prefixes", [["events/", "exports/daily/"], [""], ["only/"]])
def test_the_s3_policy_is_limited_to_the_bucket_and_prefixes(tf, prefixes):
    scope = {"var.data_bucket": "my-data", "var.prefixes": prefixes}
    rendered = policy_json(tf["data"]["aws_iam_policy_document"]["read_parquet"], scope)
    assert rendered == simplified(permissions_policy("my-data", prefixes))
    assert tf["locals"]["prefixes"] == '${length(var.data_prefixes) > 0 ? sort(distinct(var.data_prefixes)) : [""]}'
    (policy,) = resources(tf, "aws_iam_role_policy").values()
    assert policy["policy"] == "${data.aws_iam_policy_document.read_parquet.json}"
    assert [s["Action"] for s in rendered["Statement"]] == ["s3:ListBucket", "s3:GetObject"]


def test_no_aws_user_key_or_google_key_anywhere(tf):
    forbidden = {"aws_iam_user", "aws_iam_access_key", "aws_iam_user_policy", "aws_iam_user_policy_attachment",
                 "aws_iam_user_login_profile", "google_service_account_key"}
    assert not forbidden & set(tf["resource"])
    text = "\n".join(p.read_text() for p in TERRAFORM.rglob("*.tf") if ".terraform" not in p.parts)
    assert not re.search(r"AKIA[0-9A-Z]{16}|secret_key|access_key|private_key", text)
    # Two project-level grants only: Cloud Build's own role to the account that builds the function, and
    # Firestore read/write to the worker, narrowed by an IAM condition to the runs database.
    project_grants = {(t, n): r for t in tf["resource"] if t.startswith("google_project_iam")
                      for n, r in resources(tf, t).items()}
    assert project_grants == {
        ("google_project_iam_member", "build_account_builds"): {
            "project": "${var.project}", "role": "roles/cloudbuild.builds.builder",
            "member": "serviceAccount:${local.build_account}", "depends_on": ["${google_project_service.apis}"]},
        ("google_project_iam_member", "worker_uses_runs_database"): {
            "count": "${var.fanout_enabled ? 1 : 0}", "project": "${var.project}", "role": "roles/datastore.user",
            "member": "${google_service_account.worker.member}",
            "condition": [{"title": "runs database only",
                           "description": "Firestore read/write on ${module.plan.firestore_database_name} only",
                           "expression": "${module.plan.firestore_condition}"}],
            "depends_on": ["${google_project_service.apis}"]},
    }


def test_jobs_are_delivered_with_retries_and_a_dead_letter_topic(tf):
    subs = resources(tf, "google_pubsub_subscription")
    jobs = subs["jobs"]
    assert jobs["topic"] == "${google_pubsub_topic.jobs.id}"
    (push,) = jobs["push_config"]
    assert push["push_endpoint"] == "${local.worker_url}/${google_pubsub_topic.jobs.id}"
    assert tf["locals"]["worker_url"] == "${google_cloudfunctions2_function.worker.service_config[0].uri}"
    assert push["oidc_token"] == [{"service_account_email": "${google_service_account.push.email}",
                                   "audience": "${local.worker_url}"}]
    assert jobs["retry_policy"] == [{"minimum_backoff": "${var.minimum_backoff}",
                                     "maximum_backoff": "${var.maximum_backoff}"}]
    assert jobs["dead_letter_policy"] == [{"dead_letter_topic": "${google_pubsub_topic.dead_letter.id}",
                                           "max_delivery_attempts": "${var.max_delivery_attempts}"}]
    attempts = tf["variable"]["max_delivery_attempts"]
    assert 5 <= attempts["default"] <= 100 and "<= 100" in attempts["validation"][0]["condition"]
    # The acknowledgement waits for the longest run; nothing sent to a topic is dropped unread.
    assert jobs["ack_deadline_seconds"] == 600
    assert subs["dead_letter"]["topic"] == "${google_pubsub_topic.dead_letter.id}"
    assert subs["results"]["topic"] == "${google_pubsub_topic.results.id}"
    # Pub/Sub's service agent may move messages to the dead-letter topic and ack them here.
    grants = {(r["role"], r.get("topic", r.get("subscription")), r["member"])
              for t in ("google_pubsub_topic_iam_member", "google_pubsub_subscription_iam_member")
              for r in resources(tf, t).values()}
    assert ("roles/pubsub.publisher", "${google_pubsub_topic.dead_letter.name}", "${local.pubsub_agent}") in grants
    assert ("roles/pubsub.subscriber", "${google_pubsub_subscription.jobs.name}", "${local.pubsub_agent}") in grants
    # ... once the agent exists: created (generateServiceIdentity) and given time to reach IAM.
    assert tf["locals"]["pubsub_agent"] == 'serviceAccount:${time_sleep.service_agents.triggers["pubsub"]}'
    assert resources(tf, "time_sleep")["service_agents"]["triggers"]["pubsub"] == \
        "${google_project_service_identity.pubsub.email}"


def test_the_function_is_the_pubsub_entry_point_within_540_seconds_and_internal(tf):
    fn = resources(tf, "google_cloudfunctions2_function")["worker"]
    (build,), (service,) = fn["build_config"], fn["service_config"]
    assert build["entry_point"] == "handle_pubsub"
    main = ast.parse((REPO / "main.py").read_text())
    decorated = {f.name: [ast.unparse(d) for d in f.decorator_list]
                 for f in main.body if isinstance(f, ast.FunctionDef)}
    assert decorated["handle_pubsub"] == ["functions_framework.cloud_event"]
    assert "event_trigger" not in fn, "the push subscription delivers; Eventarc would own its own subscription"
    assert service["timeout_seconds"] == "${var.timeout_seconds}"
    timeout = tf["variable"]["timeout_seconds"]
    assert timeout["default"] <= 540 and "var.timeout_seconds <= 540" in timeout["validation"][0]["condition"]
    assert service["ingress_settings"] == "ALLOW_INTERNAL_ONLY"
    assert service["service_account_email"] == "${google_service_account.worker.email}"
    assert service["max_instance_count"] == "${var.max_instances}"
    assert service["max_instance_request_concurrency"] == "${var.concurrency}"
    # Cloud Build builds it as a named account, given by its full name (not its email).
    assert build["service_account"] == "projects/${var.project}/serviceAccounts/${local.build_account}"


def test_the_function_settings_are_what_the_worker_reads(tf):
    for function in resources(tf, "google_cloudfunctions2_function").values():
        # The fan-out settings are computed (and evaluated by test_terraform_binary.py) in modules/plan.
        assert function["service_config"][0]["environment_variables"] == \
            "${merge(local.environment, module.plan.fanout_environment)}"
    scope = {"module.aws_role.role_arn": "arn:aws:iam::123456789012:role/parquet-summary",
             "local.audience": "//iam.amazonaws.com/parquet-summary",
             "google_pubsub_topic.results.id": "projects/my-project/topics/parquet-summary-results",
             "var.project": "my-project", "var.aws_region": "eu-west-1", "var.data_bucket": "my-data",
             "tostring(var.timeout_seconds - 60)": str(tf["variable"]["timeout_seconds"]["default"] - 60),
             "var.schedule_time_zone": "Etc/UTC",
             'join(",", var.allowed_reply_topics)': "projects/my-project/topics/stage-2",
             "tostring(var.concurrency)": "8"}
    env = {k: evaluate(v, scope) for k, v in tf["locals"]["environment"].items()}
    settings = Settings.from_env(env)  # raises ConfigError on any bad value
    assert settings.role_arn == scope["module.aws_role.role_arn"]
    assert settings.reply_topic == scope["google_pubsub_topic.results.id"]
    assert settings.region == "eu-west-1" and settings.allowed_buckets == {"my-data"}
    assert settings.job_deadline_seconds == 480 < tf["variable"]["timeout_seconds"]["default"]
    config = (REPO / "worker" / "config.py").read_text()
    # THREADS is functions-framework's (gunicorn threads), not the worker's.
    for name in (set(env) - {"THREADS"}) | FANOUT_SETTINGS:
        assert re.search(rf'^{name} = "{name}"$', config, re.M), f"worker/config.py does not read {name}"
    assert not set(env) & FANOUT_SETTINGS, "the fan-out settings come from modules/plan, present only with fan-out"


def test_the_worker_account_has_only_its_own_grants(tf):
    worker_grants = {(t, n): r for t in tf["resource"] if t.endswith(("_iam_member", "_iam_binding", "_iam_policy"))
                     for n, r in resources(tf, t).items() if "google_service_account.worker" in json.dumps(r)}
    member = "${google_service_account.worker.member}"
    assert worker_grants == {
        ("google_pubsub_topic_iam_member", "worker_publishes_results"): {
            "project": "${var.project}", "topic": "${google_pubsub_topic.results.name}",
            "role": "roles/pubsub.publisher", "member": member},
        ("google_pubsub_topic_iam_member", "worker_publishes_allowed_replies"): {
            "for_each": "${toset(var.allowed_reply_topics)}", "topic": "${each.value}",
            "role": "roles/pubsub.publisher", "member": member},
        # Fan-out: publish shards; create and read partials (no delete, so no overwrite); Firestore in the
        # runs database only (test_no_aws_user_key_or_google_key_anywhere checks the condition).
        ("google_pubsub_topic_iam_member", "worker_publishes_shards"): {
            "count": "${var.fanout_enabled ? 1 : 0}", "project": "${var.project}",
            "topic": "${google_pubsub_topic.shards[0].name}", "role": "roles/pubsub.publisher", "member": member},
        ("google_storage_bucket_iam_member", "worker_partials"): {
            "for_each": '${var.fanout_enabled ? toset(["roles/storage.objectCreator", "roles/storage.objectViewer"])'
                        ' : toset([])}',
            "bucket": "${google_storage_bucket.partials[0].name}", "role": "${each.value}", "member": member},
        ("google_project_iam_member", "worker_uses_runs_database"):
            resources(tf, "google_project_iam_member")["worker_uses_runs_database"],
    }
    # ... no other grant on the partials bucket, to anyone ...
    on_partials = [r for t in tf["resource"] if t.startswith("google_storage_bucket_iam")
                   for r in resources(tf, t).values() if "google_storage_bucket.partials" in json.dumps(r)]
    assert on_partials == [worker_grants[("google_storage_bucket_iam_member", "worker_partials")]]
    # ... and the reply topics are those a job may name as its reply_topic.
    assert tf["locals"]["environment"]["ALLOWED_REPLY_TOPICS"] == '${join(",", var.allowed_reply_topics)}'


def test_the_scheduler_publishes_the_plan_modules_job_to_the_jobs_topic(tf):
    scheduler = resources(tf, "google_cloud_scheduler_job")["jobs"]
    (target,) = scheduler["pubsub_target"]
    assert target["topic_name"] == "${google_pubsub_topic.jobs.id}"
    # The job itself (default or given) is computed in modules/plan: test_terraform_binary.py evaluates it.
    assert target["data"] == "${base64encode(module.plan.scheduled_job_json)}"
    assert tf["variable"]["schedule"]["default"].count(" ") == 4  # a five-field cron
    # The schedule that produced a result is one of its pass-through attributes.
    assert target["attributes"] == {"schedule": "${local.names.scheduler_job}"}
    # Template dates are taken in the cron's own zone.
    assert tf["locals"]["environment"]["TEMPLATE_TIME_ZONE"] == "${var.schedule_time_zone}"
    # No schedule: no scheduler job, no grant to it; no scheduler agent unless the sweep needs it.
    no_schedule = "${var.schedule == null ? 0 : 1}"
    assert scheduler["count"] == no_schedule
    assert resources(tf, "google_pubsub_topic_iam_member")["scheduler_publishes_jobs"]["count"] == no_schedule
    assert resources(tf, "google_project_service_identity")["scheduler"]["count"] == \
        "${var.schedule == null && !local.sweeping ? 0 : 1}"


def test_the_sweep_publishes_kind_sweep_to_the_shard_topic_on_a_schedule(tf):
    """Every run ends: the sweep runs even when no message does (docs/fan-out.md: Every run ends)."""
    sweep = resources(tf, "google_cloud_scheduler_job")["sweep"]
    assert sweep["count"] == "${local.sweeping ? 1 : 0}"
    assert tf["locals"]["sweeping"] == "${var.fanout_enabled && var.sweep_schedule != null}"
    (target,) = sweep["pubsub_target"]
    assert target["topic_name"] == "${google_pubsub_topic.shards[0].id}"
    assert target["attributes"] == {"kind": "sweep"}
    assert sweep["schedule"] == "${var.sweep_schedule}" and tf["variable"]["sweep_schedule"]["default"] == "*/5 * * * *"
    grant = resources(tf, "google_pubsub_topic_iam_member")["scheduler_publishes_sweeps"]
    assert (grant["topic"], grant["role"], grant["member"], grant["count"]) == (
        "${google_pubsub_topic.shards[0].name}", "roles/pubsub.publisher", "${local.scheduler_agent}",
        "${local.sweeping ? 1 : 0}")


def test_a_customer_managed_key_is_usable_by_pubsub_before_the_topics_exist(tf):
    (grant,) = [resources(tf, "google_kms_crypto_key_iam_member")["pubsub_uses_key"]]
    assert grant["count"] == "${var.kms_key_name == null ? 0 : 1}"
    assert (grant["crypto_key_id"], grant["role"], grant["member"]) == (
        "${var.kms_key_name}", "roles/cloudkms.cryptoKeyEncrypterDecrypter", "${local.pubsub_agent}")
    for topic in resources(tf, "google_pubsub_topic").values():
        assert topic["kms_key_name"] == "${var.kms_key_name}"
        assert "${time_sleep.key_grant}" in topic["depends_on"]  # the grant, and time for it to take effect
    wait = resources(tf, "time_sleep")["key_grant"]
    assert wait["count"] == grant["count"]
    assert wait["depends_on"] == ["${google_kms_crypto_key_iam_member.pubsub_uses_key}"]


def test_the_functions_build_only_once_the_build_accounts_grants_have_taken_effect(tf):
    wait = resources(tf, "time_sleep")["build_grants"]
    assert set(wait["depends_on"]) == {"${google_project_iam_member.build_account_builds}",
                                       "${google_storage_bucket_iam_member.build_account_reads_source}"}
    for function in resources(tf, "google_cloudfunctions2_function").values():
        assert "${time_sleep.build_grants}" in function["depends_on"]


def test_the_http_entry_point_is_optional_and_never_public(tf):
    http = resources(tf, "google_cloudfunctions2_function")["http"]
    assert http["count"] == "${var.http_function ? 1 : 0}" and tf["variable"]["http_function"]["default"] is False
    assert http["build_config"][0]["entry_point"] == "handle_http"
    assert "length(var.http_invokers) > 0" in http["lifecycle"][0]["precondition"][0]["condition"]
    invokers = resources(tf, "google_cloud_run_v2_service_iam_member")["http_invokers"]
    assert (invokers["role"], invokers["member"]) == ("roles/run.invoker", "${each.value}")
    assert invokers["for_each"] == "${var.http_function ? toset(var.http_invokers) : toset([])}"
    # Only named principals: the validation refuses allUsers and allAuthenticatedUsers.
    condition = tf["variable"]["http_invokers"]["validation"][0]["condition"]
    pattern = re.search(r'regex\("(.+?)", m\)', condition).group(1).replace("\\\\", "\\")
    assert not re.match(pattern, "allUsers") and not re.match(pattern, "allAuthenticatedUsers")
    assert re.match(pattern, "group:team@example.com")
    text = "\n".join(p.read_text() for p in TERRAFORM.rglob("*.tf"))
    assert '"allUsers"' not in text and '"allAuthenticatedUsers"' not in text


def test_outputs_give_the_role_topics_and_a_first_job_command(tf):
    assert {"role_arn", "jobs_topic", "results_topic", "first_job_command"} <= set(tf["output"])
    assert tf["output"]["role_arn"]["value"] == "${module.aws_role.role_arn}"
    assert "gcloud pubsub topics publish" in tf["output"]["first_job_command"]["value"]


def test_the_function_zips_the_files_modules_plan_lists(tf):
    # The list itself is computed by Terraform and compared with gcloud's in test_terraform_binary.py.
    (archive,) = [tf["data"]["archive_file"]["source"]]
    assert archive["dynamic"][0]["source"]["for_each"] == "${module.plan.source_files}"
    assert tf["module"]["plan"][0]["source_dir"] == "${local.repo}"


# -- fan-out ------------------------------------------------------------------------------------------------


def test_every_fan_out_resource_is_left_out_with_fanout_enabled_false(tf):
    for type_, name in FANOUT_RESOURCES:
        body = resources(tf, type_)[name]
        guard = body.get("count", body.get("for_each", ""))
        assert guard.startswith("${var.fanout_enabled"), f"{type_}.{name} exists without fan-out"
    assert tf["variable"]["fanout_enabled"]["default"] is True
    apis = resources(tf, "google_project_service")["apis"]["for_each"]
    assert apis.endswith('var.fanout_enabled ? ["firestore.googleapis.com"] : []))}')
    # Each function waits for the fan-out resources and the worker's grants on them.
    needed = {"${google_firestore_database.runs}", "${google_storage_bucket.partials}", "${google_pubsub_topic.shards}",
              "${google_pubsub_topic.shard_dead_letter}", "${google_project_iam_member.worker_uses_runs_database}",
              "${google_storage_bucket_iam_member.worker_partials}",
              "${google_pubsub_topic_iam_member.worker_publishes_shards}"}
    for function in resources(tf, "google_cloudfunctions2_function").values():
        assert needed <= set(function["depends_on"])


def test_the_runs_database_is_firestore_in_native_mode_and_may_already_exist(tf):
    database = resources(tf, "google_firestore_database")["runs"]
    assert database["type"] == "FIRESTORE_NATIVE" and database["name"] == "${var.firestore_database}"
    assert database["count"] == "${var.fanout_enabled && var.create_firestore_database ? 1 : 0}"
    assert database["location_id"] == "${coalesce(var.firestore_location, var.region)}"
    assert database["deletion_policy"] == "ABANDON"  # terraform destroy leaves the runs
    variables = tf["variable"]
    assert variables["firestore_database"]["default"] == "(default)"
    assert variables["create_firestore_database"]["default"] is True
    assert "409" in variables["create_firestore_database"]["description"]
    # The function reads the same database, and the worker's grant is conditioned on it (by name: it may
    # be one Terraform did not create).
    assert tf["locals"]["firestore_database_name"] == "projects/${var.project}/databases/${var.firestore_database}"
    assert tf["locals"]["firestore_condition"] == 'resource.name == \\"${local.firestore_database_name}\\"'
    assert tf["module"]["plan"][0]["firestore_database"] == "${var.firestore_database}"


def test_the_partials_bucket_is_private_and_forgets_partials(tf):
    bucket = resources(tf, "google_storage_bucket")["partials"]
    assert bucket["name"] == "${local.names.partials_bucket}" and bucket["location"] == "${var.region}"
    assert bucket["uniform_bucket_level_access"] is True and bucket["public_access_prevention"] == "enforced"
    # Partials are deleted as many days after they are written as the runs' records (runs_retention_days).
    assert bucket["lifecycle_rule"] == [{"condition": [{"age": "${var.runs_retention_days}"}],
                                         "action": [{"type": "Delete"}]}]
    # Soft delete off: a partial the lifecycle rule deleted is not billed for another week.
    assert bucket["soft_delete_policy"] == [{"retention_duration_seconds": 0}]
    assert "versioning" not in bucket
    # The worker's roles on it: exactly create and read.
    grant = resources(tf, "google_storage_bucket_iam_member")["worker_partials"]
    roles = set(re.findall(r'"(roles/[^"]+)"', grant["for_each"]))
    assert roles == {"roles/storage.objectCreator", "roles/storage.objectViewer"} and grant["role"] == "${each.value}"


def test_runs_records_expire_by_ttl_policies_on_the_field_the_worker_writes(tf):
    fields = resources(tf, "google_firestore_field")
    assert set(fields) == {"expire_at"}
    field = fields["expire_at"]
    assert field["for_each"] == "${var.fanout_enabled ? toset(module.plan.ttl.collection_groups) : toset([])}"
    assert field["project"] == "${var.project}" and field["database"] == "${var.firestore_database}"
    assert field["collection"] == "${each.value}" and field["field"] == "${module.plan.ttl.field}"
    # An empty ttl_config is the TTL policy; an empty index_config exempts the field from indexing (the
    # provider's default would index it: a timestamp that grows with time, a write hot spot).
    assert field["ttl_config"] == [{}] and field["index_config"] == [{}]
    assert "${google_firestore_database.runs}" in field["depends_on"]
    # One policy per collection group of a run's records: the runs collection and its documents' subcollections.
    assert tf["locals"]["ttl"] == {"field": retention.FIELD,
                                   "collection_groups": ["${var.runs_collection}", "shards", "merges"]}
    assert retention.FIELD == "expire_at"
    # One number of days drives the records' expiry (the function's RUNS_RETENTION_DAYS) and the partials'
    # lifecycle: the worker's own default and range.
    days = tf["variable"]["runs_retention_days"]
    assert days["default"] == retention.DEFAULT_DAYS == Settings.__dataclass_fields__["runs_retention_days"].default
    condition = days["validation"][0]["condition"]
    assert "var.runs_retention_days >= 1" in condition
    assert f"var.runs_retention_days <= {retention.MAX_DAYS}" in condition
    assert tf["locals"]["fanout_environment"].count("RUNS_RETENTION_DAYS") == 1
    assert "tostring(var.runs_retention_days)" in tf["locals"]["fanout_environment"]
    assert tf["locals"]["partials_lifecycle"] == {"rule": [{"action": {"type": "Delete"},
                                                            "condition": {"age": "${var.runs_retention_days}"}}]}
    # The variable it replaces is refused if set, rather than silently ignored.
    old = tf["variable"]["partials_retention_days"]
    assert old["default"] is None and old["validation"][0]["condition"] == "${var.partials_retention_days == null}"


def test_shards_are_pushed_to_the_function_with_retries_then_dead_lettered_to_it(tf):
    subs, topics = resources(tf, "google_pubsub_subscription"), resources(tf, "google_pubsub_topic")
    jobs = subs["jobs"]
    assert topics["shards"]["name"] == "${local.names.shard_topic}"
    assert topics["shard_dead_letter"]["name"] == "${local.names.shard_dead_letter_topic}"
    for name, topic in (("shards", "shards"), ("shard_dead_letter", "shard_dead_letter")):
        sub = subs[name]
        assert sub["topic"] == f"${{google_pubsub_topic.{topic}[0].id}}"
        (push,) = sub["push_config"]
        # functions-framework takes the CloudEvent's source from the path: it ends with projects/P/topics/T.
        assert push["push_endpoint"] == f"${{local.worker_url}}/${{google_pubsub_topic.{topic}[0].id}}"
        assert push["oidc_token"] == jobs["push_config"][0]["oidc_token"]
        for same in ("ack_deadline_seconds", "message_retention_duration", "retry_policy", "expiration_policy",
                     "depends_on"):
            assert sub[same] == jobs[same], (name, same)
    assert subs["shards"]["dead_letter_policy"] == [{
        "dead_letter_topic": "${google_pubsub_topic.shard_dead_letter[0].id}",
        "max_delivery_attempts": "${var.shard_max_delivery_attempts}"}]
    assert "dead_letter_policy" not in subs["shard_dead_letter"]  # no chain of dead letters
    attempts = tf["variable"]["shard_max_delivery_attempts"]
    # As many as jobs have: 429s, busy leases and contention count as deliveries (docs/fan-out.md).
    assert attempts["default"] == tf["variable"]["max_delivery_attempts"]["default"] == 30
    assert "<= 100" in attempts["validation"][0]["condition"]
    # Pub/Sub's service agent may move shards to their dead-letter topic and ack them, once it exists
    # (local.pubsub_agent waits for it, as for jobs).
    grants = {(r["role"], r.get("topic", r.get("subscription")), r["member"])
              for t in ("google_pubsub_topic_iam_member", "google_pubsub_subscription_iam_member")
              for r in resources(tf, t).values()}
    assert ("roles/pubsub.publisher", "${google_pubsub_topic.shard_dead_letter[0].name}",
            "${local.pubsub_agent}") in grants
    assert ("roles/pubsub.subscriber", "${google_pubsub_subscription.shards[0].name}",
            "${local.pubsub_agent}") in grants
    # The same push account signs, with the token grant the jobs subscription already needs.
    signs = resources(tf, "google_service_account_iam_member")["pubsub_signs_as_push"]
    assert signs["member"] == "${local.pubsub_agent}"


def test_the_function_has_max_instances_and_fan_out_settings(tf):
    service = resources(tf, "google_cloudfunctions2_function")["worker"]["service_config"][0]
    assert service["max_instance_count"] == "${var.max_instances}"
    assert "var.max_instances <= 1000" in tf["variable"]["max_instances"]["validation"][0]["condition"]
    plan = tf["module"]["plan"][0]
    for name in ("fanout_enabled", "firestore_database", "runs_collection", "max_instances", "concurrency",
                 "fanout_max_in_flight", "runs_retention_days"):
        assert plan[name] == f"${{var.{name}}}"
    # then max_instances x concurrency (evaluated in test_terraform_binary.py)
    assert tf["variable"]["fanout_max_in_flight"]["default"] is None
    assert tf["variable"]["runs_collection"]["default"] == "summary-runs"
    assert tf["output"]["fanout"]["value"] == "${module.plan.fanout_environment}"


def test_every_resource_has_at_most_one_lifecycle_block(tf):
    # Terraform refuses a second one ("Duplicate lifecycle block"); python-hcl2 keeps both.
    for kind in ("resource", "data"):
        for type_, named in tf[kind].items():
            for name, body in named.items():
                assert len(body.get("lifecycle", [])) <= 1, f"{type_}.{name} has more than one lifecycle block"
