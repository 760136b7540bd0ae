variable "project" {
  description = "Google Cloud project ID."
  type        = string
}

variable "name" {
  description = "Base name of every resource (6-30 characters, checked by the root module)."
  type        = string
}

variable "data_bucket" {
  description = "The S3 bucket the worker may read."
  type        = string
}

variable "data_prefixes" {
  description = "Key prefixes the role may read; [] or [\"\"] means the whole bucket."
  type        = list(string)
  default     = []
}

variable "schedule" {
  description = "Cron of the scheduler job; null for none."
  type        = string
  default     = null
}

variable "scheduled_job" {
  description = "The job the scheduler publishes: an object, a JSON object string, or null for the default job."
  type        = any
  default     = null
}

variable "source_dir" {
  description = "The repository root: where main.py, requirements.txt, schemas/ and worker/ are."
  type        = string
}

variable "fanout_enabled" {
  description = "Whether the deployment includes fan-out (the runs database, the partials bucket, the shard topics)."
  type        = bool
  default     = true
}

variable "firestore_database" {
  description = "ID of the Firestore database that holds runs."
  type        = string
  default     = "(default)"
}

variable "runs_collection" {
  description = "Top-level Firestore collection of runs."
  type        = string
  default     = "summary-runs"
}

variable "max_instances" {
  description = "The function's max instances (times concurrency: the default cap on a run's shards in flight)."
  type        = number
  default     = 10
}

variable "concurrency" {
  description = "Requests one instance serves at once: with max_instances, the capacity a run's cap is held to."
  type        = number
  default     = 8
}

variable "fanout_max_in_flight" {
  description = "A run's cap on shards in flight, and the most a job may ask; null: max_instances x concurrency."
  type        = number
  default     = null
}

variable "runs_retention_days" {
  description = "Days a run's Firestore records and its partial summaries are kept."
  type        = number
  default     = 30
}
