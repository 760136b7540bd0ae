variable "project" {
  description = "Google Cloud project ID that runs the worker."
  type        = string
}

variable "region" {
  description = "Google Cloud region of the function, the scheduler job and the source bucket."
  type        = string
  default     = "us-central1"
}

variable "name" {
  description = "Base name of every resource: the function, its service accounts, topics, subscriptions and the AWS role."
  type        = string
  default     = "parquet-summary"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.name))
    error_message = "name must be 6-30 lowercase letters, digits or hyphens, starting with a letter (a service account ID)."
  }
}

variable "aws_region" {
  description = "AWS region of the data (AWS_REGION of the function)."
  type        = string
  default     = "us-east-1"
}

variable "aws_role_name" {
  description = "Name of the IAM role the worker assumes; defaults to var.name."
  type        = string
  default     = null

  validation {
    condition     = var.aws_role_name == null || can(regex("^[\\w+=,.@-]{1,64}$", var.aws_role_name))
    error_message = "aws_role_name must be an IAM role name: 1 to 64 of letters, digits and + = , . @ _ -."
  }
}

variable "data_bucket" {
  description = "The S3 bucket the worker may read (ALLOWED_BUCKETS of the function)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.data_bucket))
    error_message = "data_bucket must be an S3 bucket name."
  }
}

variable "data_prefixes" {
  description = "Key prefixes in data_bucket the role may list and read; [\"\"] or [] means the whole bucket."
  type        = list(string)
  default     = []
}

variable "id_token_audience" {
  description = "Audience of the Google ID token (the role's accounts.google.com:oaud); defaults to //iam.amazonaws.com/<role name>."
  type        = string
  default     = null
}

variable "python_runtime" {
  description = "Cloud Run functions runtime; the test suite runs on Python 3.11."
  type        = string
  default     = "python311"
}

variable "timeout_seconds" {
  description = "Function timeout. Each job stops 60 s before it (JOB_DEADLINE_SECONDS) and says how far it got."
  type        = number
  default     = 540

  validation {
    condition     = var.timeout_seconds >= 120 && var.timeout_seconds <= 540
    error_message = "timeout_seconds must be between 120 and 540 (the push acknowledgement deadline is at most 600 s)."
  }
}

variable "memory" {
  description = "Memory of one instance."
  type        = string
  default     = "1Gi"
}

variable "cpu" {
  description = "vCPUs of one instance."
  type        = string
  default     = "1"
}

variable "max_instances" {
  description = "Most instances at once (the function's max_instance_count): an upper bound on parallel jobs and shards and on S3 request rate; with concurrency, the default cap on a run's shards in flight (fanout_max_in_flight)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instances >= 1 && var.max_instances <= 1000
    error_message = "max_instances must be between 1 and 1000."
  }
}

variable "concurrency" {
  description = "Requests one instance serves at once (max_instance_request_concurrency); with max_instances, how many jobs run before Cloud Run answers 429. 8 suits metadata jobs, which wait on S3 round trips; use 1 for full-mode workloads, which are CPU-bound (docs/deploy.md: Bursts)."
  type        = number
  default     = 8

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "concurrency must be between 1 and 1000."
  }
}

