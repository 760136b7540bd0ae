output "role_arn" {
  description = "The IAM role the worker assumes (AWS_ROLE_ARN)."
  value       = module.aws_role.role_arn
}

output "service_account" {
  description = "The function's service account and its unique ID (the trust policy's aud and sub)."
  value       = { email = google_service_account.worker.email, unique_id = google_service_account.worker.unique_id }
}

output "id_token_audience" {
  description = "ID_TOKEN_AUDIENCE (the trust policy's oaud)."
  value       = local.audience
}

output "jobs_topic" {
  value = google_pubsub_topic.jobs.id
}

output "results_topic" {
  value = google_pubsub_topic.results.id
}

output "results_subscription" {
  value = google_pubsub_subscription.results.id
}

output "dead_letter_topic" {
  value = google_pubsub_topic.dead_letter.id
}

output "first_job_command" {
  description = "Publish a first job, then (after a few seconds) read its result."
  value = join(" && \\\n  ", [
    "gcloud pubsub topics publish ${google_pubsub_topic.jobs.name} --project=${var.project} --message='${module.plan.first_job_json}'",
    "gcloud pubsub subscriptions pull ${google_pubsub_subscription.results.name} --project=${var.project} --auto-ack --limit=10",
  ])
}

output "build_service_account" {
  description = "The account Cloud Build builds the function as."
  value       = local.build_account
}

output "http_function_url" {
  description = "The HTTP entry point's URL (authenticated: an ID token of an http_invokers principal); null unless http_function."
  value       = one(google_cloudfunctions2_function.http[*].service_config[0].uri)
}

output "fanout" {
  description = "What fan-out uses (the function's PARTIALS_BUCKET, SHARD_TOPIC, SHARD_DEAD_LETTER_TOPIC, FIRESTORE_DATABASE, RUNS_COLLECTION, FANOUT_MAX_IN_FLIGHT, RUNS_RETENTION_DAYS); empty when fanout_enabled is false."
  value       = module.plan.fanout_environment
}
