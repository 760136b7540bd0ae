# Google Cloud half: service accounts, topics, the function, its delivery and its schedule.

locals {
  repo      = abspath("${path.module}/../..")
  role_name = coalesce(var.aws_role_name, var.name)
  audience  = coalesce(var.id_token_audience, "//iam.amazonaws.com/${local.role_name}")
  names     = module.plan.names
  # The fan-out's sweep: Cloud Scheduler publishes kind=sweep to the shard topic (docs/fan-out.md: Every run ends).
  sweeping = var.fanout_enabled && var.sweep_schedule != null

  # Read through time_sleep, so that every grant to a service agent waits for it to be known to IAM.
  pubsub_agent    = "serviceAccount:${time_sleep.service_agents.triggers["pubsub"]}"
  scheduler_agent = "serviceAccount:${time_sleep.service_agents.triggers["scheduler"]}"

  build_account = coalesce(var.build_service_account, one(google_service_account.build[*].email))
  worker_url    = google_cloudfunctions2_function.worker.service_config[0].uri

  # The function's settings: the names worker/config.py reads (with module.plan.fanout_environment's).
  environment = {
    AWS_ROLE_ARN         = module.aws_role.role_arn
    ID_TOKEN_AUDIENCE    = local.audience
    REPLY_TOPIC          = google_pubsub_topic.results.id
    GOOGLE_CLOUD_PROJECT = var.project
    AWS_REGION           = var.aws_region
    ALLOWED_BUCKETS      = var.data_bucket
    JOB_DEADLINE_SECONDS = tostring(var.timeout_seconds - 60)
    TEMPLATE_TIME_ZONE   = var.schedule_time_zone
    ALLOWED_REPLY_TOPICS = join(",", var.allowed_reply_topics)
    # functions-framework's own variable: gunicorn threads, so that every request Cloud Run sends runs
    # at once (its default is 4 per CPU).
    THREADS = tostring(var.concurrency)
  }
}

# Names, the source file list, the prefixes and the scheduled job: pure computations, in a module with
# no provider so that tests evaluate them with the terraform binary alone.
module "plan" {
  source = "./modules/plan"

  project       = var.project
  name          = var.name
  data_bucket   = var.data_bucket
  data_prefixes = var.data_prefixes
  schedule      = var.schedule
  scheduled_job = var.scheduled_job
  source_dir    = local.repo

  fanout_enabled       = var.fanout_enabled
  firestore_database   = var.firestore_database
  runs_collection      = var.runs_collection
  max_instances        = var.max_instances
  concurrency          = var.concurrency
  fanout_max_in_flight = var.fanout_max_in_flight
  runs_retention_days  = var.runs_retention_days
}

# No data source reads the project at plan time, so a first plan needs no API but Service Usage.
# Cloud Resource Manager is enabled for the project-level grants below (and for gcloud's project lookups).
resource "google_project_service" "apis" {
  for_each = toset(concat([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ], var.fanout_enabled ? ["firestore.googleapis.com"] : []))
  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

# -- service agents ------------------------------------------------------------------------------
# A service agent may not exist right after its API is enabled, and a grant to one that does not exist
# fails. generateServiceIdentity creates it (and returns its email); the pause lets IAM learn of it.

resource "google_project_service_identity" "pubsub" {
  provider   = google-beta
  project    = var.project
  service    = "pubsub.googleapis.com"
  depends_on = [google_project_service.apis]
}

resource "google_project_service_identity" "scheduler" {
  count      = var.schedule == null && !local.sweeping ? 0 : 1
  provider   = google-beta
  project    = var.project
  service    = "cloudscheduler.googleapis.com"
  depends_on = [google_project_service.apis]
}

resource "time_sleep" "service_agents" {
  create_duration = var.service_agent_wait
  triggers = {
    pubsub    = google_project_service_identity.pubsub.email
    scheduler = try(google_project_service_identity.scheduler[0].email, "")
  }
}

# -- identities ------------------------------------------------------------------------------

# The function runs as this account. Its ID tokens are what AWS trusts; in Google it may only
# publish results.
resource "google_service_account" "worker" {
  project      = var.project
  account_id   = local.names.worker_account
  display_name = substr("Parquet summary worker (federates into AWS role ${local.role_name})", 0, 100) # IAM's limit
  depends_on   = [google_project_service.apis]
}

# Pub/Sub signs push requests to the function as this account; it may only invoke the function.
resource "google_service_account" "push" {
  project      = var.project
  account_id   = local.names.push_account
  display_name = "Pub/Sub push to ${var.name}"
  depends_on   = [google_project_service.apis]
}

# Cloud Build builds the function as this account (unless build_service_account names another): the
# default build account of projects created since mid-2024 (the Compute Engine default account) has no
# build permissions, and organisations often disable default accounts altogether.
resource "google_service_account" "build" {
  count        = var.build_service_account == null ? 1 : 0
  project      = var.project
  account_id   = local.names.build_account
  display_name = "Builds the ${var.name} function (Cloud Build)"
  depends_on   = [google_project_service.apis]
}

# -- topics ------------------------------------------------------------------------------------

resource "google_pubsub_topic" "jobs" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption unless kms_key_name names a customer-managed key
  project      = var.project
  name         = local.names.jobs_topic
  kms_key_name = var.kms_key_name
  # With a customer-managed key, topic creation fails unless the Pub/Sub service agent may use it.
  depends_on = [google_project_service.apis, time_sleep.key_grant]
}

