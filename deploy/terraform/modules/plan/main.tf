locals {
  # Sorted byte-wise (as `LC_ALL=C sort -u` in deploy/cli/deploy.sh), so both paths pick the same default.
  prefixes       = length(var.data_prefixes) > 0 ? sort(distinct(var.data_prefixes)) : [""]
  default_prefix = local.prefixes[0]

  # Each branch is encoded on its own: a conditional (or coalesce) over objects of different shapes
  # (a job with a list of columns, a map of reply_attributes) has no common type and fails.
  default_job = jsonencode({ bucket = var.data_bucket, prefix = local.default_prefix })
  given_job = (
    var.scheduled_job == null ? null :
    can(tostring(var.scheduled_job)) ? jsonencode(jsondecode(var.scheduled_job)) :
    jsonencode(var.scheduled_job)
  )
  scheduled_job_json = var.schedule == null ? null : coalesce(local.given_job, local.default_job)

  # What the function needs and nothing else: the files .gcloudignore lets through to
  # `gcloud functions deploy --source=.` (a test compares both lists). fileset uses doublestar v1,
  # which allows no "/" inside {...}: one pattern per folder.
  included = setunion(
    fileset(var.source_dir, "main.py"),
    fileset(var.source_dir, "requirements.txt"),
    fileset(var.source_dir, "schemas/**"),
    fileset(var.source_dir, "worker/**"),
  )
  excluded = setunion(
    fileset(var.source_dir, "worker/devstack/**"),
    fileset(var.source_dir, "worker/tools/**"),
    fileset(var.source_dir, "{schemas,worker}/**/__pycache__/**"),
    fileset(var.source_dir, "{schemas,worker}/**/*.pyc"),
  )
  source_files = sort(setsubtract(local.included, local.excluded))

  # Cloud Storage bucket names are global and at most 63 characters; project (<= 30) + name (<= 30)
  # + "-source" can reach 68, so a long one is cut and given a digest of the full name (deploy/cli/deploy.sh
  # cuts the partials bucket's name the same way).
  bucket_full = { for suffix in ["source", "partials"] : suffix => "${var.project}-${var.name}-${suffix}" }
  buckets = { for suffix, full in local.bucket_full : suffix => (
    length(full) <= 63 ? full : "${replace(substr("${var.project}-${var.name}", 0, 54), "/[-.]+$/", "")}-${substr(sha256(full), 0, 8)}"
  ) }
  source_bucket = local.buckets["source"]

  names = {
    worker_account    = var.name
    push_account      = "${substr(var.name, 0, 25)}-push"
    build_account     = "${substr(var.name, 0, 24)}-build"
    function          = var.name
    http_function     = "${var.name}-http"
    jobs_topic        = "${var.name}-jobs"
    results_topic     = "${var.name}-results"
    dead_letter_topic = "${var.name}-dead-letter"
    scheduler_job     = "${var.name}-schedule"
    source_bucket     = local.source_bucket
    # Fan-out: shard messages, their dead letters (each topic with a push subscription of the same name),
    # and the bucket of partial summaries.
    shard_topic             = "${var.name}-shards"
    shard_dead_letter_topic = "${var.name}-shards-dead-letter"
    partials_bucket         = local.buckets["partials"]
  }

  # The function's fan-out settings (the names worker/config.py reads); none when fan-out is off, so the
  # worker runs every job on one instance. Topic IDs are the full names the Pub/Sub resources export.
  fanout_environment = var.fanout_enabled ? {
    PARTIALS_BUCKET         = local.names.partials_bucket
    SHARD_TOPIC             = "projects/${var.project}/topics/${local.names.shard_topic}"
    SHARD_DEAD_LETTER_TOPIC = "projects/${var.project}/topics/${local.names.shard_dead_letter_topic}"
    FIRESTORE_DATABASE      = var.firestore_database
    RUNS_COLLECTION         = var.runs_collection
    FANOUT_MAX_IN_FLIGHT    = tostring(coalesce(var.fanout_max_in_flight, var.max_instances * var.concurrency))
    RUNS_RETENTION_DAYS     = tostring(var.runs_retention_days)
  } : tomap({})

  # The one grant the worker has on Firestore, narrowed by an IAM condition to the runs database.
  firestore_database_name = "projects/${var.project}/databases/${var.firestore_database}"
  firestore_condition     = "resource.name == \"${local.firestore_database_name}\""

  # The partials bucket's lifecycle, as `gcloud storage buckets update --lifecycle-file` takes it: the same days
  # as the runs' records.
  partials_lifecycle = { rule = [{ action = { type = "Delete" }, condition = { age = var.runs_retention_days } }] }

  # The TTL policies: the field the worker writes (worker/retention.py) in each collection group of a run's
  # records: the runs collection, and the subcollections of its documents.
  ttl = { field = "expire_at", collection_groups = [var.runs_collection, "shards", "merges"] }
}
