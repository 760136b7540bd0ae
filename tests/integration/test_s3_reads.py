"""Reads that S3 accepts, and refusals that are one object's: S3Objects against a real moto server.

moto runs with IAM enforced (INITIAL_NO_AUTH_ACTION_COUNT), so it checks every SigV4 signature and the
role's s3:GetObject resource limits. What moto does not emulate (SSE-C and KMS refusals, and any notion
of a bucket's region) is answered by the devstack proxy in front of it, as S3 answers.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import socket
import sys
import uuid

import boto3
import botocore.session
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.reaching import Branches
from worker.adapters.aws import AwsStorage
from worker.adapters.google import FileIdTokenSource
from worker.config import Settings
from worker.devstack.datasets import parquet_bytes, recipe_table
from worker.devstack.processes import Service, free_port
from worker.devstack.proxy import RecordingProxy
from worker.errors import (
    FederationFailed,
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
)
from worker.service import Worker

REGION = "us-east-1"
OTHER_REGION = "eu-west-1"
ROLE = "s3-reads-reader"
DENIED = "denied/secret.parquet"
ODD_KEYS = [
    "a/./b.parquet", "a/../b.parquet", "./x.parquet", "../y.parquet", ".", "..", "a/.", "a/..", "a//b.parquet",
    "/leading", "p%20q.parquet", "p%2e%2e/q", "p+q.parquet", "a?b=c", "a#frag", "a b.parquet", "~tilde",
    "semi;colon=eq&amp", "é/ü/日本語.parquet", "emoji-🙂", "tab\there", "k" * 1000, "d/" + "ü" * 300,
]


class _Moto(tuple):
    """(endpoint, admin keys), shown without the keys when pytest prints a failing test's fixtures."""

    def __new__(cls, endpoint: str, keys: dict):
        return super().__new__(cls, (endpoint, keys))

    def __repr__(self) -> str:
        return f"moto at {self[0]}"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto with IAM enforced after the first three (bootstrap) actions; yields (endpoint, admin keys)."""
    port = free_port()
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "3", "PATH": "/usr/bin:/bin"}
    service = Service("moto-s3-reads", [sys.executable, "-m", "worker.devstack.moto_server", "-H", "127.0.0.1",
                                        "-p", str(port)], port=port, log_dir=tmp_path_factory.mktemp("moto"),
                      env=env, ready_path="/moto-api/").start()
    try:
        service.wait_ready()
        endpoint = f"http://{service.address}"
        iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="bootstrap",
                           aws_secret_access_key="bootstrap")  # moto's free set-up actions
        iam.create_user(UserName="admin")
        iam.put_user_policy(UserName="admin", PolicyName="admin", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        keys = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
        admin_iam = boto3.client("iam", endpoint_url=endpoint, region_name=REGION, **keys)
        trust = {"Effect": "Allow", "Principal": {"Federated": "accounts.google.com"},
                 "Action": "sts:AssumeRoleWithWebIdentity"}  # moto does not check it
        admin_iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [trust]}))
        admin_iam.put_role_policy(RoleName=ROLE, PolicyName="read", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject"], "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::*/{DENIED}"}]}))
        yield _Moto(endpoint, keys)
    finally:
        service.stop()


@pytest.fixture
def admin_s3(moto):
    endpoint, keys = moto
    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, **keys)


@pytest.fixture
def bucket(admin_s3):
    name = f"reads-{uuid.uuid4().hex[:12]}"
    admin_s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def storage_at(monkeypatch):
    """Build the worker's federated AwsStorage (as worker/app.py does) against ``endpoint``."""

    def build(endpoint: str, *, max_attempts: int = 5) -> AwsStorage:
        # botocore reads AWS_ENDPOINT_URL when it makes a client (STS now, S3 clients as they are made).
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        storage = AwsStorage.federated(f"arn:aws:iam::123456789012:role/{ROLE}", lambda: "moto-checks-no-token",
                                       session_name="s3-reads-test", region=REGION, max_attempts=max_attempts)
        storage.ensure_credentials()
        return storage

    return build


def _secret(storage: AwsStorage) -> str:
    return storage.session.get_credentials().get_frozen_credentials().secret_key


def _body(key: str) -> bytes:
    return b"PAR1" + key.encode() + b"PAR1"


