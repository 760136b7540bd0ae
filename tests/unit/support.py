"""In-memory stand-ins for the object store: the same contracts the S3 adapter meets, over bytes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import botocore.session
from botocore.credentials import CredentialProvider, CredentialResolver, DeferredRefreshableCredentials
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from worker.adapters.aws import AwsStorage
from worker.errors import FederationFailed, NotFound, ObjectChanged, Throttled, Unavailable
from worker.partials import PartialTooLarge


class Ranged:
    """One object served by HTTP-style inclusive ranges, counting the reads."""

    def __init__(self, data: bytes):
        self.data = data
        self.reads: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int) -> bytes:
        self.reads.append((start, end))
        return self.data[start:end + 1]

    @property
    def bytes_read(self) -> int:
        return sum(b - a + 1 for a, b in self.reads)


class MemoryStore:
    """The ObjectStore protocol over a dict of key -> bytes."""

    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects
        self.fetches = 0
        self.lists = 0

    def list(self, prefix: str, start_after: str | None = None):
        self.lists += 1
        for key in sorted(self.objects):
            if key.startswith(prefix) and (start_after is None or key > start_after):
                yield key, len(self.objects[key])

    def common_prefixes(self, prefix: str, delimiter: str = "/", max_pages: int = 10) -> list[str]:
        found = set()
        for key in self.objects:
            if key.startswith(prefix) and delimiter in key[len(prefix):]:
                found.add(prefix + key[len(prefix):].split(delimiter, 1)[0] + delimiter)
        return sorted(found)[:1000 * max_pages]

    def fetch(self, key: str, start: int, end: int) -> bytes:
        self.fetches += 1
        if key not in self.objects:
            raise ObjectChanged("object deleted after it was listed: NoSuchKey")
        return self.objects[key][start:end + 1]


class MemoryRuns:
    """The RunStore protocol over dicts, one lock standing for Firestore's transactions (records are copied in
    and out, as a database would). For the pure run logic only: the Firestore adapter is tested on the emulator.
    ``writes`` counts writes per document (path), ``transactions`` the transactions."""

    def __init__(self):
        import collections
        import threading

        self.lock = threading.RLock()
        self.run_docs: dict = {}
        self.shard_docs: dict = {}
        self.task_docs: dict = {}
        self.transactions = 0
        self.writes = collections.Counter()

    def transact(self, run_id, reads, decide):
        import copy
        import random

        from worker.fanout.records import QUEUED, MergeTask, RunRecord, ShardRecord, View

        with self.lock:
            self.transactions += 1
            view = View()
            if reads.run:
                doc = self.run_docs.get(run_id)
                view.run = RunRecord.from_doc(copy.deepcopy(doc)) if doc is not None else None
            for shard_id in reads.shards:
                doc = self.shard_docs.get((run_id, shard_id))
                view.shards[shard_id] = ShardRecord.from_doc(copy.deepcopy(doc)) if doc is not None else None
            for task_id in reads.tasks:
                doc = self.task_docs.get((run_id, task_id))
                view.tasks[task_id] = MergeTask.from_doc(copy.deepcopy(doc)) if doc is not None else None
            if reads.queued:
                queued = [k for (r, k), d in sorted(self.shard_docs.items()) if r == run_id and d["state"] == QUEUED
                          and k not in view.shards]
                at = random.randrange(len(queued)) if queued else 0
                picked = (queued[at:] + queued[:at])[:reads.queued]
                view.queued = [ShardRecord.from_doc(copy.deepcopy(self.shard_docs[(run_id, k)])) for k in picked]
            change = decide(view)
            if change.run is not None:
                self.run_docs[run_id] = copy.deepcopy(change.run.to_doc())
                self.writes[run_id] += 1
            for record in change.shards:
                self.shard_docs[(run_id, record.shard_id)] = copy.deepcopy(record.to_doc())
                self.writes[f"{run_id}/shards/{record.shard_id}"] += 1
            for task in change.tasks:
                self.task_docs[(run_id, task.task_id)] = copy.deepcopy(task.to_doc())
                self.writes[f"{run_id}/merges/{task.task_id}"] += 1
            return change.value

    def claim_queued(self, run_id, most, claim):
        import copy
        import random

        from worker.fanout.records import QUEUED, ShardRecord

        with self.lock:
            queued = [k for (r, k), d in sorted(self.shard_docs.items()) if r == run_id and d["state"] == QUEUED]
            at = random.randrange(len(queued)) if queued else 0
            claimed = []
            for shard_id in (queued[at:] + queued[:at])[:most]:
                new = claim(ShardRecord.from_doc(copy.deepcopy(self.shard_docs[(run_id, shard_id)])))
                self.shard_docs[(run_id, shard_id)] = copy.deepcopy(new.to_doc())
                self.writes[f"{run_id}/shards/{shard_id}"] += 1
                claimed.append(new)
            return claimed

    def create_run(self, run, shards):
        import copy

        with self.lock:
            if run.run_id in self.run_docs:
                return False
            self.run_docs[run.run_id] = copy.deepcopy(run.to_doc())
            self.writes[run.run_id] += 1
            for shard in shards:
                self.shard_docs[(run.run_id, shard.shard_id)] = copy.deepcopy(shard.to_doc())
                self.writes[f"{run.run_id}/shards/{shard.shard_id}"] += 1
            return True

    def create_tasks(self, run_id, tasks):
        import copy

        with self.lock:
            for task in tasks:
                if (run_id, task.task_id) not in self.task_docs:
                    self.task_docs[(run_id, task.task_id)] = copy.deepcopy(task.to_doc())
                    self.writes[f"{run_id}/merges/{task.task_id}"] += 1

    def get_run(self, run_id):
        import copy

        from worker.fanout.records import RunRecord

        with self.lock:
            doc = self.run_docs.get(run_id)
            return RunRecord.from_doc(copy.deepcopy(doc)) if doc is not None else None

    def get_shard(self, run_id, shard_id):
        import copy

        from worker.fanout.records import ShardRecord

        with self.lock:
            doc = self.shard_docs.get((run_id, shard_id))
            return ShardRecord.from_doc(copy.deepcopy(doc)) if doc is not None else None

    def get_task(self, run_id, task_id):
        import copy

        from worker.fanout.records import MergeTask

        with self.lock:
            doc = self.task_docs.get((run_id, task_id))
            return MergeTask.from_doc(copy.deepcopy(doc)) if doc is not None else None

    def shards(self, run_id, state=None):
        import copy

        from worker.fanout.records import ShardRecord

        with self.lock:
            docs = [copy.deepcopy(d) for (r, _), d in sorted(self.shard_docs.items()) if r == run_id
                    and (state is None or d["state"] == state)]
        for doc in docs:
            yield ShardRecord.from_doc(doc)

    def count_shards(self, run_id, states):
        with self.lock:
            return sum(1 for (r, _), d in self.shard_docs.items() if r == run_id and d["state"] in states)

    def tasks(self, run_id, round_, level):
        import copy

        from worker.fanout.records import MergeTask

        with self.lock:
            docs = [copy.deepcopy(d) for (r, _), d in sorted(self.task_docs.items()) if r == run_id
                    and d["round"] == round_ and d["level"] == level]
        for doc in docs:
            yield MergeTask.from_doc(doc)

    def open_tasks(self, run_id, round_, level):
        return sum(1 for t in self.tasks(run_id, round_, level) if t.state != "done")

    def runs(self, states):
        import copy

        from worker.fanout.records import RunRecord

        with self.lock:
            docs = [copy.deepcopy(d) for _, d in sorted(self.run_docs.items()) if d["state"] in states]
        for doc in docs:
            yield RunRecord.from_doc(doc)


class MemoryBlobs:
    """The BlobStore protocol over a dict (create-only)."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}

    def put_once(self, name, data):
        if name in self.blobs:
            return False
        self.blobs[name] = data
        return True

    def get(self, name, *, max_bytes=None):
        if name not in self.blobs:
            raise NotFound(f"no blob {name}")
        data = self.blobs[name]
        if max_bytes is not None and len(data) > max_bytes:
            raise PartialTooLarge(f"blob {name} holds {len(data)} bytes, over the limit of {max_bytes} bytes",
                                  size=len(data), max_bytes=max_bytes)
        return data


