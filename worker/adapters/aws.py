"""AWS: keyless credentials through STS AssumeRoleWithWebIdentity, and S3 reads.

Credentials are botocore's own ``DeferredRefreshableCredentials`` around its
``AssumeRoleWithWebIdentityCredentialFetcher``: STS is called on first use and again
only inside the refresh window before expiry, however many jobs the instance serves.
``AWS_ENDPOINT_URL`` (read by botocore) points both STS and S3 at moto locally.
"""

from __future__ import annotations

import datetime
import functools
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from urllib.parse import quote, urlsplit

import botocore.session
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import (
    AssumeRoleWithWebIdentityCredentialFetcher,
    CredentialProvider,
    CredentialResolver,
    DeferredRefreshableCredentials,
)
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    MetadataRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from worker import __version__
from worker.errors import REGION_REDIRECT_CODES, FederationFailed, Unavailable, WorkerError, classify_aws_error

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


class _NoCache(dict):
    """A credential cache that keeps nothing (see AwsStorage.federated)."""

    def __contains__(self, key) -> bool:
        return False

    def __setitem__(self, key, value) -> None:
        pass


class _Provider(CredentialProvider):
    METHOD = "assume-role-with-web-identity"

    def __init__(self, credentials):
        super().__init__()
        self._credentials = credentials

    def load(self):
        return self._credentials