resource "google_pubsub_topic" "results" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption unless kms_key_name names a customer-managed key
  project      = var.project
  name         = local.names.results_topic
  kms_key_name = var.kms_key_name
  # With a customer-managed key, topic creation fails unless the Pub/Sub service agent may use it.
  depends_on = [google_project_service.apis, time_sleep.key_grant]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption unless kms_key_name names a customer-managed key
  project      = var.project
  name         = local.names.dead_letter_topic
  kms_key_name = var.kms_key_name
  # With a customer-managed key, topic creation fails unless the Pub/Sub service agent may use it.
  depends_on = [google_project_service.apis, time_sleep.key_grant]
}

# Messages on a topic with no subscription are dropped: keep results and dead letters for a week.
resource "google_pubsub_subscription" "results" {
  project                    = var.project
  name                       = "${var.name}-results"
  topic                      = google_pubsub_topic.results.id
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
}

resource "google_pubsub_subscription" "dead_letter" {
  project                    = var.project
  name                       = "${var.name}-dead-letter"
  topic                      = google_pubsub_topic.dead_letter.id
  message_retention_duration = "604800s"
  expiration_policy {
    ttl = ""
  }
}

# -- the function --------------------------------------------------------------------------------

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:holds only the function's source archives, read by Cloud Build; Cloud Audit Logs record access
  project                     = var.project
  name                        = local.names.source_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  versioning {
    enabled = true
  }
  lifecycle_rule {
    condition {
      num_newer_versions = 3
    }
    action {
      type = "Delete"
    }
  }
  # Each source change is a new object name: the old archive is then a noncurrent version of its own.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}

data "archive_file" "source" {
  type        = "zip"
  output_path = "${path.module}/.build/source.zip"

  dynamic "source" {
    for_each = module.plan.source_files
    content {
      content  = file("${local.repo}/${source.value}")
      filename = source.value
    }
  }
}

resource "google_storage_bucket_object" "source" {
  name   = "source-${data.archive_file.source.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path
}