variable "max_delivery_attempts" {
  description = "Deliveries of a job before it moves to the dead-letter topic (5 to 100). Cloud Run's 429s in a burst count as deliveries: 30, with 10-600 s backoff, survives about 4 h of refusals (docs/deploy.md: Bursts); permanent errors are answered, never retried."
  type        = number
  default     = 30

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "minimum_backoff" {
  description = "First retry delay of a failed job (exponential backoff from here)."
  type        = string
  default     = "10s"
}

variable "maximum_backoff" {
  description = "Longest retry delay of a failed job."
  type        = string
  default     = "600s"
}

variable "schedule" {
  description = "Cron of the Cloud Scheduler job that publishes scheduled_job; null for no scheduler job."
  type        = string
  default     = "0 3 * * *"
}

variable "schedule_time_zone" {
  description = "Time zone of the cron, and of the dates in prefix_template (TEMPLATE_TIME_ZONE)."
  type        = string
  default     = "Etc/UTC"
}

variable "scheduled_job" {
  description = "The job the scheduler publishes (schemas/job.schema.json), as an object such as { bucket = \"b\", prefix_template = \"events/dt={date-1d:%Y-%m-%d}/\", columns = [\"a\"] } or as a JSON string of one; null publishes {bucket = data_bucket, prefix = the first of the sorted data_prefixes}."
  type        = any
  default     = null
}

variable "build_service_account" {
  description = "Email of an existing service account Cloud Build builds the function as; null creates a dedicated one (<name>-build). Either way it is granted roles/cloudbuild.builds.builder: the default build account of projects created since mid-2024 lacks it."
  type        = string
  default     = null

  validation {
    condition     = var.build_service_account == null || can(regex("^[^@/]+@[^@/]+\\.iam\\.gserviceaccount\\.com$", var.build_service_account))
    error_message = "build_service_account is a service account email (NAME@PROJECT.iam.gserviceaccount.com); the projects/P/serviceAccounts/ form is built from it."
  }
}

variable "kms_key_name" {
  description = "Cloud KMS key (projects/P/locations/L/keyRings/R/cryptoKeys/K) that encrypts the topics (three, five with fan-out); null for Google-managed encryption. The Pub/Sub service agent is granted roles/cloudkms.cryptoKeyEncrypterDecrypter on it."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key_name))
    error_message = "kms_key_name is a full key name: projects/P/locations/L/keyRings/R/cryptoKeys/K."
  }
}

variable "allowed_reply_topics" {
  description = "Topics (projects/P/topics/T) a job may name as its reply_topic (ALLOWED_REPLY_TOPICS); the worker may publish to them."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for t in var.allowed_reply_topics : can(regex("^projects/[^/]+/topics/[^/]+$", t))])
    error_message = "allowed_reply_topics are full topic names: projects/P/topics/T."
  }
}

variable "http_function" {
  description = "Also deploy the HTTP entry point (handle_http) as <name>-http: jobs posted as JSON, answered with the result. Authenticated only: http_invokers may call it."
  type        = bool
  default     = false
}

variable "http_invokers" {
  description = "Principals allowed to call the HTTP function (roles/run.invoker), such as \"serviceAccount:caller@p.iam.gserviceaccount.com\" or \"group:team@example.com\". Required when http_function is true; never allUsers."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.http_invokers : can(regex("^(user|group|serviceAccount|domain|principal|principalSet):.+", m))])
    error_message = "http_invokers are named principals (user:, group:, serviceAccount:, domain:, principal:, principalSet:); allUsers and allAuthenticatedUsers are refused."
  }
}

variable "http_ingress_settings" {
  description = "Who may reach the HTTP function's URL at the network level (IAM still decides who may call it): ALLOW_INTERNAL_ONLY (VPC and Google services of the project's perimeter), ALLOW_INTERNAL_AND_GCLB, or ALLOW_ALL."
  type        = string
  default     = "ALLOW_INTERNAL_ONLY"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.http_ingress_settings)
    error_message = "http_ingress_settings is ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

variable "service_agent_wait" {
  description = "How long to wait after creating the Pub/Sub and Cloud Scheduler service agents before granting them roles (a new agent takes a while to be known to IAM)."
  type        = string
  default     = "60s"
}

# -- fan-out (a job too big for one instance is split into shards: docs/fan-out.md) ---------------------

variable "fanout_enabled" {
  description = "Deploy what fan-out needs: the Firestore runs database, the partials bucket, the shard topic and its dead-letter topic with their push subscriptions, the worker's grants on them and the function's fan-out settings. false leaves all of it out (every job runs on one instance)."
  type        = bool
  default     = true
}

