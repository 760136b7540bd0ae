"""The error taxonomy: one base class, one leaf per outcome a caller must tell apart.

Every leaf carries a stable ``code`` that the result message reports and a ``retryable``
flag that decides the Pub/Sub contract: retryable errors are raised out of the function
(answer 500, Pub/Sub redelivers); permanent ones are answered with one error result and
acknowledged. Which AWS error codes are retryable is data, kept in the tables below and
consulted only through :func:`classify_aws_error`. The HTTP status that answers each code is the
class's ``http_status``, looked up by code in :func:`http_status_of`.

One name per idea: a class is named for the ``code`` its result carries (``Unavailable`` for
``unavailable``), ``Retryable`` names the retry contract (``retryable: true``), and signals that
never reach a result are not errors of this module (``worker.summary.StoppedAtDeadline``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from worker.claims import PROVIDER

if TYPE_CHECKING:
    from worker.jobs import JobRef


class WorkerError(Exception):
    """Base of every error the worker reports in a result."""

    code = "internal"
    retryable = False
    http_status = 500  # what the HTTP entry point answers a result with this code
    # True for S3's refusal of one object (the Object* leaves): met while reading that object, it is skipped with
    # the reason and the job goes on. Any other error ends the delivery (see worker.summary.is_objects_own).
    object_fault = False

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
    """Raised when a message is not a valid job: not JSON, not an object, or against the schema.

    The one class for that idea (code ``invalid_job``): where the message was parsed, ``ref`` holds what is known
    of it (job ID, message ID, routing) to key its error result; ``problems`` lists every problem, at least the
    message itself.
    """

    code = "invalid_job"
    http_status = 400

    def __init__(self, message: str, ref: JobRef | None = None, *, problems: Sequence[str] = (),
                 details: dict | None = None):
        super().__init__(message, problems=problems or [message], details=details)
        self.ref = ref


class Forbidden(WorkerError):
    """Raised when the bucket is outside ALLOWED_BUCKETS or AWS denies access to it."""

    code = "forbidden"
    http_status = 403


class NotFound(WorkerError):
    """Raised when the bucket does not exist or the prefix holds no Parquet object."""

    code = "not_found"
    http_status = 404


class ObjectDenied(Forbidden):
    """Raised when S3 denies the worker's role one object (AccessDenied on its GetObject): the job skips it."""

    object_fault = True


class ObjectArchived(Forbidden):
    """Raised when one object is in an archive storage class (S3 InvalidObjectState): it must be restored first."""

    object_fault = True


class ObjectEncrypted(Forbidden):
    """Raised when one object's encryption keeps the worker out: a KMS key its role cannot use, or SSE-C."""

    object_fault = True


class ObjectChanged(NotFound):
    """Raised when one object was deleted or shrank between its listing and its read."""

    object_fault = True


class FederationFailed(WorkerError):
    """Raised when the ID token or the STS exchange fails in a way a retry cannot fix."""

    code = "federation_failed"
    http_status = 502


class DeadlineExceeded(WorkerError):
    """Raised when a job stops before its deadline (JOB_DEADLINE_SECONDS); details say how far it got.

    The error a job answers with (code ``deadline_exceeded``). Reading signals the deadline with
    ``worker.summary.StoppedAtDeadline`` (where it stopped, not an error), which the job turns into this.
    """

    code = "deadline_exceeded"
    http_status = 422


class Incomplete(WorkerError):
    """Raised when a fanned-out run could not read some key ranges (more than its tolerated share); details name
    them, and ``python -m worker redrive RUN_ID`` reads only those again."""

    code = "incomplete"


class Retryable(WorkerError):
    """The faults a later attempt can get past (``retryable`` is true): the function raises them so that Pub/Sub
    redelivers, and HTTP answers 503. Named for that contract, which ``except Retryable`` honours; never raised
    itself: raise the leaf named for the result's code, ``Unavailable`` or ``Throttled``."""

    code = "unavailable"
    retryable = True
    http_status = 503

    def __init__(self, message: str, *, problems: Sequence[str] = (), details: dict | None = None):
        if type(self) is Retryable:
            raise TypeError("Retryable is the category: raise Unavailable or Throttled")
        super().__init__(message, problems=problems, details=details)


