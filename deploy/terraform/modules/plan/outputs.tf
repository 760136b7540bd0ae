output "prefixes" {
  description = "The data prefixes, sorted and distinct; [\"\"] (the whole bucket) when none are given."
  value       = local.prefixes
}

output "default_prefix" {
  description = "The prefix of the default scheduled job and of the first job command: the first of the sorted prefixes."
  value       = local.default_prefix
}

output "scheduled_job_json" {
  description = "The scheduler job's message body (JSON); null when there is no schedule."
  value       = local.scheduled_job_json

  precondition {
    condition     = local.scheduled_job_json == null || can(keys(jsondecode(local.scheduled_job_json)))
    error_message = "scheduled_job must be a job object (schemas/job.schema.json) or a JSON string of one."
  }
}

output "first_job_json" {
  description = "A first job to publish by hand: the whole default prefix."
  value       = local.default_job
}

output "source_files" {
  description = "The files zipped as the function's source, relative to source_dir."
  value       = local.source_files

  precondition {
    condition     = contains(local.source_files, "main.py") && contains(local.source_files, "requirements.txt")
    error_message = "source_dir has no main.py or requirements.txt: it must be the repository root."
  }
}

output "names" {
  description = "Every resource name, within its service's limits."
  value       = local.names

  precondition {
    condition = alltrue([for n in ["worker_account", "push_account", "build_account"] :
    can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", local.names[n]))])
    error_message = "Service account IDs are 6-30 lowercase letters, digits or hyphens."
  }
  precondition {
    condition = alltrue([for b in values(local.buckets) :
    length(b) >= 3 && length(b) <= 63 && can(regex("^[a-z0-9][a-z0-9._-]*[a-z0-9]$", b))])
    error_message = "Bucket names must be 3-63 characters and start and end with a letter or digit."
  }
  precondition {
    # A Cloud Run functions (2nd gen) name is also its Cloud Run service's: at most 49 characters.
    condition     = length(local.names.http_function) <= 49
    error_message = "Function names are at most 49 characters."
  }
}

output "fanout_environment" {
  description = "The function's fan-out settings (PARTIALS_BUCKET, SHARD_TOPIC, ...); empty when fan-out is off."
  value       = local.fanout_environment
}

output "firestore_database_name" {
  description = "The runs database's full name, projects/P/databases/ID."
  value       = local.firestore_database_name
}

output "firestore_condition" {
  description = "The IAM condition that limits the worker's Firestore role to the runs database."
  value       = local.firestore_condition
}

output "partials_lifecycle" {
  description = "The partials bucket's lifecycle rule, in the JSON form gcloud takes."
  value       = local.partials_lifecycle
}

output "ttl" {
  description = "The Firestore TTL policies: the field (expire_at) and the collection groups of a run's records."
  value       = local.ttl
}