class AwsStorage:
    """S3 through one botocore session: federated (the function) or boto3's default chain (the CLI)."""

    def __init__(self, session: botocore.session.Session, *, region: str, max_connections: int = 32,
                 token_source: Callable[[], str] | None = None, max_attempts: int = 5):
        # The worker reads no timestamp from S3 (LastModified in listings and GETs); botocore's
        # default dateutil parsing of them costs about half a millisecond per object.
        session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
        self.session = session
        self.region = region
        self.max_connections = max_connections
        self.max_attempts = max_attempts  # per S3 request, first try included (botocore's AWS_MAX_ATTEMPTS)
        self._s3 = None
        self._regional_s3: dict[str, object] = {}  # clients for buckets outside ``region``, by region
        self._bucket_regions: dict[str, str] = {}  # learnt from S3's redirects, kept for the instance's life
        self._http: urllib3.PoolManager | None = None
        self._lock = threading.Lock()
        self.token_source = token_source  # federated only: its last_claims explain a refusal

    @classmethod
    def federated(cls, role_arn: str, token_source: Callable[[], str], *, session_name: str, region: str,
                  duration_seconds: int = 3600, max_connections: int = 32, max_attempts: int = 5,
                  session: botocore.session.Session | None = None,
                  time_fetcher: Callable[[], datetime.datetime] | None = None) -> AwsStorage:
        """Credentials only from AssumeRoleWithWebIdentity with ``token_source``'s ID token.

        botocore's DeferredRefreshableCredentials call STS on first use and again inside the
        refresh windows before expiry (advisory 15 min, mandatory 10 min): that is the only
        cache. The fetcher keeps none of its own (its cache judges expiry by the wall clock and
        would hand back the same credentials), so every refresh is a new STS call with a
        freshly fetched ID token.
        """
        session = session or botocore.session.get_session()
        fetcher = AssumeRoleWithWebIdentityCredentialFetcher(
            # STS calls for web identity are unsigned, so this client never asks for credentials.
            client_creator=functools.partial(session.create_client, region_name=region),
            web_identity_token_loader=token_source,
            role_arn=role_arn,
            extra_args={"RoleSessionName": session_name, "DurationSeconds": duration_seconds},
            cache=_NoCache(),
        )
        credentials = DeferredRefreshableCredentials(refresh_using=fetcher.fetch_credentials, method=_Provider.METHOD,
                                                     **({"time_fetcher": time_fetcher} if time_fetcher else {}))
        # botocore refreshes 15 min (advisory) and 10 min (mandatory) before expiry; with
        # credentials that live 15 min that would be an STS call on every request. Scale the
        # windows down for short sessions: a quarter and a sixth of the lifetime at most.
        credentials._advisory_refresh_timeout = min(15 * 60, duration_seconds // 4)
        credentials._mandatory_refresh_timeout = min(10 * 60, duration_seconds // 6)
        session.register_component("credential_provider", CredentialResolver([_Provider(credentials)]))
        return cls(session, region=region, max_connections=max_connections, token_source=token_source,
                   max_attempts=max_attempts)

    @classmethod
    def default_chain(cls, *, region: str, max_connections: int = 32, max_attempts: int = 5) -> AwsStorage:
        """boto3's default credential chain (environment, profile, ...): for the CLI off Google Cloud."""
        return cls(botocore.session.get_session(), region=region, max_connections=max_connections,
                   max_attempts=max_attempts)

    def ensure_credentials(self) -> None:
        """Have valid credentials now: call STS if none are cached or they are near expiry."""
        try:
            credentials = self.session.get_credentials()
            if credentials is None:
                raise FederationFailed("no AWS credentials: set AWS_ROLE_ARN and ID_TOKEN_AUDIENCE to federate, "
                                       "or configure boto3's default credential chain")
            credentials.get_frozen_credentials()
        except Exception as e:  # classified by credential_error; what it does not know stays a bug (internal)
            error = credential_error(e)
            if isinstance(e, ClientError) and isinstance(error, FederationFailed):
                # What STS saw of the token, so the user can hold it against the trust policy.
                error.details["claims"] = dict(getattr(self.token_source, "last_claims", None) or {})
            if error is e:
                raise
            raise error from None

    def objects(self, bucket: str, job_id: str) -> S3Objects:
        """One job's view of one bucket: its requests carry ``job/<job_id>`` in the user agent."""
        region = self._bucket_regions.get(bucket)
        return S3Objects(self.s3_client(region), bucket, job_id, self.http(), self.session.get_credentials(),
                         on_region=functools.partial(self._learn_region, bucket))

    def _learn_region(self, bucket: str, region: str):
        """S3 said ``bucket`` lives in ``region``: remember it (later jobs go there first) and give its client."""
        self._bucket_regions[bucket] = region  # one dict store: atomic, and s3_client takes the lock itself
        return self.s3_client(region)

    def http(self) -> urllib3.PoolManager:
        """The connection pool for ranged reads, shared by the instance's jobs."""
        if self._http is None:
            with self._lock:
                if self._http is None:
                    self._http = urllib3.PoolManager(maxsize=self.max_connections,
                                                     retries=read_retry(self.max_attempts),
                                                     timeout=urllib3.Timeout(connect=5, read=30), block=False)
        return self._http

    def s3_client(self, region: str | None = None):
        """The instance's S3 client (for ``region``, default AWS_REGION), made once: jobs share its pool."""
        if region is not None and region != self.region:
            if region not in self._regional_s3:
                with self._lock:
                    if region not in self._regional_s3:
                        self._regional_s3[region] = self._make_s3_client(region)
            return self._regional_s3[region]
        if self._s3 is None:
            with self._lock:
                if self._s3 is None:
                    self._s3 = self._make_s3_client(self.region)
        return self._s3

    def _make_s3_client(self, region: str):
        config = Config(
            max_pool_connections=self.max_connections,
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=5,
            read_timeout=30,
            # Ranged reads carry no whole-object checksum to check; asking for one
            # (x-amz-checksum-mode) only makes the server do work for nothing.
            response_checksum_validation="when_required",
            request_checksum_calculation="when_required",
        )
        client = self.session.create_client("s3", region_name=region, config=config)
        client.meta.events.register("before-sign.s3", _add_job_user_agent)
        return client


def translate(error: Exception, operation: str) -> Exception:
    """A botocore exception as the worker's error (the one place AWS errors are classified).

    An AWS answer is classified by its code (``errors.classify_aws_error``), under the operation that gave it: a
    failed credential refresh inside an S3 call surfaces as STS's own ``AssumeRoleWithWebIdentity`` error. A
    connection fault (refused, reset, timed out: ``EndpointConnectionError``, ``ConnectTimeoutError``,
    ``ReadTimeoutError``...) is ``Unavailable``; credential errors go by :func:`credential_error`. Anything else
    is returned as it is: a bug or a fault nobody classified, which the job answers ``internal``.
    """
    if isinstance(error, WorkerError):
        return error
    if isinstance(error, ClientError):
        err = error.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        op = error.operation_name or operation
        return classify_aws_error(code, status, str(err.get("Message", "")), operation=op)
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return Unavailable(f"{operation} failed: {type(error).__name__}: AWS endpoint unreachable")
    if isinstance(error, (*_REFRESH_FAILED, *_NO_CREDENTIALS)):
        return credential_error(error)
    return error


# botocore re-raises a failed mandatory refresh (inside the last minutes before expiry) to whoever asked for
# credentials: the job's start, a listing, or a reader thread signing a ranged GET. What it raises then, by what a
# later attempt can do about it (STS's own answers are ClientErrors, classified by code like any AWS error: 5xx
# and throttling retry, a refused role or token is FederationFailed; the ID token source raises the worker's
# errors itself, worker.adapters.google):
_REFRESH_FAILED = (CredentialRetrievalError, MetadataRetrievalError)  # a provider's failure: transient
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError)  # nothing usable configured: permanent


def credential_error(error: Exception) -> Exception:
    """An exception raised while getting or refreshing the AWS credentials, as the worker's error.

    Transient (``Unavailable``, ``Throttled``) unless STS refused the role or the token (``FederationFailed``
    with the hint for its code) or there is nothing to get credentials from; an exception neither botocore's nor
    the worker's is returned as it is (a bug).
    """
    if isinstance(error, (WorkerError, ClientError)):
        return translate(error, "AssumeRoleWithWebIdentity")
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return Unavailable(f"STS is unreachable: {type(error).__name__}", details={"step": "sts"})
    if isinstance(error, _REFRESH_FAILED):
        return Unavailable(f"the AWS credentials could not be refreshed: {type(error).__name__}",
                           details={"step": "sts"})
    if isinstance(error, BotoCoreError):  # no credentials, a malformed request...: the same on every attempt
        return FederationFailed(f"STS exchange failed: {error}", details={"step": "sts"})
    return error


def read_retry(max_attempts: int = 5) -> urllib3.Retry:
    """Ranged reads retry like botocore's standard mode: ``max_attempts`` in all (5), exponential backoff,
    on connection faults, throttling (429, 503 SlowDown) and 5xx; then the job is handed back."""
    again = max_attempts - 1
    return urllib3.Retry(total=again, connect=again, read=again, status=again, other=0, backoff_factor=0.2,
                         backoff_max=5, status_forcelist=(429, 500, 502, 503, 504),
                         allowed_methods=frozenset({"GET"}), raise_on_status=False, respect_retry_after_header=True)

_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_ERROR_MESSAGE = re.compile(rb"<Message>([^<]{0,300})</Message>")
_ERROR_REGION = re.compile(rb"<Region>([^<]{1,50})</Region>")
_ERROR_STORAGE_CLASS = re.compile(rb"<StorageClass>([^<]{1,50})</StorageClass>")
# What a region name looks like (us-east-1, eu-central-2, us-gov-west-1, cn-north-1, ...): a region named by a
# response is only ever used as the client's region_name, never trusted beyond that shape.
_REGION_NAME = re.compile(r"[a-z]{2}(?:-[a-z0-9]+){1,3}-\d{1,2}")


def _element(pattern: re.Pattern[bytes], data: bytes) -> str | None:
    found = pattern.search(data)
    return found.group(1).decode(errors="replace") if found else None


def region_named_by(status: int, code: str | None, headers, data: bytes) -> str | None:
    """The bucket's region when S3 refused a request for being sent to, or signed for, another region.

    S3 answers 301 PermanentRedirect (wrong regional endpoint) or 400 AuthorizationHeaderMalformed
    (right endpoint, credential scope naming another region), with the region in an
    ``x-amz-bucket-region`` header and, in the XML body, a ``<Region>`` element.
    """
    if not (status == 301 or (status == 400 and code in REGION_REDIRECT_CODES)):
        return None
    region = headers.get("x-amz-bucket-region") or _element(_ERROR_REGION, data) or ""
    return region if _REGION_NAME.fullmatch(region) else None


class S3Objects:
    """Listing and ranged reads of one bucket, errors translated.

    Ranged reads are the hot path (one or two per Parquet file): each is signed with botocore's
    own SigV4 signer and sent on a shared urllib3 pool, at well under half the CPU of a full
    botocore call; listing stays with botocore. Credentials travel in headers only, never in
    a URL.
    """

    def __init__(self, client, bucket: str, job_id: str, http: urllib3.PoolManager, credentials,
                 on_region: Callable[[str], object] | None = None):
        self._client = client
        self._credentials = credentials  # the session's (refreshable) credentials
        self._region = client.meta.region_name
        self._base: str | None = None
        self._http = http
        # on_region(region) -> the S3 client for that region, when S3 says the bucket lives elsewhere
        self._on_region = on_region
        self._switch = threading.Lock()
        self.bucket = bucket
        self.user_agent = user_agent_token(job_id)
        self._headers = {"User-Agent": f"parquet-summary-worker/{__version__} {self.user_agent}"}

    def list(self, prefix: str, start_after: str | None = None) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with ``prefix``, literally (after ``start_after``)."""
        for page in self._pages(Prefix=prefix, **({"StartAfter": start_after} if start_after else {})):
            for obj in page.get("Contents", ()):
                yield obj["Key"], int(obj["Size"])

    def common_prefixes(self, prefix: str, delimiter: str = "/", max_pages: int = 10) -> list[str]:
        """The "folders" right under ``prefix`` (ListObjectsV2 with a delimiter), at most ``max_pages`` pages."""
        found: list[str] = []
        for n, page in enumerate(self._pages(Prefix=prefix, Delimiter=delimiter)):
            found.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
            if n + 1 >= max_pages:
                break
        return found

    def _pages(self, **params) -> Iterator[dict]:
        paginator = self._client.get_paginator("list_objects_v2")
        pages = iter(paginator.paginate(Bucket=self.bucket, **params))
        while True:
            try:
                with _as_job(self.user_agent):
                    page = next(pages, None)
            except (ClientError, BotoCoreError) as e:
                raise translate(e, "ListObjectsV2") from None
            if page is None:
                return
            yield page

    def _bucket_url(self) -> str:
        # botocore resolves the bucket's endpoint (path or virtual-host style, region, FIPS...):
        # ask it once per job for the URL of a placeholder key, and keep the part before the key.
        if self._base is None:
            try:
                url = self._client.generate_presigned_url("get_object", ExpiresIn=60,
                                                          Params={"Bucket": self.bucket, "Key": "k"})
            except (ClientError, BotoCoreError) as e:
                raise translate(e, "GetObject") from None
            self._base = url.split("?", 1)[0][: -len("/k")]
        return self._base

    def _move_to(self, region: str) -> bool:
        """Read from ``region`` from now on (S3 named it); False when there is nowhere else to go."""
        if self._on_region is None:
            return False
        with self._switch:
            if self._region != region:  # another reader thread may have moved already
                client = self._on_region(region)
                self._client, self._region, self._base = client, region, None
        return True

    def fetch(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` inclusive of one object."""
        moved = False
        while True:
            region = self._region
            response = self._get(key, start, end, region)
            if response.status == 206:
                return response.data
            if response.status == 200:  # a server that ignores Range sends the whole object
                return response.data[start:end + 1]
            data = response.data or b""
            code = _element(_ERROR_CODE, data)
            # Wrong region: learn the bucket's region, re-sign for it at its endpoint, and try once more.
            elsewhere = region_named_by(response.status, code, response.headers, data)
            if elsewhere is not None and elsewhere != region and not moved and self._move_to(elsewhere):
                moved = True
                continue
            raise classify_aws_error(code or str(response.status), response.status,
                                     _element(_ERROR_MESSAGE, data) or "", operation="GetObject",
                                     storage_class=_element(_ERROR_STORAGE_CLASS, data))

    def _signing_credentials(self):
        """The credentials to sign a read with now. botocore refreshes them here when they near expiry, and a
        failed refresh (STS, the ID token source) is the job's fault, never the object's: it is translated here so
        that no reader thread meets a raw botocore error."""
        try:
            return self._credentials.get_frozen_credentials()
        except Exception as e:  # classified by credential_error; what it does not know stays a bug (internal)
            error = credential_error(e)
            if error is e:
                raise
            raise error from None

    def _get(self, key: str, start: int, end: int, region: str) -> urllib3.BaseHTTPResponse:
        credentials = self._signing_credentials()  # first: the bucket's URL is presigned with them too
        base = urlsplit(self._bucket_url())
        # The request target is sent exactly as signed: urllib3's request() would parse the URL and remove
        # "." and ".." segments (RFC 3986), so a key like "a/../b" would be signed for one path and sent as
        # another. S3 signs the path as given (botocore's S3SigV4Auth does not normalize it either), and
        # botocore itself sends through the pool's urlopen with the target, as here.
        target = f"{base.path}/{quote(key, safe='/~')}"
        request = AWSRequest(method="GET", url=f"{base.scheme}://{base.netloc}{target}",
                             headers={**self._headers, "Range": f"bytes={start}-{end}"})
        S3SigV4Auth(credentials, "s3", region).add_auth(request)
        try:
            pool = self._http.connection_from_host(base.hostname, base.port, scheme=base.scheme)
            return pool.urlopen("GET", target, headers=dict(request.headers.items()), redirect=False,
                                assert_same_host=False)
        except urllib3.exceptions.HTTPError as e:
            # The exception's text names the URL: say only what kind of fault it was.
            raise Unavailable(f"GetObject failed: {type(e).__name__}: S3 unreachable") from None