class Unavailable(Retryable):
    """Raised for a fault a later attempt can get past that is not throttling: 5xx, network, STS or Pub/Sub or
    Firestore unavailable, an instance too busy. Named for its code, ``unavailable``."""

    code = "unavailable"


class Throttled(Retryable):
    """Raised when AWS throttles the job's requests beyond the client's own retries (code ``throttled``)."""

    code = "throttled"


class Internal(WorkerError):
    """Stands for an unexpected exception (a bug, or a fault nobody classified): answered once, never retried.

    ``incident_id`` names the log entry (Cloud Logging's error-reporting shape) that holds the stack trace;
    the result says only the exception's type, since its text may quote data or addresses.
    """

    code = "internal"

    def __init__(self, exc: BaseException, *, stage: str, incident_id: str):
        super().__init__(f"internal error while {stage} ({type(exc).__name__}); incident {incident_id} in the "
                         "worker's log holds the details",
                         details={"incident_id": incident_id, "stage": stage, "exception": type(exc).__name__})
        self.incident_id = incident_id
        self.stage = stage


class ResultRejected(WorkerError):
    """Raised when Pub/Sub refuses a result message itself (size, attributes, encoding): resending it cannot help."""

    code = "internal"


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
# S3 (or any service but STS) refusing the session's credentials as expired: a redelivery gets fresh ones.
EXPIRED_CREDENTIALS_CODES = frozenset({"ExpiredToken", "TokenRefreshRequired"})
FORBIDDEN_CODES = frozenset({
    "AccessDenied", "AccessDeniedException", "AllAccessDisabled", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "AccountProblem", "403",
})
NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchKey", "404", "NotFound"})
# Reading one object (GetObject/HeadObject): refusals that concern that object only, so the job skips it.
OBJECT_OPERATIONS = frozenset({"GetObject", "HeadObject"})
ARCHIVED_CODES = frozenset({"InvalidObjectState"})
OBJECT_CHANGED_CODES = frozenset({"NoSuchKey", "InvalidRange", "404", "416"})
# Only these refuse the object itself; another 403 (SignatureDoesNotMatch, InvalidAccessKeyId, AllAccessDisabled,
# AccountProblem, RequestTimeTooSkewed...) refuses the request, its credentials, the bucket or the account: the job's.
OBJECT_DENIED_CODES = frozenset({"AccessDenied", "403"})
# S3 answers a request sent to (or signed for) the wrong region with these, naming the bucket's region
# in an x-amz-bucket-region header or a <Region> element; the reader re-signs for it once.
REGION_REDIRECT_CODES = frozenset({"PermanentRedirect", "AuthorizationHeaderMalformed", "301"})
# SSE-C: S3 answers 400 InvalidRequest/InvalidArgument saying the object needs its customer key.
_SSE_C_CODES = frozenset({"InvalidRequest", "InvalidArgument"})
_SSE_C_WORDS = ("server side encryption", "server-side encryption", "customer-provided", "customer provided",
                "encryption key")
# STS AssumeRoleWithWebIdentity: what to change, by error code (never retryable).
FEDERATION_HINTS = {
    "IDPRejectedClaim": "the role's trust policy did not accept the token's claims: check "
    f"{PROVIDER}:aud (= the token's azp, the service account's unique ID), "
    f"{PROVIDER}:oaud (= the token's aud, ID_TOKEN_AUDIENCE) and {PROVIDER}:sub",
    "InvalidIdentityToken": "AWS could not validate the ID token (issuer, signature or audience)",
    "ExpiredTokenException": "the ID token had expired when STS received it",
    "AccessDenied": f"the role does not trust {PROVIDER} for this service account",
    "ValidationError": "the AssumeRoleWithWebIdentity request was malformed (role ARN, session name or duration)",
    "InvalidParameterValue": "the AssumeRoleWithWebIdentity request had an invalid parameter",
    "MalformedPolicyDocument": "the session policy was malformed",
    "PackedPolicyTooLarge": "the session policy was too large",
    "RegionDisabledException": "STS is not activated in this region for the account",
}


