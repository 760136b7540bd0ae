# The role the worker federates into. No IAM user and no access key: the function trades its Google
# ID token at STS (AssumeRoleWithWebIdentity) for short-lived credentials. Both policies say what
# `python -m worker trust-policy` prints (worker/policies.py); tests hold them equal.

# AWS maps accounts.google.com:aud to the token's azp (the service account's unique ID),
# :oaud to its aud (the audience the function asks for) and :sub to its sub.
data "aws_iam_policy_document" "trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = ["accounts.google.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "accounts.google.com:aud"
      values   = [var.service_account_unique_id]
    }
    condition {
      test     = "StringEquals"
      variable = "accounts.google.com:oaud"
      values   = [var.audience]
    }
    condition {
      test     = "StringEquals"
      variable = "accounts.google.com:sub"
      values   = [var.service_account_unique_id]
    }
  }
}

# Read only, and only under the configured prefixes.
data "aws_iam_policy_document" "read_parquet" {
  statement {
    sid       = "ListThePrefixes"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = ["arn:aws:s3:::${var.data_bucket}"]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [for p in var.prefixes : "${p}*"]
    }
  }
  statement {
    sid       = "ReadTheObjects"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [for p in var.prefixes : "arn:aws:s3:::${var.data_bucket}/${p}*"]
  }
}

resource "aws_iam_role" "worker" {
  name                 = var.role_name
  description          = "Assumed by Google service account ${var.service_account_email} (Parquet summary worker)"
  max_session_duration = 3600
  assume_role_policy   = data.aws_iam_policy_document.trust.json
}

resource "aws_iam_role_policy" "read_parquet" {
  name   = "read-parquet"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.read_parquet.json
}