# -- keys as signed ---------------------------------------------------------------------


def test_every_odd_key_is_listed_and_read_back_byte_for_byte(moto, admin_s3, bucket, storage_at):
    for key in ODD_KEYS:
        admin_s3.put_object(Bucket=bucket, Key=key, Body=_body(key))
    objects = storage_at(moto[0]).objects(bucket, "odd-keys")
    listed = dict(objects.list(""))
    assert sorted(listed) == sorted(ODD_KEYS)
    for key, size in listed.items():
        # moto checks the signature: a target sent otherwise than signed would be refused (or read another key).
        assert objects.fetch(key, 0, size - 1) == _body(key), key
        assert objects.fetch(key, 4, size - 5) == key.encode(), key


KEY_PIECES = ["/", ".", "..", "./", "../", "%", "%2e", "+", "?", "#", " ", "é", "a", "~", "&"]
# Each key holds a dot segment, an escaped one, a bare percent sign, and a URL delimiter or an empty segment,
# wherever they fall among the other pieces: keys of 1-12 pieces drawn alike held them rarely (3 dot
# segments, no "%2e" in the 15 keys of a run).
SPECIAL_PIECES = (["/./", "/../"], ["/%2e/", "/%2e%2e/"], ["%", "%%"], ["?", "#", "+", "//"])


@st.composite
def dot_and_escape_keys(draw) -> str:
    pieces = draw(st.lists(st.sampled_from(KEY_PIECES), max_size=8))
    for special in SPECIAL_PIECES:
        pieces.insert(draw(st.integers(0, len(pieces))), draw(st.sampled_from(special)))
    return "".join(pieces)


def _what(key: str) -> set[str]:
    """What a key holds that a URL or its path could read otherwise than as the key's own bytes."""
    segments = set(key.split("/"))
    found = {f"a dot segment: {kind}" for kind, dots in (("plain", {".", ".."}), ("escaped", {"%2e", "%2e%2e"}))
             if dots & segments}
    found.update(f"a %: {'escape' if key[i + 1:i + 3] == '2e' else 'bare'}" for i, c in enumerate(key) if c == "%")
    found.update(f"a delimiter: {c}" for c in "?#+" if c in key)
    if "//" in key or key.startswith("/"):
        found.add("an empty segment")
    return found


KEYS = Branches(**{"a dot segment: plain": 5, "a dot segment: escaped": 5, "a %: bare": 5, "a delimiter": 3,
                   "an empty segment": 2})


@KEYS.checked
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=dot_and_escape_keys())
def test_generated_dot_and_escape_keys_read_back(moto, admin_s3, bucket, storage_at, key):
    for what in sorted(_what(key)):
        KEYS.reached(what)
    admin_s3.put_object(Bucket=bucket, Key=key, Body=_body(key))  # botocore as the oracle of what the key is
    objects = storage_at(moto[0]).objects(bucket, "generated-keys")
    assert objects.fetch(key, 0, len(_body(key)) - 1) == _body(key)


# -- a bucket in another region ---------------------------------------------------------


@pytest.mark.parametrize("style", ["redirect", "malformed"])
def test_a_bucket_in_another_region_is_read_and_its_region_remembered(moto, storage_at, style):
    endpoint, keys = moto
    name = f"reads-eu-{uuid.uuid4().hex[:10]}"
    eu = boto3.client("s3", endpoint_url=endpoint, region_name=OTHER_REGION, **keys)
    eu.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": OTHER_REGION})
    eu.put_object(Bucket=name, Key="p/a.parquet", Body=_body("p/a.parquet"))
    with RecordingProxy(endpoint, bucket_regions={name: OTHER_REGION}, wrong_region=style) as proxy:
        storage = storage_at(proxy.url)
        objects = storage.objects(name, "region-1")
        assert list(objects.list("p/")) == [("p/a.parquet", 19)]  # botocore follows S3's answer itself
        assert objects.fetch("p/a.parquet", 0, 18) == _body("p/a.parquet")
        refused = [s for s in proxy.seen if s.injected]
        assert refused and all(s.status == (301 if style == "redirect" else 400) for s in refused)
        assert sum(1 for s in refused if "list-type" not in s.path) == 1  # one refused ranged read, then re-signed

        before = len(proxy.seen)
        later = storage.objects(name, "region-2")  # a later job goes to the bucket's region at once
        assert list(later.list("p/")) == [("p/a.parquet", 19)]
        assert later.fetch("p/a.parquet", 4, 14) == b"p/a.parquet"
        assert not [s for s in proxy.seen[before:] if s.injected]


