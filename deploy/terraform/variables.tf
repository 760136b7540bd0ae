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
  description = "Most instances at once: an upper bound on parallel jobs and on S3 request rate."
  type        = number
  default     = 10
}

variable "max_delivery_attempts" {
  description = "Deliveries of a job before it moves to the dead-letter topic (5 to 100)."
  type        = number
  default     = 5

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
  description = "The job the scheduler publishes (schemas/job.schema.json), such as { bucket = \"b\", prefix_template = \"events/dt={date-1d:%Y-%m-%d}/\" }; null publishes {bucket = data_bucket, prefix = the first of data_prefixes}."
  type        = any
  default     = null
}

variable "build_service_account" {
  description = "Service account email Cloud Build uses to build the function; null for the project's default."
  type        = string
  default     = null
}

variable "kms_key_name" {
  description = "Cloud KMS key that encrypts the three topics (customer-managed); null for Google-managed encryption."
  type        = string
  default     = null
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
