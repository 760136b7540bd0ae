"""``python -m worker doctor``: walk the federation chain in this environment, one line per step.

Settings -> metadata server -> ID token (its claims, never the token) -> the trust policy's
conditions held against those claims with AWS's mapping -> STS -> listing the job's prefix ->
reading one footer. It stops at the first failing step and says what to change.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.claims import ISSUER, PROVIDER, check_statement, web_identity_statements
from worker.config import Settings
from worker.errors import WorkerError


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = "PASS" if self.ok else "FAIL"
        text = f"{mark}  {self.name}: {self.detail}"
        return text + (f"\n      -> {self.fix}" if self.fix and not self.ok else "")


class Doctor:
    """Runs the steps in order and reports each through ``say``; ``run`` returns the exit status."""

    def __init__(self, say: Callable[[str], None], job: dict | None = None, trust_policy: dict | None = None,
                 env: dict[str, str] | None = None):
        self.say = say
        self.job = job
        self.trust_policy = trust_policy
        self.env = dict(os.environ if env is None else env)
        self.steps: list[Step] = []

    def _report(self, step: Step) -> bool:
        self.steps.append(step)
        self.say(step.line())
        return step.ok

    def run(self) -> int:
        checks = [self.settings, self.metadata_server, self.id_token, self.trust_conditions, self.sts,
                  self.listing, self.footer]
        for check in checks:
            step = check()
            if step is None:
                continue
            if not self._report(step):
                return 1
        return 0

    # -- the steps ------------------------------------------------------------------------

    def settings(self) -> Step:
        try:
            self.cfg = Settings.from_env(self.env)
        except WorkerError as e:
            return Step("settings", False, "; ".join(e.problems) or e.message,
                        "set the variables named above (docs/configuration.md)")
        return Step("settings", True, f"role {self.cfg.role_arn}, audience {self.cfg.audience!r}, "
                                      f"token source {self.cfg.token_source}, region {self.cfg.region}")

    def metadata_server(self) -> Step | None:
        if self.cfg.token_source != "metadata":  # noqa: S105 (a source name, not a secret)
            return None
        import requests

        host = self.env.get("GCE_METADATA_HOST") or self.env.get("GCE_METADATA_ROOT") or "metadata.google.internal"
        try:
            response = requests.get(f"http://{host}/", headers={"Metadata-Flavor": "Google"}, timeout=3)
        except requests.RequestException as e:
            return Step("metadata server", False, f"http://{host}/ did not answer ({type(e).__name__})",
                        "run on Google Cloud, or set ID_TOKEN_SOURCE=impersonate or =file to run elsewhere")
        if response.headers.get("Metadata-Flavor") != "Google":
            return Step("metadata server", False, f"http://{host}/ answered {response.status_code} without "
                        "Metadata-Flavor: Google", "GCE_METADATA_HOST points at something else")
        return Step("metadata server", True, f"http://{host}/ answers as Google's metadata server")

    def id_token(self) -> Step:
        from worker.app import build_storage

        self.storage = build_storage(self.cfg)
        try:
            self.storage.token_source()
        except WorkerError as e:
            return Step("ID token", False, e.message, "see the metadata server / token source step above")
        claims = dict(self.storage.token_source.last_claims)
        self.claims = claims
        shown = {k: v for k, v in claims.items() if k not in ("iat",)}
        if "exp" in claims:
            left = int(claims["exp"] - datetime.now(UTC).timestamp())
            shown["exp"] = f"{datetime.fromtimestamp(claims['exp'], UTC).isoformat()} (in {left}s)"
        problems = []
        if claims.get("iss") not in (ISSUER, PROVIDER):
            problems.append(f"iss is {claims.get('iss')!r}, not {ISSUER}")
        if claims.get("aud") != self.cfg.audience:
            problems.append(f"aud is {claims.get('aud')!r}, not ID_TOKEN_AUDIENCE {self.cfg.audience!r}")
        if problems:
            return Step("ID token", False, "; ".join(problems) + f"; claims {json.dumps(shown)}",
                        "the token source does not give the token AWS expects")
        return Step("ID token", True, f"claims {json.dumps(shown)}")

    def trust_conditions(self) -> Step | None:
        if self.trust_policy is None:
            return None
        statements = web_identity_statements(self.trust_policy)
        if not statements:
            return Step("trust policy", False, f"no Allow statement lets {PROVIDER} call "
                        "sts:AssumeRoleWithWebIdentity", "print one with `python -m worker trust-policy`")
        results = []
        for statement in statements:
            checks = check_statement(statement, self.claims)
            if checks and all(c.ok for c in checks):
                return Step("trust policy", True, "; ".join(c.explain() for c in checks))
            results.append(checks)
        failing = [c for checks in results for c in checks if not c.ok]
        if not failing:
            return Step("trust policy", False, f"no {PROVIDER} condition: any Google token would pass",
                        "add the StringEquals conditions `python -m worker trust-policy` prints")
        first = failing[0]
        fix = {f"{PROVIDER}:aud": "this key is the token's azp: the service account's numeric unique ID",
               f"{PROVIDER}:oaud": "this key is the token's aud: set it to ID_TOKEN_AUDIENCE (or the other way round)",
               f"{PROVIDER}:sub": "this key is the token's sub: the service account's numeric unique ID"}
        return Step("trust policy", False, "; ".join(c.explain() for c in failing),
                    fix.get(first.key.lower(), "change the condition or the token"))

    def sts(self) -> Step:
        try:
            self.storage.ensure_credentials()
        except WorkerError as e:
            code = e.details.get("aws_code", e.code)
            return Step("STS AssumeRoleWithWebIdentity", False, f"{code}: {e.message}",
                        "compare the claims above with the role's trust policy (--trust-policy FILE checks it)")
        return Step("STS AssumeRoleWithWebIdentity", True, f"credentials for {self.cfg.role_arn}")

    def listing(self) -> Step | None:
        if self.job is None:
            return None
        self.objects = self.storage.objects(self.job["bucket"], "doctor")
        try:
            self.listed = []
            for item in self.objects.list(self.job.get("prefix", "")):
                self.listed.append(item)
                if len(self.listed) >= 1000:
                    break
        except WorkerError as e:
            return Step("list the prefix", False, e.message,
                        "the role needs s3:ListBucket on the bucket (with an s3:prefix condition for this prefix)")
        where = f"s3://{self.job['bucket']}/{self.job.get('prefix', '')}"
        return Step("list the prefix", True, f"{len(self.listed)} object(s) under {where}")

    def footer(self) -> Step | None:
        if self.job is None:
            return None
        from worker.summary import UnreadableFile, read_footer, skip_reason

        parquet = [(k, s) for k, s in self.listed if skip_reason(k, s) is None]
        if not parquet:
            return Step("read a footer", False, "no .parquet object under the prefix", "check the prefix")
        unreadable = []
        for key, size in parquet[:10]:
            try:
                md = read_footer(size, lambda a, b, key=key: self.objects.fetch(key, a, b))
            except WorkerError as e:
                return Step("read a footer", False, f"{key}: {e.message}",
                            "the role needs s3:GetObject on the objects under the prefix")
            except UnreadableFile as e:
                unreadable.append(f"{key}: {e}")
                continue
            skipped = f" ({len(unreadable)} unreadable before it)" if unreadable else ""
            return Step("read a footer", True, f"{key}: {md.num_rows} rows, {md.num_columns} columns{skipped}")
        return Step("read a footer", False, "; ".join(unreadable), "none of the first .parquet objects is readable")