def test_a_region_error_without_a_region_is_a_permanent_error_that_says_so(moto, bucket, admin_s3, storage_at):
    admin_s3.put_object(Bucket=bucket, Key="k", Body=b"0123")
    answer = (301, b"<Error><Code>PermanentRedirect</Code><Message>elsewhere</Message></Error>")
    with (RecordingProxy(moto[0], answer=lambda method, path, body: answer if path.endswith("/k") else None) as proxy,
          pytest.raises(WorkerError) as caught):
        storage_at(proxy.url).objects(bucket, "no-region").fetch("k", 0, 3)
    assert not caught.value.retryable
    assert "AWS_REGION" in caught.value.message



def test_the_latency_proxy_answers_without_nagles_stall(moto, admin_s3, bucket, storage_at):
    """The proxy that stands for S3's distance (``delay_s`` in the benchmarks) writes each answer as headers
    then body: without TCP_NODELAY on its sockets the body waited for the client's delayed ACK of the headers,
    about 40 ms per request (47 ms per ranged GET at a 0 ms setting; a "30 ms" S3 measured about 70 ms)."""
    admin_s3.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    # moto closes each connection after its answer; a second proxy in front of it keeps the first one's
    # upstream connections alive, so that their sockets can be looked at between requests.
    with RecordingProxy(moto[0]) as inner, RecordingProxy(inner.url) as proxy:
        objects = storage_at(proxy.url).objects(bucket, "nodelay")
        assert [objects.fetch("k", start, start + 2) for start in range(3)] == [b"012", b"123", b"234"]
        kept = [(client, upstream) for client, upstream in proxy.sockets() if upstream is not None]
        assert kept, "no keep-alive connection left open through the proxy"
        for client, upstream in kept:
            assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "the accepted socket delays writes"
            assert upstream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "the upstream socket delays writes"


def test_the_latency_proxy_replays_a_read_it_has_answered(moto, admin_s3, bucket, storage_at):
    """``replay`` (the fan-out benchmark's): a selected request is forwarded once per path and Range, then
    answered from memory, so that moto's CPU does not compete with the instances measured; other requests,
    and reads of another range, still reach moto."""
    admin_s3.put_object(Bucket=bucket, Key="k", Body=b"0123456789")
    with RecordingProxy(moto[0], replay=lambda method, path: method == "GET") as proxy:
        objects = storage_at(proxy.url).objects(bucket, "replay")
        assert objects.fetch("k", 2, 5) == b"2345"
        admin_s3.delete_object(Bucket=bucket, Key="k")
        assert objects.fetch("k", 2, 5) == b"2345"  # the same read again: moto is not asked
        with pytest.raises(ObjectChanged):
            objects.fetch("k", 0, 3)  # another range: moto answers that the object is gone
        assert [s.status for s in proxy.seen if s.method == "GET"] == [206, 206, 404]

# -- one object's refusal is that object's ------------------------------------------------


def _fetch_error(objects, key: str, start: int = 0, end: int = 3) -> WorkerError:
    with pytest.raises(WorkerError) as caught:
        objects.fetch(key, start, end)
    return caught.value


@pytest.mark.parametrize("storage_class", ["GLACIER", "DEEP_ARCHIVE"])
def test_an_archived_object_is_refused_as_archived(moto, admin_s3, bucket, storage_at, storage_class):
    admin_s3.put_object(Bucket=bucket, Key="cold.parquet", Body=b"0123456789", StorageClass=storage_class)
    storage = storage_at(moto[0])
    error = _fetch_error(storage.objects(bucket, "archived"), "cold.parquet")
    assert type(error) is ObjectArchived and isinstance(error, Forbidden) and not error.retryable
    assert error.details == {"aws_code": "InvalidObjectState", "storage_class": storage_class}
    assert f"archived in {storage_class}: restore it" in error.message
    assert _secret(storage) not in json.dumps(error.to_dict())


