"""Firestore as the real service behaves, over its emulator: contention aborts, and a meter of what is written.

Test tooling (never shipped with the function). Both pieces are gRPC client interceptors on a
``firestore.Client``'s own channel, so every call still goes to the emulator and back; they only watch it
and, for contention, answer some calls themselves the way the service would.

**Contention** (``ContentionFaults``). Firestore's server client libraries use pessimistic concurrency: a
read-write transaction locks the documents it reads until it commits or fails, and those locks hold off
other transactions, batched writes and non-transactional writes to the documents; read-only transactions
lock nothing. Firestore resolves contention by delaying or failing one of the operations; the failed one
gets ``ABORTED: Too much contention on these documents. Please try again.``, and the client library retries
a transaction whose commit was aborted a few times (five attempts) before it gives up ("Data contention in
transactions", cloud.google.com/firestore/docs/transaction-data-contention; "Transactions and batched
writes", cloud.google.com/firestore/docs/manage-data/transactions; the Admin SDK's ``runTransaction``
reference, e.g. pub.dev/documentation/dart_firebase_admin/latest/firestore/Firestore-class.html).

Firestore's pages do not say which of the two fails. The layer follows wound-wait, which Spanner (the
storage under Firestore, per Google's Firestore paper, SIGMOD 2023) documents for its pessimistic transactions
(cloud.google.com/spanner/docs/concurrency-control: read locks are held until commit; lock conflicts are
resolved with wound-wait): the older transaction wins and the younger is aborted, at its commit or its next
read; a younger one that wants to write what an older one holds waits for it. A retried transaction keeps its first
attempt's place in line (google-cloud-firestore's ``_Transactional`` begins a retry with
``retry_transaction`` "to preserve the spot in line"), so it is as old as its first attempt.

The emulator does something else: a commit that needs a document another live transaction has read waits
for that lock about 2 s and is then aborted ("Transaction lock timeout"), whichever of the two is older; a
non-transactional write there fails the same way; two contending transactions therefore cost seconds each.
The layer keeps that from happening: before it lets a commit through it rolls the transactions it wounds back
on the emulator (releasing their locks, as the service does for a failed transaction), and it holds a
younger commit, or a non-transactional write, until the older transactions holding its documents are done.

What a transaction holds, for the layer: the documents it looked up (found or missing), and for each query
or aggregation it ran, every document of the collection it queried. That is what the emulator locks (a write
to any document of a collection that a live transaction queried waits there); Firestore locks what a query
scanned, which may be less, so the layer may count contention the service would not have for writes
elsewhere in a queried collection.

**Writes** (``WriteMeter``). Every document a successful commit, batch write, or single-document RPC wrote,
with the time, so a benchmark can report the busiest document's sustained write rate (Firestore sustains about
one write per second per document: cloud.google.com/firestore/docs/solutions/counters), and counts of the
operations that Firestore bills (documents read, queries, aggregations, writes).

Use::

    client = faulty_client(project="p")                  # FIRESTORE_EMULATOR_HOST points at the emulator
    ... FirestoreRunStore(client, "runs") ...
    client.contention_faults.aborts, client.write_meter.max_sustained_writes_per_second()

or ``install(existing_client, ContentionFaults(), WriteMeter())`` (listed outermost first).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.cloud import firestore
from google.cloud.firestore_v1.types import firestore as firestore_types
from google.protobuf import empty_pb2

CONTENTION = "Too much contention on these documents. Please try again."
# How long a commit waits for an older transaction's locks before it is aborted instead. Firestore does not
# document its own figure; the emulator's is about 2 s.
LOCK_TIMEOUT_S = 10.0
# "Transactions that are not committed within 270 seconds are also aborted" (Admin SDK runTransaction): a
# transaction the layer has heard nothing more of is forgotten after that.
TRANSACTION_LIFETIME_S = 270.0
_READS = ("BatchGetDocuments", "RunQuery", "RunAggregationQuery", "GetDocument")


def faulty_client(project: str | None = None, database: str | None = None, *, contention: bool = True,
                  meter: bool = True, lock_timeout: float = LOCK_TIMEOUT_S, **client_options: Any) -> firestore.Client:
    """A ``firestore.Client`` whose traffic passes through ``ContentionFaults`` and a ``WriteMeter`` (each one
    optional); they are its attributes ``contention_faults`` and ``write_meter`` (None when left out)."""
    client = firestore.Client(project=project, database=database, **client_options)
    faults = ContentionFaults(lock_timeout=lock_timeout) if contention else None
    writes = WriteMeter() if meter else None
    install(client, *[i for i in (faults, writes) if i is not None])
    client.contention_faults = faults
    client.write_meter = writes
    return client


def install(client: firestore.Client, *interceptors: grpc.UnaryUnaryClientInterceptor) -> firestore.Client:
    """Put ``interceptors`` (outermost first) on ``client``'s channel; return the client. Reaches into the
    client's private ``_transport`` and ``_firestore_api_internal``, as nothing public takes a channel."""
    api = client._firestore_api  # built now if it was not: on the emulator's channel, or production's
    channel = client._transport.grpc_channel
    for interceptor in reversed(interceptors):
        bind = getattr(interceptor, "bind", None)
        if bind is not None:
            bind(channel)  # the channel below it, for calls of its own
        channel = grpc.intercept_channel(channel, interceptor)
    client._transport = type(client._transport)(host=client._target, channel=channel)
    client._firestore_api_internal = type(api)(transport=client._transport, client_options=client._client_options)
    return client


