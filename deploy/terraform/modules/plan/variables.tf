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