class MemoryShardQueue:
    """The ShardPublisher protocol over a list: what a test delivers, in any order, as often as it likes. A shard's
    message is ("shard", run_id, shard_id, generation), a merge task's ("merge", run_id, task_id, None)."""

    def __init__(self):
        self.messages: list[tuple[str, str, str, int | None]] = []

    def publish_shards(self, run_id, shards):
        self.messages.extend(("shard", run_id, s, g) for s, g in shards)

    def publish_tasks(self, run_id, task_ids):
        self.messages.extend(("merge", run_id, t, None) for t in task_ids)


def same_figures(a, b, path: str = "") -> list[str]:
    """Where two results' figures differ: exactly, but for floats (means and deviations merged in another
    order differ in their last bits: relative 1e-9) and sketch estimates (``*_approx``: within 2%)."""
    import math

    if isinstance(a, dict) and isinstance(b, dict):
        ignored = {"timings_ms", "finished_at", "fanout", "message_id", "job_id", "correlation_id", "job"}
        if path == "":
            a, b = ({k: v for k, v in d.items() if k not in ignored} for d in (a, b))
        if set(a) != set(b):
            return [f"{path}: keys {sorted(set(a) ^ set(b))}"]
        out = []
        for k in a:
            out += same_figures(a[k], b[k], f"{path}.{k}" if path else k)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in same_figures(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and not isinstance(a, bool):
        tolerance = 0.02 if "_approx" in path else 1e-6
        if math.isclose(a, b, rel_tol=tolerance, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b)):
            return []
        return [f"{path}: {a!r} != {b!r}"]
    if isinstance(a, int) and isinstance(b, int) and "_approx" in path:
        return [] if math.isclose(a, b, rel_tol=0.02, abs_tol=1) else [f"{path}: {a!r} != {b!r}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]



def _sts_answer(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "as STS answers"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "AssumeRoleWithWebIdentity")


STS_ENDPOINT = "https://sts.us-east-1.amazonaws.com/"
# What botocore's mandatory credential refresh re-raises to the reader that asked for credentials (STS's answer, a
# connection fault, the ID token source's own error), and the worker's error it becomes: transient unless STS
# refuses the role or the token. (id, the exception, the worker's error)
REFRESH_FAULTS = [
    ("sts-unreachable", lambda: EndpointConnectionError(endpoint_url=STS_ENDPOINT), Unavailable),
    ("sts-connect-timeout", lambda: ConnectTimeoutError(endpoint_url=STS_ENDPOINT), Unavailable),
    ("sts-read-timeout", lambda: ReadTimeoutError(endpoint_url=STS_ENDPOINT), Unavailable),
    ("sts-throttles", lambda: _sts_answer("Throttling", 400), Throttled),
    ("sts-unavailable", lambda: _sts_answer("ServiceUnavailable", 503), Unavailable),
    ("sts-idp-unreachable", lambda: _sts_answer("IDPCommunicationError", 400), Unavailable),
    ("credential-retrieval", lambda: CredentialRetrievalError(provider="assume-role-with-web-identity",
                                                              error_msg="no answer"), Unavailable),
    ("metadata-server-down", lambda: Unavailable("the metadata server did not give an ID token (TransportError); "
                                                 "it is unreachable or unavailable", details={"step": "id_token"}),
     Unavailable),
    ("sts-refuses-the-token", lambda: _sts_answer("IDPRejectedClaim", 403), FederationFailed),
    ("token-file-gone", lambda: FederationFailed("cannot read the ID token file /t: No such file or directory",
                                                 details={"step": "id_token"}), FederationFailed),
]


class _Given(CredentialProvider):
    METHOD = "assume-role-with-web-identity"

    def __init__(self, credentials):
        super().__init__()
        self._credentials = credentials

    def load(self):
        return self._credentials


class RefreshFails:
    """The S3 adapter (``AwsStorage``, its ``S3Objects``) on credentials that work until the clock passes their
    expiry, after which botocore's mandatory refresh raises ``make_error()``: as when STS or the metadata server fails
    near the end of a session, in the middle of a job. Nothing is sent anywhere: the refresh fails first."""

    def __init__(self, make_error: Callable[[], BaseException], *, bucket: str = "b-1"):
        self.now = dt.datetime.now(dt.UTC)
        self.make_error = make_error
        self.refreshes = 0
        credentials = DeferredRefreshableCredentials(refresh_using=self._refresh, method=_Given.METHOD,
                                                     time_fetcher=lambda: self.now)
        session = botocore.session.Session()
        session.register_component("credential_provider", CredentialResolver([_Given(credentials)]))
        self.storage = AwsStorage(session, region="us-east-1")
        self.storage.ensure_credentials()
        self.objects = self.storage.objects(bucket, "refresh-fails")
        self.objects._bucket_url()  # presigned with the first credentials, as by the job's first read
        self.now += dt.timedelta(hours=2)  # past the expiry: the next signature needs a refresh

    def _refresh(self) -> dict:
        self.refreshes += 1
        if self.refreshes > 1:
            raise self.make_error()
        expiry = self.now + dt.timedelta(hours=1)
        return {"access_key": "AKIDREFRESHFAILS", "secret_key": "not-a-secret", "token": "not-a-token",
                "expiry_time": expiry.isoformat()}

    def fetch(self, key: str, start: int, end: int) -> bytes:
        return self.objects.fetch(key, start, end)
