# AWS half: the role the worker federates into (modules/aws_role). AWS credentials of the deploying
# user come from the usual AWS CLI sources (a profile, SSO, environment); none are written here, and
# the function itself never has any.
module "aws_role" {
  source = "./modules/aws_role"

  role_name                 = local.role_name
  service_account_email     = google_service_account.worker.email
  service_account_unique_id = google_service_account.worker.unique_id
  audience                  = local.audience
  data_bucket               = var.data_bucket
  prefixes                  = module.plan.prefixes
}

# Where an earlier version of this configuration kept the role at the root.
moved {
  from = aws_iam_role.worker
  to   = module.aws_role.aws_iam_role.worker
}

moved {
  from = aws_iam_role_policy.read_parquet
  to   = module.aws_role.aws_iam_role_policy.read_parquet
}