resource "google_cloudfunctions2_function" "worker" {
  project     = var.project
  name        = local.names.function
  location    = var.region
  description = "Summarizes Parquet data in S3 for each job on ${google_pubsub_topic.jobs.name}; results on ${google_pubsub_topic.results.name}."

  build_config {
    runtime     = var.python_runtime
    entry_point = "handle_pubsub"
    # The API wants the account's full name, not its email.
    service_account = "projects/${var.project}/serviceAccounts/${local.build_account}"
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  # No event_trigger: Eventarc would own the subscription and put retries and dead-lettering out
  # of reach. The push subscription below delivers the same messagePublished events.
  service_config {
    available_memory                 = var.memory
    available_cpu                    = var.cpu
    timeout_seconds                  = var.timeout_seconds
    max_instance_count               = var.max_instances
    max_instance_request_concurrency = var.concurrency
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.worker.email
    environment_variables            = merge(local.environment, module.plan.fanout_environment)
  }

  # The fan-out settings name these (by name, from module.plan): they exist, and the worker may use them,
  # before the function runs a job.
  depends_on = [
    google_project_service.apis, time_sleep.build_grants,
    google_firestore_database.runs, google_storage_bucket.partials, google_pubsub_topic.shards,
    google_pubsub_topic.shard_dead_letter, google_project_iam_member.worker_uses_runs_database,
    google_storage_bucket_iam_member.worker_partials, google_pubsub_topic_iam_member.worker_publishes_shards,
  ]

  lifecycle {
    precondition {
      condition     = var.concurrency == 1 || tonumber(var.cpu) >= 1
      error_message = "concurrency above 1 needs cpu of at least 1 (Cloud Run's rule)."
    }
  }
}

# The HTTP entry point (jobs posted as JSON, answered with the result), when asked for: the same
# source, settings and identity; callable only by the principals in http_invokers, never allUsers.
resource "google_cloudfunctions2_function" "http" {
  count       = var.http_function ? 1 : 0
  project     = var.project
  name        = local.names.http_function
  location    = var.region
  description = "Summarizes Parquet data in S3 for each job POSTed as JSON; answers the result."

  build_config {
    runtime         = var.python_runtime
    entry_point     = "handle_http"
    service_account = "projects/${var.project}/serviceAccounts/${local.build_account}"
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = var.memory
    available_cpu                    = var.cpu
    timeout_seconds                  = var.timeout_seconds
    max_instance_count               = var.max_instances
    max_instance_request_concurrency = var.concurrency
    ingress_settings                 = var.http_ingress_settings
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.worker.email
    environment_variables            = merge(local.environment, module.plan.fanout_environment)
  }

  # The fan-out settings name these (by name, from module.plan): they exist, and the worker may use them,
  # before the function runs a job.
  depends_on = [
    google_project_service.apis, time_sleep.build_grants,
    google_firestore_database.runs, google_storage_bucket.partials, google_pubsub_topic.shards,
    google_pubsub_topic.shard_dead_letter, google_project_iam_member.worker_uses_runs_database,
    google_storage_bucket_iam_member.worker_partials, google_pubsub_topic_iam_member.worker_publishes_shards,
  ]

  # One lifecycle block per resource (Terraform refuses a second: "Duplicate lifecycle block").
  lifecycle {
    precondition {
      condition     = length(var.http_invokers) > 0
      error_message = "http_function is true but http_invokers is empty: name who may call it (it is never public)."
    }
    precondition {
      condition     = var.concurrency == 1 || tonumber(var.cpu) >= 1
      error_message = "concurrency above 1 needs cpu of at least 1 (Cloud Run's rule)."
    }
  }
}

# -- delivery: jobs topic -> push (OIDC) -> function, with retries and a dead-letter topic ------------

resource "google_pubsub_subscription" "jobs" {
  project = var.project
  name    = "${var.name}-jobs"
  topic   = google_pubsub_topic.jobs.id

  # The function runs for at most timeout_seconds (<= 540): the acknowledgement waits for it.
  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  push_config {
    # functions-framework turns this raw push into the messagePublished CloudEvent; the path names the topic.
    push_endpoint = "${local.worker_url}/${google_pubsub_topic.jobs.id}"
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.worker_url
    }
  }

  retry_policy {
    minimum_backoff = var.minimum_backoff
    maximum_backoff = var.maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter.id
    max_delivery_attempts = var.max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_cloud_run_v2_service_iam_member.push_invokes_worker]
}

# -- the schedule ----------------------------------------------------------------------------------------

resource "google_cloud_scheduler_job" "jobs" {
  count     = var.schedule == null ? 0 : 1
  project   = var.project
  region    = var.region
  name      = local.names.scheduler_job
  schedule  = var.schedule
  time_zone = var.schedule_time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.jobs.id
    data       = base64encode(module.plan.scheduled_job_json)
    # Passed through to the result: which schedule produced it.
    attributes = { schedule = local.names.scheduler_job }
  }

  depends_on = [google_project_service.apis, google_pubsub_topic_iam_member.scheduler_publishes_jobs]
}

# Every run ends: the sweep finds runs whose messages were lost or whose holder died, even when no message comes.
resource "google_cloud_scheduler_job" "sweep" {
  count     = local.sweeping ? 1 : 0
  project   = var.project
  region    = var.region
  name      = "${var.name}-sweep"
  schedule  = var.sweep_schedule
  time_zone = "Etc/UTC"

  pubsub_target {
    topic_name = google_pubsub_topic.shards[0].id
    data       = base64encode("{}")
    attributes = { kind = "sweep" }
  }

  depends_on = [google_project_service.apis, google_pubsub_topic_iam_member.scheduler_publishes_sweeps]
}

# -- IAM ----------------------------------------------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "worker_publishes_results" {
  project = var.project
  topic   = google_pubsub_topic.results.name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.worker.member
}

# Jobs may send their results to these topics instead (pipeline stages); they exist elsewhere.
resource "google_pubsub_topic_iam_member" "worker_publishes_allowed_replies" {
  for_each = toset(var.allowed_reply_topics)
  topic    = each.value
  role     = "roles/pubsub.publisher"
  member   = google_service_account.worker.member
}

resource "google_cloud_run_v2_service_iam_member" "push_invokes_worker" {
  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.worker.name
  role     = "roles/run.invoker"
  member   = google_service_account.push.member
}

