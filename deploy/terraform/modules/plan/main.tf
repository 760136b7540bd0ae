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
    fileset(var.source_dir, "{schemas,worker}/**/__pycache__/**"),
    fileset(var.source_dir, "{schemas,worker}/**/*.pyc"),
  )
  source_files = sort(setsubtract(local.included, local.excluded))

  # Cloud Storage bucket names are global and at most 63 characters; project (<= 30) + name (<= 30)
  # + "-source" can reach 68, so a long one is cut and given a digest of the full name.
  bucket_full   = "${var.project}-${var.name}-source"
  source_bucket = length(local.bucket_full) <= 63 ? local.bucket_full : "${replace(substr("${var.project}-${var.name}", 0, 54), "/[-.]+$/", "")}-${substr(sha256(local.bucket_full), 0, 8)}"

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
  }
}