variable "firestore_database" {
  description = "ID of the Firestore database (Native mode) that holds runs (FIRESTORE_DATABASE)."
  type        = string
  default     = "(default)"

  validation {
    condition     = var.firestore_database == "(default)" || can(regex("^[a-z][a-z0-9-]{2,61}[a-z0-9]$", var.firestore_database))
    error_message = "firestore_database is (default) or 4-63 lowercase letters, digits or hyphens, starting with a letter and ending with a letter or digit."
  }
}

variable "create_firestore_database" {
  description = "Create firestore_database. Set false when it already exists (a project's (default) database often does: creating it again fails with 409 already exists); it must be in Native mode, not Datastore mode. Or keep true and import it: terraform import 'google_firestore_database.runs[0]' projects/PROJECT/databases/ID."
  type        = bool
  default     = true
}

variable "firestore_location" {
  description = "Location of a created firestore_database (a region such as us-central1, or a multi-region such as nam5); null: region. It cannot be changed later."
  type        = string
  default     = null
}

variable "runs_collection" {
  description = "Top-level Firestore collection of runs (RUNS_COLLECTION)."
  type        = string
  default     = "summary-runs"

  validation {
    condition     = length(var.runs_collection) <= 1500 && can(regex("^[^/]+$", var.runs_collection)) && !contains([".", ".."], var.runs_collection) && !can(regex("^__.*__$", var.runs_collection))
    error_message = "runs_collection is a Firestore collection ID: no '/', not . or .., not __name__-like."
  }
}

variable "runs_retention_days" {
  description = "Days a run is kept (RUNS_RETENTION_DAYS): its Firestore records (run, shards, merges) expire this long after they are written, deleted by TTL policies on expire_at, and the partials bucket deletes a partial summary this long after it is written. Runs, and a redrive of their failed ranges, must finish within it."
  type        = number
  default     = 30

  validation {
    condition     = var.runs_retention_days >= 1 && var.runs_retention_days <= 3650 && floor(var.runs_retention_days) == var.runs_retention_days
    error_message = "runs_retention_days is a whole number of days from 1 to 3650."
  }
}

variable "partials_retention_days" {
  description = "Replaced by runs_retention_days, which sets the partials bucket's lifecycle and the runs' Firestore expiry together; must stay unset."
  type        = number
  default     = null

  validation {
    condition     = var.partials_retention_days == null
    error_message = "partials_retention_days is now runs_retention_days (one number of days for the partials bucket's lifecycle and for the runs' Firestore records): rename it."
  }
}

variable "shard_max_delivery_attempts" {
  description = "Deliveries of a shard or merge message before it moves to the shard dead-letter topic (5 to 100). As for jobs, Cloud Run's 429s, a busy lease and contention count as deliveries: 30, with the same backoff. A dead-lettered shard whose reads did not fail is sent again (3 times at most); one whose reads failed 3 times is recorded failed."
  type        = number
  default     = 30

  validation {
    condition     = var.shard_max_delivery_attempts >= 5 && var.shard_max_delivery_attempts <= 100
    error_message = "shard_max_delivery_attempts must be between 5 and 100 (Pub/Sub's limits)."
  }
}

variable "sweep_schedule" {
  description = "Cron (UTC) on which Cloud Scheduler has the function sweep fanned-out runs: republish work whose messages were lost, take over merges whose holder died (docs/fan-out.md: Every run ends). null: no sweep (a stalled run then waits for `python -m worker sweep`)."
  type        = string
  default     = "*/5 * * * *"
}

variable "fanout_max_in_flight" {
  description = "A run's cap on shards in flight, and the most a job may ask for (FANOUT_MAX_IN_FLIGHT; a larger fan_out.max_in_flight is lowered to it); null: max_instances x concurrency, the capacity the function has."
  type        = number
  default     = null

  validation {
    condition     = var.fanout_max_in_flight == null || try(var.fanout_max_in_flight >= 1 && var.fanout_max_in_flight <= 1000, false)
    error_message = "fanout_max_in_flight must be between 1 and 1000."
  }
}