def test_an_object_the_role_may_not_read_is_refused_as_forbidden(moto, admin_s3, bucket, storage_at):
    admin_s3.put_object(Bucket=bucket, Key=DENIED, Body=b"0123456789")
    admin_s3.put_object(Bucket=bucket, Key="denied/open.parquet", Body=b"0123456789")
    storage = storage_at(moto[0])
    objects = storage.objects(bucket, "denied")
    error = _fetch_error(objects, DENIED)
    assert type(error) is ObjectDenied and isinstance(error, Forbidden) and not error.retryable
    assert error.object_fault  # that object's: the job skips it
    assert error.details == {"aws_code": "AccessDenied"}
    assert error.message.startswith("access denied to this object: the worker's role may not s3:GetObject it")
    assert objects.fetch("denied/open.parquet", 0, 3) == b"0123"  # the neighbour is read
    assert _secret(storage) not in json.dumps(error.to_dict())


def test_an_object_that_shrank_or_vanished_after_listing_is_that_objects(moto, admin_s3, bucket, storage_at):
    admin_s3.put_object(Bucket=bucket, Key="short.parquet", Body=b"0123")
    admin_s3.put_object(Bucket=bucket, Key="gone.parquet", Body=b"0123")
    objects = storage_at(moto[0]).objects(bucket, "changed")
    assert dict(objects.list("")) == {"short.parquet": 4, "gone.parquet": 4}
    admin_s3.delete_object(Bucket=bucket, Key="gone.parquet")
    shrunk = _fetch_error(objects, "short.parquet", 100, 200)  # listed bigger: the footer read is past the end
    assert type(shrunk) is ObjectChanged and isinstance(shrunk, NotFound) and not shrunk.retryable
    assert shrunk.details == {"aws_code": "InvalidRange"}
    assert "shorter than when it was listed" in shrunk.message
    gone = _fetch_error(objects, "gone.parquet")
    assert type(gone) is ObjectChanged and gone.details == {"aws_code": "NoSuchKey"}
    assert "deleted after it was listed" in gone.message


# What S3 answers and moto does not: the proxy answers those keys as S3 does.
_SSE_C = (400, b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidRequest</Code><Message>The object was '
               b"stored using a form of Server Side Encryption. The correct parameters must be provided to retrieve "
               b"the object.</Message><RequestId>0</RequestId></Error>")
_KMS_DENIED = (403, b"<Error><Code>AccessDenied</Code><Message>User: arn:aws:sts::123456789012:assumed-role/r/s is not "
                    b"authorized to perform: kms:Decrypt on the resource associated with this ciphertext because no "
                    b"identity-based policy allows the kms:Decrypt action</Message></Error>")
_KMS_DISABLED = (400, b"<Error><Code>KMS.DisabledException</Code><Message>arn:aws:kms:us-east-1:123456789012:key/1 "
                      b"is disabled.</Message></Error>")
