"""The error taxonomy and the one table that decides what is retryable."""

import pytest

from worker.errors import (
    HTTP_STATUS,
    FederationFailed,
    Forbidden,
    NotFound,
    ObjectChanged,
    Retryable,
    Throttled,
    Unavailable,
    WorkerError,
    classify_aws_error,
    http_status_of,
)


@pytest.mark.parametrize(("code", "status", "operation", "expected", "retryable"), [
    ("SlowDown", 503, "GetObject", Throttled, True),
    ("ThrottlingException", 400, "AssumeRoleWithWebIdentity", Throttled, True),
    ("Whatever", 429, "ListObjectsV2", Throttled, True),
    ("InternalError", 500, "GetObject", Unavailable, True),
    ("ServiceUnavailable", 503, "ListObjectsV2", Unavailable, True),
    ("IDPCommunicationError", 400, "AssumeRoleWithWebIdentity", Unavailable, True),
    ("Odd", 502, "GetObject", Unavailable, True),
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


def _leaves(cls=WorkerError):
    yield cls
    for sub in cls.__subclasses__():
        yield from _leaves(sub)


def test_classes_of_one_code_answer_one_http_status():
    by_code: dict[str, set[int]] = {}
    for cls in _leaves():
        by_code.setdefault(cls.code, set()).add(cls.http_status)
    assert {code: statuses for code, statuses in by_code.items() if len(statuses) > 1} == {}
    assert {code: statuses.pop() for code, statuses in by_code.items()} == HTTP_STATUS


def test_retryable_is_the_category_and_each_leaf_is_named_for_its_code():
    with pytest.raises(TypeError, match="Unavailable or Throttled"):
        Retryable("which fault?")
    assert (Unavailable("x").code, Throttled("x").code) == ("unavailable", "throttled")
    assert all(isinstance(e, Retryable) and e.retryable for e in (Unavailable("x"), Throttled("x")))
    assert http_status_of("throttled", True) == http_status_of("anything", True) == 503
    assert http_status_of("invalid_job", False) == 400 and http_status_of("no_such_code", False) == 500