resource "google_cloud_run_v2_service_iam_member" "http_invokers" {
  for_each = var.http_function ? toset(var.http_invokers) : toset([])
  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.http[0].name
  role     = "roles/run.invoker"
  member   = each.value
}

# Pub/Sub's service agent mints the push OIDC tokens and moves undeliverable jobs to the dead-letter topic.
resource "google_service_account_iam_member" "pubsub_signs_as_push" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_agent
}

resource "google_pubsub_topic_iam_member" "pubsub_publishes_dead_letters" {
  project = var.project
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_acks_dead_letters" {
  project      = var.project
  subscription = google_pubsub_subscription.jobs.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}

resource "google_pubsub_topic_iam_member" "scheduler_publishes_jobs" {
  count   = var.schedule == null ? 0 : 1
  project = var.project
  topic   = google_pubsub_topic.jobs.name
  role    = "roles/pubsub.publisher"
  member  = local.scheduler_agent
}

resource "google_pubsub_topic_iam_member" "scheduler_publishes_sweeps" {
  count   = local.sweeping ? 1 : 0
  project = var.project
  topic   = google_pubsub_topic.shards[0].name
  role    = "roles/pubsub.publisher"
  member  = local.scheduler_agent
}

# A customer-managed key on the topics: Pub/Sub encrypts with it as its service agent.
resource "google_kms_crypto_key_iam_member" "pubsub_uses_key" {
  count         = var.kms_key_name == null ? 0 : 1
  crypto_key_id = var.kms_key_name
  role          = "roles/cloudkms.cryptoKeyEncrypterDecrypter"
  member        = local.pubsub_agent
}

# The build account: Cloud Build's own role (writes build logs and the image to Artifact Registry, reads
# the source), one of the two project-level grants here (the other: the worker's conditional Firestore
# role); and read on the source bucket, in case the project's
# organisation trims the role.
resource "google_project_iam_member" "build_account_builds" {
  #checkov:skip=CKV_GCP_49:Cloud Build's own role (documented for a custom build account); it acts as no other account
  project    = var.project
  role       = "roles/cloudbuild.builds.builder"
  member     = "serviceAccount:${local.build_account}"
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket_iam_member" "build_account_reads_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${local.build_account}"
}

# IAM grants take a while to take effect: a build that starts right after them fails to read its source
# (the provider's own acceptance test waits for this). The functions wait for this instead.
resource "time_sleep" "build_grants" {
  create_duration = var.service_agent_wait
  depends_on      = [google_project_iam_member.build_account_builds, google_storage_bucket_iam_member.build_account_reads_source]
}

# Likewise the key grant, before the topics are made with the key.
resource "time_sleep" "key_grant" {
  count           = var.kms_key_name == null ? 0 : 1
  create_duration = var.service_agent_wait
  depends_on      = [google_kms_crypto_key_iam_member.pubsub_uses_key]
}

# -- fan-out: the runs database, the partials bucket, shard delivery (all absent unless fanout_enabled) ----------

# Run and shard records. A project's (default) database may already exist (made with App Engine or by
# hand): then set create_firestore_database = false (or import it); it must be in Native mode.
resource "google_firestore_database" "runs" {
  count       = var.fanout_enabled && var.create_firestore_database ? 1 : 0
  project     = var.project
  name        = var.firestore_database
  location_id = coalesce(var.firestore_location, var.region)
  type        = "FIRESTORE_NATIVE"
  # terraform destroy leaves the database (and its runs) in place; the provider's default, said aloud.
  deletion_policy = "ABANDON"
  depends_on      = [google_project_service.apis]
}

# Runs expire: the worker writes expire_at (RUNS_RETENTION_DAYS after the write) on every run, shard and merge
# document, and a TTL policy per collection group deletes the document once it is past (typically within a
# day). Each group needs its own: deleting a run's document leaves its subcollections. expire_at is not
# indexed (index_config {}): nothing queries it, and an index on a timestamp that grows with time is a write
# hot spot.
resource "google_firestore_field" "expire_at" {
  for_each   = var.fanout_enabled ? toset(module.plan.ttl.collection_groups) : toset([])
  project    = var.project
  database   = var.firestore_database
  collection = each.value
  field      = module.plan.ttl.field
  ttl_config {}
  index_config {}
  depends_on = [google_project_service.apis, google_firestore_database.runs]
}

