"""AWS: keyless credentials through STS AssumeRoleWithWebIdentity, and S3 reads.

Credentials are botocore's own ``DeferredRefreshableCredentials`` around its
``AssumeRoleWithWebIdentityCredentialFetcher``: STS is called on first use and again
only inside the refresh window before expiry, however many jobs the instance serves.
``AWS_ENDPOINT_URL`` (read by botocore) points both STS and S3 at moto locally.
"""

from __future__ import annotations

import functools
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import botocore.session
from botocore.config import Config
from botocore.credentials import (
    AssumeRoleWithWebIdentityCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from worker.errors import FederationFailed, Retryable, WorkerError, classify_aws_error

_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]")
_UA_BAD = re.compile(r"[^A-Za-z0-9!#$%&'*+.^_`|~-]")


def role_session_name(service: str, revision: str, instance: str | None = None) -> str:
    """A RoleSessionName STS accepts (``[\\w+=,.@-]{2,64}``) naming the service, revision and instance."""
    instance = instance or uuid.uuid4().hex[:8]
    # The revision usually repeats the service name (svc-00042-abc): keep only its suffix.
    if revision.startswith(service + "-"):
        revision = revision[len(service) + 1:]
    tail = _SESSION_NAME_BAD.sub("-", f"{revision}.{instance}")[-30:]
    head = _SESSION_NAME_BAD.sub("-", service)[: 63 - len(tail)]
    name = f"{head}.{tail}".strip(".")
    return name if len(name) >= 2 else f"worker.{instance}"


def user_agent_token(job_id: str) -> str:
    """The job ID as a user-agent product token (``job/ID``), so S3 logs and CloudTrail name the job."""
    return "job/" + _UA_BAD.sub("_", job_id)[:128]


# The job whose request is being made in this thread: one shared client (one connection pool)
# serves every job, and each request names its own job in the user agent.
_JOB_USER_AGENT: ContextVar[str | None] = ContextVar("job_user_agent", default=None)


def _add_job_user_agent(request, **_) -> None:
    token = _JOB_USER_AGENT.get()
    agent = request.headers.get("User-Agent", "")
    if token and token not in agent:
        request.headers["User-Agent"] = f"{agent} {token}".strip()


@contextmanager
def _as_job(token: str):
    reset = _JOB_USER_AGENT.set(token)
    try:
        yield
    finally:
        _JOB_USER_AGENT.reset(reset)


class _Provider(CredentialProvider):
    METHOD = "assume-role-with-web-identity"

    def __init__(self, credentials):
        super().__init__()
        self._credentials = credentials

    def load(self):
        return self._credentials


class AwsFederation:
    """A botocore session whose only credentials are the web-identity role's, cached and refreshed."""

    def __init__(self, role_arn: str, token_source: Callable[[], str], *, session_name: str,
                 region: str, duration_seconds: int = 3600, max_connections: int = 32,
                 session: botocore.session.Session | None = None):
        self.region = region
        self.max_connections = max_connections
        self.session = session or botocore.session.get_session()
        fetcher = AssumeRoleWithWebIdentityCredentialFetcher(
            # STS calls for web identity are unsigned, so this client never asks for credentials.
            client_creator=functools.partial(self.session.create_client, region_name=region),
            web_identity_token_loader=token_source,
            role_arn=role_arn,
            extra_args={"RoleSessionName": session_name, "DurationSeconds": duration_seconds},
        )
        self.credentials = DeferredRefreshableCredentials(
            refresh_using=fetcher.fetch_credentials, method=_Provider.METHOD)
        self.session.register_component("credential_provider", CredentialResolver([_Provider(self.credentials)]))
        self._s3 = None
        self._lock = threading.Lock()

    def ensure_credentials(self) -> None:
        """Have valid credentials now: call STS if none are cached or they are near expiry."""
        try:
            self.credentials.get_frozen_credentials()
        except WorkerError:
            raise
        except ClientError as e:
            raise translate(e, "AssumeRoleWithWebIdentity") from None
        except (BotoConnectionError, HTTPClientError) as e:
            raise Retryable(f"STS is unreachable: {type(e).__name__}", details={"step": "sts"}) from None
        except BotoCoreError as e:
            raise FederationFailed(f"STS exchange failed: {e}", details={"step": "sts"}) from None

    def objects(self, bucket: str, job_id: str) -> S3Objects:
        """One job's view of one bucket: its requests carry ``job/<job_id>`` in the user agent."""
        return S3Objects(self.s3_client(), bucket, job_id)

    def s3_client(self):
        """The instance's S3 client, made once: jobs share its connection pool."""
        if self._s3 is None:
            with self._lock:
                if self._s3 is None:
                    config = Config(
                        max_pool_connections=self.max_connections,
                        retries={"mode": "standard", "total_max_attempts": 5},
                        connect_timeout=5,
                        read_timeout=30,
                    )
                    client = self.session.create_client("s3", region_name=self.region, config=config)
                    client.meta.events.register("before-sign.s3", _add_job_user_agent)
                    self._s3 = client
        return self._s3


def translate(error: Exception, operation: str) -> Exception:
    """A botocore exception as the worker's error (the one place AWS errors are classified)."""
    if isinstance(error, WorkerError):
        return error
    if isinstance(error, ClientError):
        err = error.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        op = error.operation_name or operation
        return classify_aws_error(code, status, str(err.get("Message", "")), operation=op)
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return Retryable(f"{operation} failed: {type(error).__name__}: AWS endpoint unreachable")
    return error


class S3Objects:
    """Listing and ranged reads of one bucket, errors translated."""

    def __init__(self, client, bucket: str, job_id: str):
        self._client = client
        self.bucket = bucket
        self.user_agent = user_agent_token(job_id)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with ``prefix``, literally."""
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, Prefix=prefix))
        while True:
            try:
                with _as_job(self.user_agent):
                    page = next(pages, None)
            except (ClientError, BotoCoreError) as e:
                raise translate(e, "ListObjectsV2") from None
            if page is None:
                return
            for obj in page.get("Contents", ()):
                yield obj["Key"], int(obj["Size"])

    def fetch(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` inclusive of one object."""
        try:
            with _as_job(self.user_agent):
                response = self._client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}")
                return response["Body"].read()
        except (ClientError, BotoCoreError) as e:
            raise translate(e, "GetObject") from None
