#!/usr/bin/env bash
# The AWS half of the CLI path: the IAM role the worker federates into, with the trust policy and the
# least-privilege S3 policy that `python -m worker trust-policy` prints. No IAM user, no access key.
# Idempotent: a second run finds both policies equal and changes nothing. Prints the role ARN last.
#
#   ROLE_NAME=parquet-summary UNIQUE_ID=1047... AUDIENCE=//iam.amazonaws.com/parquet-summary \
#   DATA_BUCKET=my-bucket DATA_PREFIXES="events/ exports/" deploy/cli/aws-role.sh
#
# AWS credentials of the deploying user come from the AWS CLI's usual sources (profile, SSO, environment).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/cli/lib.sh
source "$here/lib.sh"

main() {
  need_command aws "the AWS CLI (https://aws.amazon.com/cli/)"
  need_command python3 "Python 3 (to print the policies with python -m worker trust-policy)"
  need_var ROLE_NAME "the IAM role to create"
  need_var UNIQUE_ID "the service account's numeric unique ID (gcloud iam service-accounts describe EMAIL --format='value(uniqueId)')"
  need_var AUDIENCE "the ID token audience (ID_TOKEN_AUDIENCE of the function)"
  need_var DATA_BUCKET "the S3 bucket the worker may read"
  [[ "$UNIQUE_ID" =~ ^[0-9]{21}$ ]] || die "UNIQUE_ID must be the service account's 21-digit unique ID, not '$UNIQUE_ID'"
  aws sts get-caller-identity >/dev/null 2>&1 \
    || die "the AWS CLI has no working credentials: run 'aws configure' or 'aws sso login' first"

  local args=(--unique-id "$UNIQUE_ID" --audience "$AUDIENCE" --bucket "$DATA_BUCKET") prefix
  for prefix in ${DATA_PREFIXES:-}; do args+=(--prefix "$prefix"); done
  local policies trust permissions
  policies=$(PYTHONPATH="$REPO" python3 -m worker trust-policy "${args[@]}")
  trust=$(json_get "$policies" trust_policy)
  permissions=$(json_get "$policies" permissions_policy)

  local out current
  if out=$(aws iam get-role --role-name "$ROLE_NAME" --query Role.AssumeRolePolicyDocument --output json 2>&1); then
    current=$out
    if same_json "$current" "$trust"; then
      say "role $ROLE_NAME: trust policy unchanged"
    else
      aws iam update-assume-role-policy --role-name "$ROLE_NAME" --policy-document "$trust"
      say "role $ROLE_NAME: trust policy updated"
    fi
  elif [[ "$out" == *NoSuchEntity* ]]; then
    aws iam create-role --role-name "$ROLE_NAME" --assume-role-policy-document "$trust" \
      --max-session-duration 3600 --description "Assumed by Google service account $UNIQUE_ID (Parquet summary worker)" >/dev/null
    say "role $ROLE_NAME: created"
  else
    die "cannot read role $ROLE_NAME: $out"
  fi

  if current=$(aws iam get-role-policy --role-name "$ROLE_NAME" --policy-name read-parquet \
                 --query PolicyDocument --output json 2>/dev/null) && same_json "$current" "$permissions"; then
    say "role $ROLE_NAME: policy read-parquet unchanged"
  else
    aws iam put-role-policy --role-name "$ROLE_NAME" --policy-name read-parquet --policy-document "$permissions"
    say "role $ROLE_NAME: policy read-parquet written"
  fi
  aws iam get-role --role-name "$ROLE_NAME" --query Role.Arn --output text
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then main "$@"; fi
