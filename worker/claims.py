"""Pure: what AWS sees of a Google ID token, held against a role's trust policy.

AWS maps the web-identity condition keys of ``accounts.google.com`` to token claims in a way
that surprises most people: ``accounts.google.com:aud`` is the token's ``azp`` (the service
account's numeric unique ID), ``accounts.google.com:oaud`` is its ``aud`` (the audience the
token was minted for), and ``accounts.google.com:sub`` is ``sub``. This module decodes claims
(never verifying or keeping the token itself) and evaluates the trust policy's conditions with
that mapping, naming the condition that fails.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

PROVIDER = "accounts.google.com"  # the one place of this name: AWS's web-identity provider for Google tokens
ISSUER = f"https://{PROVIDER}"  # the iss claim of a Google ID token
# condition key -> the claim AWS compares it with (azp falls back to aud when a token has no azp)
KEY_TO_CLAIM = {f"{PROVIDER}:aud": "azp", f"{PROVIDER}:oaud": "aud", f"{PROVIDER}:sub": "sub"}
SHOWN_CLAIMS = ("iss", "aud", "azp", "sub", "email", "iat", "exp")


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified: the parts a user may see (never the token or signature)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, UnicodeDecodeError):
        return {}
    return {k: claims[k] for k in SHOWN_CLAIMS if k in claims} if isinstance(claims, dict) else {}


def claim_for(key: str, claims: dict[str, Any]) -> Any:
    """The claim value AWS uses for a condition key (None when the key is not one of Google's)."""
    claim = KEY_TO_CLAIM.get(key.lower())
    if claim is None:
        return None
    if claim == "azp" and "azp" not in claims:
        return claims.get("aud")
    return claims.get(claim)


@dataclass(frozen=True)
class ConditionCheck:
    """One condition of a trust policy, held against the token's claims."""

    operator: str
    key: str
    expected: list[str]
    claim: str
    actual: Any
    ok: bool

    def explain(self) -> str:
        verdict = "matches" if self.ok else "does NOT match"
        return (f"{self.operator} {self.key} = {self.expected}: the token's {self.claim} is {self.actual!r}, "
                f"which {verdict}")


def web_identity_statements(policy: dict) -> list[dict]:
    """The Allow statements of a trust policy that let accounts.google.com assume the role."""
    statements = policy.get("Statement", [])
    statements = statements if isinstance(statements, list) else [statements]
    out = []
    for st in statements:
        actions = st.get("Action", [])
        actions = actions if isinstance(actions, list) else [actions]
        federated = (st.get("Principal") or {}).get("Federated", [])
        federated = federated if isinstance(federated, list) else [federated]
        if st.get("Effect") == "Allow" and "sts:AssumeRoleWithWebIdentity" in actions and PROVIDER in federated:
            out.append(st)
    return out


def check_statement(statement: dict, claims: dict[str, Any]) -> list[ConditionCheck]:
    """Evaluate every ``accounts.google.com:*`` condition of one statement against the claims."""
    checks = []
    for operator, conditions in (statement.get("Condition") or {}).items():
        for key, expected in conditions.items():
            if not key.lower().startswith(PROVIDER + ":"):
                continue
            expected_list = [str(v) for v in (expected if isinstance(expected, list) else [expected])]
            actual = claim_for(key, claims)
            claim = KEY_TO_CLAIM.get(key.lower(), key)
            checks.append(ConditionCheck(operator, key, expected_list, claim, actual,
                                         _evaluate(operator, expected_list, actual)))
    return checks


def _evaluate(operator: str, expected: list[str], actual: Any) -> bool:
    op = operator
    for prefix in ("ForAnyValue:", "ForAllValues:"):
        if op.startswith(prefix):
            op = op[len(prefix):]
    if_exists = op.endswith("IfExists")
    op = op.removesuffix("IfExists")
    if actual is None:
        return if_exists or op.startswith("StringNot")
    values = actual if isinstance(actual, list) else [actual]

    def one(value: Any) -> bool:
        text = str(value)
        if op == "StringEquals":
            return text in expected
        if op == "StringEqualsIgnoreCase":
            return text.lower() in [e.lower() for e in expected]
        if op == "StringLike":
            return any(_like(pattern, text) for pattern in expected)
        if op == "StringNotEquals":
            return text not in expected
        if op == "StringNotLike":
            return not any(_like(pattern, text) for pattern in expected)
        return False  # an operator this check does not know: report it as not matching

    if operator.startswith("ForAllValues:"):
        return all(one(v) for v in values)
    return any(one(v) for v in values)


def _like(pattern: str, text: str) -> bool:
    # IAM's StringLike knows only * and ? as wildcards (unlike fnmatch, no [...] classes).
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None
