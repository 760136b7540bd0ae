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
    condition     = length(local.names.source_bucket) >= 3 && length(local.names.source_bucket) <= 63 && can(regex("^[a-z0-9][a-z0-9._-]*[a-z0-9]$", local.names.source_bucket))
    error_message = "The source bucket name must be 3-63 characters and start and end with a letter or digit."
  }
  precondition {
    # A Cloud Run functions (2nd gen) name is also its Cloud Run service's: at most 49 characters.
    condition     = length(local.names.http_function) <= 49
    error_message = "Function names are at most 49 characters."
  }
}
