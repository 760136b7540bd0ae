output "role_arn" {
  description = "The IAM role the worker assumes (AWS_ROLE_ARN)."
  value       = aws_iam_role.worker.arn
}

output "trust_policy" {
  description = "The role's trust policy (JSON)."
  value       = data.aws_iam_policy_document.trust.json
}

output "permissions_policy" {
  description = "The role's S3 read policy (JSON)."
  value       = data.aws_iam_policy_document.read_parquet.json
}
