"""IAM policies for the federated role: the trust policy and least-privilege S3 access.

Pure and the single source of truth: the local stack and deploy/ both build the role from
these functions.
"""

from __future__ import annotations

from collections.abc import Iterable

from worker.claims import PROVIDER


def trust_policy(unique_id: str, audience: str) -> dict:
    """The role trust policy for one Google service account and one ID-token audience.

    AWS maps ``accounts.google.com:aud`` to the token's ``azp`` claim (the service
    account's numeric unique ID) and ``accounts.google.com:oaud`` to its ``aud`` claim.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Federated": PROVIDER},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                f"{PROVIDER}:aud": unique_id,
                f"{PROVIDER}:oaud": audience,
                f"{PROVIDER}:sub": unique_id,
            }},
        }],
    }


def permissions_policy(bucket: str, prefixes: Iterable[str]) -> dict:
    """Read-only access to ``bucket`` limited to ``prefixes`` (list with an s3:prefix condition, get objects)."""
    prefixes = sorted(set(prefixes)) or [""]
    partition = "aws"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListThePrefixes",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:{partition}:s3:::{bucket}",
                "Condition": {"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
            },
            {
                "Sid": "ReadTheObjects",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [f"arn:{partition}:s3:::{bucket}/{p}*" for p in prefixes],
            },
        ],
    }
