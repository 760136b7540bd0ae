# AWS half: the role the worker federates into. No IAM user and no access key: the function
# trades its Google ID token at STS (AssumeRoleWithWebIdentity) for short-lived credentials.
# Both policies say what `python -m worker trust-policy` prints (worker/policies.py); a test holds them equal.

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
      values   = [google_service_account.worker.unique_id]
    }
    condition {
      test     = "StringEquals"
      variable = "accounts.google.com:oaud"
      values   = [local.audience]
    }
    condition {
      test     = "StringEquals"
      variable = "accounts.google.com:sub"
      values   = [google_service_account.worker.unique_id]
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
      values   = [for p in local.prefixes : "${p}*"]
    }
  }
  statement {
    sid       = "ReadTheObjects"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [for p in local.prefixes : "arn:aws:s3:::${var.data_bucket}/${p}*"]
  }
}

resource "aws_iam_role" "worker" {
  name                 = local.role_name
  description          = "Assumed by Google service account ${google_service_account.worker.email} (Parquet summary worker)"
  max_session_duration = 3600
  assume_role_policy   = data.aws_iam_policy_document.trust.json
}

resource "aws_iam_role_policy" "read_parquet" {
  name   = "read-parquet"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.read_parquet.json
}
