"""Claims against trust-policy conditions, with AWS's mapping of accounts.google.com keys."""

import base64
import json

import pytest

from worker.claims import check_statement, claim_for, decode_claims, web_identity_statements
from worker.policies import trust_policy

CLAIMS = {"iss": "https://accounts.google.com", "aud": "//my-audience", "azp": "104729", "sub": "104729",
          "email": "sa@p.iam.gserviceaccount.com", "iat": 1, "exp": 2}


def _jwt(claims: dict) -> str:
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims | {'extra': 'x'})}.c2lnbmF0dXJl"


def test_decode_keeps_only_the_claims_a_user_needs():
    assert decode_claims(_jwt(CLAIMS)) == CLAIMS
    assert decode_claims("not a token") == {}


def test_aws_maps_aud_to_azp_and_oaud_to_aud():
    assert claim_for("accounts.google.com:aud", CLAIMS) == "104729"
    assert claim_for("accounts.google.com:oaud", CLAIMS) == "//my-audience"
    assert claim_for("accounts.google.com:sub", CLAIMS) == "104729"
    assert claim_for("accounts.google.com:aud", {"aud": "x"}) == "x"  # no azp: aud


def test_the_generated_trust_policy_accepts_the_right_token():
    statements = web_identity_statements(trust_policy("104729", "//my-audience"))
    checks = check_statement(statements[0], CLAIMS)
    assert len(checks) == 3 and all(c.ok for c in checks)


def test_a_wrong_audience_is_blamed_on_oaud():
    statement = web_identity_statements(trust_policy("104729", "//my-audience"))[0]
    failing = [c for c in check_statement(statement, CLAIMS | {"aud": "//other"}) if not c.ok]
    assert [c.key for c in failing] == ["accounts.google.com:oaud"]
    assert "the token's aud is '//other'" in failing[0].explain()


def test_the_classic_mix_up_is_blamed_on_aud():
    # the audience put under :aud (where AWS expects the unique ID)
    statement = {"Effect": "Allow", "Principal": {"Federated": "accounts.google.com"},
                 "Action": "sts:AssumeRoleWithWebIdentity",
                 "Condition": {"StringEquals": {"accounts.google.com:aud": "//my-audience"}}}
    (check,) = check_statement(statement, CLAIMS)
    assert not check.ok and check.claim == "azp" and check.actual == "104729"


@pytest.mark.parametrize(("operator", "expected", "ok"), [
    ("StringEquals", ["//my-audience"], True),
    ("StringEquals", ["//x", "//my-audience"], True),
    ("StringLike", ["//my-*"], True),
    ("StringLike", ["//my-[a]udience"], False),  # IAM has no [...] classes
    ("StringLike", ["//my-audienc?"], True),
    ("StringNotEquals", ["//my-audience"], False),
    ("ForAnyValue:StringEquals", ["//my-audience"], True),
    ("ForAllValues:StringLike", ["//*"], True),
    ("StringEqualsIfExists", ["//nope"], False),
    ("NumericEquals", ["1"], False),
])
def test_operators(operator, expected, ok):
    statement = {"Condition": {operator: {"accounts.google.com:oaud": expected}}}
    (check,) = check_statement(statement, CLAIMS)
    assert check.ok is ok


def test_missing_claim_with_if_exists_passes():
    statement = {"Condition": {"StringEqualsIfExists": {"accounts.google.com:oaud": "x"}}}
    assert check_statement(statement, {"sub": "1"})[0].ok


def test_statements_that_do_not_trust_google_are_ignored():
    policy = {"Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                             "Action": "sts:AssumeRole"},
                            {"Effect": "Deny", "Principal": {"Federated": "accounts.google.com"},
                             "Action": "sts:AssumeRoleWithWebIdentity"}]}
    assert web_identity_statements(policy) == []
