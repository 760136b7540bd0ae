"""The error taxonomy: one base class, one leaf per outcome a caller must tell apart.

Every leaf carries a stable ``code`` that the result message reports and a ``retryable``
flag that decides the Pub/Sub contract: retryable errors are raised out of the function
(answer 500, Pub/Sub redelivers); permanent ones are answered with one error result and
acknowledged. Which AWS error codes are retryable is data, kept in the tables below and
consulted only through :func:`classify_aws_error`.
"""

from __future__ import annotations

from collections.abc import Sequence


class WorkerError(Exception):
    """Base of every error the worker reports in a result."""

    code = "internal"
    retryable = False

    def __init__(self, message: str, *, problems: Sequence[str] = (), details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.problems = list(problems)
        self.details = dict(details or {})

    def to_dict(self) -> dict:
        """The ``error`` object of a result message."""
        out: dict = {"code": self.code, "message": self.message, "retryable": self.retryable}
        if self.problems:
            out["problems"] = self.problems
        if self.details:
            out["details"] = self.details
        return out


class ConfigError(WorkerError):
    """Raised at start when a required setting is missing or malformed."""

    code = "config"


class InvalidJob(WorkerError):
    """Raised when a message is not a valid job: not JSON, not an object, or against the schema."""

    code = "invalid_job"


class Forbidden(WorkerError):
    """Raised when the bucket is outside ALLOWED_BUCKETS or AWS denies access to it."""

    code = "forbidden"


class NotFound(WorkerError):
    """Raised when the bucket does not exist or the prefix holds no Parquet object."""

    code = "not_found"


class FederationFailed(WorkerError):
    """Raised when the ID token or the STS exchange fails in a way a retry cannot fix."""

    code = "federation_failed"


class DeadlineExceeded(WorkerError):
    """Raised when a job stops before its deadline (JOB_DEADLINE_SECONDS); details say how far it got."""

    code = "deadline_exceeded"


class Retryable(WorkerError):
    """Raised for faults a later attempt can get past: throttling, 5xx, network, STS unavailable."""

    code = "unavailable"
    retryable = True


class Throttled(Retryable):
    """Raised when AWS throttles the job's requests beyond the client's own retries."""

    code = "throttled"


# AWS error codes, by what they mean for a job. Throttling and transient codes follow
# botocore's standard retry mode (botocore/retries/standard.py); they reach us only once
# botocore's own retries are spent, so the job is handed back to Pub/Sub.
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException",
    "TransactionInProgressException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "LimitExceededException", "RequestThrottled", "SlowDown", "PriorRequestNotComplete",
    "EC2ThrottledException",
})
TRANSIENT_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "InternalError", "InternalFailure",
    "ServiceUnavailable", "IDPCommunicationError",
})
TRANSIENT_STATUS = frozenset({500, 502, 503, 504})
FORBIDDEN_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "AllAccessDisabled", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "AccountProblem", "403",
})
NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "404", "NotFound"})
# STS AssumeRoleWithWebIdentity: what to change, by error code (never retryable).
FEDERATION_HINTS = {
    "IDPRejectedClaim": "the role's trust policy did not accept the token's claims: check "
    "accounts.google.com:aud (= the token's azp, the service account's unique ID), "
    "accounts.google.com:oaud (= the token's aud, ID_TOKEN_AUDIENCE) and accounts.google.com:sub",
    "InvalidIdentityToken": "AWS could not validate the ID token (issuer, signature or audience)",
    "ExpiredTokenException": "the ID token had expired when STS received it",
    "AccessDenied": "the role does not trust accounts.google.com for this service account",
    "ValidationError": "the AssumeRoleWithWebIdentity request was malformed (role ARN, session name or duration)",
    "InvalidParameterValue": "the AssumeRoleWithWebIdentity request had an invalid parameter",
    "MalformedPolicyDocument": "the session policy was malformed",
    "PackedPolicyTooLarge": "the session policy was too large",
    "RegionDisabledException": "STS is not activated in this region for the account",
}


def classify_aws_error(code: str, status: int | None, message: str, *, operation: str) -> WorkerError:
    """Map an AWS error (code, HTTP status) from ``operation`` to the worker's taxonomy."""
    text = f"{operation} failed: {code}: {message}".rstrip(": ")
    if code in THROTTLING_CODES or status == 429:
        return Throttled(text, details={"aws_code": code})
    if code in TRANSIENT_CODES or (status is not None and status in TRANSIENT_STATUS):
        return Retryable(text, details={"aws_code": code})
    if operation == "AssumeRoleWithWebIdentity":
        hint = FEDERATION_HINTS.get(code, "STS refused the role exchange")
        return FederationFailed(f"{text} ({hint})", details={"aws_code": code})
    if code in FORBIDDEN_CODES or status == 403:
        return Forbidden(text, details={"aws_code": code})
    if code in NOT_FOUND_CODES:
        return NotFound(text, details={"aws_code": code})
    # Anything else from AWS is unexpected: treat it as permanent so one odd job cannot
    # loop forever, and say exactly what AWS answered.
    return WorkerError(text, details={"aws_code": code})
