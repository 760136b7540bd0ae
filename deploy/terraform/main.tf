# Google Cloud half: service accounts, topics, the function, its delivery and its schedule.

locals {
  repo       = abspath("${path.module}/../..")
  role_name  = coalesce(var.aws_role_name, var.name)
  audience   = coalesce(var.id_token_audience, "//iam.amazonaws.com/${local.role_name}")
  prefixes   = length(var.data_prefixes) > 0 ? sort(distinct(var.data_prefixes)) : [""]
  pubsub_sa  = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  scheduler  = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-cloudscheduler.iam.gserviceaccount.com"
  worker_url = google_cloudfunctions2_function.worker.service_config[0].uri

  # What the function needs and nothing else: the same files .gcloudignore lets through.
  source_files = setsubtract(
    fileset(local.repo, "{main.py,requirements.txt,schemas/**,worker/**/*.py}"),
    fileset(local.repo, "worker/devstack/**"),
  )

  # The function's settings: the names worker/config.py reads.
  environment = {
    AWS_ROLE_ARN         = aws_iam_role.worker.arn
    ID_TOKEN_AUDIENCE    = local.audience
    REPLY_TOPIC          = google_pubsub_topic.results.id
    GOOGLE_CLOUD_PROJECT = var.project
    AWS_REGION           = var.aws_region
    ALLOWED_BUCKETS      = var.data_bucket
    JOB_DEADLINE_SECONDS = tostring(var.timeout_seconds - 60)
    TEMPLATE_TIME_ZONE   = var.schedule_time_zone
    ALLOWED_REPLY_TOPICS = join(",", var.allowed_reply_topics)
  }
}

data "google_project" "this" {
  project_id = var.project
}

resource "google_project_service" "apis" {
  for_each = toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ])
  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

# -- identities ------------------------------------------------------------------------------

# The function runs as this account. Its ID tokens are what AWS trusts; in Google it may only
# publish results.
resource "google_service_account" "worker" {
  project      = var.project
  account_id   = var.name
  display_name = "Parquet summary worker (federates into AWS role ${local.role_name})"
  depends_on   = [google_project_service.apis]
}

# Pub/Sub signs push requests to the function as this account; it may only invoke the function.
resource "google_service_account" "push" {
  project      = var.project
  account_id   = "${substr(var.name, 0, 25)}-push"
  display_name = "Pub/Sub push to ${var.name}"
  depends_on   = [google_project_service.apis]
}

# -- topics ------------------------------------------------------------------------------------

resource "google_pubsub_topic" "jobs" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption unless kms_key_name names a customer-managed key
  project      = var.project
  name         = "${var.name}-jobs"
  kms_key_name = var.kms_key_name
  depends_on   = [google_project_service.apis]
}

resource "google_pubsub_topic" "results" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption unless kms_key_name names a customer-managed key
  project      = var.project
  name         = "${var.name}-results"
  kms_key_name = var.kms_key_name
  depends_on   = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:Google-managed encryption unless kms_key_name names a customer-managed key
  project      = var.project
  name         = "${var.name}-dead-letter"
  kms_key_name = var.kms_key_name
  depends_on   = [google_project_service.apis]
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
  name                        = "${var.project}-${var.name}-source"
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
  depends_on = [google_project_service.apis]
}

data "archive_file" "source" {
  type        = "zip"
  output_path = "${path.module}/.build/source.zip"

  dynamic "source" {
    for_each = local.source_files
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
  name        = var.name
  location    = var.region
  description = "Summarizes Parquet data in S3 for each job on ${google_pubsub_topic.jobs.name}; results on ${google_pubsub_topic.results.name}."

  build_config {
    runtime         = var.python_runtime
    entry_point     = "handle_pubsub"
    service_account = var.build_service_account
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
    max_instance_request_concurrency = 1
    ingress_settings                 = "ALLOW_INTERNAL_ONLY"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.worker.email
    environment_variables            = local.environment
  }

  depends_on = [google_project_service.apis]
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
  name      = "${var.name}-schedule"
  schedule  = var.schedule
  time_zone = var.schedule_time_zone

  pubsub_target {
    topic_name = google_pubsub_topic.jobs.id
    data       = base64encode(jsonencode(coalesce(var.scheduled_job, { bucket = var.data_bucket, prefix = local.prefixes[0] })))
    # Passed through to the result: which schedule produced it.
    attributes = { schedule = "${var.name}-schedule" }
  }

  depends_on = [google_project_service.apis, google_pubsub_topic_iam_member.scheduler_publishes_jobs]
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

# Pub/Sub's service agent mints the push OIDC tokens and moves undeliverable jobs to the dead-letter topic.
resource "google_service_account_iam_member" "pubsub_signs_as_push" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_sa
}

resource "google_pubsub_topic_iam_member" "pubsub_publishes_dead_letters" {
  project = var.project
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_sa
}

resource "google_pubsub_subscription_iam_member" "pubsub_acks_dead_letters" {
  project      = var.project
  subscription = google_pubsub_subscription.jobs.name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_sa
}

resource "google_pubsub_topic_iam_member" "scheduler_publishes_jobs" {
  project = var.project
  topic   = google_pubsub_topic.jobs.name
  role    = "roles/pubsub.publisher"
  member  = local.scheduler
}
