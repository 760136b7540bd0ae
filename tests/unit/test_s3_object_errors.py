"""Pure parts of S3 reads: which refusal of one object is which error, and where S3 says a bucket lives."""

import pytest
from urllib3 import HTTPHeaderDict

from worker.adapters.aws import region_named_by
from worker.devstack.proxy import wrong_region_answer
from worker.errors import (
    Forbidden,
    NotFound,
    ObjectArchived,
    ObjectChanged,
    ObjectDenied,
    ObjectEncrypted,
    Retryable,
    Throttled,
    Unavailable,
    WorkerError,
    classify_aws_error,
)

from .support import REFRESH_FAULTS, RefreshFails

SSE_C_MESSAGE = ("The object was stored using a form of Server Side Encryption. The correct parameters must be "
                 "provided to retrieve the object.")


@pytest.mark.parametrize(("code", "status", "message", "kind", "words"), [
    ("InvalidObjectState", 403, "The operation is not valid for the object's storage class", ObjectArchived,
     "archived in GLACIER: restore it"),
    ("AccessDenied", 403, "User: arn:aws:sts::1:assumed-role/r/s is not authorized to perform: kms:Decrypt",
     ObjectEncrypted, "kms:Decrypt"),
    ("KMS.NotFoundException", 400, "Invalid keyId", ObjectEncrypted, "AWS KMS key"),
    ("InvalidRequest", 400, SSE_C_MESSAGE, ObjectEncrypted, "SSE-C"),
    ("InvalidArgument", 400, "Requests specifying Server Side Encryption with Customer provided keys must provide "
     "a valid encryption algorithm.", ObjectEncrypted, "SSE-C"),
    ("InvalidRange", 416, "The requested range is not satisfiable", ObjectChanged, "shorter than when it was listed"),
    ("NoSuchKey", 404, "The specified key does not exist.", ObjectChanged, "deleted after it was listed"),
    ("AccessDenied", 403, "Access Denied", ObjectDenied, "access denied to this object"),
    # Refusals of the request, its credentials, the bucket or the account: the job's, not this object's.
    ("SignatureDoesNotMatch", 403, "The request signature we calculated does not match", Forbidden,
     "SignatureDoesNotMatch"),
    ("AllAccessDisabled", 403, "All access to this Amazon S3 resource has been disabled.", Forbidden,
     "AllAccessDisabled"),
    ("RequestTimeTooSkewed", 403, "The difference between the request time and the current time is too large.",
     Forbidden, "RequestTimeTooSkewed"),
    ("ExpiredToken", 400, "The provided token has expired.", Unavailable, "credentials expired"),
    ("SlowDown", 503, "Please reduce your request rate.", Throttled, "SlowDown"),
    ("InternalError", 500, "We encountered an internal error.", Unavailable, "InternalError"),
    ("KMS.KMSInvalidStateException", 503, "try again", Unavailable, "KMS"),
    ("InvalidRequest", 400, "Something else entirely", WorkerError, "Something else"),
])
def test_a_refused_object_read_is_that_objects_with_a_specific_message(code, status, message, kind, words):
    error = classify_aws_error(code, status, message, operation="GetObject",
                               storage_class="GLACIER" if code == "InvalidObjectState" else None)
    assert type(error) is kind
    assert words in error.message
    assert error.details["aws_code"] == code
    assert error.retryable == issubclass(kind, Retryable)
    # Only a refusal of the object itself lets the job skip it; any other ends the delivery by its class.
    assert error.object_fault == (kind in (ObjectDenied, ObjectArchived, ObjectEncrypted, ObjectChanged))


def test_per_object_kinds_keep_the_result_codes_the_job_counts():
    assert issubclass(ObjectDenied, Forbidden) and ObjectDenied.code == "forbidden"
    assert issubclass(ObjectArchived, Forbidden) and ObjectArchived.code == "forbidden"
    assert issubclass(ObjectEncrypted, Forbidden) and ObjectEncrypted.code == "forbidden"
    assert issubclass(ObjectChanged, NotFound) and ObjectChanged.code == "not_found"


def test_listing_refusals_stay_job_level():
    denied = classify_aws_error("AccessDenied", 403, "Access Denied", operation="ListObjectsV2")
    assert type(denied) is Forbidden and "this object" not in denied.message
    assert type(classify_aws_error("NoSuchBucket", 404, "no", operation="ListObjectsV2")) is NotFound


@pytest.mark.parametrize("style", ["redirect", "malformed"])
def test_the_region_s3_names_is_found_in_its_answer(style):
    status, body = wrong_region_answer("b", "eu-west-1", "us-east-1", style=style)
    code = "PermanentRedirect" if style == "redirect" else "AuthorizationHeaderMalformed"
    assert region_named_by(status, code, HTTPHeaderDict(), body) == "eu-west-1"  # from the body
    header = HTTPHeaderDict({"X-Amz-Bucket-Region": "ap-southeast-2"})
    assert region_named_by(status, code, header, b"") == "ap-southeast-2"  # from the header (as HEAD gets it)


@pytest.mark.parametrize(("status", "code", "region"), [
    (400, "InvalidRequest", "eu-west-1"),  # not a region refusal
    (403, "AccessDenied", "eu-west-1"),
    (301, "PermanentRedirect", "not a region/../x"),  # only a region's shape is taken
    (301, "PermanentRedirect", ""),
])
def test_no_region_is_taken_from_other_answers(status, code, region):
    headers = HTTPHeaderDict({"x-amz-bucket-region": region} if region else {})
    assert region_named_by(status, code, headers, b"") is None


# -- issue 18: a credential refresh that fails inside a read is the job's fault, classified ---------------------


@pytest.mark.parametrize(("make", "kind"), [(make, kind) for _, make, kind in REFRESH_FAULTS],
                         ids=[name for name, _, _ in REFRESH_FAULTS])
def test_a_refresh_that_fails_inside_a_read_is_the_jobs_transient_unless_sts_refuses(make, kind):
    """botocore re-raises a failed mandatory refresh to the reader thread signing a ranged GET: the read raises the
    worker's error for it (never botocore's, which a decoder could take for a bad object), the same one the job's
    start gives (``ensure_credentials``)."""
    fails = RefreshFails(make)
    with pytest.raises(WorkerError) as caught:
        fails.fetch("d/x.parquet", 0, 3)
    assert type(caught.value) is kind and not caught.value.object_fault
    assert caught.value.retryable == issubclass(kind, Retryable)
    with pytest.raises(kind):
        fails.storage.ensure_credentials()
    assert fails.refreshes == 3  # the first credentials, then one failed refresh for each