class ContentionFaults(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Aborts the younger of two read-write transactions that contend for a document, as Firestore does
    (see the module's docstring). Counters: ``aborts_at_commit``, ``aborts_at_read``, ``aborts`` (their sum),
    ``wounded`` (transactions an older commit aborted), ``waits`` (commits held for an older transaction)."""

    def __init__(self, *, lock_timeout: float = LOCK_TIMEOUT_S, lifetime: float = TRANSACTION_LIFETIME_S,
                 clock: Callable[[], float] = time.monotonic):
        self.lock_timeout = lock_timeout
        self.lifetime = lifetime
        self._clock = clock
        self._changed = threading.Condition()
        self._live: dict[bytes, _Transaction] = {}
        self._writing: collections.Counter[str] = collections.Counter()  # documents of commits under way
        # Ages of aborted transactions by their first attempt's ID, which each retry begins with.
        self._aborted_ages: dict[bytes, int] = {}
        self._ages = itertools.count()
        self._rollback: Callable[..., Any] | None = None
        self.aborts_at_commit = self.aborts_at_read = self.wounded = self.waits = 0

    @property
    def aborts(self) -> int:
        """Aborted answers the layer gave in place of the emulator."""
        return self.aborts_at_commit + self.aborts_at_read

    def counts(self) -> dict[str, int]:
        with self._changed:
            return {"aborts": self.aborts, "aborts_at_commit": self.aborts_at_commit,
                    "aborts_at_read": self.aborts_at_read, "wounded": self.wounded, "waits": self.waits}

    def bind(self, channel: grpc.Channel) -> None:
        """The channel to the emulator, for rolling back the transactions this layer aborts."""
        self._rollback = channel.unary_unary("/google.firestore.v1.Firestore/Rollback",
                                             request_serializer=firestore_types.RollbackRequest.serialize,
                                             response_deserializer=empty_pb2.Empty.FromString)

    # -- the interceptor ----------------------------------------------------------------------

    def intercept_unary_unary(self, continuation, details, request):
        method = _method(details)
        if method == "BeginTransaction":
            return self._begin(continuation, details, request)
        if method in ("Commit", "BatchWrite"):
            return self._commit(continuation, details, request, getattr(request, "transaction", b""))
        if method == "Rollback":
            with self._changed:
                self._live.pop(request.transaction, None)
                self._changed.notify_all()
        elif method == "GetDocument" and request.transaction:
            self._before_read(request.transaction, documents=[request.name])
            outcome = continuation(details, request)
            if outcome.exception() is not None:
                self._raise_if_wounded(request.transaction)
            return outcome
        return continuation(details, request)

    def intercept_unary_stream(self, continuation, details, request):
        method = _method(details)
        tid = request.transaction if method in _READS else b""
        if not tid:
            return continuation(details, request)
        if method == "BatchGetDocuments":
            self._before_read(tid, documents=request.documents)
        else:
            query = (request.structured_query if method == "RunQuery"
                     else request.structured_aggregation_query.structured_query)
            self._before_read(tid, collections=_collections(request.parent, query))
        return _Stream(continuation(details, request), failed=lambda: self._raise_if_wounded(tid))

    # -- transactions -----------------------------------------------------------------------------

    def _begin(self, continuation, details, request):
        outcome = continuation(details, request)
        options = type(request.options).pb(request.options)
        if outcome.exception() is None and not options.HasField("read_only"):  # read-only ones lock nothing
            with self._changed:
                first = options.read_write.retry_transaction
                age = self._aborted_ages.pop(first, None)
                tid = outcome.result().transaction
                self._live[tid] = _Transaction(tid, next(self._ages) if age is None else age, request.database,
                                               self._clock(), first=first or tid)
        return outcome

    def _before_read(self, tid: bytes, *, documents: Iterable[str] = (),
                     collections: Iterable[tuple[str, bool]] = ()) -> None:
        """Abort a wounded transaction's read; otherwise let the read wait for commits under way to what it
        reads, as on the service (the emulator would give the read a lock that the commit then waits for)."""
        documents, collections = set(documents), set(collections)
        deadline = self._clock() + self.lock_timeout
        with self._changed:
            while True:
                txn = self._live.get(tid)
                if txn is None:
                    return
                if txn.wounded:
                    self.aborts_at_read += 1
                    self._lose(tid)
                    raise _Aborted()
                if not _covers(documents, collections, self._writing) or self._clock() >= deadline:
                    txn.reads |= documents
                    txn.collections |= collections
                    return
                self._changed.wait(timeout=min(0.5, max(0.0, deadline - self._clock())))

    def _raise_if_wounded(self, tid: bytes) -> None:
        """A read that failed because an older transaction wounded (and rolled back) its transaction meanwhile
        failed of contention: Aborted, not the emulator's "transaction is invalid or closed"."""
        with self._changed:
            txn = self._live.get(tid)
            if txn is not None and txn.wounded:
                self.aborts_at_read += 1
                self._lose(tid)
                raise _Aborted()

    def _commit(self, continuation, details, request, tid: bytes):
        written = {name for name in map(_written, request.writes) if name}
        victims: list[_Transaction] = []
        with self._changed:
            txn = self._live.get(tid) if tid else None
            if tid and txn is None:
                return continuation(details, request)  # read-only, or begun before the layer was installed
            deadline = self._clock() + self.lock_timeout
            waited = False
            while True:
                self._forget_expired()
                if txn is not None and txn.wounded:
                    self.aborts_at_commit += 1
                    self._lose(tid)
                    raise _Aborted()
                rivals = [o for o in self._live.values() if o is not txn and not o.wounded and o.holds(written)]
                # Wait for a commit already under way, and (wound-wait) for older transactions. A write outside
                # any transaction wounds nobody: it waits for every lock on its documents.
                holding = [o for o in rivals if o.committing or txn is None or o.age < txn.age]
                if not holding:
                    break
                if self._clock() >= deadline:
                    if txn is None:
                        break  # let the emulator decide, as it would have without the layer
                    self.aborts_at_commit += 1
                    self._lose(tid)
                    raise _Aborted()
                if not waited:
                    self.waits += 1
                    waited = True
                self._changed.wait(timeout=min(0.5, max(0.0, deadline - self._clock())))
            if txn is not None:
                for victim in rivals:  # all younger, none committing
                    victim.wounded = True
                    self.wounded += 1
                    victims.append(victim)
                txn.committing = True
            self._writing.update(written)
            self._changed.notify_all()
        for victim in victims:
            self._release(victim, details)
        try:
            outcome = continuation(details, request)
        finally:
            with self._changed:
                self._writing.subtract(written)
                self._writing = +self._writing  # drop the documents no commit is writing any more
                if txn is not None:
                    self._live.pop(tid, None)
                self._changed.notify_all()
        if txn is not None and outcome.exception() is not None and outcome.code() == grpc.StatusCode.ABORTED:
            with self._changed:
                self._aborted_ages[txn.first] = txn.age  # the emulator aborted it: its retry keeps its place too
        return outcome

    def _lose(self, tid: bytes) -> None:
        """Forget an aborted transaction, keeping its age for its retry (under the lock)."""
        txn = self._live.pop(tid, None)
        if txn is not None:
            self._aborted_ages[txn.first] = txn.age
        self._changed.notify_all()

    def _release(self, victim: _Transaction, details) -> None:
        """Roll a wounded transaction back on the emulator, so that its read locks go as they would on
        Firestore; its own next read or commit then gets Aborted from the layer."""
        if self._rollback is None:
            return
        with contextlib.suppress(grpc.RpcError):  # it may have finished meanwhile: nothing left to release
            self._rollback(firestore_types.RollbackRequest(database=victim.database, transaction=victim.tid),
                           metadata=details.metadata, timeout=30)

    def _forget_expired(self) -> None:
        oldest = self._clock() - self.lifetime
        for tid in [tid for tid, txn in self._live.items() if txn.began < oldest]:
            del self._live[tid]


class WriteMeter(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Records each document written (monotonic time, document path) and counts operations. Only what the
    server accepted counts: a commit that failed wrote nothing."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._writes: list[tuple[float, str]] = []
        self._ops: collections.Counter[str] = collections.Counter()

    def intercept_unary_unary(self, continuation, details, request):
        method = _method(details)
        outcome = continuation(details, request)
        failed = outcome.exception() is not None
        names: list[str] = []
        if method == "Commit":
            names = [] if failed else [_written(w) for w in request.writes]
            self._count(commits=1, aborted_commits=int(failed and outcome.code() == grpc.StatusCode.ABORTED))
        elif method == "BatchWrite" and not failed:
            names = [_written(w) for w, status in zip(request.writes, outcome.result().status, strict=False)
                     if status.code == 0]
            self._count(batch_writes=1)
        elif method in ("UpdateDocument", "CreateDocument") and not failed:
            names = [outcome.result().name]
        elif method == "DeleteDocument" and not failed:
            names = [request.name]
        elif method == "GetDocument" and not failed:
            self._count(lookup_documents=1)
        elif method in ("BeginTransaction", "Rollback"):
            self._count(**{_snake(method): 1})
        if names:
            now = self._clock()
            with self._lock:
                self._writes += [(now, _path(name)) for name in names if name]
        return outcome

    def intercept_unary_stream(self, continuation, details, request):
        method = _method(details)
        counted = {"BatchGetDocuments": "lookups", "RunQuery": "queries", "RunAggregationQuery": "aggregation_queries"}
        if method not in counted:
            return continuation(details, request)
        self._count(**{counted[method]: 1})

        def returned(response: Any) -> None:
            if method == "BatchGetDocuments":
                self._count(lookup_documents=int(bool(response.found.name)), lookup_missing=int(bool(response.missing)))
            elif method == "RunQuery" and response.document.name:
                self._count(query_documents=1)

        return _Stream(continuation(details, request), returned)

    def _count(self, **counts: int) -> None:
        with self._lock:
            self._ops.update(counts)

    # -- what it saw ----------------------------------------------------------------------------

    def writes(self) -> list[tuple[float, str]]:
        """Every document write seen, as (monotonic time, document path like ``runs/r1/shards/s1``)."""
        with self._lock:
            return list(self._writes)

    def writes_by_document(self) -> dict[str, int]:
        """Writes per document path, busiest first."""
        return dict(collections.Counter(path for _, path in self.writes()).most_common())

    def max_sustained_writes_per_second(self, window: float = 10.0) -> tuple[str | None, float]:
        """(document path, writes per second) of the document with the most writes within any ``window``
        seconds, the count divided by ``window``; (None, 0.0) when nothing was written."""
        times: dict[str, list[float]] = collections.defaultdict(list)
        for at, path in self.writes():
            times[path].append(at)
        best: tuple[str | None, int] = (None, 0)
        for path, ats in times.items():
            most = most_in_window(ats, window)
            if most > best[1]:
                best = (path, most)
        return best[0], best[1] / window

    def operations(self) -> dict[str, int]:
        """Operation counts: ``reads`` (lookup_documents + query_documents + aggregation_queries),
        ``lookup_documents`` (found), ``lookup_missing``, ``query_documents``, ``aggregation_queries``, ``writes``
        (documents written), and RPCs: ``lookups``, ``queries``, ``commits``, ``aborted_commits`` (answered
        ABORTED by the server, i.e. the emulator: the fault layer's own aborts never reach it),
        ``batch_writes``, ``begin_transaction``, ``rollback`` (the fault layer's own rollbacks of the transactions it
        aborts included, when the meter is below it)."""
        with self._lock:
            ops = collections.Counter(self._ops)
            ops["writes"] = len(self._writes)
        ops["reads"] = ops["lookup_documents"] + ops["query_documents"] + ops["aggregation_queries"]
        keys = ("reads", "lookup_documents", "lookup_missing", "query_documents", "aggregation_queries", "writes",
                "lookups", "queries", "commits", "aborted_commits", "batch_writes", "begin_transaction", "rollback")
        return {key: ops[key] for key in keys}

    def reset(self) -> None:
        with self._lock:
            self._writes.clear()
            self._ops.clear()


def most_in_window(times: Iterable[float], window: float) -> int:
    """The largest number of ``times`` within any half-open interval ``[t, t + window)``."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0)


# -- plumbing -----------------------------------------------------------------------------------


@dataclass
class _Transaction:
    tid: bytes
    age: int  # lower is older
    database: str
    began: float
    first: bytes = b""  # the ID of its first attempt, if it is a retry
    reads: set[str] = field(default_factory=set)  # documents looked up
    collections: set[tuple[str, bool]] = field(default_factory=set)  # queried: (prefix, direct children only)
    wounded: bool = False
    committing: bool = False

    def holds(self, names: Iterable[str]) -> bool:
        """Whether this transaction has read any of the documents ``names``."""
        return _covers(self.reads, self.collections, names)


def _covers(documents: set[str], collections: set[tuple[str, bool]], names: Iterable[str]) -> bool:
    """Whether any of ``names`` is one of ``documents`` or in one of ``collections``."""
    return any(name in documents or any(name.startswith(prefix) and not (direct and "/" in name[len(prefix):])
                                        for prefix, direct in collections) for name in names)


class _Aborted(grpc.RpcError, grpc.Call, grpc.Future):
    """What Firestore answers a transaction that lost to contention; google-api-core maps it to
    ``google.api_core.exceptions.Aborted`` like any server error. A finished call as well as an error, as
    grpc's own failed calls are: an interceptor above this one gets it back as the call's outcome."""

    def result(self, timeout=None):
        raise self

    def exception(self, timeout=None):
        return self

    def traceback(self, timeout=None):
        return self.__traceback__

    def add_done_callback(self, fn):
        fn(self)

    def cancelled(self):
        return False

    def running(self):
        return False

    def done(self):
        return True

    def code(self):
        return grpc.StatusCode.ABORTED

    def details(self):
        return CONTENTION

    def initial_metadata(self):
        return ()

    def trailing_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False

    def __str__(self):
        return f"ABORTED: {CONTENTION}"


class _Stream:
    """A server stream passed through, each response shown to ``returned``; ``failed`` may turn an error
    into another (by raising) before it is raised as it was."""

    def __init__(self, call, returned: Callable[[Any], None] = lambda response: None,
                 failed: Callable[[], None] = lambda: None):
        self._call = call
        self._returned = returned
        self._failed = failed

    def __iter__(self):
        return self

    def __next__(self):
        try:
            response = next(self._call)
        except grpc.RpcError:
            self._failed()
            raise
        self._returned(response)
        return response

    def __getattr__(self, name):  # code(), details(), cancel() ... of the call underneath
        return getattr(self._call, name)


def _method(details: grpc.ClientCallDetails) -> str:
    method = details.method
    return (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]


def _collections(parent: str, query: Any) -> set[tuple[str, bool]]:
    """What a query reads, as the emulator locks it: every document of the collections it names (below
    ``parent``, at any depth for a collection group)."""
    return {(f"{parent}/{c.collection_id}/", True) if not c.all_descendants else (f"{parent}/", False)
            for c in query.from_}


def _written(write: Any) -> str:
    """The document name a ``Write`` changes."""
    return write.update.name or write.delete or write.transform.document


def _path(name: str) -> str:
    """``projects/P/databases/D/documents/a/b`` -> ``a/b``."""
    return name.split("/documents/", 1)[-1]


def _snake(method: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in method).lstrip("_")