def classify_aws_error(code: str, status: int | None, message: str, *, operation: str,
                       storage_class: str | None = None) -> WorkerError:
    """Map an AWS error (code, HTTP status) from ``operation`` to the worker's taxonomy.

    For reads of one object (``OBJECT_OPERATIONS``) a permanent refusal is that object's: archived
    (``storage_class`` from the error body names the class), encrypted out of reach, vanished or shrunk,
    or access denied to that key. Those errors say what to do and have ``object_fault``: the job skips the
    object. A refusal of the request or its credentials (a bad signature, an expired session) is the job's.
    """
    text = f"{operation} failed: {code}: {message}".rstrip(": ")
    if code in THROTTLING_CODES or status == 429:
        return Throttled(text, details={"aws_code": code})
    if code in TRANSIENT_CODES or (status is not None and status in TRANSIENT_STATUS):
        return Unavailable(text, details={"aws_code": code})
    if operation == "AssumeRoleWithWebIdentity":
        hint = FEDERATION_HINTS.get(code, "STS refused the role exchange")
        return FederationFailed(f"{text} ({hint})", details={"aws_code": code})
    if code in EXPIRED_CREDENTIALS_CODES:
        return Unavailable(f"{text} (the session's credentials expired while the job ran)",
                           details={"aws_code": code})
    if operation in OBJECT_OPERATIONS:
        refused = _object_refusal(code, status, message, text, storage_class)
        if refused is not None:
            return refused
    if code in REGION_REDIRECT_CODES or status == 301:
        return WorkerError(f"{text} (the bucket is in another region than the request was signed for, and S3 "
                           "did not say which: set AWS_REGION to the bucket's region)", details={"aws_code": code})
    if code in FORBIDDEN_CODES or status == 403:
        return Forbidden(text, details={"aws_code": code})
    if code in NOT_FOUND_CODES:
        return NotFound(text, details={"aws_code": code})
    # Anything else from AWS is unexpected: treat it as permanent so one odd job cannot
    # loop forever, and say exactly what AWS answered.
    return WorkerError(text, details={"aws_code": code})


def _object_refusal(code: str, status: int | None, message: str, text: str,
                    storage_class: str | None) -> WorkerError | None:
    """The specific error for one object S3 will not serve, or None when the refusal is not about the object."""
    details: dict = {"aws_code": code}
    lowered = message.lower()
    if code in ARCHIVED_CODES:
        if storage_class:
            details["storage_class"] = storage_class
        where = storage_class or "an archive storage class"
        return ObjectArchived(f"archived in {where}: restore it (S3 RestoreObject) and run the job again ({text})",
                              details=details)
    if code.startswith("KMS.") or ((code in FORBIDDEN_CODES or status == 403) and "kms" in lowered):
        return ObjectEncrypted("encrypted with an AWS KMS key the worker's role cannot use: allow the role "
                               f"kms:Decrypt on that key (key policy and IAM policy) ({text})", details=details)
    if code in _SSE_C_CODES and status == 400 and any(word in lowered for word in _SSE_C_WORDS):
        return ObjectEncrypted("encrypted with a customer-provided key (SSE-C): the worker holds no such key and "
                               f"cannot read it; store it with SSE-S3 or SSE-KMS to have it summarized ({text})",
                               details=details)
    if code in OBJECT_CHANGED_CODES or status in (404, 416):
        what = ("shorter than when it was listed" if code == "InvalidRange" or status == 416
                else "deleted after it was listed")
        return ObjectChanged(f"object {what}: it changed while the job ran; run the job again to include it ({text})",
                             details=details)
    if code in OBJECT_DENIED_CODES:
        return ObjectDenied(f"access denied to this object: the worker's role may not s3:GetObject it (IAM policy, "
                            f"bucket policy or object ACL) ({text})", details=details)
    return None


def _http_statuses() -> dict[str, int]:
    """code -> HTTP status, from the classes above (a subclass that keeps its parent's code keeps its status)."""
    table: dict[str, int] = {}
    pending: list[type[WorkerError]] = [WorkerError]
    while pending:
        cls = pending.pop()
        table.setdefault(cls.code, cls.http_status)
        pending += cls.__subclasses__()
    return table


HTTP_STATUS = _http_statuses()


def http_status_of(code: str, retryable: bool) -> int:
    """The HTTP status that answers an error result: ``Retryable.http_status`` (503) for any retryable fault, else
    the status of the class with that ``code`` (500 for a code no class has)."""
    if retryable:
        return Retryable.http_status
    return HTTP_STATUS.get(code, WorkerError.http_status)