# Partial summaries: written once each (a generation precondition), read by the merge, then deleted by the
# lifecycle rule after runs_retention_days, as the runs' records are. No soft delete: a deleted partial is of
# no use, and would be billed for another week.
resource "google_storage_bucket" "partials" {
  #checkov:skip=CKV_GCP_62:holds only transient partial summaries the worker writes and reads; Cloud Audit Logs record access
  #checkov:skip=CKV_GCP_78:objects are written once and never overwritten (the worker may not delete); the lifecycle rule removes them
  count                       = var.fanout_enabled ? 1 : 0
  project                     = var.project
  name                        = local.names.partials_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  soft_delete_policy {
    retention_duration_seconds = 0
  }
  lifecycle_rule {
    condition {
      age = var.runs_retention_days
    }
    action {
      type = "Delete"
    }
  }
  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "shards" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption unless kms_key_name names a customer-managed key
  count        = var.fanout_enabled ? 1 : 0
  project      = var.project
  name         = local.names.shard_topic
  kms_key_name = var.kms_key_name
  depends_on   = [google_project_service.apis, time_sleep.key_grant]
}

resource "google_pubsub_topic" "shard_dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption unless kms_key_name names a customer-managed key
  count        = var.fanout_enabled ? 1 : 0
  project      = var.project
  name         = local.names.shard_dead_letter_topic
  kms_key_name = var.kms_key_name
  depends_on   = [google_project_service.apis, time_sleep.key_grant]
}

# Shards reach the same function as jobs (handle_pubsub tells them apart by the topic in the push path),
# with retries, then the shard dead-letter topic.
resource "google_pubsub_subscription" "shards" {
  count   = var.fanout_enabled ? 1 : 0
  project = var.project
  name    = local.names.shard_topic
  topic   = google_pubsub_topic.shards[0].id

  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = "${local.worker_url}/${google_pubsub_topic.shards[0].id}"
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.worker_url
    }
  }

  retry_policy {
    minimum_backoff = var.minimum_backoff
    maximum_backoff = var.maximum_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.shard_dead_letter[0].id
    max_delivery_attempts = var.shard_max_delivery_attempts
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_cloud_run_v2_service_iam_member.push_invokes_worker]
}

# A dead-lettered shard is pushed to the function too, which records it as failed with its key range.
# No dead-letter topic of its own: it is retried (with backoff) while the message is kept, a week.
resource "google_pubsub_subscription" "shard_dead_letter" {
  count   = var.fanout_enabled ? 1 : 0
  project = var.project
  name    = local.names.shard_dead_letter_topic
  topic   = google_pubsub_topic.shard_dead_letter[0].id

  ack_deadline_seconds       = 600
  message_retention_duration = "604800s"

  push_config {
    push_endpoint = "${local.worker_url}/${google_pubsub_topic.shard_dead_letter[0].id}"
    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = local.worker_url
    }
  }

  retry_policy {
    minimum_backoff = var.minimum_backoff
    maximum_backoff = var.maximum_backoff
  }

  expiration_policy {
    ttl = ""
  }

  depends_on = [google_cloud_run_v2_service_iam_member.push_invokes_worker]
}

# The worker: read and write runs, in the runs database only (an IAM condition on the project-level role:
# Firestore has no database-level IAM policy) ...
resource "google_project_iam_member" "worker_uses_runs_database" {
  count   = var.fanout_enabled ? 1 : 0
  project = var.project
  role    = "roles/datastore.user"
  member  = google_service_account.worker.member
  condition {
    title       = "runs database only"
    description = "Firestore read/write on ${module.plan.firestore_database_name} only"
    expression  = module.plan.firestore_condition
  }
  depends_on = [google_project_service.apis]
}

# ... create and read partials, never delete or overwrite them (an overwrite needs storage.objects.delete) ...
resource "google_storage_bucket_iam_member" "worker_partials" {
  for_each = var.fanout_enabled ? toset(["roles/storage.objectCreator", "roles/storage.objectViewer"]) : toset([])
  bucket   = google_storage_bucket.partials[0].name
  role     = each.value
  member   = google_service_account.worker.member
}

# ... and publish shards.
resource "google_pubsub_topic_iam_member" "worker_publishes_shards" {
  count   = var.fanout_enabled ? 1 : 0
  project = var.project
  topic   = google_pubsub_topic.shards[0].name
  role    = "roles/pubsub.publisher"
  member  = google_service_account.worker.member
}

# Pub/Sub's service agent moves undeliverable shards to the shard dead-letter topic, as for jobs.
resource "google_pubsub_topic_iam_member" "pubsub_publishes_shard_dead_letters" {
  count   = var.fanout_enabled ? 1 : 0
  project = var.project
  topic   = google_pubsub_topic.shard_dead_letter[0].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_acks_dead_lettered_shards" {
  count        = var.fanout_enabled ? 1 : 0
  project      = var.project
  subscription = google_pubsub_subscription.shards[0].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_agent
}