_SLOW_DOWN = (503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>")


@pytest.mark.parametrize(("answer", "kind", "aws_code", "words"), [
    (_SSE_C, ObjectEncrypted, "InvalidRequest", "customer-provided key (SSE-C)"),
    (_KMS_DENIED, ObjectEncrypted, "AccessDenied", "allow the role kms:Decrypt"),
    (_KMS_DISABLED, ObjectEncrypted, "KMS.DisabledException", "allow the role kms:Decrypt"),
    (_SLOW_DOWN, Throttled, "SlowDown", "SlowDown"),
], ids=["sse-c", "kms-denied", "kms-disabled", "throttled"])
def test_refusals_moto_cannot_make_are_classified_like_s3s(moto, admin_s3, bucket, storage_at, answer, kind,
                                                           aws_code, words):
    # moto serves SSE-C objects without their key and knows no KMS policy: the proxy answers for that key.
    admin_s3.put_object(Bucket=bucket, Key="sealed.parquet", Body=b"0123456789")
    admin_s3.put_object(Bucket=bucket, Key="plain.parquet", Body=b"0123456789")
    with RecordingProxy(moto[0], answer=lambda method, path, body: answer if "sealed" in path else None) as proxy:
        storage = storage_at(proxy.url, max_attempts=1)
        objects = storage.objects(bucket, "sealed")
        error = _fetch_error(objects, "sealed.parquet")
        assert objects.fetch("plain.parquet", 0, 3) == b"0123"
    assert type(error) is kind and error.details["aws_code"] == aws_code and words in error.message
    assert error.retryable == issubclass(kind, Retryable)
    assert isinstance(error, Forbidden) or error.retryable
    assert _secret(storage) not in json.dumps(error.to_dict())


# -- a whole job ------------------------------------------------------------------------------


def test_a_job_skips_the_refused_objects_and_summarizes_the_rest(moto, admin_s3, bucket, storage_at):
    """Needs the lead's change to worker/service.py (per-object errors become skipped objects)."""
    from worker.config import Settings
    from worker.service import Worker

    data = parquet_bytes(recipe_table())
    admin_s3.put_object(Bucket=bucket, Key="j/good.parquet", Body=data)
    admin_s3.put_object(Bucket=bucket, Key="j/a/../odd.parquet", Body=data)
    admin_s3.put_object(Bucket=bucket, Key="j/cold.parquet", Body=data, StorageClass="GLACIER")
    admin_s3.put_object(Bucket=bucket, Key=f"j/{DENIED}", Body=data)
    settings_ = Settings.from_env({"AWS_ROLE_ARN": f"arn:aws:iam::123456789012:role/{ROLE}",
                                   "ID_TOKEN_AUDIENCE": "aud", "AWS_REGION": REGION})
    worker = Worker(settings_, storage_at(moto[0]))
    result = worker.handle_http(json.dumps({"job_id": "skips", "bucket": bucket, "prefix": "j/"}).encode())
    assert result["status"] == "ok", result
    text = json.dumps(result)
    assert result["files"] == 2 and result["rows"] == 2 * recipe_table().num_rows, text
    assert "GLACIER" in text and "access denied to this object" in text


# -- issue 18: credentials that expire mid-job and cannot be refreshed: the delivery is retried, nothing skipped ---


class _Clock:
    """The credentials' clock (botocore's ``time_fetcher``), which the test moves."""

    def __init__(self):
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


_STS_ERRORS = {
    "throttled": (400, b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded"
                       b"</Message></Error></ErrorResponse>"),
    "unavailable": (503, b"<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code><Message>"
                         b"Service unavailable</Message></Error></ErrorResponse>"),
    "refused": (403, b"<ErrorResponse><Error><Type>Sender</Type><Code>IDPRejectedClaim</Code><Message>Incorrect token "
                     b"audience</Message></Error></ErrorResponse>"),
}


def _sts(moto_endpoint: str, clock: _Clock, state: dict):
    """A proxy answer for STS alone: AssumeRoleWithWebIdentity goes to moto, its expiry moved onto the test's clock
    (an hour from its now), or is answered with the error ``state["sts"]`` names."""

    def answer(method: str, path: str, body: bytes):
        if state["sts"] in _STS_ERRORS:
            return _STS_ERRORS[state["sts"]]
        response = requests.post(moto_endpoint + path, data=body, timeout=30,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        expiry = (clock.now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ").encode()
        return response.status_code, re.sub(rb"<Expiration>[^<]*</Expiration>",
                                            b"<Expiration>" + expiry + b"</Expiration>", response.content)

    return answer


class _ExpiresAfterFirstRead:
    """The worker's federated storage, whose credentials pass their expiry as soon as a job's first read is done
    (the clock jumps two hours), and then cannot be refreshed (``on_expiry`` breaks STS or the token): the job's
    next read meets botocore's mandatory refresh, and its failure, in a reader thread."""

    def __init__(self, storage: AwsStorage, clock: _Clock, on_expiry):
        self.storage, self.clock, self.on_expiry = storage, clock, on_expiry

    def ensure_credentials(self) -> None:
        self.storage.ensure_credentials()

    def objects(self, bucket: str, job_id: str):
        objects = self.storage.objects(bucket, job_id)
        outer, reads = self, []

        class Expiring:
            def list(self, prefix, start_after=None):
                return objects.list(prefix, start_after)

            def fetch(self, key, start, end):
                data = objects.fetch(key, start, end)
                reads.append(key)
                if len(reads) == 1:
                    outer.clock.now += dt.timedelta(hours=2)
                    outer.on_expiry()
                return data

        return Expiring()


class _Published(list):
    def publish(self, result: dict, topic: str | None = None) -> str:
        self.append(result)
        return f"result-{len(self)}"


def _pushed(job: dict, message_id: str) -> dict:
    """A Pub/Sub push's CloudEvent data, as functions-framework hands it to the function."""
    return {"message": {"data": base64.b64encode(json.dumps(job).encode()).decode(), "messageId": message_id}}


# One object in full mode (its footer read, then its data's), or six in metadata mode (a read each); one reader
# thread, so that every read after the first needs the refresh.
@pytest.mark.parametrize(("objects", "mode"), [(1, "full"), (6, "metadata")], ids=["one-object", "six-objects"])
@pytest.mark.parametrize(("fault", "expected"), [
    ("sts-unreachable", Unavailable),  # STS's endpoint refuses connections (EndpointConnectionError)
    ("sts-throttled", Throttled),
    ("sts-unavailable", Unavailable),
    ("sts-refused", FederationFailed),  # STS says the token is refused: permanent
    ("token-file-gone", FederationFailed),  # the ID token source cannot give a token: permanent
])
def test_credentials_that_expire_mid_job_and_fail_to_refresh_end_the_delivery_not_the_objects(
        moto, admin_s3, bucket, monkeypatch, tmp_path, objects, mode, fault, expected):
    data = parquet_bytes(recipe_table())
    for i in range(objects):
        admin_s3.put_object(Bucket=bucket, Key=f"m/part-{i}.parquet", Body=data)
    clock, state = _Clock(), {"sts": "up"}
    token = tmp_path / "token"
    token.write_text("moto-checks-no-token")
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    def on_expiry():
        if fault == "sts-unreachable":
            monkeypatch.setenv("AWS_ENDPOINT_URL_STS", dead)  # botocore makes the STS client at each refresh
        elif fault == "token-file-gone":
            token.unlink()
        else:
            state["sts"] = fault.removeprefix("sts-")

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto[0])
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # STS's client: one attempt, so a dead endpoint fails at once
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    file_source, refreshes = FileIdTokenSource(str(token)), []

    def token_source() -> str:  # botocore asks for a token at each refresh, before it calls STS
        refreshes.append(clock.now)
        return file_source()

    with RecordingProxy(moto[0], answer=_sts(moto[0], clock, state)) as sts:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        storage = AwsStorage.federated(f"arn:aws:iam::123456789012:role/{ROLE}", token_source,
                                       session_name="expiring-test", region=REGION, session=botocore.session.Session(),
                                       time_fetcher=clock)
        settings_ = Settings.from_env({"AWS_ROLE_ARN": f"arn:aws:iam::123456789012:role/{ROLE}",
                                       "ID_TOKEN_AUDIENCE": "aud", "AWS_REGION": REGION,
                                       "READ_CONCURRENCY": "1", "FULL_MODE_CONCURRENCY": "1"})
        published = _Published()
        worker = Worker(settings_, _ExpiresAfterFirstRead(storage, clock, on_expiry), published)
        job = {"job_id": f"expiring-{fault}", "bucket": bucket, "prefix": "m/", "mode": mode}
        if issubclass(expected, Retryable):
            with pytest.raises(expected):  # raised: functions-framework answers the push 500, Pub/Sub redelivers
                worker.handle_pubsub(_pushed(job, "m-1"), "m-1")
            assert published == []  # no result: above all, no ok result with the objects skipped
            # The redelivery, once STS answers again (and the credentials expire again mid-job): all read.
            state["sts"] = "up"
            monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
            worker = Worker(settings_, _ExpiresAfterFirstRead(storage, clock, lambda: None), published)
            result = worker.handle_pubsub(_pushed(job, "m-1"), "m-1")
            assert (result["status"], result["files"], result["skipped_count"]) == ("ok", objects, 0), result
            assert result["rows"] == objects * recipe_table().num_rows
        else:
            result = worker.handle_pubsub(_pushed(job, "m-1"), "m-1")
            assert published == [result] and result["status"] == "error", result
            assert result["error"]["code"] == expected.code and not result["error"]["retryable"]
    assert len(refreshes) >= 2 and refreshes[1] > refreshes[0]  # the job's start, then a refresh mid-job
