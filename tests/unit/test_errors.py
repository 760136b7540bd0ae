"""The error taxonomy and the one table that decides what is retryable."""

import pytest

from worker.errors import (
    FederationFailed,
    Forbidden,
    NotFound,
    ObjectChanged,
    Retryable,
    Throttled,
    WorkerError,
    classify_aws_error,
)


@pytest.mark.parametrize(("code", "status", "operation", "expected", "retryable"), [
    ("SlowDown", 503, "GetObject", Throttled, True),
    ("ThrottlingException", 400, "AssumeRoleWithWebIdentity", Throttled, True),
    ("Whatever", 429, "ListObjectsV2", Throttled, True),
    ("InternalError", 500, "GetObject", Retryable, True),
    ("ServiceUnavailable", 503, "ListObjectsV2", Retryable, True),
    ("IDPCommunicationError", 400, "AssumeRoleWithWebIdentity", Retryable, True),
    ("Odd", 502, "GetObject", Retryable, True),
    ("AccessDenied", 403, "ListObjectsV2", Forbidden, False),
    ("AllAccessDisabled", 403, "GetObject", Forbidden, False),
    ("NoSuchBucket", 404, "ListObjectsV2", NotFound, False),
    ("NoSuchKey", 404, "GetObject", ObjectChanged, False),  # a NotFound: that object's, skipped
    ("IDPRejectedClaim", 403, "AssumeRoleWithWebIdentity", FederationFailed, False),
    ("InvalidIdentityToken", 400, "AssumeRoleWithWebIdentity", FederationFailed, False),
    ("ExpiredTokenException", 400, "AssumeRoleWithWebIdentity", FederationFailed, False),
    ("AccessDenied", 403, "AssumeRoleWithWebIdentity", FederationFailed, False),
    ("SomethingNew", 400, "GetObject", WorkerError, False),
])
def test_classification(code, status, operation, expected, retryable):
    error = classify_aws_error(code, status, "message", operation=operation)
    assert type(error) is expected
    assert error.retryable is retryable
    assert error.details["aws_code"] == code
    assert operation in error.message


def test_rejected_claims_say_which_claims_to_check():
    error = classify_aws_error("IDPRejectedClaim", 403, "Incorrect token audience",
                               operation="AssumeRoleWithWebIdentity")
    assert "accounts.google.com:aud" in error.message and "azp" in error.message
    assert "accounts.google.com:oaud" in error.message


def test_error_dict_shape():
    assert Forbidden("no", details={"k": 1}).to_dict() == {
        "code": "forbidden", "message": "no", "retryable": False, "details": {"k": 1}}
